//! Building FHIR responses: content type, ETag / Last-Modified / Location
//! headers, and the `Prefer: return=` choice (FHIR R4 §3.1.0.8).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use fhirbox_fhir::OperationOutcome;
use fhirbox_store::StoredResource;

use crate::error::ApiError;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A response with a FHIR JSON body.
pub fn fhir_json(status: StatusCode, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// `Prefer: return=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The parts of the `Prefer` header fhirbox honours.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefer {
    pub return_: ReturnPreference,
    /// `handling=strict`: unknown search parameters are errors.
    pub strict: bool,
}

impl Prefer {
    pub fn from_headers(headers: &HeaderMap) -> Prefer {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer") {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split([',', ';']) {
                let token = token.trim();
                let Some((key, val)) = token.split_once('=') else {
                    continue;
                };
                let val = val.trim().trim_matches('"');
                match key.trim() {
                    "return" => {
                        prefer.return_ = match val {
                            "minimal" => ReturnPreference::Minimal,
                            "OperationOutcome" => ReturnPreference::OperationOutcome,
                            _ => ReturnPreference::Representation,
                        }
                    }
                    "handling" => prefer.strict = val == "strict",
                    _ => {}
                }
            }
        }
        prefer
    }
}

/// `W/"<version>"`.
pub fn etag(version_id: i64) -> String {
    format!("W/\"{version_id}\"")
}

/// Parses an `If-Match` value (`W/"3"`, `"3"` or `3`) into a version id.
pub fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    parse_version_tag(text).map(Some).ok_or_else(|| {
        ApiError::bad_request(format!(
            "If-Match must be an ETag such as W/\"3\" naming a version; got {text:?}"
        ))
    })
}

/// Parses `W/"3"`, `"3"` or `3`.
pub fn parse_version_tag(text: &str) -> Option<i64> {
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse::<i64>().ok().filter(|v| *v > 0)
}

/// HTTP-date for `Last-Modified` (RFC 9110 §5.6.7).
pub fn http_date(micros: i64) -> String {
    use time::format_description::well_known::Rfc2822;
    let t = time::OffsetDateTime::from_unix_timestamp(micros / 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // RFC 2822 with a +0000 zone; HTTP wants the literal "GMT".
    t.format(&Rfc2822)
        .map(|s| s.replace("+0000", "GMT"))
        .unwrap_or_default()
}

/// Sets `ETag` and `Last-Modified` for a stored version.
pub fn version_headers(headers: &mut HeaderMap, stored: &StoredResource) {
    if let Ok(v) = HeaderValue::from_str(&etag(stored.version_id)) {
        headers.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(stored.last_updated)) {
        headers.insert(header::LAST_MODIFIED, v);
    }
}

/// The answer to a read or a successful write of one resource.
pub fn resource_response(
    status: StatusCode,
    stored: &StoredResource,
    location: Option<String>,
    preference: ReturnPreference,
    outcome_text: &str,
) -> Response {
    let mut response = match preference {
        ReturnPreference::Representation => {
            fhir_json(status, crate::hooks::public_body(stored).into_owned())
        }
        ReturnPreference::OperationOutcome => fhir_json(
            status,
            OperationOutcome::information(outcome_text)
                .to_json()
                .to_string(),
        ),
        ReturnPreference::Minimal => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r
        }
    };
    version_headers(response.headers_mut(), stored);
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_tags() {
        assert_eq!(parse_version_tag("W/\"3\""), Some(3));
        assert_eq!(parse_version_tag("\"12\""), Some(12));
        assert_eq!(parse_version_tag("7"), Some(7));
        assert_eq!(parse_version_tag("W/\"x\""), None);
        assert_eq!(parse_version_tag("0"), None);
    }

    #[test]
    fn parses_prefer() {
        let mut h = HeaderMap::new();
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        let p = Prefer::from_headers(&h);
        assert_eq!(p.return_, ReturnPreference::Minimal);
        assert!(p.strict);
        assert_eq!(
            Prefer::from_headers(&HeaderMap::new()).return_,
            ReturnPreference::Representation
        );
    }

    #[test]
    fn http_date_uses_gmt() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
