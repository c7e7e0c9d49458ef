//! Search and history parameters (FHIR R4 §3.1.1): parsing, validation and the
//! links of result bundles. Every parameter HL7 defines for the type is
//! searched through the index (docs/search.md); an unknown one is ignored
//! (and left out of the `self` link) or, with `Prefer: handling=strict`,
//! refused. A malformed value is always a 400 that names the parameter.

use fhirbox_fhir::datetime::parse_range;
use fhirbox_fhir::search::{normalize, ParamType, SearchParam, SearchParams, UNSUPPORTED};
use fhirbox_store::{
    CompositeFirst, CompositeTest, Condition, Cursor, Filter, HistoryQuery, HistoryScope,
    IndexKind, Matching, RangeOp, SearchQuery, SortBy, SortField, SortKey, TimeBound, TotalMode,
    UriOp,
};

use fhirbox_auth::access::RequestFacts;

use crate::error::RestError;
use crate::include::Include;
use crate::shape::{self, Shape};

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
pub const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_sort",
    "_total",
    "_cursor",
    "_format",
    "_pretty",
    "_type",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
];

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

/// True when a route of this kind (on `resource_type`, `None` for the
/// system level) applies the query parameter `name` (with or without a
/// modifier). Access policies see only these (docs/security.md), so a
/// policy can never pin a parameter the handler would ignore.
pub fn acted_on(kind: QueryUse, resource_type: Option<&str>, name: &str) -> bool {
    match kind {
        QueryUse::Search => {
            let code = name.split(':').next().unwrap_or(name);
            SEARCH_PARAMETERS.iter().any(|(p, _, _)| *p == name)
                || RESULT_PARAMETERS.contains(&name)
                || definition(resource_type, code).is_some()
        }
        QueryUse::History => HISTORY_PARAMETERS.contains(&name),
        QueryUse::Nothing => false,
    }
}

/// The parameters every type has, searchable at the system level too.
const COMMON: &[&str] = &["_tag", "_profile", "_security", "_source"];

/// The definition of `code` for a search of `resource_type` (at the
/// system level, the common parameters only).
fn definition(resource_type: Option<&str>, code: &str) -> Option<&'static SearchParam> {
    let table = SearchParams::r4();
    match resource_type {
        Some(t) => table.get(t, code).map(|p| &**p),
        None if COMMON.contains(&code) => table.get("Patient", code).map(|p| &**p),
        None => None,
    }
}

/// Most parameters one query string may carry.
pub const MAX_PARAMETERS: usize = 64;
/// Most comma-separated values one parameter may carry.
pub const MAX_VALUES: usize = 100;
/// Most values (conditions) one search may carry across all its parameters:
/// each is a subquery with a few bound values, and the database limits a
/// statement's bound values (SQLite to 32,766).
pub const MAX_CONDITIONS: usize = 1000;

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
    /// Parameters this server does not know, ignored (lenient handling).
    pub ignored: Vec<String>,
    /// `_include` and `_revinclude`, in order.
    pub includes: Vec<Include>,
    /// The types chains and `_has` search, which the caller must be allowed
    /// to search too.
    pub chained: Vec<String>,
    /// What part of each match the reply carries (`_summary`, `_elements`).
    pub shape: Option<Shape>,
}

/// The criteria of a conditional interaction (`If-None-Exist`, a
/// transaction entry's `ifNoneExist`; R4 §3.1.0.8): a search of
/// `resource_type` by its own parameters. Parsed strictly, since an ignored
/// parameter would widen the match to resources the client did not mean,
/// and without result parameters, which select no resource. `what` names
/// the criteria in errors.
pub fn parse_criteria(
    resource_type: &str,
    raw: &str,
    what: &str,
    answer_existing: bool,
) -> Result<Matching, RestError> {
    // `_format` and `_pretty` shape an answer and select nothing.
    let params: Params = parse_query(Some(raw.trim_start_matches('?')))
        .map_err(|e| e.prefixed(what))?
        .into_iter()
        .filter(|(name, _)| name != "_format" && name != "_pretty")
        .collect();
    if params.is_empty() {
        return Err(RestError::bad_request(format!(
            "{what} has no search parameters; give criteria such as identifier=system|value"
        )));
    }
    if let Some((name, _)) = params
        .iter()
        .find(|(name, _)| RESULT_PARAMETERS.contains(&name.as_str()))
    {
        return Err(RestError::bad_request(format!(
            "{what} cannot use {name}: it selects no resource; give search parameters only"
        )));
    }
    let request = parse_search(Some(resource_type), &params, true).map_err(|e| e.prefixed(what))?;
    if !request.chained.is_empty() {
        return Err(RestError::bad_request(format!(
            "{what} cannot use a chain or _has; give parameters of {resource_type} itself"
        )));
    }
    let mut canonical = request.applied;
    canonical.sort();
    let criteria = serde_urlencoded::to_string(&canonical)
        .map_err(|e| RestError::bad_request(format!("{what}: {e}")))?;
    Ok(Matching {
        // Matches are told apart from none and from several, never counted.
        query: SearchQuery {
            total: TotalMode::None,
            ..request.query
        },
        criteria: format!("{resource_type}?{criteria}"),
        answer_existing,
        check_target: None,
        expected: None,
    })
}

/// The search a conditional interaction runs, as access policies see it:
/// `GET /fhir/{type}?{criteria}` with the parameters a search applies. It is
/// authorized beside the write, so a client that may create but not search
/// cannot learn through `If-None-Exist` what is stored (docs/security.md).
pub fn criteria_facts(resource_type: &str, criteria: &str) -> Result<RequestFacts, RestError> {
    let raw = criteria.trim_start_matches('?');
    let query = parse_query(Some(raw))?
        .into_iter()
        .filter(|(name, _)| acted_on(QueryUse::Search, Some(resource_type), name))
        .collect();
    Ok(RequestFacts::new(
        "GET",
        Some(resource_type),
        None,
        None,
        Some(raw),
        query,
    ))
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
        ..Default::default()
    };
    let mut total = None;
    let mut applied = Vec::new();
    let mut ignored = Vec::new();
    let mut includes = Vec::new();
    let mut chained = Vec::new();
    let mut conditions = 0;
    let supported = "the search parameters of the type (GET /fhir/metadata lists them), _id, _lastUpdated, _count, _sort, _total, _include, _revinclude, _summary, _elements";
    // `_type` first: it decides which parameters the others are.
    for (_, value) in params
        .iter()
        .filter(|(n, _)| n == "_type" && resource_type.is_none())
    {
        for t in value.split(',').map(str::trim) {
            if !fhirbox_fhir::is_known_resource_type(t) {
                return Err(RestError::bad_request(format!(
                    "_type: {t:?} is not a resource type this server knows"
                )));
            }
            query.types.push(t.to_owned());
        }
    }
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
                let scope = resource_type.or(match query.types.as_slice() {
                    [only] => Some(only.as_str()),
                    _ => None,
                });
                let mut fields = parse_sort(scope, value)?;
                match fields.as_slice() {
                    // One key of the resource row: the plain sorts, which page
                    // by that column.
                    [SortField {
                        by: by @ (SortBy::Id | SortBy::LastUpdated),
                        descending,
                    }] => {
                        query.sort = if *by == SortBy::Id {
                            SortKey::Id
                        } else {
                            SortKey::LastUpdated
                        };
                        query.descending = *descending;
                        query.sort_by.clear();
                    }
                    _ => {
                        query.sort = SortKey::Created;
                        query.descending = false;
                        query.sort_by = std::mem::take(&mut fields);
                    }
                }
            }
            "_total" => {
                total = match value.as_str() {
                    "none" => Some(TotalMode::None),
                    "estimate" | "accurate" => Some(TotalMode::Accurate),
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
            // R4 §3.1.1.5.10: searching contained resources is not offered;
            // ignoring it would answer a different question.
            "_contained" | "_containedType" => {
                return Err(RestError::not_supported(
                    crate::error::ErrorKind::BadRequest,
                    format!(
                        "{name} is not supported: this server searches and returns resources, not the resources they contain"
                    ),
                ))
            }
            // Read after the loop, by `shape::parse`.
            "_summary" | "_elements" => {}
            // Read before the loop.
            "_type" if resource_type.is_none() => {}
            include
                if ["_include", "_revinclude"]
                    .iter()
                    .any(|i| include == *i || include.starts_with(&format!("{i}:"))) =>
            {
                let searched: Vec<&str> = match resource_type {
                    Some(t) => vec![t],
                    None => query.types.iter().map(String::as_str).collect(),
                };
                includes.push(Include::parse(include, value, &searched)?);
            }
            other => {
                let (code, modifier) = match other.split_once(':') {
                    Some((c, m)) => (c, Some(m)),
                    None => (other, None),
                };
                // With one `_type`, a system search knows that type's parameters.
                let scope = resource_type.or(match query.types.as_slice() {
                    [only] => Some(only.as_str()),
                    _ => None,
                });
                if other.starts_with("_has:") || other.contains('.') {
                    let Some(scope) = scope else {
                        return Err(RestError::bad_request(format!(
                            "{other}: a chain or _has needs a search of one resource type"
                        )));
                    };
                    query
                        .filters
                        .push(linked(scope, other, value, 0, &mut chained, &mut conditions)?);
                    applied.push((name.clone(), value.clone()));
                    continue;
                }
                match definition(scope, code) {
                    Some(param) => {
                        let f = filter(param, modifier, value)?;
                        conditions += f.any_of.len();
                        if conditions > MAX_CONDITIONS {
                            return Err(RestError::bad_request(format!(
                                "the search has more than {MAX_CONDITIONS} values across its parameters; split it into several searches"
                            )));
                        }
                        query.filters.push(f);
                    }
                    None => {
                        unknown(other, strict, supported)?;
                        ignored.push(other.to_owned());
                        continue;
                    }
                }
            }
        }
        applied.push((name.clone(), value.clone()));
    }
    let searched: Vec<&str> = match resource_type {
        Some(t) => vec![t],
        None => query.types.iter().map(String::as_str).collect(),
    };
    let shaping = shape::parse(&searched, params, true)?;
    if shaping.count_only {
        query.count = 0;
    }
    // Without `_total`, a search counts up to a bound; `_count=0` and
    // `_summary=count` ask for the total alone, so they get the whole count
    // (docs/search.md "Totals").
    query.total = total.unwrap_or(if query.count == 0 {
        TotalMode::Accurate
    } else {
        TotalMode::Bounded
    });
    if query.ids.as_ref().is_some_and(Vec::is_empty) {
        // Contradictory _id parameters match nothing: an impossible id keeps SQL simple.
        query.ids = Some(vec![String::new()]);
    }
    Ok(SearchRequest {
        query,
        applied,
        ignored,
        includes,
        chained,
        shape: shaping.shape,
    })
}

/// Most keys one `_sort` may have.
pub const MAX_SORT_KEYS: usize = 4;

/// `_sort=key[,key…]`, each `-` prefixed for descending: `_id`,
/// `_lastUpdated` or a search parameter of `scope` (R4 §3.1.1.5.1).
fn parse_sort(scope: Option<&str>, value: &str) -> Result<Vec<SortField>, RestError> {
    let bad = |why: String| RestError::bad_request(format!("_sort={value}: {why}"));
    let keys: Vec<&str> = value.split(',').map(str::trim).collect();
    if keys.len() > MAX_SORT_KEYS {
        return Err(bad(format!("sort by at most {MAX_SORT_KEYS} keys")));
    }
    let mut fields = Vec::with_capacity(keys.len());
    for key in keys {
        let (descending, code) = match key.strip_prefix('-') {
            Some(k) => (true, k),
            None => (false, key),
        };
        let by = match code {
            "" => return Err(bad("a sort key is empty".into())),
            "_id" => SortBy::Id,
            "_lastUpdated" => SortBy::LastUpdated,
            code => {
                let Some(scope) = scope else {
                    return Err(bad(format!(
                        "sorting by {code} needs a search of one resource type; a system search sorts by _id or _lastUpdated"
                    )));
                };
                let param = definition(Some(scope), code).ok_or_else(|| {
                    bad(format!(
                        "{scope} has no search parameter {code:?} (GET /fhir/metadata lists them)"
                    ))
                })?;
                match index_kind(param.param_type) {
                    Some(kind) if kind != IndexKind::Composite => SortBy::Param {
                        param: param.code.clone(),
                        kind,
                    },
                    _ => {
                        return Err(bad(format!(
                            "{code} is a {} parameter, which has no order; sort by a string, token, date, number, quantity, uri or reference parameter",
                            param.param_type.code()
                        )))
                    }
                }
            }
        };
        if fields.iter().any(|f: &SortField| f.by == by) {
            return Err(bad(format!("{code} is given twice")));
        }
        fields.push(SortField { by, descending });
    }
    Ok(fields)
}

/// Most links one chain or nest of `_has` may have.
pub const MAX_CHAIN: usize = 3;

/// A parameter of `resource_type` that reaches another type: a chain
/// (`subject:Patient.name`, R4 §3.1.1.4.13), a reverse chain
/// (`_has:Observation:subject:code`, §3.1.1.4.14), or, at the end of one,
/// a plain parameter. Inside a chain every parameter must be known: one
/// left out would widen the match. `chained` gathers the types searched.
fn linked(
    resource_type: &str,
    name: &str,
    value: &str,
    depth: usize,
    chained: &mut Vec<String>,
    conditions: &mut usize,
) -> Result<Filter, RestError> {
    let bad = |why: String| RestError::bad_request(format!("{name}: {why}"));
    if depth > MAX_CHAIN {
        return Err(bad(format!("a chain may have at most {MAX_CHAIN} links")));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(code), Some(inner)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("use _has:Type:reference-parameter:parameter".into()));
        };
        let param = definition(Some(source), code)
            .filter(|p| p.param_type == ParamType::Reference)
            .ok_or_else(|| {
                bad(format!(
                    "{source} has no reference search parameter {code:?}"
                ))
            })?;
        if !param.targets.iter().any(|t| t == resource_type) {
            return Err(bad(format!(
                "{source}.{code} does not refer to {resource_type}"
            )));
        }
        reach(chained, source);
        let filter = linked(source, inner, value, depth + 1, chained, conditions)?;
        return Ok(Filter {
            any_of: vec![Condition::Has {
                source_type: source.to_owned(),
                param: code.to_owned(),
                filters: vec![filter],
            }],
        });
    }
    if let Some((head, inner)) = name.split_once('.') {
        let (code, explicit) = match head.split_once(':') {
            Some((code, target)) => (code, Some(target)),
            None => (head, None),
        };
        let param = definition(Some(resource_type), code)
            .filter(|p| p.param_type == ParamType::Reference)
            .ok_or_else(|| {
                bad(format!(
                    "{resource_type} has no reference search parameter {code:?} to chain from"
                ))
            })?;
        let targets: Vec<&str> = match (explicit, param.targets.as_slice()) {
            (Some(t), targets) if targets.iter().any(|x| x == t) => vec![t],
            (Some(t), targets) => {
                return Err(bad(format!(
                    "{resource_type}.{code} does not refer to {t}; it refers to {}",
                    targets.join(", ")
                )))
            }
            (None, [only]) => vec![only.as_str()],
            // Several targets and no `:Type`: every target type that has the
            // next parameter is searched (R4 §3.1.1.4.13 leaves this to the
            // server); the caller must be allowed to search each one.
            (None, targets) => {
                let next = inner.split(['.', ':']).next().unwrap_or_default();
                // A `_has` next: the targets its source parameter refers to.
                let has_targets: Option<&[String]> = inner
                    .strip_prefix("_has:")
                    .and_then(|rest| {
                        let mut parts = rest.splitn(3, ':');
                        definition(parts.next(), parts.next()?)
                    })
                    .map(|p| p.targets.as_slice());
                let having: Vec<&str> = targets
                    .iter()
                    .map(String::as_str)
                    .filter(|t| match (next, has_targets) {
                        ("_has", Some(refers_to)) => refers_to.iter().any(|r| r == t),
                        ("_has", None) => true,
                        _ => definition(Some(t), next).is_some(),
                    })
                    .collect();
                if having.is_empty() {
                    return Err(bad(format!(
                        "{resource_type}.{code} refers to {}, and none of them has a search parameter {next:?}",
                        targets.join(", ")
                    )));
                }
                having
            }
        };
        let mut any_of = Vec::with_capacity(targets.len());
        for target in targets {
            reach(chained, target);
            let filter = linked(target, inner, value, depth + 1, chained, conditions)?;
            any_of.push(Condition::Chain {
                param: code.to_owned(),
                target_type: target.to_owned(),
                filters: vec![filter],
            });
        }
        return Ok(Filter { any_of });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if SEARCH_PARAMETERS.iter().any(|(p, _, _)| *p == code) {
        return Err(bad(format!(
            "{code} cannot end a chain; search the reference itself (e.g. subject=Patient/123)"
        )));
    }
    let param = definition(Some(resource_type), code)
        .ok_or_else(|| bad(format!("{resource_type} has no search parameter {code:?}")))?;
    let leaf = filter(param, modifier, value)?;
    // A chain without a type branches at every link; its values count in
    // every branch, so the search stays bounded.
    *conditions += leaf.any_of.len();
    if *conditions > MAX_CONDITIONS {
        return Err(RestError::bad_request(format!(
            "the search has more than {MAX_CONDITIONS} values across its parameters (a chain without a type counts its values once per type it passes through); name the types or split the search"
        )));
    }
    Ok(leaf)
}

/// Adds `resource_type` to the types a search reaches, once.
fn reach(chained: &mut Vec<String>, resource_type: &str) {
    if !chained.iter().any(|c| c == resource_type) {
        chained.push(resource_type.to_owned());
    }
}

/// Splits a parameter value at unescaped commas (R4 §3.1.1.5.7: `\,` is a
/// comma inside one value).
fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '$' | '|' | '\\')) => out.last_mut().unwrap().push(next),
                Some(next) => {
                    let last = out.last_mut().unwrap();
                    last.push('\\');
                    last.push(next);
                }
                None => out.last_mut().unwrap().push('\\'),
            },
            ',' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// Splits at the first unescaped `|`.
fn split_pipe(value: &str) -> Option<(&str, &str)> {
    let bytes = value.as_bytes();
    (0..bytes.len())
        .find(|&i| bytes[i] == b'|' && (i == 0 || bytes[i - 1] != b'\\'))
        .map(|i| (&value[..i], &value[i + 1..]))
}

/// A comparison prefix (R4 §3.1.1.4.1) and the rest of the value.
fn prefixed(value: &str) -> (RangeOp, &str) {
    let op = match value.get(..2) {
        Some("eq") => RangeOp::Within,
        Some("ne") => RangeOp::NotWithin,
        Some("gt") => RangeOp::EndsAfter,
        Some("lt") => RangeOp::StartsBefore,
        Some("ge") => RangeOp::WithinOrAfter,
        Some("le") => RangeOp::WithinOrBefore,
        Some("sa") => RangeOp::StartsAfter,
        Some("eb") => RangeOp::EndsBefore,
        Some("ap") => RangeOp::Overlaps,
        _ => return (RangeOp::Within, value),
    };
    (op, &value[2..])
}

fn index_kind(param_type: ParamType) -> Option<IndexKind> {
    Some(match param_type {
        ParamType::String => IndexKind::String,
        ParamType::Token => IndexKind::Token,
        ParamType::Date => IndexKind::Date,
        ParamType::Number => IndexKind::Number,
        ParamType::Quantity => IndexKind::Quantity,
        ParamType::Uri => IndexKind::Uri,
        ParamType::Reference => IndexKind::Reference,
        ParamType::Composite => IndexKind::Composite,
        ParamType::Special => return None,
    })
}

/// One occurrence of a parameter (`name[:modifier]=v1,v2`) as a filter:
/// its values ORed.
fn filter(param: &SearchParam, modifier: Option<&str>, value: &str) -> Result<Filter, RestError> {
    let name = match modifier {
        Some(m) => format!("{}:{m}", param.code),
        None => param.code.clone(),
    };
    let bad = |why: String| RestError::bad_request(format!("the search parameter {name:?}: {why}"));
    if let Some((_, why)) = UNSUPPORTED.iter().find(|(c, _)| *c == param.code) {
        return Err(RestError::not_supported(
            crate::error::ErrorKind::BadRequest,
            format!("the search parameter {name:?} is not supported: {why}"),
        ));
    }
    let Some(kind) = index_kind(param.param_type) else {
        return Err(RestError::not_supported(
            crate::error::ErrorKind::BadRequest,
            format!("the search parameter {name:?} is not supported"),
        ));
    };
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad("missing takes true or false".into())),
        };
        return Ok(Filter {
            any_of: vec![Condition::Missing {
                param: param.code.clone(),
                kind,
                missing,
            }],
        });
    }
    let code = param.code.clone();
    let mut any_of = Vec::new();
    for v in split_values(value) {
        if v.is_empty() {
            return Err(bad("a value is empty".into()));
        }
        if param.param_type == ParamType::Composite {
            if modifier.is_some() {
                return Err(bad("composite parameters take no modifier".into()));
            }
            any_of.push(composite(param, &v).map_err(&bad)?);
            continue;
        }
        let condition = match (param.param_type, modifier) {
            (ParamType::String, None) if code == "phonetic" => Condition::StringExact {
                param: code.clone(),
                value: crate::indexing::soundex(&v),
            },
            (ParamType::String, None) => Condition::StringStarts {
                param: code.clone(),
                value: normalize(&v),
            },
            (ParamType::String, Some("exact")) => Condition::StringExact {
                param: code.clone(),
                value: v,
            },
            (ParamType::String, Some("contains")) => Condition::StringContains {
                param: code.clone(),
                value: normalize(&v),
            },
            (ParamType::Token, None | Some("not")) => {
                let (system, code_value) = match split_pipe(&v) {
                    Some(("", c)) => (Some(None), Some(c.to_owned())),
                    Some((s, "")) => (Some(Some(s.to_owned())), None),
                    Some((s, c)) => (Some(Some(s.to_owned())), Some(c.to_owned())),
                    None => (None, Some(v.clone())),
                };
                let token = Condition::Token {
                    param: code.clone(),
                    system,
                    code: code_value,
                };
                if modifier == Some("not") {
                    Condition::Not(Box::new(token))
                } else {
                    token
                }
            }
            (ParamType::Token, Some("text")) => Condition::TokenText {
                param: code.clone(),
                value: normalize(&v),
            },
            (ParamType::Token, Some("of-type")) => {
                // system|code of the identifier's type, then its value.
                let mut parts = v.splitn(3, '|');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(system), Some(type_code), Some(id_value))
                        if !type_code.is_empty() && !id_value.is_empty() =>
                    {
                        Condition::Token {
                            param: format!("{code}:of-type"),
                            system: Some((!system.is_empty()).then(|| system.to_owned())),
                            code: Some(format!("{type_code}|{id_value}")),
                        }
                    }
                    _ => return Err(bad(
                        "of-type takes system|code|value (the identifier's type, then its value)"
                            .into(),
                    )),
                }
            }
            (ParamType::Reference, Some("identifier")) => {
                let (system, value) = match split_pipe(&v) {
                    Some(("", value)) => (Some(None), value.to_owned()),
                    Some((system, value)) => (Some(Some(system.to_owned())), value.to_owned()),
                    None => (None, v.clone()),
                };
                Condition::Token {
                    param: format!("{code}:identifier"),
                    system,
                    code: Some(value),
                }
            }
            (ParamType::Date, None) => {
                let (op, date) = prefixed(&v);
                let range = parse_range(date).map_err(&bad)?;
                Condition::Date {
                    param: code.clone(),
                    op,
                    start: range.start,
                    end: range.end,
                }
            }
            (ParamType::Number | ParamType::Quantity, None) => {
                let (op, rest) = prefixed(&v);
                let (number, system, unit) = match (param.param_type, split_pipe(rest)) {
                    (ParamType::Quantity, Some((n, units))) => {
                        let (system, unit) = split_pipe(units).unwrap_or(("", units));
                        (
                            n,
                            (!system.is_empty()).then(|| system.to_owned()),
                            (!unit.is_empty()).then(|| unit.to_owned()),
                        )
                    }
                    _ => (rest, None, None),
                };
                let (low, high) = number_range(op, number)
                    .ok_or_else(|| bad(format!("{number:?} is not a number")))?;
                Condition::Number {
                    param: code.clone(),
                    kind,
                    op,
                    low,
                    high,
                    system,
                    code: unit,
                }
            }
            (ParamType::Reference, None) => reference(&code, None, &v),
            (ParamType::Reference, Some(t)) if t.chars().next().is_some_and(char::is_uppercase) => {
                if !param.targets.iter().any(|target| target == t) && !param.targets.is_empty() {
                    return Err(bad(format!("{t} is not a type this parameter refers to")));
                }
                reference(&code, Some(t), &v)
            }
            (ParamType::Uri, None) => Condition::Uri {
                param: code.clone(),
                op: UriOp::Equal,
                value: v,
            },
            (ParamType::Uri, Some("below")) => Condition::Uri {
                param: code.clone(),
                op: UriOp::Below,
                value: v,
            },
            (ParamType::Uri, Some("above")) => Condition::Uri {
                param: code.clone(),
                op: UriOp::Above,
                value: v,
            },
            (_, Some(m)) => {
                return Err(RestError::not_supported(
                    crate::error::ErrorKind::BadRequest,
                    format!(
                        "the modifier :{m} is not supported on the {} parameter {:?}",
                        param.param_type.code(),
                        param.code
                    ),
                ))
            }
            (_, None) => return Err(bad("this kind of parameter is not supported".into())),
        };
        any_of.push(condition);
    }
    Ok(Filter { any_of })
}

/// A composite value, `first$second` (R4 §3.1.1.4.12): a token (or a
/// reference) and its partner, each written as its own parameter would be.
fn composite(param: &SearchParam, value: &str) -> Result<Condition, String> {
    let types: Vec<ParamType> = param.components.iter().map(|c| c.param_type).collect();
    let (first_text, second_text) = match value.split_once('$') {
        Some(parts) => parts,
        None => return Err("a composite value is two values joined by $ (e.g. code$value)".into()),
    };
    if second_text.contains('$') || types.len() != 2 {
        return Err("only composites of two values are supported".into());
    }
    let (first, first_system_given) = match types[0] {
        ParamType::Token => match split_pipe(first_text) {
            Some((system, code)) if !code.is_empty() => (
                CompositeFirst::Token {
                    system: (!system.is_empty()).then(|| system.to_owned()),
                    code: code.to_owned(),
                },
                true,
            ),
            Some(_) => return Err("the first value needs a code".into()),
            None => (
                CompositeFirst::Token {
                    system: None,
                    code: first_text.to_owned(),
                },
                false,
            ),
        },
        ParamType::Reference => match reference("", None, first_text) {
            Condition::Reference {
                target_type,
                target_id,
                ..
            } => (
                CompositeFirst::Reference {
                    target_type,
                    target_id,
                },
                false,
            ),
            _ => return Err("the first value must be Type/id or an id".into()),
        },
        _ => return Err("this composite is not supported".into()),
    };
    let second = match types[1] {
        ParamType::Token => match split_pipe(second_text) {
            Some((system, code)) => CompositeTest::Token {
                system: (!system.is_empty()).then(|| system.to_owned()),
                code: code.to_owned(),
            },
            None => CompositeTest::Token {
                system: None,
                code: second_text.to_owned(),
            },
        },
        ParamType::Quantity => {
            let (op, rest) = prefixed(second_text);
            let (number, units) = split_pipe(rest).map_or((rest, None), |(n, u)| (n, Some(u)));
            let (system, unit) = match units {
                Some(units) => {
                    let (system, unit) = split_pipe(units).unwrap_or(("", units));
                    (
                        (!system.is_empty()).then(|| system.to_owned()),
                        (!unit.is_empty()).then(|| unit.to_owned()),
                    )
                }
                None => (None, None),
            };
            let (low, high) =
                number_range(op, number).ok_or_else(|| format!("{number:?} is not a number"))?;
            CompositeTest::Number {
                op,
                low,
                high,
                system,
                code: unit,
            }
        }
        ParamType::Date => {
            let (op, date) = prefixed(second_text);
            let range = parse_range(date)?;
            CompositeTest::Date {
                op,
                start: range.start,
                end: range.end,
            }
        }
        ParamType::String => CompositeTest::StringStarts(normalize(second_text)),
        _ => return Err("this composite is not supported".into()),
    };
    Ok(Condition::Composite {
        param: param.code.clone(),
        first,
        first_system_given,
        second,
    })
}

/// A reference value: `id`, `Type/id` or an absolute URL ending in `Type/id`
/// (R4 §3.1.1.4.5); `of_type` is a `:Type` modifier.
fn reference(param: &str, of_type: Option<&str>, value: &str) -> Condition {
    let parts: Vec<&str> = value.trim_end_matches('/').split('/').collect();
    let (target_type, id) = match parts.as_slice() {
        [id] => (of_type.map(str::to_owned), (*id).to_owned()),
        [.., t, id] if t.chars().next().is_some_and(char::is_uppercase) => {
            ((*t).to_owned().into(), (*id).to_owned())
        }
        _ => {
            return Condition::ReferenceUrl {
                param: param.to_owned(),
                url: value.to_owned(),
            }
        }
    };
    Condition::Reference {
        param: param.to_owned(),
        target_type,
        target_id: id,
    }
}

/// The range a number search covers: `eq`/`ne` the implicit precision of
/// the value written (`0.5` is `[0.45, 0.55)`, R4 §3.1.1.4.2), `ap` ±10%,
/// the others the value itself.
fn number_range(op: RangeOp, text: &str) -> Option<(f64, f64)> {
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let exponent: i32 = text
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some(match op {
        RangeOp::Within | RangeOp::NotWithin => (value - half, value + half),
        RangeOp::Overlaps => {
            let delta = (value * 0.1).abs();
            (value - delta, value + delta)
        }
        _ => (value, value),
    })
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
        let p = params(&[("nickname", "x")]);
        let lenient = parse_search(Some("Patient"), &p, false).unwrap();
        assert!(lenient.applied.is_empty());
        let strict = parse_search(Some("Patient"), &p, true).unwrap_err();
        assert!(strict.message.contains("\"nickname\""));
        // A parameter R4 defines for the type becomes a filter.
        let known = parse_search(Some("Patient"), &params(&[("name", "x")]), true).unwrap();
        assert_eq!(known.query.filters.len(), 1);
        assert_eq!(known.applied.len(), 1);
        // At the system level only the common parameters are known.
        assert!(parse_search(None, &params(&[("name", "x")]), true).is_err());
        assert!(parse_search(None, &params(&[("_tag", "a|b")]), true).is_ok());
    }

    #[test]
    fn a_search_has_a_bounded_number_of_values() {
        let values = vec!["x"; MAX_VALUES].join(",");
        let many: Vec<(String, String)> = (0..11)
            .map(|_| ("family".to_owned(), values.clone()))
            .collect();
        let e = parse_search(Some("Patient"), &many, false).unwrap_err();
        assert!(e.message.contains("more than 1000 values"), "{}", e.message);
        assert!(parse_search(Some("Patient"), &many[..10].to_vec(), false).is_ok());
    }

    #[test]
    fn values_split_at_unescaped_commas_and_pipes() {
        assert_eq!(split_values("a,b\\,c"), ["a", "b,c"]);
        assert_eq!(split_pipe("s|c"), Some(("s", "c")));
        assert_eq!(split_pipe("s\\|x|c"), Some(("s\\|x", "c")));
        assert_eq!(split_pipe("c"), None);
    }

    #[test]
    fn numbers_carry_their_implicit_precision() {
        let (low, high) = number_range(RangeOp::Within, "0.5").unwrap();
        assert!((low - 0.45).abs() < 1e-12 && (high - 0.55).abs() < 1e-12);
        let (low, high) = number_range(RangeOp::Within, "100").unwrap();
        assert_eq!((low, high), (99.5, 100.5));
        let (low, high) = number_range(RangeOp::Within, "1e2").unwrap();
        assert_eq!((low, high), (50.0, 150.0));
        assert_eq!(number_range(RangeOp::EndsAfter, "5"), Some((5.0, 5.0)));
        assert!(number_range(RangeOp::Within, "five").is_none());
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
    fn a_chain_without_a_type_counts_its_values_in_every_branch() {
        let values = (0..MAX_VALUES)
            .map(|i| format!("x{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let fanned = params(&[(
            "derived-from.derived-from.derived-from.name",
            values.as_str(),
        )]);
        let e = parse_search(Some("ActivityDefinition"), &fanned, false).unwrap_err();
        assert!(e.message.contains("more than 1000 values"), "{}", e.message);
        // A typeless chain into _has keeps the targets _has can refer to.
        let has = params(&[("subject._has:Observation:patient:code", "x")]);
        let req = parse_search(Some("Encounter"), &has, false).unwrap();
        assert_eq!(req.chained, ["Group", "Observation", "Patient"]);
    }

    #[test]
    fn count_is_capped() {
        let req = parse_search(None, &params(&[("_count", "999999")]), false).unwrap();
        assert_eq!(req.query.count, MAX_COUNT);
    }
}
