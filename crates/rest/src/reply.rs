//! What a successful interaction answers, before it becomes HTTP: status,
//! FHIR JSON body, `ETag` / `Last-Modified` / `Location`, and the
//! `Prefer: return=` choice (FHIR R4 §3.1.0.8). The server renders a
//! `Reply` into a response in one place.

use fhirbox_fhir::OperationOutcome;
use fhirbox_store::StoredResource;

use crate::error::RestError;

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200, 201, 204, or 304 for a conditional read.
    pub status: u16,
    /// FHIR JSON text; `None` for an empty body.
    pub body: Option<String>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub location: Option<String>,
}

impl Reply {
    /// A 200 with a FHIR JSON body and no version headers.
    pub fn json(body: String) -> Reply {
        Reply {
            status: 200,
            body: Some(body),
            etag: None,
            last_modified: None,
            location: None,
        }
    }
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
    /// Reads every `Prefer` header value (RFC 7240).
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Prefer {
        let mut prefer = Prefer::default();
        for text in values {
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
pub fn parse_if_match(value: Option<&str>) -> Result<Option<i64>, RestError> {
    let Some(text) = value.map(str::trim) else {
        return Ok(None);
    };
    parse_version_tag(text).map(Some).ok_or_else(|| {
        RestError::bad_request(format!(
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

/// The preconditions of a conditional read (R4 §3.1.0.1.5, RFC 9110
/// §13.1.2–3): when they say the client's copy is current, the read answers
/// 304 Not Modified with the version headers and no body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadConditions {
    /// `If-None-Match`.
    pub none_match: Option<NoneMatch>,
    /// `If-Modified-Since`, in microseconds since the epoch: an HTTP date,
    /// which has whole seconds, stands for the last microsecond of its
    /// second.
    pub modified_since: Option<i64>,
}

/// The versions an `If-None-Match` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoneMatch {
    /// `*`: any current version.
    Any,
    /// A list of ETags; one that names no version of this server never
    /// matches.
    Versions(Vec<i64>),
}

impl NoneMatch {
    /// Reads `*` or a comma-separated list of ETags (`W/"3", "4"`).
    pub fn parse(text: &str) -> NoneMatch {
        if text.trim() == "*" {
            return NoneMatch::Any;
        }
        NoneMatch::Versions(
            text.split(',')
                .filter_map(|tag| parse_version_tag(tag.trim()))
                .collect(),
        )
    }
}

impl ReadConditions {
    /// Whether the client already holds `stored`. `If-None-Match` decides
    /// when present; `If-Modified-Since` only without it (RFC 9110 §13.2.2).
    pub fn not_modified(&self, stored: &StoredResource) -> bool {
        match &self.none_match {
            Some(NoneMatch::Any) => true,
            Some(NoneMatch::Versions(versions)) => versions.contains(&stored.version_id),
            None => self
                .modified_since
                .is_some_and(|since| stored.last_updated <= since),
        }
    }
}

/// The 304 answer to a conditional read the client's copy satisfies.
pub fn not_modified(stored: &StoredResource) -> Reply {
    Reply {
        status: 304,
        body: None,
        etag: Some(etag(stored.version_id)),
        last_modified: Some(http_date(stored.last_updated)),
        location: None,
    }
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

/// The answer to a read or a successful write of one resource. The body is
/// the stored one as a client may see it (`hooks::public_body`).
pub fn resource_reply(
    status: u16,
    stored: &StoredResource,
    location: Option<String>,
    preference: ReturnPreference,
    outcome_text: &str,
) -> Reply {
    let body = match preference {
        ReturnPreference::Representation => Some(crate::hooks::public_body(stored).into_owned()),
        ReturnPreference::OperationOutcome => Some(
            OperationOutcome::information(outcome_text)
                .to_json()
                .to_string(),
        ),
        ReturnPreference::Minimal => None,
    };
    Reply {
        status,
        body,
        etag: Some(etag(stored.version_id)),
        last_modified: Some(http_date(stored.last_updated)),
        location,
    }
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
        assert_eq!(parse_if_match(Some(" W/\"2\" ")).unwrap(), Some(2));
        assert_eq!(parse_if_match(None).unwrap(), None);
        assert!(parse_if_match(Some("abc")).is_err());
    }

    #[test]
    fn parses_prefer() {
        let p = Prefer::parse(["return=minimal, handling=strict"]);
        assert_eq!(p.return_, ReturnPreference::Minimal);
        assert!(p.strict);
        let p = Prefer::parse(["handling=lenient", "return=OperationOutcome"]);
        assert_eq!(p.return_, ReturnPreference::OperationOutcome);
        assert!(!p.strict);
        assert_eq!(
            Prefer::parse(std::iter::empty::<&str>()).return_,
            ReturnPreference::Representation
        );
    }

    #[test]
    fn read_conditions_follow_rfc_9110() {
        let stored = StoredResource {
            resource_type: "Patient".into(),
            id: "a".into(),
            version_id: 3,
            last_updated: 1_700_000_000_500_000,
            deleted: false,
            body: "{}".into(),
        };
        let none_match = |text: &str| ReadConditions {
            none_match: Some(NoneMatch::parse(text)),
            modified_since: None,
        };
        assert!(none_match("W/\"3\"").not_modified(&stored));
        assert!(none_match("\"2\", W/\"3\"").not_modified(&stored));
        assert!(none_match("*").not_modified(&stored));
        assert!(!none_match("W/\"2\"").not_modified(&stored));
        assert!(!none_match("W/\"abc\"").not_modified(&stored));
        let since = |micros| ReadConditions {
            none_match: None,
            modified_since: Some(micros),
        };
        assert!(since(1_700_000_000_500_000).not_modified(&stored));
        assert!(!since(1_700_000_000_499_999).not_modified(&stored));
        // If-None-Match decides when both are sent.
        let both = ReadConditions {
            none_match: Some(NoneMatch::parse("W/\"2\"")),
            modified_since: Some(1_800_000_000_000_000),
        };
        assert!(!both.not_modified(&stored));
        assert!(!ReadConditions::default().not_modified(&stored));
        let reply = not_modified(&stored);
        assert_eq!((reply.status, reply.body), (304, None));
        assert_eq!(reply.etag.as_deref(), Some("W/\"3\""));
    }

    #[test]
    fn http_date_uses_gmt() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
