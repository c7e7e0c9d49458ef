//! The single-resource interactions and searches (R4 §3.1.0): read, vread,
//! create, update, patch, delete, search and history. Each one checks its
//! arguments, hands a write to the shared pipeline in `resource`, and
//! answers with a `Reply`.

use fhirbox_auth::access::RequestFacts;
use fhirbox_auth::Identity;
use fhirbox_fhir::{IssueType, OperationOutcome};
use fhirbox_store::{
    HistoryPage, HistoryScope, Refusal, ResourceHistory, ResourceRead, ResourceSearch, StoreError,
    StoredResource, TargetCheck,
};
use serde_json::{json, Value};

use crate::bundle_out::BundleWriter;
use crate::error::{ErrorKind, RestError};
use crate::hooks::{self, Prehashed};
use crate::include::{Included, MAX_INCLUDED, MAX_ITERATE_ROUNDS};
use crate::patch::Patch;
use crate::reply::{etag, not_modified, resource_reply, ReadConditions, Reply, ReturnPreference};
use crate::resource::{self, check_id, check_type};
use crate::search::{self, Params};
use crate::shape::{self, Shape};
use crate::Rest;

/// `<base>/<type>/<id>/_history/<version>`: where a written version lives.
pub(crate) fn location(base: &str, stored: &StoredResource) -> String {
    format!(
        "{base}/{}/{}/_history/{}",
        stored.resource_type, stored.id, stored.version_id
    )
}

/// A read's answer: the resource, shaped when `_summary` or `_elements`
/// asked, or 304 when the client holds it already.
fn read_reply(
    stored: &StoredResource,
    conditions: &ReadConditions,
    shape: Option<&Shape>,
) -> Reply {
    if conditions.not_modified(stored) {
        return not_modified(stored);
    }
    let mut reply = resource_reply(200, stored, None, ReturnPreference::Representation, "");
    if let (Some(shape), Some(body)) = (shape, &reply.body) {
        reply.body = Some(shape.apply(&stored.resource_type, body));
    }
    reply
}

/// A delete's answer: 204, or 200 with an OperationOutcome when asked;
/// the version headers of the tombstone when there is one.
fn delete_reply(
    tombstone: Option<&StoredResource>,
    preference: ReturnPreference,
    message: &str,
) -> Reply {
    let preference = match preference {
        ReturnPreference::OperationOutcome => ReturnPreference::OperationOutcome,
        _ => ReturnPreference::Minimal,
    };
    let status = if preference == ReturnPreference::Minimal {
        204
    } else {
        200
    };
    match tombstone {
        Some(r) => resource_reply(status, r, None, preference, message),
        None => Reply {
            status,
            body: (status == 200)
                .then(|| OperationOutcome::information(message).to_json().to_string()),
            etag: None,
            last_modified: None,
            location: None,
        },
    }
}

impl Rest {
    /// Loads the current version or explains why there is none (404 / 410).
    pub async fn read_current(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<StoredResource, RestError> {
        check_type(resource_type)?;
        check_id(id)?;
        match self.store.read(resource_type, id).await? {
            None => Err(RestError::not_found(format!(
                "{resource_type}/{id} does not exist"
            ))),
            Some(r) if r.deleted => Err(StoreError::Gone {
                resource_type: resource_type.into(),
                id: id.into(),
                version_id: r.version_id,
            }
            .into()),
            Some(r) => Ok(r),
        }
    }

    /// Loads one version or explains why there is none.
    pub async fn read_version(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource, RestError> {
        check_type(resource_type)?;
        check_id(id)?;
        let version_id = version
            .parse::<i64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                RestError::bad_request(format!(
                    "{version:?} is not a version id; versions are whole numbers from 1"
                ))
            })?;
        match self.store.vread(resource_type, id, version_id).await? {
            None => Err(RestError::not_found(format!(
                "{resource_type}/{id} has no version {version_id}"
            ))),
            Some(r) if r.deleted => Err(RestError::new(
                ErrorKind::Gone,
                IssueType::Deleted,
                format!("version {version_id} of {resource_type}/{id} is a deletion"),
            )),
            Some(r) => Ok(r),
        }
    }

    /// `GET /{type}/{id}`; 304 when `conditions` say the client's copy is
    /// current; `_summary` and `_elements` in `params` shape the resource.
    pub async fn read(
        &self,
        resource_type: &str,
        id: &str,
        conditions: &ReadConditions,
        params: &Params,
    ) -> Result<Reply, RestError> {
        let shaping = shape::parse(&[resource_type], params, false)?;
        let stored = self.read_current(resource_type, id).await?;
        Ok(read_reply(&stored, conditions, shaping.shape.as_ref()))
    }

    /// `GET /{type}/{id}/_history/{vid}`, conditional like `read`.
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
        conditions: &ReadConditions,
        params: &Params,
    ) -> Result<Reply, RestError> {
        let shaping = shape::parse(&[resource_type], params, false)?;
        let stored = self.read_version(resource_type, id, version).await?;
        Ok(read_reply(&stored, conditions, shaping.shape.as_ref()))
    }

    /// `POST /{type}`: the server assigns the id. With `If-None-Exist`
    /// criteria (R4 §3.1.0.8.1) the create happens only when nothing
    /// matches: one match is answered 200 with that resource, several 412.
    pub async fn create(
        &self,
        base: &str,
        resource_type: &str,
        body: Value,
        preference: ReturnPreference,
        if_none_exist: Option<&str>,
    ) -> Result<Reply, RestError> {
        let prehashed = Prehashed::for_body(resource_type, &body).await?;
        let mut op = resource::prepare_create(
            resource_type,
            resource::new_id(),
            body,
            &self.checks,
            prehashed,
        )?;
        if let Some(criteria) = if_none_exist {
            op.matching = Some(search::parse_criteria(
                resource_type,
                criteria,
                "If-None-Exist",
                true,
            )?);
        }
        let outcome = self.write(op).await?;
        let stored = &outcome.resource;
        let (status, message) = if outcome.created {
            (
                201,
                format!("created {}/{}", stored.resource_type, stored.id),
            )
        } else {
            (
                200,
                format!(
                    "{}/{} matches If-None-Exist; nothing was created",
                    stored.resource_type, stored.id
                ),
            )
        };
        Ok(resource_reply(
            status,
            stored,
            Some(location(base, stored)),
            preference,
            &message,
        ))
    }

    /// `PUT /{type}/{id}`: update, or create with the client's id.
    pub async fn update(
        &self,
        base: &str,
        resource_type: &str,
        id: &str,
        body: Value,
        if_match: Option<i64>,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let prehashed = Prehashed::for_body(resource_type, &body).await?;
        let op =
            resource::prepare_update(resource_type, id, body, if_match, &self.checks, prehashed)?;
        self.put_reply(base, op, preference).await
    }

    /// `PUT /{type}?criteria` (R4 §3.1.0.4.3): replaces the one resource the
    /// criteria match, creates when none does (a body without an id), and
    /// is refused with 412 when several do.
    #[allow(clippy::too_many_arguments)]
    pub async fn conditional_update(
        &self,
        base: &str,
        resource_type: &str,
        criteria: &str,
        body: Value,
        if_match: Option<i64>,
        preference: ReturnPreference,
        identity: &Identity,
    ) -> Result<Reply, RestError> {
        let prehashed = Prehashed::for_body(resource_type, &body).await?;
        let op = resource::prepare_conditional_update(
            resource_type,
            criteria,
            body,
            if_match,
            &self.checks,
            prehashed,
            self.target_check(identity, "put", resource_type),
        )?;
        self.put_reply(base, op, preference).await
    }

    async fn put_reply(
        &self,
        base: &str,
        op: fhirbox_store::WriteOp,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let outcome = self.write(op).await?;
        let stored = &outcome.resource;
        let (status, loc) = if outcome.created {
            (201, Some(location(base, stored)))
        } else {
            (200, None)
        };
        Ok(resource_reply(
            status,
            stored,
            loc,
            preference,
            &format!(
                "stored {}/{} version {}",
                stored.resource_type, stored.id, stored.version_id
            ),
        ))
    }

    /// `PATCH /{type}/{id}` with a JSON Patch (RFC 6902) or a merge patch
    /// (RFC 7386).
    pub async fn patch(
        &self,
        resource_type: &str,
        id: &str,
        patch: Patch,
        if_match: Option<i64>,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let prehashed = patch.prehash(resource_type).await?;
        let op =
            resource::prepare_patch(resource_type, id, patch, if_match, &self.checks, prehashed)?;
        self.patch_reply(op, preference).await
    }

    /// `PATCH /{type}?criteria`: patches the one resource the criteria
    /// match; 404 when none does, 412 when several do.
    pub async fn conditional_patch(
        &self,
        resource_type: &str,
        criteria: &str,
        patch: Patch,
        if_match: Option<i64>,
        preference: ReturnPreference,
        identity: &Identity,
    ) -> Result<Reply, RestError> {
        let prehashed = patch.prehash(resource_type).await?;
        let op = resource::prepare_patch(
            resource_type,
            &resource::new_id(),
            patch,
            if_match,
            &self.checks,
            prehashed,
        )?;
        let op = resource::conditional(
            op,
            criteria,
            "the conditional patch's criteria",
            self.target_check(identity, "patch", resource_type),
        )?;
        self.patch_reply(op, preference).await
    }

    async fn patch_reply(
        &self,
        op: fhirbox_store::WriteOp,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let outcome = self.write(op).await?;
        let stored = &outcome.resource;
        Ok(resource_reply(
            200,
            stored,
            None,
            preference,
            &format!(
                "patched {}/{} to version {}",
                stored.resource_type, stored.id, stored.version_id
            ),
        ))
    }

    /// `DELETE /{type}/{id}`: 204, or 200 with an OperationOutcome when asked.
    pub async fn delete(
        &self,
        resource_type: &str,
        id: &str,
        if_match: Option<i64>,
        preference: ReturnPreference,
    ) -> Result<Reply, RestError> {
        let op = resource::prepare_delete(resource_type, id, if_match)?;
        let outcome = self.write(op).await?;
        let message = if outcome.changed {
            format!("deleted {resource_type}/{id}")
        } else {
            format!("{resource_type}/{id} was already deleted")
        };
        Ok(delete_reply(Some(&outcome.resource), preference, &message))
    }

    /// `DELETE /{type}?criteria` (R4 §3.1.0.7.1): deletes the one resource
    /// the criteria match; nothing to delete when none does (204, like a
    /// delete of a deleted resource); 412 when several do.
    pub async fn conditional_delete(
        &self,
        resource_type: &str,
        criteria: &str,
        if_match: Option<i64>,
        preference: ReturnPreference,
        identity: &Identity,
    ) -> Result<Reply, RestError> {
        if self.checks.conditional_delete_max > 1 {
            if let Some(reply) = self
                .delete_matches(resource_type, criteria, if_match, preference, identity)
                .await?
            {
                return Ok(reply);
            }
        }
        let op = resource::prepare_delete(resource_type, &resource::new_id(), if_match)?;
        let op = resource::conditional(
            op,
            criteria,
            "the conditional delete's criteria",
            self.target_check(identity, "delete", resource_type),
        )?;
        match self.write(op).await {
            Ok(outcome) => {
                let r = &outcome.resource;
                let message = format!("deleted {}/{}", r.resource_type, r.id);
                Ok(delete_reply(Some(r), preference, &message))
            }
            // If-Match names a version of a resource that is not there.
            Err(e @ StoreError::NoMatch { .. }) if if_match.is_some() => Err(RestError::new(
                ErrorKind::PreconditionFailed,
                IssueType::Conflict,
                format!("{e}, so If-Match cannot hold; nothing was deleted"),
            )),
            Err(e @ StoreError::NoMatch { .. }) => Ok(delete_reply(
                None,
                preference,
                &format!("{e}; nothing was deleted"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// A conditional delete allowed to delete several matches
    /// (`BOX_CONDITIONAL_DELETE_MAX`): with two or more, each is authorized
    /// as `DELETE /fhir/{type}/{id}` and all are deleted in one transaction,
    /// each at the version the search saw (a change since is a 412 and
    /// nothing is deleted). `None`: at most one matches, which the single
    /// form handles.
    async fn delete_matches(
        &self,
        resource_type: &str,
        criteria: &str,
        if_match: Option<i64>,
        preference: ReturnPreference,
        identity: &Identity,
    ) -> Result<Option<Reply>, RestError> {
        let max = self.checks.conditional_delete_max;
        let matching = search::parse_criteria(
            resource_type,
            criteria,
            "the conditional delete's criteria",
            true,
        )?;
        let page = self
            .store
            .search(fhirbox_store::SearchQuery {
                count: u32::try_from(max).unwrap_or(u32::MAX),
                ..matching.query.clone()
            })
            .await?;
        if page.next.is_some() {
            return Err(RestError::new(
                ErrorKind::PreconditionFailed,
                IssueType::MultipleMatches,
                format!(
                    "more than {max} {resource_type} resources match {}; this server deletes at most {max} at once (BOX_CONDITIONAL_DELETE_MAX), so nothing was deleted",
                    matching.criteria
                ),
            ));
        }
        if page.resources.len() < 2 {
            return Ok(None);
        }
        if if_match.is_some() {
            return Err(RestError::new(
                ErrorKind::PreconditionFailed,
                IssueType::MultipleMatches,
                format!(
                    "{} {resource_type} resources match {}, and If-Match names one version; nothing was deleted",
                    page.resources.len(),
                    matching.criteria
                ),
            ));
        }
        let check = self.target_check(identity, "delete", resource_type);
        let mut ops = Vec::with_capacity(page.resources.len());
        for found in &page.resources {
            check(&found.id)?;
            ops.push(resource::prepare_delete(
                resource_type,
                &found.id,
                Some(found.version_id),
            )?);
        }
        let outcomes = self.write_all(ops).await?;
        Ok(Some(delete_reply(
            None,
            preference,
            &format!("deleted {} {resource_type} resources", outcomes.len()),
        )))
    }

    /// The check a conditional update, patch or delete makes once it knows
    /// its resource: the write is authorized as `{method} /fhir/{type}/{id}`,
    /// the request it stands for, so a policy that never let the caller
    /// write that resource by id does not let it by criteria either.
    pub(crate) fn target_check(
        &self,
        identity: &Identity,
        method: &'static str,
        resource_type: &str,
    ) -> TargetCheck {
        let auth = self.auth.clone();
        let identity = identity.clone();
        let resource_type = resource_type.to_owned();
        std::sync::Arc::new(move |id: &str| {
            let facts = RequestFacts::new(
                method,
                Some(&resource_type),
                Some(id),
                None,
                None,
                Vec::new(),
            );
            auth.authorize(&identity, &facts).map_err(|denial| {
                Refusal::forbidden(format!(
                    "{}; the resource the criteria match is {resource_type}/{id}",
                    denial.message()
                ))
            })
        })
    }

    /// `GET /{type}?…` or `GET /?…`: a searchset Bundle.
    pub async fn search(
        &self,
        base: &str,
        resource_type: Option<&str>,
        params: &Params,
        strict: bool,
        identity: &Identity,
    ) -> Result<Reply, RestError> {
        if let Some(rt) = resource_type {
            check_type(rt)?;
        }
        Ok(Reply::json(
            self.searchset(base, resource_type, params, strict, identity)
                .await?,
        ))
    }

    /// Runs a search and renders its searchset Bundle.
    /// Runs a search and renders its searchset Bundle; `identity` decides
    /// which included resources it may see.
    pub(crate) async fn searchset(
        &self,
        base: &str,
        resource_type: Option<&str>,
        params: &Params,
        strict: bool,
        identity: &Identity,
    ) -> Result<String, RestError> {
        let request = search::parse_search(resource_type, params, strict)?;
        // A chain or `_has` reads other types: the caller must be allowed to
        // search each of them as well.
        for searched in &request.chained {
            let facts = RequestFacts::new("GET", Some(searched), None, None, None, Vec::new());
            if let Err(denial) = self.auth.authorize(identity, &facts) {
                return Err(RestError::forbidden(format!(
                    "{}; the search reaches {searched} resources through a chain or _has",
                    denial.message()
                )));
            }
        }
        let path = match resource_type {
            Some(rt) => format!("{base}/{rt}"),
            None => base.to_owned(),
        };
        let self_cursor = request.query.cursor.clone();
        let page = self.store.search(request.query).await?;
        let mut links = vec![(
            "self",
            search::link(&path, &request.applied, self_cursor.as_ref()),
        )];
        if let Some(prev) = &page.previous {
            links.push((
                "previous",
                search::link(&path, &request.applied, Some(prev)),
            ));
        }
        if let Some(next) = &page.next {
            links.push(("next", search::link(&path, &request.applied, Some(next))));
        }
        let included = if request.includes.is_empty() {
            Included::default()
        } else {
            self.included(identity, &page.resources, &request.includes)
                .await?
        };
        let mut bundle = BundleWriter::new("searchset", page.total, &links);
        let entries = page
            .resources
            .iter()
            .map(|r| (r, "match"))
            .chain(included.resources.iter().map(|r| (r, "include")));
        for (r, mode) in entries {
            let body = hooks::public_body(r);
            // `_summary` and `_elements` shape the matches; an included
            // resource, of another type, comes whole.
            let body = match &request.shape {
                Some(shape) if mode == "match" => shape.apply(&r.resource_type, &body).into(),
                _ => body,
            };
            bundle.entry(
                json!({"fullUrl": format!("{base}/{}/{}", r.resource_type, r.id), "search": {"mode": mode}}),
                Some(&body),
            );
        }
        // What the includes left out, said without naming it.
        let mut notes = Vec::new();
        if included.withheld > 0 {
            notes.push(format!(
                "{} included resources were withheld: the access policies do not allow this client to read them",
                included.withheld
            ));
        }
        if included.truncated {
            notes.push(format!(
                "the includes were cut short: more than {MAX_INCLUDED} resources matched _include/_revinclude, or :iterate was still finding more after {MAX_ITERATE_ROUNDS} rounds; use a smaller _count"
            ));
        }
        for note in notes {
            let outcome = fhirbox_fhir::OperationOutcome::single(
                fhirbox_fhir::IssueSeverity::Warning,
                IssueType::Informational,
                note,
            );
            bundle.entry(
                json!({"search": {"mode": "outcome"}}),
                Some(&outcome.to_json().to_string()),
            );
        }
        if !request.ignored.is_empty() {
            // R4 §3.1.1.4: parameters the server ignored are reported in an
            // OperationOutcome entry (search.mode = outcome), not counted.
            let outcome = fhirbox_fhir::OperationOutcome::single(
                fhirbox_fhir::IssueSeverity::Warning,
                IssueType::NotSupported,
                format!(
                    "these search parameters are not supported and were ignored: {}",
                    request.ignored.join(", ")
                ),
            );
            bundle.entry(
                json!({"search": {"mode": "outcome"}}),
                Some(&outcome.to_json().to_string()),
            );
        }
        Ok(bundle.finish())
    }

    /// `GET /{type}/{id}/_history`, `/{type}/_history` or `/_history`.
    pub async fn history(
        &self,
        base: &str,
        scope: HistoryScope,
        params: &Params,
        strict: bool,
    ) -> Result<Reply, RestError> {
        let path = match &scope {
            HistoryScope::Instance { resource_type, id } => {
                check_type(resource_type)?;
                check_id(id)?;
                if self.store.read(resource_type, id).await?.is_none() {
                    return Err(RestError::not_found(format!(
                        "{resource_type}/{id} does not exist"
                    )));
                }
                format!("{base}/{resource_type}/{id}/_history")
            }
            HistoryScope::Type { resource_type } => {
                check_type(resource_type)?;
                format!("{base}/{resource_type}/_history")
            }
            HistoryScope::System => format!("{base}/_history"),
        };
        let (query, applied) = search::parse_history(scope, params, strict)?;
        let self_cursor = query.cursor.clone();
        let page: HistoryPage = self.store.history(query).await?;
        let mut links = vec![("self", search::link(&path, &applied, self_cursor.as_ref()))];
        if let Some(next) = &page.next {
            links.push(("next", search::link(&path, &applied, Some(next))));
        }
        let mut bundle = BundleWriter::new("history", page.total, &links);
        for r in &page.entries {
            let (method, url, status) = if r.deleted {
                (
                    "DELETE",
                    format!("{}/{}", r.resource_type, r.id),
                    "204 No Content",
                )
            } else if r.version_id == 1 {
                ("POST", r.resource_type.clone(), "201 Created")
            } else {
                ("PUT", format!("{}/{}", r.resource_type, r.id), "200 OK")
            };
            bundle.entry(
                json!({
                    "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
                    "request": {"method": method, "url": url},
                    "response": {"status": status, "etag": etag(r.version_id), "lastModified": r.last_updated_text()},
                }),
                Some(&hooks::public_body(r)),
            );
        }
        Ok(Reply::json(bundle.finish()))
    }
}
