//! The values a resource is found by (R4 §3.1.1.4): for one search
//! parameter, what its expression selects, turned into the typed values an
//! index stores: normalised strings, system/code tokens, date ranges,
//! numbers, quantities, URIs, reference targets and composite tuples.
//! Which form a value takes follows its JSON shape (a Period is an object
//! with `start`/`end`, a CodeableConcept one with `coding`), so choice
//! elements need no separate type table.

use serde_json::Value;

use super::definitions::{ParamType, SearchParam};
use super::path::{reference_type, Item, Node};
use crate::datetime::parse_range;

/// One indexed value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized` is lower-cased and without accents (the default match,
    /// a prefix); `exact` is the value as written (`:exact`).
    String {
        normalized: String,
        exact: String,
    },
    /// A code with its system (absent for a plain `code`/`boolean`), and
    /// the display or text `:text` searches.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A half-open range `[low, high)` in microseconds since the epoch;
    /// an open end is `i64::MIN` / `i64::MAX`.
    Date {
        low: i64,
        high: i64,
    },
    Number(f64),
    /// A value with its unit: `system|code` (UCUM) and the human `unit`.
    Quantity {
        value: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri(String),
    /// The reference as written, and the type and id it names when it is
    /// a relative or absolute `Type/id[/_history/v]`.
    Reference {
        reference: String,
        target_type: Option<String>,
        id: Option<String>,
        /// `Reference.identifier` (for `:identifier`), as system and value.
        identifier: Option<(Option<String>, String)>,
    },
    /// One value per component, in component order.
    Composite(Vec<IndexValue>),
    /// An identifier's type (one of its codings) with its value, for
    /// `identifier:of-type=system|code|value`.
    OfType {
        type_system: Option<String>,
        type_code: String,
        value: String,
    },
}

/// Lower case without accents: how string parameters match by default
/// ("case- and accent-insensitive", R4 §3.1.1.4.9).
pub fn normalize(text: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The index values of `resource` for `param`.
pub fn index_values(param: &SearchParam, resource: &Value) -> Vec<IndexValue> {
    let Some(expression) = &param.expression else {
        return Vec::new();
    };
    let items = expression.evaluate(resource);
    if param.param_type == ParamType::Composite {
        return composites(param, &items, resource);
    }
    let mut out = Vec::new();
    for item in &items {
        values_of(param.param_type, item, &mut out);
    }
    out
}

fn composites(param: &SearchParam, items: &[Item<'_>], root: &Value) -> Vec<IndexValue> {
    let mut out = Vec::new();
    for item in items {
        let Node::Json(value) = item.value else {
            continue;
        };
        // The values of each component on this item; then every combination.
        let per_component: Vec<Vec<IndexValue>> = param
            .components
            .iter()
            .map(|c| {
                let mut found = Vec::new();
                for v in c.expression.evaluate_on(value, root) {
                    values_of(c.param_type, &v, &mut found);
                }
                found
            })
            .collect();
        if per_component.iter().any(Vec::is_empty) {
            continue;
        }
        let mut tuples: Vec<Vec<IndexValue>> = vec![Vec::new()];
        for values in per_component {
            tuples = tuples
                .into_iter()
                .flat_map(|t| {
                    values.iter().map(move |v| {
                        let mut t = t.clone();
                        t.push(v.clone());
                        t
                    })
                })
                .collect();
        }
        out.extend(tuples.into_iter().map(IndexValue::Composite));
    }
    out
}

fn text_of(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn string_value(text: &str) -> IndexValue {
    IndexValue::String {
        normalized: normalize(text),
        exact: text.to_owned(),
    }
}

fn values_of(param_type: ParamType, item: &Item<'_>, out: &mut Vec<IndexValue>) {
    let value = match item.value {
        Node::Json(v) => v,
        Node::Bool(b) => {
            if param_type == ParamType::Token {
                out.push(IndexValue::Token {
                    system: None,
                    code: Some(b.to_string()),
                    text: None,
                });
            }
            return;
        }
        // A search parameter's expression selects values of the resource.
        Node::Literal(_) => return,
    };
    match param_type {
        ParamType::String => match value {
            Value::String(s) => out.push(string_value(s)),
            Value::Object(fields) => {
                // HumanName and Address: every part (R4 §3.1.1.4.9).
                for key in [
                    "text",
                    "family",
                    "given",
                    "prefix",
                    "suffix",
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                ] {
                    match fields.get(key) {
                        Some(Value::String(s)) => out.push(string_value(s)),
                        Some(Value::Array(parts)) => {
                            out.extend(parts.iter().filter_map(Value::as_str).map(string_value))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        },
        ParamType::Token => tokens(value, out),
        ParamType::Date => dates(value, out),
        ParamType::Number => {
            if let Some(n) = value.as_f64() {
                out.push(IndexValue::Number(n));
            }
        }
        ParamType::Quantity => quantities(value, out),
        ParamType::Uri => {
            if let Some(s) = value.as_str() {
                out.push(IndexValue::Uri(s.to_owned()));
            }
        }
        ParamType::Reference => references(value, out),
        ParamType::Composite | ParamType::Special => {}
    }
}

fn tokens(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(code) => out.push(IndexValue::Token {
            system: None,
            code: Some(code.clone()),
            text: None,
        }),
        Value::Bool(b) => out.push(IndexValue::Token {
            system: None,
            code: Some(b.to_string()),
            text: None,
        }),
        Value::Object(fields) => {
            if let Some(codings) = fields.get("coding").and_then(Value::as_array) {
                // CodeableConcept: each Coding, and its text.
                for coding in codings {
                    tokens(coding, out);
                }
                if let Some(text) = text_of(value, "text") {
                    out.push(IndexValue::Token {
                        system: None,
                        code: None,
                        text: Some(text),
                    });
                }
            } else if fields.contains_key("code") {
                // Coding.
                out.push(IndexValue::Token {
                    system: text_of(value, "system"),
                    code: text_of(value, "code"),
                    text: text_of(value, "display"),
                });
            } else if fields.contains_key("value") {
                // Identifier (system|value) and ContactPoint (value; R4
                // §3.1.1.4.10: its `system` is not a code system).
                let is_contact = fields
                    .get("system")
                    .and_then(Value::as_str)
                    .is_some_and(|s| {
                        matches!(
                            s,
                            "phone" | "fax" | "email" | "pager" | "url" | "sms" | "other"
                        )
                    })
                    || fields.contains_key("use") && fields.contains_key("rank");
                out.push(IndexValue::Token {
                    system: if is_contact {
                        None
                    } else {
                        text_of(value, "system")
                    },
                    code: value
                        .get("value")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    text: value
                        .pointer("/type/text")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
                // An identifier's type codings, for `:of-type` (R4 §3.1.1.4.10).
                if !is_contact {
                    if let Some(id_value) = value.get("value").and_then(Value::as_str) {
                        for coding in value
                            .pointer("/type/coding")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            if let Some(type_code) = text_of(coding, "code") {
                                out.push(IndexValue::OfType {
                                    type_system: text_of(coding, "system"),
                                    type_code,
                                    value: id_value.to_owned(),
                                });
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn range(text: &str) -> Option<(i64, i64)> {
    parse_range(text).ok().map(|r| (r.start, r.end))
}

fn dates(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        Value::String(text) => {
            if let Some((low, high)) = range(text) {
                out.push(IndexValue::Date { low, high });
            }
        }
        Value::Object(fields) if fields.contains_key("start") || fields.contains_key("end") => {
            // Period: an open end is unbounded.
            let low = text_of(value, "start")
                .and_then(|s| range(&s))
                .map_or(i64::MIN, |r| r.0);
            let high = text_of(value, "end")
                .and_then(|s| range(&s))
                .map_or(i64::MAX, |r| r.1);
            out.push(IndexValue::Date { low, high });
        }
        Value::Object(fields) => {
            // Timing: each event, and the bounds of its repeat.
            for event in fields
                .get("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                dates(event, out);
            }
            if let Some(bounds) = value.pointer("/repeat/boundsPeriod") {
                dates(bounds, out);
            }
        }
        _ => {}
    }
}

fn quantities(value: &Value, out: &mut Vec<IndexValue>) {
    let Some(fields) = value.as_object() else {
        return;
    };
    if let Some(number) = fields.get("value").and_then(Value::as_f64) {
        // Quantity, Age, Duration, Distance, Count, SimpleQuantity; Money
        // names its currency as a code of ISO 4217.
        let money = fields.contains_key("currency");
        out.push(IndexValue::Quantity {
            value: number,
            system: if money {
                Some("urn:iso:std:iso:4217".to_owned())
            } else {
                text_of(value, "system")
            },
            code: text_of(value, if money { "currency" } else { "code" }),
            unit: text_of(value, "unit"),
        });
    }
    // Range: both ends.
    for end in ["low", "high"] {
        if let Some(q) = fields.get(end) {
            quantities(q, out);
        }
    }
}

fn references(value: &Value, out: &mut Vec<IndexValue>) {
    match value {
        // canonical / uri used as a reference (e.g. Questionnaire in a response)
        Value::String(text) => out.push(IndexValue::Reference {
            reference: text.clone(),
            target_type: None,
            id: None,
            identifier: None,
        }),
        Value::Object(_) => {
            let reference = text_of(value, "reference");
            let identifier = value
                .get("identifier")
                .and_then(|i| Some((text_of(i, "system"), text_of(i, "value")?)));
            if reference.is_none() && identifier.is_none() {
                return;
            }
            let id = reference.as_deref().and_then(|r| {
                reference_type(value)?;
                let path = r.split('?').next().unwrap_or(r);
                let parts: Vec<&str> = path.split('/').collect();
                let n = parts.len();
                let at = if n >= 4 && parts[n - 2] == "_history" {
                    n - 3
                } else {
                    n - 1
                };
                parts.get(at).map(|s| (*s).to_owned())
            });
            out.push(IndexValue::Reference {
                reference: reference.clone().unwrap_or_default(),
                target_type: reference
                    .as_ref()
                    .and(reference_type(value))
                    .map(str::to_owned),
                id,
                identifier,
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::SearchParams;
    use serde_json::json;

    fn index(resource_type: &str, code: &str, resource: &Value) -> Vec<IndexValue> {
        let param = SearchParams::r4().get(resource_type, code).unwrap();
        index_values(param, resource)
    }

    #[test]
    fn strings_are_normalized_and_names_searched_by_every_part() {
        assert_eq!(normalize("Zoë ÅNGSTRÖM"), "zoe angstrom");
        let p = json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Ann", "Lee"], "text": "Ann Lee Müller"}]});
        let values = index("Patient", "name", &p);
        assert!(values.contains(&IndexValue::String {
            normalized: "muller".into(),
            exact: "Müller".into()
        }));
        assert!(values.contains(&IndexValue::String {
            normalized: "lee".into(),
            exact: "Lee".into()
        }));
        assert_eq!(values.len(), 4);
        let a = json!({"resourceType": "Patient", "address": [{"line": ["1 Main St"], "city": "Boston", "postalCode": "02108"}]});
        assert_eq!(index("Patient", "address", &a).len(), 3);
        assert_eq!(index("Patient", "address-city", &a).len(), 1);
    }

    #[test]
    fn tokens_of_every_shape() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Pulse"}});
        assert_eq!(
            index("Observation", "status", &o),
            [IndexValue::Token {
                system: None,
                code: Some("final".into()),
                text: None
            }]
        );
        let code = index("Observation", "code", &o);
        assert_eq!(
            code[0],
            IndexValue::Token {
                system: Some("http://loinc.org".into()),
                code: Some("8867-4".into()),
                text: Some("Heart rate".into())
            }
        );
        assert_eq!(
            code[1],
            IndexValue::Token {
                system: None,
                code: None,
                text: Some("Pulse".into())
            }
        );
        let p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "123", "type": {"text": "MRN"}}],
            "telecom": [{"system": "email", "value": "a@b.org"}], "active": true, "gender": "female"});
        assert_eq!(
            index("Patient", "identifier", &p),
            [IndexValue::Token {
                system: Some("urn:mrn".into()),
                code: Some("123".into()),
                text: Some("MRN".into())
            }]
        );
        assert_eq!(
            index("Patient", "email", &p),
            [IndexValue::Token {
                system: None,
                code: Some("a@b.org".into()),
                text: None
            }]
        );
        assert_eq!(
            index("Patient", "active", &p),
            [IndexValue::Token {
                system: None,
                code: Some("true".into()),
                text: None
            }]
        );
        // A computed boolean (Patient-deceased).
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        assert_eq!(
            index("Patient", "deceased", &dead),
            [IndexValue::Token {
                system: None,
                code: Some("true".into()),
                text: None
            }]
        );
    }

    #[test]
    fn dates_are_ranges_at_their_precision() {
        let p = json!({"resourceType": "Patient", "birthDate": "1980"});
        let IndexValue::Date { low, high } = index("Patient", "birthdate", &p)[0] else {
            panic!()
        };
        let year = parse_range("1980").unwrap();
        assert_eq!((low, high), (year.start, year.end));
        let e =
            json!({"resourceType": "Encounter", "period": {"start": "2020-03-02T09:05:11-05:00"}});
        let IndexValue::Date { low, high } = index("Encounter", "date", &e)[0] else {
            panic!()
        };
        assert_eq!(high, i64::MAX, "an open end");
        assert_eq!(low, parse_range("2020-03-02T09:05:11-05:00").unwrap().start);
        let o = json!({"resourceType": "Observation", "effectivePeriod": {"start": "2020", "end": "2021"}});
        assert_eq!(index("Observation", "date", &o).len(), 1);
        let m = json!({"resourceType": "MedicationRequest", "authoredOn": "2020-01-01"});
        assert_eq!(index("MedicationRequest", "authoredon", &m).len(), 1);
    }

    #[test]
    fn numbers_quantities_uris_and_references() {
        let o = json!({"resourceType": "Observation", "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "subject": {"reference": "http://example.org/fhir/Patient/p1/_history/2"}});
        assert_eq!(
            index("Observation", "value-quantity", &o),
            [IndexValue::Quantity {
                value: 5.4,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("mmol/L".into()),
                unit: Some("mmol/L".into())
            }]
        );
        assert_eq!(
            index("Observation", "subject", &o),
            [IndexValue::Reference {
                reference: "http://example.org/fhir/Patient/p1/_history/2".into(),
                target_type: Some("Patient".into()),
                id: Some("p1".into()),
                identifier: None
            }]
        );
        let r =
            json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.3}]});
        assert_eq!(
            index("RiskAssessment", "probability", &r),
            [IndexValue::Number(0.3)]
        );
        let v = json!({"resourceType": "ValueSet", "url": "http://example.org/vs"});
        assert_eq!(
            index("ValueSet", "url", &v),
            [IndexValue::Uri("http://example.org/vs".into())]
        );
        let c = json!({"resourceType": "Claim", "total": {"value": 12.5, "currency": "USD"}});
        let _ = c; // Claim has no total parameter in R4; Money is covered through Quantity below.
        let by_identifier = json!({"resourceType": "Observation", "subject": {"identifier": {"system": "urn:mrn", "value": "9"}}});
        assert_eq!(
            index("Observation", "subject", &by_identifier),
            [IndexValue::Reference {
                reference: String::new(),
                target_type: None,
                id: None,
                identifier: Some((Some("urn:mrn".into()), "9".into()))
            }]
        );
    }

    #[test]
    fn composites_pair_values_of_one_element() {
        let o = json!({"resourceType": "Observation", "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80}}]});
        let values = index("Observation", "component-code-value-quantity", &o);
        assert_eq!(values.len(), 2, "{values:?}");
        let IndexValue::Composite(first) = &values[0] else {
            panic!()
        };
        assert!(matches!(&first[0], IndexValue::Token { code: Some(c), .. } if c == "8480-6"));
        assert!(matches!(&first[1], IndexValue::Quantity { value, .. } if *value == 120.0));
    }
}
