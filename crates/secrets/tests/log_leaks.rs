//! Captured log output during rotations and failures never contains a secret value, and the
//! warnings that name a secret carry its name only. A binary of its own: it installs a process-wide
//! subscriber, which is the only reliable way to capture the reload thread's events while other
//! tests run in parallel (tracing caches per-callsite interest across scoped dispatchers). Its
//! tests share that one subscriber.

#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;

use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The process-wide capture, installed by whichever test asks first.
fn capture() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .init();
        captured
    })
}

#[test]
fn logs_during_rotations_and_failures_hold_no_value() {
    let captured = capture();

    let fx = Fixture::new();
    fx.mount
        .write(&[("probe-secret", VALUES[0].as_bytes())])
        .unwrap();
    fx.write_config(&json!({"secret": {"probe-secret": {
        "path": fx.mount.path_of("probe-secret"), "scope": ["Client"], "rotation_grace": "1s"}}}));
    let mut options = events_only();
    options.settle_window = Duration::from_millis(200);
    let r = fx.start(options);
    let who = client("x");

    // Rotations, picked up by the reload thread.
    for v in &VALUES[1..] {
        fx.mount.write(&[("probe-secret", v.as_bytes())]).unwrap();
        assert!(wait_until(Duration::from_secs(1), || current(
            &r,
            "probe-secret",
            &who
        )
        .as_deref()
            == Some(v.as_bytes())));
    }
    // Refused uses, including a presented secret that is an old value.
    assert!(r
        .verify_client_secret("probe-secret", &who, VALUES[0].as_bytes())
        .is_err());
    assert!(r
        .resolve(
            "probe-secret",
            &fhirbox_secrets::Requester::new("TokenIntrospector", "t")
        )
        .is_err());
    // The file disappears for good, the config breaks (quoting a value), then both recover.
    fx.mount.write(&[]).unwrap();
    assert!(wait_until(Duration::from_secs(2), || r
        .resolve("probe-secret", &who)
        .is_err()));
    fx.write_config_text(&format!("{{\"secret\": \"{}\"", VALUES[2]));
    assert!(wait_until(Duration::from_secs(1), || r
        .config_status()
        .last_error
        .is_some()));
    fx.mount
        .write(&[("probe-secret", VALUES[1].as_bytes())])
        .unwrap();
    assert!(r.reload_now().is_err());
    assert_eq!(
        current(&r, "probe-secret", &who).unwrap(),
        VALUES[1].as_bytes()
    );

    let logs = captured.text();
    // The capture works and the events are there, by name...
    for expected in [
        "secret rotated",
        "probe-secret",
        "secret unavailable",
        "secret readable again",
        "vault config rejected",
        "reason=\"missing\"",
    ] {
        assert!(logs.contains(expected), "missing {expected:?} in:\n{logs}");
    }
    // ...but never a value.
    assert_clean("log output", &logs);
}

#[test]
fn a_one_byte_value_is_warned_about_by_name_and_never_shown() {
    let captured = capture();
    let fx = Fixture::new();
    fx.mount
        .write(&[
            ("tiny-secret", b"~\n"),
            ("usual-secret", b"usual-length-value"),
        ])
        .unwrap();
    fx.write_config(&config(&[
        (
            "tiny-secret",
            &fx.mount.path_of("tiny-secret"),
            json!(["Client"]),
        ),
        (
            "usual-secret",
            &fx.mount.path_of("usual-secret"),
            json!(["Client"]),
        ),
    ]));
    let r = fx.start(events_only());
    let who = client("x");
    assert_eq!(current(&r, "tiny-secret", &who).unwrap(), b"~");

    // A rotation to another 1-byte value is warned about again; re-reads of it are not.
    fx.mount
        .write(&[
            ("tiny-secret", b"^"),
            ("usual-secret", b"usual-length-value"),
        ])
        .unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r,
        "tiny-secret",
        &who
    )
    .as_deref()
        == Some(&b"^"[..])));
    r.reload_now().unwrap();

    let logs = captured.text();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("1 byte long"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per value taken into use:\n{logs}"
    );
    for line in warnings {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("secret=\"tiny-secret\""), "{line}");
        assert!(!line.contains('~') && !line.contains('^'), "{line}");
    }
}
