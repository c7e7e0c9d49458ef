//! FHIR responses over HTTP: the content type, and the one place a REST
//! `Reply` becomes a response (`ETag`, `Last-Modified`, `Location`).

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use fhirbox_rest::Reply;

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

/// Renders a successful interaction.
pub fn render(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = match reply.body {
        Some(body) => fhir_json(status, body),
        None => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::ETAG, reply.etag),
        (header::LAST_MODIFIED, reply.last_modified),
        (header::LOCATION, reply.location),
    ] {
        insert(headers, name, value);
    }
    response
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: Option<String>) {
    if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_keeps_its_status_body_and_version_headers() {
        let reply = Reply {
            status: 201,
            body: Some("{}".into()),
            etag: Some("W/\"1\"".into()),
            last_modified: Some("Thu, 01 Jan 1970 00:00:00 GMT".into()),
            location: Some("http://x/fhir/Patient/a/_history/1".into()),
        };
        let r = render(reply);
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], FHIR_JSON);
        assert_eq!(r.headers()[header::ETAG], "W/\"1\"");
        assert_eq!(
            r.headers()[header::LOCATION],
            "http://x/fhir/Patient/a/_history/1"
        );
        let empty = render(Reply {
            status: 204,
            body: None,
            etag: None,
            last_modified: None,
            location: None,
        });
        assert_eq!(empty.status(), StatusCode::NO_CONTENT);
        assert!(empty.headers().get(header::CONTENT_TYPE).is_none());
        assert!(empty.headers().get(header::ETAG).is_none());
    }
}
