//! Two keywords fhirbox adds to the schema, where HL7's JSON Schema is
//! weaker than the specification (R4 §2.6.2 "JSON Schema" lists what it
//! cannot express):
//!
//! - `fhirbox-choices`: at most one variant of a choice element (`value[x]`
//!   as `valueString` or `valueQuantity`, never both; R4 §2.24.0.5 "Choice
//!   of Data Types"). The schema has no notion of choice groups; they are
//!   recognised in HL7's definitions as non-repeating properties named
//!   `<element><Type>` that share one description, which is how the schema
//!   generator writes every variant of one element.
//! - `fhirbox-primitive`: what a pattern cannot say about a primitive
//!   (R4 §2.24.0.1): `integer` is a whole 32-bit number, `positiveInt` at
//!   least 1, `unsignedInt` at least 0 (the schema types them as any
//!   number), and `date`, `dateTime` and `instant` name a real calendar day.

use std::collections::BTreeMap;

use jsonschema::paths::Location;
use jsonschema::{Keyword, ValidationError, ValidationOptions};
use serde_json::{json, Map, Value};

use crate::hints::Hints;

const CHOICES: &str = "fhirbox-choices";
pub(crate) const PRIMITIVE: &str = "fhirbox-primitive";

/// The primitive types whose values need more than their pattern.
const CHECKED_PRIMITIVES: &[&str] = &[
    "integer",
    "positiveInt",
    "unsignedInt",
    "date",
    "dateTime",
    "instant",
];

/// Adds `fhirbox-choices` to every definition that has choice elements.
pub(crate) fn mark_choices(definitions: &mut Map<String, Value>) {
    let type_names: Vec<String> = definitions
        .keys()
        .filter(|name| !name.contains('_'))
        .map(|name| capitalize(name))
        .collect();
    for definition in definitions.values_mut() {
        let Some(properties) = definition.get("properties").and_then(Value::as_object) else {
            continue;
        };
        // element -> [(variant, description)]
        let mut groups: BTreeMap<&str, Vec<(&str, Option<&str>)>> = BTreeMap::new();
        for (name, property) in properties {
            if name.starts_with('_')
                || property.get("type").and_then(Value::as_str) == Some("array")
            {
                continue;
            }
            let split = name.char_indices().skip(1).find(|(i, c)| {
                c.is_ascii_uppercase() && type_names.iter().any(|t| t == &name[*i..])
            });
            if let Some((i, _)) = split {
                let description = property.get("description").and_then(Value::as_str);
                groups
                    .entry(&name[..i])
                    .or_default()
                    .push((name, description));
            }
        }
        let choices: Vec<Value> = groups
            .into_iter()
            .filter(|(_, variants)| {
                variants.len() >= 2 && variants.iter().all(|(_, d)| *d == variants[0].1)
            })
            .map(|(element, variants)| {
                let names: Vec<&str> = variants.iter().map(|(n, _)| *n).collect();
                json!({"element": element, "variants": names})
            })
            .collect();
        if !choices.is_empty() {
            if let Some(fields) = definition.as_object_mut() {
                fields.insert(CHOICES.into(), Value::Array(choices));
            }
        }
    }
}

fn capitalize(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

/// Adds `fhirbox-primitive` beside every pattern of a checked primitive
/// type, wherever it appears (choice variants repeat the pattern inline).
pub(crate) fn mark_primitives(definitions: &mut Map<String, Value>, hints: &Hints) {
    fn walk(value: &mut Value, hints: &Hints) {
        match value {
            Value::Object(fields) => {
                let primitive = fields
                    .get("pattern")
                    .and_then(Value::as_str)
                    .and_then(|p| hints.primitive_of(p))
                    .filter(|t| CHECKED_PRIMITIVES.contains(t));
                if let Some(primitive) = primitive {
                    fields.insert(PRIMITIVE.into(), json!(primitive));
                }
                fields.values_mut().for_each(|v| walk(v, hints));
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, hints)),
            _ => {}
        }
    }
    definitions.values_mut().for_each(|d| walk(d, hints));
}

/// The options with both keywords registered.
pub(crate) fn register(options: ValidationOptions<'_>) -> ValidationOptions<'_> {
    options
        .with_keyword(CHOICES, |_, value: &Value, _: Location| {
            let groups = value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| {
                    let element = g.get("element")?.as_str()?.to_owned();
                    let variants = g
                        .get("variants")?
                        .as_array()?
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    Some(ChoiceGroup { element, variants })
                })
                .collect();
            Ok(Box::new(Choices::new(groups)) as Box<dyn for<'i> Keyword<'i>>)
        })
        .with_keyword(PRIMITIVE, |_, value: &Value, _: Location| {
            let kind = match value.as_str() {
                Some("integer") => Primitive::Integer {
                    min: i32::MIN as i64,
                },
                Some("positiveInt") => Primitive::Integer { min: 1 },
                Some("unsignedInt") => Primitive::Integer { min: 0 },
                _ => Primitive::Calendar,
            };
            Ok(Box::new(kind) as Box<dyn for<'i> Keyword<'i>>)
        })
}

struct ChoiceGroup {
    element: String,
    variants: Vec<String>,
}

/// At most one variant of each choice element.
struct Choices {
    groups: Vec<ChoiceGroup>,
    /// variant name -> its group; an object is checked by its own keys
    /// (a handful) rather than by every variant (Extension has 50).
    group_of: std::collections::HashMap<String, usize>,
}

impl Choices {
    fn new(groups: Vec<ChoiceGroup>) -> Choices {
        let group_of = groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| group.variants.iter().map(move |v| (v.clone(), g)))
            .collect();
        Choices { groups, group_of }
    }

    fn first_problem(&self, instance: &Value) -> Option<String> {
        let fields = instance.as_object()?;
        let mut seen: Vec<usize> = Vec::new();
        let repeated = fields.keys().find_map(|key| {
            let group = *self.group_of.get(key)?;
            if seen.contains(&group) {
                Some(group)
            } else {
                seen.push(group);
                None
            }
        })?;
        let group = &self.groups[repeated];
        let present: Vec<&str> = group
            .variants
            .iter()
            .filter(|v| fields.contains_key(v.as_str()))
            .map(String::as_str)
            .collect();
        Some(format!(
            "{}[x] is a choice: keep one of {}",
            group.element,
            present.join(", ")
        ))
    }
}

impl<'i> Keyword<'i> for Choices {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        match self.first_problem(instance) {
            Some(message) => Err(ValidationError::custom(message)),
            None => Ok(()),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.first_problem(instance).is_none()
    }
}

/// The checks of one primitive type beyond its pattern.
enum Primitive {
    /// A whole number from `min` to 2^31 - 1 (R4 integer is 32-bit).
    Integer { min: i64 },
    /// `date`, `dateTime`, `instant`: the day exists.
    Calendar,
}

impl Primitive {
    fn problem(&self, instance: &Value) -> Option<String> {
        match self {
            Primitive::Integer { min } => {
                let Value::Number(n) = instance else {
                    return None;
                };
                match n.as_i64() {
                    Some(v) if (*min..=i32::MAX as i64).contains(&v) => None,
                    Some(_) if *min == 1 => {
                        Some("must be a whole number from 1 to 2147483647".into())
                    }
                    Some(_) if *min == 0 => {
                        Some("must be a whole number from 0 to 2147483647".into())
                    }
                    Some(_) => Some("must be a whole number from -2147483648 to 2147483647".into()),
                    None => Some("must be a whole number, without a fraction or exponent".into()),
                }
            }
            Primitive::Calendar => {
                let text = instance.as_str()?;
                let (year, month, day) = calendar_parts(text)?;
                (day > days_in_month(year, month)).then(|| {
                    format!(
                        "names a day that does not exist ({year:04}-{month:02} has {} days)",
                        days_in_month(year, month)
                    )
                })
            }
        }
    }
}

impl<'i> Keyword<'i> for Primitive {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        match self.problem(instance) {
            Some(message) => Err(ValidationError::custom(message)),
            None => Ok(()),
        }
    }

    fn is_valid(&self, instance: &'i Value) -> bool {
        self.problem(instance).is_none()
    }
}

/// Year, month and day of a `YYYY-MM-DD…` text; `None` when it has no day
/// (`2024`, `2024-02`) or is not shaped like one (the pattern reports that).
fn calendar_parts(text: &str) -> Option<(u32, u32, u32)> {
    let bytes = text.as_bytes();
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    Some((number(0..4)?, number(5..7)?, number(8..10)?))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_whole_and_in_range() {
        let int = Primitive::Integer {
            min: i32::MIN as i64,
        };
        assert!(int.problem(&json!(3)).is_none());
        assert!(int.problem(&json!(-2147483648i64)).is_none());
        assert!(int.problem(&json!(1.5)).unwrap().contains("whole number"));
        assert!(int.problem(&json!(2147483648i64)).is_some());
        let positive = Primitive::Integer { min: 1 };
        assert!(positive.problem(&json!(0)).unwrap().contains("from 1"));
        assert!(positive.problem(&json!(1)).is_none());
        let unsigned = Primitive::Integer { min: 0 };
        assert!(unsigned.problem(&json!(-1)).unwrap().contains("from 0"));
        assert!(unsigned.problem(&json!(0)).is_none());
        // Other types are the pattern's and type's to report.
        assert!(int.problem(&json!("3")).is_none());
    }

    #[test]
    fn calendar_days_must_exist() {
        let day = Primitive::Calendar;
        assert!(day.problem(&json!("2024-02-29")).is_none());
        assert!(day
            .problem(&json!("2023-02-29"))
            .unwrap()
            .contains("28 days"));
        assert!(day.problem(&json!("1900-02-29")).is_some());
        assert!(day.problem(&json!("2000-02-29")).is_none());
        assert!(day.problem(&json!("2024-04-31T10:00:00Z")).is_some());
        assert!(day
            .problem(&json!("2024-12-31T23:59:59.999+14:00"))
            .is_none());
        assert!(day.problem(&json!("2024-02")).is_none());
        assert!(day.problem(&json!("2024")).is_none());
    }

    #[test]
    fn choice_groups_are_read_from_shared_descriptions() {
        let mut definitions = json!({
            "string": {}, "Quantity": {}, "CodeableConcept": {}, "Reference": {}, "boolean": {},
            "Thing": {"properties": {
                "valueString": {"description": "The value"},
                "valueQuantity": {"description": "The value"},
                "reasonCode": {"type": "array", "description": "Why"},
                "reasonReference": {"type": "array", "description": "Why"},
                "paymentBoolean": {"description": "Paid"},
                "paymentReference": {"description": "Who paid"},
            }}
        });
        mark_choices(definitions.as_object_mut().unwrap());
        assert_eq!(
            definitions["Thing"][CHOICES],
            json!([{"element": "value", "variants": ["valueString", "valueQuantity"]}])
        );
        let choices = Choices::new(vec![ChoiceGroup {
            element: "value".into(),
            variants: vec!["valueQuantity".into(), "valueString".into()],
        }]);
        assert!(choices
            .first_problem(&json!({"valueString": "a"}))
            .is_none());
        let problem = choices
            .first_problem(&json!({"valueString": "a", "valueQuantity": {}}))
            .unwrap();
        assert!(problem.contains("value[x]"), "{problem}");
    }
}
