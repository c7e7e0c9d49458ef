//! What the server shows to whom: metrics need credentials (and a scrape
//! client can be given them alone), and client-chosen values are cut short in logs.

use std::time::Duration;

use fhirbox_server::settings::ConnectionLimits;
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{captured_logs, Backend, TestApp};

backend_tests!(
    metrics_need_credentials_and_a_scrape_client_may_be_allowed_only_them,
    huge_client_ids_are_cut_short_in_the_log
);

async fn metrics_need_credentials_and_a_scrape_client_may_be_allowed_only_them(app: TestApp) {
    let anon = app.send(app.anon.get(app.url("/metrics"))).await;
    assert_eq!(anon.status, 401);
    assert!(!anon.text.contains("fhirbox_"), "{}", anon.text);
    assert!(app
        .get("/metrics")
        .await
        .text
        .contains("fhirbox_http_requests_total"));
    // A dedicated client for Prometheus, allowed GET /metrics and nothing else.
    app.put_client("prometheus", "scrape-secret", &["basic"])
        .await;
    let policy = app
        .put(
            "/fhir/AccessPolicy/prometheus-scrape",
            &json!({
        "resourceType": "AccessPolicy", "id": "prometheus-scrape", "engine": "matcho",
        "link": [{"reference": "Client/prometheus"}],
        "matcho": {"request-method": "get", "uri": "/metrics"}}),
        )
        .await;
    assert!(
        policy.status == 200 || policy.status == 201,
        "{}",
        policy.text
    );
    let scrape = app.get_as("/metrics", "prometheus", "scrape-secret").await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.text.contains("fhirbox_auth_failures_total"));
    assert_eq!(
        app.get_as("/fhir/Patient", "prometheus", "scrape-secret")
            .await
            .status,
        403
    );
    assert_eq!(
        app.get_as("/admin/secrets", "prometheus", "scrape-secret")
            .await
            .status,
        403
    );
}

async fn huge_client_ids_are_cut_short_in_the_log(app: TestApp) {
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("{marker}{}", "z".repeat(5000));
    assert_eq!(
        app.get_as("/fhir/Patient", &id, "whatever").await.status,
        401
    );
    let token = app
        .send(
            app.anon
                .post(app.url("/auth/token"))
                .basic_auth(&id, Some("whatever"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials"),
        )
        .await;
    assert_eq!(token.status, 401);
    let logs = captured_logs();
    let kept: String = id.chars().take(64).collect();
    let one_more: String = id.chars().take(65).collect();
    assert_eq!(
        logs.matches(&format!("{kept}…")).count(),
        2,
        "both refusals are logged, truncated"
    );
    assert!(
        !logs.contains(&one_more),
        "a client id is logged beyond 64 characters"
    );
}

/// `BOX_METRICS_PORT`: the separate listener serves `GET /metrics` without
/// credentials, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_metrics_alone_without_credentials() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fhirbox_server::transport::serve(
        listener,
        fhirbox_server::metrics::scrape_router(app.state.metrics.clone()),
        ConnectionLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    assert_eq!(app.get("/fhir/Patient").await.status, 200);
    let scrape = app.send(app.anon.get(format!("{base}/metrics"))).await;
    assert_eq!(scrape.status, 200);
    assert!(scrape.text.contains("fhirbox_http_requests_total"));
    for path in [
        "/fhir/Patient",
        "/admin/secrets",
        "/fhir/metadata",
        "/auth/token",
    ] {
        assert_eq!(
            app.send(app.client.get(format!("{base}{path}")))
                .await
                .status,
            404,
            "{path}"
        );
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
