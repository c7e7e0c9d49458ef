//! The top-level elements of each R4 resource type, with whether each is in
//! the type's summary and whether it is mandatory: what `_summary` and
//! `_elements` keep (R4 §3.1.1.5.8–9). Generated from HL7's
//! StructureDefinitions by `scripts/gen-elements.py` into
//! `definitions/elements.json` (see `definitions/README.md`).

use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../definitions/elements.json");

/// One top-level element of a resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// As the definition names it: `birthDate`, or `deceased[x]` for a
    /// choice of types.
    pub name: String,
    /// In the summary (`isSummary`).
    pub summary: bool,
    /// Mandatory (`min` ≥ 1).
    pub mandatory: bool,
}

impl Element {
    /// True when the JSON property `key` holds this element: its name, a
    /// choice's typed name (`deceasedBoolean` for `deceased[x]`), or either
    /// with the `_` prefix of a primitive's extensions.
    pub fn holds(&self, key: &str) -> bool {
        let key = key.strip_prefix('_').unwrap_or(key);
        match self.name.strip_suffix("[x]") {
            Some(base) => key
                .strip_prefix(base)
                .and_then(|rest| rest.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase()),
            None => key == self.name,
        }
    }

    /// True when a client's name for the element (in `_elements`) is this
    /// one: its name, or for a choice its base (`deceased`) or a typed name.
    pub fn is_named(&self, asked: &str) -> bool {
        match self.name.strip_suffix("[x]") {
            Some(base) => asked == base || asked == self.name || self.holds(asked),
            None => asked == self.name,
        }
    }
}

fn table() -> &'static HashMap<String, Vec<Element>> {
    static TABLE_CELL: OnceLock<HashMap<String, Vec<Element>>> = OnceLock::new();
    TABLE_CELL.get_or_init(|| {
        let raw: HashMap<String, Vec<(String, String)>> =
            serde_json::from_str(TABLE).expect("definitions/elements.json is valid");
        raw.into_iter()
            .map(|(resource_type, elements)| {
                let elements = elements
                    .into_iter()
                    .map(|(name, flags)| Element {
                        summary: flags.contains('s'),
                        mandatory: flags.contains('m'),
                        name,
                    })
                    .collect();
                (resource_type, elements)
            })
            .collect()
    })
}

/// The top-level elements of an R4 resource type; `None` for a type R4
/// does not define (the server's own, such as `Client`).
pub fn elements(resource_type: &str) -> Option<&'static [Element]> {
    table().get(resource_type).map(Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_r4_resource_type_has_its_elements() {
        for rt in crate::RESOURCE_TYPES {
            let elements = elements(rt).unwrap_or_else(|| panic!("{rt} has no elements"));
            assert!(elements.iter().any(|e| e.name == "id" && e.summary), "{rt}");
        }
        assert!(elements("Client").is_none());
    }

    #[test]
    fn flags_follow_the_definitions() {
        let observation = elements("Observation").unwrap();
        let find = |name: &str| observation.iter().find(|e| e.name == name).unwrap();
        assert!(find("status").mandatory && find("status").summary);
        assert!(find("code").mandatory);
        assert!(!find("note").summary && !find("note").mandatory);
        assert!(!find("text").summary);
        let value = find("value[x]");
        assert!(value.holds("valueQuantity") && value.holds("_valueString"));
        assert!(!value.holds("value") && !value.holds("valueset"));
        assert!(value.is_named("value") && value.is_named("valueQuantity"));
        assert!(!find("code").holds("codes"));
        assert!(find("code").holds("_code"));
    }
}
