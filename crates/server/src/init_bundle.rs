//! `BOX_INIT_BUNDLE`: a batch or transaction bundle applied at start, before
//! the port opens — the declarative way to create Clients and AccessPolicies.
//! A failed transaction or an unreadable file stops the start; a batch logs
//! each failed entry and carries on.

use std::path::Path;

use fhirbox_auth::Identity;
use fhirbox_rest::Rest;
use serde_json::Value;

/// Base URL used for entries and references while no request is in flight.
const INIT_BASE: &str = "http://localhost/fhir";

/// Applies the bundle at `path`; `base_url` is `BOX_WEB_BASE_URL`.
pub async fn apply(rest: &Rest, base_url: Option<&str>, path: &Path) -> Result<(), String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot be read: {e}"))?;
    let body: Value = fhirbox_fhir::json::from_str_strict(&text)
        .map_err(|e| format!("is not valid JSON: {e}"))?;
    let base = base_url
        .map(|b| format!("{b}/fhir"))
        .unwrap_or_else(|| INIT_BASE.to_owned());
    // The init bundle is the operator's own configuration: it acts as root.
    let operator = Identity::Root {
        id: "(init bundle)".to_owned(),
    };
    let applied = rest
        .apply_bundle(&base, &body, &operator)
        .await
        .map_err(|e| e.describe())?;
    let mut failed = 0;
    for (index, error) in applied.failures() {
        failed += 1;
        tracing::error!(entry = index, status = error.kind.status(), problem = %error.describe(), "init bundle entry failed");
    }
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("bundle");
    tracing::info!(path = %path.display(), kind, failed, "init bundle applied");
    Ok(())
}
