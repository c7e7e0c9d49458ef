//! `POST /auth/token`: the OAuth 2.0 `client_credentials` grant (RFC 6749
//! §4.4), with credentials in a Basic header or in the body (form or JSON).
//! Errors follow RFC 6749 §5.2.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde_json::{json, Value};

use super::credentials::{self, Credentials, HeaderProblem};
use super::{AuthFailure, Grant};
use crate::app::AppState;

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fhirbox\""),
        );
    }
    response
}

/// The token request's fields, from either body encoding.
/// Errors are `invalid_request` descriptions.
fn body_fields(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match content_type.as_str() {
        "application/x-www-form-urlencoded" => {
            serde_urlencoded::from_bytes(body).map_err(|_| "the form body cannot be decoded")
        }
        "application/json" => {
            let value: Value =
                serde_json::from_slice(body).map_err(|_| "the JSON body cannot be parsed")?;
            let Value::Object(fields) = value else {
                return Err("the JSON body must be an object");
            };
            Ok(fields
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect())
        }
        _ => Err("send application/x-www-form-urlencoded or application/json"),
    }
}

pub async fn token(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let fields = match body_fields(&headers, &body) {
        Ok(f) => f,
        Err(description) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
        }
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    match field("grant_type").as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            )
        }
    }
    let (id, secret) = match credentials::from_headers(&headers) {
        Ok(Credentials::Basic { id, secret }) => (id, secret),
        Ok(Credentials::Bearer(_)) | Err(HeaderProblem::Malformed) => {
            app.metrics
                .auth_failure(AuthFailure::MalformedHeader.reason());
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        Err(HeaderProblem::Missing) => match (field("client_id"), field("client_secret")) {
            (Some(id), Some(secret)) => (id, SecretString::from(secret)),
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send client_id and client_secret, or an HTTP Basic Authorization header",
                )
            }
        },
    };
    match app
        .auth
        .verify_secret(&id, &secret, Grant::ClientCredentials)
        .await
    {
        Ok(identity) => {
            let (access_token, expires_in) = app.auth.issue_token(&identity);
            let mut response =
                Json(json!({"token_type": "Bearer", "access_token": access_token, "expires_in": expires_in})).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(AuthFailure::GrantNotAllowed) => {
            app.metrics
                .auth_failure(AuthFailure::GrantNotAllowed.reason());
            tracing::warn!(client = %id, reason = "grant_not_allowed", "token request refused");
            oauth_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "this client may not use the client_credentials grant",
            )
        }
        Err(failure) => {
            app.metrics.auth_failure(failure.reason());
            tracing::warn!(client = %id, reason = failure.reason(), "token request refused");
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        }
    }
}

use axum::Json;
