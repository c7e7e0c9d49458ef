//! File faults (docs/external-secrets.md, "Reading, caching and rotation"): each is a typed error
//! for that one secret, never an empty secret, never a blocked thread; a transient bad read never
//! replaces a good cached value; a file gone for good stops working after the settle window.

use std::fs;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fhirbox_secrets::{SecretError, SecretResolver, SecretState};
use serde_json::json;

use crate::common::*;

#[test]
fn each_fault_fails_only_that_secret_with_its_reason() {
    let fx = Fixture::new();
    let plain = fx.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    fx.mount.write(&[("good", b"good-value")]).unwrap();
    fs::write(plain.join("empty"), b"").unwrap();
    fs::write(plain.join("whitespace"), b" \t \r\n").unwrap();
    fs::write(plain.join("newline-only"), b"\n").unwrap();
    fs::create_dir(plain.join("a-directory")).unwrap();
    fs::write(plain.join("too-large"), vec![b'x'; 65]).unwrap();
    fs::write(plain.join("at-the-cap"), vec![b'x'; 64]).unwrap();
    let fifo = plain.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    symlink("..data/nowhere", plain.join("dangling")).unwrap();
    fs::write(plain.join("regular-file"), b"x").unwrap();

    let cases: &[(&str, std::path::PathBuf, &str)] = &[
        ("missing", plain.join("missing"), "missing"),
        ("empty", plain.join("empty"), "empty"),
        ("whitespace", plain.join("whitespace"), "empty"),
        ("newline-only", plain.join("newline-only"), "empty"),
        ("a-directory", plain.join("a-directory"), "not_regular"),
        ("too-large", plain.join("too-large"), "too_large"),
        ("fifo", fifo.clone(), "not_regular"),
        ("dangling", plain.join("dangling"), "missing"),
        // A path through a regular file: ENOTDIR, which fails for root too (tests run as root,
        // so a mode-000 file would still be readable).
        ("enotdir", plain.join("regular-file/child"), "unreadable"),
    ];
    let mut entries: Vec<(&str, &std::path::Path, serde_json::Value)> = cases
        .iter()
        .map(|(n, p, _)| (*n, p.as_path(), json!(["Client"])))
        .collect();
    let good_path = fx.mount.path_of("good");
    let cap_path = plain.join("at-the-cap");
    entries.push(("good", &good_path, json!(["Client"])));
    entries.push(("at-the-cap", &cap_path, json!(["Client"])));
    fx.write_config(&config(&entries));

    // Start on another thread: a FIFO opened the wrong way would block it forever.
    let (tx, rx) = mpsc::channel();
    let config_path = fx.config_path();
    thread::spawn(move || {
        let mut options = events_only();
        options.max_file_size = 64;
        tx.send(SecretResolver::start(config_path, options))
            .unwrap();
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("start blocked (FIFO opened without O_NONBLOCK?)")
        .unwrap();

    let who = client("x");
    for (name, _, reason) in cases {
        let err = r.resolve(name, &who).unwrap_err();
        assert_eq!(err.reason(), *reason, "{name}: {err}");
        assert_eq!(err.name(), *name);
        assert_eq!(
            r.verify_client_secret(name, &who, b"anything")
                .unwrap_err()
                .reason(),
            *reason
        );
        // An empty file never "matches" an empty presented secret.
        assert!(r.verify_client_secret(name, &who, b"").is_err());
        let status = status_of(&r, name);
        assert!(
            matches!(status.state, SecretState::Error { reason: r, .. } if r == *reason),
            "{name}: {:?}",
            status.state
        );
        assert_eq!(status.size, None);
    }
    assert!(matches!(
        r.resolve("dangling", &who),
        Err(SecretError::Missing { dangling: true, .. })
    ));
    assert!(matches!(
        r.resolve("fifo", &who),
        Err(SecretError::NotRegular { kind: "a FIFO", .. })
    ));
    assert_eq!(r.resolve("at-the-cap", &who).unwrap().len(), 64);
    assert_eq!(current(&r, "good", &who).unwrap(), b"good-value");

    // Fixing one fault fixes that secret only, without a restart.
    fs::write(plain.join("empty"), b"now-filled\n").unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "empty", &who
    )
    .as_deref()
        == Some(&b"now-filled"[..])));
    assert_eq!(r.resolve("whitespace", &who).unwrap_err().reason(), "empty");
}

#[test]
fn a_good_value_survives_a_truncate_then_write_inside_the_settle_window() {
    // An in-place writer (hostPath, kubectl cp, an editor) truncates first, then writes.
    let fx = Fixture::new();
    let plain = fx.tmp.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let path = plain.join("s");
    fs::write(&path, b"old-value").unwrap();
    fx.write_config(&config(&[("s", &path, json!(["Client"]))]));
    let mut options = events_only();
    options.settle_window = Duration::from_secs(2);
    let (options, rec) = with_recorder(options);
    let r = fx.start(options);
    let who = client("x");

    fs::File::create(&path).unwrap(); // truncate to zero bytes
    assert!(
        wait_until(Duration::from_secs(1), || matches!(
            status_of(&r, "s").state,
            SecretState::Retrying {
                reason: "empty",
                ..
            }
        )),
        "the empty read was never seen"
    );
    // The bad read did not replace the good value.
    assert_eq!(current(&r, "s", &who).unwrap(), b"old-value");
    assert!(r.verify_client_secret("s", &who, b"old-value").unwrap());
    assert!(!r.verify_client_secret("s", &who, b"").unwrap());

    fs::write(&path, b"new-value").unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "s", &who
    )
    .as_deref()
        == Some(&b"new-value"[..])));
    assert_eq!(status_of(&r, "s").state, SecretState::Ok);
    assert_eq!(rec.rotations_of("s"), 1);
}

#[test]
fn a_secret_removed_from_the_mount_stops_working_after_the_settle_window() {
    let fx = Fixture::new();
    fx.mount
        .write(&[("gone", b"gone-value"), ("kept", b"kept-value")])
        .unwrap();
    fx.write_config(&config(&[
        ("gone", &fx.mount.path_of("gone"), json!(["Client"])),
        ("kept", &fx.mount.path_of("kept"), json!(["Client"])),
    ]));
    let settle = Duration::from_millis(500);
    let mut options = events_only();
    options.settle_window = settle;
    let r = fx.start(options);
    let who = client("x");

    // The object is dropped from the SecretProviderClass: its visible link is removed.
    let removed = Instant::now();
    fx.mount.write(&[("kept", b"kept-value")]).unwrap();
    assert!(wait_until(Duration::from_secs(3), || r
        .resolve("gone", &who)
        .is_err()));
    let failed_after = removed.elapsed();
    assert!(
        failed_after >= settle,
        "failed after {failed_after:?}, before the {settle:?} settle window"
    );
    assert!(
        failed_after < settle + Duration::from_secs(1),
        "took {failed_after:?}"
    );
    assert_eq!(r.resolve("gone", &who).unwrap_err().reason(), "missing");
    assert_eq!(
        r.verify_client_secret("gone", &who, b"gone-value")
            .unwrap_err()
            .reason(),
        "missing"
    );
    assert!(matches!(
        status_of(&r, "gone").state,
        SecretState::Error {
            reason: "missing",
            ..
        }
    ));
    assert_eq!(current(&r, "kept", &who).unwrap(), b"kept-value");

    // Put back (with a new value): it works again.
    fx.mount
        .write(&[("kept", b"kept-value"), ("gone", b"back-value")])
        .unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "gone", &who
    )
    .as_deref()
        == Some(&b"back-value"[..])));
}
