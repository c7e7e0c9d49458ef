//! Hot reload of the vault config (docs/external-secrets.md, "Changing the config at run
//! time"): changes apply without restart, an invalid
//! config never replaces the last good one, and the error is visible until fixed.

use std::time::Duration;

use fhirbox_secrets::{ConfigError, SecretError, SecretResolver, SecretState};
use serde_json::json;

use crate::common::*;

#[test]
fn startup_refuses_an_invalid_or_missing_config_with_one_clear_line() {
    let fx = Fixture::new();
    let err = SecretResolver::start(fx.config_path(), events_only()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .contains("vault-config.json: cannot read vault config: file not found"),
        "{err}"
    );

    fx.write_config(
        &json!({"secret": {"client-secret": {"path": "/run/x", "scope": ["Patient"]}}}),
    );
    let err = SecretResolver::start(fx.config_path(), events_only()).unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with(&fx.config_path().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(
            "secret \"client-secret\": /secret/client-secret/scope/0: resource type \"Patient\""
        ),
        "{text}"
    );
}

#[test]
fn adding_a_secret_takes_effect_without_restart() {
    let fx = Fixture::new();
    fx.mount
        .write(&[("a", b"value-a"), ("b", b"value-b")])
        .unwrap();
    fx.write_config(&config(&[("a", &fx.mount.path_of("a"), json!(["Client"]))]));
    let (options, rec) = with_recorder(events_only());
    let r = fx.start(options);
    assert!(matches!(
        r.resolve("b", &client("x")),
        Err(SecretError::UnknownSecret { .. })
    ));
    assert!(r.check_reference("b", &client("x")).is_err());

    fx.write_config(&config(&[
        ("a", &fx.mount.path_of("a"), json!(["Client"])),
        ("b", &fx.mount.path_of("b"), json!(["Client"])),
    ]));
    assert!(wait_until(Duration::from_secs(1), || current(
        &r,
        "b",
        &client("x")
    )
    .as_deref()
        == Some(&b"value-b"[..])));
    assert!(r.check_reference("b", &client("x")).is_ok());
    assert_eq!(current(&r, "a", &client("x")).unwrap(), b"value-a");
    assert_eq!(r.config().len(), 2);
    assert_eq!(r.config_status().secrets, 2);
    assert_eq!(rec.reloads(), vec![true, true], "start, then one reload");
}

#[test]
fn changing_a_path_switches_file_and_watches_the_new_directory() {
    let fx = Fixture::new();
    let other =
        fhirbox_secrets::atomic_writer::AtomicWriterDir::new(fx.tmp.path().join("run/other-mount"))
            .unwrap();
    fx.mount.write(&[("s", b"from-first-mount")]).unwrap();
    other.write(&[("s", b"from-second-mount")]).unwrap();
    fx.write_config(&config(&[("s", &fx.mount.path_of("s"), json!(["Client"]))]));
    let r = fx.start(events_only());
    let who = client("x");
    assert_eq!(current(&r, "s", &who).unwrap(), b"from-first-mount");

    fx.write_config(&config(&[("s", &other.path_of("s"), json!(["Client"]))]));
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "s", &who
    )
    .as_deref()
        == Some(&b"from-second-mount"[..])));
    assert_eq!(status_of(&r, "s").path, other.path_of("s"));

    // The new directory is watched now (the poll is an hour): a rotation there is seen.
    other.write(&[("s", b"second-mount-rotated")]).unwrap();
    assert!(wait_until(Duration::from_secs(1), || current(
        &r, "s", &who
    )
    .as_deref()
        == Some(&b"second-mount-rotated"[..])));
    // And the old one no longer matters.
    fx.mount.write(&[("s", b"first-mount-rotated")]).unwrap();
    assert!(r.reload_now().is_ok());
    assert_eq!(current(&r, "s", &who).unwrap(), b"second-mount-rotated");
}

#[test]
fn a_broken_config_keeps_the_last_good_one_and_fixing_it_clears_the_error() {
    let fx = Fixture::new();
    fx.mount
        .write(&[("a", b"value-a"), ("b", b"value-b")])
        .unwrap();
    fx.write_config(&config(&[("a", &fx.mount.path_of("a"), json!(["Client"]))]));
    let mut options = events_only();
    options.poll_interval = Duration::from_millis(50);
    let (options, rec) = with_recorder(options);
    let r = fx.start(options);
    assert_eq!(r.config_status().last_error, None);

    // 1. Not JSON at all.
    fx.write_config_text(r#"{"secret": {"a": "#);
    assert!(wait_until(Duration::from_secs(1), || r
        .config_status()
        .last_error
        .is_some()));
    let failure = r.config_status().last_error.unwrap();
    assert!(
        failure.message.contains("vault-config.json: invalid JSON"),
        "{}",
        failure.message
    );
    assert_eq!(
        current(&r, "a", &client("x")).unwrap(),
        b"value-a",
        "last good config stays in force"
    );
    // Polls keep re-reading the same broken bytes: reported once, not once per poll.
    let loaded = status_of(&r, "a").last_loaded.unwrap();
    assert!(wait_until(Duration::from_secs(2), || status_of(&r, "a")
        .last_loaded
        .unwrap()
        > loaded));
    assert_eq!(rec.reloads(), vec![true, false]);

    // 2. Valid JSON, invalid config: the message names the secret and the location.
    fx.write_config(&config(&[
        ("a", &fx.mount.path_of("a"), json!(["Client"])),
        ("b", &fx.mount.path_of("b"), json!(["Patient"])),
    ]));
    assert!(wait_until(Duration::from_secs(1), || r
        .config_status()
        .last_error
        .is_some_and(|f| f.message.contains(
            "secret \"b\": /secret/b/scope/0: resource type \"Patient\""
        ))));
    assert!(matches!(
        r.resolve("b", &client("x")),
        Err(SecretError::UnknownSecret { .. })
    ));
    assert_eq!(current(&r, "a", &client("x")).unwrap(), b"value-a");
    assert!(matches!(r.reload_now(), Err(ConfigError::Invalid { .. })));

    // 3. Fixed: the error clears and the new secret works.
    fx.write_config(&config(&[
        ("a", &fx.mount.path_of("a"), json!(["Client"])),
        ("b", &fx.mount.path_of("b"), json!(["Client"])),
    ]));
    assert!(wait_until(Duration::from_secs(1), || r
        .config_status()
        .last_error
        .is_none()));
    assert_eq!(current(&r, "b", &client("x")).unwrap(), b"value-b");
    assert!(r.reload_now().is_ok());
}

#[test]
fn a_config_file_removed_for_good_is_reported_and_the_last_good_config_stays() {
    let fx = Fixture::new();
    fx.mount.write(&[("a", b"value-a")]).unwrap();
    fx.write_config(&config(&[("a", &fx.mount.path_of("a"), json!(["Client"]))]));
    let r = fx.start(events_only());
    // The ConfigMap key is dropped: the visible link disappears.
    fx.config_volume.write(&[]).unwrap();
    assert!(wait_until(Duration::from_secs(2), || r
        .config_status()
        .last_error
        .is_some_and(|f| f.message.contains("file not found"))));
    assert_eq!(current(&r, "a", &client("x")).unwrap(), b"value-a");
    // Back with the same content: the error clears.
    fx.write_config(&config(&[("a", &fx.mount.path_of("a"), json!(["Client"]))]));
    assert!(wait_until(Duration::from_secs(1), || r
        .config_status()
        .last_error
        .is_none()));
}

#[test]
fn narrowing_a_scope_applies_to_the_next_use() {
    let fx = Fixture::new();
    fx.mount.write(&[("s", b"value")]).unwrap();
    fx.write_config(&config(&[("s", &fx.mount.path_of("s"), json!(["Client"]))]));
    let r = fx.start(events_only());
    assert!(r.resolve("s", &client("other")).is_ok());

    fx.write_config(&config(&[(
        "s",
        &fx.mount.path_of("s"),
        json!({"resource_type": "Client", "id": "basic"}),
    )]));
    assert!(wait_until(Duration::from_secs(1), || matches!(
        r.resolve("s", &client("other")),
        Err(SecretError::NotInScope { .. })
    )));
    assert!(r.resolve("s", &client("basic")).is_ok());
    assert_eq!(status_of(&r, "s").state, SecretState::Ok);
}
