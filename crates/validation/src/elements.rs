//! What the schemas say of one element, found by its keys from the
//! resource root: whether it repeats (a JSON array). FHIRPath Patch needs
//! this to add an element that is not there yet.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::schema::{FHIRBOX_SCHEMA, FHIR_SCHEMA};

/// The definitions of both schemas, read once on first use.
fn definitions() -> &'static Map<String, Value> {
    static DEFINITIONS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        let mut all = Map::new();
        for text in [FHIR_SCHEMA, FHIRBOX_SCHEMA] {
            if let Ok(Value::Object(mut doc)) = serde_json::from_str::<Value>(text) {
                if let Some(Value::Object(defs)) = doc.remove("definitions") {
                    all.extend(defs);
                }
            }
        }
        all
    })
}

/// The definition a property's `$ref` (or its items') names.
fn referenced<'a>(definitions: &'a Map<String, Value>, property: &Value) -> Option<&'a Value> {
    let reference = property
        .get("$ref")
        .or_else(|| property.pointer("/items/$ref"))?
        .as_str()?;
    definitions.get(reference.strip_prefix("#/definitions/")?)
}

/// Whether the element at `keys` (property names from the root of a
/// `resource_type` resource, without array positions) repeats; `None` when
/// the schema has no such element.
pub fn repeats(resource_type: &str, keys: &[&str]) -> Option<bool> {
    let definitions = definitions();
    let mut definition = definitions.get(resource_type)?;
    let (last, path) = keys.split_last()?;
    for key in path {
        let property = definition.pointer(&format!("/properties/{key}"))?;
        definition = referenced(definitions, property)?;
    }
    let property = definition.pointer(&format!("/properties/{last}"))?;
    Some(property.get("type").and_then(Value::as_str) == Some("array"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeating_elements_are_told_from_single_ones() {
        assert_eq!(repeats("Patient", &["name"]), Some(true));
        assert_eq!(repeats("Patient", &["birthDate"]), Some(false));
        assert_eq!(repeats("Patient", &["name", "given"]), Some(true));
        assert_eq!(repeats("Patient", &["name", "family"]), Some(false));
        assert_eq!(repeats("Patient", &["contact", "telecom"]), Some(true));
        assert_eq!(repeats("Patient", &["maritalStatus", "coding"]), Some(true));
        assert_eq!(
            repeats("Observation", &["valueQuantity", "value"]),
            Some(false)
        );
        assert_eq!(repeats("Patient", &["nope"]), None);
        assert_eq!(repeats("Nope", &["name"]), None);
        assert_eq!(repeats("Client", &["grant_types"]), Some(true));
    }
}
