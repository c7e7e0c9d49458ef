//! Liveness (`/health`) and readiness (`/health/ready`) in the style of the
//! IETF health-check draft (`application/health+json`).

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_store::StoreHealth;
use serde_json::json;

use crate::app::AppState;

fn health_json(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/health+json"),
    );
    response
}

/// Liveness: the process answers. The database check is reported but does
/// not fail liveness, so an outage does not make Kubernetes restart the pod.
pub async fn live(State(app): State<AppState>) -> Response {
    let started = Instant::now();
    let ping = app.store.ping().await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let db_status = if ping.is_ok() { "pass" } else { "fail" };
    health_json(
        StatusCode::OK,
        json!({
            "status": if ping.is_ok() { "pass" } else { "warn" },
            "version": env!("CARGO_PKG_VERSION"),
            "serviceId": "fhirbox",
            "uptimeSeconds": app.started.elapsed().as_secs(),
            "checks": {
                "database:responseTime": [{
                    "componentId": app.store.backend_name(),
                    "componentType": "datastore",
                    "observedValue": (elapsed_ms * 1000.0).round() / 1000.0,
                    "observedUnit": "ms",
                    "status": db_status,
                }]
            }
        }),
    )
}

/// Readiness: 503 with the reason while the database cannot be reached.
pub async fn ready(State(app): State<AppState>) -> Response {
    match app.store.ping().await {
        Ok(()) => health_json(StatusCode::OK, json!({"status": "pass"})),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            health_json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "fail", "output": format!("database unreachable ({})", app.store.backend_name())}),
            )
        }
    }
}
