//! No secret can be printed: Debug and Display of every public type never contain
//! a value, in any common encoding. Log output is checked in `tests/log_leaks.rs`, a binary of
//! its own because it needs a process-wide subscriber.

use fhirbox_secrets::{read_secret_file, ConfigError, VaultConfig};
use serde_json::json;

use crate::common::*;

#[test]
fn debug_output_of_every_type_holds_no_value() {
    let fx = Fixture::new();
    fx.mount
        .write(&[("a", VALUES[0].as_bytes()), ("multi", VALUES[3].as_bytes())])
        .unwrap();
    fx.write_config(&config(&[
        ("a", &fx.mount.path_of("a"), json!(["Client/basic"])),
        ("multi", &fx.mount.path_of("multi"), json!(["Client"])),
    ]));
    let r = fx.start(events_only());
    let who = client("basic");

    let value = r.resolve("a", &who).unwrap();
    assert_eq!(
        value.expose_bytes(),
        VALUES[0].as_bytes(),
        "the probe is really the value"
    );
    let mut shown = vec![
        format!("{value:?}"),
        format!("{value:#?}"),
        format!("{:?}", r.resolve("multi", &who).unwrap()),
        format!("{:?}", r.config()),
        format!("{:?}", r.status()),
        format!("{:?}", r.config_status()),
        format!("{r:?}"),
        format!("{:?}", events_only()),
        format!(
            "{:?}",
            read_secret_file("a", &fx.mount.path_of("a"), 1024).unwrap()
        ),
        format!(
            "{:?}",
            VaultConfig::load(&fx.config_path(), &TYPES).unwrap()
        ),
    ];
    // Errors of every kind the value could flow into.
    let errors = [
        r.resolve("a", &client("other")).unwrap_err(),
        r.verify_client_secret("multi", &who, VALUES[3].as_bytes())
            .unwrap_err(),
        r.resolve("multi", &who)
            .unwrap()
            .expose_client_secret()
            .unwrap_err(),
        read_secret_file("a", &fx.mount.path_of("a"), 4).unwrap_err(),
    ];
    for e in &errors {
        shown.push(format!("{e:?} / {e}"));
    }
    let config_err: ConfigError =
        VaultConfig::parse(VALUES[1].as_bytes(), &fx.config_path(), &TYPES).unwrap_err();
    shown.push(format!("{config_err:?} / {config_err}"));
    assert!(shown[0].contains("[REDACTED]"));
    for s in &shown {
        assert_clean("Debug/Display", s);
    }
}
