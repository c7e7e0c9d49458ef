//! A usable first run without a default password: when no root secret is
//! configured, one is generated once, kept in a file only its owner can read,
//! and reused on every later start. A configured secret always wins.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use secrecy::SecretString;

use crate::settings::{
    strip_one_newline, RootClient, Settings, DEFAULT_SQLITE_PATH, GENERATED_ROOT_SECRET_FILE,
};

/// Where the root secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSecretSource {
    /// `BOX_ROOT_CLIENT_SECRET` or `BOX_ROOT_CLIENT_SECRET_FILE`.
    Configured,
    /// Generated now and written to this file.
    Generated(PathBuf),
    /// Read from the file a previous first run wrote.
    Reused(PathBuf),
    /// Nothing configured and no file could be written: no root client.
    Unavailable(PathBuf),
}

/// The file a first run keeps its root secret in: beside the SQLite database
/// (`data/root-secret` for the default `sqlite:data/fhirbox.db`), or
/// `data/root-secret` under the working directory with PostgreSQL.
pub fn generated_secret_path(settings: &Settings) -> PathBuf {
    let sqlite_file = settings
        .database
        .expose()
        .strip_prefix("sqlite:")
        .map(|rest| rest.strip_prefix("//").unwrap_or(rest))
        .map(|rest| rest.split('?').next().unwrap_or(rest))
        .filter(|path| !path.is_empty());
    let database = Path::new(sqlite_file.unwrap_or(DEFAULT_SQLITE_PATH));
    match database.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(GENERATED_ROOT_SECRET_FILE),
        _ => PathBuf::from(GENERATED_ROOT_SECRET_FILE),
    }
}

/// Makes sure there is a root client: a configured secret is kept; otherwise
/// the secret in [`generated_secret_path`] is reused, or a new random one is
/// written there (mode 0600). Logs where the secret is, never the secret.
pub fn ensure_root_client(settings: &mut Settings) -> RootSecretSource {
    if settings.root_client.is_some() {
        return RootSecretSource::Configured;
    }
    let path = generated_secret_path(settings);
    let id = settings.root_client_id.clone();
    let usage = format!(
        "curl -u {id}:$(cat {}) http://localhost:{}/fhir/Patient",
        path.display(),
        settings.port
    );
    let (secret, source) = match read_or_create(&path) {
        Ok((secret, true)) => {
            tracing::warn!(
                path = %path.display(),
                client = %id,
                usage = %usage,
                "no root secret is configured (BOX_ROOT_CLIENT_SECRET or BOX_ROOT_CLIENT_SECRET_FILE): generated one and stored it in a file readable only by this user"
            );
            (secret, RootSecretSource::Generated(path))
        }
        Ok((secret, false)) => {
            tracing::info!(
                path = %path.display(),
                client = %id,
                usage = %usage,
                "no root secret is configured: using the one generated on first run"
            );
            (secret, RootSecretSource::Reused(path))
        }
        Err(problem) => {
            tracing::warn!(
                path = %path.display(),
                problem = %problem,
                "no root secret is configured and none could be generated: there is no root client; set BOX_ROOT_CLIENT_SECRET_FILE"
            );
            return RootSecretSource::Unavailable(path);
        }
    };
    settings.root_client = Some(RootClient { id, secret });
    source
}

/// Reads the secret at `path`, or creates it; `true` when it was created.
fn read_or_create(path: &Path) -> Result<(SecretString, bool), String> {
    match read(path) {
        Ok(Some(secret)) => return Ok((secret, false)),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let secret = random_secret()?;
    // Written whole under a temporary name, then linked into place: another
    // process starting at the same moment sees either no file or all of it,
    // and link() refuses to replace a file that already exists.
    let temporary = dir.join(format!(
        ".{GENERATED_ROOT_SECRET_FILE}.{}.tmp",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    let written = write_private(&temporary, &secret);
    let linked = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok((SecretString::from(secret), true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read(path)? {
            Some(secret) => Ok((secret, false)),
            None => Err(format!("{} is empty", path.display())),
        },
        Err(e) => Err(format!("cannot write {}: {e}", path.display())),
    }
}

/// The secret in an existing file; `None` when there is no file. The file
/// must be a regular file of its own (not a symlink) that only its owner can
/// read or write: one another user could read was already leaked, and one
/// another user could write (or plant, in a shared directory) would choose
/// root's secret.
fn read(path: &Path) -> Result<Option<SecretString>, String> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(format!(
                "{} is not a regular file (a symlink or a directory); delete it to generate a new root secret",
                path.display()
            ))
        }
        Ok(meta) => check_private(path, &meta)?,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let value = strip_one_newline(&text);
    if value.is_empty() {
        return Err(format!(
            "{} is empty; delete it to generate a new root secret",
            path.display()
        ));
    }
    Ok(Some(SecretString::from(value.to_owned())))
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read or written by other users, so its secret cannot be trusted; delete it to generate a new one (or set BOX_ROOT_CLIENT_SECRET_FILE)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), String> {
    Ok(())
}

fn write_private(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// 256 random bits as 43 URL-safe base64 characters (printable ASCII, so a
/// valid client secret under RFC 6749 appendix A and safe in `curl -u`).
fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("the operating system's random generator failed: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DatabaseUrl;
    use secrecy::ExposeSecret;

    fn settings_in(dir: &Path) -> Settings {
        Settings::for_database(DatabaseUrl::new(format!(
            "sqlite:{}",
            dir.join("fhirbox.db").display()
        )))
    }

    #[test]
    fn the_secret_file_sits_beside_the_sqlite_database() {
        let s = Settings::for_database(DatabaseUrl::new("sqlite:data/fhirbox.db"));
        assert_eq!(generated_secret_path(&s), PathBuf::from("data/root-secret"));
        let s = Settings::for_database(DatabaseUrl::new("sqlite:/var/lib/fhirbox/x.db?mode=rwc"));
        assert_eq!(
            generated_secret_path(&s),
            PathBuf::from("/var/lib/fhirbox/root-secret")
        );
        let s = Settings::for_database(DatabaseUrl::new("sqlite:x.db"));
        assert_eq!(generated_secret_path(&s), PathBuf::from("root-secret"));
        let s = Settings::for_database(DatabaseUrl::new("postgres://u:pw@h/db"));
        assert_eq!(generated_secret_path(&s), PathBuf::from("data/root-secret"));
    }

    #[cfg(unix)]
    #[test]
    fn a_generated_secret_is_private_strong_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut first = settings_in(&dir.path().join("nested"));
        let path = dir.path().join("nested").join("root-secret");
        assert_eq!(
            ensure_root_client(&mut first),
            RootSecretSource::Generated(path.clone())
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let root = first.root_client.as_ref().unwrap();
        assert_eq!(root.id, "root");
        let secret = root.secret.expose_secret().to_owned();
        assert_eq!(secret.len(), 43);
        assert!(secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{secret}\n")
        );
        assert!(!format!("{first:?}").contains(&secret));

        let mut second = settings_in(&dir.path().join("nested"));
        assert_eq!(
            ensure_root_client(&mut second),
            RootSecretSource::Reused(path.clone())
        );
        assert_eq!(
            second.root_client.unwrap().secret.expose_secret(),
            secret.as_str()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers,
            ["root-secret"],
            "no temporary file is left behind"
        );

        let mut other = settings_in(&dir.path().join("elsewhere"));
        ensure_root_client(&mut other);
        assert_ne!(
            other.root_client.unwrap().secret.expose_secret(),
            secret.as_str(),
            "every first run draws a new secret"
        );
    }

    #[test]
    fn a_configured_secret_wins_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("fhirbox.db").display());
        let mut s = Settings::from_env(&[
            ("BOX_DB_URL", db.as_str()),
            ("BOX_ROOT_CLIENT_SECRET", "configured-root-secret"),
        ])
        .unwrap();
        assert_eq!(ensure_root_client(&mut s), RootSecretSource::Configured);
        assert_eq!(
            s.root_client.unwrap().secret.expose_secret(),
            "configured-root-secret"
        );
        assert!(!dir.path().join("root-secret").exists());

        // Even when a file from an earlier first run is there.
        std::fs::write(dir.path().join("root-secret"), "old-generated\n").unwrap();
        let mut s = Settings::from_env(&[
            ("BOX_DB_URL", db.as_str()),
            ("BOX_ROOT_CLIENT_SECRET", "configured-root-secret"),
        ])
        .unwrap();
        assert_eq!(ensure_root_client(&mut s), RootSecretSource::Configured);
        assert_eq!(
            s.root_client.unwrap().secret.expose_secret(),
            "configured-root-secret"
        );
    }

    #[test]
    fn the_generated_secret_follows_a_custom_root_id() {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite:{}", dir.path().join("fhirbox.db").display());
        let mut s =
            Settings::from_env(&[("BOX_DB_URL", db.as_str()), ("BOX_ROOT_CLIENT_ID", "admin")])
                .unwrap();
        assert!(s.root_client.is_none());
        ensure_root_client(&mut s);
        assert_eq!(s.root_client.unwrap().id, "admin");
    }

    #[test]
    fn an_empty_secret_file_is_not_an_empty_password() {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("root-secret"), "").unwrap();
        let mut s = settings_in(dir.path());
        assert!(matches!(
            ensure_root_client(&mut s),
            RootSecretSource::Unavailable(_)
        ));
        assert!(s.root_client.is_none());
    }

    #[test]
    fn a_file_others_can_read_or_a_symlink_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root-secret");
        std::fs::write(&path, "planted-by-someone-else\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = settings_in(dir.path());
        assert!(matches!(
            ensure_root_client(&mut s),
            RootSecretSource::Unavailable(_)
        ));
        assert!(s.root_client.is_none());

        let linked = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        write_private(&target, "via-a-link").unwrap();
        std::os::unix::fs::symlink(&target, linked.path().join("root-secret")).unwrap();
        let mut s = settings_in(linked.path());
        assert!(matches!(
            ensure_root_client(&mut s),
            RootSecretSource::Unavailable(_)
        ));
        // The legitimate path: a private regular file is reused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = settings_in(dir.path());
        assert!(matches!(
            ensure_root_client(&mut s),
            RootSecretSource::Reused(_)
        ));
    }
}
