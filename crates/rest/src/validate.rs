//! `$validate` (FHIR R4 Resource-validate operation, §2.38): would this
//! resource be accepted? The same checks as a write — the URL's type and
//! id, the structure, the secret-reference rules, AccessPolicy patterns —
//! answered with an OperationOutcome; nothing is stored.

use fhirbox_fhir::OperationOutcome;
use serde_json::Value;

use crate::error::{ErrorKind, RestError};
use crate::reply::Reply;
use crate::resource::{check_id, check_type, validate_body, IdRule};
use crate::Rest;

/// What `$validate` checks the resource for (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    Delete,
}

/// The resource and mode of a `$validate` request: the body itself, or a
/// Parameters resource with `resource` and `mode`.
fn arguments<'a>(
    resource_type: &str,
    body: Option<&'a Value>,
    query_mode: Option<&str>,
) -> Result<(Option<&'a Value>, Option<String>), RestError> {
    let Some(body) = body else {
        return Ok((None, query_mode.map(str::to_owned)));
    };
    let is_parameters = body.get("resourceType").and_then(Value::as_str) == Some("Parameters")
        && resource_type != "Parameters";
    if !is_parameters {
        return Ok((Some(body), query_mode.map(str::to_owned)));
    }
    let mut resource = None;
    let mut mode = query_mode.map(str::to_owned);
    for (i, parameter) in body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("Parameters.parameter[{i}]");
        match parameter.get("name").and_then(Value::as_str) {
            Some("resource") => {
                resource = Some(parameter.get("resource").ok_or_else(|| {
                    RestError::bad_request("the parameter \"resource\" needs a resource").at(&at)
                })?)
            }
            Some("mode") => {
                mode = Some(
                    parameter
                        .get("valueCode")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            RestError::bad_request("the parameter \"mode\" needs a valueCode")
                                .at(&at)
                        })?
                        .to_owned(),
                )
            }
            Some("profile") => {
                return Err(RestError::not_supported(
                    ErrorKind::BadRequest,
                    "validation against a profile is not supported yet; $validate checks the base R4 definition of the type",
                )
                .at(at))
            }
            _ => {
                return Err(RestError::bad_request(
                    "$validate has no parameter of this name; use resource and mode",
                )
                .at(at))
            }
        }
    }
    Ok((resource, mode))
}

impl Rest {
    /// `POST /{type}/$validate` and `POST /{type}/{id}/$validate`: an
    /// OperationOutcome (200) listing every problem, or saying there is
    /// none. A request that cannot be validated at all (unknown type, bad
    /// mode, no resource) is an error instead.
    ///
    /// Only root learns why a secret reference would be refused (the vault
    /// config's names, paths and scopes, docs/security.md); anyone else who
    /// may read the type learns that it would be.
    pub async fn validate(
        &self,
        resource_type: &str,
        id: Option<&str>,
        body: Option<&Value>,
        query_mode: Option<&str>,
        caller_is_root: bool,
    ) -> Result<Reply, RestError> {
        check_type(resource_type)?;
        if let Some(id) = id {
            check_id(id)?;
        }
        let (resource, mode) = arguments(resource_type, body, query_mode)?;
        let mode = match (mode.as_deref(), id) {
            (Some("create"), _) | (None, None) => Mode::Create,
            (Some("update"), _) | (None, Some(_)) => Mode::Update,
            (Some("delete"), _) => Mode::Delete,
            (Some(_), _) => {
                return Err(RestError::bad_request(
                    "this is not a $validate mode; use create, update or delete",
                )
                .at("mode"))
            }
        };
        let outcome = match mode {
            Mode::Delete => {
                let Some(id) = id else {
                    return Err(RestError::bad_request(
                        "mode delete needs the id in the URL: POST /{type}/{id}/$validate?mode=delete",
                    ));
                };
                match self.read_current(resource_type, id).await {
                    Ok(_) => None,
                    Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => Some(e),
                    Err(e) => return Err(e),
                }
            }
            Mode::Create | Mode::Update => {
                let Some(resource) = resource else {
                    return Err(RestError::bad_request(
                        "send the resource to validate as the body, or as the parameter \"resource\" of a Parameters body",
                    ));
                };
                let rule = match (mode, id) {
                    (Mode::Update, Some(id)) => IdRule::MustEqual(id),
                    (Mode::Update, None) => {
                        return Err(RestError::bad_request(
                            "mode update needs the id in the URL: POST /{type}/{id}/$validate",
                        ))
                    }
                    _ => IdRule::ServerAssigned,
                };
                self.write_problems(resource_type, id, resource, rule, caller_is_root)
                    .err()
            }
        };
        let outcome = match outcome {
            Some(problem) => problem.outcome(),
            None if self.checks.structure.is_none() => OperationOutcome::information(format!(
                "no problems found; structural validation is off on this server (BOX_VALIDATION=off), so only the {resource_type}'s type, id and secret references were checked"
            )),
            None => OperationOutcome::information(format!(
                "no problems found: this {resource_type} has the structure FHIR R4 defines"
            )),
        };
        Ok(Reply::json(outcome.to_json().to_string()))
    }

    /// The checks of a write that need no database: type, id and
    /// structure, the secret-reference rules, and an AccessPolicy's pattern.
    fn write_problems(
        &self,
        resource_type: &str,
        id: Option<&str>,
        resource: &Value,
        rule: IdRule<'_>,
        caller_is_root: bool,
    ) -> Result<(), RestError> {
        validate_body(
            resource,
            resource_type,
            rule,
            self.checks.structure.as_deref(),
        )?;
        crate::references::check_references(
            resource_type,
            id.unwrap_or("(new)"),
            resource,
            self.checks.vault.as_ref(),
        )
        .map_err(|e| {
            if caller_is_root {
                e
            } else {
                RestError::unprocessable(
                    "a secret reference in this resource would be refused; the root client can see why",
                )
            }
        })?;
        if resource_type == "AccessPolicy" {
            fhirbox_auth::write_rules::finalize_policy(resource.clone(), None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirbox_fhir::IssueType;
    use serde_json::json;

    #[test]
    fn parameters_carry_the_resource_and_mode() {
        let patient = json!({"resourceType": "Patient"});
        let wrapped = json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient}, {"name": "mode", "valueCode": "update"}]});
        let (resource, mode) = arguments("Patient", Some(&wrapped), None).unwrap();
        assert_eq!(resource, Some(&patient));
        assert_eq!(mode.as_deref(), Some("update"));
        // A Parameters resource validated as itself is not unwrapped.
        let (resource, _) = arguments("Parameters", Some(&wrapped), None).unwrap();
        assert_eq!(resource, Some(&wrapped));
        let profile = json!({"resourceType": "Parameters", "parameter": [
            {"name": "profile", "valueUri": "http://example.org/p"}]});
        let e = arguments("Patient", Some(&profile), None).unwrap_err();
        assert_eq!(e.code, IssueType::NotSupported);
        let (_, mode) = arguments("Patient", Some(&patient), Some("create")).unwrap();
        assert_eq!(mode.as_deref(), Some("create"));
    }
}
