//! The one write pipeline every path goes through (single interactions, batch
//! and transaction entries): check the type and id, validate the body, and
//! turn the request into a store `WriteOp`.

use std::sync::Arc;

use fhirbox_fhir::{is_known_resource_type, is_valid_id};
use fhirbox_store::{Refusal, StoredResource, TargetCheck, WriteKind, WriteOp};
use serde_json::Value;

use fhirbox_fhir::{Issue, IssueSeverity, IssueType};
use fhirbox_secrets::SecretResolver;
use fhirbox_validation::{Problems, Validator};

use crate::error::{ErrorKind, RestError};
use crate::hooks;
use crate::patch::Patch;

/// What every write is checked against besides its type's own rules: the
/// same for single interactions, bundle entries and the init bundle.
#[derive(Clone, Default)]
pub struct WriteChecks {
    /// External secrets (docs/external-secrets.md); `None` when off.
    pub vault: Option<SecretResolver>,
    /// Structural validation (docs/validation.md); `None` when
    /// `BOX_VALIDATION=off`.
    pub structure: Option<Arc<Validator>>,
    /// The largest body the server accepts; a PATCH result may not outgrow it.
    pub max_body_bytes: usize,
    /// Most entries one batch or transaction bundle may carry.
    pub max_bundle_entries: usize,
    /// Most resources one conditional delete may delete
    /// (`BOX_CONDITIONAL_DELETE_MAX`; 1: a single match only).
    pub conditional_delete_max: usize,
}

/// Rejects unknown resource types in a URL (404: there is no such endpoint).
pub fn check_type(resource_type: &str) -> Result<(), RestError> {
    if is_known_resource_type(resource_type) {
        Ok(())
    } else {
        Err(RestError::not_supported(
            ErrorKind::NotFound,
            format!(
                "{resource_type:?} is not a resource type this server knows; use an R4 type such as Patient, or one of the server types (Client, AccessPolicy, …)"
            ),
        ))
    }
}

/// Rejects an id that breaks the FHIR id rule.
pub fn check_id(id: &str) -> Result<(), RestError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(RestError::bad_request(format!(
            "{id:?} is not a valid FHIR id: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '.'"
        )))
    }
}

/// How the body's `id` relates to the request.
#[derive(Debug, Clone, Copy)]
pub enum IdRule<'a> {
    /// Create: the server assigns the id; one in the body is ignored.
    ServerAssigned,
    /// Update: the body must carry exactly this id.
    MustEqual(&'a str),
    /// Conditional update: an id in the body, if any, must be the one of the
    /// resource the criteria match (the store compares them).
    OfTheMatch,
}

/// The checks every stored resource passes: it is one resource of the
/// URL's type with the URL's id, and (unless validation is off) it has the
/// structure its type defines.
pub fn validate_body(
    body: &Value,
    resource_type: &str,
    id_rule: IdRule<'_>,
    structure: Option<&Validator>,
) -> Result<(), RestError> {
    check_identity(body, resource_type, id_rule)?;
    if crate::shape::is_subset(body) {
        // Writing a part read with `_summary` or `_elements` would lose the rest.
        return Err(RestError::unprocessable(
            "the resource carries the SUBSETTED tag: it is a part of a resource (read with _summary or _elements); read it whole, change that and send it, or remove the tag",
        )
        .at(format!("{resource_type}.meta.tag")));
    }
    if let Some(validator) = structure {
        if let Err(problems) = validator.validate(resource_type, body) {
            // On create the server assigns the id, so the body's is not checked.
            let ignored = format!("{resource_type}.id");
            let mut problems = problems;
            if matches!(id_rule, IdRule::ServerAssigned) {
                problems.listed.retain(|p| p.expression != ignored);
            }
            if !problems.is_empty() {
                return Err(malformed(resource_type, problems));
            }
        }
    }
    Ok(())
}

/// The error of a body that breaks its type's structure: one issue per
/// problem, and one more saying how many were not listed.
pub fn malformed(resource_type: &str, problems: Problems) -> RestError {
    let count = problems.listed.len() + problems.more;
    let mut issues: Vec<Issue> = problems
        .listed
        .into_iter()
        .map(|p| Issue {
            severity: IssueSeverity::Error,
            code: IssueType::from_code(p.kind.code()).unwrap_or(IssueType::Structure),
            diagnostics: p.message,
            expression: vec![p.expression],
        })
        .collect();
    if problems.more > 0 {
        issues.push(Issue {
            severity: IssueSeverity::Information,
            code: IssueType::Informational,
            diagnostics: format!(
                "{} more problems were found and not listed; fix these and send it again",
                problems.more
            ),
            expression: Vec::new(),
        });
    }
    RestError::malformed(
        format!(
            "the {resource_type} does not have the structure FHIR R4 defines ({count} problem(s))"
        ),
        issues,
    )
}

/// The body is a JSON object naming the URL's type (and, on update, id).
fn check_identity(body: &Value, resource_type: &str, id_rule: IdRule<'_>) -> Result<(), RestError> {
    let Some(fields) = body.as_object() else {
        return Err(RestError::bad_request(
            "the body must be a JSON object holding one FHIR resource",
        ));
    };
    match fields.get("resourceType") {
        None => {
            return Err(RestError::bad_request(format!(
                "resourceType is missing; add \"resourceType\": \"{resource_type}\""
            ))
            .at("resourceType"))
        }
        Some(Value::String(rt)) if rt == resource_type => {}
        Some(Value::String(rt)) if !is_known_resource_type(rt) => {
            return Err(
                RestError::bad_request(format!("{rt:?} is not a known resource type"))
                    .at("resourceType"),
            )
        }
        Some(Value::String(rt)) => {
            return Err(RestError::bad_request(format!(
                "resourceType {rt:?} does not match the URL, which names {resource_type:?}"
            ))
            .at("resourceType"))
        }
        Some(_) => {
            return Err(RestError::bad_request("resourceType must be a string").at("resourceType"))
        }
    }
    if let IdRule::MustEqual(url_id) = id_rule {
        match fields.get("id") {
            Some(Value::String(id)) if id == url_id => {}
            Some(Value::String(id)) => {
                return Err(RestError::bad_request(format!(
                    "the resource id {id:?} does not match the id in the URL ({url_id:?})"
                ))
                .at(format!("{resource_type}.id")))
            }
            Some(_) => return Err(RestError::bad_request("id must be a string").at(format!("{resource_type}.id"))),
            None => {
                return Err(RestError::bad_request(format!(
                    "the resource has no id; an update must carry \"id\": \"{url_id}\", the id in the URL"
                ))
                .at(format!("{resource_type}.id")))
            }
        }
    }
    if let (IdRule::OfTheMatch, Some(id)) = (id_rule, fields.get("id")) {
        if !id.as_str().is_some_and(is_valid_id) {
            return Err(RestError::bad_request(
                "id must be a valid FHIR id, the one of the resource the criteria match, or left out",
            )
            .at(format!("{resource_type}.id")));
        }
    }
    if let Some(meta) = fields.get("meta") {
        validate_meta(meta).map_err(|(message, at)| {
            RestError::bad_request(message).at(format!("{resource_type}.meta{at}"))
        })?;
    }
    Ok(())
}

/// `meta` as R4 defines it (Meta, §2.24.0.1): security labels and tags decide
/// who may see a resource, so their shape must be right before they are stored.
/// Errors are (message, location below `meta`).
fn validate_meta(meta: &Value) -> Result<(), (String, String)> {
    let Some(fields) = meta.as_object() else {
        return Err(("meta must be a JSON object".into(), String::new()));
    };
    for (key, value) in fields {
        let at = format!(".{key}");
        let ok = match key.as_str() {
            "id" | "versionId" | "lastUpdated" | "source" => value.is_string(),
            "profile" => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
            "security" | "tag" => {
                let Some(items) = value.as_array() else {
                    return Err((format!("meta.{key} must be an array of Codings"), at));
                };
                for (i, coding) in items.iter().enumerate() {
                    validate_coding(coding)
                        .map_err(|m| (format!("meta.{key}[{i}]: {m}"), format!("{at}[{i}]")))?;
                }
                true
            }
            "extension" => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_object)),
            _ => {
                return Err((
                    format!("meta.{key} is not an element of Meta; use versionId, lastUpdated, source, profile, security or tag"),
                    at,
                ))
            }
        };
        if !ok {
            let expected = match key.as_str() {
                "profile" => "an array of canonical URLs",
                "extension" => "an array of Extension objects",
                _ => "a string",
            };
            return Err((format!("meta.{key} must be {expected}"), at));
        }
    }
    Ok(())
}

/// A Coding (R4 §2.24.0.6): an object of these strings and `userSelected`.
fn validate_coding(coding: &Value) -> Result<(), String> {
    let Some(fields) = coding.as_object() else {
        return Err(
            "a Coding must be a JSON object such as {\"system\": \"…\", \"code\": \"…\"}".into(),
        );
    };
    for (key, value) in fields {
        let ok = match key.as_str() {
            "id" | "system" | "version" | "code" | "display" => value.is_string(),
            "userSelected" => value.is_boolean(),
            "extension" => value.is_array(),
            _ => return Err(format!("{key} is not an element of Coding; use system, version, code, display or userSelected")),
        };
        if !ok {
            return Err(format!("Coding.{key} has the wrong type"));
        }
    }
    Ok(())
}

/// A new server-assigned id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Create (`POST /{type}`) with a server-assigned id.
pub fn prepare_create(
    resource_type: &str,
    id: String,
    body: Value,
    checks: &WriteChecks,
    prehashed: hooks::Prehashed,
) -> Result<WriteOp, RestError> {
    check_type(resource_type)?;
    validate_body(
        &body,
        resource_type,
        IdRule::ServerAssigned,
        checks.structure.as_deref(),
    )?;
    Ok(stored_write(
        resource_type,
        &id,
        WriteKind::Create(body),
        None,
        checks,
        prehashed,
    ))
}

/// A write that stores a body: it passes the finalizer (secret references,
/// the type's write rules) and is indexed for search.
fn stored_write(
    resource_type: &str,
    id: &str,
    kind: WriteKind,
    if_match: Option<i64>,
    checks: &WriteChecks,
    prehashed: hooks::Prehashed,
) -> WriteOp {
    WriteOp {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        kind,
        if_match,
        finalize: Some(hooks::finalizer(
            resource_type,
            id,
            checks.vault.as_ref(),
            prehashed,
        )),
        index: Some(crate::indexing::indexer()),
        matching: None,
        notify: None,
    }
}

/// Update or create with the client's id (`PUT /{type}/{id}`).
pub fn prepare_update(
    resource_type: &str,
    id: &str,
    body: Value,
    if_match: Option<i64>,
    checks: &WriteChecks,
    prehashed: hooks::Prehashed,
) -> Result<WriteOp, RestError> {
    check_type(resource_type)?;
    check_id(id)?;
    validate_body(
        &body,
        resource_type,
        IdRule::MustEqual(id),
        checks.structure.as_deref(),
    )?;
    Ok(stored_write(
        resource_type,
        id,
        WriteKind::Put(body),
        if_match,
        checks,
        prehashed,
    ))
}

/// PATCH (`PATCH /{type}/{id}`, a JSON Patch or a merge patch): applied to
/// the current version inside the write transaction, then validated like an
/// update.
pub fn prepare_patch(
    resource_type: &str,
    id: &str,
    patch: Patch,
    if_match: Option<i64>,
    checks: &WriteChecks,
    prehashed: hooks::Prehashed,
) -> Result<WriteOp, RestError> {
    check_type(resource_type)?;
    check_id(id)?;
    patch.check()?;
    let rt = resource_type.to_owned();
    let max_bytes = checks.max_body_bytes;
    let structure = checks.structure.clone();
    let transform = move |current: &StoredResource| -> Result<Value, Refusal> {
        // The id is the current version's: a conditional patch finds it in
        // the store. The patch sees what a read shows, never server-held
        // secret material; a masked secret it leaves alone is carried over
        // by the finalizer. A stored body that does not parse is the
        // server's problem (500, logged), not the caller's.
        let id = current.id.as_str();
        let mut doc = hooks::public_value(current).map_err(|e| {
            Refusal::internal(format!(
                "stored body of {rt}/{id} version {} is not JSON: {e}",
                current.version_id
            ))
        })?;
        patch
            .apply(&mut doc, current.body.len(), max_bytes)
            .map_err(|problem| {
                Refusal::invalid(format!(
                    "the {} cannot be applied to {rt}/{id} version {}: {problem}",
                    patch.name(),
                    current.version_id
                ))
            })?;
        // A result the patch made invalid is the patch's fault: 422 (the
        // patch itself was well-formed), with every problem listed.
        validate_body(&doc, &rt, IdRule::MustEqual(id), structure.as_deref()).map_err(|e| {
            let mut e = e.prefixed("after the patch");
            e.kind = ErrorKind::Unprocessable;
            Refusal::from(e)
        })?;
        Ok(doc)
    };
    Ok(stored_write(
        resource_type,
        id,
        WriteKind::Modify(Arc::new(transform)),
        if_match,
        checks,
        prehashed,
    ))
}

/// Delete (`DELETE /{type}/{id}`).
pub fn prepare_delete(
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<WriteOp, RestError> {
    check_type(resource_type)?;
    check_id(id)?;
    Ok(WriteOp {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        kind: WriteKind::Delete,
        if_match,
        finalize: None,
        index: None,
        matching: None,
        notify: None,
    })
}

/// A conditional write (R4 §3.1.0.8): `op` applied to the resource its
/// criteria match, found in the write's own transaction, if `check` lets
/// the caller write that resource. `op` was prepared with a fresh id, which
/// only a conditional update that matches nothing uses (to create).
pub fn conditional(
    mut op: WriteOp,
    criteria: &str,
    what: &str,
    check: TargetCheck,
) -> Result<WriteOp, RestError> {
    let mut matching = crate::search::parse_criteria(&op.resource_type, criteria, what, true)?;
    matching.check_target = Some(check);
    op.matching = Some(matching);
    Ok(op)
}

/// Conditional update (`PUT /{type}?criteria`): the body's id may be left
/// out; the store decides which resource it replaces.
pub fn prepare_conditional_update(
    resource_type: &str,
    criteria: &str,
    body: Value,
    if_match: Option<i64>,
    checks: &WriteChecks,
    prehashed: hooks::Prehashed,
    check: TargetCheck,
) -> Result<WriteOp, RestError> {
    check_type(resource_type)?;
    validate_body(
        &body,
        resource_type,
        IdRule::OfTheMatch,
        checks.structure.as_deref(),
    )?;
    let op = stored_write(
        resource_type,
        &new_id(),
        WriteKind::Put(body),
        if_match,
        checks,
        prehashed,
    );
    conditional(op, criteria, "the conditional update's criteria", check)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The identity and meta checks alone (structure is tested below).
    fn validate_body(body: &Value, resource_type: &str, rule: IdRule<'_>) -> Result<(), RestError> {
        super::validate_body(body, resource_type, rule, None)
    }

    #[test]
    fn structure_problems_become_one_issue_each() {
        let validator = Validator::shared(fhirbox_validation::UnknownElements::Refuse).unwrap();
        let body = json!({"resourceType": "Patient", "id": "not valid!", "gender": 1, "foo": true});
        let e = super::validate_body(&body, "Patient", IdRule::ServerAssigned, Some(&validator))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let at: Vec<&str> = e.issues.iter().map(|i| i.expression[0].as_str()).collect();
        // On create the body's id is the server's to replace, so it is not reported.
        assert_eq!(at, ["Patient.gender", "Patient.foo"]);
        // A number is not a code at all (structure); an unknown element too.
        assert_eq!(e.issues[0].code, IssueType::Structure);
        assert_eq!(e.issues[1].code, IssueType::Structure);
        let e = super::validate_body(
            &body,
            "Patient",
            IdRule::MustEqual("not valid!"),
            Some(&validator),
        )
        .unwrap_err();
        assert_eq!(e.issues[0].expression[0], "Patient.id");
        // Past the cap, one more issue says how many were left out.
        let mut many = json!({"resourceType": "Patient"});
        for i in 0..30 {
            many[format!("x{i}")] = json!(1);
        }
        let e = super::validate_body(&many, "Patient", IdRule::ServerAssigned, Some(&validator))
            .unwrap_err();
        assert_eq!(e.issues.len(), fhirbox_validation::MAX_PROBLEMS + 1);
        assert!(e.issues.last().unwrap().diagnostics.contains("10 more"));
        let fine = json!({"resourceType": "Patient", "gender": "female"});
        assert!(
            super::validate_body(&fine, "Patient", IdRule::ServerAssigned, Some(&validator))
                .is_ok()
        );
    }

    #[test]
    fn body_must_name_the_url_type_and_id() {
        let ok = json!({"resourceType": "Patient", "id": "a"});
        assert!(validate_body(&ok, "Patient", IdRule::MustEqual("a")).is_ok());
        let e = validate_body(&ok, "Observation", IdRule::ServerAssigned).unwrap_err();
        assert!(
            e.message.contains("does not match the URL"),
            "{}",
            e.message
        );
        let e = validate_body(&ok, "Patient", IdRule::MustEqual("b")).unwrap_err();
        assert!(e.message.contains("does not match the id in the URL"));
        let e = validate_body(
            &json!({"resourceType": "Patient"}),
            "Patient",
            IdRule::MustEqual("a"),
        )
        .unwrap_err();
        assert!(e.message.contains("has no id"));
        let e = validate_body(&json!([1]), "Patient", IdRule::ServerAssigned).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = validate_body(
            &json!({"resourceType": "Patient", "meta": 1}),
            "Patient",
            IdRule::ServerAssigned,
        )
        .unwrap_err();
        assert!(e.message.contains("meta"));
    }

    #[test]
    fn meta_security_and_tags_must_be_codings() {
        let check = |meta: Value| {
            validate_body(
                &json!({"resourceType": "Patient", "meta": meta}),
                "Patient",
                IdRule::ServerAssigned,
            )
        };
        assert!(check(json!({"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                              "tag": [{"code": "x", "userSelected": true}], "profile": ["http://x"], "source": "s"}))
        .is_ok());
        let e = check(json!({"security": "R"})).unwrap_err();
        assert!(e.message.contains("array of Codings"), "{}", e.message);
        let e = check(json!({"security": [{"code": 5}]})).unwrap_err();
        assert_eq!(e.expression.as_deref(), Some("Patient.meta.security[0]"));
        assert!(check(json!({"security": ["R"]})).is_err());
        assert!(check(json!({"tag": [{"cod": "x"}]})).is_err());
        assert!(check(json!({"profile": "http://x"})).is_err());
        let e = check(json!({"securty": []})).unwrap_err();
        assert!(
            e.message.contains("not an element of Meta"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_types_are_not_found() {
        assert_eq!(check_type("Nope").unwrap_err().kind, ErrorKind::NotFound);
        assert!(check_type("Client").is_ok());
        assert_eq!(check_id("a/b").unwrap_err().kind, ErrorKind::BadRequest);
    }
}
