//! `fhirbox vault check`: validates a vault config and every file it names,
//! for an init container or CI (docs/external-secrets.md).
use std::path::Path;

use fhirbox_fhir::secret_fields::secret_capable_types;
use fhirbox_secrets::{
    read_secret_file, ConfigError, ConfigProblem, VaultConfig, DEFAULT_MAX_FILE_SIZE,
};
use serde_json::{json, Value};

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

/// Reads every secret of `config` by the resolver's own rules (docs/external-secrets.md, "Reading, caching and rotation") and says what
/// state each is in.
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
