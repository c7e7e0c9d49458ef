//! External secrets end to end (docs/external-secrets.md): the tutorial, rotation
//! by the atomic-writer replay, the poll fallback, scope, the write rules, file
//! faults, normalisation, config hot reload, concurrency, leak proof, and `fhirbox
//! vault check`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use fhirbox_secrets::atomic_writer::AtomicWriterDir;
use fhirbox_test_support::wait_until_async;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{captured_logs, Backend, Resp, TestApp};

const TUTORIAL_SECRET: &str = "super-secret-value";
const DAR: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const REF: &str = "http://health-samurai.io/fhir/secret-reference";

/// A CSI-style secret mount (atomic-writer layout) plus a vault config file.
pub struct Vault {
    dir: tempfile::TempDir,
    mount: AtomicWriterDir,
    values: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Vault {
    pub fn new(secrets: &[(&str, &str)]) -> Vault {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        let mount = AtomicWriterDir::new(dir.path().join("run/vault-secrets")).unwrap();
        let vault = Vault {
            dir,
            mount,
            values: Mutex::new(
                secrets
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        };
        vault.publish();
        vault
    }

    pub fn publish(&self) {
        let values = self.values.lock().unwrap();
        let files: Vec<(&str, &[u8])> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        self.mount.write(&files).unwrap();
    }

    /// One rotation as the CSI driver does it: a new timestamped dir swapped in.
    pub fn rotate(&self, name: &str, value: &[u8]) {
        self.values
            .lock()
            .unwrap()
            .insert(name.to_owned(), value.to_vec());
        self.publish();
    }

    /// The object removed from the mount (its visible link goes away).
    pub fn remove(&self, name: &str) {
        self.values.lock().unwrap().remove(name);
        self.publish();
    }

    pub fn secret_path(&self, name: &str) -> String {
        self.mount.path_of(name).display().to_string()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("etc/vault-config.json")
    }

    /// Replaces the config the way a ConfigMap update does: never half-written.
    pub fn write_config(&self, config: &Value) {
        let tmp = self.dir.path().join("etc/.vault-config.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.dir.path().join("etc/.vault-config.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.config_path()).unwrap();
    }

    pub fn tutorial_config(&self, scope: Value) -> Value {
        json!({"secret": {"client-secret": {"path": self.secret_path("client-secret"), "scope": scope}}})
    }
}

pub async fn spawn_with_vault(backend: Backend, vault: &Vault) -> TestApp {
    let path = vault.config_path();
    TestApp::spawn_with(backend, move |s| s.vault_config = Some(path)).await
}

pub fn reference(name: &str) -> Value {
    json!({"extension": [{"url": DAR, "valueCode": "masked"}, {"url": REF, "valueString": name}]})
}

async fn put_vault_client(app: &TestApp, id: &str, secret_name: &str, grants: &[&str]) -> Resp {
    app.put(
        &format!("/fhir/Client/{id}"),
        &json!({"resourceType": "Client", "id": id, "_secret": reference(secret_name), "grant_types": grants}),
    )
    .await
}

async fn status_as(app: &TestApp, id: &str, secret: &str) -> u16 {
    app.get_as("/fhir/Patient?_count=1", id, secret)
        .await
        .status
}

async fn tutorial_app(backend: Backend, scope: Value) -> (Vault, TestApp) {
    let vault = Vault::new(&[("client-secret", TUTORIAL_SECRET)]);
    vault.write_config(&vault.tutorial_config(scope));
    let app = spawn_with_vault(backend, &vault).await;
    let r = put_vault_client(
        &app,
        "basic",
        "client-secret",
        &["basic", "client_credentials"],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    app.allow_client("basic-allow", "basic").await;
    (vault, app)
}

backend_tests!(per_backend: tutorial_runs_with_every_scope_form, four_rotations_in_a_row_each_apply_within_a_second, rotation_grace_keeps_the_previous_value_for_a_while, the_poll_alone_picks_up_a_rotation, scope_is_checked_on_write_and_at_every_use, bad_references_are_refused_with_what_to_fix, references_are_refused_while_the_feature_is_off, all_nine_fields_are_stored_as_references_and_read_back_unchanged, file_faults_fail_only_that_secret_and_never_replace_a_good_value, a_transient_bad_read_never_replaces_the_good_value, one_trailing_newline_is_stripped_and_inner_newlines_refused_for_clients, config_changes_apply_without_a_restart_and_a_broken_config_keeps_the_last_good, parallel_requests_during_rotations_see_only_200_or_401, secret_values_appear_nowhere);

async fn tutorial_runs_with_every_scope_form(backend: Backend) {
    for scope in [
        json!(["Client/basic"]),
        json!({"resource_type": "Client", "id": "basic"}),
        json!([{"resource_type": "Client"}]),
    ] {
        let (_vault, app) = tutorial_app(backend, scope.clone()).await;
        let read = app.get("/fhir/Client/basic").await.json();
        assert_eq!(
            read["_secret"],
            reference("client-secret"),
            "scope form {scope}"
        );
        assert!(read.get("secret").is_none());
        assert_eq!(
            status_as(&app, "basic", TUTORIAL_SECRET).await,
            200,
            "scope form {scope}"
        );
        let wrong = app.get_as("/fhir/Patient", "basic", "wrong-password").await;
        wrong.assert_outcome(401, "authentication failed");
        let token = app
            .send(
                app.anon
                    .post(app.url("/auth/token"))
                    .basic_auth("basic", Some(TUTORIAL_SECRET))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("grant_type=client_credentials"),
            )
            .await;
        assert_eq!(token.status, 200, "{}", token.text);
    }
}

async fn four_rotations_in_a_row_each_apply_within_a_second(backend: Backend) {
    let (vault, app) = tutorial_app(backend, json!(["Client/basic"])).await;
    let mut old = TUTORIAL_SECRET.to_owned();
    for round in 1..=4 {
        let new = format!("rotated-value-{round}");
        vault.rotate("client-secret", new.as_bytes());
        let took = wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", &new).await == 200
        })
        .await;
        assert!(took, "rotation {round} was not picked up within 1 s");
        assert_eq!(
            status_as(&app, "basic", &old).await,
            401,
            "the old value must stop working (no grace)"
        );
        old = new;
    }
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics.contains("fhirbox_secret_rotations_total{secret=\"client-secret\"} 4"),
        "{metrics}"
    );
    assert!(metrics
        .contains("fhirbox_secret_resolutions_total{secret=\"client-secret\",result=\"ok\"}"));
    assert!(metrics.contains("fhirbox_vault_config_reloads_total{result=\"ok\"}"));
}

async fn rotation_grace_keeps_the_previous_value_for_a_while(backend: Backend) {
    let vault = Vault::new(&[("client-secret", TUTORIAL_SECRET)]);
    vault.write_config(
        &json!({"secret": {"client-secret": {"path": vault.secret_path("client-secret"),
        "scope": ["Client/basic"], "rotation_grace": "1500ms"}}}),
    );
    let app = spawn_with_vault(backend, &vault).await;
    put_vault_client(&app, "basic", "client-secret", &["basic"]).await;
    app.allow_client("basic-allow", "basic").await;
    vault.rotate("client-secret", b"graceful-new");
    assert!(
        wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", "graceful-new").await == 200
        })
        .await
    );
    let rotated_at = Instant::now();
    assert_eq!(
        status_as(&app, "basic", TUTORIAL_SECRET).await,
        200,
        "the previous value works during the grace"
    );
    let ended = wait_until_async(Duration::from_secs(4), || async {
        status_as(&app, "basic", TUTORIAL_SECRET).await == 401
    })
    .await;
    assert!(
        ended,
        "the previous value must stop working after the grace"
    );
    assert!(
        rotated_at.elapsed() >= Duration::from_millis(1000),
        "the grace ended too early"
    );
    assert_eq!(status_as(&app, "basic", "graceful-new").await, 200);
}

async fn the_poll_alone_picks_up_a_rotation(backend: Backend) {
    let vault = Vault::new(&[("client-secret", TUTORIAL_SECRET)]);
    vault.write_config(&vault.tutorial_config(json!(["Client/basic"])));
    let path = vault.config_path();
    let app = TestApp::spawn_with(backend, move |s| {
        s.vault_config = Some(path);
        s.vault_watch = false;
        s.vault_poll = Duration::from_millis(200);
    })
    .await;
    put_vault_client(&app, "basic", "client-secret", &["basic"]).await;
    app.allow_client("basic-allow", "basic").await;
    assert_eq!(status_as(&app, "basic", TUTORIAL_SECRET).await, 200);
    vault.rotate("client-secret", b"polled-value");
    let took = wait_until_async(Duration::from_secs(2), || async {
        status_as(&app, "basic", "polled-value").await == 200
    })
    .await;
    assert!(took, "the poll did not pick up the rotation");
}

async fn scope_is_checked_on_write_and_at_every_use(backend: Backend) {
    let (vault, app) = tutorial_app(backend, json!(["Client/basic"])).await;
    let other = put_vault_client(&app, "other", "client-secret", &["basic"]).await;
    other.assert_outcome(
        422,
        "Client/other is not in the scope of secret \"client-secret\"",
    );
    assert!(
        other.text.contains("Client/basic"),
        "the message names the scope: {}",
        other.text
    );
    app.get("/fhir/Client/other")
        .await
        .assert_outcome(404, "does not exist");
    // The config changes afterwards: basic falls out of scope, its use fails safely.
    vault.write_config(&vault.tutorial_config(json!(["Client/someone-else"])));
    let denied = wait_until_async(Duration::from_secs(3), || async {
        status_as(&app, "basic", TUTORIAL_SECRET).await == 401
    })
    .await;
    assert!(denied, "an out-of-scope use must fail");
    let logs = captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("secret=\"client-secret\"") && l.contains("not_in_scope")),
        "a log line names the secret and the reason"
    );
}

async fn bad_references_are_refused_with_what_to_fix(backend: Backend) {
    let (_vault, app) = tutorial_app(backend, json!(["Client"])).await;
    put_vault_client(&app, "c1", "no-such-secret", &["basic"])
        .await
        .assert_outcome(
            422,
            "secret \"no-such-secret\" is not defined in the vault config",
        );
    app.put("/fhir/Client/c2", &json!({"resourceType": "Client", "id": "c2", "secret": "literal", "_secret": reference("client-secret")}))
        .await
        .assert_outcome(422, "both a value and a secret reference");
    app.put("/fhir/Patient/p", &json!({"resourceType": "Patient", "id": "p", "_birthDate": reference("client-secret")}))
        .await
        .assert_outcome(422, "Patient.birthDate cannot refer to an external secret; the secret-capable fields are: Client.secret");
    // Every write path applies the rules: patch, batch and transaction too.
    app.patch("/fhir/Client/basic", &json!([{"op": "replace", "path": "/_secret/extension/1/valueString", "value": "no-such-secret"}]))
        .await
        .assert_outcome(422, "not defined in the vault config");
    let tx = app.post("/fhir", &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Client", "id": "c3", "_secret": reference("nope")}, "request": {"method": "PUT", "url": "Client/c3"}}]})).await;
    tx.assert_outcome(422, "not defined in the vault config");
    let batch = app.post("/fhir", &json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Client", "id": "c4", "_secret": reference("nope")}, "request": {"method": "PUT", "url": "Client/c4"}}]})).await;
    assert_eq!(
        batch.json()["entry"][0]["response"]["status"],
        "422 Unprocessable Entity"
    );
    // Nothing of it was stored, and basic still works.
    assert_eq!(status_as(&app, "basic", TUTORIAL_SECRET).await, 200);
}

async fn references_are_refused_while_the_feature_is_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    put_vault_client(&app, "basic", "client-secret", &["basic"])
        .await
        .assert_outcome(
            422,
            "external secrets are off on this server; set BOX_VAULT_CONFIG",
        );
    let admin = app.get("/admin/secrets").await.json();
    assert_eq!(admin["enabled"], false);
}

async fn all_nine_fields_are_stored_as_references_and_read_back_unchanged(backend: Backend) {
    let vault = Vault::new(&[
        ("shared", "shared-value"),
        ("pem", "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"),
    ]);
    vault.write_config(&json!({"secret": {
        "shared": {"path": vault.secret_path("shared"), "scope": ["IdentityProvider", "TokenIntrospector", "AidboxTopicDestination/kafka"]},
        "pem": {"path": vault.secret_path("pem"), "scope": [{"resource_type": "IdentityProvider", "id": "idp"}]}
    }}));
    let app = spawn_with_vault(backend, &vault).await;
    let bodies = [
        json!({"resourceType": "IdentityProvider", "id": "idp", "client": {"id": "x", "_secret": reference("shared"),
               "_private-key": reference("pem"), "_certificate": reference("pem")}}),
        // The three TokenIntrospector fields, in the two shapes that hold them.
        json!({"resourceType": "TokenIntrospector", "id": "ti", "type": "jwt",
               "jwt": {"iss": "https://idp.local", "_secret": reference("shared")}}),
        json!({"resourceType": "TokenIntrospector", "id": "ti-keys", "type": "jwt",
               "jwt": {"iss": "https://idp2.local", "keys": [{"kty": "OCT", "alg": "HS256", "_k": reference("shared")}]}}),
        json!({"resourceType": "TokenIntrospector", "id": "ti-opaque", "type": "opaque",
               "introspection_endpoint": {"url": "http://idp.local/introspect", "_authorization": reference("shared")}}),
        json!({"resourceType": "AidboxTopicDestination", "id": "kafka", "kind": "kafka-at-least-once",
               "topic": "http://hospital.example/topics/patients", "parameter": [
               {"name": "kafkaTopic", "valueString": "fhir.patients"},
               {"name": "bootstrapServers", "valueString": "kafka:9093"},
               {"name": "securityProtocol", "valueString": "SASL_SSL"},
               {"name": "saslMechanism", "valueString": "SCRAM-SHA-512"},
               {"name": "saslJaasConfig", "_valueString": reference("shared")},
               {"name": "sslKeystoreKey", "_valueString": reference("shared")},
               {"name": "sslKeystoreCertificateChain", "valueString": "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"}]}),
    ];
    for body in bodies {
        let path = format!(
            "/fhir/{}/{}",
            body["resourceType"].as_str().unwrap(),
            body["id"].as_str().unwrap()
        );
        let r = app.put(&path, &body).await;
        assert_eq!(r.status, 201, "{path}: {}", r.text);
        let mut read = app.get(&path).await.json();
        read.as_object_mut().unwrap().remove("meta");
        assert_eq!(read, body, "{path} reads back unchanged");
        assert!(!app.get(&path).await.text.contains("shared-value"));
    }
    // Scope still applies per instance.
    app.put(
        "/fhir/AidboxTopicDestination/other",
        &json!({"resourceType": "AidboxTopicDestination", "id": "other",
        "parameter": [{"name": "saslJaasConfig", "_valueString": reference("shared")}]}),
    )
    .await
    .assert_outcome(422, "not in the scope");
}

async fn file_faults_fail_only_that_secret_and_never_replace_a_good_value(backend: Backend) {
    let vault = Vault::new(&[("good", "good-value"), ("flaky", "flaky-value")]);
    vault.write_config(&json!({"secret": {
        "good": {"path": vault.secret_path("good"), "scope": ["Client/good"]},
        "flaky": {"path": vault.secret_path("flaky"), "scope": ["Client/flaky"]}
    }}));
    let app = spawn_with_vault(backend, &vault).await;
    put_vault_client(&app, "good", "good", &["basic"]).await;
    put_vault_client(&app, "flaky", "flaky", &["basic"]).await;
    app.put(
        "/fhir/AccessPolicy/all",
        &json!({"resourceType": "AccessPolicy", "id": "all", "engine": "allow"}),
    )
    .await;
    assert_eq!(status_as(&app, "flaky", "flaky-value").await, 200);
    let flaky_link = vault.mount.path_of("flaky");

    // Each fault: the flaky client fails safely (401), the good one keeps working.
    let faults: Vec<(&str, Fault)> = vec![
        ("empty", Box::new(|| vault.rotate("flaky", b""))),
        (
            "whitespace-only",
            Box::new(|| vault.rotate("flaky", b"  \n")),
        ),
        (
            "too large",
            Box::new(|| vault.rotate("flaky", "x".repeat(70 * 1024).as_bytes())),
        ),
        ("missing", Box::new(|| vault.remove("flaky"))),
        (
            "dangling symlink",
            Box::new(|| {
                let _ = std::fs::remove_file(&flaky_link);
                std::os::unix::fs::symlink("..data/does-not-exist", &flaky_link).unwrap();
            }),
        ),
        (
            "a directory",
            Box::new(|| {
                let _ = std::fs::remove_file(&flaky_link);
                std::fs::create_dir(&flaky_link).unwrap();
            }),
        ),
        (
            "a FIFO",
            Box::new(|| {
                let _ = std::fs::remove_dir(&flaky_link);
                let _ = std::fs::remove_file(&flaky_link);
                assert!(std::process::Command::new("mkfifo")
                    .arg(&flaky_link)
                    .status()
                    .unwrap()
                    .success());
            }),
        ),
        (
            "a path through a regular file (ENOTDIR, unreadable even for root)",
            Box::new(|| {
                let _ = std::fs::remove_file(&flaky_link);
                let blocker = flaky_link.with_file_name("blocker");
                std::fs::write(&blocker, b"flaky-66").unwrap();
                std::os::unix::fs::symlink("blocker/flaky", &flaky_link).unwrap();
            }),
        ),
    ];
    for (label, fault) in faults {
        // Start every fault from a working state.
        let _ = std::fs::remove_dir(&flaky_link);
        let _ = std::fs::remove_file(&flaky_link);
        vault.rotate("flaky", format!("flaky-{}", label.len()).as_bytes());
        vault
            .mount
            .write_even_if_unchanged(&[
                ("good", b"good-value"),
                ("flaky", format!("flaky-{}", label.len()).as_bytes()),
            ])
            .unwrap();
        let value = format!("flaky-{}", label.len());
        assert!(
            wait_until_async(Duration::from_secs(3), || async {
                status_as(&app, "flaky", &value).await == 200
            })
            .await,
            "{label}: setup"
        );
        fault();
        let failed = wait_until_async(Duration::from_secs(4), || async {
            status_as(&app, "flaky", &value).await == 401
        })
        .await;
        assert!(failed, "{label}: the secret must fail safely");
        assert_eq!(
            status_as(&app, "flaky", "").await,
            401,
            "{label}: never an empty secret"
        );
        assert_eq!(
            status_as(&app, "good", "good-value").await,
            200,
            "{label}: other secrets keep working"
        );
        assert!(!app.get("/fhir/metadata").await.text.is_empty());
    }
    let flaky_state = || async {
        let admin = app.get("/admin/secrets").await.json();
        admin["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "flaky")
            .unwrap()
            .clone()
    };
    let shown = wait_until_async(Duration::from_secs(3), || async {
        flaky_state().await["state"] == "error"
    })
    .await;
    assert!(shown, "{}", flaky_state().await);
    assert_eq!(flaky_state().await["reason"], "unreadable");
}

async fn a_transient_bad_read_never_replaces_the_good_value(backend: Backend) {
    // An in-place writer (not the atomic writer): truncate, then write the new value later.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-secret");
    std::fs::write(&file, "in-place-old").unwrap();
    let config = dir.path().join("vault.json");
    std::fs::write(&config, json!({"secret": {"plain": {"path": file.display().to_string(), "scope": ["Client/plain"]}}}).to_string()).unwrap();
    let app = TestApp::spawn_with(backend, {
        let config = config.clone();
        move |s| s.vault_config = Some(config)
    })
    .await;
    put_vault_client(&app, "plain", "plain", &["basic"]).await;
    app.allow_client("plain-allow", "plain").await;
    std::fs::write(&file, "").unwrap();
    // Inside the settle window the last good value is still served.
    assert_eq!(status_as(&app, "plain", "in-place-old").await, 200);
    assert_eq!(status_as(&app, "plain", "").await, 401);
    std::fs::write(&file, "in-place-new").unwrap();
    assert!(
        wait_until_async(Duration::from_secs(2), || async {
            status_as(&app, "plain", "in-place-new").await == 200
        })
        .await
    );
}

async fn one_trailing_newline_is_stripped_and_inner_newlines_refused_for_clients(backend: Backend) {
    let vault = Vault::new(&[
        ("lf", "echoed\n"),
        ("crlf", "windows\r\n"),
        ("inner", "two\nlines"),
    ]);
    vault.write_config(&json!({"secret": {
        "lf": {"path": vault.secret_path("lf"), "scope": ["Client"]},
        "crlf": {"path": vault.secret_path("crlf"), "scope": ["Client"]},
        "inner": {"path": vault.secret_path("inner"), "scope": ["Client"]}
    }}));
    let app = spawn_with_vault(backend, &vault).await;
    for name in ["lf", "crlf", "inner"] {
        put_vault_client(&app, name, name, &["basic"]).await;
    }
    app.put(
        "/fhir/AccessPolicy/all",
        &json!({"resourceType": "AccessPolicy", "id": "all", "engine": "allow"}),
    )
    .await;
    assert_eq!(status_as(&app, "lf", "echoed").await, 200);
    assert_eq!(status_as(&app, "lf", "echoed\n").await, 401);
    assert_eq!(status_as(&app, "crlf", "windows").await, 200);
    // A client secret must be printable ASCII (RFC 6749 appendix A): an inner newline makes it unusable.
    assert_eq!(status_as(&app, "inner", "two\nlines").await, 401);
    assert_eq!(status_as(&app, "inner", "two").await, 401);
}

async fn config_changes_apply_without_a_restart_and_a_broken_config_keeps_the_last_good(
    backend: Backend,
) {
    let vault = Vault::new(&[
        ("client-secret", TUTORIAL_SECRET),
        ("second", "second-value"),
        ("third", "third-value"),
    ]);
    vault.write_config(&vault.tutorial_config(json!(["Client/basic"])));
    let app = spawn_with_vault(backend, &vault).await;
    put_vault_client(&app, "basic", "client-secret", &["basic"]).await;
    app.put(
        "/fhir/AccessPolicy/all",
        &json!({"resourceType": "AccessPolicy", "id": "all", "engine": "allow"}),
    )
    .await;
    put_vault_client(&app, "late", "second", &["basic"])
        .await
        .assert_outcome(422, "not defined");

    // Add a secret.
    vault.write_config(&json!({"secret": {
        "client-secret": {"path": vault.secret_path("client-secret"), "scope": ["Client/basic"]},
        "second": {"path": vault.secret_path("second"), "scope": ["Client/late"]}}}));
    let added = wait_until_async(Duration::from_secs(3), || async {
        put_vault_client(&app, "late", "second", &["basic"])
            .await
            .status
            == 201
    })
    .await;
    assert!(added, "the new secret was never accepted");
    assert_eq!(status_as(&app, "late", "second-value").await, 200);

    // Change a path: the client follows the new file.
    vault.write_config(&json!({"secret": {
        "client-secret": {"path": vault.secret_path("client-secret"), "scope": ["Client/basic"]},
        "second": {"path": vault.secret_path("third"), "scope": ["Client/late"]}}}));
    assert!(
        wait_until_async(Duration::from_secs(3), || async {
            status_as(&app, "late", "third-value").await == 200
        })
        .await
    );

    // Break the JSON: the last good config stays in force and the error is visible.
    vault.write_raw_config("{\"secret\": {\"client-secret\": ");
    let reported = wait_until_async(Duration::from_secs(3), || async {
        !app.get("/admin/secrets").await.json()["config"]["lastError"].is_null()
    })
    .await;
    assert!(reported, "the failed reload is reported");
    assert_eq!(status_as(&app, "basic", TUTORIAL_SECRET).await, 200);
    assert_eq!(status_as(&app, "late", "third-value").await, 200);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "warn");
    let metrics = app.get("/metrics").await.text;
    assert!(metrics.contains("fhirbox_vault_config_reloads_total{result=\"failed\"}"));

    // A bad value: root sees it at /admin/secrets; the public readiness
    // probe says only that the reload failed, never the path or the value.
    vault.write_config(&json!({"secret": {"client-secret": {"path": "relative/leak-probe-7c1", "scope": ["Client/basic"]}}}));
    let detailed = wait_until_async(Duration::from_secs(3), || async {
        app.get("/admin/secrets")
            .await
            .text
            .contains("leak-probe-7c1")
    })
    .await;
    assert!(detailed, "root sees the detail");
    let ready = app.send(app.anon.get(app.url("/health/ready"))).await;
    assert_eq!(ready.json()["status"], "warn");
    let config_dir = vault
        .config_path()
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for leak in ["leak-probe-7c1", config_dir.as_str(), "client-secret"] {
        assert!(
            !ready.text.contains(leak),
            "readiness reveals {leak}: {}",
            ready.text
        );
    }

    // Fix it again: the error clears.
    vault.write_config(&vault.tutorial_config(json!(["Client/basic"])));
    let cleared = wait_until_async(Duration::from_secs(3), || async {
        app.get("/admin/secrets").await.json()["config"]["lastError"].is_null()
    })
    .await;
    assert!(cleared);
    assert!(
        wait_until_async(Duration::from_secs(3), || async {
            status_as(&app, "late", "third-value").await == 401
        })
        .await,
        "the secret removed from the config stops working"
    );
}

async fn parallel_requests_during_rotations_see_only_200_or_401(backend: Backend) {
    let (vault, app) = tutorial_app(backend, json!(["Client/basic"])).await;
    let values: Vec<String> = (0..8).map(|i| format!("concurrent-value-{i}")).collect();
    vault.rotate("client-secret", values[0].as_bytes());
    assert!(
        wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", &values[0]).await == 200
        })
        .await
    );
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, denied) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut workers = Vec::new();
    for w in 0..8 {
        let client = app.anon.clone();
        let url = app.url("/fhir/Patient?_count=1");
        let values = values.clone();
        let (stop, ok, denied) = (stop.clone(), ok.clone(), denied.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let value = &values[i % values.len()];
                i += 1;
                let status = client
                    .get(&url)
                    .basic_auth("basic", Some(value))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                match status {
                    200 => ok.fetch_add(1, Ordering::SeqCst),
                    401 => denied.fetch_add(1, Ordering::SeqCst),
                    other => panic!("status {other} during rotation"),
                };
            }
        }));
    }
    for value in values.iter().skip(1) {
        vault.rotate("client-secret", value.as_bytes());
        let took = wait_until_async(Duration::from_secs(2), || async {
            status_as(&app, "basic", value).await == 200
        })
        .await;
        assert!(took);
    }
    // Wrong values are throttled like any failed check (docs/security.md), so
    // the workers are slow to try the current one: keep them going until
    // both outcomes have been seen, within a deadline.
    let both = wait_until_async(Duration::from_secs(30), || async {
        ok.load(Ordering::SeqCst) > 0 && denied.load(Ordering::SeqCst) > 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, denied) = (ok.load(Ordering::SeqCst), denied.load(Ordering::SeqCst));
    assert!(both, "both outcomes occur: {ok} ok, {denied} denied");
}

async fn secret_values_appear_nowhere(backend: Backend) {
    let first = "leak-probe-Value-91f2c7";
    let second = "leak-probe-Value-rotated-55ab";
    let (vault, app) = tutorial_app(backend, json!(["Client/basic"])).await;
    vault.rotate("client-secret", first.as_bytes());
    assert!(
        wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", first).await == 200
        })
        .await
    );
    let mut bodies = Vec::new();
    for path in [
        "/fhir/Client/basic",
        "/fhir/Client/basic/_history",
        "/fhir/Client?_id=basic",
        "/fhir/_history",
        "/admin/secrets",
        "/health",
        "/health/ready",
    ] {
        bodies.push(app.get(path).await.text);
    }
    bodies.push(app.get("/metrics").await.text);
    bodies.push(app.get_as("/fhir/Patient", "basic", "wrong").await.text);
    bodies.push(
        app.send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("basic", Some(first))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
        .await
        .text,
    );
    vault.rotate("client-secret", second.as_bytes());
    assert!(
        wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", second).await == 200
        })
        .await
    );
    vault.remove("client-secret");
    assert!(
        wait_until_async(Duration::from_secs(4), || async {
            status_as(&app, "basic", second).await == 401
        })
        .await
    );
    bodies.push(app.get("/admin/secrets").await.text);
    let db = crate::helpers::database_bytes(&app);
    let logs = captured_logs();
    assert!(logs.contains("secret rotated"), "logs were captured");
    let b64 = base64::engine::general_purpose::STANDARD;
    for value in [first, second] {
        let basic = b64.encode(format!("basic:{value}"));
        for form in [value.to_owned(), b64.encode(value), basic] {
            for body in &bodies {
                assert!(!body.contains(&form), "{form:?} in a response: {body}");
            }
            assert!(!logs.contains(&form), "{form:?} in the logs");
            assert!(
                !db.windows(form.len()).any(|w| w == form.as_bytes()),
                "{form:?} in the database"
            );
        }
    }
}

/// A way to break a secret file.
type Fault<'a> = Box<dyn Fn() + 'a>;

backend_tests!(admin_secrets_is_for_root_only);

async fn admin_secrets_is_for_root_only(app: TestApp) {
    app.put_client("plain", "plain-secret", &["basic"]).await;
    app.put(
        "/fhir/AccessPolicy/all",
        &json!({"resourceType": "AccessPolicy", "id": "all", "engine": "allow"}),
    )
    .await;
    app.get_as("/admin/secrets", "plain", "plain-secret")
        .await
        .assert_outcome(403, "only the root client");
    assert_eq!(
        app.send(app.anon.get(app.url("/admin/secrets")))
            .await
            .status,
        401
    );
    assert_eq!(app.get("/admin/secrets").await.status, 200);
}

#[tokio::test]
async fn admin_secrets_lists_names_paths_scopes_and_times() {
    let (vault, app) = tutorial_app(Backend::Sqlite, json!(["Client/basic"])).await;
    vault.rotate("client-secret", b"admin-view-rotated");
    assert!(
        wait_until_async(Duration::from_secs(1), || async {
            status_as(&app, "basic", "admin-view-rotated").await == 200
        })
        .await
    );
    let r = app.get("/admin/secrets").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["enabled"], true);
    assert_eq!(
        v["config"]["path"],
        vault.config_path().display().to_string()
    );
    let s = &v["secrets"][0];
    assert_eq!(s["name"], "client-secret");
    assert_eq!(s["path"], vault.secret_path("client-secret"));
    assert_eq!(s["scope"], json!(["Client/basic"]));
    assert_eq!(s["state"], "ok");
    assert_eq!(s["sizeBytes"], "admin-view-rotated".len());
    assert!(s["lastLoaded"].as_str().unwrap().ends_with('Z'));
    assert!(s["lastRotated"].as_str().unwrap().ends_with('Z'));
    assert!(!r.text.contains("admin-view-rotated"));
}

#[tokio::test]
async fn an_invalid_vault_config_stops_the_start() {
    let vault = Vault::new(&[("client-secret", TUTORIAL_SECRET)]);
    vault.write_config(
        &json!({"secret": {"client-secret": {"path": "relative/path", "scope": ["Patient"]}}}),
    );
    let mut settings =
        fhirbox_server::Settings::for_database(fhirbox_server::settings::DatabaseUrl::new(
            format!("sqlite:{}/db.sqlite", vault.dir.path().display()),
        ));
    settings.vault_config = Some(vault.config_path());
    let err = fhirbox_server::build_app(settings)
        .await
        .err()
        .expect("start must fail")
        .to_string();
    assert!(err.starts_with("BOX_VAULT_CONFIG: "), "{err}");
    assert!(
        err.contains("client-secret") && err.contains("/secret/client-secret/path"),
        "{err}"
    );
}

#[test]
fn vault_check_reports_states_and_exit_codes_without_values() {
    let vault = Vault::new(&[("client-secret", TUTORIAL_SECRET)]);
    vault.write_config(&vault.tutorial_config(json!(["Client/basic"])));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirbox"))
            .args(["vault", "check", "--config"])
            .arg(vault.config_path())
            .args(args)
            .env_remove("BOX_VAULT_CONFIG")
            .output()
            .unwrap()
    };
    let good = run(&[]);
    let text = String::from_utf8_lossy(&good.stdout).into_owned();
    assert_eq!(good.status.code(), Some(0), "{text}");
    assert!(
        text.contains("client-secret") && text.contains("Client/basic") && text.contains(" ok"),
        "{text}"
    );
    assert!(!text.contains(TUTORIAL_SECRET));
    let json_out: Value = serde_json::from_slice(&run(&["--json"]).stdout).unwrap();
    assert_eq!(json_out["ok"], true);
    assert_eq!(json_out["secrets"][0]["sizeBytes"], TUTORIAL_SECRET.len());

    vault.remove("client-secret");
    let missing = run(&[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stdout).contains("missing"));

    vault.write_raw_config("{\"secret\": {\"x\": {\"path\": \"rel\", \"scope\": []}}}");
    let broken = run(&[]);
    assert_eq!(broken.status.code(), Some(1));
    let err = String::from_utf8_lossy(&broken.stderr).into_owned();
    assert!(
        err.contains("not absolute") && err.contains("scope is empty"),
        "{err}"
    );

    let no_config = std::process::Command::new(env!("CARGO_BIN_EXE_fhirbox"))
        .args(["vault", "check"])
        .env_remove("BOX_VAULT_CONFIG")
        .env_remove("AIDBOX_VAULT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(no_config.status.code(), Some(2));
}

#[test]
fn vault_check_counts_failures_exactly_and_explains_a_refused_path() {
    let vault = Vault::new(&[
        ("good-1", "first-good-value"),
        ("good-2", "second-good-value"),
        ("tiny", "x"),
    ]);
    let mut secrets = serde_json::Map::new();
    for name in ["good-1", "good-2", "tiny"] {
        secrets.insert(
            name.into(),
            json!({"path": vault.secret_path(name), "scope": ["Client"]}),
        );
    }
    for n in 1..=4 {
        let name = format!("missing-{n}");
        secrets.insert(
            name.clone(),
            json!({"path": vault.secret_path(&name), "scope": ["Client"]}),
        );
    }
    vault.write_config(&json!({ "secret": secrets }));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirbox"))
            .args(["vault", "check", "--config"])
            .arg(vault.config_path())
            .args(args)
            // The child's own environment holds a probe that must never be printed.
            .env("FHIRBOX_ENVIRON_PROBE", "LEAKPROBE-environ-4d9b1")
            .env_remove("BOX_VAULT_CONFIG")
            .output()
            .unwrap()
    };

    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED: 4 of 7 secret(s) failed in ") && text.contains(", 1 with a warning"),
        "{text}"
    );
    assert!(text.contains("ok (warning: value is 1 byte long"), "{text}");
    let report: Value = serde_json::from_slice(&run(&["--json"]).stdout).unwrap();
    assert_eq!(
        (&report["total"], &report["failed"], &report["warnings"]),
        (&json!(7), &json!(4), &json!(1))
    );
    let failed_rows = report["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"].as_str().unwrap().starts_with("error"))
        .count();
    assert_eq!(failed_rows, 4);

    // /proc/self/environ holds the server's own environment: refused, with the reason.
    vault.write_config(&json!({"secret": {
        "env": {"path": "/proc/self/environ", "scope": ["Client"]},
        "good-1": {"path": vault.secret_path("good-1"), "scope": ["Client"]}}}));
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "secret \"env\": /secret/env/path: path \"/proc/self/environ\" is under /proc; \
             secrets are never read from /proc, /sys or /dev"
        ),
        "{err}"
    );
    assert!(err.contains("FAILED: 1 problem(s) in 1 secret(s)"), "{err}");
    let out = run(&["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["secret"], "env");
    assert_eq!(report["problems"][0]["location"], "/secret/env/path");
    for output in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(output).contains("LEAKPROBE-environ"));
    }
}
