//! Liveness (`/health`) and readiness (`/health/ready`) in the style of the
//! IETF health-check draft (`application/health+json`).

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_secrets::SecretResolver;
use fhirbox_store::{Store, StoreHealth};
use serde_json::json;

/// What the health endpoints look at.
#[derive(Clone)]
pub struct HealthState {
    pub store: Store,
    pub started: Instant,
    pub vault: Option<SecretResolver>,
}

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
pub async fn live(State(app): State<HealthState>) -> Response {
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

/// Readiness: 503 while the database cannot be reached. A vault config that
/// failed to load stops the server at start; a later bad edit leaves the last
/// good config in force, reported here as `warn`. The endpoint is public, so it
/// says only which check failed: paths, values and error text go to the log
/// and to root-only `GET /admin/secrets`.
pub async fn ready(State(app): State<HealthState>) -> Response {
    let vault_failed = app
        .vault
        .as_ref()
        .is_some_and(|v| v.config_status().last_error.is_some());
    match app.store.ping().await {
        Ok(()) if vault_failed => health_json(
            StatusCode::OK,
            json!({"status": "warn", "output": VAULT_RELOAD_FAILED}),
        ),
        Ok(()) => health_json(StatusCode::OK, json!({"status": "pass"})),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: the database is unreachable");
            health_json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "fail", "output": DATABASE_UNREACHABLE}),
            )
        }
    }
}

const VAULT_RELOAD_FAILED: &str =
    "vault config reload failed; the last good config stays in force (details in the log and GET /admin/secrets)";
const DATABASE_UNREACHABLE: &str = "database unreachable (details in the log)";
