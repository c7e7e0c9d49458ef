//! Request plumbing owned by extractors and one middleware: path parameters,
//! query parameters and JSON bodies whose rejections are OperationOutcomes,
//! the public base URL, and content negotiation (FHIR R4 §3.1.0.1.10, JSON
//! only).

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::IssueType;
use serde_json::Value;

use std::sync::Arc;

use fhirbox_rest::patch::{self, Patch};
use fhirbox_rest::reply::{parse_if_match, NoneMatch, ReadConditions};
use fhirbox_rest::search::{parse_query, Params};
use fhirbox_rest::Prefer;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Media types fhirbox reads and writes.
const JSON_TYPES: &[&str] = &["application/fhir+json", "application/json"];

fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type)
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                IssueType::TooLong,
                "the request body is larger than this server accepts (BOX_MAX_BODY_BYTES)",
            )
        } else {
            ApiError::bad_request(format!("the request body could not be read: {rejection}"))
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty; send {what}"
        )));
    }
    // Parsed strictly first (duplicate keys refused, see fhirbox_fhir::json),
    // then read as the expected shape.
    fhirbox_fhir::json::from_slice_strict(bytes)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                IssueType::Structure,
                format!("the request body is not valid {what}: {e}"),
            )
        })
}

/// A JSON body sent as `application/fhir+json` or `application/json`.
pub struct FhirJson(pub Value);

impl<S: Send + Sync> FromRequest<S> for FhirJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match content_type(req.headers()) {
            Some(ct) if JSON_TYPES.contains(&ct.as_str()) => {}
            Some(ct) => {
                return Err(ApiError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type {ct} is not supported; send application/fhir+json"),
                ))
            }
            None => {
                return Err(ApiError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "Content-Type is missing; send application/fhir+json",
                ))
            }
        }
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "the request body is empty; send JSON",
            ));
        }
        // Duplicate keys are refused (fhirbox_fhir::json explains why).
        fhirbox_fhir::json::from_slice_strict(&bytes)
            .map(FhirJson)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    IssueType::Structure,
                    format!("the request body is not valid JSON: {e}"),
                )
            })
    }
}

/// A JSON body that may be left out (`$validate?mode=delete`): `None` when
/// the body is empty, otherwise read like `FhirJson`.
pub struct OptionalFhirJson(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalFhirJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let no_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || (req.headers().get(header::CONTENT_LENGTH).is_none()
                && req.headers().get(header::TRANSFER_ENCODING).is_none());
        if no_body {
            return Ok(OptionalFhirJson(None));
        }
        FhirJson::from_request(req, state)
            .await
            .map(|FhirJson(v)| OptionalFhirJson(Some(v)))
    }
}

/// The parameters of `POST …/_search`: an `application/x-www-form-urlencoded`
/// body, decoded with the same limits as a query string.
pub struct SearchForm(pub Params);

impl<S: Send + Sync> FromRequest<S> for SearchForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match content_type(req.headers()).as_deref() {
            Some("application/x-www-form-urlencoded") | None => {}
            Some(other) => {
                return Err(ApiError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type {other} is not supported for _search; send the parameters as application/x-www-form-urlencoded"),
                ))
            }
        }
        let bytes = body_bytes(req, state).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::bad_request("the form body is not UTF-8"))?;
        Ok(SearchForm(parse_query(Some(text))?))
    }
}

/// A PATCH body: a JSON Patch (`application/json-patch+json`), a merge patch
/// (`application/merge-patch+json`), or either as `application/json`
/// (`fhirbox_rest::patch` says which forms it takes).
pub struct PatchBody(pub Patch);

impl<S: Send + Sync> FromRequest<S> for PatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media_type = content_type(req.headers())
            .filter(|ct| patch::MEDIA_TYPES.contains(&ct.as_str()))
            .ok_or_else(|| {
                ApiError::not_supported(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Content-Type {} is not supported for PATCH; send a JSON Patch (RFC 6902) as application/json-patch+json or a merge patch (RFC 7386) as application/merge-patch+json",
                        content_type(req.headers()).as_deref().unwrap_or("(missing)")
                    ),
                )
            })?;
        let bytes = body_bytes(req, state).await?;
        let body: Value = parse_json(&bytes, "JSON")?;
        Ok(PatchBody(Patch::from_media(&media_type, body)?))
    }
}

/// Path parameters whose rejection is an OperationOutcome.
pub struct FhirPath<T>(pub T);

impl<T, S> FromRequestParts<S> for FhirPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| FhirPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("the URL path is not valid: {e}")))
    }
}

/// The query parameters of a request, decoded once: the authentication
/// middleware decodes them to describe the request to access policies and
/// leaves them here for the handler; without it (the benchmark baseline)
/// they are decoded on the spot, the same way.
#[derive(Debug, Clone)]
pub struct FhirQuery(pub Params);

impl<S: Send + Sync> FromRequestParts<S> for FhirQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(parsed) = parts.extensions.get::<FhirQuery>() {
            return Ok(parsed.clone());
        }
        Ok(FhirQuery(parse_query(parts.uri.query())?))
    }
}

/// `BOX_WEB_BASE_URL`, the public base URL the operator configured, if any.
#[derive(Debug, Clone, Default)]
pub struct PublicBase(pub Option<Arc<str>>);

/// The public base of the FHIR API (`https://host/fhir`), for links and `Location`.
pub struct FhirBase(pub String);

impl<S> FromRequestParts<S> for FhirBase
where
    PublicBase: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let configured = PublicBase::from_ref(state);
        Ok(FhirBase(fhir_base(&configured, &parts.headers)))
    }
}

/// `BOX_WEB_BASE_URL` + `/fhir`, or `http://<Host>/fhir`.
pub fn fhir_base(configured: &PublicBase, headers: &HeaderMap) -> String {
    match &configured.0 {
        Some(base) => format!("{base}/fhir"),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("localhost");
            format!("http://{host}/fhir")
        }
    }
}

/// The `Prefer` headers of a request.
pub fn prefer(headers: &HeaderMap) -> Prefer {
    Prefer::parse(
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The version `If-Match` names, if any; a value that is not text is as
/// wrong as one that is not an ETag.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let value = headers
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or(""));
    Ok(parse_if_match(value)?)
}

/// The criteria of a conditional create (`If-None-Exist`, a query string
/// without the `?`), if any.
pub fn if_none_exist(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get("if-none-exist")
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                ApiError::bad_request(
                    "If-None-Exist must be a query string such as identifier=system|value",
                )
            })
        })
        .transpose()
}

/// The preconditions of a conditional read: `If-None-Match` (every header
/// line; one that is not text names no version of ours), and
/// `If-Modified-Since` as an HTTP-date, standing for the last microsecond
/// of its second; a date that does not parse is ignored, as RFC 9110
/// §13.1.3 requires.
pub fn read_conditions(headers: &HeaderMap) -> ReadConditions {
    let none_match: Vec<&str> = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    ReadConditions {
        none_match: (!none_match.is_empty()).then(|| NoneMatch::parse(&none_match.join(","))),
        modified_since: headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| httpdate::parse_http_date(text).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .and_then(|secs| secs.checked_mul(1_000_000)?.checked_add(999_999)),
    }
}

fn acceptable(media: &str) -> bool {
    matches!(
        media,
        "*/*"
            | "application/*"
            | "application/fhir+json"
            | "application/json"
            | "application/json-patch+json"
            | "application/merge-patch+json"
    )
}

/// Refuses FHIR requests that ask for a format other than JSON (406). Health,
/// metrics and the token endpoint speak their own media types and are left alone.
pub async fn negotiate(req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/fhir") {
        return next.run(req).await;
    }
    if let Some(format) = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("_format=")))
    {
        let format = format
            .replace("%2B", "+")
            .replace("%2b", "+")
            .replace("%2F", "/")
            .replace("%2f", "/");
        if !matches!(
            format.as_str(),
            "json" | "application/json" | "application/fhir+json" | "application/fhir json"
        ) {
            return ApiError::not_supported(
                StatusCode::NOT_ACCEPTABLE,
                format!("_format={format} is not supported; this server speaks JSON only (_format=json)"),
            )
            .into_response();
        }
    } else if let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    {
        if !accept.split(',').map(media_type).any(|m| acceptable(&m)) {
            return ApiError::not_supported(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "Accept {accept} cannot be served; this server returns application/fhir+json"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_prefer_and_if_match_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        h.insert(header::IF_MATCH, HeaderValue::from_static("W/\"4\""));
        let p = prefer(&h);
        assert_eq!(p.return_, fhirbox_rest::ReturnPreference::Minimal);
        assert!(p.strict);
        assert_eq!(if_match(&h).unwrap(), Some(4));
        h.insert(header::IF_MATCH, HeaderValue::from_static("four"));
        assert_eq!(if_match(&h).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }

    #[tokio::test]
    async fn the_query_the_middleware_decoded_is_the_one_handlers_get() {
        let request = axum::http::Request::get("/fhir/Patient?_id=a,b&_count=2")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let FhirQuery(fresh) = FhirQuery::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(
            fresh,
            vec![("_id".into(), "a,b".into()), ("_count".into(), "2".into())]
        );
        // Decoded once: what the middleware left is used as it is.
        parts
            .extensions
            .insert(FhirQuery(vec![("_id".into(), "a".into())]));
        let FhirQuery(kept) = FhirQuery::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(kept, vec![("_id".to_owned(), "a".to_owned())]);
        // Without the middleware, the same limits hold: too many parameters is a 400.
        let many = vec!["_id=a"; 65].join("&");
        let (mut bad, ()) = axum::http::Request::get(format!("/fhir/Patient?{many}"))
            .body(())
            .unwrap()
            .into_parts();
        let e = FhirQuery::from_request_parts(&mut bad, &())
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
