//! What the primitive types' patterns mean (R4 §2.24.0.1): which type a
//! pattern belongs to, and how to describe a valid value of it.

use std::collections::HashMap;

use serde_json::{Map, Value};

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

    pub(crate) fn expected(&self, pattern: &str) -> String {
        let described = self.primitive_of(pattern).and_then(|name| {
            PRIMITIVES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, text)| format!("is not a valid {n}; expected {text}"))
        });
        described.unwrap_or_else(|| "is not in the format this element needs".into())
    }
}
