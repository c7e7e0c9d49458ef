//! Normalisation of values and scope checks at use (docs/external-secrets.md, "At use" and
//! "Reading, caching and rotation").

use fhirbox_secrets::SecretError;
use serde_json::json;

use crate::common::*;

#[test]
fn one_trailing_newline_is_stripped_and_inner_newlines_are_kept() {
    let fx = Fixture::new();
    fx.mount
        .write(&[
            ("lf", b"echoed\n"),
            ("crlf", b"windows\r\n"),
            ("two-lf", b"twice\n\n"),
            ("pem", b"-----BEGIN KEY-----\nabc\n-----END KEY-----\n"),
            ("spaces", b" padded "),
        ])
        .unwrap();
    let names = ["lf", "crlf", "two-lf", "pem", "spaces"];
    let entries: Vec<_> = names
        .iter()
        .map(|n| (*n, fx.mount.path_of(n), json!(["Client"])))
        .collect();
    let entries: Vec<_> = entries
        .iter()
        .map(|(n, p, s)| (*n, p.as_path(), s.clone()))
        .collect();
    fx.write_config(&config(&entries));
    let r = fx.start(events_only());
    let who = client("x");

    assert_eq!(current(&r, "lf", &who).unwrap(), b"echoed");
    assert_eq!(current(&r, "crlf", &who).unwrap(), b"windows");
    assert_eq!(current(&r, "two-lf", &who).unwrap(), b"twice\n");
    assert_eq!(
        current(&r, "pem", &who).unwrap(),
        b"-----BEGIN KEY-----\nabc\n-----END KEY-----"
    );
    assert_eq!(current(&r, "spaces", &who).unwrap(), b" padded ");

    assert!(r.verify_client_secret("lf", &who, b"echoed").unwrap());
    assert!(!r.verify_client_secret("lf", &who, b"echoed\n").unwrap());
    assert!(r.verify_client_secret("crlf", &who, b"windows").unwrap());
    assert!(r.verify_client_secret("spaces", &who, b" padded ").unwrap());
    // A value with an inner newline is fine for opaque use, never as a client secret.
    let pem = r.resolve("pem", &who).unwrap();
    assert!(pem.expose_utf8().unwrap().contains("\nabc\n"));
    assert_eq!(
        pem.expose_client_secret().unwrap_err().reason(),
        "invalid_characters"
    );
    let err = r
        .verify_client_secret("pem", &who, b"-----BEGIN KEY-----\nabc\n-----END KEY-----")
        .unwrap_err();
    assert_eq!(err.reason(), "invalid_characters");
    assert!(r.verify_client_secret("two-lf", &who, b"twice\n").is_err());
    assert_eq!(status_of(&r, "two-lf").size, Some(6));
}

#[test]
fn scope_by_type_by_instance_out_of_scope_and_unknown_name() {
    let fx = Fixture::new();
    fx.mount
        .write(&[
            ("by-type", b"t-value"),
            ("by-instance", b"i-value"),
            ("mixed", b"m-value"),
        ])
        .unwrap();
    fx.write_config(&config(&[
        ("by-type", &fx.mount.path_of("by-type"), json!(["TokenIntrospector"])),
        ("by-instance", &fx.mount.path_of("by-instance"), json!({"resource_type": "Client", "id": "basic"})),
        ("mixed", &fx.mount.path_of("mixed"), json!([{"resource_type": "IdentityProvider", "id": "okta"}, {"resource_type": "Client"}])),
    ]));
    let (options, rec) = with_recorder(events_only());
    let r = fx.start(options);
    let introspector = fhirbox_secrets::Requester::new("TokenIntrospector", "any-one");
    let okta = fhirbox_secrets::Requester::new("IdentityProvider", "okta");
    let other_idp = fhirbox_secrets::Requester::new("IdentityProvider", "other");

    // In scope by type: every instance.
    assert_eq!(current(&r, "by-type", &introspector).unwrap(), b"t-value");
    assert!(r.check_reference("by-type", &introspector).is_ok());
    // In scope by instance: that one only.
    assert_eq!(
        current(&r, "by-instance", &client("basic")).unwrap(),
        b"i-value"
    );
    assert!(r
        .verify_client_secret("by-instance", &client("basic"), b"i-value")
        .unwrap());
    assert!(r.resolve("mixed", &okta).is_ok() && r.resolve("mixed", &client("anything")).is_ok());

    // Out of scope.
    let err = r.resolve("by-instance", &client("other")).unwrap_err();
    assert_eq!(
        err,
        SecretError::NotInScope {
            name: "by-instance".into(),
            requester: "Client/other".into(),
            scope: "Client/basic".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "Client/other is not in the scope of secret \"by-instance\" (scope: Client/basic)"
    );
    assert_eq!(
        r.verify_client_secret("by-instance", &client("other"), b"i-value")
            .unwrap_err()
            .reason(),
        "not_in_scope"
    );
    assert_eq!(
        r.check_reference("by-type", &client("basic"))
            .unwrap_err()
            .reason(),
        "not_in_scope"
    );
    assert_eq!(
        r.resolve("mixed", &other_idp).unwrap_err().reason(),
        "not_in_scope"
    );

    // Unknown name.
    let err = r.resolve("nope", &client("basic")).unwrap_err();
    assert_eq!(err.reason(), "unknown_secret");
    assert_eq!(
        err.to_string(),
        "secret \"nope\" is not defined in the vault config"
    );
    assert_eq!(
        r.check_reference("nope", &client("basic"))
            .unwrap_err()
            .reason(),
        "unknown_secret"
    );

    // Every use was reported with its reason (check_reference is not a use).
    let seen = rec.resolutions.lock().unwrap().clone();
    assert!(seen.contains(&("by-type".to_string(), "ok")));
    assert!(seen.contains(&("by-instance".to_string(), "not_in_scope")));
    assert!(seen.contains(&("nope".to_string(), "unknown_secret")));
    assert_eq!(seen.len(), 9, "{seen:?}");
}
