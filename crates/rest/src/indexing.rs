//! What a stored resource is found by: every search parameter of its type
//! (HL7's R4 definitions, `fhirbox_fhir::search`) evaluated on the body the
//! store is about to write, as index rows the store keeps in the same
//! transaction (docs/search.md).

use std::sync::{Arc, OnceLock};

use fhirbox_fhir::search::{index_values, normalize, IndexValue, ParamType, SearchParams};
use fhirbox_store::{
    CompositeFirst, CompositeSecond, IndexEntry, Indexer, ResourceSearch, SearchIndex, SearchQuery,
    SortKey, Store, StoreResult,
};
use serde_json::Value;

use crate::Rest;

/// The version of the index rows: when the definitions or the way values
/// are indexed change, this changes and the server rebuilds the rows at
/// start (`fhirbox reindex` does it on demand).
pub const INDEX_VERSION: &str = "r4-search-4";

/// Parameters kept in columns of the resource row itself.
const NATIVE: &[&str] = &["_id", "_lastUpdated"];

/// The indexer every write uses.
pub fn indexer() -> Indexer {
    static INDEXER: OnceLock<Indexer> = OnceLock::new();
    INDEXER.get_or_init(|| Arc::new(entries)).clone()
}

/// The index rows of `body`, a resource of `resource_type`: each distinct
/// (parameter, value) once.
pub fn entries(resource_type: &str, body: &Value) -> Vec<IndexEntry> {
    let mut out: Vec<IndexEntry> = Vec::new();
    for param in SearchParams::r4().of_type(resource_type) {
        if NATIVE.contains(&param.code.as_str()) || param.param_type == ParamType::Special {
            continue;
        }
        for value in index_values(param, body) {
            // A reference by identifier is also a token under
            // `<code>:identifier` (R4 §3.1.1.4.5, `:identifier`).
            if let IndexValue::Reference {
                identifier: Some((system, id_value)),
                ..
            } = &value
            {
                out.push(IndexEntry::Token {
                    param: format!("{}:identifier", param.code),
                    system: system.clone(),
                    code: Some(id_value.clone()),
                    text: None,
                });
            }
            let value = if param.code == "phonetic" {
                phonetic(value)
            } else {
                value
            };
            if let Some(entry) = entry(&param.code, value) {
                if !out.contains(&entry) {
                    out.push(entry);
                }
            }
        }
    }
    out
}

/// A composite pair (R4's composites are a token or reference and one
/// partner, but for four MolecularSequence ones of three numbers, which are
/// not indexed).
fn composite(param: String, parts: Vec<IndexValue>) -> Option<IndexEntry> {
    let [first, second] = <[IndexValue; 2]>::try_from(parts).ok()?;
    let first = match first {
        IndexValue::Token {
            system,
            code: Some(code),
            ..
        } => CompositeFirst::Token { system, code },
        IndexValue::Reference {
            target_type,
            id: Some(target_id),
            ..
        } => CompositeFirst::Reference {
            target_type,
            target_id,
        },
        _ => return None,
    };
    let second = match second {
        IndexValue::Token {
            system,
            code: Some(code),
            ..
        } => CompositeSecond::Token { system, code },
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => CompositeSecond::Quantity {
            value,
            system,
            code: code.or(unit),
        },
        IndexValue::Date { low, high } => CompositeSecond::Date { low, high },
        IndexValue::String { normalized, exact } => CompositeSecond::String { normalized, exact },
        _ => return None,
    };
    Some(IndexEntry::Composite {
        param,
        first,
        second,
    })
}

/// `phonetic` (HumanName parts "using some kind of phonetic matching
/// algorithm", R4 Patient search parameters): each part as its Soundex
/// code, which the search value is encoded to as well.
fn phonetic(value: IndexValue) -> IndexValue {
    match value {
        IndexValue::String { exact, .. } => {
            let code = soundex(&exact);
            IndexValue::String {
                normalized: code.clone(),
                exact: code,
            }
        }
        other => other,
    }
}

/// American Soundex (US National Archives, "The Soundex Indexing System"):
/// the first letter, then the digits of the following consonants, adjacent
/// equal digits (also across h and w) once, vowels separating, padded to 4.
pub fn soundex(text: &str) -> String {
    let digit = |c: char| match c {
        'b' | 'f' | 'p' | 'v' => Some('1'),
        'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => Some('2'),
        'd' | 't' => Some('3'),
        'l' => Some('4'),
        'm' | 'n' => Some('5'),
        'r' => Some('6'),
        _ => None,
    };
    let letters: Vec<char> = normalize(text)
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect();
    let Some(&first) = letters.first() else {
        return String::new();
    };
    let mut code = first.to_ascii_uppercase().to_string();
    let mut last = digit(first);
    for &c in &letters[1..] {
        if code.len() == 4 {
            break;
        }
        match digit(c) {
            Some(d) if Some(d) != last => {
                code.push(d);
                last = Some(d);
            }
            Some(_) => {}
            // h and w do not separate equal codes; vowels do.
            None if c == 'h' || c == 'w' => {}
            None => last = None,
        }
    }
    while code.len() < 4 {
        code.push('0');
    }
    code
}

fn entry(param: &str, value: IndexValue) -> Option<IndexEntry> {
    let param = param.to_owned();
    Some(match value {
        IndexValue::String { normalized, exact } => IndexEntry::String {
            param,
            normalized,
            exact,
        },
        IndexValue::Token { system, code, text } => IndexEntry::Token {
            param,
            system,
            code,
            text: text.as_deref().map(normalize),
        },
        IndexValue::Date { low, high } => IndexEntry::Date { param, low, high },
        IndexValue::Number(value) => IndexEntry::Number { param, value },
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => IndexEntry::Quantity {
            param,
            value,
            system,
            code: code.or(unit),
        },
        IndexValue::Uri(uri) => IndexEntry::Uri { param, uri },
        IndexValue::Reference {
            reference,
            target_type,
            id,
            identifier: _,
        } => IndexEntry::Reference {
            param,
            target_type,
            target_id: id,
            url: reference,
        },
        IndexValue::OfType {
            type_system,
            type_code,
            value,
        } => IndexEntry::Token {
            param: format!("{param}:of-type"),
            system: type_system,
            code: Some(format!("{type_code}|{value}")),
            text: None,
        },
        IndexValue::Composite(parts) => return composite(param, parts),
    })
}

/// Rebuilds the index rows of every current resource in `store` (data
/// stored before the index existed, or indexed by older definitions), then
/// records `INDEX_VERSION`. Returns how many resources were indexed.
pub async fn reindex(store: &Store) -> StoreResult<u64> {
    {
        let mut indexed = 0;
        let mut cursor = None;
        loop {
            let page = store
                .search(SearchQuery {
                    sort: SortKey::Created,
                    count: 500,
                    cursor,
                    ..Default::default()
                })
                .await?;
            for stored in &page.resources {
                // A body that does not parse has nothing to be found by.
                let rows = serde_json::from_str::<Value>(&stored.body)
                    .map(|body| entries(&stored.resource_type, &body))
                    .unwrap_or_default();
                if store
                    .replace_index(&stored.resource_type, &stored.id, stored.version_id, rows)
                    .await?
                {
                    indexed += 1;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if indexed > 0 {
            store.analyze().await?;
        }
        store.set_index_version(INDEX_VERSION).await?;
        Ok(indexed)
    }
}

impl Rest {
    /// `reindex` when the rows were built by other definitions (or none).
    pub async fn reindex_if_stale(&self) -> StoreResult<Option<u64>> {
        if self.store.index_version().await?.as_deref() == Some(INDEX_VERSION) {
            return Ok(None);
        }
        reindex(&self.store).await.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn soundex_codes() {
        for (name, code) in [
            ("Robert", "R163"),
            ("Rupert", "R163"),
            ("Rubin", "R150"),
            ("Ashcraft", "A261"),
            ("Tymczak", "T522"),
            ("Pfister", "P236"),
            ("Müller", "M460"),
            ("Lee", "L000"),
        ] {
            assert_eq!(soundex(name), code, "{name}");
        }
    }

    #[test]
    fn each_value_is_indexed_once() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Ng", "given": ["Ann"]}, {"family": "Ng", "given": ["Ann"]}]});
        let rows = entries("Patient", &p);
        let family = rows
            .iter()
            .filter(|r| matches!(r, IndexEntry::String { param, .. } if param == "family"))
            .count();
        assert_eq!(family, 1);
        assert!(rows.contains(&IndexEntry::String {
            param: "phonetic".into(),
            normalized: "N200".into(),
            exact: "N200".into()
        }));
    }

    #[test]
    fn a_patient_is_indexed_by_its_parameters() {
        let p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Müller"}],
            "gender": "female", "birthDate": "1980", "managingOrganization": {"reference": "Organization/o"}});
        let rows = entries("Patient", &p);
        assert!(rows.contains(&IndexEntry::String {
            param: "family".into(),
            normalized: "muller".into(),
            exact: "Müller".into()
        }));
        assert!(rows.contains(&IndexEntry::Token {
            param: "gender".into(),
            system: None,
            code: Some("female".into()),
            text: None
        }));
        assert!(rows
            .iter()
            .any(|r| matches!(r, IndexEntry::Date { param, .. } if param == "birthdate")));
        assert!(rows.contains(&IndexEntry::Reference {
            param: "organization".into(),
            target_type: Some("Organization".into()),
            target_id: Some("o".into()),
            url: "Organization/o".into()
        }));
        // _id is a column of the resource row, not an index row.
        assert!(!rows
            .iter()
            .any(|r| matches!(r, IndexEntry::Token { param, .. } if param == "_id")));
    }
}
