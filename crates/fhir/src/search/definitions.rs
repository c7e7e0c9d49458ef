//! HL7's R4 SearchParameter definitions (`definitions/search-parameters.json`,
//! vendored unchanged; see `definitions/README.md`) compiled once into a
//! table: (resource type, code) → type, expression for that type, targets,
//! components, comparators. Parameters on `Resource` and `DomainResource`
//! apply to every type, the server's own types included.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::path::{compile, Expr, Unsupported};
use crate::resource_types::{all_resource_types, is_known_resource_type, RESOURCE_TYPES};

const BUNDLE: &str = include_str!("../../definitions/search-parameters.json");

/// The type of a search parameter (R4 §3.1.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    fn parse(text: &str) -> Option<ParamType> {
        Some(match text {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    /// The code as the specification writes it.
    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One component of a composite parameter.
#[derive(Debug, Clone)]
pub struct Component {
    /// The code of the parameter the component is (`code`, `value-quantity`).
    pub code: String,
    pub param_type: ParamType,
    /// Evaluated on each value the composite's own expression selects.
    pub expression: Expr,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub param_type: ParamType,
    /// The expression for this type; `None` for the parameters R4 gives no
    /// expression (`_text`, `_content`, `_query`) and `near`.
    pub expression: Option<Expr>,
    /// Its source text, for the CapabilityStatement and errors.
    pub expression_text: Option<String>,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    pub components: Vec<Component>,
    /// Prefixes allowed (`eq`, `ne`, `gt`, …), as the definition lists them.
    pub comparators: Vec<String>,
    /// The canonical URL of the definition.
    pub url: String,
    pub description: String,
}

/// Why a parameter cannot be searched on, for the handful R4 defines
/// without a usable expression.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("_text", "searching the narrative needs a full-text index"),
    (
        "_content",
        "searching the whole resource text needs a full-text index",
    ),
    ("_query", "named queries are not defined by this server"),
    ("near", "geographic distance search is not supported"),
];

/// The compiled table.
#[derive(Debug, Default)]
pub struct SearchParams {
    by_type: HashMap<String, BTreeMap<String, Arc<SearchParam>>>,
}

impl SearchParams {
    /// The table of R4 and the server's types, compiled on first use.
    pub fn r4() -> &'static SearchParams {
        static TABLE: OnceLock<SearchParams> = OnceLock::new();
        TABLE.get_or_init(|| {
            SearchParams::compile(BUNDLE).expect("the vendored SearchParameter bundle compiles")
        })
    }

    /// The parameter `code` of `resource_type`.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&Arc<SearchParam>> {
        self.by_type.get(resource_type)?.get(code)
    }

    /// Every parameter of `resource_type`, by code.
    pub fn of_type(&self, resource_type: &str) -> impl Iterator<Item = &Arc<SearchParam>> {
        self.by_type
            .get(resource_type)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Compiles a SearchParameter bundle. An expression this evaluator does
    /// not handle is an error: the table covers every parameter or none.
    pub fn compile(bundle: &str) -> Result<SearchParams, String> {
        let bundle: Value = serde_json::from_str(bundle).map_err(|e| e.to_string())?;
        let definitions: Vec<&Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .ok_or("the bundle has no entries")?
            .iter()
            .filter_map(|e| e.get("resource"))
            .collect();
        let by_url: HashMap<&str, &Value> = definitions
            .iter()
            .filter_map(|d| Some((d.get("url")?.as_str()?, *d)))
            .collect();
        let mut table = SearchParams::default();
        for definition in &definitions {
            let text = |key: &str| definition.get(key).and_then(Value::as_str);
            let code = text("code").ok_or("a definition without code")?;
            let url = text("url").unwrap_or_default();
            let param_type = text("type")
                .and_then(ParamType::parse)
                .ok_or_else(|| format!("{url}: unknown type"))?;
            let strings = |key: &str| -> Vec<String> {
                definition
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let bases = strings("base");
            let usable = !UNSUPPORTED.iter().any(|(c, _)| *c == code);
            let expression = match (text("expression"), usable) {
                (Some(e), true) => {
                    Some(compile(e).map_err(|Unsupported(why)| format!("{url}: {why}"))?)
                }
                _ => None,
            };
            let mut components = Vec::new();
            for component in definition
                .get("component")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let reference = component
                    .get("definition")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let target = by_url
                    .get(reference)
                    .ok_or_else(|| format!("{url}: component {reference} is not defined"))?;
                let expression = component
                    .get("expression")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{url}: a component without expression"))?;
                components.push(Component {
                    code: target
                        .get("code")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    param_type: target
                        .get("type")
                        .and_then(Value::as_str)
                        .and_then(ParamType::parse)
                        .ok_or_else(|| format!("{url}: component type"))?,
                    expression: compile(expression)
                        .map_err(|Unsupported(why)| format!("{url}: component: {why}"))?,
                });
            }
            let types: Vec<String> = if bases
                .iter()
                .any(|b| b == "Resource" || b == "DomainResource")
            {
                let domain_only = bases.iter().all(|b| b == "DomainResource");
                all_resource_types()
                    .filter(|t| !(domain_only && matches!(*t, "Bundle" | "Binary" | "Parameters")))
                    .map(str::to_owned)
                    .collect()
            } else {
                bases
                    .into_iter()
                    .filter(|b| is_known_resource_type(b))
                    .collect()
            };
            for resource_type in types {
                let own = match &expression {
                    Some(e) => match e.for_type(&resource_type) {
                        Some(own) => Some(own),
                        // A multi-base parameter whose expression names no
                        // part for this type does not apply to it.
                        None => continue,
                    },
                    None => None,
                };
                table.by_type.entry(resource_type).or_default().insert(
                    code.to_owned(),
                    Arc::new(SearchParam {
                        code: code.to_owned(),
                        param_type,
                        expression: own,
                        expression_text: text("expression").map(str::to_owned),
                        targets: strings("target"),
                        components: components.clone(),
                        comparators: strings("comparator"),
                        url: url.to_owned(),
                        description: text("description").unwrap_or_default().to_owned(),
                    }),
                );
            }
        }
        debug_assert!(RESOURCE_TYPES
            .iter()
            .all(|t| table.by_type.contains_key(*t)));
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_expression_in_the_bundle_compiles() {
        // `compile` fails on the first expression it cannot handle, so this
        // is the whole bundle: 1,375 definitions, components included.
        let table = SearchParams::compile(BUNDLE).unwrap();
        let total: usize = table.by_type.values().map(BTreeMap::len).sum();
        assert!(total > 2000, "{total} (type, code) pairs");
        for (code, _) in UNSUPPORTED {
            let p = table
                .get("Location", code)
                .or_else(|| table.get("Patient", code));
            assert!(p.is_some_and(|p| p.expression.is_none()), "{code}");
        }
    }

    #[test]
    fn every_type_has_the_common_parameters() {
        let table = SearchParams::r4();
        for t in all_resource_types() {
            for code in [
                "_id",
                "_lastUpdated",
                "_tag",
                "_profile",
                "_security",
                "_source",
            ] {
                assert!(table.get(t, code).is_some(), "{t}?{code}");
            }
        }
        let id = table.get("Client", "_id").unwrap();
        assert_eq!(id.param_type, ParamType::Token);
    }

    #[test]
    fn a_parameter_keeps_its_own_part_of_a_shared_expression() {
        let table = SearchParams::r4();
        let patient = table.get("Observation", "patient").unwrap();
        assert_eq!(patient.param_type, ParamType::Reference);
        assert!(patient.targets.contains(&"Patient".to_owned()));
        let o = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(patient.expression.as_ref().unwrap().evaluate(&o).len(), 1);
        let g = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
        assert!(patient.expression.as_ref().unwrap().evaluate(&g).is_empty());
        let name = table.get("Patient", "name").unwrap();
        assert_eq!(name.param_type, ParamType::String);
        let birthdate = table.get("Patient", "birthdate").unwrap();
        assert_eq!(birthdate.param_type, ParamType::Date);
        assert!(table.get("Patient", "code").is_none());
    }

    #[test]
    fn composites_know_their_components() {
        let table = SearchParams::r4();
        let p = table.get("Observation", "code-value-quantity").unwrap();
        assert_eq!(p.param_type, ParamType::Composite);
        let codes: Vec<&str> = p.components.iter().map(|c| c.code.as_str()).collect();
        assert_eq!(codes, ["code", "value-quantity"]);
        assert_eq!(p.components[1].param_type, ParamType::Quantity);
    }
}
