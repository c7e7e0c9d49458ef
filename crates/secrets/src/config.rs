//! The vault config (docs/external-secrets.md, "The vault config"): parsing, strict validation
//! with errors that name the file, the secret and the JSON location, and the in-memory
//! `VaultConfig` the resolver uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::file::{read_bounded, refused_location};
use crate::scope::{Requester, ScopeRule};

/// The vault config file is small; anything above this is a mistake (or not the config).
pub(crate) const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// A parsed and validated vault config.
///
/// Holds paths and scopes only, never secret values, so `Debug` is safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    source: PathBuf,
    secrets: BTreeMap<String, SecretEntry>,
}

/// One `secret.<name>` entry of the vault config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    name: String,
    path: PathBuf,
    scope: Vec<ScopeRule>,
    rotation_grace: Option<Duration>,
}

impl SecretEntry {
    /// The secret's name, as FHIR resources refer to it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Absolute path of the file, as written in the config (not resolved through symlinks:
    /// the visible path stays the same across rotations, the Kubernetes atomic writer swaps
    /// only the `..data` symlink behind it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resources allowed to use the secret. Never empty.
    pub fn scope(&self) -> &[ScopeRule] {
        &self.scope
    }

    /// How long the previous value keeps working for client authentication after a
    /// rotation (`rotation_grace`, docs/external-secrets.md, "The vault config"). `None`: no
    /// grace.
    pub fn rotation_grace(&self) -> Option<Duration> {
        self.rotation_grace
    }

    /// Whether `requester` may use this secret (`Type/id` or `Type`, docs/external-secrets.md,
    /// "The vault config").
    pub fn allows(&self, requester: &Requester) -> bool {
        self.scope.iter().any(|rule| rule.allows(requester))
    }

    /// The scope as `Type/id` / `Type` strings, for messages and status.
    pub fn scope_strings(&self) -> Vec<String> {
        self.scope.iter().map(ToString::to_string).collect()
    }
}

impl VaultConfig {
    /// Parses and validates a vault config.
    ///
    /// `source` is only used in error messages. Secret paths that exist are resolved through
    /// their symlinks to refuse those that lead under `/proc`, `/sys` or `/dev`.
    /// `secret_capable_types` is the list of resource types that have a secret-capable field
    /// (docs/external-secrets.md, "The secret-capable fields"); a scope naming any other type
    /// is an error. Every problem found is reported, not just the first.
    pub fn parse(
        bytes: &[u8],
        source: &Path,
        secret_capable_types: &[&str],
    ) -> Result<Self, ConfigError> {
        // A repeated key is an error, so a copy-pasted secret entry cannot
        // quietly replace another.
        let root = fhirbox_json::from_slice_strict(bytes).map_err(|e| ConfigError::Json {
            path: source.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut v = Validator {
            types: secret_capable_types,
            problems: Vec::new(),
        };
        let secrets = v.root(&root);
        if v.problems.is_empty() {
            Ok(Self {
                source: source.to_path_buf(),
                secrets,
            })
        } else {
            Err(ConfigError::Invalid {
                path: source.to_path_buf(),
                problems: v.problems,
            })
        }
    }

    /// Reads `path` (through symlinks, at most 1 MiB, never blocking on a FIFO) and parses it.
    pub fn load(path: &Path, secret_capable_types: &[&str]) -> Result<Self, ConfigError> {
        let bytes = read_bounded(path, MAX_CONFIG_SIZE).map_err(|f| ConfigError::Read {
            path: path.to_path_buf(),
            reason: f.describe(),
        })?;
        Self::parse(&bytes, path, secret_capable_types)
    }

    /// The file this config came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The entry for `name`, if the config defines it.
    pub fn get(&self, name: &str) -> Option<&SecretEntry> {
        self.secrets.get(name)
    }

    /// All entries, ordered by name.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretEntry> {
        self.secrets.values()
    }

    /// Number of secrets defined.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// True when the config defines no secret.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The directories that must be watched: the one holding the config file and the ones
    /// holding each secret's visible path (docs/external-secrets.md, "Reading, caching and
    /// rotation": watch the directory, not the file).
    pub(crate) fn watch_dirs(&self, config_path: &Path) -> BTreeSet<PathBuf> {
        std::iter::once(config_path)
            .chain(self.secrets.values().map(|e| e.path.as_path()))
            .filter_map(|p| p.parent())
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .map(Path::to_path_buf)
            .collect()
    }
}

/// Why a vault config could not be used.
///
/// `Display` gives one line per problem, each naming the file, the secret and the JSON
/// location, e.g.
/// `/etc/fhirbox/vault-config.json: secret "client-secret": /secret/client-secret/scope/0: resource type "Patient" has no secret-capable field; allowed: Client, ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read vault config: {reason}", path.display())]
    Read {
        /// Config file path.
        path: PathBuf,
        /// Why (no file content).
        reason: String,
    },
    /// The file is not valid JSON (or repeats a key).
    #[error("{}: invalid JSON: {message}", path.display())]
    Json {
        /// Config file path.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The JSON is well-formed but breaks the vault config rules.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// Config file path.
        path: PathBuf,
        /// Every problem found, in document order.
        problems: Vec<ConfigProblem>,
    },
    /// The background reload thread could not be started.
    #[error("{}: cannot start the reload thread for the vault config: {reason}", path.display())]
    Start {
        /// Config file path.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
}

/// One validation problem in a vault config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The secret the problem is in, when it is inside `secret.<name>`.
    pub secret: Option<String>,
    /// JSON Pointer (RFC 6901) to the offending value; empty for the document root.
    pub pointer: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(secret) = &self.secret {
            write!(f, "secret {secret:?}: ")?;
        }
        let location = if self.pointer.is_empty() {
            "(top level)"
        } else {
            &self.pointer
        };
        write!(f, "{location}: {}", self.message)
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Walks the parsed JSON, collecting every problem with its location.
struct Validator<'a> {
    types: &'a [&'a str],
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn problem(&mut self, secret: Option<&str>, pointer: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            secret: secret.map(str::to_string),
            pointer: pointer.to_string(),
            message: message.into(),
        });
    }

    fn root(&mut self, root: &Value) -> BTreeMap<String, SecretEntry> {
        let mut out = BTreeMap::new();
        let Some(obj) = root.as_object() else {
            self.problem(
                None,
                "",
                format!(
                    "expected an object {{\"secret\": {{...}}}}, found {}",
                    kind(root)
                ),
            );
            return out;
        };
        for key in obj.keys().filter(|k| *k != "secret") {
            self.problem(
                None,
                &pointer(&[key]),
                "unknown key; the only top-level key is \"secret\"",
            );
        }
        let Some(secrets) = obj.get("secret") else {
            self.problem(None, "", "missing key \"secret\"");
            return out;
        };
        let Some(secrets) = secrets.as_object() else {
            self.problem(
                None,
                "/secret",
                format!(
                    "expected an object mapping secret names to entries, found {}",
                    kind(secrets)
                ),
            );
            return out;
        };
        for (name, entry) in secrets {
            if let Some(entry) = self.entry(name, entry) {
                out.insert(name.clone(), entry);
            }
        }
        out
    }

    fn entry(&mut self, name: &str, value: &Value) -> Option<SecretEntry> {
        let base = pointer(&["secret", name]);
        let before = self.problems.len();
        if !is_valid_secret_name(name) {
            self.problem(
                Some(name),
                &base,
                "invalid secret name: use only letters, digits, '.', '_' and '-'",
            );
        }
        let Some(obj) = value.as_object() else {
            self.problem(
                Some(name),
                &base,
                format!(
                    "expected an object with \"path\" and \"scope\", found {}",
                    kind(value)
                ),
            );
            return None;
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "path" | "scope" | "rotation_grace") {
                self.problem(
                    Some(name),
                    &format!("{base}/{}", escape(key)),
                    "unknown key; allowed: \"path\", \"scope\", \"rotation_grace\"",
                );
            }
        }
        let path = self.path(name, &base, obj);
        let scope = self.scope(name, &base, obj);
        let rotation_grace = self.grace(name, &base, obj);
        if self.problems.len() != before {
            return None;
        }
        Some(SecretEntry {
            name: name.to_string(),
            path: path?,
            scope: scope?,
            rotation_grace,
        })
    }

    fn path(&mut self, name: &str, base: &str, obj: &Map<String, Value>) -> Option<PathBuf> {
        let at = format!("{base}/path");
        let Some(value) = obj.get("path") else {
            self.problem(
                Some(name),
                base,
                "missing key \"path\" (absolute path of the secret file)",
            );
            return None;
        };
        let Some(path) = value.as_str() else {
            self.problem(
                Some(name),
                &at,
                format!("expected a string, found {}", kind(value)),
            );
            return None;
        };
        if path.contains('\0') {
            self.problem(Some(name), &at, "path contains a NUL byte");
            return None;
        }
        if !path.starts_with('/') {
            self.problem(Some(name), &at, format!("path {path:?} is not absolute; write the full path, e.g. \"/run/vault-secrets/{name}\""));
            return None;
        }
        // A `..` segment makes the effective location depend on symlinks above it and is
        // never needed in a config; refuse it like the CSI driver refuses it in object paths.
        if path.split('/').any(|segment| segment == "..") {
            self.problem(
                Some(name),
                &at,
                format!("path {path:?} contains a \"..\" segment"),
            );
            return None;
        }
        if path.ends_with('/') {
            self.problem(
                Some(name),
                &at,
                format!("path {path:?} names a directory; it must name a file"),
            );
            return None;
        }
        // System trees are never secrets: /proc/self/environ holds the server's own
        // environment, root secret included (docs/external-secrets.md, "Refused paths").
        // The path is checked as written and, where it exists, through its symlinks; reads
        // check again, since a symlink can be re-pointed after the config is loaded.
        if let Some((root, resolved)) = refused_location(Path::new(path)) {
            let how = match resolved {
                Some(real) => format!("resolves to {}, which is", real.display()),
                None => "is".to_string(),
            };
            self.problem(
                Some(name),
                &at,
                format!(
                    "path {path:?} {how} under {root}; secrets are never read from /proc, /sys or /dev \
                     (system files, such as /proc/self/environ with the server's own environment)"
                ),
            );
            return None;
        }
        Some(PathBuf::from(path))
    }

    /// Accepts the three published forms (docs/external-secrets.md, "The vault config"): an
    /// array of `"Type"`/`"Type/id"` strings, one `{"resource_type", "id"?}` object, or an
    /// array of such objects.
    fn scope(
        &mut self,
        name: &str,
        base: &str,
        obj: &Map<String, Value>,
    ) -> Option<Vec<ScopeRule>> {
        let at = format!("{base}/scope");
        let Some(value) = obj.get("scope") else {
            self.problem(
                Some(name),
                base,
                "missing key \"scope\" (which resources may use this secret)",
            );
            return None;
        };
        let before = self.problems.len();
        let mut rules = Vec::new();
        match value {
            Value::Array(items) if items.is_empty() => {
                self.problem(
                    Some(name),
                    &at,
                    "scope is empty: list at least one \"Type\" or \"Type/id\"",
                );
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_at = format!("{at}/{i}");
                    let rule = match item {
                        Value::String(s) => self.scope_string(name, &item_at, s),
                        Value::Object(o) => self.scope_object(name, &item_at, o),
                        other => {
                            self.problem(Some(name), &item_at, format!("expected \"Type\", \"Type/id\" or {{\"resource_type\": ..., \"id\": ...}}, found {}", kind(other)));
                            None
                        }
                    };
                    rules.extend(rule);
                }
            }
            Value::Object(o) => rules.extend(self.scope_object(name, &at, o)),
            Value::String(s) => {
                self.problem(
                    Some(name),
                    &at,
                    format!("scope must be an array or an object; write [{s:?}]"),
                );
            }
            other => {
                self.problem(Some(name), &at, format!("scope must be an array of \"Type\"/\"Type/id\" strings or {{\"resource_type\": ..., \"id\": ...}} objects, found {}", kind(other)));
            }
        }
        (self.problems.len() == before).then_some(rules)
    }

    fn scope_string(&mut self, name: &str, at: &str, s: &str) -> Option<ScopeRule> {
        let (rt, id) = match s.split_once('/') {
            Some((rt, id)) => (rt, Some(id)),
            None => (s, None),
        };
        let rt_ok = self.resource_type(name, at, rt);
        let id_ok = id.is_none_or(|id| self.id(name, at, id));
        if !(rt_ok && id_ok) {
            return None;
        }
        Some(match id {
            Some(id) => ScopeRule::instance(rt, id),
            None => ScopeRule::any_of_type(rt),
        })
    }

    fn scope_object(&mut self, name: &str, at: &str, o: &Map<String, Value>) -> Option<ScopeRule> {
        let before = self.problems.len();
        for key in o.keys() {
            if !matches!(key.as_str(), "resource_type" | "id") {
                self.problem(
                    Some(name),
                    &format!("{at}/{}", escape(key)),
                    "unknown key; allowed: \"resource_type\", \"id\"",
                );
            }
        }
        let rt = match o.get("resource_type") {
            None => {
                self.problem(Some(name), at, "missing key \"resource_type\"");
                None
            }
            Some(Value::String(rt)) => {
                self.resource_type(name, &format!("{at}/resource_type"), rt);
                Some(rt.as_str())
            }
            Some(other) => {
                self.problem(
                    Some(name),
                    &format!("{at}/resource_type"),
                    format!("expected a string, found {}", kind(other)),
                );
                None
            }
        };
        let id = match o.get("id") {
            None => None,
            Some(Value::String(id)) => {
                self.id(name, &format!("{at}/id"), id);
                Some(id.as_str())
            }
            Some(other) => {
                self.problem(
                    Some(name),
                    &format!("{at}/id"),
                    format!(
                        "expected a string (or leave \"id\" out for every instance), found {}",
                        kind(other)
                    ),
                );
                None
            }
        };
        if self.problems.len() != before {
            return None;
        }
        let rt = rt?;
        Some(match id {
            Some(id) => ScopeRule::instance(rt, id),
            None => ScopeRule::any_of_type(rt),
        })
    }

    fn resource_type(&mut self, name: &str, at: &str, rt: &str) -> bool {
        if self.types.contains(&rt) {
            return true;
        }
        let allowed = self.types.join(", ");
        if rt.is_empty() {
            self.problem(
                Some(name),
                at,
                format!("resource type is empty; allowed: {allowed}"),
            );
        } else {
            self.problem(
                Some(name),
                at,
                format!("resource type {rt:?} has no secret-capable field; allowed: {allowed}"),
            );
        }
        false
    }

    fn id(&mut self, name: &str, at: &str, id: &str) -> bool {
        if is_valid_fhir_id(id) {
            return true;
        }
        self.problem(
            Some(name),
            at,
            format!("id {id:?} is not a valid FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"),
        );
        false
    }

    fn grace(&mut self, name: &str, base: &str, obj: &Map<String, Value>) -> Option<Duration> {
        let value = obj.get("rotation_grace")?;
        let at = format!("{base}/rotation_grace");
        let Some(s) = value.as_str() else {
            self.problem(
                Some(name),
                &at,
                format!(
                    "expected a duration string such as \"30s\" or \"5m\", found {}",
                    kind(value)
                ),
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    Some(name),
                    &at,
                    format!("{s:?} is not a duration (examples: \"30s\", \"5m\", \"1h 30m\"): {e}"),
                );
                None
            }
        }
    }
}

/// Secret names: `[A-Za-z0-9._-]+` (docs/external-secrets.md, "The vault config").
pub fn is_valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}` (FHIR R4 datatypes, 2.24.0.x "id").
pub(crate) fn is_valid_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn pointer(tokens: &[&str]) -> String {
    tokens.iter().map(|t| format!("/{}", escape(t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPES: &[&str] = &[
        "Client",
        "IdentityProvider",
        "TokenIntrospector",
        "AidboxTopicDestination",
    ];
    const FILE: &str = "/etc/fhirbox/vault-config.json";

    fn parse(json: &str) -> Result<VaultConfig, ConfigError> {
        VaultConfig::parse(json.as_bytes(), Path::new(FILE), TYPES)
    }

    fn problems(json: &str) -> Vec<ConfigProblem> {
        match parse(json) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn one_line(json: &str) -> String {
        let err = parse(json).unwrap_err();
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        text
    }

    #[test]
    fn accepts_array_of_strings() {
        let c = parse(r#"{"secret": {"client-secret": {"path": "/run/vault-secrets/client-secret", "scope": ["Client/basic", "TokenIntrospector"]}}}"#).unwrap();
        let e = c.get("client-secret").unwrap();
        assert_eq!(e.path(), Path::new("/run/vault-secrets/client-secret"));
        assert_eq!(
            e.scope(),
            &[
                ScopeRule::instance("Client", "basic"),
                ScopeRule::any_of_type("TokenIntrospector")
            ]
        );
        assert_eq!(e.rotation_grace(), None);
        assert_eq!(c.source(), Path::new(FILE));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn accepts_single_object_with_and_without_id() {
        let c = parse(
            r#"{"secret": {
            "a": {"path": "/s/a", "scope": {"resource_type": "Client", "id": "my-client"}},
            "b": {"path": "/s/b", "scope": {"resource_type": "TokenIntrospector"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.get("a").unwrap().scope(),
            &[ScopeRule::instance("Client", "my-client")]
        );
        assert_eq!(
            c.get("b").unwrap().scope(),
            &[ScopeRule::any_of_type("TokenIntrospector")]
        );
    }

    #[test]
    fn accepts_array_of_objects() {
        let c = parse(r#"{"secret": {"a": {"path": "/s/a", "scope": [
            {"resource_type": "Client", "id": "x"}, {"resource_type": "AidboxTopicDestination"}]}}}"#).unwrap();
        assert_eq!(
            c.get("a").unwrap().scope_strings(),
            vec!["Client/x", "AidboxTopicDestination"]
        );
    }

    #[test]
    fn accepts_empty_secret_map() {
        assert!(parse(r#"{"secret": {}}"#).unwrap().is_empty());
    }

    #[test]
    fn parses_rotation_grace() {
        let c = parse(r#"{"secret": {"a": {"path": "/s/a", "scope": ["Client"], "rotation_grace": "30s"},
                                     "b": {"path": "/s/b", "scope": ["Client"], "rotation_grace": "1m 30s"},
                                     "c": {"path": "/s/c", "scope": ["Client"], "rotation_grace": "300ms"}}}"#).unwrap();
        assert_eq!(
            c.get("a").unwrap().rotation_grace(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            c.get("b").unwrap().rotation_grace(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            c.get("c").unwrap().rotation_grace(),
            Some(Duration::from_millis(300))
        );
    }

    #[test]
    fn unknown_resource_type_message_names_file_secret_location_and_allowed() {
        let text =
            one_line(r#"{"secret": {"client-secret": {"path": "/s/a", "scope": ["Patient"]}}}"#);
        assert_eq!(
            text,
            "/etc/fhirbox/vault-config.json: secret \"client-secret\": /secret/client-secret/scope/0: \
             resource type \"Patient\" has no secret-capable field; allowed: Client, IdentityProvider, \
             TokenIntrospector, AidboxTopicDestination"
        );
    }

    #[test]
    fn each_rule_is_reported_with_its_location() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"{"secret": {"a": {"path": "run/a", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "not absolute",
            ),
            (
                r#"{"secret": {"a": {"path": "/run/../etc/shadow", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "\"..\" segment",
            ),
            (
                r#"{"secret": {"a": {"path": "/run/..", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "\"..\" segment",
            ),
            (
                r#"{"secret": {"a": {"path": "/proc/self/environ", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "is under /proc; secrets are never read from /proc, /sys or /dev",
            ),
            (
                r#"{"secret": {"a": {"path": "//proc/1/environ", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "under /proc",
            ),
            (
                r#"{"secret": {"a": {"path": "/sys/class/x", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "under /sys",
            ),
            (
                r#"{"secret": {"a": {"path": "/dev/shm/s", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "under /dev",
            ),
            (
                r#"{"secret": {"a": {"path": "/run/", "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "directory",
            ),
            (
                r#"{"secret": {"a": {"path": 5, "scope": ["Client"]}}}"#,
                "/secret/a/path",
                "expected a string",
            ),
            (
                r#"{"secret": {"a": {"scope": ["Client"]}}}"#,
                "/secret/a",
                "missing key \"path\"",
            ),
            (
                r#"{"secret": {"a": {"path": "/a"}}}"#,
                "/secret/a",
                "missing key \"scope\"",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": []}}}"#,
                "/secret/a/scope",
                "scope is empty",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": "Client"}}}"#,
                "/secret/a/scope",
                "write [\"Client\"]",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": 3}}}"#,
                "/secret/a/scope",
                "must be an array",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": [3]}}}"#,
                "/secret/a/scope/0",
                "found a number",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": [""]}}}"#,
                "/secret/a/scope/0",
                "resource type is empty",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client/"]}}}"#,
                "/secret/a/scope/0",
                "not a valid FHIR id",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client/a/b"]}}}"#,
                "/secret/a/scope/0",
                "not a valid FHIR id",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client/a_b"]}}}"#,
                "/secret/a/scope/0",
                "not a valid FHIR id",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": {"id": "x"}}}}"#,
                "/secret/a/scope",
                "missing key \"resource_type\"",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": {"resource_type": "Patient"}}}}"#,
                "/secret/a/scope/resource_type",
                "no secret-capable field",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": {"resource_type": "Client", "id": null}}}}"#,
                "/secret/a/scope/id",
                "expected a string",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": [{"resource_type": "Client", "id": "x", "kind": 1}]}}}"#,
                "/secret/a/scope/0/kind",
                "unknown key",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client"], "rotation_grace": "soon"}}}"#,
                "/secret/a/rotation_grace",
                "not a duration",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client"], "rotation_grace": 30}}}"#,
                "/secret/a/rotation_grace",
                "expected a duration string",
            ),
            (
                r#"{"secret": {"a": {"path": "/a", "scope": ["Client"], "paht": "/b"}}}"#,
                "/secret/a/paht",
                "unknown key",
            ),
            (
                r#"{"secret": {"a b": {"path": "/a", "scope": ["Client"]}}}"#,
                "/secret/a b",
                "invalid secret name",
            ),
            (
                r#"{"secret": {"a/b": {"path": "/a", "scope": ["Client"]}}}"#,
                "/secret/a~1b",
                "invalid secret name",
            ),
            (
                r#"{"secret": {"": {"path": "/a", "scope": ["Client"]}}}"#,
                "/secret/",
                "invalid secret name",
            ),
            (
                r#"{"secret": {"a": "/a"}}"#,
                "/secret/a",
                "expected an object",
            ),
        ];
        for (json, location, needle) in cases {
            let text = one_line(json);
            let secret = json.split('"').nth(3).unwrap();
            assert!(
                text.starts_with(&format!("{FILE}: secret {secret:?}: {location}: ")),
                "{json}\n=> {text}"
            );
            assert!(text.contains(needle), "{json}\n=> {text}");
        }
    }

    #[test]
    fn top_level_errors() {
        let text = parse(r#"{"secrets": {}}"#).unwrap_err().to_string();
        assert!(
            text.contains(&format!("{FILE}: /secrets: unknown key")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{FILE}: (top level): missing key \"secret\"")),
            "{text}"
        );
        let p = problems(r#"{"secrets": {}}"#);
        assert_eq!(p.len(), 2, "unknown key and missing \"secret\": {p:?}");
        assert!(one_line("[]").contains("(top level): expected an object"));
        assert!(one_line(r#"{"secret": []}"#).contains("/secret: expected an object"));
    }

    #[test]
    fn collects_every_problem() {
        let p = problems(
            r#"{"secret": {
            "a": {"path": "rel", "scope": ["Patient", "Client/bad id"], "extra": true},
            "b": {"path": "/ok", "scope": ["Client"]},
            "c": {"path": "/x/../y", "scope": []}}}"#,
        );
        let where_: Vec<(Option<&str>, &str)> = p
            .iter()
            .map(|p| (p.secret.as_deref(), p.pointer.as_str()))
            .collect();
        assert_eq!(
            where_,
            vec![
                (Some("a"), "/secret/a/extra"),
                (Some("a"), "/secret/a/path"),
                (Some("a"), "/secret/a/scope/0"),
                (Some("a"), "/secret/a/scope/1"),
                (Some("c"), "/secret/c/path"),
                (Some("c"), "/secret/c/scope"),
            ]
        );
        let text = parse(r#"{"secret": {"a": {"path": "rel", "scope": []}}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.starts_with(FILE)), "{text}");
    }

    #[test]
    fn invalid_json_and_duplicate_keys() {
        let err = parse(r#"{"secret": {"#).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("{FILE}: invalid JSON: ")),
            "{err}"
        );
        let err = parse(r#"{"secret": {"a": {"path": "/a", "scope": ["Client"]}, "a": {"path": "/b", "scope": ["Client"]}}}"#).unwrap_err();
        assert!(err.to_string().contains("\"a\" appears twice"), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn a_path_that_leads_into_proc_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("client-secret");
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        let json = format!(
            r#"{{"secret": {{"client-secret": {{"path": "{}", "scope": ["Client"]}}}}}}"#,
            link.display()
        );
        let text = one_line(&json);
        assert!(
            text.starts_with(&format!(
                "{FILE}: secret \"client-secret\": /secret/client-secret/path: path \"{}\" resolves to /proc/",
                link.display()
            )),
            "{text}"
        );
        assert!(text.contains("which is under /proc"), "{text}");
        // A path that does not exist yet is judged as written.
        let later = dir.path().join("not-yet");
        let json = format!(
            r#"{{"secret": {{"s": {{"path": "{}", "scope": ["Client"]}}}}}}"#,
            later.display()
        );
        assert!(parse(&json).is_ok());
    }

    #[test]
    fn load_reports_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = VaultConfig::load(&dir.path().join("missing.json"), TYPES).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string()
                .contains("missing.json: cannot read vault config: file not found"),
            "{err}"
        );
        let err = VaultConfig::load(dir.path(), TYPES).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[test]
    fn watch_dirs_are_parents_of_config_and_visible_paths() {
        let c = parse(r#"{"secret": {"a": {"path": "/run/s/a", "scope": ["Client"]}, "b": {"path": "/run/s/b", "scope": ["Client"]},
                                     "c": {"path": "/other/c", "scope": ["Client"]}}}"#).unwrap();
        let dirs: Vec<PathBuf> = c
            .watch_dirs(Path::new("/etc/fhirbox/v.json"))
            .into_iter()
            .collect();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/etc/fhirbox"),
                PathBuf::from("/other"),
                PathBuf::from("/run/s")
            ]
        );
    }

    #[test]
    fn name_and_id_rules() {
        assert!(is_valid_secret_name("client-secret.v1_A"));
        assert!(
            !is_valid_secret_name("a b") && !is_valid_secret_name("") && !is_valid_secret_name("é")
        );
        assert!(is_valid_fhir_id("a.B-1") && is_valid_fhir_id(&"a".repeat(64)));
        assert!(
            !is_valid_fhir_id(&"a".repeat(65)) && !is_valid_fhir_id("a_b") && !is_valid_fhir_id("")
        );
    }
}
