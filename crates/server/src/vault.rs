//! The external-secrets feature on the server side (docs/external-secrets.md): starting
//! the resolver, the write-time rules for secret references on the nine
//! secret-capable fields, the root-only `/admin/secrets` table, metrics, and
//! `fhirbox vault check`.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::secret_fields::{
    fields_of, secret_capable_types, FieldLocation, SecretField, DATA_ABSENT_REASON_URL,
    SECRET_FIELDS, SECRET_REFERENCE_URL,
};
use fhirbox_fhir::IssueType;
use fhirbox_secrets::{
    read_secret_file, ConfigError, ConfigProblem, Requester, ResolverOptions, SecretError,
    SecretEvents, SecretResolver, SecretState, VaultConfig, DEFAULT_MAX_FILE_SIZE,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::settings::Settings;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResolutionLabels {
    secret: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabel {
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Counts resolver events in Prometheus metrics. Labels carry names and
/// reasons only; a name the config does not define is counted as `(unknown)`
/// so stray references cannot grow the label set.
struct SecretMetrics {
    resolutions: Family<ResolutionLabels, Counter>,
    rotations: Family<SecretLabel, Counter>,
    reloads: Family<ResultLabel, Counter>,
}

impl SecretEvents for SecretMetrics {
    fn resolution(&self, name: &str, reason: &'static str) {
        let secret = if reason == "unknown_secret" {
            "(unknown)"
        } else {
            name
        };
        self.resolutions
            .get_or_create(&ResolutionLabels {
                secret: secret.to_owned(),
                result: reason.to_owned(),
            })
            .inc();
    }

    fn rotation(&self, name: &str) {
        self.rotations
            .get_or_create(&SecretLabel {
                secret: name.to_owned(),
            })
            .inc();
    }

    fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Starts the resolver when `BOX_VAULT_CONFIG` is set.
pub fn start(
    settings: &Settings,
    metrics: &Metrics,
) -> Result<Option<SecretResolver>, ConfigError> {
    let Some(path) = &settings.vault_config else {
        return Ok(None);
    };
    let events = SecretMetrics {
        resolutions: Family::default(),
        rotations: Family::default(),
        reloads: Family::default(),
    };
    metrics.with_registry(|registry| {
        registry.register(
            "secret_resolutions",
            "Uses of external secrets by secret and result",
            events.resolutions.clone(),
        );
        registry.register(
            "secret_rotations",
            "Observed changes of external secret values",
            events.rotations.clone(),
        );
        registry.register(
            "vault_config_reloads",
            "Vault config loads by result",
            events.reloads.clone(),
        );
    });
    let mut options = ResolverOptions::new(secret_capable_types());
    options.poll_interval = settings.vault_poll;
    options.watch_events = settings.vault_watch;
    options.events = Arc::new(events);
    let resolver = SecretResolver::start(path, options)?;
    tracing::info!(path = %path.display(), secrets = resolver.config().len(), "external secrets enabled");
    Ok(Some(resolver))
}

/// A segment of a JSON location.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn display_path(resource_type: &str, path: &[Seg]) -> String {
    let mut out = resource_type.to_owned();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k.strip_prefix('_').unwrap_or(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Every element (object) whose `extension` list holds a secret reference.
fn find_references(value: &Value, path: &mut Vec<Seg>, found: &mut Vec<Vec<Seg>>) {
    match value {
        Value::Object(fields) => {
            let has_reference = fields
                .get("extension")
                .and_then(Value::as_array)
                .is_some_and(|list| {
                    list.iter()
                        .any(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_REFERENCE_URL))
                });
            if has_reference {
                found.push(path.clone());
            }
            for (k, v) in fields {
                path.push(Seg::Key(k.clone()));
                find_references(v, path, found);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                find_references(v, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The secret-capable field an element path belongs to, if any.
fn field_at(body: &Value, resource_type: &str, path: &[Seg]) -> Option<&'static SecretField> {
    fields_of(resource_type).find(|field| match field.location {
        FieldLocation::Path(keys) => {
            path.len() == keys.len()
                && keys.iter().zip(path).enumerate().all(|(i, (key, seg))| {
                    let expected = if i + 1 == keys.len() {
                        format!("_{key}")
                    } else {
                        (*key).to_owned()
                    };
                    *seg == Seg::Key(expected)
                })
        }
        FieldLocation::ArrayItem { array, field: name } => {
            path.len() == array.len() + 2
                && array
                    .iter()
                    .zip(path)
                    .all(|(key, seg)| *seg == Seg::Key((*key).to_owned()))
                && matches!(path[array.len()], Seg::Index(_))
                && path[array.len() + 1] == Seg::Key(format!("_{name}"))
        }
        FieldLocation::NamedParameter { name } => match path {
            [Seg::Key(p), Seg::Index(i), Seg::Key(v)]
                if p == "parameter" && v == "_valueString" =>
            {
                body.get("parameter")
                    .and_then(|params| params.get(*i))
                    .and_then(|param| param.get("name"))
                    .and_then(Value::as_str)
                    == Some(name)
            }
            _ => false,
        },
    })
}

fn value_at<'a>(body: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(body, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::Index(i) => v.get(*i),
    })
}

fn all_fields_text() -> String {
    SECRET_FIELDS
        .iter()
        .map(|f| format!("{}.{}", f.resource_type, f.display))
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The write rules for every secret reference in `body` (docs/external-secrets.md,
/// "Rules on write").
pub fn check_references(
    resource_type: &str,
    id: &str,
    body: &Value,
    vault: Option<&SecretResolver>,
) -> Result<(), ApiError> {
    let mut found = Vec::new();
    find_references(body, &mut Vec::new(), &mut found);
    for path in found {
        let at = display_path(resource_type, &path);
        let Some(field) = field_at(body, resource_type, &path) else {
            return Err(ApiError::unprocessable(format!(
                "{at} cannot refer to an external secret; the secret-capable fields are: {}",
                all_fields_text()
            ))
            .at(at));
        };
        let element = value_at(body, &path).unwrap_or(&Value::Null);
        let extensions = element
            .get("extension")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut literal_path = path.clone();
        if let Some(Seg::Key(last)) = literal_path.last_mut() {
            *last = last.trim_start_matches('_').to_owned();
        }
        if value_at(body, &literal_path).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::unprocessable(format!(
                "{at} has both a value and a secret reference; remove the value and keep only the reference in _{}",
                field.display.rsplit(['.', ']']).next().unwrap_or(field.display)
            ))
            .at(at));
        }
        let names: Vec<&str> = extensions
            .iter()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_REFERENCE_URL))
            .filter_map(|e| e.get("valueString").and_then(Value::as_str))
            .collect();
        let [name] = names.as_slice() else {
            return Err(ApiError::unprocessable(format!(
                "{at}: the secret-reference extension needs exactly one valueString naming a secret of the vault config"
            ))
            .at(at));
        };
        if !valid_name(name) {
            return Err(ApiError::unprocessable(format!(
                "{at}: {name:?} is not a secret name; names use A-Z, a-z, 0-9, '.', '_' and '-'"
            ))
            .at(at));
        }
        let masked = extensions.iter().any(|e| {
            e.get("url").and_then(Value::as_str) == Some(DATA_ABSENT_REASON_URL)
                && e.get("valueCode").and_then(Value::as_str) == Some("masked")
        });
        if !masked || extensions.len() != 2 {
            return Err(ApiError::unprocessable(format!(
                "{at}: a secret reference carries exactly two extensions, data-absent-reason with valueCode \"masked\" and secret-reference with the secret name"
            ))
            .at(at));
        }
        let Some(vault) = vault else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                IssueType::NotSupported,
                format!(
                    "{at} refers to the external secret {name:?}, but external secrets are off on this server; set BOX_VAULT_CONFIG to the path of a vault config that defines it and restart"
                ),
            )
            .at(at));
        };
        if let Err(e) = vault.check_reference(name, &Requester::new(resource_type, id)) {
            let hint = match &e {
                SecretError::UnknownSecret { .. } => format!(
                    "; add it to the vault config ({})",
                    vault.config_path().display()
                ),
                SecretError::NotInScope { .. } => {
                    format!("; add \"{resource_type}/{id}\" or \"{resource_type}\" to its scope")
                }
                _ => String::new(),
            };
            return Err(ApiError::unprocessable(format!("{at}: {e}{hint}")).at(at));
        }
    }
    Ok(())
}

fn time_text(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| json!(fhirbox_store::instant::format_micros(d.as_micros() as i64)))
        .unwrap_or(Value::Null)
}

/// `GET /admin/secrets` (root only): names, paths, scopes, states and times — never values.
pub async fn admin_secrets(
    State(app): State<AppState>,
    identity: Option<Extension<Identity>>,
) -> Response {
    if !matches!(identity.as_deref(), Some(Identity::Root { .. })) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "only the root client may read /admin/secrets",
        )
        .into_response();
    }
    let Some(vault) = &app.vault else {
        return axum::Json(
            json!({"enabled": false, "hint": "set BOX_VAULT_CONFIG to turn external secrets on"}),
        )
        .into_response();
    };
    let config = vault.config_status();
    let secrets: Vec<Value> = vault
        .status()
        .into_iter()
        .map(|s| {
            let (state, reason, message) = match &s.state {
                SecretState::Ok => ("ok", None, None),
                SecretState::Retrying { reason, message } => {
                    ("retrying", Some(*reason), Some(message.clone()))
                }
                SecretState::Error { reason, message } => {
                    ("error", Some(*reason), Some(message.clone()))
                }
            };
            json!({
                "name": s.name,
                "path": s.path.display().to_string(),
                "scope": s.scope,
                "rotationGraceSeconds": s.rotation_grace.map(|d| d.as_secs_f64()),
                "state": state,
                "reason": reason,
                "message": message,
                "lastLoaded": time_text(s.last_loaded),
                "lastRotated": time_text(s.last_rotated),
                "sizeBytes": s.size,
            })
        })
        .collect();
    axum::Json(json!({
        "enabled": true,
        "config": {
            "path": config.path.display().to_string(),
            "secrets": config.secrets,
            "lastLoaded": time_text(Some(config.last_ok)),
            "lastError": config.last_error.map(|e| json!({"at": time_text(Some(e.at)), "message": e.message})),
        },
        "secrets": secrets,
    }))
    .into_response()
}

/// What `fhirbox vault check` found for one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CheckState {
    /// The file reads and the value is usable; `warning` notes something odd about it.
    Ok { warning: Option<&'static str> },
    /// The secret cannot be used: reason label and message (never the value).
    Failed {
        reason: &'static str,
        message: String,
    },
}

/// One row of `fhirbox vault check`.
#[derive(Debug)]
struct CheckRow {
    name: String,
    path: String,
    scope: String,
    state: CheckState,
    size: Option<usize>,
}

impl CheckRow {
    fn failed(&self) -> bool {
        matches!(self.state, CheckState::Failed { .. })
    }

    fn state_text(&self) -> String {
        match &self.state {
            CheckState::Ok { warning: None } => "ok".to_owned(),
            CheckState::Ok {
                warning: Some(warning),
            } => format!("ok (warning: {warning})"),
            CheckState::Failed { reason, message } => format!("error: {reason}: {message}"),
        }
    }
}

/// Totals of a `fhirbox vault check` run: each secret counts once, whatever went wrong
/// with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CheckTotals {
    secrets: usize,
    failed: usize,
    warnings: usize,
}

impl CheckTotals {
    fn of(rows: &[CheckRow]) -> Self {
        Self {
            secrets: rows.len(),
            failed: rows.iter().filter(|r| r.failed()).count(),
            warnings: rows
                .iter()
                .filter(|r| matches!(r.state, CheckState::Ok { warning: Some(_) }))
                .count(),
        }
    }

    /// The last line of the table: how many of how many failed, never the total as if it
    /// were the failures.
    fn summary(&self, config: &Path) -> String {
        let warnings = match self.warnings {
            0 => String::new(),
            n => format!(", {n} with a warning"),
        };
        if self.failed == 0 {
            format!(
                "ok: {} secret(s) checked in {}{warnings}",
                self.secrets,
                config.display()
            )
        } else {
            format!(
                "FAILED: {} of {} secret(s) failed in {}{warnings}",
                self.failed,
                self.secrets,
                config.display()
            )
        }
    }
}

/// A value this short is almost certainly not the credential that was meant.
const ONE_BYTE_WARNING: &str =
    "value is 1 byte long; check that the file holds the whole credential";

/// Reads every secret of `config` by the resolver's own rules (docs/external-secrets.md,
/// "Reading, caching and rotation") and says what state each is in.
fn check_rows(config: &VaultConfig) -> Vec<CheckRow> {
    config
        .secrets()
        .map(|entry| {
            let client_only = entry.scope().iter().all(|r| r.resource_type() == "Client");
            let (state, size) =
                match read_secret_file(entry.name(), entry.path(), DEFAULT_MAX_FILE_SIZE) {
                    Ok(value) if client_only && !value.is_valid_client_secret() => (
                        CheckState::Failed {
                            reason: "invalid_characters",
                            message:
                                "a Client secret must be printable ASCII (RFC 6749 appendix A)"
                                    .to_owned(),
                        },
                        Some(value.len()),
                    ),
                    Ok(value) => {
                        let warning = (value.len() == 1).then_some(ONE_BYTE_WARNING);
                        (CheckState::Ok { warning }, Some(value.len()))
                    }
                    Err(e) => (
                        CheckState::Failed {
                            reason: e.reason(),
                            message: e.to_string(),
                        },
                        None,
                    ),
                };
            CheckRow {
                name: entry.name().to_owned(),
                path: entry.path().display().to_string(),
                scope: entry.scope_strings().join(", "),
                state,
                size,
            }
        })
        .collect()
}

/// Reports a vault config that cannot be used at all: every problem (file, secret, JSON
/// location, e.g. a path under /proc) and how many secrets they are in.
fn report_invalid_config(config: &Path, error: &ConfigError, as_json: bool) {
    let problems: &[ConfigProblem] = match error {
        ConfigError::Invalid { problems, .. } => problems,
        _ => &[],
    };
    let in_secrets = secrets_with_problems(problems);
    if as_json {
        let listed: Vec<Value> = problems
            .iter()
            .map(|p| json!({"secret": p.secret, "location": p.pointer, "message": p.message}))
            .collect();
        println!(
            "{}",
            json!({"ok": false, "config": config.display().to_string(), "error": error.to_string(),
                   "problems": listed, "secretsWithProblems": in_secrets})
        );
        return;
    }
    eprintln!("vault config is invalid:");
    for line in error.to_string().lines() {
        eprintln!("  {line}");
    }
    if !problems.is_empty() {
        eprintln!(
            "FAILED: {} problem(s) in {in_secrets} secret(s) of {}; no secret file was checked",
            problems.len(),
            config.display()
        );
    }
}

/// How many distinct secrets the problems are in (one secret can have several).
fn secrets_with_problems(problems: &[ConfigProblem]) -> usize {
    problems
        .iter()
        .filter_map(|p| p.secret.as_deref())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// `fhirbox vault check`: validates a vault config and every file it names.
/// Returns the process exit code (0 only when everything is good).
pub fn check_command(config: &Path, as_json: bool) -> i32 {
    let types = secret_capable_types();
    let parsed = match VaultConfig::load(config, &types) {
        Ok(c) => c,
        Err(e) => {
            report_invalid_config(config, &e, as_json);
            return 1;
        }
    };
    let rows = check_rows(&parsed);
    let totals = CheckTotals::of(&rows);
    if as_json {
        let secrets: Vec<Value> = rows
            .iter()
            .map(|r| {
                let warning = match r.state {
                    CheckState::Ok { warning } => warning,
                    CheckState::Failed { .. } => None,
                };
                json!({"name": r.name, "path": r.path, "scope": r.scope, "state": r.state_text(),
                       "warning": warning, "sizeBytes": r.size})
            })
            .collect();
        println!(
            "{}",
            json!({"ok": totals.failed == 0, "config": config.display().to_string(),
                   "total": totals.secrets, "failed": totals.failed, "warnings": totals.warnings,
                   "secrets": secrets})
        );
    } else {
        let width = |f: &dyn Fn(&CheckRow) -> usize, title: &str| {
            rows.iter().map(f).max().unwrap_or(0).max(title.len())
        };
        let (wn, wp, ws) = (
            width(&|r| r.name.len(), "NAME"),
            width(&|r| r.path.len(), "PATH"),
            width(&|r| r.scope.len(), "SCOPE"),
        );
        println!(
            "{:wn$}  {:wp$}  {:ws$}  {:>6}  STATE",
            "NAME", "PATH", "SCOPE", "BYTES"
        );
        for r in &rows {
            let size = r.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:wn$}  {:wp$}  {:ws$}  {:>6}  {}",
                r.name,
                r.path,
                r.scope,
                size,
                r.state_text()
            );
        }
        println!("{}", totals.summary(config));
    }
    if totals.failed == 0 {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> Value {
        json!({"extension": [
            {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"},
            {"url": SECRET_REFERENCE_URL, "valueString": name}
        ]})
    }

    #[test]
    fn recognises_all_nine_locations() {
        let bodies = [
            ("Client", json!({"_secret": reference("a")})),
            (
                "IdentityProvider",
                json!({"client": {"_secret": reference("a"), "_private-key": reference("a"), "_certificate": reference("a")}}),
            ),
            (
                "TokenIntrospector",
                json!({"jwt": {"_secret": reference("a"), "keys": [{"kty": "OCT"}, {"_k": reference("a")}]},
                                         "introspection_endpoint": {"_authorization": reference("a")}}),
            ),
            (
                "AidboxTopicDestination",
                json!({"parameter": [
                {"name": "saslJaasConfig", "_valueString": reference("a")},
                {"name": "sslKeystoreKey", "_valueString": reference("a")}]}),
            ),
        ];
        let mut total = 0;
        for (rt, body) in bodies {
            let mut found = Vec::new();
            find_references(&body, &mut Vec::new(), &mut found);
            for path in &found {
                assert!(field_at(&body, rt, path).is_some(), "{rt} {path:?}");
            }
            total += found.len();
            // With no vault, each is refused for that reason (and not as a wrong field).
            let e = check_references(rt, "x", &body, None).unwrap_err();
            assert!(
                e.message.contains("external secrets are off"),
                "{}",
                e.message
            );
        }
        assert_eq!(total, 9);
    }

    #[test]
    fn refuses_references_elsewhere_and_malformed_ones() {
        let e = check_references("Patient", "p", &json!({"_birthDate": reference("a")}), None)
            .unwrap_err();
        assert!(
            e.message.contains("Patient.birthDate cannot refer"),
            "{}",
            e.message
        );
        assert!(e.message.contains("Client.secret"));
        let e = check_references(
            "AidboxTopicDestination",
            "d",
            &json!({"parameter": [{"name": "other", "_valueString": reference("a")}]}),
            None,
        )
        .unwrap_err();
        assert!(e.message.contains("cannot refer"));
        let e = check_references(
            "Client",
            "c",
            &json!({"secret": "x", "_secret": reference("a")}),
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("both a value and a secret reference"),
            "{}",
            e.message
        );
        let only_ref =
            json!({"_secret": {"extension": [{"url": SECRET_REFERENCE_URL, "valueString": "a"}]}});
        assert!(check_references("Client", "c", &only_ref, None)
            .unwrap_err()
            .message
            .contains("exactly two extensions"));
        let bad_name = json!({"_secret": reference("../etc/passwd")});
        assert!(check_references("Client", "c", &bad_name, None)
            .unwrap_err()
            .message
            .contains("not a secret name"));
        assert!(
            check_references("Patient", "p", &json!({"name": [{"family": "x"}]}), None).is_ok()
        );
    }

    /// 17 secrets, 12 of them failing in every way a file can fail (one of them only at
    /// read time, a symlink re-pointed into /proc after the config was loaded) and one ok
    /// with a warning: each counts exactly once.
    #[test]
    fn vault_check_counts_each_failed_secret_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let files: &[(&str, &[u8])] = &[
            ("ok-1", b"first-good-value"),
            ("ok-2", b"second-good-value\n"),
            ("ok-3", b"third-good-value"),
            ("ok-pem", b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n"),
            ("one-byte", b"x\n"),
            ("empty-1", b""),
            ("empty-2", b"\n"),
            ("blank", b"  \t \n"),
            ("inner-newline", b"line1\nline2"),
            ("tab", b"a\tb"),
        ];
        for (name, content) in files {
            std::fs::write(d.join(name), content).unwrap();
        }
        std::fs::create_dir(d.join("a-directory")).unwrap();
        std::fs::write(
            d.join("too-large"),
            vec![b'a'; (DEFAULT_MAX_FILE_SIZE + 1) as usize],
        )
        .unwrap();
        std::os::unix::fs::symlink(d.join("gone"), d.join("dangling")).unwrap();
        let mut secrets = serde_json::Map::new();
        let names = [
            "ok-1",
            "ok-2",
            "ok-3",
            "ok-pem",
            "one-byte",
            "missing-1",
            "missing-2",
            "missing-3",
            "empty-1",
            "empty-2",
            "blank",
            "inner-newline",
            "tab",
            "a-directory",
            "too-large",
            "dangling",
            "later-into-proc",
        ];
        for name in names {
            // The PEM key is for a TokenIntrospector, so inner newlines are fine for it.
            let scope = if name == "ok-pem" {
                json!(["TokenIntrospector"])
            } else {
                json!(["Client"])
            };
            secrets.insert(
                name.to_owned(),
                json!({"path": d.join(name), "scope": scope}),
            );
        }
        let text = serde_json::to_vec(&json!({ "secret": secrets })).unwrap();
        let config = VaultConfig::parse(&text, &d.join("vault.json"), &secret_capable_types())
            .expect("valid config");
        // Re-pointed after the config was loaded: refused when read.
        std::os::unix::fs::symlink("/proc/self/environ", d.join("later-into-proc")).unwrap();

        let rows = check_rows(&config);
        let totals = CheckTotals::of(&rows);
        assert_eq!(
            totals,
            CheckTotals {
                secrets: 17,
                failed: 12,
                warnings: 1
            },
            "{rows:#?}"
        );
        let reason = |name: &str| match &rows.iter().find(|r| r.name == name).unwrap().state {
            CheckState::Failed { reason, .. } => *reason,
            CheckState::Ok { .. } => "ok",
        };
        assert_eq!(reason("missing-1"), "missing");
        assert_eq!(reason("blank"), "empty");
        assert_eq!(reason("tab"), "invalid_characters");
        assert_eq!(reason("a-directory"), "not_regular");
        assert_eq!(reason("too-large"), "too_large");
        assert_eq!(reason("later-into-proc"), "refused_path");
        assert_eq!(reason("ok-pem"), "ok");
        let proc_row = rows.iter().find(|r| r.name == "later-into-proc").unwrap();
        assert!(
            proc_row.state_text().contains("which is under /proc")
                && proc_row
                    .state_text()
                    .contains("never read from /proc, /sys or /dev"),
            "{}",
            proc_row.state_text()
        );
        let one_byte = rows.iter().find(|r| r.name == "one-byte").unwrap();
        assert_eq!(
            one_byte.state_text(),
            format!("ok (warning: {ONE_BYTE_WARNING})")
        );
        assert_eq!(one_byte.size, Some(1));
        assert_eq!(
            totals.summary(Path::new("/etc/v.json")),
            "FAILED: 12 of 17 secret(s) failed in /etc/v.json, 1 with a warning"
        );
        let all_good = CheckTotals {
            secrets: 3,
            failed: 0,
            warnings: 0,
        };
        assert_eq!(
            all_good.summary(Path::new("/etc/v.json")),
            "ok: 3 secret(s) checked in /etc/v.json"
        );
    }

    #[test]
    fn problems_are_counted_by_secret_as_well() {
        let text = br#"{"secret": {
            "a": {"path": "relative", "scope": []},
            "b": {"path": "/proc/self/environ", "scope": ["Client"]},
            "c": {"path": "/run/ok", "scope": ["Client"]}}}"#;
        let Err(ConfigError::Invalid { problems, .. }) =
            VaultConfig::parse(text, Path::new("/v.json"), &secret_capable_types())
        else {
            panic!("config must be invalid");
        };
        assert_eq!(problems.len(), 3);
        assert_eq!(secrets_with_problems(&problems), 2);
    }
}
