//! The PATCH bodies fhirbox applies (FHIR R4 §3.1.0.7): JSON Patch
//! (RFC 6902) and JSON Merge Patch (RFC 7386); how a body's media type
//! chooses between them; and their application within the server's size and
//! depth bounds, so a small patch cannot grow a resource without limit.

use fhirbox_auth::write_rules::Prehashed;
use serde_json::Value;

use crate::error::RestError;

/// Most operations one JSON Patch may carry (a FHIRPath Patch: the same,
/// `fhirpath_patch::MAX_OPERATIONS`).
pub const MAX_PATCH_OPERATIONS: usize = 1000;
/// Deepest nesting a stored resource may have: the JSON parser's own limit,
/// which a patch (by moving objects into each other) could otherwise pass.
pub const MAX_DEPTH: usize = 128;

/// The media types a PATCH body may be sent as. `application/json` carries
/// either form: an array is a JSON Patch, an object a merge patch (the
/// Python client fhirpy sends `save(fields=…)` that way).
pub const MEDIA_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/json",
    "application/fhir+json",
];

/// A PATCH body.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 6902: a list of operations on JSON Pointer paths.
    Json(json_patch::Patch),
    /// RFC 7386: an object merged into the resource; `null` removes a member.
    /// Always a JSON object.
    Merge(Value),
    /// FHIRPath Patch: a `Parameters` resource of operations.
    FhirPath(Vec<crate::fhirpath_patch::Operation>),
}

impl Patch {
    /// Reads `body`, sent as `media_type` (lower case, without parameters;
    /// one of `MEDIA_TYPES`).
    pub fn from_media(media_type: &str, body: Value) -> Result<Patch, RestError> {
        match (media_type, body) {
            ("application/json-patch+json" | "application/json", Value::Array(ops)) => {
                serde_json::from_value(Value::Array(ops))
                    .map(Patch::Json)
                    .map_err(|e| {
                        RestError::bad_request(format!("the body is not a valid JSON Patch: {e}"))
                    })
            }
            ("application/json-patch+json", _) => Err(RestError::bad_request(
                "a JSON Patch (application/json-patch+json) is an array of operations",
            )),
            // A Parameters resource is a FHIRPath Patch (a merge patch
            // could never make a resource a Parameters).
            ("application/fhir+json" | "application/json", Value::Object(o))
                if o.get("resourceType").and_then(Value::as_str) == Some("Parameters") =>
            {
                crate::fhirpath_patch::parse(&Value::Object(o))
                    .map(Patch::FhirPath)
                    .map_err(|e| {
                        RestError::bad_request(format!("the body is not a FHIRPath Patch this server can apply: {e}"))
                    })
            }
            ("application/fhir+json", _) => Err(RestError::bad_request(
                "a PATCH sent as application/fhir+json must be a FHIRPath Patch (a Parameters resource); send a JSON Patch as application/json-patch+json or a merge patch as application/merge-patch+json",
            )),
            (_, object @ Value::Object(_)) => Ok(Patch::Merge(object)),
            (media_type, _) => Err(RestError::bad_request(format!(
                "a merge patch ({media_type}) is a JSON object of the elements to change"
            ))),
        }
    }

    /// The literal client secrets the patch writes, hashed before the write
    /// transaction (a secret that arrives any other way is hashed in the
    /// finalizer).
    pub async fn prehash(&self, resource_type: &str) -> Result<Prehashed, RestError> {
        Ok(match self {
            Patch::Json(ops) => Prehashed::for_patch(resource_type, ops).await?,
            Patch::Merge(object) => Prehashed::for_body(resource_type, object).await?,
            // A secret it writes is hashed in the finalizer.
            Patch::FhirPath(_) => Prehashed::default(),
        })
    }

    /// What the patch is called in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Patch::Json(_) => "JSON Patch",
            Patch::Merge(_) => "merge patch",
            Patch::FhirPath(_) => "FHIRPath Patch",
        }
    }

    /// Refuses a patch too large to apply, before anything is read.
    pub(crate) fn check(&self) -> Result<(), RestError> {
        match self {
            Patch::Json(ops) if ops.0.len() > MAX_PATCH_OPERATIONS => {
                Err(RestError::bad_request(format!(
                    "the JSON Patch has {} operations; at most {MAX_PATCH_OPERATIONS} are accepted",
                    ops.0.len()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Applies the patch to `doc` (whose stored form is `current_size`
    /// bytes), keeping the result within `max_bytes` and `MAX_DEPTH`.
    pub(crate) fn apply(
        &self,
        doc: &mut Value,
        current_size: usize,
        max_bytes: usize,
    ) -> Result<(), String> {
        match self {
            Patch::Json(ops) => apply_bounded(doc, ops, current_size, max_bytes)?,
            Patch::FhirPath(ops) => {
                // Each operation writes at most its value once, and the
                // values are within the body limit: the result is measured
                // once made.
                crate::fhirpath_patch::apply(doc, ops)?;
                if size_within(doc, max_bytes).is_none() {
                    return Err(format!(
                        "the result would be larger than {max_bytes} bytes (BOX_MAX_BODY_BYTES)"
                    ));
                }
            }
            Patch::Merge(object) => {
                // RFC 7386 §2: each member replaces the target's, a `null`
                // member removes it, an object member is merged into the
                // target's object. The result holds at most the document and
                // the patch, both already within the body limit, so it is
                // measured once made.
                json_patch::merge(doc, object);
                if size_within(doc, max_bytes).is_none() {
                    return Err(format!(
                        "the result would be larger than {max_bytes} bytes (BOX_MAX_BODY_BYTES)"
                    ));
                }
            }
        }
        if deeper_than(doc, MAX_DEPTH) {
            return Err(format!(
                "the result would nest deeper than {MAX_DEPTH} levels"
            ));
        }
        Ok(())
    }
}

/// Counts serialized bytes and gives up past a limit, so measuring a value
/// costs no more than the limit.
struct ByteCounter {
    count: usize,
    limit: usize,
}

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.count += buf.len();
        if self.count > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Serialized size of `value`, or `None` when it is over `limit`.
fn size_within(value: &Value, limit: usize) -> Option<usize> {
    let mut counter = ByteCounter { count: 0, limit };
    serde_json::to_writer(&mut counter, value).ok()?;
    Some(counter.count)
}

/// True when `value` nests deeper than `max` (checked without recursion).
fn deeper_than(value: &Value, max: usize) -> bool {
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

/// Applies a JSON Patch one operation at a time, keeping the result within
/// `max_bytes` (a `copy` can double a document per operation); `apply`
/// checks the depth (a `move` can nest it one level deeper per operation).
fn apply_bounded(
    doc: &mut Value,
    patch: &json_patch::Patch,
    current_size: usize,
    max_bytes: usize,
) -> Result<(), String> {
    use json_patch::PatchOperation;
    let mut size = current_size;
    for (i, op) in patch.0.iter().enumerate() {
        let added = match op {
            PatchOperation::Add(json_patch::AddOperation { value, .. })
            | PatchOperation::Replace(json_patch::ReplaceOperation { value, .. }) => {
                size_within(value, max_bytes)
            }
            PatchOperation::Copy(copy) => doc
                .pointer(copy.from.as_str())
                .map_or(Some(0), |v| size_within(v, max_bytes)),
            _ => Some(0),
        };
        size = added
            .map(|a| size.saturating_add(a))
            .filter(|s| *s <= max_bytes)
            .ok_or_else(|| {
                format!("operation {i} would make the resource larger than {max_bytes} bytes (BOX_MAX_BODY_BYTES)")
            })?;
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(text: &str) -> Patch {
        Patch::Json(serde_json::from_str(text).unwrap())
    }

    #[test]
    fn patches_cannot_grow_without_bound() {
        let mut doc = json!({"resourceType": "Patient", "name": [{"family": "x"}]});
        let size = doc.to_string().len();
        // Each copy of the whole document to a new key doubles it.
        let doubling: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"op":"copy","from":"","path":"/x{i}"}}"#))
            .collect();
        let doubling = format!("[{}]", doubling.join(","));
        let e = ops(&doubling).apply(&mut doc, size, 64 * 1024).unwrap_err();
        assert!(e.contains("larger than 65536 bytes"), "{e}");
        let mut nesting = vec![r#"{"op":"add","path":"/n","value":{}}"#.to_owned()];
        for _ in 0..200 {
            nesting.push(r#"{"op":"add","path":"/w","value":{}}"#.into());
            nesting.push(r#"{"op":"move","from":"/n","path":"/w/n"}"#.into());
            nesting.push(r#"{"op":"move","from":"/w","path":"/n"}"#.into());
        }
        let mut doc = json!({"resourceType": "Patient"});
        let e = ops(&format!("[{}]", nesting.join(",")))
            .apply(&mut doc, 30, 1 << 20)
            .unwrap_err();
        assert!(e.contains("deeper than 128"), "{e}");
        // An ordinary patch passes.
        let mut doc = json!({"resourceType": "Patient"});
        ops(r#"[{"op":"add","path":"/active","value":true},{"op":"copy","from":"/active","path":"/x"}]"#)
            .apply(&mut doc, 30, 1024)
            .unwrap();
        assert_eq!(doc["x"], true);
        assert!(
            !deeper_than(&json!({"a": [{"b": 1}]}), 3) && deeper_than(&json!({"a": [{"b": 1}]}), 2)
        );
    }

    #[test]
    fn a_merge_patch_replaces_removes_and_merges_members() {
        let mut doc = json!({"resourceType": "Patient", "id": "a", "active": true,
            "gender": "male", "meta": {"tag": [{"code": "x"}], "source": "s"}});
        let patch = Patch::from_media(
            "application/merge-patch+json",
            json!({"gender": "female", "active": null, "meta": {"source": "t"},
                   "name": [{"family": "Doe"}]}),
        )
        .unwrap();
        patch.apply(&mut doc, 100, 1024).unwrap();
        assert_eq!(
            doc,
            json!({"resourceType": "Patient", "id": "a", "gender": "female",
                "meta": {"tag": [{"code": "x"}], "source": "t"}, "name": [{"family": "Doe"}]})
        );
        // The result may not outgrow the body limit.
        let big = json!({"text": {"div": "x".repeat(2000)}});
        let e = Patch::from_media("application/merge-patch+json", big)
            .unwrap()
            .apply(&mut doc, 100, 1024)
            .unwrap_err();
        assert!(e.contains("larger than 1024 bytes"), "{e}");
        // Near the limit, a patch that removes members still applies.
        let mut full = json!({"resourceType": "Patient", "text": {"div": "x".repeat(900)}});
        Patch::from_media("application/merge-patch+json", json!({"text": null}))
            .unwrap()
            .apply(&mut full, 930, 1000)
            .unwrap();
        assert_eq!(full, json!({"resourceType": "Patient"}));
    }

    #[test]
    fn the_media_type_and_shape_choose_the_form() {
        let json_patch = json!([{"op": "remove", "path": "/active"}]);
        assert!(matches!(
            Patch::from_media("application/json-patch+json", json_patch.clone()),
            Ok(Patch::Json(_))
        ));
        assert!(matches!(
            Patch::from_media("application/json", json_patch),
            Ok(Patch::Json(_))
        ));
        assert!(matches!(
            Patch::from_media("application/json", json!({"active": false})),
            Ok(Patch::Merge(_))
        ));
        for (media, body, says) in [
            (
                "application/json-patch+json",
                json!({"active": false}),
                "array of operations",
            ),
            ("application/merge-patch+json", json!([]), "JSON object"),
            ("application/json", json!("x"), "JSON object"),
            (
                "application/json",
                json!([{"op": "jump"}]),
                "not a valid JSON Patch",
            ),
            (
                "application/fhir+json",
                json!({"resourceType": "Parameters"}),
                "FHIRPath Patch",
            ),
            (
                "application/fhir+json",
                json!({"resourceType": "Patient"}),
                "Parameters",
            ),
        ] {
            let e = Patch::from_media(media, body).unwrap_err();
            assert_eq!(e.kind, crate::ErrorKind::BadRequest);
            assert!(e.message.contains(says), "{media}: {}", e.message);
        }
    }

    #[test]
    fn json_patches_have_an_operation_limit() {
        let many: Vec<Value> = (0..=MAX_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/id", "value": "a"}))
            .collect();
        let e = Patch::from_media("application/json-patch+json", Value::Array(many))
            .unwrap()
            .check()
            .unwrap_err();
        assert!(e.message.contains("at most 1000"), "{}", e.message);
    }
}
