//! The routes of sign-in through an external OpenID provider
//! (docs/sign-in.md): `GET /auth/authorize` and `GET /auth/redirect/<idp>`
//! send the user to the provider, `GET /auth/callback/<idp>` brings them
//! back and sends the application its code. The decisions are
//! `fhirbox-auth`'s (`signin`); this module carries them over HTTP: the
//! sealed cookie, the redirects, the User write, the metrics.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_auth::signin::flow::{with_query, Approved, AuthorizeError, COOKIE_PREFIX};
use fhirbox_rest::{Rest, ReturnPreference};

use super::AuthService;
use crate::logging::truncate_for_log;
use crate::metrics::Metrics;

/// What the sign-in routes need.
#[derive(Clone)]
pub struct SignInState {
    pub auth: Arc<AuthService>,
    pub store: fhirbox_store::Store,
    pub metrics: Arc<Metrics>,
    pub rest: Rest,
    /// `BOX_AUTH_COOKIE_SECURE`.
    pub cookie_secure: bool,
    /// `BOX_WEB_BASE_URL`, for fhirbox's default redirect URI at a provider.
    pub base_url: Option<Arc<str>>,
}

/// Headers every sign-in answer carries: nothing in it may be cached, and
/// a code in a URL must not leak through `Referer` (RFC 9700 §4.2.4).
fn private(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A page for the user: the request cannot be sent back to any application.
fn page(text: &str) -> Response {
    private(
        (
            StatusCode::BAD_REQUEST,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            format!("Sign-in failed: {text}\n"),
        )
            .into_response(),
    )
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => private((StatusCode::FOUND, [(header::LOCATION, value)]).into_response()),
        Err(_) => page("the redirect address is not a valid URL"),
    }
}

/// The decoded query; `None` (answer with [`undecodable`]) when it cannot be.
fn query_pairs(query: Option<String>) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or("")).ok()
}

fn undecodable() -> Response {
    page("the query string cannot be decoded")
}

/// `GET /auth/authorize`: the application's authorization request, sent on
/// to the client's `default_identity_provider`.
pub async fn authorize(State(app): State<SignInState>, RawQuery(query): RawQuery) -> Response {
    let Some(params) = query_pairs(query) else {
        return undecodable();
    };
    let approved = match app.auth.check_authorize(&params) {
        Ok(approved) => approved,
        Err(refused) => return refuse_authorize(&app, refused),
    };
    let Some(idp) = approved.identity_provider.clone() else {
        return found(&with_query(
            &approved.redirect_uri,
            &[
                ("error", Some("invalid_request")),
                ("error_description", Some("this client names no auth.authorization_code.default_identity_provider; send the user to /auth/redirect/<IdentityProvider id>")),
                ("state", approved.state.as_deref()),
            ],
        ));
    };
    begin(&app, &idp, approved).await
}

/// `GET /auth/redirect/<idp>`: the same request, naming its provider.
pub async fn redirect(
    State(app): State<SignInState>,
    Path(idp): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(params) = query_pairs(query) else {
        return undecodable();
    };
    match app.auth.check_authorize(&params) {
        Ok(approved) => begin(&app, &idp, approved).await,
        Err(refused) => refuse_authorize(&app, refused),
    }
}

fn refuse_authorize(app: &SignInState, refused: AuthorizeError) -> Response {
    app.metrics.auth_failure("authorize_refused");
    match refused.location() {
        Some(location) => found(&location),
        None => match refused {
            AuthorizeError::Page(text) => page(&text),
            AuthorizeError::Redirect { .. } => page("the request was refused"),
        },
    }
}

/// The provider label of metrics: an id an operator configured, never a
/// made-up one from a path.
fn label(app: &SignInState, idp: &str) -> String {
    if app.auth.knows_identity_provider(idp) {
        idp.to_owned()
    } else {
        "(unknown)".to_owned()
    }
}

async fn begin(app: &SignInState, idp: &str, approved: Approved) -> Response {
    let default_callback = app
        .base_url
        .as_deref()
        .filter(|_| fhirbox_fhir::id::is_valid_id(idp))
        .map(|base| format!("{}/auth/callback/{idp}", base.trim_end_matches('/')));
    match app
        .auth
        .begin_sign_in(idp, approved.clone(), default_callback)
        .await
    {
        Ok(begun) => {
            let mut response = found(&begun.location);
            let cookie = format!(
                "{}={}; Path=/auth/callback/{idp}; Max-Age={}; HttpOnly; SameSite=Lax{}",
                begun.cookie_name,
                begun.cookie_value,
                begun.max_age,
                if app.cookie_secure { "; Secure" } else { "" }
            );
            match HeaderValue::from_str(&cookie) {
                Ok(value) => {
                    response.headers_mut().append(header::SET_COOKIE, value);
                    response
                }
                Err(_) => page("the identity provider's id cannot be used in a cookie path"),
            }
        }
        Err(failure) => {
            app.metrics.sign_in(&label(app, idp), failure.reason());
            tracing::warn!(identity_provider = %truncate_for_log(idp), client = %approved.client_id, reason = failure.reason(), "sign-in could not start");
            found(&with_query(
                &approved.redirect_uri,
                &[
                    ("error", Some(failure.oauth_error())),
                    (
                        "error_description",
                        Some("the identity provider cannot be used now"),
                    ),
                    ("state", approved.state.as_deref()),
                ],
            ))
        }
    }
}

/// The value of the cookie `name` among the request's cookies.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// `GET /auth/callback/<idp>`: the provider's answer.
pub async fn callback(
    State(app): State<SignInState>,
    Path(idp): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(params) = query_pairs(query) else {
        return undecodable();
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let state = param("state").filter(|s| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let cookie_name = state.map(|s| format!("{COOKIE_PREFIX}{s}"));
    let sealed = cookie_name.as_deref().and_then(|n| cookie(&headers, n));
    let finished = app
        .auth
        .finish_sign_in(
            &idp,
            state.unwrap_or(""),
            sealed,
            param("code"),
            param("error"),
        )
        .await;
    let mut response = match finished {
        Err(failure) => {
            app.metrics.sign_in(&label(&app, &idp), failure.reason);
            tracing::warn!(identity_provider = %truncate_for_log(&idp), reason = failure.reason, "sign-in failed");
            match failure.app {
                Some(approved) => found(&with_query(
                    &approved.redirect_uri,
                    &[
                        ("error", Some(failure.error)),
                        ("error_description", Some(failure.description)),
                        ("state", approved.state.as_deref()),
                    ],
                )),
                None => page(failure.description),
            }
        }
        Ok(finished) => complete(&app, &idp, finished).await,
    };
    if let Some(name) =
        cookie_name.filter(|_| sealed.is_some() && fhirbox_fhir::id::is_valid_id(&idp))
    {
        // The flow is spent either way: the browser forgets it.
        let clear =
            format!("{name}=; Path=/auth/callback/{idp}; Max-Age=0; HttpOnly; SameSite=Lax");
        if let Ok(value) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

enum UserProblem {
    Inactive,
    NotStored(String),
}

/// Creates the User of a sign-in, or updates it when its claims changed:
/// read from the database (not the cache), written with `If-Match` on
/// that version, and read again when another write came first, so a User
/// disabled meanwhile (through any instance) stays disabled.
async fn store_user(
    app: &SignInState,
    finished: &fhirbox_auth::signin::Finished,
    user: &str,
) -> Result<(), UserProblem> {
    use fhirbox_store::ResourceRead;
    let base = app.base_url.as_deref().unwrap_or("http://localhost");
    for _ in 0..3 {
        let stored = app
            .store
            .read("User", user)
            .await
            .map_err(|e| UserProblem::NotStored(e.to_string()))?
            .filter(|s| !s.deleted);
        let current = match &stored {
            Some(s) => Some(
                serde_json::from_str::<serde_json::Value>(&s.body)
                    .map_err(|e| UserProblem::NotStored(e.to_string()))?,
            ),
            None => None,
        };
        let body = app
            .auth
            .signed_in_user_body(finished, current.as_ref())
            .map_err(|_| UserProblem::Inactive)?;
        let Some(body) = body else {
            return Ok(());
        };
        let written = app
            .rest
            .update(
                &format!("{base}/fhir"),
                "User",
                user,
                body,
                stored.as_ref().map(|s| s.version_id),
                ReturnPreference::Minimal,
            )
            .await;
        match written {
            Ok(_) => return Ok(()),
            Err(e) if e.kind == fhirbox_rest::ErrorKind::PreconditionFailed => continue,
            Err(e) => return Err(UserProblem::NotStored(e.to_string())),
        }
    }
    Err(UserProblem::NotStored(
        "the User kept changing while it was written".into(),
    ))
}

/// Stores the User (new, or with changed claims) and sends the application its code.
async fn complete(
    app: &SignInState,
    idp: &str,
    finished: fhirbox_auth::signin::Finished,
) -> Response {
    let tell = |error: &str, description: &str| {
        found(&with_query(
            &finished.app.redirect_uri,
            &[
                ("error", Some(error)),
                ("error_description", Some(description)),
                ("state", finished.app.state.as_deref()),
            ],
        ))
    };
    let user = app.auth.signed_in_user_id(&finished);
    match store_user(app, &finished, &user).await {
        Ok(()) => {}
        Err(UserProblem::Inactive) => {
            app.metrics.sign_in(idp, "user_inactive");
            tracing::warn!(identity_provider = %idp, user = %user, reason = "user_inactive", "an inactive User tried to sign in");
            return tell("access_denied", "this user is inactive");
        }
        Err(UserProblem::NotStored(problem)) => {
            app.metrics.sign_in(idp, "user_not_stored");
            tracing::error!(identity_provider = %idp, user = %user, %problem, "the signed-in User could not be stored");
            return tell("server_error", "the user could not be recorded; try again");
        }
    }
    let code = match app.auth.issue_code(&finished.app, &user).await {
        Ok(code) => code,
        Err(e) => {
            app.metrics.sign_in(idp, "code_not_stored");
            tracing::error!(identity_provider = %idp, problem = %e, "the code of a sign-in could not be stored");
            return tell(
                "temporarily_unavailable",
                "the sign-in could not be recorded; try again shortly",
            );
        }
    };
    app.metrics.sign_in(idp, "ok");
    tracing::info!(identity_provider = %idp, client = %finished.app.client_id, user = %user, "signed in");
    found(&with_query(
        &finished.app.redirect_uri,
        &[
            ("code", Some(&code)),
            ("state", finished.app.state.as_deref()),
        ],
    ))
}

fn not_configured() -> Response {
    let mut response = crate::error::ApiError::new(
        StatusCode::NOT_FOUND,
        fhirbox_fhir::IssueType::NotFound,
        "fhirbox issues no ID tokens: set BOX_AUTH_ID_TOKEN_KEY_FILE and BOX_WEB_BASE_URL (docs/sign-in.md)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /auth/jwks`: the public key of fhirbox's ID tokens (RFC 7517).
pub async fn jwks(State(app): State<SignInState>) -> Response {
    let Some(key) = app.auth.id_token_key() else {
        return not_configured();
    };
    match key.key_set() {
        Ok(set) => {
            let mut response = axum::Json(set).into_response();
            // Short, so a rotated key is seen within a minute.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
            response
        }
        Err(problem) => {
            tracing::error!(reason = "id_token_key", %problem, "the ID-token key cannot be published");
            crate::error::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                fhirbox_fhir::IssueType::Transient,
                "the ID-token key cannot be read now",
            )
            .into_response()
        }
    }
}

/// `GET /.well-known/openid-configuration` (OpenID Connect Discovery §4),
/// when fhirbox issues ID tokens.
pub async fn openid_configuration(State(app): State<SignInState>) -> Response {
    let Some(key) = app.auth.id_token_key() else {
        return not_configured();
    };
    let Ok(alg) = key.check() else {
        return not_configured();
    };
    let issuer = key.issuer();
    axum::Json(serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth/authorize"),
        "token_endpoint": format!("{issuer}/auth/token"),
        "jwks_uri": format!("{issuer}/auth/jwks"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [format!("{alg:?}")],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    }))
    .into_response()
}
