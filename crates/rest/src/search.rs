//! Search and history parameters (FHIR R4 §3.1.1): parsing, validation and the
//! links of result bundles. Only parameters the store really applies are
//! accepted; the rest are ignored (reported by their absence from the `self`
//! link) or, with `Prefer: handling=strict`, refused.

use fhirbox_fhir::datetime::parse_range;
use fhirbox_store::{Cursor, HistoryQuery, HistoryScope, SearchQuery, SortKey, TimeBound};

use crate::error::RestError;

/// Parameters every search supports, for the CapabilityStatement and errors.
pub const SEARCH_PARAMETERS: &[(&str, &str, &str)] = &[
    ("_id", "token", "Logical id of the resource"),
    (
        "_lastUpdated",
        "date",
        "When the resource version last changed",
    ),
];
/// Result parameters accepted by search.
pub const RESULT_PARAMETERS: &[&str] =
    &["_count", "_sort", "_total", "_cursor", "_format", "_pretty"];

pub const DEFAULT_COUNT: u32 = 50;
pub const MAX_COUNT: u32 = 1000;

pub type Params = Vec<(String, String)>;

/// Parameters history applies.
pub const HISTORY_PARAMETERS: &[&str] = &["_count", "_since", "_cursor", "_format", "_pretty"];

/// What a route does with its query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryUse {
    /// Type or system search.
    Search,
    /// Instance, type or system history.
    History,
    /// Read, vread, writes and bundles: no parameter selects data.
    Nothing,
}

/// True when a route of this kind applies the query parameter `name`.
/// Access policies see only these (docs/security.md), so a policy can never
/// pin a parameter the handler would ignore.
pub fn acted_on(kind: QueryUse, name: &str) -> bool {
    match kind {
        QueryUse::Search => {
            SEARCH_PARAMETERS.iter().any(|(p, _, _)| *p == name)
                || RESULT_PARAMETERS.contains(&name)
        }
        QueryUse::History => HISTORY_PARAMETERS.contains(&name),
        QueryUse::Nothing => false,
    }
}

/// Most parameters one query string may carry.
pub const MAX_PARAMETERS: usize = 64;
/// Most comma-separated values one parameter may carry.
pub const MAX_VALUES: usize = 100;

/// Parses a query string into pairs; malformed encoding is a 400, and so is
/// a query above `MAX_PARAMETERS` parameters or `MAX_VALUES` values in one
/// parameter, so no request can ask for unbounded work.
pub fn parse_query(raw: Option<&str>) -> Result<Params, RestError> {
    let params: Params = match raw {
        None | Some("") => return Ok(Vec::new()),
        Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
            RestError::bad_request(format!("the query string cannot be decoded: {e}"))
        })?,
    };
    if params.len() > MAX_PARAMETERS {
        return Err(RestError::bad_request(format!(
            "the query has {} parameters; at most {MAX_PARAMETERS} are accepted",
            params.len()
        )));
    }
    for (name, value) in &params {
        let values = value.split(',').count();
        if values > MAX_VALUES {
            return Err(RestError::bad_request(format!(
                "the parameter {name:?} has {values} values; at most {MAX_VALUES} are accepted in one parameter"
            )));
        }
    }
    Ok(params)
}

fn parse_count(value: &str) -> Result<u32, RestError> {
    value.parse::<u32>().map(|n| n.min(MAX_COUNT)).map_err(|_| {
        RestError::bad_request(format!("_count={value} is not a non-negative whole number"))
    })
}

fn unknown(name: &str, strict: bool, supported: &str) -> Result<(), RestError> {
    if strict {
        Err(RestError::bad_request(format!(
            "the search parameter {name:?} is not supported (Prefer: handling=strict); supported: {supported}"
        )))
    } else {
        Ok(())
    }
}

/// A parsed search and the parameters to repeat in its links.
#[derive(Debug)]
pub struct SearchRequest {
    pub query: SearchQuery,
    /// The parameters that were applied, in order, without `_cursor`.
    pub applied: Params,
}

/// Turns search parameters into a store query.
pub fn parse_search(
    resource_type: Option<&str>,
    params: &Params,
    strict: bool,
) -> Result<SearchRequest, RestError> {
    let mut query = SearchQuery {
        resource_type: resource_type.map(str::to_owned),
        count: DEFAULT_COUNT,
        with_total: true,
        ..Default::default()
    };
    let mut applied = Vec::new();
    let supported = "_id, _lastUpdated, _count, _sort (_id, _lastUpdated), _total";
    for (name, value) in params {
        match name.as_str() {
            "_id" => {
                let ids: Vec<String> = value
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if ids.is_empty() {
                    return Err(RestError::bad_request("_id needs at least one id"));
                }
                // Repeated _id parameters are ANDed: keep ids present in both.
                query.ids = Some(match query.ids.take() {
                    Some(prev) => {
                        let now: std::collections::HashSet<&String> = ids.iter().collect();
                        prev.into_iter().filter(|id| now.contains(id)).collect()
                    }
                    None => ids,
                });
            }
            "_lastUpdated" => query
                .last_updated
                .extend(parse_date_bound("_lastUpdated", value)?),
            "_count" => query.count = parse_count(value)?,
            "_sort" => {
                let (descending, key) = match value.strip_prefix('-') {
                    Some(k) => (true, k),
                    None => (false, value.as_str()),
                };
                query.sort = match key {
                    "_id" => SortKey::Id,
                    "_lastUpdated" => SortKey::LastUpdated,
                    other => {
                        return Err(RestError::bad_request(format!(
                            "_sort={other} is not supported; sort by _id or _lastUpdated (prefix - for descending)"
                        )))
                    }
                };
                query.descending = descending;
            }
            "_total" => {
                query.with_total = match value.as_str() {
                    "none" => false,
                    "estimate" | "accurate" => true,
                    other => {
                        return Err(RestError::bad_request(format!(
                            "_total={other} is not valid; use none, estimate or accurate"
                        )))
                    }
                }
            }
            "_cursor" => {
                query.cursor = Some(Cursor::decode(value)?);
                continue;
            }
            "_format" | "_pretty" => continue,
            other => {
                unknown(other, strict, supported)?;
                continue;
            }
        }
        applied.push((name.clone(), value.clone()));
    }
    if query.ids.as_ref().is_some_and(Vec::is_empty) {
        // Contradictory _id parameters match nothing: an impossible id keeps SQL simple.
        query.ids = Some(vec![String::new()]);
    }
    Ok(SearchRequest { query, applied })
}

/// `_lastUpdated=[prefix]value` as store bounds.
fn parse_date_bound(name: &str, value: &str) -> Result<Vec<TimeBound>, RestError> {
    let (prefix, date) =
        if value.len() > 2 && value.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
            value.split_at(2)
        } else {
            ("eq", value)
        };
    let range = parse_range(date).map_err(|e| RestError::bad_request(format!("{name}: {e}")))?;
    Ok(match prefix {
        "eq" => vec![
            TimeBound::AtOrAfter(range.start),
            TimeBound::Before(range.end),
        ],
        "gt" => vec![TimeBound::AtOrAfter(range.end)],
        "ge" => vec![TimeBound::AtOrAfter(range.start)],
        "lt" => vec![TimeBound::Before(range.start)],
        "le" => vec![TimeBound::Before(range.end)],
        other => {
            return Err(RestError::bad_request(format!(
                "{name}: the prefix {other:?} is not supported; use eq, gt, ge, lt or le"
            )))
        }
    })
}

/// Turns history parameters into a store query.
pub fn parse_history(
    scope: HistoryScope,
    params: &Params,
    strict: bool,
) -> Result<(HistoryQuery, Params), RestError> {
    let mut query = HistoryQuery {
        scope,
        since: None,
        count: DEFAULT_COUNT,
        cursor: None,
    };
    let mut applied = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_count" => query.count = parse_count(value)?,
            "_since" => {
                let range = parse_range(value)
                    .map_err(|e| RestError::bad_request(format!("_since: {e}")))?;
                query.since = Some(range.start);
            }
            "_cursor" => {
                query.cursor = Some(Cursor::decode(value)?);
                continue;
            }
            "_format" | "_pretty" => continue,
            other => {
                unknown(other, strict, "_count, _since")?;
                continue;
            }
        }
        applied.push((name.clone(), value.clone()));
    }
    Ok((query, applied))
}

/// `<path>?<applied params>[&_cursor=…]`.
pub fn link(path: &str, applied: &Params, cursor: Option<&Cursor>) -> String {
    let mut pairs: Vec<(&str, String)> = applied
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if let Some(c) = cursor {
        pairs.push(("_cursor", c.encode()));
    }
    if pairs.is_empty() {
        return path.to_owned();
    }
    let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    format!("{path}?{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_supported_parameters() {
        let req = parse_search(
            Some("Patient"),
            &params(&[
                ("_id", "a,b"),
                ("_count", "5"),
                ("_sort", "-_lastUpdated"),
                ("_lastUpdated", "ge2024"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(req.query.ids, Some(vec!["a".into(), "b".into()]));
        assert_eq!(req.query.count, 5);
        assert_eq!(req.query.sort, SortKey::LastUpdated);
        assert!(req.query.descending);
        assert_eq!(req.query.last_updated.len(), 1);
        assert_eq!(req.applied.len(), 4);
    }

    #[test]
    fn unknown_parameters_are_ignored_unless_strict() {
        let p = params(&[("name", "x")]);
        let lenient = parse_search(Some("Patient"), &p, false).unwrap();
        assert!(lenient.applied.is_empty());
        let strict = parse_search(Some("Patient"), &p, true).unwrap_err();
        assert!(strict.message.contains("\"name\""));
    }

    #[test]
    fn rejects_bad_values() {
        for (k, v) in [
            ("_count", "-1"),
            ("_sort", "name"),
            ("_total", "some"),
            ("_lastUpdated", "ne2024"),
            ("_lastUpdated", "bad"),
            ("_cursor", "zzz"),
        ] {
            assert!(
                parse_search(None, &params(&[(k, v)]), false).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn count_is_capped() {
        let req = parse_search(None, &params(&[("_count", "999999")]), false).unwrap();
        assert_eq!(req.query.count, MAX_COUNT);
    }
}
