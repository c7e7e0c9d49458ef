//! Shared fixtures: a CSI-style secret mount and a ConfigMap-style config directory, both
//! written by the atomic writer replay, plus `wait_until` and an event recorder.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirbox_secrets::atomic_writer::AtomicWriterDir;
use fhirbox_secrets::{Requester, ResolverOptions, SecretEvents, SecretResolver, SecretStatus};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const TYPES: [&str; 4] = [
    "Client",
    "IdentityProvider",
    "TokenIntrospector",
    "AidboxTopicDestination",
];

pub use fhirbox_test_support::wait_until;

/// Options for tests that must prove the directory watcher works: the poll is so slow that
/// it can never be what picked a change up.
pub fn events_only() -> ResolverOptions {
    let mut o = ResolverOptions::new(TYPES);
    o.poll_interval = Duration::from_secs(3600);
    o.settle_window = Duration::from_millis(500);
    o.settle_retry_interval = Duration::from_millis(25);
    o
}

/// Options with no watcher at all: only the poll can pick changes up.
pub fn poll_only(poll: Duration) -> ResolverOptions {
    let mut o = ResolverOptions::new(TYPES);
    o.watch_events = false;
    o.poll_interval = poll;
    o.settle_window = Duration::from_millis(500);
    o.settle_retry_interval = Duration::from_millis(25);
    o
}

pub fn client(id: &str) -> Requester {
    Requester::new("Client", id)
}

/// `/run/vault-secrets` and `/etc/fhirbox/vault-config.json` in a scratch directory.
pub struct Fixture {
    pub tmp: TempDir,
    pub mount: AtomicWriterDir,
    pub config_volume: AtomicWriterDir,
}

impl Fixture {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mount = AtomicWriterDir::new(tmp.path().join("run/vault-secrets")).unwrap();
        let config_volume = AtomicWriterDir::new(tmp.path().join("etc/fhirbox")).unwrap();
        Self {
            tmp,
            mount,
            config_volume,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_volume.path_of("vault-config.json")
    }

    /// Writes the config the way a ConfigMap volume is updated (the same swap as a CSI mount).
    pub fn write_config(&self, config: &Value) {
        let text = serde_json::to_vec_pretty(config).unwrap();
        self.config_volume
            .write(&[("vault-config.json", &text)])
            .unwrap();
    }

    pub fn write_config_text(&self, text: &str) {
        self.config_volume
            .write(&[("vault-config.json", text.as_bytes())])
            .unwrap();
    }

    pub fn start(&self, options: ResolverOptions) -> SecretResolver {
        SecretResolver::start(self.config_path(), options).unwrap()
    }
}

/// `{"secret": {name: {"path": path, "scope": scope}}}` for each entry.
pub fn config(entries: &[(&str, &Path, Value)]) -> Value {
    let mut secrets = serde_json::Map::new();
    for (name, path, scope) in entries {
        secrets.insert(name.to_string(), json!({"path": path, "scope": scope}));
    }
    json!({ "secret": secrets })
}

/// The current value of `name` for `who`, or `None` when resolution fails.
pub fn current(r: &SecretResolver, name: &str, who: &Requester) -> Option<Vec<u8>> {
    r.resolve(name, who).ok().map(|v| v.expose_bytes().to_vec())
}

pub fn status_of(r: &SecretResolver, name: &str) -> SecretStatus {
    r.status().into_iter().find(|s| s.name == name).unwrap()
}

/// Records every event for assertions.
#[derive(Default)]
pub struct Recorder {
    pub resolutions: Mutex<Vec<(String, &'static str)>>,
    pub rotations: Mutex<Vec<String>>,
    pub reloads: Mutex<Vec<bool>>,
}

impl Recorder {
    pub fn rotations_of(&self, name: &str) -> usize {
        self.rotations
            .lock()
            .unwrap()
            .iter()
            .filter(|n| *n == name)
            .count()
    }
    pub fn reloads(&self) -> Vec<bool> {
        self.reloads.lock().unwrap().clone()
    }
}

impl SecretEvents for Recorder {
    fn resolution(&self, name: &str, reason: &'static str) {
        self.resolutions
            .lock()
            .unwrap()
            .push((name.to_string(), reason));
    }
    fn rotation(&self, name: &str) {
        self.rotations.lock().unwrap().push(name.to_string());
    }
    fn config_reload(&self, ok: bool) {
        self.reloads.lock().unwrap().push(ok);
    }
}

pub fn with_recorder(mut options: ResolverOptions) -> (ResolverOptions, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    options.events = rec.clone();
    (options, rec)
}

// ---- leak probes ----

/// Distinctive secret values whose appearance anywhere in output is a leak.
pub const VALUES: [&str; 4] = [
    "LEAKPROBE-alpha-7f3a9c",
    "LEAKPROBE-bravo-41d2e8",
    "LEAKPROBE-charlie-99b0",
    "LEAKPROBE-delta\nline2-5e1",
];

/// The value and the encodings it could leak in.
fn forms(value: &str) -> Vec<String> {
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    let url: String = value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![
        value.to_string(),
        format!("{value:?}"),
        base64(value.as_bytes()),
        hex,
        url,
        value.replace('\n', "\\n"),
    ]
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

pub fn assert_clean(what: &str, text: &str) {
    for value in VALUES {
        for form in forms(value) {
            // Head and tail too, in case a value is cut; 12 characters cannot match by chance.
            let n = form.len().min(12);
            for probe in [form.as_str(), &form[..n], &form[form.len() - n..]] {
                assert!(
                    !text.contains(probe),
                    "{what} leaks a secret value ({probe:?}):\n{text}"
                );
            }
        }
    }
}
