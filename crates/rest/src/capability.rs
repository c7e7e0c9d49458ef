//! The CapabilityStatement (`GET /fhir/metadata`), generated from the
//! interactions the router registered, so it cannot claim more than exists.

use fhirbox_fhir::resource_types::all_resource_types;
use fhirbox_fhir::secret_fields::{fields_of, SECRET_REFERENCE_URL};
use serde_json::{json, Value};

use fhirbox_fhir::search::{ParamType, SearchParams};

use crate::search::SEARCH_PARAMETERS;

/// Level of a FHIR interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `rest.resource.interaction` (applies to every type).
    Type,
    /// `rest.interaction`.
    System,
}

/// Interactions registered by the router, in registration order.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    pub declared: Vec<(Level, &'static str)>,
    /// Operations on every type (`validate` for `$validate`).
    pub operations: Vec<String>,
    /// A conditional delete may delete several matches
    /// (`BOX_CONDITIONAL_DELETE_MAX` above 1).
    pub multiple_delete: bool,
}

impl Interactions {
    pub fn declare(&mut self, level: Level, codes: &[&'static str]) {
        for code in codes {
            if !self.declared.contains(&(level, code)) {
                self.declared.push((level, code));
            }
        }
    }

    fn codes(&self, level: Level) -> Vec<&'static str> {
        self.declared
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, c)| *c)
            .collect()
    }

    /// An operation every type offers (`$name`).
    pub fn declare_operation(&mut self, name: &str) {
        if !self.operations.iter().any(|o| o == name) {
            self.operations.push(name.to_owned());
        }
    }

    pub fn has(&self, level: Level, code: &str) -> bool {
        self.declared.iter().any(|(l, c)| *l == level && *c == code)
    }
}

/// Builds the CapabilityStatement JSON text.
pub fn capability_statement(interactions: &Interactions, base_url: Option<&str>) -> String {
    let type_codes = interactions.codes(Level::Type);
    let search_params: Vec<Value> = SEARCH_PARAMETERS
        .iter()
        .map(|(name, kind, doc)| json!({"name": name, "type": kind, "documentation": doc}))
        .collect();
    // The operations HL7 defines on Resource (R4 §2.38 "Operations").
    let operations: Vec<Value> = interactions
        .operations
        .iter()
        .map(|name| json!({"name": name, "definition": format!("http://hl7.org/fhir/OperationDefinition/Resource-{name}")}))
        .collect();
    // `_include` names a type's own reference parameters; `_revinclude` the
    // reference parameters of other types that can point at it.
    let references = |rt: &str| {
        SearchParams::r4()
            .of_type(rt)
            .filter(|p| p.param_type == ParamType::Reference && p.expression.is_some())
            .map(|p| (p.code.clone(), p.targets.clone()))
            .collect::<Vec<_>>()
    };
    let mut rev_includes: std::collections::HashMap<String, Vec<String>> = Default::default();
    for source in all_resource_types() {
        for (code, targets) in references(source) {
            for target in targets {
                rev_includes
                    .entry(target)
                    .or_default()
                    .push(format!("{source}:{code}"));
            }
        }
    }
    let resources: Vec<Value> = all_resource_types()
        .map(|rt| {
            let mut resource = json!({
                "type": rt,
                "interaction": type_codes.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": interactions.has(Level::Type, "vread"),
                "updateCreate": interactions.has(Level::Type, "update"),
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": if interactions.multiple_delete { "multiple" } else { "single" },
            });
            if interactions.has(Level::Type, "search-type") {
                // `_id` and `_lastUpdated`, then every R4 parameter of the type
                // this server searches (docs/search.md).
                let mut params = search_params.clone();
                for p in SearchParams::r4().of_type(rt) {
                    let searchable = p.expression.is_some()
                        && p.param_type != ParamType::Special
                        && (p.param_type != ParamType::Composite || p.components.len() == 2)
                        && !params.iter().any(|known| known["name"] == p.code.as_str());
                    if searchable {
                        // The definition's canonical URL documents it; HL7's
                        // descriptions would make the statement megabytes.
                        params.push(json!({"name": p.code, "definition": p.url, "type": p.param_type.code()}));
                    }
                }
                resource["searchParam"] = Value::Array(params);
                let mut includes: Vec<String> = references(rt)
                    .into_iter()
                    .map(|(code, _)| format!("{rt}:{code}"))
                    .collect();
                if !includes.is_empty() {
                    includes.push(format!("{rt}:*"));
                    includes.push("*".to_owned());
                }
                resource["searchInclude"] = json!(includes);
                resource["searchRevInclude"] =
                    json!(rev_includes.get(rt).cloned().unwrap_or_default());
            }
            if !operations.is_empty() {
                resource["operation"] = Value::Array(operations.clone());
            }
            let secret_fields: Vec<String> = fields_of(rt).map(|f| format!("{} ({})", f.display, f.purpose)).collect();
            if !secret_fields.is_empty() {
                resource["documentation"] = json!(format!(
                    "Secret-capable fields: {}. Each may hold, instead of a value, a reference to an external secret of the vault config: the _<field> element carries the data-absent-reason extension (masked) and {SECRET_REFERENCE_URL} with the secret name.",
                    secret_fields.join("; ")
                ));
            }
            resource
        })
        .collect();
    let mut implementation = json!({"description": "fhirbox FHIR R4 server"});
    if let Some(base) = base_url {
        implementation["url"] = json!(format!("{base}/fhir"));
    }
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhirbox_store::instant::format_micros(fhirbox_store::instant::now_micros()),
        "kind": "instance",
        "software": {"name": "fhirbox", "version": env!("CARGO_PKG_VERSION")},
        "implementation": implementation,
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": interactions.codes(Level::System).iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
        }],
    });
    statement.to_string()
}
