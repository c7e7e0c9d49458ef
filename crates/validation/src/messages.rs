//! Turning a schema error into a `Problem` a person can act on: where, as
//! a FHIRPath (`Patient.name[0].given[1]`), and what to fix, in FHIR's terms
//! (a date, a repeating element, an unknown element) rather than the
//! schema's (a pattern, a type). The value that was sent is never repeated.

use std::collections::HashMap;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::ValidationError;
use serde_json::{Map, Value};

use crate::{Problem, ProblemKind};

/// What each primitive pattern means, read from the definitions.
pub(crate) struct Hints {
    /// pattern -> primitive type name (the first in `PRIMITIVES` that has it).
    by_pattern: HashMap<String, &'static str>,
}

/// The primitive types (R4 §2.24.0.1) and how to describe a valid value,
/// in order of preference where two share a pattern.
const PRIMITIVES: &[(&str, &str)] = &[
    ("boolean", "true or false"),
    ("integer", "a whole number"),
    ("positiveInt", "a whole number from 1"),
    ("unsignedInt", "a whole number from 0"),
    ("decimal", "a decimal number"),
    ("date", "a date: YYYY, YYYY-MM or YYYY-MM-DD"),
    ("dateTime", "a date, or a date and time with a time zone: YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss)(Z or +hh:mm)"),
    ("instant", "an instant: YYYY-MM-DDThh:mm:ss(.sss) with a time zone (Z or +hh:mm)"),
    ("time", "a time of day: hh:mm:ss"),
    ("string", "text that is not empty and does not start or end with whitespace other than line breaks"),
    ("code", "a code: text without leading, trailing or repeated whitespace"),
    ("id", "an id: 1 to 64 characters from A-Z, a-z, 0-9, '-' and '.'"),
    ("uri", "a URI without whitespace"),
    ("oid", "an OID URI such as urn:oid:1.2.3"),
    ("uuid", "a UUID URI such as urn:uuid:…"),
    ("base64Binary", "base64-encoded data"),
];

impl Hints {
    pub(crate) fn from_definitions(definitions: &Map<String, Value>) -> Hints {
        let mut by_pattern = HashMap::new();
        for (name, _) in PRIMITIVES {
            if let Some(pattern) = definitions
                .get(*name)
                .and_then(|d| d.get("pattern"))
                .and_then(Value::as_str)
            {
                by_pattern.entry(pattern.to_owned()).or_insert(*name);
            }
        }
        Hints { by_pattern }
    }

    pub(crate) fn primitive_of(&self, pattern: &str) -> Option<&'static str> {
        self.by_pattern.get(pattern).copied()
    }

    fn expected(&self, pattern: &str) -> String {
        let described = self.primitive_of(pattern).and_then(|name| {
            PRIMITIVES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, text)| format!("is not a valid {n}; expected {text}"))
        });
        described.unwrap_or_else(|| "is not in the format this element needs".into())
    }
}

/// A problem, and whether it is only an unknown element (which a relaxed
/// server accepts).
pub(crate) struct Described {
    pub(crate) problem: Problem,
    pub(crate) unknown_element: bool,
}

/// `Patient` + `/name/0/given/1` -> `Patient.name[0].given[1]`.
fn expression(prefix: &str, error: &ValidationError<'_>) -> String {
    let mut out = prefix.to_owned();
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
            LocationSegment::Property(name) => {
                out.push('.');
                out.push_str(&name);
            }
        }
    }
    out
}

fn json_type_text(kind: &TypeKind) -> String {
    let name = |t: String| match t.as_str() {
        "array" => "a list (this element repeats: use [ … ])".to_owned(),
        "object" => "an object ({ … })".to_owned(),
        "string" => "a string".to_owned(),
        "number" => "a number".to_owned(),
        "integer" => "a whole number".to_owned(),
        "boolean" => "true or false".to_owned(),
        other => other.to_owned(),
    };
    match kind {
        TypeKind::Single(t) => name(t.to_string()),
        TypeKind::Multiple(set) => {
            // A repeating primitive's items may be null (R4 §2.6.2); say so last.
            let mut names: Vec<String> = set
                .iter()
                .map(|t| t.to_string())
                .filter(|t| t != "null")
                .map(name)
                .collect();
            if set.iter().any(|t| t.to_string() == "null") {
                names.push("null (to keep a list aligned with its _element list)".into());
            }
            names.join(" or ")
        }
    }
}

/// The problems one schema error stands for (one per unknown element).
pub(crate) fn describe(error: &ValidationError<'_>, prefix: &str, hints: &Hints) -> Vec<Described> {
    let at = expression(prefix, error);
    let one = |kind: ProblemKind, message: String| {
        vec![Described {
            problem: Problem {
                kind,
                expression: at.clone(),
                message,
            },
            unknown_element: false,
        }]
    };
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|name| Described {
                problem: Problem {
                    kind: ProblemKind::Structure,
                    expression: format!("{at}.{name}"),
                    message: if name.starts_with('_') {
                        "unknown element: an _element extends the primitive element of the same name, and there is none here".to_owned()
                    } else {
                        "unknown element: the R4 definition has no element of this name here (check the spelling and the FHIR version)".to_owned()
                    },
                },
                unknown_element: true,
            })
            .collect(),
        ValidationErrorKind::Type { kind } => {
            one(ProblemKind::Structure, format!("must be {}", json_type_text(kind)))
        }
        ValidationErrorKind::Pattern { pattern } => one(ProblemKind::Value, hints.expected(pattern)),
        ValidationErrorKind::Enum { options } => {
            let codes: Vec<String> = options
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            let kind = if error.instance().is_string() {
                ProblemKind::Code
            } else {
                ProblemKind::Structure
            };
            let prefix = if error.instance().is_string() {
                "is not a code of the required value set"
            } else {
                "must be one code (a string) of the required value set"
            };
            one(kind, if codes.len() <= 12 {
                format!("{prefix}; use one of: {}", codes.join(", "))
            } else {
                format!("{prefix} ({} codes, e.g. {})", codes.len(), codes[..5].join(", "))
            })
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("(element)");
            vec![Described {
                problem: Problem {
                    kind: ProblemKind::Required,
                    expression: format!("{at}.{name}"),
                    message: format!("{name} is required here"),
                },
                unknown_element: false,
            }]
        }
        ValidationErrorKind::Constant { expected_value } => {
            one(ProblemKind::Value, format!("must be {expected_value}"))
        }
        ValidationErrorKind::Custom { keyword, message } => {
            let kind = if keyword.as_str() == crate::keywords::PRIMITIVE {
                ProblemKind::Value
            } else {
                ProblemKind::Invariant
            };
            one(kind, message.clone())
        }
        ValidationErrorKind::MinItems { limit } => {
            one(ProblemKind::Structure, format!("needs at least {limit} item(s); leave the element out rather than send it empty"))
        }
        ValidationErrorKind::MinLength { .. } => one(ProblemKind::Value, "must not be empty".into()),
        // Anything else: the schema's own words, without the value.
        _ => one(ProblemKind::Structure, error.masked().to_string()),
    }
}
