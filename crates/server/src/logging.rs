//! Structured logs: subscriber set-up and one line per request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing_subscriber::EnvFilter;

use crate::app::AppState;
use crate::settings::LogFormat;

/// Installs the global subscriber (`RUST_LOG` filters, default `info`).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Logs method, path (never the query string: it may carry search values),
/// route, status and duration of every request, and counts it in the metrics.
pub async fn log_request(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    app.metrics
        .request(method.as_str(), &route, status, seconds);
    let duration_ms = seconds * 1000.0;
    if status >= 500 {
        tracing::error!(%method, %path, %route, status, duration_ms, "request");
    } else {
        tracing::info!(%method, %path, %route, status, duration_ms, "request");
    }
    response
}
