//! Reading through the CSI layout and following rotations (docs/external-secrets.md,
//! "Reading, caching and rotation").

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use fhirbox_secrets::atomic_writer::WriteOutcome;
use fhirbox_secrets::{SecretError, SecretState};
use serde_json::json;

use crate::common::*;

#[test]
fn initial_read_goes_through_the_csi_symlink_layout() {
    let fx = Fixture::new();
    fx.mount
        .write(&[("client-secret", b"super-secret-value")])
        .unwrap();
    let path = fx.mount.path_of("client-secret");
    fx.write_config(&config(&[(
        "client-secret",
        &path,
        json!(["Client/basic"]),
    )]));
    // The visible path is a symlink to ..data/client-secret, ..data a symlink to the real dir.
    assert!(fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::symlink_metadata(fx.mount.root().join("..data"))
        .unwrap()
        .file_type()
        .is_symlink());

    let r = fx.start(events_only());

    let v = r.resolve("client-secret", &client("basic")).unwrap();
    assert_eq!(v.expose_bytes(), b"super-secret-value");
    assert_eq!(v.expose_client_secret().unwrap(), "super-secret-value");
    assert!(r
        .verify_client_secret("client-secret", &client("basic"), b"super-secret-value")
        .unwrap());
    assert!(!r
        .verify_client_secret("client-secret", &client("basic"), b"wrong-password")
        .unwrap());
    let s = status_of(&r, "client-secret");
    assert_eq!(s.state, SecretState::Ok);
    assert_eq!(s.size, Some(18));
    assert_eq!(s.scope, vec!["Client/basic"]);
    assert!(s.last_loaded.is_some());
    assert_eq!(s.last_rotated, None);
    // The atomic writer's own entries are never secrets.
    assert!(matches!(
        r.resolve("..data", &client("basic")),
        Err(SecretError::UnknownSecret { .. })
    ));
}

#[test]
fn four_rotations_in_a_row_are_each_picked_up_within_one_second_by_the_watcher() {
    let fx = Fixture::new();
    fx.mount.write(&[("client-secret", b"v1-start")]).unwrap();
    fx.write_config(&config(&[(
        "client-secret",
        &fx.mount.path_of("client-secret"),
        json!(["Client"]),
    )]));
    // Poll once an hour: only directory events can pick these rotations up.
    let r = fx.start(events_only());
    let who = client("basic");
    assert_eq!(current(&r, "client-secret", &who).unwrap(), b"v1-start");

    let mut previous = b"v1-start".to_vec();
    for n in 2..=5 {
        let value = format!("v{n}-rotated");
        assert_eq!(
            fx.mount
                .write(&[("client-secret", value.as_bytes())])
                .unwrap(),
            WriteOutcome::Swapped
        );
        let written = Instant::now();
        assert!(
            wait_until(Duration::from_secs(1), || current(&r, "client-secret", &who).as_deref() == Some(value.as_bytes())),
            "rotation {n} not picked up within 1 s (a watch on the file would die after the first swap)"
        );
        eprintln!("rotation {n} seen after {:?}", written.elapsed());
        // No grace configured: the old value stops working at once.
        assert!(!r
            .verify_client_secret("client-secret", &who, &previous)
            .unwrap());
        assert!(r
            .verify_client_secret("client-secret", &who, value.as_bytes())
            .unwrap());
        previous = value.into_bytes();
    }
    assert!(status_of(&r, "client-secret").last_rotated.is_some());
}

#[test]
fn without_events_the_poll_picks_a_rotation_up_within_its_interval() {
    let fx = Fixture::new();
    fx.mount.write(&[("s", b"v1")]).unwrap();
    fx.write_config(&config(&[("s", &fx.mount.path_of("s"), json!(["Client"]))]));
    let poll = Duration::from_millis(150);
    let r = fx.start(poll_only(poll));
    assert_eq!(current(&r, "s", &client("a")).unwrap(), b"v1");

    fx.mount.write(&[("s", b"v2")]).unwrap();
    let written = Instant::now();
    // One poll interval, plus scheduling slack; well inside the default poll's one second.
    assert!(wait_until(poll + Duration::from_millis(600), || current(
        &r,
        "s",
        &client("a")
    )
    .as_deref()
        == Some(&b"v2"[..])));
    eprintln!("poll picked the rotation up after {:?}", written.elapsed());
}

#[test]
fn rewriting_identical_content_is_not_a_rotation() {
    let fx = Fixture::new();
    fx.mount.write(&[("s", b"same-value")]).unwrap();
    fx.write_config(&config(&[("s", &fx.mount.path_of("s"), json!(["Client"]))]));
    let (options, rec) = with_recorder(events_only());
    let r = fx.start(options);
    let first_load = status_of(&r, "s").last_loaded.unwrap();

    // The real writer does not touch the disk at all for an unchanged payload...
    assert_eq!(
        fx.mount.write(&[("s", b"same-value")]).unwrap(),
        WriteOutcome::Unchanged
    );
    // ...and a writer that swaps anyway must not count as a rotation either.
    fx.mount
        .write_even_if_unchanged(&[("s", b"same-value")])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || status_of(&r, "s")
            .last_loaded
            .unwrap()
            > first_load),
        "the swap was never re-read"
    );
    assert_eq!(rec.rotations_of("s"), 0);
    assert_eq!(status_of(&r, "s").last_rotated, None);
    assert_eq!(current(&r, "s", &client("a")).unwrap(), b"same-value");

    // A real change is counted, once.
    fx.mount.write(&[("s", b"other-value")]).unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r,
        "s",
        &client("a")
    )
    .as_deref()
        == Some(&b"other-value"[..])));
    assert!(wait_until(Duration::from_secs(1), || rec.rotations_of("s") == 1));
    assert!(status_of(&r, "s").last_rotated.is_some());
}

#[test]
fn rotation_grace_keeps_the_previous_value_valid_until_it_ends() {
    let fx = Fixture::new();
    fx.mount
        .write(&[
            ("graced", b"old-graced"),
            ("strict", b"old-strict"),
            ("forever", b"old-forever"),
        ])
        .unwrap();
    let grace = Duration::from_millis(700);
    fx.write_config(&json!({"secret": {
        "graced": {"path": fx.mount.path_of("graced"), "scope": ["Client"], "rotation_grace": "700ms"},
        "strict": {"path": fx.mount.path_of("strict"), "scope": ["Client"]},
        // Parses (humantime), and past Instant's range: must saturate, not panic.
        "forever": {"path": fx.mount.path_of("forever"), "scope": ["Client"], "rotation_grace": "400000000000y"}
    }}));
    let r = fx.start(events_only());
    let who = client("a");
    assert_eq!(status_of(&r, "graced").rotation_grace, Some(grace));

    fx.mount
        .write(&[
            ("graced", b"new-graced"),
            ("strict", b"new-strict"),
            ("forever", b"new-forever"),
        ])
        .unwrap();
    assert!(wait_until(Duration::from_secs(1), || {
        current(&r, "graced", &who).as_deref() == Some(&b"new-graced"[..])
            && current(&r, "strict", &who).as_deref() == Some(&b"new-strict"[..])
            && current(&r, "forever", &who).as_deref() == Some(&b"new-forever"[..])
    }));
    assert!(r
        .verify_client_secret("forever", &who, b"old-forever")
        .unwrap());

    // Inside the grace: both values authenticate for "graced"; only the new one for "strict".
    assert!(r
        .verify_client_secret("graced", &who, b"old-graced")
        .unwrap());
    assert!(r
        .verify_client_secret("graced", &who, b"new-graced")
        .unwrap());
    assert!(!r
        .verify_client_secret("graced", &who, b"something-else")
        .unwrap());
    assert!(!r
        .verify_client_secret("strict", &who, b"old-strict")
        .unwrap());
    assert!(r
        .verify_client_secret("strict", &who, b"new-strict")
        .unwrap());
    // resolve() only ever gives the current value; resolve_with_previous() adds the old one
    // while the grace lasts (signature keys try both), and never for "strict".
    assert_eq!(current(&r, "graced", &who).unwrap(), b"new-graced");
    let both = |name: &str| {
        let (now, before) = r.resolve_with_previous(name, &who).unwrap();
        (
            now.expose_bytes().to_vec(),
            before.map(|v| v.expose_bytes().to_vec()),
        )
    };
    assert_eq!(
        both("graced"),
        (b"new-graced".to_vec(), Some(b"old-graced".to_vec()))
    );
    assert_eq!(both("strict"), (b"new-strict".to_vec(), None));

    // The grace ends, and not before its time.
    assert!(wait_until(Duration::from_secs(3), || !r
        .verify_client_secret("graced", &who, b"old-graced")
        .unwrap()));
    let ended = SystemTime::now();
    let rotated = status_of(&r, "graced").last_rotated.unwrap();
    assert!(
        ended + Duration::from_millis(20) >= rotated + grace,
        "previous value stopped matching {:?} after the rotation, before the {grace:?} grace",
        ended.duration_since(rotated).unwrap_or_default()
    );
    assert!(r
        .verify_client_secret("graced", &who, b"new-graced")
        .unwrap());
    assert_eq!(both("graced"), (b"new-graced".to_vec(), None));
}

#[test]
fn a_mount_directory_deleted_and_recreated_is_watched_again() {
    let fx = Fixture::new();
    fx.mount.write(&[("s", b"before")]).unwrap();
    fx.write_config(&config(&[("s", &fx.mount.path_of("s"), json!(["Client"]))]));
    let mut options = events_only();
    options.settle_window = Duration::from_secs(5);
    let r = fx.start(options);
    let who = client("x");

    // The whole volume goes away and comes back (remount): the old directory watch is dead.
    fs::remove_dir_all(fx.mount.root()).unwrap();
    let mount = fhirbox_secrets::atomic_writer::AtomicWriterDir::new(fx.mount.root()).unwrap();
    mount.write(&[("s", b"after-remount")]).unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "s", &who
    )
    .as_deref()
        == Some(&b"after-remount"[..])));
    // With the poll at an hour, only a re-armed watch can see this rotation.
    mount.write(&[("s", b"rotated-after-remount")]).unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "s", &who
    )
    .as_deref()
        == Some(&b"rotated-after-remount"[..])));
}
