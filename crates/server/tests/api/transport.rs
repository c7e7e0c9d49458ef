//! The HTTP transport over real TCP: header, body and keep-alive timeouts, the
//! connection cap, request-head size limits and graceful shutdown. These are
//! properties of the listener, not of storage, so they run on SQLite only.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Backend, TestApp};
use crate::raw_http::{closed_after, connect, read_response, root_basic, DEADLINE};

async fn app_with(adjust: impl FnOnce(&mut fhirbox_server::Settings)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, adjust).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_is_cut_off_after_the_header_timeout() {
    let app = app_with(|s| {
        s.connections.header_read_timeout = Duration::from_millis(300);
        s.connections.keep_alive_timeout = Duration::from_secs(30);
    })
    .await;
    // A head that never ends (the slowloris pattern).
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let waited = closed_after(&mut slow).await;
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    // A connection that sends nothing at all is cut off the same way.
    let mut silent = connect(&app).await;
    closed_after(&mut silent).await;
    // A normal request is unaffected.
    assert_eq!(app.send(app.anon.get(app.url("/health"))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = app_with(|s| {
        s.connections.keep_alive_timeout = Duration::from_millis(300);
        s.connections.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut conn = connect(&app).await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn).await.status, 200);
    // Requests within the idle timeout reuse the connection.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn).await.status, 200);
    // Then it is closed well before the (long) header timeout.
    let waited = closed_after(&mut conn).await;
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_and_the_connection_is_closed() {
    let app = app_with(|s| s.connections.body_read_timeout = Duration::from_millis(300)).await;
    let mut conn = connect(&app).await;
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\"",
        root_basic()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!(r.status, 408, "{}", r.body);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert!(r.json()["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("BOX_BODY_READ_TIMEOUT_MS"));
    closed_after(&mut conn).await;
    // On the token endpoint the same refusal is an OAuth error.
    let mut conn = connect(&app).await;
    conn.write_all(b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=")
        .await
        .unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!(r.status, 408);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(r.json()["error"], "invalid_request");
    // A body that arrives in time is fine.
    let created = app
        .post(
            "/fhir/Patient",
            &serde_json::json!({"resourceType": "Patient"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_new_connections_wait_until_one_closes() {
    let app = app_with(|s| {
        s.connections.max_connections = 2;
        s.connections.header_read_timeout = Duration::from_secs(30);
        s.connections.keep_alive_timeout = Duration::from_secs(30);
    })
    .await;
    // Two keep-alive connections, each proven accepted by a served request.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = connect(&app).await;
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut conn).await.status, 200);
        held.push(conn);
    }
    // A third connection is not served while both are open...
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "the third connection was served over the cap"
    );
    // ...and is served as soon as one of them closes.
    drop(held.pop());
    let r = read_response(&mut third).await;
    assert_eq!(r.status, 200);
    // The remaining connection still works.
    let kept = held.first_mut().unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(kept).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_explanatory_bodies() {
    let app = app_with(|s| s.connections.max_header_bytes = 2048).await;
    let long_query = format!("/fhir/Patient?_id={}", "a".repeat(3000));
    let r = app.get(&long_query).await;
    r.assert_outcome(414, "BOX_MAX_HEADER_BYTES");
    let big_header = "b".repeat(3000);
    let r = app
        .send(
            app.client
                .get(app.url("/fhir/Patient"))
                .header("x-padding", &big_header),
        )
        .await;
    r.assert_outcome(431, "BOX_MAX_HEADER_BYTES");
    let r = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .header("x-padding", &big_header)
                .body("grant_type=client_credentials"),
        )
        .await;
    assert_eq!(r.status, 431);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], "invalid_request");
    // Far beyond the limit, hyper refuses the head itself (431, without a body).
    let huge = "c".repeat(64 * 1024);
    let r = app
        .send(
            app.client
                .get(app.url("/fhir/Patient"))
                .header("x-padding", &huge),
        )
        .await;
    assert_eq!(r.status, 431);
    // Heads within the limit are served.
    assert_eq!(app.get("/fhir/Patient?_id=a").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_request_finish() {
    let mut app = app_with(|_| {}).await;
    let mut conn = connect(&app).await;
    let body = r#"{"resourceType":"Patient","id":"in-flight"}"#;
    let head = format!(
        "PUT /fhir/Patient/in-flight HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        root_basic(),
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // "100 Continue" means the handler is reading the body: the request is in flight.
    let mut continue_line = vec![0u8; 25];
    tokio::time::timeout(DEADLINE, conn.read_exact(&mut continue_line))
        .await
        .unwrap()
        .unwrap();
    assert!(
        continue_line.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&continue_line)
    );
    app.begin_shutdown();
    // The listener closes: new connections are refused.
    let started = Instant::now();
    while TcpStream::connect(app.socket_addr()).await.is_ok() {
        assert!(started.elapsed() < DEADLINE, "the listener never closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server waits for the in-flight request...
    assert!(
        !app.stopped_within(Duration::from_millis(200)).await,
        "the server stopped with a request in flight"
    );
    conn.write_all(body.as_bytes()).await.unwrap();
    let r = read_response(&mut conn).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // ...and stops once it is answered.
    assert!(app.stopped_within(DEADLINE).await);
}
