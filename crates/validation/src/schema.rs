//! Loading the two schemas, the few changes made to them (each one named in
//! docs/validation.md), and compiling one validator per resource type.

use serde_json::{json, Map, Value};

use crate::hints::Hints;
use crate::keywords;

/// HL7's R4 JSON Schema, as published (CC0; see schema/README.md).
pub(crate) const FHIR_SCHEMA: &str = include_str!("../schema/fhir.schema.json");
/// The server's own resource types, in the same form.
pub(crate) const FHIRBOX_SCHEMA: &str = include_str!("../schema/fhirbox.schema.json");
/// The id the merged document is registered under.
const BASE: &str = "http://hl7.org/fhir/json-schema/4.0";

/// A schema that could not be read or compiled: a defect of the build, never
/// of a request.
#[derive(Debug, thiserror::Error)]
#[error("the validation schema cannot be used: {0}")]
pub struct SchemaError(String);

/// The merged, adjusted definitions and what messages need to know of them.
pub(crate) struct Loaded {
    document: Value,
    resource_types: Vec<String>,
    pub(crate) hints: Hints,
}

pub(crate) fn load() -> Result<Loaded, SchemaError> {
    let mut document: Value = serde_json::from_str(FHIR_SCHEMA)
        .map_err(|e| SchemaError(format!("fhir.schema.json: {e}")))?;
    let own: Value = serde_json::from_str(FHIRBOX_SCHEMA)
        .map_err(|e| SchemaError(format!("fhirbox.schema.json: {e}")))?;
    let mut resource_types: Vec<String> = document["discriminator"]["mapping"]
        .as_object()
        .ok_or_else(|| SchemaError("fhir.schema.json has no discriminator mapping".into()))?
        .keys()
        .cloned()
        .collect();
    let definitions = document
        .get_mut("definitions")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| SchemaError("fhir.schema.json has no definitions".into()))?;
    // Choice groups are read before descriptions are dropped: they are
    // recognised by the description their variants share.
    keywords::mark_choices(definitions);
    adjust(definitions)?;
    let hints = Hints::from_definitions(definitions);
    let own_definitions = own
        .get("definitions")
        .and_then(Value::as_object)
        .ok_or_else(|| SchemaError("fhirbox.schema.json has no definitions".into()))?;
    for (name, definition) in own_definitions {
        if definition.pointer("/properties/resourceType").is_some() {
            resource_types.push(name.clone());
        }
        definitions.insert(name.clone(), definition.clone());
    }
    keywords::mark_primitives(definitions, &hints);
    require_objects(definitions);
    allow_null_items(definitions);
    definitions.insert(
        "ResourceList".into(),
        dispatch(&resource_types, Dispatch::Report),
    );
    strip_descriptions(&mut document);
    if let Some(root) = document.as_object_mut() {
        // Only `ResourceList` is compiled; the root `oneOf` is not used.
        root.remove("oneOf");
        root.remove("discriminator");
        root.insert("$id".into(), json!(BASE));
        // Draft-07 is draft-06 plus `if`/`then` (json-schema.org, draft-07
        // release notes), which `dispatch` needs.
        root.insert(
            "$schema".into(),
            json!("http://json-schema.org/draft-07/schema#"),
        );
    }
    Ok(Loaded {
        document,
        resource_types,
        hints,
    })
}

/// What a compiled form of the dispatch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Only whether a resource is valid: the fast path every write takes.
    Check,
    /// Every problem, with its place: taken when the check fails.
    Report,
}

/// Any resource, by its `resourceType`: one `if`/`then` per type instead
/// of HL7's `oneOf` of every type, so a resource is checked against its own
/// definition only and errors point into it. Used for the resource itself
/// and wherever a resource nests (contained, Bundle entries, Parameters).
fn dispatch(resource_types: &[String], use_: Dispatch) -> Value {
    if use_ == Dispatch::Check {
        // `anyOf` branches that pin resourceType with `const`: the schema
        // library jumps straight to the one branch that can match, but
        // would report every branch's errors, hence the `Report` form.
        let branches: Vec<Value> = resource_types
            .iter()
            .map(|t| {
                json!({"required": ["resourceType"], "properties": {"resourceType": {"const": t}},
                       "allOf": [{"$ref": format!("#/definitions/{t}")}]})
            })
            .collect();
        return json!({"type": "object", "required": ["resourceType"],
                      "properties": {"resourceType": {"enum": resource_types}},
                      "anyOf": branches});
    }
    // Each `if` holds only for an object that names its type: anything
    // else (a number, an object without resourceType) fails the checks
    // above once, instead of every type's definition 153 times.
    let branches: Vec<Value> = resource_types
        .iter()
        .map(|t| {
            json!({"if": {"type": "object", "required": ["resourceType"],
                          "properties": {"resourceType": {"const": t}}},
                   "then": {"$ref": format!("#/definitions/{t}")}})
        })
        .collect();
    json!({"type": "object", "required": ["resourceType"],
           "properties": {"resourceType": {"enum": resource_types}},
           "allOf": branches})
}

/// The changes made to HL7's definitions, where they are weaker than the
/// specification or where fhirbox checks in code instead.
fn adjust(definitions: &mut Map<String, Value>) -> Result<(), SchemaError> {
    let mut set = |name: &str, value: Value| -> Result<(), SchemaError> {
        let slot = definitions
            .get_mut(name)
            .ok_or_else(|| SchemaError(format!("fhir.schema.json has no definition {name}")))?;
        *slot = value;
        Ok(())
    };
    // Narrative.div is XHTML text (R4 §2.24.0.10 "xhtml"); the schema
    // leaves it unconstrained.
    set("xhtml", json!({"type": "string"}))?;
    // base64Binary (R4 §2.24.0.1): base64 content, which the schema does not check.
    set(
        "base64Binary",
        json!({"type": "string", "pattern": "^(\\s*([0-9a-zA-Z+/=]){4}\\s*)+$"}),
    )?;
    // Extension.url is required (R4 §2.24.0.19, cardinality 1..1).
    let extension = definitions
        .get_mut("Extension")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| SchemaError("fhir.schema.json has no definition Extension".into()))?;
    extension.insert("required".into(), json!(["url"]));
    Ok(())
}

/// Complex types, resources and their parts are JSON objects (R4 §2.6.2),
/// but HL7's definitions give only `properties`, which a string or a number
/// passes: without `"type": "object"`, `"name": ["Smith"]` would be a valid
/// list of HumanNames.
fn require_objects(definitions: &mut Map<String, Value>) {
    for definition in definitions.values_mut() {
        if let Some(fields) = definition.as_object_mut() {
            if fields.contains_key("properties") && !fields.contains_key("type") {
                fields.insert("type".into(), json!("object"));
            }
        }
    }
}

/// In a repeating primitive, `null` keeps the values and their `_element`
/// extensions aligned: `"given": ["Ann", null], "_given": [null, {…}]`
/// (R4 §2.6.2, "Repeating primitives"). Array items of a primitive or of
/// `Element` get a twin definition (`<name>_item`) that also takes `null`.
fn allow_null_items(definitions: &mut Map<String, Value>) {
    let nullable =
        |name: &str| name == "Element" || name.chars().next().is_some_and(char::is_lowercase);
    let mut twins: Map<String, Value> = Map::new();
    for definition in definitions.values_mut() {
        let Some(properties) = definition
            .get_mut("properties")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for property in properties.values_mut() {
            if property.get("type").and_then(Value::as_str) != Some("array") {
                continue;
            }
            let Some(target) = property
                .pointer("/items/$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .filter(|t| nullable(t))
                .map(str::to_owned)
            else {
                continue;
            };
            let twin = format!("{target}_item");
            property["items"] = json!({"$ref": format!("#/definitions/{twin}")});
            twins.entry(twin).or_insert(Value::String(target));
        }
    }
    for (twin, target) in twins {
        let Some(mut definition) = target.as_str().and_then(|t| definitions.get(t)).cloned() else {
            continue;
        };
        if let Some(fields) = definition.as_object_mut() {
            let kind = fields.get("type").cloned();
            match kind {
                Some(Value::String(t)) => {
                    fields.insert("type".into(), json!([t, "null"]));
                }
                // Untyped (none left after `require_objects`, but kept safe).
                _ => continue,
            }
        }
        definitions.insert(twin, definition);
    }
}

/// Descriptions are for readers of the schema; the validators never need
/// them, and dropping them keeps the registry small. Elements that are
/// *named* `description` (keys of `properties`) stay, of course.
fn strip_descriptions(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            fields.remove("description");
            for (key, child) in fields.iter_mut() {
                match (key.as_str(), child) {
                    ("properties", Value::Object(properties)) => {
                        properties.values_mut().for_each(strip_descriptions)
                    }
                    (_, child) => strip_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

impl Loaded {
    /// The two validators (`Dispatch::Check` and `Dispatch::Report`, one
    /// `ResourceList` each), the resource types they know, and the message
    /// hints.
    #[allow(clippy::type_complexity)]
    pub(crate) fn compile(
        mut self,
    ) -> Result<
        (
            jsonschema::Validator,
            jsonschema::Validator,
            Vec<String>,
            Hints,
        ),
        SchemaError,
    > {
        let report = build(self.document.clone())?;
        self.document["definitions"]["ResourceList"] =
            dispatch(&self.resource_types, Dispatch::Check);
        let check = build(self.document)?;
        Ok((check, report, self.resource_types, self.hints))
    }
}

/// The validator of `ResourceList` in `document`.
fn build(document: Value) -> Result<jsonschema::Validator, SchemaError> {
    let registry = jsonschema::Registry::new()
        .add(BASE, document)
        .and_then(|r| r.prepare())
        .map_err(|e| SchemaError(e.to_string()))?;
    let root = json!({"$ref": format!("{BASE}#/definitions/ResourceList")});
    keywords::register(jsonschema::options())
        .with_draft(jsonschema::Draft::Draft7)
        .with_registry(&registry)
        .build(&root)
        .map_err(|e| SchemaError(e.to_string()))
}
