//! The middleware that guards the API: authenticate, describe the request
//! from trusted parts (`access::RequestFacts`), authorize it, then hand the
//! identity to the handler.

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::IssueType;

use super::access::{Denial, RequestFacts};
use super::clients::Grant;
use super::credentials::{self, Credentials, HeaderProblem};
use super::{AuthFailure, AuthState, Identity};
use crate::error::ApiError;
use crate::extract::FhirQuery;
use fhirbox_rest::resource::{check_id, check_type};
use fhirbox_rest::search::{self, QueryUse};

/// The 401 every authentication failure gets: it never says which part was
/// wrong. A token that could not be checked at all (its issuer or a key is
/// unavailable) gets a 503 instead, so the client retries rather than asks
/// its user to sign in again (docs/tokens.md).
pub fn unauthorized(app: &AuthState, failure: AuthFailure, client_id: Option<&str>) -> Response {
    app.metrics.auth_failure(failure.reason());
    tracing::warn!(
        reason = failure.reason(),
        client = %crate::logging::truncate_for_log(client_id.unwrap_or("")),
        "authentication failed"
    );
    if failure.is_unavailable() {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueType::Transient,
            "the token could not be checked now: its issuer did not answer, or the key to check it is unavailable; try again shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return response;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        IssueType::Login,
        "authentication failed: send valid client credentials with HTTP Basic, or a Bearer token from POST /auth/token or from an issuer a TokenIntrospector accepts",
    )
    .into_response();
    if failure.is_token() {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fhirbox\", error=\"invalid_token\""),
        );
    }
    response
}

/// The 403 of a refused request; the reason is logged and counted.
pub fn forbidden(
    app: &AuthState,
    identity: &Identity,
    facts: &RequestFacts,
    denial: &Denial,
) -> Response {
    app.metrics.auth_failure(denial.reason());
    tracing::info!(client = identity.id(), method = %facts.method, uri = %facts.uri, reason = denial.reason(), "request denied by access control");
    denial_error(denial).into_response()
}

/// The error a refused request (or bundle entry) gets.
pub fn denial_error(denial: &Denial) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        IssueType::Forbidden,
        denial.message(),
    )
}

/// The request as access policies see it: route facts from the matched
/// route and its decoded parameters (checked before any policy runs), the
/// query decoded once; the decoded query goes on to the handler.
async fn request_facts(parts: &mut Parts) -> Result<(RequestFacts, FhirQuery), ApiError> {
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    // `$validate` stores nothing: policies see it as a read of what it
    // names, `GET /fhir/{type}` or `GET /fhir/{type}/{id}` (docs/security.md).
    // `POST …/_search` is the search it names; policies see it as the GET,
    // with the query string's parameters (docs/security.md).
    let (method, template) = match template
        .strip_suffix("/$validate")
        .or_else(|| template.strip_suffix("/_search"))
    {
        Some(read) => ("GET".to_owned(), read.to_owned()),
        None => (parts.method.as_str().to_owned(), template),
    };
    let raw = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("the URL path is not valid: {e}")))?;
    let param = |name: &str| {
        raw.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let (resource_type, id, version) = (param("type"), param("id"), param("vid"));
    if let Some(t) = &resource_type {
        check_type(t)?;
    }
    if let Some(id) = &id {
        check_id(id)?;
    }
    if let Some(v) = &version {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request(format!(
                "{v:?} is not a version id; versions are whole numbers from 1"
            )));
        }
    }
    let mut uri = template.clone();
    for (placeholder, value) in [
        ("{type}", &resource_type),
        ("{id}", &id),
        ("{vid}", &version),
    ] {
        if let Some(value) = value {
            uri = uri.replace(placeholder, value);
        }
    }
    let kind = match (method.as_str(), template.as_str()) {
        ("GET" | "HEAD", "/fhir" | "/fhir/{type}") => QueryUse::Search,
        ("GET" | "HEAD", t) if t.ends_with("/_history") => QueryUse::History,
        _ => QueryUse::Nothing,
    };
    let params = search::parse_query(parts.uri.query())?;
    let query = params
        .iter()
        .filter(|(name, _)| search::acted_on(kind, resource_type.as_deref(), name))
        .cloned()
        .collect();
    let facts = RequestFacts::new(
        &method,
        resource_type.as_deref(),
        id.as_deref(),
        version.as_deref(),
        parts.uri.query(),
        query,
    )
    .with_uri(uri);
    Ok((facts, FhirQuery(params)))
}

/// The search a conditional write runs: `If-None-Exist` on a create
/// (`POST /fhir/{type}`), the query string of a conditional update, patch
/// or delete (`PUT`/`PATCH`/`DELETE /fhir/{type}?criteria`).
fn conditional_search(
    parts: &Parts,
    facts: &RequestFacts,
) -> Result<Option<RequestFacts>, ApiError> {
    let (Some(resource_type), None) = (facts.resource_type.as_deref(), &facts.id) else {
        return Ok(None);
    };
    let criteria = match facts.method.as_str() {
        "post" => crate::extract::if_none_exist(&parts.headers)?,
        "put" | "patch" | "delete" => parts.uri.query().map(str::to_owned),
        _ => None,
    };
    match criteria {
        Some(criteria) => Ok(Some(search::criteria_facts(resource_type, &criteria)?)),
        None => Ok(None),
    }
}

/// Authenticates and authorizes every request it wraps.
pub async fn require_auth(State(app): State<AuthState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let (identity, client_id) = match credentials::from_headers(req.headers()) {
        Err(HeaderProblem::Missing) => {
            return unauthorized(&app, AuthFailure::MissingCredentials, None)
        }
        Err(HeaderProblem::Malformed) => {
            return unauthorized(&app, AuthFailure::MalformedHeader, None)
        }
        Ok(Credentials::Basic { id, secret }) => (
            app.auth
                .verify_secret(&id, &secret, &[Grant::Basic], peer)
                .await
                .map(|v| v.identity),
            Some(id),
        ),
        Ok(Credentials::Bearer(token)) => (app.auth.verify_bearer(&token).await, None),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(failure) => return unauthorized(&app, failure, client_id.as_deref()),
    };
    let (mut parts, body) = req.into_parts();
    let (facts, query) = match request_facts(&mut parts).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    if let Err(denial) = app.auth.authorize(&identity, &facts) {
        return forbidden(&app, &identity, &facts, &denial);
    }
    // A conditional create also searches: that search is authorized too.
    match conditional_search(&parts, &facts) {
        Err(e) => return e.into_response(),
        Ok(Some(searched)) => {
            if let Err(denial) = app.auth.authorize(&identity, &searched) {
                return forbidden(&app, &identity, &searched, &denial);
            }
        }
        Ok(None) => {}
    }
    let mut req = Request::from_parts(parts, body);
    req.extensions_mut().insert(identity);
    req.extensions_mut().insert(query);
    next.run(req).await
}
