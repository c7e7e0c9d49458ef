//! `POST /auth/token`: the OAuth 2.0 `client_credentials` grant (RFC 6749
//! §4.4), with credentials in a Basic header or in the body (form or JSON),
//! and the `authorization_code` grant of sign-in (§4.1.3, PKCE RFC 7636;
//! docs/sign-in.md). Errors follow RFC 6749 §5.2.
//!
//! A token request is a few short fields, so its body is capped far below the
//! API's (`TOKEN_BODY_LIMIT`), and credentials in a Basic header are checked
//! before the body is read at all.

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use secrecy::SecretString;
use serde_json::{json, Value};

use super::clients::Grant;
use super::credentials::{self, Credentials, HeaderProblem};
use super::AuthState;
use super::{AuthFailure, Verified};
use crate::logging::truncate_for_log;

/// The route of the token endpoint.
pub const TOKEN_PATH: &str = "/auth/token";

/// Largest token request body: the form or JSON object of RFC 6749 §4.4.2 with
/// a client id and secret fits many times over.
pub const TOKEN_BODY_LIMIT: usize = 8 * 1024;

/// An RFC 6749 §5.2 error response.
pub fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
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
            // Strict: a repeated client_id or client_secret is refused, not "last wins".
            let value: Value = fhirbox_fhir::json::from_slice_strict(body)
                .map_err(|_| "the JSON body cannot be parsed (or repeats a key)")?;
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

fn too_large() -> Response {
    oauth_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        "the token request body is larger than 8 KiB",
    )
}

/// Reads at most [`TOKEN_BODY_LIMIT`] bytes of the body.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Vec<u8>, Response> {
    use hyper::body::Body as _;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > TOKEN_BODY_LIMIT as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            None => return Ok(bytes),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > TOKEN_BODY_LIMIT {
                        return Err(too_large());
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => {
                return Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the request body could not be read",
                ))
            }
        }
    }
}

pub async fn token(
    State(app): State<AuthState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    // Credentials in the header are checked first: a request that fails them
    // costs no body read and no parse, whatever it sends.
    let header_credentials = match credentials::from_headers(&headers) {
        Ok(Credentials::Basic { id, secret }) => Some((id, secret)),
        Ok(Credentials::Bearer(_)) | Err(HeaderProblem::Malformed) => {
            app.metrics
                .auth_failure(AuthFailure::MalformedHeader.reason());
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
        Err(HeaderProblem::Missing) => None,
    };
    let verified = match &header_credentials {
        Some((id, secret)) => match verify(&app, id, secret, TOKEN_GRANTS, peer).await {
            Ok(identity) => Some(identity),
            Err(response) => return response,
        },
        None => None,
    };
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
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
        Some("authorization_code") => {
            return user_grant(&app, verified, &field, peer, Grant::AuthorizationCode).await;
        }
        Some("refresh_token") => {
            return user_grant(&app, verified, &field, peer, Grant::RefreshToken).await;
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be client_credentials, authorization_code or refresh_token",
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
    let verified_caller = match verified {
        Some(identity) if !identity.allows(Grant::ClientCredentials) => {
            return grant_refused(&app, identity.identity.id(), "client_credentials")
        }
        Some(identity) => identity,
        None => match (field("client_id"), field("client_secret")) {
            (Some(id), Some(secret)) => {
                match verify(
                    &app,
                    &id,
                    &SecretString::from(secret),
                    &[Grant::ClientCredentials],
                    peer,
                )
                .await
                {
                    Ok(identity) => identity,
                    Err(response) => return response,
                }
            }
            _ => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send client_id and client_secret, or an HTTP Basic Authorization header",
                )
            }
        },
    };
    let (access_token, expires_in) = app.auth.issue_token(&verified_caller);
    let mut response = Json(
        json!({"token_type": "Bearer", "access_token": access_token, "expires_in": expires_in}),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The grants a client authenticating in the header may be asking for
/// (the body, read after the check, says which).
const TOKEN_GRANTS: &[Grant] = &[
    Grant::ClientCredentials,
    Grant::AuthorizationCode,
    Grant::RefreshToken,
];

fn grant_refused(app: &AuthState, id: &str, grant: &str) -> Response {
    app.metrics
        .auth_failure(AuthFailure::GrantNotAllowed.reason());
    tracing::warn!(client = %truncate_for_log(id), reason = "grant_not_allowed", "token request refused");
    oauth_error(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        &format!("this client may not use the {grant} grant"),
    )
}

/// `grant_type=authorization_code` and `refresh_token`, the grants of a
/// signed-in user (docs/sign-in.md): a confidential client authenticates
/// (header or `client_secret`), a public one names itself in `client_id`
/// (and proves a code with its PKCE verifier).
async fn user_grant(
    app: &AuthState,
    verified: Option<Verified>,
    field: &impl Fn(&str) -> Option<String>,
    peer: Option<IpAddr>,
    grant: Grant,
) -> Response {
    let (client_id, authenticated) = match verified {
        Some(v) if matches!(v.identity, super::Identity::Root { .. }) => {
            return grant_refused(app, v.identity.id(), grant.code())
        }
        Some(v) if !v.allows(grant) => return grant_refused(app, v.identity.id(), grant.code()),
        Some(v) => {
            let id = v.identity.id().to_owned();
            if field("client_id").is_some_and(|named| named != id) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id is not the client that authenticated",
                );
            }
            (id, true)
        }
        None => {
            match (field("client_id"), field("client_secret")) {
                (Some(id), Some(secret)) => {
                    match verify(app, &id, &SecretString::from(secret), &[grant], peer).await {
                        Ok(_) => (id, true),
                        Err(response) => return response,
                    }
                }
                (Some(id), None) => (id, false),
                (None, _) => return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "send client_id (and client_secret, or HTTP Basic, for a confidential client)",
                ),
            }
        }
    };
    let exchanged = if grant == Grant::RefreshToken {
        let Some(refresh_token) = field("refresh_token") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "refresh_token is missing",
            );
        };
        app.auth
            .refresh(&client_id, authenticated, &refresh_token)
            .await
    } else {
        let Some(code) = field("code") else {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "code is missing",
            );
        };
        app.auth
            .exchange_code(
                &client_id,
                authenticated,
                &code,
                field("redirect_uri").as_deref(),
                field("code_verifier").as_deref(),
            )
            .await
    };
    match exchanged {
        Ok(token) => {
            let mut body = json!({"token_type": "Bearer", "access_token": token.access_token, "expires_in": token.expires_in});
            // No `scope`: access is what policies allow, not what was asked
            // (docs/sign-in.md), so echoing the request would mislead.
            if let Some(refresh) = token.refresh_token {
                body["refresh_token"] = Value::String(refresh);
            }
            if let Some(id_token) = token.id_token {
                body["id_token"] = Value::String(id_token);
            }
            let mut response = Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(fhirbox_auth::signin::CodeFailure::InvalidGrant(reason)) => {
            app.metrics.auth_failure(reason);
            tracing::warn!(client = %truncate_for_log(&client_id), reason, "token request refused");
            oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                if grant == Grant::RefreshToken {
                    "the refresh token is unknown, used, expired, or was issued to another client"
                } else {
                    "the code is unknown, used, expired, or was issued for another client or redirect_uri, or code_verifier does not match it"
                },
            )
        }
        Err(fhirbox_auth::signin::CodeFailure::UnauthorizedClient) => {
            grant_refused(app, &client_id, grant.code())
        }
        Err(fhirbox_auth::signin::CodeFailure::ClientAuthentication) => {
            app.metrics.auth_failure("client_must_authenticate");
            tracing::warn!(client = %truncate_for_log(&client_id), reason = "client_must_authenticate", "token request refused");
            oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed: a client with a secret authenticates with HTTP Basic or client_secret, a public one names itself in client_id",
            )
        }
        Err(fhirbox_auth::signin::CodeFailure::Unavailable) => {
            app.metrics.auth_failure("grant_store_unavailable");
            tracing::error!(client = %truncate_for_log(&client_id), reason = "grant_store_unavailable", "the database did not answer a token request");
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "try again shortly",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

/// Checks a client's credentials for one of `grants`.
async fn verify(
    app: &AuthState,
    id: &str,
    secret: &SecretString,
    grants: &[Grant],
    peer: Option<IpAddr>,
) -> Result<Verified, Response> {
    match app.auth.verify_secret(id, secret, grants, peer).await {
        Ok(verified) => Ok(verified),
        Err(AuthFailure::GrantNotAllowed) => Err(grant_refused(
            app,
            id,
            grants.first().map_or("requested", |g| g.code()),
        )),
        Err(failure) => {
            app.metrics.auth_failure(failure.reason());
            tracing::warn!(client = %truncate_for_log(id), reason = failure.reason(), "token request refused");
            Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            ))
        }
    }
}
