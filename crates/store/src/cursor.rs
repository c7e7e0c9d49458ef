//! Opaque keyset cursors for paging. A cursor names the last row a page
//! showed, so later pages stay correct while rows are inserted or deleted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A position in a result list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// `n` (rows after the key) or `p` (rows before it).
    #[serde(rename = "d")]
    pub(crate) direction: char,
    /// Sort the cursor was issued for: `c` (creation order), `i` (_id),
    /// `u` (_lastUpdated), `h` (history), `g` (by the keys in `order`).
    #[serde(rename = "s")]
    pub(crate) sort: char,
    #[serde(rename = "x")]
    pub(crate) descending: bool,
    /// The row's storage key (`c`), last update (`u`) or history sequence (`h`).
    #[serde(rename = "u")]
    pub(crate) number: i64,
    #[serde(rename = "t")]
    pub(crate) resource_type: String,
    #[serde(rename = "i")]
    pub(crate) id: String,
    /// With `g`: the sort keys the cursor was issued for, as text.
    #[serde(rename = "o", default, skip_serializing_if = "String::is_empty")]
    pub(crate) order: String,
    /// With `g`: the row's value of each key (`null`: it has none); its
    /// storage key is `number`.
    #[serde(rename = "v", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) values: Vec<serde_json::Value>,
}

impl Cursor {
    /// The URL-safe text form used in `_cursor=` links.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Parses a cursor from a link; any damage is `InvalidCursor`.
    pub fn decode(text: &str) -> Result<Cursor, StoreError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| StoreError::InvalidCursor)?;
        let cursor: Cursor =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)?;
        if !matches!(cursor.direction, 'n' | 'p')
            || !matches!(cursor.sort, 'c' | 'i' | 'u' | 'h' | 'g')
        {
            return Err(StoreError::InvalidCursor);
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor {
            direction: 'n',
            sort: 'u',
            descending: true,
            number: 42,
            resource_type: "Patient".into(),
            id: "a".into(),
            order: String::new(),
            values: Vec::new(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        let c = Cursor {
            sort: 'g',
            order: "-date,name".into(),
            values: vec![serde_json::json!(7), serde_json::Value::Null],
            ..c
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(matches!(
            Cursor::decode("%%%"),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            Cursor::decode("e30"),
            Err(StoreError::InvalidCursor)
        ));
    }
}
