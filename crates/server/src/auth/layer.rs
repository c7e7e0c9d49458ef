//! The middleware that guards the API: authenticate, then authorize against
//! access policies, then hand the identity to the handler.

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::IssueType;
use serde_json::{json, Map, Value};

use super::credentials::{self, Credentials, HeaderProblem};
use super::{AuthFailure, Grant, Identity};
use crate::app::AppState;
use crate::error::ApiError;

/// The 401 every authentication failure gets: it never says which part was wrong.
pub fn unauthorized(app: &AppState, failure: AuthFailure, client_id: Option<&str>) -> Response {
    app.metrics.auth_failure(failure.reason());
    tracing::warn!(
        reason = failure.reason(),
        client = %crate::logging::truncate_for_log(client_id.unwrap_or("")),
        "authentication failed"
    );
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        IssueType::Login,
        "authentication failed: send valid client credentials with HTTP Basic, or a Bearer token from POST /auth/token",
    )
    .into_response();
    if matches!(failure, AuthFailure::Token(_)) {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fhirbox\", error=\"invalid_token\""),
        );
    }
    response
}

fn forbidden() -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        IssueType::Forbidden,
        "no access policy allows this request for this client; link an AccessPolicy to the client that allows it",
    )
    .into_response()
}

/// The request as matcho policies see it (Aidbox's request keys).
fn request_context(req: &Request, route_params: &[(String, String)], identity: &Identity) -> Value {
    let mut params = Map::new();
    if let Some(query) = req.uri().query() {
        if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
            for (k, v) in pairs {
                params.entry(k).or_insert(Value::String(v));
            }
        }
    }
    for (name, value) in route_params {
        let key = match name.as_str() {
            "type" => "resource/type".to_owned(),
            "id" => "resource/id".to_owned(),
            "vid" => "resource/version".to_owned(),
            other => other.to_owned(),
        };
        params.insert(key, Value::String(value.clone()));
    }
    json!({
        "request-method": req.method().as_str().to_ascii_lowercase(),
        "uri": req.uri().path(),
        "query-string": req.uri().query().unwrap_or(""),
        "params": params,
        "client": {"id": identity.id(), "resourceType": "Client"},
    })
}

/// Authenticates and authorizes every request it wraps.
pub async fn require_auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let (identity, client_id) = match credentials::from_headers(req.headers()) {
        Err(HeaderProblem::Missing) => {
            return unauthorized(&app, AuthFailure::MissingCredentials, None)
        }
        Err(HeaderProblem::Malformed) => {
            return unauthorized(&app, AuthFailure::MalformedHeader, None)
        }
        Ok(Credentials::Basic { id, secret }) => (
            app.auth.verify_secret(&id, &secret, Grant::Basic).await,
            Some(id),
        ),
        Ok(Credentials::Bearer(token)) => (app.auth.verify_token(&token), None),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(failure) => return unauthorized(&app, failure, client_id.as_deref()),
    };
    let (mut parts, body) = req.into_parts();
    let route_params: Vec<(String, String)> =
        match RawPathParams::from_request_parts(&mut parts, &()).await {
            Ok(raw) => raw
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            Err(_) => Vec::new(),
        };
    let mut req = Request::from_parts(parts, body);
    if !app.auth.authorize(&identity, || {
        request_context(&req, &route_params, &identity)
    }) {
        app.metrics.auth_failure("forbidden");
        tracing::info!(client = identity.id(), method = %req.method(), path = req.uri().path(), "request denied by access policies");
        return forbidden();
    }
    req.extensions_mut().insert(identity);
    next.run(req).await
}
