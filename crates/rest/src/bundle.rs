//! Batch and transaction bundles (`POST /fhir`, FHIR R4 §3.1.0.11). A
//! transaction validates every entry first, rewrites `urn:uuid:` references
//! to the ids the server assigns, and stores all writes in one database
//! transaction; a batch runs each entry on its own.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use fhirbox_auth::access::RequestFacts;
use fhirbox_auth::Identity;
use fhirbox_store::{
    Matching, ResourceSearch, SearchQuery, StoreError, StoredResource, WriteOp, WriteOutcome,
};
use serde_json::{json, Value};

use fhirbox_fhir::IssueType;

use crate::bundle_out::BundleWriter;
use crate::error::{ErrorKind, RestError};
use crate::hooks::Prehashed;
use crate::patch::{self, Patch};
use crate::reply::{etag, parse_version_tag, NoneMatch, ReadConditions, Reply, ReturnPreference};
use crate::resource::{self, check_id, check_type};
use crate::search;
use crate::shape::{self, Shape};
use crate::Rest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// What an entry's `request.url` names.
#[derive(Debug, Clone)]
enum Target {
    Type(String),
    Instance(String, String),
    Version(String, String, String),
}

/// A parsed entry, ready to run.
struct Entry {
    method: Method,
    target: Target,
    query: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_match: Option<i64>,
    /// `ifNoneMatch` / `ifModifiedSince` of a read entry.
    conditions: ReadConditions,
    /// `ifNoneExist` of a create entry: its criteria.
    if_none_exist: Option<String>,
}

/// The result of one entry, rendered into the response bundle.
enum EntryResult {
    Written(WriteOutcome, Method),
    /// A read, shaped when its URL has `_summary` or `_elements`.
    Read(StoredResource, Option<Shape>),
    /// A conditional read whose resource the client holds already.
    NotModified(StoredResource),
    Searched(String),
    /// A conditional delete that matched nothing: nothing to delete.
    NothingDeleted,
    Failed(RestError),
}

impl Rest {
    /// `POST /` with a batch or transaction Bundle, on behalf of `identity`:
    /// the response Bundle.
    pub async fn bundle(
        &self,
        base: &str,
        body: &Value,
        identity: &Identity,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let applied = self.apply_bundle(base, body, identity).await?;
        Ok(Reply::json(render(
            applied.response_type,
            base,
            applied.results,
            preference,
        )))
    }
}

/// A processed bundle.
pub struct Applied {
    response_type: &'static str,
    results: Vec<EntryResult>,
}

impl Applied {
    /// Entries that failed (a batch keeps going past them), with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &RestError)> {
        self.results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                EntryResult::Failed(e) => Some((i, e)),
                _ => None,
            })
    }
}

impl Rest {
    /// Validates, authorizes and runs a batch or transaction bundle on behalf
    /// of `identity`. Every entry is authorized as if it were its own request.
    pub async fn apply_bundle(
        &self,
        base: &str,
        body: &Value,
        identity: &Identity,
    ) -> Result<Applied, RestError> {
        apply(self, base, body, identity).await
    }
}

async fn apply(
    app: &Rest,
    base: &str,
    body: &Value,
    identity: &Identity,
) -> Result<Applied, RestError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(RestError::bad_request(
            "POST to the base URL takes a Bundle of type batch or transaction",
        )
        .at("resourceType"));
    }
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
    let transaction = match kind {
        "transaction" => true,
        "batch" => false,
        other => {
            return Err(RestError::bad_request(format!(
                "Bundle.type {other:?} cannot be processed; send type \"batch\" or \"transaction\""
            ))
            .at("Bundle.type"))
        }
    };
    let raw_entries = match body.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.clone(),
        Some(_) => {
            return Err(RestError::bad_request("Bundle.entry must be an array").at("Bundle.entry"))
        }
    };
    let most = app.checks.max_bundle_entries;
    if raw_entries.len() > most {
        return Err(RestError::bad_request(format!(
            "the bundle has {} entries; at most {most} are accepted (BOX_MAX_BUNDLE_ENTRIES), so split it",
            raw_entries.len()
        ))
        .at("Bundle.entry"));
    }
    check_unique_full_urls(&raw_entries)?;
    let parsed: Vec<Result<Entry, RestError>> = raw_entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            parse_entry(e, base)
                .and_then(|entry| authorize(app, identity, entry))
                .map_err(|err| err.at(format!("Bundle.entry[{i}]")))
        })
        .collect();
    let results = if transaction {
        let mut entries = Vec::with_capacity(parsed.len());
        for entry in parsed {
            entries.push(entry.map_err(|e| e.prefixed("the transaction was not applied"))?);
        }
        run_transaction(app, base, entries, identity).await?
    } else {
        run_batch(app, base, parsed, identity).await
    };
    Ok(Applied {
        response_type: if transaction {
            "transaction-response"
        } else {
            "batch-response"
        },
        results,
    })
}

/// An entry is authorized exactly like the request it stands for: same
/// method, route facts, query and caller (`auth::access`).
fn authorize(app: &Rest, identity: &Identity, entry: Entry) -> Result<Entry, RestError> {
    let method = match entry.method {
        Method::Get => "get",
        Method::Post => "post",
        Method::Put => "put",
        Method::Patch => "patch",
        Method::Delete => "delete",
    };
    let (resource_type, id, version) = match &entry.target {
        Target::Type(t) => (t.as_str(), None, None),
        Target::Instance(t, id) => (t.as_str(), Some(id.as_str()), None),
        Target::Version(t, id, v) => (t.as_str(), Some(id.as_str()), Some(v.as_str())),
    };
    let kind = match (entry.method, &entry.target) {
        (Method::Get, Target::Type(_)) => search::QueryUse::Search,
        _ => search::QueryUse::Nothing,
    };
    let query = search::parse_query(entry.query.as_deref())?
        .into_iter()
        .filter(|(name, _)| search::acted_on(kind, Some(resource_type), name))
        .collect();
    let facts = RequestFacts::new(
        method,
        Some(resource_type),
        id,
        version,
        entry.query.as_deref(),
        query,
    );
    // A conditional create, update, patch or delete also searches: that
    // search is authorized too (the write itself once its target is known,
    // by the store's `TargetCheck`).
    let criteria = match (entry.method, &entry.target) {
        (Method::Post, _) => entry.if_none_exist.as_deref(),
        (Method::Put | Method::Patch | Method::Delete, Target::Type(_)) => entry.query.as_deref(),
        _ => None,
    };
    let searched = match criteria {
        Some(criteria) => Some(search::criteria_facts(resource_type, criteria)?),
        None => None,
    };
    for facts in std::iter::once(&facts).chain(searched.as_ref()) {
        if let Err(denial) = app.auth.authorize(identity, facts) {
            app.events.entry_denied(denial.reason());
            tracing::info!(client = identity.id(), method = %facts.method, uri = %facts.uri, reason = denial.reason(), "bundle entry denied by access control");
            return Err(RestError::forbidden(denial.message()));
        }
    }
    Ok(entry)
}

/// `fullUrl` identifies an entry, so it may appear once per bundle (R4
/// Bundle invariant bdl-7); two entries with one `fullUrl` would make
/// `urn:uuid:` references ambiguous.
fn check_unique_full_urls(entries: &[Value]) -> Result<(), RestError> {
    let mut seen = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(url) = entry.get("fullUrl").and_then(Value::as_str) {
            if !seen.insert(url) {
                return Err(RestError::bad_request(format!(
                    "fullUrl {url:?} appears more than once; every entry needs a fullUrl of its own"
                ))
                .at(format!("Bundle.entry[{i}].fullUrl")));
            }
        }
    }
    Ok(())
}

fn parse_entry(entry: &Value, base: &str) -> Result<Entry, RestError> {
    let request = entry.get("request").ok_or_else(|| {
        RestError::bad_request("the entry has no request; add request.method and request.url")
    })?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        Some(other) => {
            return Err(RestError::bad_request(format!(
                "request.method {other:?} is not supported; use GET, POST, PUT, PATCH or DELETE"
            )))
        }
        None => return Err(RestError::bad_request("request.method is missing")),
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| RestError::bad_request("request.url is missing"))?;
    let conditions = read_conditions(request)?;
    let if_none_exist = match request.get("ifNoneExist") {
        None => None,
        Some(Value::String(criteria)) => Some(criteria.clone()),
        Some(_) => {
            return Err(RestError::bad_request(
                "request.ifNoneExist must be a query string such as identifier=system|value",
            ))
        }
    };
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(parse_version_tag(tag).ok_or_else(|| {
            RestError::bad_request(format!(
                "request.ifMatch {tag:?} is not an ETag such as W/\"3\""
            ))
        })?),
        None => None,
    };
    let relative = url
        .strip_prefix(base)
        .unwrap_or(url)
        .trim_start_matches('/');
    let (path, query) = match relative.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (relative, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let target = match segments.as_slice() {
        [t] => Target::Type((*t).to_owned()),
        [t, id] => Target::Instance((*t).to_owned(), (*id).to_owned()),
        [t, id, "_history", v] => Target::Version((*t).to_owned(), (*id).to_owned(), (*v).to_owned()),
        _ => {
            return Err(RestError::bad_request(format!(
                "request.url {url:?} is not supported in a bundle; use Type, Type/id or Type/id/_history/version"
            )))
        }
    };
    let allowed = matches!(
        (method, &target, query.is_some()),
        (Method::Get, _, _)
            | (Method::Post, Target::Type(_), false)
            | (
                Method::Put | Method::Patch | Method::Delete,
                Target::Instance(..),
                false
            )
            // Conditional update, patch and delete (R4 §3.1.0.8).
            | (
                Method::Put | Method::Patch | Method::Delete,
                Target::Type(_),
                true
            )
    );
    if !allowed {
        return Err(RestError::bad_request(format!(
            "{method:?} {url} is not supported in a bundle; use POST Type (with ifNoneExist for a conditional create), PUT, PATCH or DELETE Type/id, or PUT, PATCH or DELETE Type?criteria for a conditional write"
        )));
    }
    match &target {
        Target::Type(t) => check_type(t)?,
        Target::Instance(t, id) | Target::Version(t, id, _) => {
            check_type(t)?;
            check_id(id)?;
        }
    }
    if conditions != ReadConditions::default()
        && !matches!(
            (method, &target),
            (Method::Get, Target::Instance(..) | Target::Version(..))
        )
    {
        return Err(RestError::bad_request(
            "request.ifNoneMatch and request.ifModifiedSince apply to a read entry (GET Type/id) only",
        ));
    }
    if if_none_exist.is_some() && !matches!((method, &target), (Method::Post, Target::Type(_))) {
        return Err(RestError::bad_request(
            "request.ifNoneExist applies to a create entry (POST Type) only",
        ));
    }
    let resource = entry.get("resource").cloned();
    if matches!(method, Method::Post | Method::Put | Method::Patch) && resource.is_none() {
        return Err(RestError::bad_request(format!(
            "a {method:?} entry needs a resource"
        )));
    }
    Ok(Entry {
        method,
        target,
        query,
        full_url: entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource,
        if_match,
        conditions,
        if_none_exist,
    })
}

/// `request.ifNoneMatch` (an ETag) and `request.ifModifiedSince` (an
/// instant) of an entry (R4 Bundle.entry.request).
fn read_conditions(request: &Value) -> Result<ReadConditions, RestError> {
    let text = |name: &str| -> Result<Option<&str>, RestError> {
        match request.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(RestError::bad_request(format!(
                "request.{name} must be a string"
            ))),
        }
    };
    let modified_since = match text("ifModifiedSince")? {
        Some(instant) => Some(
            fhirbox_fhir::datetime::parse_range(instant)
                .map_err(|e| RestError::bad_request(format!("request.ifModifiedSince: {e}")))?
                .start,
        ),
        None => None,
    };
    Ok(ReadConditions {
        none_match: text("ifNoneMatch")?.map(NoneMatch::parse),
        modified_since,
    })
}

/// A PATCH entry carries its patch as a Binary resource (R4 §3.1.0.11.1):
/// `contentType` says which form (`patch::MEDIA_TYPES`), `data` holds it in
/// base64.
fn patch_from_binary(resource: &Value) -> Result<Patch, RestError> {
    let bad = || {
        RestError::bad_request(
            "a PATCH entry's resource must be a FHIRPath Patch (a Parameters resource) or a Binary with contentType application/json-patch+json (or application/merge-patch+json) and base64 data",
        )
    };
    // A FHIRPath Patch is the entry's resource itself (a Parameters).
    if resource.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        return Patch::from_media("application/fhir+json", resource.clone())
            .map_err(|e| e.prefixed("the PATCH entry's Parameters"));
    }
    if resource.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(bad());
    }
    let content_type = resource
        .get("contentType")
        .and_then(Value::as_str)
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|ct| patch::MEDIA_TYPES.contains(&ct.as_str()))
        .ok_or_else(bad)?;
    let data = resource
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| bad())?;
    let body = fhirbox_fhir::json::from_slice_strict(&bytes).map_err(|e| {
        RestError::bad_request(format!("the PATCH entry's data is not valid JSON: {e}"))
    })?;
    Patch::from_media(&content_type, body).map_err(|e| e.prefixed("the PATCH entry's data"))
}

/// Builds the store write for a write entry (hashing a literal client
/// secret first, outside the write transaction).
async fn write_op(
    app: &Rest,
    entry: &Entry,
    assigned_id: Option<&str>,
    matching: Option<Matching>,
    expected: Option<Option<String>>,
    identity: &Identity,
) -> Result<WriteOp, RestError> {
    let checks = &app.checks;
    let body = || entry.resource.clone().unwrap_or(Value::Null);
    match (&entry.method, &entry.target) {
        (Method::Post, Target::Type(t)) => {
            let id = assigned_id
                .map(str::to_owned)
                .unwrap_or_else(resource::new_id);
            let prehashed =
                Prehashed::for_body(t, entry.resource.as_ref().unwrap_or(&Value::Null)).await?;
            let mut op = resource::prepare_create(t, id, body(), checks, prehashed)?;
            op.matching = matching;
            Ok(op)
        }
        (Method::Put, Target::Instance(t, id)) => {
            let prehashed =
                Prehashed::for_body(t, entry.resource.as_ref().unwrap_or(&Value::Null)).await?;
            resource::prepare_update(t, id, body(), entry.if_match, checks, prehashed)
        }
        (Method::Patch, Target::Instance(t, id)) => {
            let patch = patch_from_binary(entry.resource.as_ref().unwrap_or(&Value::Null))?;
            let prehashed = patch.prehash(t).await?;
            resource::prepare_patch(t, id, patch, entry.if_match, checks, prehashed)
        }
        (Method::Delete, Target::Instance(t, id)) => {
            resource::prepare_delete(t, id, entry.if_match)
        }
        // Conditional writes: the store finds the match in the write's
        // transaction; `expected` (from `matching`) pins what a transaction
        // found when it searched first.
        (method, Target::Type(t)) => {
            let criteria = entry.query.as_deref().unwrap_or_default();
            let mut op = match method {
                Method::Put => {
                    let prehashed =
                        Prehashed::for_body(t, entry.resource.as_ref().unwrap_or(&Value::Null))
                            .await?;
                    resource::prepare_conditional_update(
                        t,
                        criteria,
                        body(),
                        entry.if_match,
                        checks,
                        prehashed,
                        app.target_check(identity, "put", t),
                    )?
                }
                Method::Patch => {
                    let patch = patch_from_binary(entry.resource.as_ref().unwrap_or(&Value::Null))?;
                    let prehashed = patch.prehash(t).await?;
                    let op = resource::prepare_patch(
                        t,
                        &resource::new_id(),
                        patch,
                        entry.if_match,
                        checks,
                        prehashed,
                    )?;
                    resource::conditional(
                        op,
                        criteria,
                        "the conditional patch's criteria",
                        app.target_check(identity, "patch", t),
                    )?
                }
                Method::Delete => {
                    let op = resource::prepare_delete(t, &resource::new_id(), entry.if_match)?;
                    resource::conditional(
                        op,
                        criteria,
                        "the conditional delete's criteria",
                        app.target_check(identity, "delete", t),
                    )?
                }
                Method::Get | Method::Post => {
                    return Err(RestError::bad_request("this entry is not a write"))
                }
            };
            if let Some(id) = assigned_id {
                op.id = id.to_owned();
            }
            if let Some(m) = op.matching.as_mut() {
                m.expected = expected;
            }
            Ok(op)
        }
        _ => Err(RestError::bad_request("this entry is not a write")),
    }
}

/// Most entries one bundle may carry unless `BOX_MAX_BUNDLE_ENTRIES` says
/// otherwise.
pub const DEFAULT_MAX_BUNDLE_ENTRIES: usize = 10_000;
/// Most bytes of resources the read and search entries of one bundle may
/// return together; later read entries fail instead of growing the response.
pub const MAX_BUNDLE_READ_BYTES: usize = 64 * 1024 * 1024;

/// What the read entries of one bundle have returned so far.
struct ReadBudget {
    used: usize,
}

impl ReadBudget {
    fn new() -> ReadBudget {
        ReadBudget { used: 0 }
    }

    /// Counts a read entry's result; a result past the budget becomes a
    /// failure that says how to get the data.
    fn charge(&mut self, result: EntryResult) -> EntryResult {
        let size = match &result {
            EntryResult::Read(r, _) => r.body.len(),
            EntryResult::Searched(page) => page.len(),
            _ => 0,
        };
        if self.used.saturating_add(size) > MAX_BUNDLE_READ_BYTES {
            return EntryResult::Failed(RestError::new(
                ErrorKind::BadRequest,
                IssueType::TooLong,
                format!(
                    "the read entries of this bundle would return more than {MAX_BUNDLE_READ_BYTES} bytes; read the rest in another request"
                ),
            ));
        }
        self.used += size;
        result
    }
}

fn read_result(
    stored: StoredResource,
    conditions: &ReadConditions,
    shape: Option<Shape>,
) -> EntryResult {
    if conditions.not_modified(&stored) {
        EntryResult::NotModified(stored)
    } else {
        EntryResult::Read(stored, shape)
    }
}

/// `_summary` and `_elements` of a read entry's URL.
fn read_shape(resource_type: &str, query: Option<&str>) -> Result<Option<Shape>, RestError> {
    let params = search::parse_query(query)?;
    Ok(shape::parse(&[resource_type], &params, false)?.shape)
}

async fn run_read(
    app: &Rest,
    base: &str,
    entry: &Entry,
    budget: &mut ReadBudget,
    identity: &Identity,
) -> EntryResult {
    let result = match &entry.target {
        Target::Instance(t, id) => match read_shape(t, entry.query.as_deref()) {
            Ok(shape) => app
                .read_current(t, id)
                .await
                .map(|r| read_result(r, &entry.conditions, shape)),
            Err(e) => Err(e),
        },
        Target::Version(t, id, v) => match read_shape(t, entry.query.as_deref()) {
            Ok(shape) => app
                .read_version(t, id, v)
                .await
                .map(|r| read_result(r, &entry.conditions, shape)),
            Err(e) => Err(e),
        },
        Target::Type(t) => match search::parse_query(entry.query.as_deref()) {
            Ok(params) => app
                .searchset(base, Some(t), &params, false, identity)
                .await
                .map(EntryResult::Searched),
            Err(e) => Err(e),
        },
    };
    budget.charge(result.unwrap_or_else(EntryResult::Failed))
}

/// Replaces every `reference` equal to a key of `map` (R4 §3.1.0.11.2).
fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(fields) => {
            for (key, v) in fields.iter_mut() {
                if key == "reference" {
                    if let Some(new) = v.as_str().and_then(|r| map.get(r)) {
                        *v = Value::String(new.clone());
                        continue;
                    }
                }
                rewrite_references(v, map);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, map)),
        _ => {}
    }
}

/// The criteria of a create entry's `ifNoneExist`, if it has any.
fn entry_matching(entry: &Entry, answer_existing: bool) -> Result<Option<Matching>, RestError> {
    match (&entry.if_none_exist, &entry.target) {
        (Some(criteria), Target::Type(t)) => Ok(Some(search::parse_criteria(
            t,
            criteria,
            "request.ifNoneExist",
            answer_existing,
        )?)),
        _ => Ok(None),
    }
}

/// The conditional creates of a transaction, searched before it runs so
/// that references to their `fullUrl` can name the resource each one ends
/// up as: a match found now is that resource, and nothing is created; with
/// none, the create carries its criteria into the write, which fails with
/// a conflict if a match appears meanwhile.
async fn conditional_creates(
    app: &Rest,
    entries: &[Entry],
) -> Result<(HashMap<usize, StoredResource>, HashMap<usize, Matching>), RestError> {
    let mut found = HashMap::new();
    let mut pending = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = || format!("Bundle.entry[{i}]");
        let Some(matching) = entry_matching(entry, false).map_err(|e| e.at(at()))? else {
            continue;
        };
        if let Some(first) = seen.insert(matching.criteria.clone(), i) {
            return Err(RestError::bad_request(format!(
                "Bundle.entry[{first}] and Bundle.entry[{i}] have the same ifNoneExist; create the resource once and refer to its fullUrl"
            ))
            .at(at()));
        }
        match one_match(app, entry_type(entry), &matching)
            .await
            .map_err(|e| RestError::from(e).at(at()))?
        {
            Some(existing) => {
                found.insert(i, existing);
            }
            None => {
                pending.insert(i, matching);
            }
        }
    }
    Ok((found, pending))
}

/// The conditional updates, patches and deletes of a transaction, searched
/// before it runs (like its conditional creates) so that references to
/// their `fullUrl` and the one-write-per-resource rule know the resource
/// each one writes: entry index → the match's id, or `None` when nothing
/// matches (an update then creates; a delete deletes nothing; a patch
/// fails). Each write then expects that answer again in its transaction.
async fn conditional_writes(
    app: &Rest,
    entries: &[Entry],
) -> Result<HashMap<usize, Option<String>>, RestError> {
    let mut found = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let (Method::Put | Method::Patch | Method::Delete, Target::Type(t)) =
            (entry.method, &entry.target)
        else {
            continue;
        };
        let at = || format!("Bundle.entry[{i}]");
        let criteria = entry.query.as_deref().unwrap_or_default();
        let matching =
            search::parse_criteria(t, criteria, "the conditional write's criteria", true)
                .map_err(|e| e.at(at()))?;
        let id = one_match(app, t, &matching)
            .await
            .map_err(|e| RestError::from(e).at(at()))?
            .map(|r| r.id);
        if id.is_none() && entry.method == Method::Patch {
            return Err(RestError::from(StoreError::NoMatch {
                resource_type: t.clone(),
                criteria: matching.criteria,
            })
            .at(at()));
        }
        found.insert(i, id);
    }
    Ok(found)
}

/// Most distinct conditional references one bundle may resolve (each is a
/// search).
pub const MAX_CONDITIONAL_REFERENCES: usize = 1000;

/// Replaces each conditional reference in `resource`
/// (`"reference": "Patient?identifier=sys|val"`, R4 §3.1.0.11.2) by
/// `Type/id` of the one resource its criteria match. The search is the
/// caller's: authorized as `GET /fhir/Type?criteria`, like any search. No
/// match is a 404 and several a 412, naming the reference. `resolved`
/// keeps the answers for the rest of the bundle.
async fn resolve_conditional_references(
    app: &Rest,
    identity: &Identity,
    resource: &mut Value,
    resolved: &mut HashMap<String, String>,
) -> Result<(), RestError> {
    let mut wanted = Vec::new();
    conditional_references(resource, &mut wanted)?;
    if wanted.is_empty() {
        return Ok(());
    }
    for reference in wanted {
        if resolved.contains_key(&reference) {
            continue;
        }
        if resolved.len() >= MAX_CONDITIONAL_REFERENCES {
            return Err(RestError::bad_request(format!(
                "the bundle has more than {MAX_CONDITIONAL_REFERENCES} distinct conditional references; split it"
            )));
        }
        let (t, criteria) = reference.split_once('?').unwrap_or_default();
        let what = format!("the conditional reference {reference:?}");
        let facts = search::criteria_facts(t, criteria)?;
        if let Err(denial) = app.auth.authorize(identity, &facts) {
            app.events.entry_denied(denial.reason());
            return Err(RestError::forbidden(format!(
                "{}; resolving {what} searches {t} resources",
                denial.message()
            )));
        }
        let matching = search::parse_criteria(t, criteria, &what, false)?;
        let error =
            |e: StoreError| RestError::from(e).prefixed(&format!("{what} cannot be resolved"));
        let Some(found) = one_match(app, t, &matching).await.map_err(error)? else {
            return Err(error(StoreError::NoMatch {
                resource_type: t.to_owned(),
                criteria: matching.criteria,
            }));
        };
        let target = format!("{t}/{}", found.id);
        resolved.insert(reference, target);
    }
    rewrite_references(resource, resolved);
    Ok(())
}

/// The conditional references in `value`: `reference` strings of the form
/// `Type?criteria` with a type this server knows, each once, in the order
/// met. More than `MAX_CONDITIONAL_REFERENCES` is a 400, found without
/// reading the rest.
fn conditional_references(value: &Value, found: &mut Vec<String>) -> Result<(), RestError> {
    let mut seen = HashSet::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(fields) => {
                for (key, v) in fields {
                    match (key.as_str(), v) {
                        ("reference", Value::String(r)) => {
                            let conditional = r.split_once('?').is_some_and(|(t, criteria)| {
                                fhirbox_fhir::is_known_resource_type(t) && !criteria.is_empty()
                            });
                            if conditional && seen.insert(r.as_str()) {
                                if seen.len() > MAX_CONDITIONAL_REFERENCES {
                                    return Err(RestError::bad_request(format!(
                                        "the entry has more than {MAX_CONDITIONAL_REFERENCES} distinct conditional references; split it"
                                    )));
                                }
                                found.push(r.clone());
                            }
                        }
                        _ => stack.push(v),
                    }
                }
            }
            Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    Ok(())
}

/// The one resource `matching` finds, or none; several is `MultipleMatches`.
async fn one_match(
    app: &Rest,
    resource_type: &str,
    matching: &Matching,
) -> Result<Option<StoredResource>, StoreError> {
    let page = app
        .store
        .search(SearchQuery {
            count: 1,
            ..matching.query.clone()
        })
        .await?;
    if page.next.is_some() {
        return Err(StoreError::MultipleMatches {
            resource_type: resource_type.to_owned(),
            criteria: matching.criteria.clone(),
        });
    }
    Ok(page.resources.into_iter().next())
}

fn entry_type(entry: &Entry) -> &str {
    match &entry.target {
        Target::Type(t) | Target::Instance(t, _) | Target::Version(t, _, _) => t,
    }
}

async fn run_transaction(
    app: &Rest,
    base: &str,
    mut entries: Vec<Entry>,
    identity: &Identity,
) -> Result<Vec<EntryResult>, RestError> {
    let (existing, mut matchings) = conditional_creates(app, &entries)
        .await
        .map_err(|e| e.prefixed("the transaction was not applied"))?;
    let mut expected = conditional_writes(app, &entries)
        .await
        .map_err(|e| e.prefixed("the transaction was not applied"))?;
    // Ids for created resources, and the fullUrl -> Type/id map for references.
    let mut assigned: HashMap<usize, String> = HashMap::new();
    let mut references: HashMap<String, String> = HashMap::new();
    // The resource each update, patch or delete writes, where one does.
    let mut targets: HashMap<usize, (String, String)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let target = match (&entry.method, &entry.target) {
            (Method::Post, Target::Type(t)) => {
                let id = match existing.get(&i) {
                    Some(found) => found.id.clone(),
                    None => resource::new_id(),
                };
                if !existing.contains_key(&i) {
                    assigned.insert(i, id.clone());
                }
                Some((t.clone(), id))
            }
            (Method::Put | Method::Patch | Method::Delete, Target::Instance(t, id)) => {
                targets.insert(i, (t.clone(), id.clone()));
                Some((t.clone(), id.clone()))
            }
            (method, Target::Type(t)) => match expected.get(&i) {
                Some(Some(id)) => {
                    targets.insert(i, (t.clone(), id.clone()));
                    Some((t.clone(), id.clone()))
                }
                // A conditional update that matches nothing creates.
                Some(None) if *method == Method::Put => {
                    let id = resource::new_id();
                    assigned.insert(i, id.clone());
                    targets.insert(i, (t.clone(), id.clone()));
                    Some((t.clone(), id))
                }
                _ => None,
            },
            _ => None,
        };
        // References to an entry's fullUrl name the resource it writes.
        if let (Some((t, id)), Some(full_url), Method::Post | Method::Put) =
            (target, &entry.full_url, entry.method)
        {
            references.insert(full_url.clone(), format!("{t}/{id}"));
        }
    }
    let mut conditional_references = HashMap::new();
    for (i, entry) in entries.iter_mut().enumerate() {
        if let Some(resource) = entry.resource.as_mut() {
            if !references.is_empty() {
                rewrite_references(resource, &references);
            }
            resolve_conditional_references(app, identity, resource, &mut conditional_references)
                .await
                .map_err(|e| {
                    e.at(format!("Bundle.entry[{i}]"))
                        .prefixed("the transaction was not applied")
                })?;
        }
    }
    // Each resource may be touched by one write only (R4 §3.1.0.11.2).
    let mut touched = HashSet::new();
    let mut written: Vec<(&usize, &(String, String))> = targets.iter().collect();
    written.sort();
    for (&i, (t, id)) in written {
        if !touched.insert((t, id)) {
            return Err(RestError::bad_request(format!(
                "the transaction was not applied: {t}/{id} is changed by more than one entry"
            ))
            .at(format!("Bundle.entry[{i}]")));
        }
        // References to a conditional create's match must not be left
        // pointing at a resource the same transaction deletes.
        let matched = existing
            .values()
            .any(|r| &r.resource_type == t && &r.id == id);
        if entries[i].method == Method::Delete && matched {
            return Err(RestError::bad_request(format!(
                "the transaction was not applied: {t}/{id} is the match of a conditional create in it, and this entry deletes it"
            ))
            .at(format!("Bundle.entry[{i}]")));
        }
    }
    // Processing order: DELETE, POST, PUT/PATCH, then GET (R4 §3.1.0.11.2).
    let rank = |m: Method| match m {
        Method::Delete => 0,
        Method::Post => 1,
        Method::Put | Method::Patch => 2,
        Method::Get => 3,
    };
    // A conditional delete that matched nothing writes nothing, unless
    // ifMatch named a version of something (412, as over REST).
    let nothing_to_delete: HashSet<usize> = (0..entries.len())
        .filter(|i| entries[*i].method == Method::Delete && expected.get(i) == Some(&None))
        .collect();
    if let Some(&i) = nothing_to_delete
        .iter()
        .find(|i| entries[**i].if_match.is_some())
    {
        return Err(RestError::new(
            ErrorKind::PreconditionFailed,
            IssueType::Conflict,
            "the transaction was not applied: the conditional delete matches nothing, so its ifMatch cannot hold",
        )
        .at(format!("Bundle.entry[{i}]")));
    }
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|i| {
            entries[*i].method != Method::Get
                && !existing.contains_key(i)
                && !nothing_to_delete.contains(i)
        })
        .collect();
    order.sort_by_key(|i| rank(entries[*i].method));
    let mut ops = Vec::with_capacity(order.len());
    for &i in &order {
        let assigned_id = assigned.get(&i).map(String::as_str);
        let op = write_op(
            app,
            &entries[i],
            assigned_id,
            matchings.remove(&i),
            expected.remove(&i),
            identity,
        )
        .await
        .map_err(|e| {
            e.at(format!("Bundle.entry[{i}]"))
                .prefixed("the transaction was not applied")
        })?;
        ops.push(op);
    }
    let outcomes = if ops.is_empty() {
        Vec::new()
    } else {
        app.write_all(ops)
            .await
            .map_err(|e| RestError::from(e).prefixed("the transaction was not applied"))?
    };
    let mut results: Vec<Option<EntryResult>> = (0..entries.len()).map(|_| None).collect();
    for (&i, outcome) in order.iter().zip(outcomes) {
        results[i] = Some(EntryResult::Written(outcome, entries[i].method));
    }
    for (i, resource) in existing {
        let outcome = WriteOutcome {
            resource,
            created: false,
            changed: false,
            notifications: Vec::new(),
        };
        results[i] = Some(EntryResult::Written(outcome, Method::Post));
    }
    for i in nothing_to_delete {
        results[i] = Some(EntryResult::NothingDeleted);
    }
    let mut budget = ReadBudget::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry.method == Method::Get {
            results[i] = Some(run_read(app, base, entry, &mut budget, identity).await);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| EntryResult::Failed(RestError::internal(&"entry without result")))
        })
        .collect())
}

async fn run_batch(
    app: &Rest,
    base: &str,
    entries: Vec<Result<Entry, RestError>>,
    identity: &Identity,
) -> Vec<EntryResult> {
    let mut results = Vec::with_capacity(entries.len());
    let mut budget = ReadBudget::new();
    let mut conditional_references = HashMap::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let at = || format!("Bundle.entry[{i}]");
        let result = match entry {
            Err(e) => EntryResult::Failed(e),
            Ok(entry) if entry.method == Method::Get => {
                run_read(app, base, &entry, &mut budget, identity).await
            }
            Ok(mut entry) => match async {
                if let Some(resource) = entry.resource.as_mut() {
                    resolve_conditional_references(
                        app,
                        identity,
                        resource,
                        &mut conditional_references,
                    )
                    .await?;
                }
                let matching = entry_matching(&entry, true)?;
                write_op(app, &entry, None, matching, None, identity).await
            }
            .await
            {
                Err(e) => EntryResult::Failed(e.at(at())),
                Ok(op) => match app.write(op).await {
                    Ok(outcome) => EntryResult::Written(outcome, entry.method),
                    // A conditional delete that matches nothing has nothing
                    // to delete, unless ifMatch named a version of something.
                    Err(StoreError::NoMatch { .. }) if entry.method == Method::Delete => {
                        if entry.if_match.is_none() {
                            EntryResult::NothingDeleted
                        } else {
                            EntryResult::Failed(
                                RestError::new(
                                    ErrorKind::PreconditionFailed,
                                    IssueType::Conflict,
                                    "the conditional delete matches nothing, so its ifMatch cannot hold; nothing was deleted",
                                )
                                .at(at()),
                            )
                        }
                    }
                    Err(e) => EntryResult::Failed(RestError::from(e).at(at())),
                },
            },
        };
        results.push(result);
    }
    results
}

/// `response.status` of a successful entry.
fn status_text(status: u16) -> &'static str {
    match status {
        201 => "201 Created",
        204 => "204 No Content",
        304 => "304 Not Modified",
        _ => "200 OK",
    }
}

fn render(
    bundle_type: &str,
    base: &str,
    results: Vec<EntryResult>,
    preference: ReturnPreference,
) -> String {
    let mut bundle = BundleWriter::new(bundle_type, None, &[]);
    for result in results {
        match result {
            EntryResult::Written(outcome, method) => {
                let r = &outcome.resource;
                let status = match method {
                    Method::Delete => 204,
                    _ if outcome.created => 201,
                    _ => 200,
                };
                let mut response = json!({
                    "status": status_text(status),
                    "etag": etag(r.version_id),
                    "lastModified": r.last_updated_text(),
                });
                if status == 201 {
                    response["location"] = json!(format!("{base}/{}/{}/_history/{}", r.resource_type, r.id, r.version_id));
                }
                let include = method != Method::Delete && preference == ReturnPreference::Representation;
                bundle.entry(
                    json!({"fullUrl": format!("{base}/{}/{}", r.resource_type, r.id), "response": response}),
                    include.then(|| crate::hooks::public_body(r)).as_deref(),
                );
            }
            EntryResult::Read(r, shape) => {
                let body = crate::hooks::public_body(&r);
                let body = match &shape {
                    Some(shape) => shape.apply(&r.resource_type, &body).into(),
                    None => body,
                };
                bundle.entry(
                    json!({
                        "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
                        "response": {"status": status_text(200), "etag": etag(r.version_id), "lastModified": r.last_updated_text()},
                    }),
                    Some(&body),
                )
            }
            EntryResult::NotModified(r) => bundle.entry(
                json!({
                    "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
                    "response": {"status": status_text(304), "etag": etag(r.version_id), "lastModified": r.last_updated_text()},
                }),
                None,
            ),
            EntryResult::NothingDeleted => {
                bundle.entry(json!({"response": {"status": status_text(204)}}), None)
            }
            EntryResult::Searched(searchset) => {
                bundle.entry(json!({"response": {"status": status_text(200)}}), Some(&searchset))
            }
            EntryResult::Failed(e) => bundle.entry(
                json!({"response": {"status": e.kind.status_text(), "outcome": e.outcome().to_json()}}),
                None,
            ),
        }
    }
    bundle.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_nested_references_only() {
        let mut v = json!({
            "subject": {"reference": "urn:uuid:1"},
            "list": [{"item": {"reference": "urn:uuid:1"}}, {"reference": "Patient/keep"}],
            "note": "urn:uuid:1"
        });
        let map = HashMap::from([("urn:uuid:1".to_owned(), "Patient/abc".to_owned())]);
        rewrite_references(&mut v, &map);
        assert_eq!(v["subject"]["reference"], "Patient/abc");
        assert_eq!(v["list"][0]["item"]["reference"], "Patient/abc");
        assert_eq!(v["list"][1]["reference"], "Patient/keep");
        assert_eq!(v["note"], "urn:uuid:1");
    }

    #[test]
    fn conditional_references_are_found_once_each_and_bounded() {
        let mut found = Vec::new();
        let v = json!({"a": {"reference": "Patient?identifier=x"}, "b": [{"reference": "Patient?identifier=x"},
                       {"reference": "Nope?x=1"}, {"reference": "Patient/1"}, {"reference": "Group?name=g"}]});
        conditional_references(&v, &mut found).unwrap();
        assert_eq!(found, ["Patient?identifier=x", "Group?name=g"]);
        let many: Vec<Value> = (0..=MAX_CONDITIONAL_REFERENCES)
            .map(|i| json!({"reference": format!("Patient?_id=p{i}")}))
            .collect();
        let e = conditional_references(&json!({"item": many}), &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("more than 1000"), "{}", e.message);
    }

    #[test]
    fn parses_entry_urls() {
        let e = parse_entry(
            &json!({"request": {"method": "GET", "url": "Patient/a/_history/2"}}),
            "http://x/fhir",
        )
        .unwrap();
        assert!(matches!(e.target, Target::Version(..)));
        let e = parse_entry(&json!({"request": {"method": "PUT", "url": "http://x/fhir/Patient/a"}, "resource": {}}), "http://x/fhir").unwrap();
        assert!(matches!(e.target, Target::Instance(..)));
        let e = parse_entry(
            &json!({"request": {"method": "PUT", "url": "Patient?name=x"}, "resource": {}}),
            "b",
        )
        .unwrap();
        assert!(matches!(e.target, Target::Type(..)) && e.query.as_deref() == Some("name=x"));
        for (method, url) in [
            ("PUT", "Patient"),
            ("DELETE", "Patient"),
            ("POST", "Patient/a"),
            ("POST", "Patient?name=x"),
        ] {
            assert!(
                parse_entry(
                    &json!({"request": {"method": method, "url": url}, "resource": {}}),
                    "b"
                )
                .is_err(),
                "{method} {url}"
            );
        }
        assert!(parse_entry(
            &json!({"request": {"method": "HEAD", "url": "Patient"}}),
            "b"
        )
        .is_err());
        assert!(parse_entry(
            &json!({"request": {"method": "POST", "url": "Patient"}}),
            "b"
        )
        .is_err());
    }
}
