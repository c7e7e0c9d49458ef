//! Typed settings from the environment (README.md, "Settings"). A value that is
//! present but malformed is an error naming the variable, never a default.

use std::fmt;
use std::ops::{RangeBounds, RangeInclusive};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

/// Where settings come from: the process environment in production, a map in tests.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A setting that could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{variable}: {problem}")]
pub struct SettingsError {
    pub variable: &'static str,
    pub problem: String,
}

fn err(variable: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        variable,
        problem: problem.into(),
    }
}

/// How strictly a written resource is checked against its type's
/// structure (`BOX_VALIDATION`, docs/validation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validation {
    /// Every write is validated; unknown elements are refused (`strict`).
    #[default]
    Strict,
    /// Every write is validated, but unknown elements are kept
    /// (`allow-unknown-elements`, for migrating data from a laxer server).
    AllowUnknownElements,
    /// No structural validation (`off`): for measuring its cost, never
    /// for production; the server warns at start.
    Off,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A database URL whose password never reaches `Display` or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> DatabaseUrl {
        DatabaseUrl(url.into())
    }

    /// The full URL, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The URL with any password replaced by `***`.
    pub fn masked(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://") else {
            return url.clone();
        };
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                let user = userinfo.split(':').next().unwrap_or("");
                let masked_userinfo = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    user.to_owned()
                };
                format!(
                    "{}://{}@{}{}",
                    &url[..scheme_end],
                    masked_userinfo,
                    &authority[at + 1..],
                    &rest[authority_end..]
                )
            }
            None => url.clone(),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.masked())
    }
}

/// The built-in root client (docs/security.md, "Who may do what" and "First run").
#[derive(Debug)]
pub struct RootClient {
    pub id: String,
    pub secret: SecretString,
}

/// Everything the server needs to start.
#[derive(Debug)]
pub struct Settings {
    pub port: u16,
    /// `BOX_METRICS_PORT`: a second port that serves only `GET /metrics`, without
    /// credentials, for scrapers inside the cluster; `None` = no such port.
    pub metrics_port: Option<u16>,
    pub database: DatabaseUrl,
    pub log_format: LogFormat,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `BOX_MAX_BUNDLE_ENTRIES`: most entries one batch or transaction
    /// bundle may carry.
    pub max_bundle_entries: usize,
    /// `BOX_CONDITIONAL_DELETE_MAX`: most resources one conditional delete
    /// may delete (1, the default: a single match only).
    pub conditional_delete_max: usize,
    /// Public base URL (`BOX_WEB_BASE_URL`); derived from the Host header when unset.
    pub base_url: Option<String>,
    /// `BOX_ROOT_CLIENT_ID` / `BOX_ROOT_CLIENT_SECRET(_FILE)`; `None` means no root client.
    pub root_client: Option<RootClient>,
    /// `BOX_ROOT_CLIENT_ID`, kept for a root secret generated on first run.
    pub root_client_id: String,
    /// Key that signs the server's access tokens (`BOX_SECURITY_AUTH_KEYS_SECRET(_FILE)`);
    /// `None` means a random key per process.
    pub token_signing_key: Option<SecretString>,
    /// `BOX_INIT_BUNDLE`: a bundle applied at start, before the port opens.
    pub init_bundle: Option<PathBuf>,
    /// How often cached clients and policies are compared with the database,
    /// to pick up changes made through other instances (`BOX_AUTH_RECHECK_MS`).
    pub auth_recheck: Duration,
    /// Bound on one call to another issuer, for its key set or a token
    /// introspection (`BOX_AUTH_ISSUER_TIMEOUT_MS`, docs/tokens.md).
    pub issuer_timeout: Duration,
    /// `BOX_VAULT_CONFIG` (alias `AIDBOX_VAULT_CONFIG`): the vault config; `None` = feature off.
    pub vault_config: Option<PathBuf>,
    /// Stat-based re-read interval of the vault config and secret files (`BOX_VAULT_POLL_MS`).
    pub vault_poll: Duration,
    /// Directory watch with inotify (`BOX_VAULT_WATCH`, default on); off leaves only the poll.
    pub vault_watch: bool,
    /// The private key (PEM file) that signs the ID tokens of sign-ins
    /// (`BOX_AUTH_ID_TOKEN_KEY_FILE`, docs/sign-in.md); needs `base_url`,
    /// the tokens' issuer.
    pub id_token_key_file: Option<PathBuf>,
    /// Whether sign-in cookies carry `Secure` (`BOX_AUTH_COOKIE_SECURE`,
    /// default true; false only for local plain-HTTP trials, docs/sign-in.md).
    pub cookie_secure: bool,
    /// Limits of the HTTP transport (`BOX_*_TIMEOUT_MS`, `BOX_MAX_CONNECTIONS`, `BOX_MAX_HEADER_BYTES`).
    pub connections: ConnectionLimits,
    /// Structural validation of every write (`BOX_VALIDATION`).
    pub validation: Validation,
}

/// How long and how many connections the server holds (see `transport`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accepting a connection, or from the first byte after an idle
    /// keep-alive period, until the request head is complete (`BOX_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout: Duration,
    /// From a complete request head until its whole body has arrived (`BOX_BODY_READ_TIMEOUT_MS`).
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request (`BOX_KEEP_ALIVE_TIMEOUT_MS`).
    pub keep_alive_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog (`BOX_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Longest request target, and largest total of header fields (`BOX_MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            // Longer than the 60 s idle timeout of common load balancers, so
            // the balancer, not fhirbox, closes an idle connection first.
            keep_alive_timeout: Duration::from_secs(75),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl Settings {
    /// Settings for a server on `database` with every optional feature off;
    /// the starting point of tests and embedders.
    pub fn for_database(database: DatabaseUrl) -> Settings {
        Settings {
            port: 0,
            metrics_port: None,
            database,
            log_format: LogFormat::Text,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_bundle_entries: fhirbox_rest::bundle::DEFAULT_MAX_BUNDLE_ENTRIES,
            conditional_delete_max: 1,
            base_url: None,
            root_client: None,
            root_client_id: DEFAULT_ROOT_CLIENT_ID.to_owned(),
            token_signing_key: None,
            init_bundle: None,
            auth_recheck: DEFAULT_AUTH_RECHECK,
            issuer_timeout: fhirbox_auth::external::DEFAULT_TIMEOUT,
            vault_config: None,
            vault_poll: DEFAULT_VAULT_POLL,
            vault_watch: true,
            cookie_secure: true,
            id_token_key_file: None,
            validation: Validation::Strict,
            connections: ConnectionLimits::default(),
        }
    }
}

/// The root client's id unless `BOX_ROOT_CLIENT_ID` says otherwise.
pub const DEFAULT_ROOT_CLIENT_ID: &str = "root";
/// Name of the file that holds a root secret generated on first run.
pub const GENERATED_ROOT_SECRET_FILE: &str = "root-secret";
/// Default SQLite file, relative to the working directory.
pub const DEFAULT_SQLITE_PATH: &str = "data/fhirbox.db";
const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const DEFAULT_AUTH_RECHECK: Duration = Duration::from_secs(2);
const DEFAULT_VAULT_POLL: Duration = Duration::from_secs(1);
/// Shortest secret accepted for the token signing key (HS256 wants >= 256 bits).
const MIN_SIGNING_KEY_BYTES: usize = 32;

impl Settings {
    /// Reads settings from `env`.
    pub fn from_env(env: &impl Env) -> Result<Settings, SettingsError> {
        let port =
            number::<u16>(env, "BOX_WEB_PORT", .., "a port number (0-65535)")?.unwrap_or(8080);
        let metrics_port = setting(env, "BOX_METRICS_PORT", |v| match v.parse::<u16>() {
            Ok(p) if p != 0 && p != port => Ok(p),
            Ok(_) => Err(format!(
                "must be a port other than 0 and BOX_WEB_PORT ({port})"
            )),
            Err(_) => Err("is not a port number (1-65535)".into()),
        })?;
        let log_format = setting(env, "BOX_LOG_FORMAT", |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(r#"is not a log format; use "text" or "json""#.into()),
        })?
        .unwrap_or(LogFormat::Text);
        let max_body_bytes = number(
            env,
            "BOX_MAX_BODY_BYTES",
            1024..,
            "a byte count of at least 1024",
        )?
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_bundle_entries =
            number(env, "BOX_MAX_BUNDLE_ENTRIES", 1.., "a count of at least 1")?
                .unwrap_or(fhirbox_rest::bundle::DEFAULT_MAX_BUNDLE_ENTRIES);
        let conditional_delete_max = number(
            env,
            "BOX_CONDITIONAL_DELETE_MAX",
            1..=fhirbox_rest::MAX_CONDITIONAL_DELETE,
            "a count from 1 to 1000",
        )?
        .unwrap_or(1);
        let base_url = setting(env, "BOX_WEB_BASE_URL", |v| {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(v.trim_end_matches('/').to_owned())
            } else {
                Err("must be an absolute http:// or https:// URL".into())
            }
        })?;
        let root_id = setting(env, "BOX_ROOT_CLIENT_ID", |v| {
            if fhirbox_fhir::is_valid_id(v) {
                Ok(v.to_owned())
            } else {
                Err("is not a valid client id".into())
            }
        })?
        .unwrap_or_else(|| DEFAULT_ROOT_CLIENT_ID.into());
        let root_client =
            secret_setting(env, "BOX_ROOT_CLIENT_SECRET", "BOX_ROOT_CLIENT_SECRET_FILE")?.map(
                |secret| RootClient {
                    id: root_id.clone(),
                    secret: SecretString::from(secret),
                },
            );
        let token_signing_key = match secret_setting(
            env,
            "BOX_SECURITY_AUTH_KEYS_SECRET",
            "BOX_SECURITY_AUTH_KEYS_SECRET_FILE",
        )? {
            Some(key) if key.len() < MIN_SIGNING_KEY_BYTES => {
                return Err(err(
                    "BOX_SECURITY_AUTH_KEYS_SECRET",
                    format!(
                        "the token signing key must be at least {MIN_SIGNING_KEY_BYTES} bytes long"
                    ),
                ))
            }
            other => other.map(SecretString::from),
        };
        let init_bundle = setting(env, "BOX_INIT_BUNDLE", |v| {
            match v.strip_prefix("file://") {
                Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
                _ => Err("must be a file:// URL with an absolute path, \
                      e.g. file:///etc/fhirbox/init.json"
                    .into()),
            }
        })?;
        let auth_recheck = number(
            env,
            "BOX_AUTH_RECHECK_MS",
            10..,
            "a number of milliseconds (at least 10)",
        )?
        .map_or(DEFAULT_AUTH_RECHECK, Duration::from_millis);
        let issuer_timeout = millis(
            env,
            "BOX_AUTH_ISSUER_TIMEOUT_MS",
            fhirbox_auth::external::DEFAULT_TIMEOUT,
        )?;
        let vault_config = match (non_empty(env, "BOX_VAULT_CONFIG"), non_empty(env, "AIDBOX_VAULT_CONFIG")) {
            (Some(a), Some(b)) if a != b => {
                return Err(err(
                    "BOX_VAULT_CONFIG",
                    format!("BOX_VAULT_CONFIG ({a}) and its alias AIDBOX_VAULT_CONFIG ({b}) disagree; set one of them"),
                ))
            }
            (Some(path), _) | (None, Some(path)) => Some(PathBuf::from(path)),
            (None, None) => None,
        };
        let vault_poll = number(
            env,
            "BOX_VAULT_POLL_MS",
            10..=60_000,
            "a number of milliseconds between 10 and 60000",
        )?
        .map_or(DEFAULT_VAULT_POLL, Duration::from_millis);
        let vault_watch = setting(env, "BOX_VAULT_WATCH", |v| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("must be true or false".into()),
        })?
        .unwrap_or(true);
        let id_token_key_file = setting(env, "BOX_AUTH_ID_TOKEN_KEY_FILE", |v| {
            if v.starts_with('/') {
                Ok(PathBuf::from(v))
            } else {
                Err("must be an absolute path to a PEM private key".into())
            }
        })?;
        if id_token_key_file.is_some() && base_url.is_none() {
            return Err(err(
                "BOX_AUTH_ID_TOKEN_KEY_FILE",
                "ID tokens name fhirbox's public address as their issuer: set BOX_WEB_BASE_URL too",
            ));
        }
        let cookie_secure = setting(env, "BOX_AUTH_COOKIE_SECURE", |v| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err("must be true or false".into()),
        })?
        .unwrap_or(true);
        let validation = setting(env, "BOX_VALIDATION", |v| match v {
            "strict" => Ok(Validation::Strict),
            "allow-unknown-elements" => Ok(Validation::AllowUnknownElements),
            "off" => Ok(Validation::Off),
            _ => Err(
                r#"is not a validation mode; use "strict", "allow-unknown-elements" or "off""#
                    .into(),
            ),
        })?
        .unwrap_or_default();
        let defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            header_read_timeout: millis(
                env,
                "BOX_HEADER_READ_TIMEOUT_MS",
                defaults.header_read_timeout,
            )?,
            body_read_timeout: millis(env, "BOX_BODY_READ_TIMEOUT_MS", defaults.body_read_timeout)?,
            keep_alive_timeout: millis(
                env,
                "BOX_KEEP_ALIVE_TIMEOUT_MS",
                defaults.keep_alive_timeout,
            )?,
            max_connections: count(
                env,
                "BOX_MAX_CONNECTIONS",
                defaults.max_connections,
                1..=1_000_000,
            )?,
            max_header_bytes: count(
                env,
                "BOX_MAX_HEADER_BYTES",
                defaults.max_header_bytes,
                1024..=1024 * 1024,
            )?,
        };
        Ok(Settings {
            validation,
            connections,
            vault_config,
            vault_poll,
            vault_watch,
            cookie_secure,
            id_token_key_file,
            port,
            metrics_port,
            database: database_url(env)?,
            log_format,
            max_body_bytes,
            max_bundle_entries,
            conditional_delete_max,
            base_url,
            root_client,
            root_client_id: root_id,
            token_signing_key,
            init_bundle,
            auth_recheck,
            issuer_timeout,
        })
    }
}

fn non_empty(env: &impl Env, name: &str) -> Option<String> {
    env.get(name).filter(|v| !v.is_empty())
}

/// The value of `name` as `parse` reads it; `None` when the variable is unset or
/// empty. A value `parse` refuses is an error naming the variable: the value,
/// quoted, followed by the complaint `parse` returned (`"80a" is not a port number`).
fn setting<T>(
    env: &impl Env,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, SettingsError> {
    match non_empty(env, name) {
        Some(v) => parse(&v)
            .map(Some)
            .map_err(|complaint| err(name, format!("{v:?} {complaint}"))),
        None => Ok(None),
    }
}

/// A number within `range`; anything else is an error naming the variable:
/// `"<value>" is not <expected>`.
fn number<T: FromStr + PartialOrd>(
    env: &impl Env,
    name: &'static str,
    range: impl RangeBounds<T>,
    expected: &str,
) -> Result<Option<T>, SettingsError> {
    setting(env, name, |v| {
        v.parse::<T>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| format!("is not {expected}"))
    })
}

/// A duration in milliseconds between 10 ms and one hour.
fn millis(
    env: &impl Env,
    name: &'static str,
    default: Duration,
) -> Result<Duration, SettingsError> {
    Ok(number(
        env,
        name,
        10..=3_600_000,
        "a number of milliseconds between 10 and 3600000",
    )?
    .map_or(default, Duration::from_millis))
}

/// A whole number within `range`.
fn count(
    env: &impl Env,
    name: &'static str,
    default: usize,
    range: RangeInclusive<usize>,
) -> Result<usize, SettingsError> {
    let expected = format!(
        "a whole number between {} and {}",
        range.start(),
        range.end()
    );
    Ok(number(env, name, range, &expected)?.unwrap_or(default))
}

/// Reads a secret setting from `NAME` or from the file named by `NAME_FILE`
/// (one trailing newline removed, as files written with `echo` have one).
pub fn secret_setting(
    env: &impl Env,
    name: &'static str,
    file_name: &'static str,
) -> Result<Option<String>, SettingsError> {
    match (non_empty(env, name), non_empty(env, file_name)) {
        (Some(_), Some(_)) => Err(err(
            file_name,
            format!("set either {name} or {file_name}, not both"),
        )),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(PathBuf::from(&path))
                .map_err(|e| err(file_name, format!("cannot read {path}: {e}")))?;
            let value = strip_one_newline(&text);
            if value.is_empty() {
                return Err(err(file_name, format!("{path} is empty")));
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// Removes exactly one trailing `\n` or `\r\n`.
pub fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

fn database_url(env: &impl Env) -> Result<DatabaseUrl, SettingsError> {
    // The URL may carry a password, so it has a _FILE variant like every secret setting.
    if let Some(url) = secret_setting(env, "BOX_DB_URL", "BOX_DB_URL_FILE")? {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() || path == ":memory:" {
                return Err(err(
                    "BOX_DB_URL",
                    "sqlite: needs a file path, e.g. sqlite:data/fhirbox.db",
                ));
            }
            return Ok(DatabaseUrl::new(url));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::new(url));
        }
        return Err(err(
            "BOX_DB_URL",
            format!(
                "{} is not a database URL; use sqlite:<path> or postgres://user@host:port/db",
                DatabaseUrl::new(url.clone()).masked()
            ),
        ));
    }
    let Some(host) = non_empty(env, "BOX_DB_HOST") else {
        for name in ["BOX_DB_PORT", "BOX_DB_DATABASE", "BOX_DB_USER"] {
            if non_empty(env, name).is_some() {
                return Err(err(
                    "BOX_DB_HOST",
                    format!("{name} is set but BOX_DB_HOST is not; set BOX_DB_HOST for PostgreSQL"),
                ));
            }
        }
        return Ok(DatabaseUrl::new(format!("sqlite:{DEFAULT_SQLITE_PATH}")));
    };
    let port = number::<u16>(env, "BOX_DB_PORT", .., "a port number")?.unwrap_or(5432);
    let database = non_empty(env, "BOX_DB_DATABASE").unwrap_or_else(|| "fhirbox".into());
    let user = non_empty(env, "BOX_DB_USER").unwrap_or_else(|| "postgres".into());
    let password = secret_setting(env, "BOX_DB_PASSWORD", "BOX_DB_PASSWORD_FILE")?;
    let userinfo = match password {
        Some(p) => format!("{}:{}", percent_encode(&user), percent_encode(&p)),
        None => percent_encode(&user),
    };
    Ok(DatabaseUrl::new(format!(
        "postgres://{userinfo}@{host}:{port}/{}",
        percent_encode(&database)
    )))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_sqlite_under_data_and_port_8080() {
        let s = Settings::from_env(&[("UNRELATED", "x")]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.database.expose(), "sqlite:data/fhirbox.db");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.validation, Validation::Strict);
    }

    #[test]
    fn validation_modes_are_named() {
        for (text, mode) in [
            ("strict", Validation::Strict),
            ("allow-unknown-elements", Validation::AllowUnknownElements),
            ("off", Validation::Off),
        ] {
            let s = Settings::from_env(&[("BOX_VALIDATION", text)]).unwrap();
            assert_eq!(s.validation, mode);
        }
        let e = Settings::from_env(&[("BOX_VALIDATION", "lenient")]).unwrap_err();
        assert_eq!(e.variable, "BOX_VALIDATION");
        assert!(
            e.problem.contains("allow-unknown-elements"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let e = Settings::from_env(&[("BOX_WEB_PORT", "80a")]).unwrap_err();
        assert_eq!(e.variable, "BOX_WEB_PORT");
        let e = Settings::from_env(&[("BOX_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(e.variable, "BOX_LOG_FORMAT");
        let e = Settings::from_env(&[("BOX_DB_URL", "mysql://u:pw@h/db")]).unwrap_err();
        assert_eq!(e.variable, "BOX_DB_URL");
        assert!(!e.to_string().contains("pw"), "{e}");
        let e = Settings::from_env(&[("BOX_DB_PORT", "5432")]).unwrap_err();
        assert_eq!(e.variable, "BOX_DB_HOST");
        let e = Settings::from_env(&[("BOX_MAX_BUNDLE_ENTRIES", "0")]).unwrap_err();
        assert_eq!(e.variable, "BOX_MAX_BUNDLE_ENTRIES");
        let s = Settings::from_env(&[("BOX_MAX_BUNDLE_ENTRIES", "20000")]).unwrap();
        assert_eq!(s.max_bundle_entries, 20_000);
        assert_eq!(Settings::from_env(&[]).unwrap().max_bundle_entries, 10_000);
        assert_eq!(Settings::from_env(&[]).unwrap().conditional_delete_max, 1);
        let s = Settings::from_env(&[("BOX_CONDITIONAL_DELETE_MAX", "50")]).unwrap();
        assert_eq!(s.conditional_delete_max, 50);
        for bad in ["0", "1001", "many"] {
            let e = Settings::from_env(&[("BOX_CONDITIONAL_DELETE_MAX", bad)]).unwrap_err();
            assert_eq!(e.variable, "BOX_CONDITIONAL_DELETE_MAX");
        }
    }

    #[test]
    fn builds_postgres_url_from_aidbox_style_parts_with_encoded_password() {
        let s = Settings::from_env(&[
            ("BOX_DB_HOST", "db.internal"),
            ("BOX_DB_PORT", "6543"),
            ("BOX_DB_DATABASE", "fhir"),
            ("BOX_DB_USER", "app"),
            ("BOX_DB_PASSWORD", "p@ss:w/rd"),
        ])
        .unwrap();
        assert_eq!(
            s.database.expose(),
            "postgres://app:p%40ss%3Aw%2Frd@db.internal:6543/fhir"
        );
        assert_eq!(
            s.database.to_string(),
            "postgres://app:***@db.internal:6543/fhir"
        );
        assert!(!format!("{:?}", s).contains("p%40ss"));
    }

    #[test]
    fn password_file_is_read_and_one_newline_stripped() {
        let dir = std::env::temp_dir().join(format!("fhirbox-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = file.to_str().unwrap().to_owned();
        let s = Settings::from_env(&[
            ("BOX_DB_HOST", "h"),
            ("BOX_DB_PASSWORD_FILE", path.as_str()),
        ])
        .unwrap();
        assert_eq!(
            s.database.expose(),
            "postgres://postgres:from-file@h:5432/fhirbox"
        );
        let both = Settings::from_env(&[
            ("BOX_DB_HOST", "h"),
            ("BOX_DB_PASSWORD", "x"),
            ("BOX_DB_PASSWORD_FILE", path.as_str()),
        ])
        .unwrap_err();
        assert_eq!(both.variable, "BOX_DB_PASSWORD_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn database_url_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("fhirbox-settings-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://u:pw@h:5432/db\n").unwrap();
        let s = Settings::from_env(&[("BOX_DB_URL_FILE", file.to_str().unwrap())]).unwrap();
        assert_eq!(s.database.expose(), "postgres://u:pw@h:5432/db");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn masks_password_in_explicit_urls() {
        let url = DatabaseUrl::new("postgres://u:secret@h:1/db?sslmode=require");
        assert_eq!(url.masked(), "postgres://u:***@h:1/db?sslmode=require");
        assert_eq!(
            DatabaseUrl::new("postgres://u@h/db").masked(),
            "postgres://u@h/db"
        );
        assert_eq!(DatabaseUrl::new("sqlite:x.db").masked(), "sqlite:x.db");
    }

    #[test]
    fn root_client_and_init_bundle_are_read_and_checked() {
        use secrecy::ExposeSecret;
        let s = Settings::from_env(&[
            ("BOX_ROOT_CLIENT_SECRET", "rootpw"),
            ("BOX_INIT_BUNDLE", "file:///etc/fhirbox/init.json"),
        ])
        .unwrap();
        let root = s.root_client.as_ref().unwrap();
        assert_eq!(root.id, "root");
        assert_eq!(root.secret.expose_secret(), "rootpw");
        assert!(!format!("{s:?}").contains("rootpw"));
        assert_eq!(
            s.init_bundle.unwrap().to_str(),
            Some("/etc/fhirbox/init.json")
        );
        assert!(Settings::from_env(&[("UNRELATED", "")])
            .unwrap()
            .root_client
            .is_none());
        let e = Settings::from_env(&[("BOX_INIT_BUNDLE", "/etc/init.json")]).unwrap_err();
        assert_eq!(e.variable, "BOX_INIT_BUNDLE");
        let e = Settings::from_env(&[("BOX_SECURITY_AUTH_KEYS_SECRET", "short")]).unwrap_err();
        assert_eq!(e.variable, "BOX_SECURITY_AUTH_KEYS_SECRET");
        let e = Settings::from_env(&[
            ("BOX_ROOT_CLIENT_ID", "a b"),
            ("BOX_ROOT_CLIENT_SECRET", "x"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "BOX_ROOT_CLIENT_ID");
    }

    #[test]
    fn vault_config_accepts_the_aidbox_alias() {
        let s = Settings::from_env(&[("AIDBOX_VAULT_CONFIG", "/etc/a.json")]).unwrap();
        assert_eq!(s.vault_config.unwrap().to_str(), Some("/etc/a.json"));
        let s = Settings::from_env(&[
            ("BOX_VAULT_CONFIG", "/etc/b.json"),
            ("AIDBOX_VAULT_CONFIG", "/etc/b.json"),
        ])
        .unwrap();
        assert_eq!(s.vault_config.unwrap().to_str(), Some("/etc/b.json"));
        let e = Settings::from_env(&[
            ("BOX_VAULT_CONFIG", "/etc/b.json"),
            ("AIDBOX_VAULT_CONFIG", "/etc/c.json"),
        ])
        .unwrap_err();
        assert_eq!(e.variable, "BOX_VAULT_CONFIG");
        assert!(Settings::from_env(&[("BOX_VAULT_CONFIG", "")])
            .unwrap()
            .vault_config
            .is_none());
        assert_eq!(
            Settings::from_env(&[("BOX_VAULT_WATCH", "no")])
                .unwrap_err()
                .variable,
            "BOX_VAULT_WATCH"
        );
        assert_eq!(
            Settings::from_env(&[("BOX_VAULT_POLL_MS", "5")])
                .unwrap_err()
                .variable,
            "BOX_VAULT_POLL_MS"
        );
    }

    #[test]
    fn connection_limits_are_read_and_checked() {
        let s = Settings::from_env(&[
            ("BOX_HEADER_READ_TIMEOUT_MS", "2500"),
            ("BOX_BODY_READ_TIMEOUT_MS", "30000"),
            ("BOX_KEEP_ALIVE_TIMEOUT_MS", "5000"),
            ("BOX_MAX_CONNECTIONS", "64"),
            ("BOX_MAX_HEADER_BYTES", "8192"),
        ])
        .unwrap();
        assert_eq!(
            s.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(2500),
                body_read_timeout: Duration::from_secs(30),
                keep_alive_timeout: Duration::from_secs(5),
                max_connections: 64,
                max_header_bytes: 8192,
            }
        );
        let defaults = Settings::from_env(&[("UNRELATED", "")])
            .unwrap()
            .connections;
        assert_eq!(
            Settings::from_env(&[("BOX_METRICS_PORT", "9090")])
                .unwrap()
                .metrics_port,
            Some(9090)
        );
        for bad in ["0", "8080", "http"] {
            let e = Settings::from_env(&[("BOX_METRICS_PORT", bad)]).unwrap_err();
            assert_eq!(e.variable, "BOX_METRICS_PORT");
        }
        assert_eq!(defaults, ConnectionLimits::default());
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        for (name, bad) in [
            ("BOX_HEADER_READ_TIMEOUT_MS", "0"),
            ("BOX_BODY_READ_TIMEOUT_MS", "1s"),
            ("BOX_KEEP_ALIVE_TIMEOUT_MS", "-1"),
            ("BOX_KEEP_ALIVE_TIMEOUT_MS", "3600001"),
            ("BOX_MAX_CONNECTIONS", "0"),
            ("BOX_MAX_HEADER_BYTES", "100"),
        ] {
            let e = Settings::from_env(&[(name, bad)]).unwrap_err();
            assert_eq!(e.variable, name);
            assert!(e.problem.contains(bad), "{e}");
        }
    }

    #[test]
    fn setting_names_the_variable_and_quotes_the_value() {
        let env = [("N", "80a"), ("EMPTY", "")];
        let e = number::<u16>(&env, "N", .., "a port number").unwrap_err();
        assert_eq!(
            e,
            SettingsError {
                variable: "N",
                problem: r#""80a" is not a port number"#.into(),
            }
        );
        assert_eq!(e.to_string(), r#"N: "80a" is not a port number"#);
        assert_eq!(number::<u16>(&env, "EMPTY", .., "-"), Ok(None));
        assert_eq!(number::<u16>(&env, "UNSET", .., "-"), Ok(None));
        assert_eq!(
            number(&[("N", "9")], "N", 10..=20, "-")
                .unwrap_err()
                .problem,
            r#""9" is not -"#
        );
        assert_eq!(number(&[("N", "20")], "N", 10..=20, "-"), Ok(Some(20u32)));
        let e = setting(&env, "N", |_| Err::<(), _>("must be different".into())).unwrap_err();
        assert_eq!(e.problem, r#""80a" must be different"#);
    }

    #[test]
    fn strips_exactly_one_newline() {
        assert_eq!(strip_one_newline("a\n"), "a");
        assert_eq!(strip_one_newline("a\r\n"), "a");
        assert_eq!(strip_one_newline("a\n\n"), "a\n");
        assert_eq!(strip_one_newline("a"), "a");
    }

    #[test]
    fn id_token_key_needs_the_public_address_and_cookies_may_drop_secure() {
        let e = Settings::from_env(&[("BOX_AUTH_ID_TOKEN_KEY_FILE", "/keys/id.pem")]).unwrap_err();
        assert_eq!(e.variable, "BOX_AUTH_ID_TOKEN_KEY_FILE");
        let s = Settings::from_env(&[
            ("BOX_AUTH_ID_TOKEN_KEY_FILE", "/keys/id.pem"),
            ("BOX_WEB_BASE_URL", "https://fhirbox.example"),
        ])
        .unwrap();
        assert_eq!(
            s.id_token_key_file.as_deref(),
            Some(std::path::Path::new("/keys/id.pem"))
        );
        assert!(Settings::from_env(&[
            ("BOX_AUTH_ID_TOKEN_KEY_FILE", "id.pem"),
            ("BOX_WEB_BASE_URL", "https://fhirbox.example"),
        ])
        .is_err());
        assert!(s.cookie_secure);
        assert!(
            !Settings::from_env(&[("BOX_AUTH_COOKIE_SECURE", "false")])
                .unwrap()
                .cookie_secure
        );
        assert!(Settings::from_env(&[("BOX_AUTH_COOKIE_SECURE", "no")]).is_err());
    }
}
