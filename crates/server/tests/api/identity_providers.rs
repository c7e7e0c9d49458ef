//! IdentityProvider resources are checked on write (docs/sign-in.md), and
//! their literal keys are never shown.

use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::TestApp;

/// A fresh RSA private key (PKCS#8 PEM) and a self-signed certificate for it, from openssl.
pub fn key_and_certificate() -> (String, String) {
    key_and_certificate_of(&["-newkey", "rsa:2048"])
}

/// The same for a key openssl makes with `newkey`.
fn key_and_certificate_of(newkey: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509"])
        .args(newkey)
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=fhirbox-test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(cert).unwrap(),
    )
}

/// The same key in openssl's traditional form: PKCS#1 for RSA, SEC1 for EC.
fn traditional(key: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(["pkey", "-traditional"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

backend_tests!(identity_providers_are_checked_on_write_and_keys_never_shown);

async fn identity_providers_are_checked_on_write_and_keys_never_shown(app: TestApp) {
    let (key, certificate) = key_and_certificate();
    let (other_key, _) = key_and_certificate();
    let (ec_key, ec_certificate) =
        key_and_certificate_of(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    // A line of the key's base64: what must never be echoed.
    let key_line = key.lines().nth(1).unwrap().to_owned();
    for (client, needle) in [
        (json!({"secret": "s3cret-value"}), "client.id"),
        (json!({"id": "fhirbox"}), "needs client.secret"),
        (
            json!({"id": "fhirbox", "auth-method": "asymmetric", "secret": "s3cret-value"}),
            "needs client.private-key",
        ),
        (
            json!({"id": "fhirbox", "auth-method": "asymmetric", "private-key": certificate}),
            "must be a PEM private key",
        ),
        (
            json!({"id": "fhirbox", "auth-method": "asymmetric", "private-key": key, "certificate": key}),
            "certificates only",
        ),
        (
            json!({"id": "fhirbox", "auth-method": "asymmetric", "private-key": other_key, "certificate": certificate}),
            "not the key of client.certificate",
        ),
        (
            json!({"id": "fhirbox", "auth-method": "asymmetric", "private-key": key, "certificate": ec_certificate}),
            "not the key of client.certificate",
        ),
    ] {
        let body = json!({"resourceType": "IdentityProvider", "id": "bad", "type": "OIDC", "client": client});
        let r = app.put("/fhir/IdentityProvider/bad", &body).await;
        r.assert_outcome(422, needle);
        assert!(
            !r.text.contains("s3cret-value") && !r.text.contains(&key_line),
            "{}",
            r.text
        );
    }
    let good = json!({"resourceType": "IdentityProvider", "id": "azure", "type": "OIDC", "system": "https://login.example/tenant",
        "authorize_endpoint": "https://login.example/tenant/oauth2/v2.0/authorize",
        "token_endpoint": "https://login.example/tenant/oauth2/v2.0/token",
        "client": {"id": "fhirbox", "auth-method": "asymmetric", "private-key": key, "certificate": certificate,
                   "redirect_uri": "https://fhirbox.example/auth/callback/azure"}});
    let r = app.put("/fhir/IdentityProvider/azure", &good).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let read = app.get("/fhir/IdentityProvider/azure").await;
    assert!(
        !read.text.contains(&key_line) && !r.text.contains(&key_line),
        "{}",
        read.text
    );
    let shown: Value = read.json();
    assert_eq!(
        shown["client"]["_private-key"]["extension"][0]["valueCode"],
        "masked"
    );
    // The RSA key in PKCS#1 form matches as well; a SEC1 EC key is refused
    // with the conversion to make.
    let pkcs1 = traditional(&key);
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"), "{pkcs1}");
    let mut rsa1 = good.clone();
    rsa1["id"] = json!("azure-pkcs1");
    rsa1["client"]["private-key"] = json!(pkcs1);
    let r = app.put("/fhir/IdentityProvider/azure-pkcs1", &rsa1).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut sec1 = good.clone();
    sec1["id"] = json!("azure-sec1");
    sec1["client"]["private-key"] = json!(traditional(&ec_key));
    sec1["client"]["certificate"] = json!(ec_certificate);
    app.put("/fhir/IdentityProvider/azure-sec1", &sec1)
        .await
        .assert_outcome(422, "PKCS#8");
    // An EC pair is fine too.
    let mut ec = good.clone();
    ec["id"] = json!("azure-ec");
    ec["client"]["private-key"] = json!(ec_key);
    ec["client"]["certificate"] = json!(ec_certificate);
    let r = app.put("/fhir/IdentityProvider/azure-ec", &ec).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The masked view sent back keeps the stored key.
    let again = app.put("/fhir/IdentityProvider/azure", &shown).await;
    assert_eq!(again.status, 200, "{}", again.text);
}
