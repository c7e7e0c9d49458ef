//! Rules the JSON Schema cannot express, written by hand (each one tested):
//! the constraints on contained resources and local references of R4
//! DomainResource (§2.36: dom-2, dom-3, dom-4), and finding the resources
//! nested in a resource so each is validated as its own type.

use std::collections::HashSet;

use serde_json::Value;

use crate::{Problem, ProblemKind, Problems};

/// The hand-written rules for `body` and every resource nested in it.
pub(crate) fn check_all(body: &Value, path: &str, problems: &mut Problems) {
    check(body, path, problems);
    for (nested_path, _, nested) in nested_resources(body, path) {
        check_all(nested, &nested_path, problems);
    }
}

/// A resource nested in another: its FHIRPath, type and body.
pub(crate) type Nested<'a> = (String, &'a str, &'a Value);

/// Every resource nested directly in `body` (contained resources, Bundle
/// entries, Parameters resources, a Bundle's outcome…): the first object
/// with a `resourceType` on each path down from the root. Resources nested
/// in those are found when they are checked in turn.
pub(crate) fn nested_resources<'a>(body: &'a Value, path: &str) -> Vec<Nested<'a>> {
    fn walk<'a>(value: &'a Value, path: String, root: bool, out: &mut Vec<Nested<'a>>) {
        match value {
            Value::Object(fields) => {
                if !root {
                    if let Some(resource_type) = fields.get("resourceType").and_then(Value::as_str)
                    {
                        out.push((path, resource_type, value));
                        return;
                    }
                }
                for (key, child) in fields {
                    walk(child, format!("{path}.{key}"), false, out);
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), false, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, path.to_owned(), true, &mut out);
    out
}

/// Local references (`#id`) found in the resource `value`, each with the
/// index of the contained resource it sits in (`None`: in the container).
/// Resources nested deeper (contained ones, Bundle entries) are not
/// entered: their references are checked with them.
fn local_references<'a>(
    value: &'a Value,
    inside: Option<usize>,
    out: &mut Vec<(&'a str, Option<usize>)>,
) {
    fn walk<'a>(
        value: &'a Value,
        root: bool,
        inside: Option<usize>,
        out: &mut Vec<(&'a str, Option<usize>)>,
    ) {
        match value {
            Value::Object(fields) => {
                if !root && fields.get("resourceType").is_some_and(Value::is_string) {
                    return;
                }
                if let Some(id) = fields
                    .get("reference")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix('#'))
                {
                    out.push((id, inside));
                }
                fields
                    .values()
                    .for_each(|child| walk(child, false, inside, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, false, inside, out)),
            _ => {}
        }
    }
    walk(value, true, inside, out);
}

/// The DomainResource rules on contained resources (R4 §2.36.0.1):
/// - dom-2: a contained resource contains no resources;
/// - dom-3: every contained resource is referred to from the container
///   (or refers to it with `#`), and every `#id` reference names one;
/// - dom-4: a contained resource has no `meta.versionId` or `meta.lastUpdated`.
pub(crate) fn check(body: &Value, path: &str, problems: &mut Problems) {
    let contained: &[Value] = body
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut references = Vec::new();
    local_references(body, None, &mut references);
    for (i, resource) in contained.iter().enumerate() {
        local_references(resource, Some(i), &mut references);
    }
    let mut ids = HashSet::new();
    for (i, resource) in contained.iter().enumerate() {
        let at = format!("{path}.contained[{i}]");
        if resource.get("contained").is_some() {
            problems.push(Problem {
                kind: ProblemKind::Invariant,
                expression: format!("{at}.contained"),
                message: "a contained resource cannot contain resources itself; move them up to the container (dom-2)".into(),
            });
        }
        for key in ["versionId", "lastUpdated"] {
            if resource.pointer(&format!("/meta/{key}")).is_some() {
                problems.push(Problem {
                    kind: ProblemKind::Invariant,
                    expression: format!("{at}.meta.{key}"),
                    message: format!(
                        "a contained resource has no meta.{key} of its own; remove it (dom-4)"
                    ),
                });
            }
        }
        let Some(id) = resource.get("id").and_then(Value::as_str) else {
            problems.push(Problem {
                kind: ProblemKind::Invariant,
                expression: format!("{at}.id"),
                message: "a contained resource needs an id, so the container can refer to it as \"#<id>\"".into(),
            });
            continue;
        };
        if !ids.insert(id) {
            problems.push(Problem {
                kind: ProblemKind::Invariant,
                expression: format!("{at}.id"),
                message: format!(
                    "another contained resource already has the id {id:?}; each needs its own"
                ),
            });
            continue;
        }
        let referred = references.iter().any(|(target, from)| {
            (*target == id && *from != Some(i)) || (target.is_empty() && *from == Some(i))
        });
        if !referred {
            problems.push(Problem {
                kind: ProblemKind::Invariant,
                expression: at,
                message: format!("the contained resource #{id} is not referred to from the resource; refer to it with \"#{id}\", or leave it out (dom-3)"),
            });
        }
    }
    let mut reported = HashSet::new();
    for (target, _) in &references {
        if !target.is_empty() && !ids.contains(target) && reported.insert(*target) {
            problems.push(Problem {
                kind: ProblemKind::Invariant,
                expression: path.to_owned(),
                message: format!("the reference \"#{target}\" names no contained resource; add one with id {target:?} or refer to the resource by type and id"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems_of(body: &Value) -> Vec<Problem> {
        let mut problems = Problems::default();
        check(body, "Observation", &mut problems);
        problems.listed
    }

    #[test]
    fn contained_resources_must_be_referred_to_and_references_must_resolve() {
        let ok = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": "#p"}});
        assert!(problems_of(&ok).is_empty());
        // A contained resource that refers back to its container is fine too.
        let back = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Provenance", "id": "v", "target": [{"reference": "#"}]}]});
        assert!(problems_of(&back).is_empty());
        let orphan = json!({"contained": [{"resourceType": "Patient", "id": "p"}]});
        let found = problems_of(&orphan);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expression, "Observation.contained[0]");
        assert!(found[0].message.contains("dom-3"));
        // A contained resource referring to itself does not count.
        let selfish = json!({"contained": [{"resourceType": "Patient", "id": "p", "link": [{"other": {"reference": "#p"}}]}]});
        assert_eq!(problems_of(&selfish).len(), 1);
        // References inside another nested resource are that resource's own.
        let bundle = json!({"entry": [{"resource": {"resourceType": "Patient",
            "managingOrganization": {"reference": "#o"}}}]});
        assert!(problems_of(&bundle).is_empty());
        let dangling = json!({"subject": {"reference": "#nobody"}});
        let found = problems_of(&dangling);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("#nobody"));
    }

    #[test]
    fn contained_resources_are_flat_and_unversioned() {
        let body = json!({"subject": {"reference": "#p"}, "contained": [
            {"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"},
             "contained": [{"resourceType": "Patient", "id": "q"}]},
            {"resourceType": "Patient"}]});
        let found = problems_of(&body);
        let at: Vec<&str> = found.iter().map(|p| p.expression.as_str()).collect();
        assert_eq!(
            at,
            [
                "Observation.contained[0].contained",
                "Observation.contained[0].meta.versionId",
                "Observation.contained[1].id"
            ]
        );
    }

    #[test]
    fn nested_resources_are_found_once_at_their_paths() {
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Organization"}]}},
            {"response": {"outcome": {"resourceType": "OperationOutcome"}}}]});
        let found: Vec<(String, &str)> = nested_resources(&bundle, "Bundle")
            .into_iter()
            .map(|(p, t, _)| (p, t))
            .collect();
        assert_eq!(
            found,
            [
                ("Bundle.entry[0].resource".to_owned(), "Patient"),
                (
                    "Bundle.entry[1].response.outcome".to_owned(),
                    "OperationOutcome"
                )
            ]
        );
    }
}
