//! Writing result Bundles (searchset, history, batch/transaction responses).
//! Stored resource bodies are spliced in as they are, never re-serialised.

use serde_json::{json, Value};

/// A Bundle being written as JSON text.
pub struct BundleWriter {
    out: String,
    entries: usize,
}

impl BundleWriter {
    /// Starts a bundle of `bundle_type` with optional total and links (relation, url).
    pub fn new(bundle_type: &str, total: Option<i64>, links: &[(&str, String)]) -> BundleWriter {
        let mut head = json!({
            "resourceType": "Bundle",
            "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"lastUpdated": fhirbox_store::instant::format_micros(fhirbox_store::instant::now_micros())},
            "type": bundle_type,
        });
        if let Some(total) = total {
            head["total"] = json!(total);
        }
        if !links.is_empty() {
            head["link"] = Value::Array(
                links
                    .iter()
                    .map(|(relation, url)| json!({"relation": relation, "url": url}))
                    .collect(),
            );
        }
        let mut out = head.to_string();
        out.pop(); // reopen the object to append entries
        BundleWriter { out, entries: 0 }
    }

    /// Appends an entry: `fields` (fullUrl, search, request, response…) plus an
    /// optional stored resource body inserted verbatim as `resource`.
    pub fn entry(&mut self, fields: Value, resource: Option<&str>) {
        // FHIR JSON forbids empty arrays, so `entry` opens with the first entry.
        self.out.push_str(if self.entries == 0 {
            ",\"entry\":["
        } else {
            ","
        });
        self.entries += 1;
        let mut text = fields.to_string();
        if let Some(body) = resource.filter(|b| !b.is_empty()) {
            text.pop();
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str("\"resource\":");
            text.push_str(body);
            text.push('}');
        }
        self.out.push_str(&text);
    }

    pub fn finish(mut self) -> String {
        self.out
            .push_str(if self.entries == 0 { "}" } else { "]}" });
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_valid_json_with_verbatim_resources() {
        let mut b = BundleWriter::new(
            "searchset",
            Some(2),
            &[("self", "http://x/fhir/Patient".into())],
        );
        b.entry(
            json!({"fullUrl": "http://x/fhir/Patient/a"}),
            Some(r#"{"resourceType":"Patient","id":"a"}"#),
        );
        b.entry(json!({}), Some(r#"{"resourceType":"Patient","id":"b"}"#));
        b.entry(json!({"response": {"status": "204 No Content"}}), None);
        let v: Value = serde_json::from_str(&b.finish()).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["type"], "searchset");
        assert_eq!(v["entry"][0]["resource"]["id"], "a");
        assert_eq!(v["entry"][1]["resource"]["id"], "b");
        assert!(v["entry"][2].get("resource").is_none());
        assert_eq!(v["link"][0]["relation"], "self");
    }

    #[test]
    fn empty_bundle_has_no_entry_element() {
        let v: Value =
            serde_json::from_str(&BundleWriter::new("history", None, &[]).finish()).unwrap();
        assert!(v.get("entry").is_none());
        assert!(v.get("total").is_none());
    }
}
