//! Authentication (root, Basic, client_credentials tokens), access policies,
//! cache invalidation, the init bundle and the secret scan of the database.

use std::time::Duration;

use base64::Engine;
use fhirbox_test_support::wait_until_async;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{Backend, Resp, TestApp, ROOT_SECRET};

const TUTORIAL_SECRET: &str = "super-secret-value";

async fn token(app: &TestApp, id: &str, secret: &str) -> Resp {
    app.send(
        app.anon
            .post(app.url("/auth/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials"),
    )
    .await
}

async fn get_bearer(app: &TestApp, path: &str, token: &str) -> Resp {
    app.send(app.anon.get(app.url(path)).bearer_auth(token))
        .await
}

fn assert_unauthorized(r: &Resp) {
    r.assert_outcome(401, "authentication failed");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"fhirbox\""),
        "{:?}",
        r.headers
    );
}

backend_tests!(
    tutorial_basic_client_gets_200_and_a_wrong_password_401,
    only_metadata_health_and_token_are_public,
    every_authentication_failure_is_the_same_401,
    root_may_do_everything_with_basic_or_a_token,
    matcho_policy_allows_reading_patients_only,
    a_client_without_any_policy_is_forbidden,
    invalid_access_policies_are_refused_on_write,
    client_credentials_tokens_are_issued_used_and_refused_when_bad,
    tokens_expire,
    changes_to_clients_and_policies_apply_at_once,
    a_change_made_through_another_instance_arrives_within_seconds,
    literal_secrets_are_stored_only_as_hashes
);

async fn tutorial_basic_client_gets_200_and_a_wrong_password_401(app: TestApp) {
    app.put_client("basic", TUTORIAL_SECRET, &["basic"]).await;
    app.allow_client("basic-allow", "basic").await;
    let ok = app.get_as("/fhir/Patient", "basic", TUTORIAL_SECRET).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["resourceType"], "Bundle");
    assert_unauthorized(&app.get_as("/fhir/Patient", "basic", "wrong-password").await);
}

async fn only_metadata_health_and_token_are_public(app: TestApp) {
    assert_unauthorized(&app.send(app.anon.get(app.url("/fhir/Patient"))).await);
    assert_unauthorized(
        &app.send(
            app.anon
                .post(app.url("/fhir"))
                .header("content-type", "application/fhir+json")
                .body("{}"),
        )
        .await,
    );
    assert_unauthorized(&app.send(app.anon.get(app.url("/fhir/_history"))).await);
    // Metrics name secrets and clients' failure reasons: credentials required.
    assert_unauthorized(&app.send(app.anon.get(app.url("/metrics"))).await);
    for public in ["/fhir/metadata", "/health", "/health/ready"] {
        assert_eq!(
            app.send(app.anon.get(app.url(public))).await.status,
            200,
            "{public}"
        );
    }
    // A scraper that accepts only the Prometheus text format still gets its metrics.
    let scrape = app
        .send(
            app.client
                .get(app.url("/metrics"))
                .header("accept", "text/plain;version=0.0.4"),
        )
        .await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.text.contains("fhirbox_http_requests_total"));
}

async fn every_authentication_failure_is_the_same_401(app: TestApp) {
    app.put_client("basic", TUTORIAL_SECRET, &["basic"]).await;
    app.put_client("tokens-only", TUTORIAL_SECRET, &["client_credentials"])
        .await;
    app.put("/fhir/Client/off", &json!({"resourceType": "Client", "id": "off", "secret": TUTORIAL_SECRET, "grant_types": ["basic"], "active": false})).await;
    app.put(
        "/fhir/Client/nosecret",
        &json!({"resourceType": "Client", "id": "nosecret", "grant_types": ["basic"]}),
    )
    .await;
    app.allow_client("p1", "basic").await;
    let cases = [
        app.get_as("/fhir/Patient", "nobody", TUTORIAL_SECRET).await,
        app.get_as("/fhir/Patient", "basic", "wrong").await,
        app.get_as("/fhir/Patient", "off", TUTORIAL_SECRET).await,
        app.get_as("/fhir/Patient", "tokens-only", TUTORIAL_SECRET)
            .await,
        app.get_as("/fhir/Patient", "nosecret", "").await,
        app.get_as("/fhir/Patient", "root", "not-root-secret").await,
        app.send(
            app.anon
                .get(app.url("/fhir/Patient"))
                .header("authorization", "Basic !!!"),
        )
        .await,
        app.send(
            app.anon
                .get(app.url("/fhir/Patient"))
                .header("authorization", "Digest x"),
        )
        .await,
    ];
    let first_body = cases[0].text.clone();
    for case in &cases {
        assert_unauthorized(case);
        assert_eq!(
            case.text, first_body,
            "a failure must not reveal which part was wrong"
        );
    }
    // The scheme is case-insensitive.
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("basic:{TUTORIAL_SECRET}"));
    let lower = app
        .send(
            app.anon
                .get(app.url("/fhir/Patient"))
                .header("authorization", format!("basic {encoded}")),
        )
        .await;
    assert_eq!(lower.status, 200);
    let metrics = app.get("/metrics").await.text;
    for reason in [
        "unknown_client",
        "wrong_secret",
        "inactive_client",
        "grant_not_allowed",
        "no_secret",
        "malformed_header",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "metrics lack {reason}"
        );
    }
    assert!(!metrics.contains(TUTORIAL_SECRET));
}

async fn root_may_do_everything_with_basic_or_a_token(app: TestApp) {
    assert_eq!(
        app.get_as("/fhir/Patient", "root", ROOT_SECRET)
            .await
            .status,
        200
    );
    let t = token(&app, "root", ROOT_SECRET).await;
    assert_eq!(t.status, 200, "{}", t.text);
    let access = t.json()["access_token"].as_str().unwrap().to_owned();
    let created = app
        .send(
            app.fhir(
                app.anon.post(app.url("/fhir/Patient")),
                &json!({"resourceType": "Patient"}),
            )
            .bearer_auth(&access),
        )
        .await;
    assert_eq!(created.status, 201);
}

async fn matcho_policy_allows_reading_patients_only(app: TestApp) {
    app.put_client("reader", "reader-secret", &["basic"]).await;
    let policy = app.put("/fhir/AccessPolicy/read-patients", &json!({
        "resourceType": "AccessPolicy", "id": "read-patients", "engine": "matcho",
        "link": [{"resourceType": "Client", "id": "reader"}],
        "matcho": {"request-method": {"$enum": ["get"]}, "params": {"resource/type": "Patient"}, "uri": "#^/fhir/Patient"}
    })).await;
    assert_eq!(policy.status, 201, "{}", policy.text);
    app.put_patient("p1", "Read").await;
    assert_eq!(
        app.get_as("/fhir/Patient/p1", "reader", "reader-secret")
            .await
            .status,
        200
    );
    assert_eq!(
        app.get_as("/fhir/Patient?_count=1", "reader", "reader-secret")
            .await
            .status,
        200
    );
    let post = app
        .send(
            app.fhir(
                app.anon.post(app.url("/fhir/Patient")),
                &json!({"resourceType": "Patient"}),
            )
            .basic_auth("reader", Some("reader-secret")),
        )
        .await;
    post.assert_outcome(403, "no access policy allows");
    assert_eq!(post.json()["issue"][0]["code"], "forbidden");
    app.get_as("/fhir/Observation", "reader", "reader-secret")
        .await
        .assert_outcome(403, "no access policy");
    app.get_as("/fhir/Client/reader", "reader", "reader-secret")
        .await
        .assert_outcome(403, "no access policy");
}

async fn a_client_without_any_policy_is_forbidden(app: TestApp) {
    app.put_client("lonely", "lonely-secret", &["basic"]).await;
    app.get_as("/fhir/Patient", "lonely", "lonely-secret")
        .await
        .assert_outcome(403, "no access policy");
    // A policy without links applies to every authenticated client.
    app.put(
        "/fhir/AccessPolicy/everyone",
        &json!({"resourceType": "AccessPolicy", "id": "everyone", "engine": "allow"}),
    )
    .await;
    assert_eq!(
        app.get_as("/fhir/Patient", "lonely", "lonely-secret")
            .await
            .status,
        200
    );
}

async fn invalid_access_policies_are_refused_on_write(app: TestApp) {
    app.put(
        "/fhir/AccessPolicy/x",
        &json!({"resourceType": "AccessPolicy", "id": "x", "engine": "sql"}),
    )
    .await
    .assert_outcome(422, "engine \"sql\" is not supported");
    app.put("/fhir/AccessPolicy/x", &json!({"resourceType": "AccessPolicy", "id": "x", "engine": "matcho", "matcho": {"uri": "#(unclosed"}}))
        .await
        .assert_outcome(422, "not a valid regular expression");
    app.put(
        "/fhir/AccessPolicy/x",
        &json!({"resourceType": "AccessPolicy", "id": "x", "engine": "matcho"}),
    )
    .await
    .assert_outcome(422, "needs a \"matcho\" pattern");
    app.get("/fhir/AccessPolicy/x")
        .await
        .assert_outcome(404, "does not exist");
    // A grant list that is not a list breaks the Client's structure (400).
    let single = app
        .put(
            "/fhir/Client/c",
            &json!({"resourceType": "Client", "id": "c", "grant_types": "basic"}),
        )
        .await;
    single.assert_outcome(400, "must be a list");
    assert_eq!(
        single.json()["issue"][0]["expression"][0],
        "Client.grant_types"
    );
}

async fn client_credentials_tokens_are_issued_used_and_refused_when_bad(app: TestApp) {
    app.put("/fhir/Client/svc", &json!({"resourceType": "Client", "id": "svc", "secret": "svc-secret",
        "grant_types": ["client_credentials"], "auth": {"client_credentials": {"access_token_expiration": 120}}})).await;
    app.allow_client("svc-allow", "svc").await;
    let t = token(&app, "svc", "svc-secret").await;
    assert_eq!(t.status, 200, "{}", t.text);
    assert_eq!(t.header("cache-control"), Some("no-store"));
    let body = t.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 120);
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(get_bearer(&app, "/fhir/Patient", &access).await.status, 200);

    // The same grant with credentials in a JSON body or a form body.
    let json_body = app.send(app.anon.post(app.url("/auth/token")).json(&json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret"}))).await;
    assert_eq!(json_body.status, 200, "{}", json_body.text);
    let form = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&client_id=svc&client_secret=svc-secret"),
        )
        .await;
    assert_eq!(form.status, 200, "{}", form.text);

    // RFC 6749 §5.2 errors.
    let wrong = token(&app, "svc", "nope").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"], "invalid_client");
    assert_eq!(
        wrong.header("www-authenticate"),
        Some("Basic realm=\"fhirbox\"")
    );
    let grant = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("svc", Some("svc-secret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=password"),
        )
        .await;
    assert_eq!(grant.status, 400);
    assert_eq!(grant.json()["error"], "unsupported_grant_type");
    let missing = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("client_id=svc"),
        )
        .await;
    assert_eq!(missing.json()["error"], "invalid_request");
    app.put_client("basic-only", "b-secret", &["basic"]).await;
    let not_allowed = token(&app, "basic-only", "b-secret").await;
    assert_eq!(not_allowed.status, 400);
    assert_eq!(not_allowed.json()["error"], "unauthorized_client");

    // Tampered, foreign-algorithm and garbage tokens.
    let parts: Vec<&str> = access.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let forged =
        b64.encode(r#"{"iss":"fhirbox","sub":"root","iat":0,"exp":99999999999,"jti":"x"}"#);
    let none = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    for bad in [
        format!("{}.{}.{}", parts[0], forged, parts[2]),
        format!("{none}.{forged}."),
        format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"RS256"}"#),
            parts[1],
            parts[2]
        ),
        "garbage".to_owned(),
    ] {
        let r = get_bearer(&app, "/fhir/Patient", &bad).await;
        r.assert_outcome(401, "authentication failed");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"fhirbox\", error=\"invalid_token\"")
        );
    }
}

async fn tokens_expire(app: TestApp) {
    app.put("/fhir/Client/short", &json!({"resourceType": "Client", "id": "short", "secret": "short-secret",
        "grant_types": ["client_credentials"], "auth": {"client_credentials": {"access_token_expiration": 1}}})).await;
    app.allow_client("short-allow", "short").await;
    let access = token(&app, "short", "short-secret").await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Valid at first (unless the second already turned), refused once it expires.
    let expired = wait_until_async(Duration::from_secs(5), || async {
        get_bearer(&app, "/fhir/Patient", &access).await.status == 401
    })
    .await;
    assert!(expired, "the token never expired");
}

async fn changes_to_clients_and_policies_apply_at_once(app: TestApp) {
    app.put_client("basic", "first-secret", &["basic"]).await;
    app.allow_client("basic-allow", "basic").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "basic", "first-secret")
            .await
            .status,
        200
    );
    app.put_client("basic", "second-secret", &["basic", "client_credentials"])
        .await;
    assert_unauthorized(&app.get_as("/fhir/Patient", "basic", "first-secret").await);
    assert_eq!(
        app.get_as("/fhir/Patient", "basic", "second-secret")
            .await
            .status,
        200
    );
    let access = token(&app, "basic", "second-secret").await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Deactivation stops Basic and tokens alike.
    let off = app
        .patch(
            "/fhir/Client/basic",
            &json!([{"op": "add", "path": "/active", "value": false}]),
        )
        .await;
    assert_eq!(off.status, 200, "{}", off.text);
    assert_unauthorized(&app.get_as("/fhir/Patient", "basic", "second-secret").await);
    get_bearer(&app, "/fhir/Patient", &access)
        .await
        .assert_outcome(401, "authentication failed");
    app.patch(
        "/fhir/Client/basic",
        &json!([{"op": "replace", "path": "/active", "value": true}]),
    )
    .await;
    assert_eq!(
        app.get_as("/fhir/Patient", "basic", "second-secret")
            .await
            .status,
        200,
        "the patch kept the hash"
    );
    // Removing the policy takes access away.
    assert_eq!(
        app.delete("/fhir/AccessPolicy/basic-allow").await.status,
        204
    );
    app.get_as("/fhir/Patient", "basic", "second-secret")
        .await
        .assert_outcome(403, "no access policy");
    // Deleting the client forgets it.
    app.allow_client("basic-allow", "basic").await;
    app.delete("/fhir/Client/basic").await;
    assert_unauthorized(&app.get_as("/fhir/Patient", "basic", "second-secret").await);
}

async fn a_change_made_through_another_instance_arrives_within_seconds(app: TestApp) {
    let other = app
        .sibling(|s| s.auth_recheck = Duration::from_millis(100))
        .await;
    app.put_client("shared", "one", &["basic"]).await;
    app.allow_client("shared-allow", "shared").await;
    let seen = wait_until_async(Duration::from_secs(5), || async {
        other.get_as("/fhir/Patient", "shared", "one").await.status == 200
    })
    .await;
    assert!(seen, "the other instance never saw the new client");
    app.put_client("shared", "two", &["basic"]).await;
    let rotated = wait_until_async(Duration::from_secs(5), || async {
        other.get_as("/fhir/Patient", "shared", "one").await.status == 401
    })
    .await;
    assert!(rotated, "the other instance kept accepting the old secret");
    assert_eq!(
        other.get_as("/fhir/Patient", "shared", "two").await.status,
        200
    );
}

async fn literal_secrets_are_stored_only_as_hashes(app: TestApp) {
    let marker = "plain-Secret-Value-7f3a9c";
    let created = app.put_client("hashed", marker, &["basic"]).await;
    app.put_client("hashed", &format!("{marker}-2"), &["basic"])
        .await;
    let read = app.get("/fhir/Client/hashed").await;
    let history = app.get("/fhir/Client/hashed/_history").await;
    let search = app.get("/fhir/Client?_id=hashed").await;
    for r in [&created, &read, &history, &search] {
        assert!(!r.text.contains(marker), "the secret leaked: {}", r.text);
        assert!(!r.text.contains("argon2"), "the hash leaked: {}", r.text);
    }
    let body: Value = read.json();
    assert!(body.get("secret").is_none());
    assert_eq!(body["_secret"]["extension"][0]["valueCode"], "masked");
    assert_eq!(body["_secret"]["extension"].as_array().unwrap().len(), 1);
    // GET, change a field, PUT back: the stored hash stays and the client still authenticates.
    let mut edited = body.clone();
    edited["grant_types"] = json!(["basic", "client_credentials"]);
    assert_eq!(app.put("/fhir/Client/hashed", &edited).await.status, 200);
    app.allow_client("hashed-allow", "hashed").await;
    assert_eq!(
        app.get_as("/fhir/Patient", "hashed", &format!("{marker}-2"))
            .await
            .status,
        200
    );
    assert_no_plaintext_in_database(&app, marker).await;
}

/// Scans what the database holds on disk for `needle` and its base64 form.
async fn assert_no_plaintext_in_database(app: &TestApp, needle: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(needle);
    let haystack = crate::helpers::database_bytes(app);
    for form in [needle, encoded.as_str()] {
        assert!(
            !haystack.windows(form.len()).any(|w| w == form.as_bytes()),
            "{form:?} found in the database"
        );
    }
}

mod init_bundle {
    use super::*;
    use fhirbox_server::settings::Settings;

    fn write_bundle(bundle: &Value) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("fhirbox-init-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, bundle.to_string()).unwrap();
        path
    }

    fn tutorial_bundle(kind: &str) -> Value {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": {"resourceType": "Client", "id": "basic", "secret": TUTORIAL_SECRET, "grant_types": ["basic"]},
             "request": {"method": "PUT", "url": "Client/basic"}},
            {"resource": {"resourceType": "AccessPolicy", "id": "basic-allow", "engine": "allow", "link": [{"reference": "Client/basic"}]},
             "request": {"method": "PUT", "url": "AccessPolicy/basic-allow"}}
        ]})
    }

    async fn build(path: std::path::PathBuf) -> Result<fhirbox_server::App, String> {
        let dir = std::env::temp_dir().join(format!("fhirbox-init-db-{}", uuid::Uuid::new_v4()));
        let mut settings = Settings::for_database(fhirbox_server::settings::DatabaseUrl::new(
            format!("sqlite:{}/db", dir.display()),
        ));
        settings.init_bundle = Some(path);
        let result = fhirbox_server::build_app(settings)
            .await
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(dir);
        result
    }

    /// Starts a server whose init bundle is `bundle` and checks that the
    /// tutorial client works as soon as the port is open.
    async fn started_with(bundle: &Value) -> TestApp {
        let path = write_bundle(bundle);
        let app =
            TestApp::spawn_with(Backend::Sqlite, |s| s.init_bundle = Some(path.clone())).await;
        std::fs::remove_file(path).unwrap();
        assert_eq!(
            app.get_as("/fhir/Patient", "basic", TUTORIAL_SECRET)
                .await
                .status,
            200
        );
        app
    }

    #[tokio::test]
    async fn a_transaction_creates_clients_before_the_port_opens() {
        started_with(&tutorial_bundle("transaction")).await;
    }

    #[tokio::test]
    async fn a_failing_transaction_or_a_bad_file_stops_the_start() {
        let mut failing = tutorial_bundle("transaction");
        failing["entry"][1]["resource"]["engine"] = json!("nonsense");
        let path = write_bundle(&failing);
        let err = build(path.clone()).await.err().expect("start must fail");
        assert!(
            err.contains("BOX_INIT_BUNDLE") && err.contains("transaction was not applied"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();

        let err = build("/nonexistent/init.json".into())
            .await
            .err()
            .expect("start must fail");
        assert!(err.contains("cannot be read"), "{err}");
        let garbage =
            std::env::temp_dir().join(format!("fhirbox-init-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&garbage, "{not json").unwrap();
        let err = build(garbage.clone()).await.err().expect("start must fail");
        assert!(err.contains("not valid JSON"), "{err}");
        std::fs::remove_file(garbage).unwrap();
    }

    #[tokio::test]
    async fn a_batch_logs_failed_entries_and_starts() {
        let mut batch = tutorial_bundle("batch");
        batch["entry"].as_array_mut().unwrap().push(
            json!({"resource": {"resourceType": "AccessPolicy", "id": "bad", "engine": "nonsense"},
            "request": {"method": "PUT", "url": "AccessPolicy/bad"}}),
        );
        let app = started_with(&batch).await;
        app.get("/fhir/AccessPolicy/bad")
            .await
            .assert_outcome(404, "does not exist");
    }
}
