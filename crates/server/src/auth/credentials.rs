//! Reading credentials from the `Authorization` header: HTTP Basic
//! (RFC 7617) and Bearer tokens (RFC 6750). Schemes are case-insensitive.

use axum::http::{header, HeaderMap};
use base64::Engine;
use secrecy::SecretString;

/// What a request presented.
pub enum Credentials {
    Basic { id: String, secret: SecretString },
    Bearer(String),
}

/// Why a header could not be used; the reason is logged and counted, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    Missing,
    Malformed,
}

/// Parses the `Authorization` header.
pub fn from_headers(headers: &HeaderMap) -> Result<Credentials, HeaderProblem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(HeaderProblem::Missing)?;
    let text = value.to_str().map_err(|_| HeaderProblem::Malformed)?.trim();
    let (scheme, rest) = text.split_once(' ').ok_or(HeaderProblem::Malformed)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        parse_basic(rest).ok_or(HeaderProblem::Malformed)
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Ok(Credentials::Bearer(rest.to_owned()))
    } else {
        Err(HeaderProblem::Malformed)
    }
}

/// Decodes `base64(id ":" secret)`; the id may not contain a colon (RFC 7617 §2).
pub fn parse_basic(encoded: &str) -> Option<Credentials> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (id, secret) = text.split_once(':')?;
    if id.is_empty() {
        return None;
    }
    Some(Credentials::Basic {
        id: id.to_owned(),
        secret: SecretString::from(secret.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use secrecy::ExposeSecret;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn parses_basic_in_any_case_and_keeps_colons_in_the_secret() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("basic:se:cret");
        for scheme in ["Basic", "basic", "BASIC"] {
            match from_headers(&headers(&format!("{scheme} {encoded}"))) {
                Ok(Credentials::Basic { id, secret }) => {
                    assert_eq!(id, "basic");
                    assert_eq!(secret.expose_secret(), "se:cret");
                }
                _ => panic!("{scheme} not parsed"),
            }
        }
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            from_headers(&HeaderMap::new()).err(),
            Some(HeaderProblem::Missing)
        );
        for bad in [
            "Basic",
            "Basic !!!",
            "Digest abc",
            "Bearer ",
            "Basic OnNlY3JldA==",
        ] {
            assert_eq!(
                from_headers(&headers(bad)).err(),
                Some(HeaderProblem::Malformed),
                "{bad}"
            );
        }
        assert!(
            matches!(from_headers(&headers("bearer abc.def.ghi")), Ok(Credentials::Bearer(t)) if t == "abc.def.ghi")
        );
    }
}
