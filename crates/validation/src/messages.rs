//! Turning a schema error into a `Problem` a person can act on: where, as
//! a FHIRPath (`Patient.name[0].given[1]`), and what to fix, in FHIR's terms
//! (a date, a repeating element, an unknown element) rather than the
//! schema's (a pattern, a type). The value that was sent is never repeated.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::LocationSegment;
use jsonschema::ValidationError;
use serde_json::Value;

use crate::hints::Hints;
use crate::{Problem, ProblemKind};

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
