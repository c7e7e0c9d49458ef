//! Rules the JSON Schema cannot express, written by hand (each one tested):
//! the constraints on contained resources and local references of R4
//! DomainResource (§2.36.0.1: dom-2, dom-3, dom-4), and finding the
//! resources nested in a resource so each is checked as its own.
//!
//! Messages name the element (in the expression) but never repeat an id or
//! a reference the client sent.

use std::collections::HashSet;

use serde_json::Value;

use crate::{Problem, ProblemKind, Problems};

/// The hand-written rules for `body` and every resource nested in it. A
/// contained resource is checked as part of its container (its local
/// references resolve against the container's `contained`, R4 ref-1), the
/// others (Bundle entries, Parameters resources) on their own.
pub(crate) fn check_all(body: &Value, path: &str, problems: &mut Problems) {
    check(body, path, problems);
    nested_of(body, path, problems);
}

fn nested_of(body: &Value, path: &str, problems: &mut Problems) {
    let contained_prefix = format!("{path}.contained[");
    for (nested_path, _, nested) in nested_resources(body, path) {
        if nested_path.starts_with(&contained_prefix) {
            nested_of(nested, &nested_path, problems);
        } else {
            check_all(nested, &nested_path, problems);
        }
    }
}

/// A resource nested in another: its FHIRPath, type and body.
pub(crate) type Nested<'a> = (String, &'a str, &'a Value);

/// Every resource nested directly in `body` (contained resources, Bundle
/// entries, Parameters resources, a Bundle's outcome…): the first object
/// with a `resourceType` on each path down from the root. Resources nested
/// in those are found when they are checked in turn.
pub(crate) fn nested_resources<'a>(body: &'a Value, path: &str) -> Vec<Nested<'a>> {
    fn walk<'a>(value: &'a Value, at: &mut Segments<'a>, root: bool, out: &mut Vec<Nested<'a>>) {
        match value {
            Value::Object(fields) => {
                if !root {
                    if let Some(resource_type) = fields.get("resourceType").and_then(Value::as_str)
                    {
                        out.push((at.render(), resource_type, value));
                        return;
                    }
                }
                for (key, child) in fields {
                    if child.is_object() || child.is_array() {
                        at.push(Segment::Key(key));
                        walk(child, at, false, out);
                        at.pop();
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if item.is_object() || item.is_array() {
                        at.push(Segment::Index(i));
                        walk(item, at, false, out);
                        at.pop();
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(body, &mut Segments::new(path), true, &mut out);
    out
}

/// One step of a FHIRPath below a resource.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The path being walked, rendered only when a problem needs it (a walk
/// visits every value; formatting each path would cost more than the
/// checks).
struct Segments<'a> {
    root: String,
    steps: Vec<Segment<'a>>,
}

impl<'a> Segments<'a> {
    fn new(root: &str) -> Segments<'a> {
        Segments {
            root: root.to_owned(),
            steps: Vec::new(),
        }
    }

    fn push(&mut self, step: Segment<'a>) {
        self.steps.push(step);
    }

    fn pop(&mut self) {
        self.steps.pop();
    }

    fn render(&self) -> String {
        let mut out = self.root.clone();
        for step in &self.steps {
            match step {
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
}

/// The local references of one resource and its contained resources.
#[derive(Default)]
struct LocalReferences {
    /// Every `#…` string (a `reference`, or a canonical/uri/url value):
    /// what counts as referring to a contained resource (dom-3).
    targets: HashSet<String>,
    /// Each `reference` element holding `#id`, with its FHIRPath: these
    /// must name a contained resource (R4 ref-1).
    references: Vec<(String, String)>,
    /// Contained resources (by index) that refer to their container (`#`).
    refer_back: HashSet<usize>,
}

impl LocalReferences {
    /// Collects from the resource `value` at `path`; `inside` is the index
    /// of the contained resource being walked (`None`: the container).
    /// Resources nested deeper than the resource itself are not entered.
    fn collect(&mut self, value: &Value, path: &str, inside: Option<usize>) {
        self.walk(value, &mut Segments::new(path), inside, true);
    }

    fn walk<'a>(
        &mut self,
        value: &'a Value,
        at: &mut Segments<'a>,
        inside: Option<usize>,
        root: bool,
    ) {
        match value {
            Value::Object(fields) => {
                if !root && fields.get("resourceType").is_some_and(Value::is_string) {
                    return;
                }
                for (key, child) in fields {
                    match child {
                        Value::String(text) if text.starts_with('#') => {
                            let target = &text[1..];
                            if target.is_empty() {
                                if let Some(i) = inside {
                                    self.refer_back.insert(i);
                                }
                            } else {
                                self.targets.insert(target.to_owned());
                                if key == "reference" {
                                    at.push(Segment::Key(key));
                                    self.references.push((target.to_owned(), at.render()));
                                    at.pop();
                                }
                            }
                        }
                        Value::Object(_) | Value::Array(_) => {
                            at.push(Segment::Key(key));
                            self.walk(child, at, inside, false);
                            at.pop();
                        }
                        _ => {}
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        // A repeating canonical or uri (`instantiatesCanonical`).
                        Value::String(text) if text.len() > 1 && text.starts_with('#') => {
                            self.targets.insert(text[1..].to_owned());
                        }
                        Value::Object(_) | Value::Array(_) => {
                            at.push(Segment::Index(i));
                            self.walk(item, at, inside, false);
                            at.pop();
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// The DomainResource rules on contained resources (R4 §2.36.0.1):
/// - dom-2: a contained resource contains no resources;
/// - dom-3: every contained resource is referred to from the resource (a
///   reference, canonical, uri or url `#id`, its own included), or refers
///   to its container with `#`;
/// - dom-4: a contained resource has no `meta.versionId` or `meta.lastUpdated`;
/// - and every `reference` of the form `#id` names a contained resource (ref-1).
pub(crate) fn check(body: &Value, path: &str, problems: &mut Problems) {
    let contained: &[Value] = body
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut local = LocalReferences::default();
    local.collect(body, path, None);
    for (i, resource) in contained.iter().enumerate() {
        local.collect(resource, &format!("{path}.contained[{i}]"), Some(i));
    }
    let mut invariant = |expression: String, message: &str| {
        problems.push(Problem {
            kind: ProblemKind::Invariant,
            expression,
            message: message.to_owned(),
        })
    };
    let mut ids = HashSet::new();
    for (i, resource) in contained.iter().enumerate() {
        if !resource.is_object() {
            continue; // the schema reports it
        }
        let at = format!("{path}.contained[{i}]");
        if resource.get("contained").is_some() {
            invariant(
                format!("{at}.contained"),
                "a contained resource cannot contain resources itself; move them up to the container (dom-2)",
            );
        }
        for key in ["versionId", "lastUpdated"] {
            if resource.pointer(&format!("/meta/{key}")).is_some() {
                invariant(
                    format!("{at}.meta.{key}"),
                    "a contained resource has no version or update time of its own; remove it (dom-4)",
                );
            }
        }
        let id = resource.get("id").and_then(Value::as_str);
        if let Some(id) = id {
            if !ids.insert(id) {
                invariant(
                    format!("{at}.id"),
                    "another contained resource already has this id; each needs its own",
                );
                continue;
            }
        }
        let referred =
            id.is_some_and(|id| local.targets.contains(id)) || local.refer_back.contains(&i);
        if !referred {
            invariant(
                at,
                "this contained resource is not referred to from the resource: give it an id and refer to it as \"#\" followed by the id, or leave it out (dom-3)",
            );
        }
    }
    for (target, at) in &local.references {
        if !ids.contains(target.as_str()) {
            invariant(
                at.clone(),
                "this local reference names no contained resource; add one with that id, or refer to the resource by type and id",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems_of(body: &Value) -> Vec<Problem> {
        let mut problems = Problems::default();
        check_all(body, "Observation", &mut problems);
        problems.listed
    }

    #[test]
    fn contained_resources_must_be_referred_to_and_references_must_resolve() {
        let ok = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": "#p"}});
        assert!(problems_of(&ok).is_empty());
        // A contained resource that refers back to its container needs no id.
        let back = json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "#"}]}]});
        assert!(problems_of(&back).is_empty());
        // Canonicals and uris refer too (a Questionnaire's answer value set).
        let canonical = json!({"resourceType": "Questionnaire",
            "contained": [{"resourceType": "ValueSet", "id": "vs", "status": "active"}],
            "item": [{"linkId": "1", "type": "choice", "answerValueSet": "#vs"}]});
        assert!(problems_of(&canonical).is_empty());
        // Contained resources may refer to each other.
        let siblings = json!({"resourceType": "MedicationRequest",
            "contained": [{"resourceType": "Medication", "id": "m", "manufacturer": {"reference": "#org"}},
                          {"resourceType": "Organization", "id": "org"}],
            "medicationReference": {"reference": "#m"}});
        assert!(problems_of(&siblings).is_empty());
        let orphan = json!({"contained": [{"resourceType": "Patient", "id": "p"}]});
        let found = problems_of(&orphan);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expression, "Observation.contained[0]");
        assert!(found[0].message.contains("dom-3"));
        let dangling = json!({"subject": {"reference": "#nobody"}});
        let found = problems_of(&dangling);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].expression, "Observation.subject.reference");
        assert!(
            !found[0].message.contains("nobody"),
            "the value is not echoed"
        );
        // A markdown heading is not a reference.
        let text = json!({"note": [{"text": "# Heading"}]});
        assert!(problems_of(&text).is_empty());
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
                "Observation.contained[1]"
            ]
        );
    }

    #[test]
    fn references_inside_other_nested_resources_are_their_own() {
        let bundle = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient",
            "contained": [{"resourceType": "Organization", "id": "o"}],
            "managingOrganization": {"reference": "#o"}}}]});
        let mut problems = Problems::default();
        check_all(&bundle, "Bundle", &mut problems);
        assert!(problems.listed.is_empty(), "{:?}", problems.listed);
        let broken = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient",
            "managingOrganization": {"reference": "#o"}}}]});
        let mut problems = Problems::default();
        check_all(&broken, "Bundle", &mut problems);
        assert_eq!(
            problems.listed[0].expression,
            "Bundle.entry[0].resource.managingOrganization.reference"
        );
    }

    #[test]
    fn many_contained_resources_are_matched_by_set() {
        let contained: Vec<Value> = (0..20_000)
            .map(|i| json!({"resourceType": "Patient", "id": format!("p{i}")}))
            .collect();
        let refs: Vec<Value> = (0..20_000)
            .map(|i| json!({"reference": format!("#p{i}")}))
            .collect();
        let body = json!({"contained": contained, "focus": refs});
        assert!(problems_of(&body).is_empty());
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
