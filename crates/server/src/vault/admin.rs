//! `GET /admin/secrets`: the root-only table of secrets, their states and
//! times — never values (docs/external-secrets.md).
use std::time::SystemTime;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::IssueType;
use fhirbox_secrets::{SecretResolver, SecretState};
use serde_json::{json, Value};

use crate::auth::{AuthState, Identity};
use crate::error::ApiError;

fn time_text(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| json!(fhirbox_store::instant::format_micros(d.as_micros() as i64)))
        .unwrap_or(Value::Null)
}

/// `GET /admin/secrets` (root only): names, paths, scopes, states and times,
/// and the Clients and TokenIntrospectors that use each secret — never values.
pub async fn admin_secrets(
    State(vault): State<Option<SecretResolver>>,
    State(auth): State<AuthState>,
    identity: Option<Extension<Identity>>,
) -> Response {
    if !matches!(identity.as_deref(), Some(Identity::Root { .. })) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "only the root client may read /admin/secrets",
        )
        .into_response();
    }
    let Some(vault) = &vault else {
        return axum::Json(
            json!({"enabled": false, "hint": "set BOX_VAULT_CONFIG to turn external secrets on"}),
        )
        .into_response();
    };
    let config = vault.config_status();
    let users = auth.auth.secret_users();
    let secrets: Vec<Value> = vault
        .status()
        .into_iter()
        .map(|s| {
            let (state, reason, message) = match &s.state {
                SecretState::Ok => ("ok", None, None),
                SecretState::Retrying { reason, message } => {
                    ("retrying", Some(*reason), Some(message.clone()))
                }
                SecretState::Error { reason, message } => {
                    ("error", Some(*reason), Some(message.clone()))
                }
            };
            json!({
                "name": s.name,
                "path": s.path.display().to_string(),
                "scope": s.scope,
                "rotationGraceSeconds": s.rotation_grace.map(|d| d.as_secs_f64()),
                "state": state,
                "reason": reason,
                "message": message,
                "lastLoaded": time_text(s.last_loaded),
                "lastRotated": time_text(s.last_rotated),
                "sizeBytes": s.size,
                "usedBy": users.get(&s.name).cloned().unwrap_or_default(),
            })
        })
        .collect();
    axum::Json(json!({
        "enabled": true,
        "config": {
            "path": config.path.display().to_string(),
            "secrets": config.secrets,
            "lastLoaded": time_text(Some(config.last_ok)),
            "lastError": config.last_error.map(|e| json!({"at": time_text(Some(e.at)), "message": e.message})),
        },
        "secrets": secrets,
    }))
    .into_response()
}
