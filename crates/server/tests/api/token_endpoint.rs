//! `POST /auth/token` limits: a small body cap answered as an OAuth error, and
//! credentials in a Basic header checked before the body is read.

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::backend_tests;
use crate::helpers::TestApp;
use crate::raw_http::{connect, read_response};

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

backend_tests!(
    token_bodies_over_8_kib_are_refused_with_an_oauth_error,
    wrong_basic_credentials_are_refused_before_the_body_is_read
);

async fn token_bodies_over_8_kib_are_refused_with_an_oauth_error(app: TestApp) {
    app.put_client("svc", "svc-secret", &["client_credentials"])
        .await;
    let padded = json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret", "pad": "x".repeat(16 * 1024)});
    // Declared by Content-Length, with credentials in the header or in the body.
    for req in [
        app.anon
            .post(app.url("/auth/token"))
            .basic_auth("svc", Some("svc-secret"))
            .json(&padded),
        app.anon.post(app.url("/auth/token")).json(&padded),
    ] {
        let r = app.send(req).await;
        assert_eq!(r.status, 413, "{}", r.text);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["error"], "invalid_request");
    }
    // Chunked, with no length declared: cut off at the cap as well.
    let mut conn = connect(&app).await;
    let chunk = "x".repeat(4096);
    let mut request = "POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    for _ in 0..3 {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_request");
    // Ordinary token requests, in every encoding, still work.
    let form = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("svc", Some("svc-secret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
        .await;
    assert_eq!(form.status, 200, "{}", form.text);
    let in_body = app.send(app.anon.post(app.url("/auth/token"))
        .json(&json!({"grant_type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret"}))).await;
    assert_eq!(in_body.status, 200, "{}", in_body.text);
    assert!(in_body.json()["access_token"].is_string());
}

async fn wrong_basic_credentials_are_refused_before_the_body_is_read(app: TestApp) {
    app.put_client("svc", "svc-secret", &["client_credentials"])
        .await;
    // A declared megabyte that never comes: the answer does not wait for it.
    let mut conn = connect(&app).await;
    let head = format!(
        "POST /auth/token HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        basic("svc", "wrong")
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_client");
    // An unparsable body with wrong credentials is a credentials failure, not a parse error.
    let r = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("svc", Some("wrong"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
    // With the right credentials, the body is read and checked as before.
    let r = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth("svc", Some("svc-secret"))
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"], "invalid_request");
}
