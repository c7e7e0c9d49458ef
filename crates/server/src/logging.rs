//! Structured logs: subscriber set-up and one line per request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing_subscriber::EnvFilter;

use crate::metrics::Metrics;
use crate::settings::LogFormat;

/// Longest client-supplied value written to a log line, in characters.
pub const LOG_VALUE_MAX_CHARS: usize = 64;

/// A client-supplied value (a client id, say) cut to [`LOG_VALUE_MAX_CHARS`]
/// characters plus `…`, so that a huge header cannot flood the log.
pub fn truncate_for_log(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(LOG_VALUE_MAX_CHARS) {
        None => std::borrow::Cow::Borrowed(value),
        Some((end, _)) => std::borrow::Cow::Owned(format!("{}…", &value[..end])),
    }
}

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
pub async fn log_request(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
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
    metrics.request(method.as_str(), &route, status, seconds);
    let duration_ms = seconds * 1000.0;
    if status >= 500 {
        tracing::error!(%method, %path, %route, status, duration_ms, "request");
    } else {
        tracing::info!(%method, %path, %route, status, duration_ms, "request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_for_log("basic"), "basic");
        let exact = "a".repeat(LOG_VALUE_MAX_CHARS);
        assert_eq!(truncate_for_log(&exact), exact.as_str());
        let long = "é".repeat(50_000);
        let cut = truncate_for_log(&long);
        assert_eq!(cut.chars().count(), LOG_VALUE_MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
