//! Shaping what a read or a search returns: `_summary` (R4 §3.1.1.5.8) and
//! `_elements` (§3.1.1.5.9), from the element table of `fhirbox_fhir`
//! (docs/search.md "Shaping results").

use fhirbox_fhir::elements::{elements, Element};
use serde_json::{json, Map, Value};

use crate::error::RestError;

/// The tag a shaped resource carries, so that nobody takes it for the whole
/// resource and writes it back (R4 §3.1.1.5.8).
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
pub const SUBSETTED_CODE: &str = "SUBSETTED";

/// Which part of each resource a reply carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// `_summary=true`: the elements the definition marks as summary.
    Summary,
    /// `_summary=text`: `text`, `id`, `meta` and the mandatory elements.
    Text,
    /// `_summary=data`: everything but `text`.
    Data,
    /// `_elements=…`: these elements, `id`, `meta` and the mandatory ones.
    Elements(Vec<String>),
}

/// What `_summary` and `_elements` ask of a reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shaping {
    pub shape: Option<Shape>,
    /// `_summary=count`: the total alone (searches only).
    pub count_only: bool,
}

/// True for the parameters this module reads.
pub fn is_shaping(name: &str) -> bool {
    name == "_summary" || name == "_elements"
}

/// Reads `_summary` and `_elements` from `params` for a reply of
/// `resource_types` (empty: any type). `search` allows `_summary=count`.
/// An element none of the types has is refused, so a misspelt name is a
/// 400 rather than a resource stripped to its id.
pub fn parse(
    resource_types: &[&str],
    params: &[(String, String)],
    search: bool,
) -> Result<Shaping, RestError> {
    let mut shaping = Shaping::default();
    let mut summary = None;
    let mut asked: Vec<String> = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_summary" if summary.replace(value.as_str()).is_some() => {
                return Err(RestError::bad_request("_summary may be given once"));
            }
            "_elements" => {
                for element in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    asked.push(element_name(resource_types, element)?);
                }
                if asked.is_empty() {
                    return Err(RestError::bad_request(
                        "_elements needs at least one element name",
                    ));
                }
            }
            _ => {}
        }
    }
    shaping.shape = match summary {
        None | Some("false") => None,
        Some("true") => Some(Shape::Summary),
        Some("text") => Some(Shape::Text),
        Some("data") => Some(Shape::Data),
        Some("count") if search => {
            shaping.count_only = true;
            None
        }
        Some("count") => {
            return Err(RestError::bad_request(
                "_summary=count applies to a search; a read returns one resource",
            ))
        }
        Some(other) => {
            return Err(RestError::bad_request(format!(
                "_summary={other} is not valid; use true, text, data, count or false"
            )))
        }
    };
    if !asked.is_empty() {
        if shaping.shape.is_some() || shaping.count_only {
            return Err(RestError::bad_request(
                "_summary and _elements cannot be combined; use one of them",
            ));
        }
        shaping.shape = Some(Shape::Elements(asked));
    }
    Ok(shaping)
}

/// An element name as `_elements` gives it (`name`, or `Patient.name` for a
/// search of Patient), checked against the types' definitions.
fn element_name(resource_types: &[&str], asked: &str) -> Result<String, RestError> {
    let name = match asked.split_once('.') {
        Some((t, rest)) if resource_types.contains(&t) => rest,
        _ => asked,
    };
    if name.contains('.') {
        return Err(RestError::bad_request(format!(
            "_elements: {asked:?} is not a top-level element; name elements at the root of the resource"
        )));
    }
    let tables: Vec<&[Element]> = resource_types.iter().filter_map(|t| elements(t)).collect();
    // The server's own types have no table: their names are not checked.
    let checked = !resource_types.is_empty() && tables.len() == resource_types.len();
    if checked && !tables.iter().any(|t| t.iter().any(|e| e.is_named(name))) {
        return Err(RestError::bad_request(format!(
            "_elements: {} has no element {name:?}",
            resource_types.join(" or ")
        )));
    }
    Ok(name.to_owned())
}

impl Shape {
    /// The part of `body` (a resource of `resource_type` as a client may see
    /// it) that this shape keeps, tagged `SUBSETTED` when anything was left
    /// out. A body that is not a JSON object is returned as it is.
    pub fn apply(&self, resource_type: &str, body: &str) -> String {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(body) else {
            return body.to_owned();
        };
        let table = elements(resource_type);
        let before = fields.len();
        let mut kept: Map<String, Value> = fields
            .into_iter()
            .filter(|(key, _)| self.keeps(table, key))
            .collect();
        if kept.len() < before {
            tag_subsetted(&mut kept);
        }
        Value::Object(kept).to_string()
    }

    fn keeps(&self, table: Option<&[Element]>, key: &str) -> bool {
        if key == "resourceType" {
            return true;
        }
        let element = table.and_then(|t| t.iter().find(|e| e.holds(key)));
        let mandatory = element.is_some_and(|e| e.mandatory);
        let bare = key.strip_prefix('_').unwrap_or(key);
        match self {
            Shape::Data => bare != "text",
            // A type without definitions (the server's own) has no
            // narrative to drop and no summary to narrow to.
            Shape::Summary => table.is_none() || element.is_some_and(|e| e.summary || e.mandatory),
            Shape::Text => mandatory || matches!(bare, "id" | "meta" | "text"),
            Shape::Elements(names) => {
                mandatory
                    || matches!(bare, "id" | "meta")
                    || match element {
                        Some(e) => names.iter().any(|n| e.is_named(n)),
                        None => names.iter().any(|n| n == bare),
                    }
            }
        }
    }
}

/// Adds the `SUBSETTED` tag to `meta.tag` unless it is there already.
fn tag_subsetted(resource: &mut Map<String, Value>) {
    let meta = resource
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(tags) = tags else { return };
    if !tags.iter().any(is_subsetted) {
        tags.push(json!({"system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE}));
    }
}

fn is_subsetted(tag: &Value) -> bool {
    tag["system"] == SUBSETTED_SYSTEM && tag["code"] == SUBSETTED_CODE
}

/// True when a resource body carries the `SUBSETTED` tag: it is part of a
/// resource, and writing it would lose the rest.
pub fn is_subset(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(is_subsetted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn shaped(shape: &Shape, resource_type: &str, body: Value) -> Value {
        serde_json::from_str(&shape.apply(resource_type, &body.to_string())).unwrap()
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation", "id": "o", "meta": {"versionId": "1"},
            "text": {"status": "generated", "div": "<div>x</div>"},
            "status": "final", "_status": {"extension": []},
            "code": {"text": "weight"}, "subject": {"reference": "Patient/p"},
            "valueQuantity": {"value": 70}, "note": [{"text": "n"}]
        })
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn summary_keeps_summary_and_mandatory_elements_and_tags_the_subset() {
        let v = shaped(&Shape::Summary, "Observation", observation());
        assert_eq!(
            keys(&v),
            [
                "_status",
                "code",
                "id",
                "meta",
                "resourceType",
                "status",
                "subject",
                "valueQuantity"
            ]
        );
        assert!(is_subset(&v));
        assert_eq!(v["meta"]["versionId"], "1");
    }

    #[test]
    fn text_and_data_split_the_narrative_from_the_rest() {
        let text = shaped(&Shape::Text, "Observation", observation());
        assert_eq!(
            keys(&text),
            [
                "_status",
                "code",
                "id",
                "meta",
                "resourceType",
                "status",
                "text"
            ]
        );
        let data = shaped(&Shape::Data, "Observation", observation());
        assert!(data.get("text").is_none() && data.get("note").is_some());
        assert!(is_subset(&data));
    }

    #[test]
    fn elements_keep_what_is_asked_plus_id_meta_and_mandatory() {
        let shape = Shape::Elements(vec!["value".into(), "note".into()]);
        let v = shaped(&shape, "Observation", observation());
        assert_eq!(
            keys(&v),
            [
                "_status",
                "code",
                "id",
                "meta",
                "note",
                "resourceType",
                "status",
                "valueQuantity"
            ]
        );
        // Nothing left out: the resource is whole and is not tagged.
        let whole = shaped(
            &Shape::Data,
            "Patient",
            json!({"resourceType": "Patient", "id": "p"}),
        );
        assert!(!is_subset(&whole));
        // The server's own types keep what is named, and id and meta.
        let client = shaped(
            &Shape::Elements(vec!["grant_types".into()]),
            "Client",
            json!({"resourceType": "Client", "id": "c", "grant_types": ["basic"], "auth": {}}),
        );
        assert_eq!(keys(&client), ["grant_types", "id", "meta", "resourceType"]);
    }

    #[test]
    fn parameters_are_checked() {
        let ok = parse(
            &["Patient"],
            &params(&[("_elements", "Patient.name,birthDate,deceased")]),
            false,
        )
        .unwrap();
        assert_eq!(
            ok.shape,
            Some(Shape::Elements(vec![
                "name".into(),
                "birthDate".into(),
                "deceased".into()
            ]))
        );
        let count = parse(&["Patient"], &params(&[("_summary", "count")]), true).unwrap();
        assert!(count.count_only && count.shape.is_none());
        assert_eq!(
            parse(&["Patient"], &params(&[("_summary", "false")]), false).unwrap(),
            Shaping::default()
        );
        for (bad, needle) in [
            (
                vec![("_elements", "nmae")],
                "Patient has no element \"nmae\"",
            ),
            (
                vec![("_elements", "name.family")],
                "not a top-level element",
            ),
            (vec![("_elements", ",")], "at least one element"),
            (vec![("_summary", "maybe")], "_summary=maybe"),
            (vec![("_summary", "count")], "applies to a search"),
            (vec![("_summary", "true"), ("_summary", "data")], "once"),
            (
                vec![("_summary", "true"), ("_elements", "name")],
                "cannot be combined",
            ),
        ] {
            let err = parse(&["Patient"], &params(&bad), false).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad:?}: {err}");
        }
        // Own types and system searches take any name.
        assert!(parse(&["Client"], &params(&[("_elements", "anything")]), false).is_ok());
        assert!(parse(&[], &params(&[("_elements", "anything")]), true).is_ok());
    }
}
