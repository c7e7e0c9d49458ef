//! Per-type rules applied to every stored body, inside the write transaction
//! (store `Finalize`): literal Client secrets become salted hashes (SPEC 1.3),
//! masked literals sent back are kept, Client and AccessPolicy shapes are
//! checked so the authenticator can trust what it loads. And the other way:
//! the one view of a stored body a client may see (`public_body`).

use std::sync::Arc;

use fhirbox_secrets::SecretResolver;
use fhirbox_store::{BoxError, Finalize, StoredResource};
use serde_json::Value;

use fhirbox_fhir::secret_fields::{field_slots, fields_of, DATA_ABSENT_REASON_URL};

use crate::auth::clients::ClientRecord;
use crate::auth::policy::Policy;
use crate::auth::secret_hash;
use crate::error::ApiError;

/// The finalizer for a write of `resource_type/id`: the secret-reference
/// rules of SPEC 1.2 for every type, then the type's own rules.
pub fn finalizer(resource_type: &str, id: &str, vault: Option<&SecretResolver>) -> Finalize {
    let resource_type = resource_type.to_owned();
    let id = id.to_owned();
    let vault = vault.cloned();
    Arc::new(move |body: Value, current: Option<&StoredResource>| {
        crate::vault::check_references(&resource_type, &id, &body, vault.as_ref())
            .map_err(|e| Box::new(e) as BoxError)?;
        match resource_type.as_str() {
            "Client" => finalize_client(body, current),
            "AccessPolicy" => finalize_policy(body, current),
            other => Ok(carry_over_literals(other, body, current)),
        }
    })
}

fn refuse(message: String, at: &str) -> BoxError {
    Box::new(ApiError::unprocessable(message).at(at))
}

fn finalize_client(mut body: Value, current: Option<&StoredResource>) -> Result<Value, BoxError> {
    let Some(fields) = body.as_object_mut() else {
        return Ok(body);
    };
    // A client may never plant a hash of its own choosing.
    secret_hash::strip_hash(fields);
    match fields.remove("secret") {
        Some(Value::String(secret)) => {
            if secret_hash::referenced_name(fields.get("_secret")).is_some() {
                return Err(refuse(
                    "Client.secret has both a literal value and a secret reference in _secret; keep one of them".into(),
                    "Client.secret",
                ));
            }
            if secret.is_empty() {
                return Err(refuse(
                    "Client.secret must not be empty".into(),
                    "Client.secret",
                ));
            }
            let phc = secret_hash::hash(secret.as_bytes())
                .map_err(|e| Box::new(ApiError::internal(&e)) as BoxError)?;
            fields.insert("_secret".into(), secret_hash::masked_with_hash(&phc));
        }
        Some(_) => {
            return Err(refuse(
                "Client.secret must be a string".into(),
                "Client.secret",
            ))
        }
        None => {
            // The masked form a read returned, sent back unchanged: keep the stored hash.
            let element = fields.get("_secret");
            if secret_hash::is_masked(element) && secret_hash::referenced_name(element).is_none() {
                let previous = current.and_then(|c| serde_json::from_str::<Value>(&c.body).ok());
                if let Some(phc) = previous
                    .as_ref()
                    .and_then(|p| secret_hash::stored_hash(p.get("_secret")))
                {
                    fields.insert("_secret".into(), secret_hash::masked_with_hash(phc));
                }
            }
        }
    }
    ClientRecord::from_body(&body, 0).map_err(|e| refuse(format!("Client: {e}"), "Client"))?;
    Ok(body)
}

fn finalize_policy(body: Value, _current: Option<&StoredResource>) -> Result<Value, BoxError> {
    Policy::parse(&body).map_err(|e| refuse(format!("AccessPolicy: {e}"), "AccessPolicy"))?;
    Ok(body)
}

/// The element a literal secret value is shown as (SPEC 1.3).
fn masked_element() -> Value {
    serde_json::json!({"extension": [
        {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"}
    ]})
}

/// Hides server-held secret material in a body: the private hash of a
/// literal `Client.secret`, and the literal value of every other
/// secret-capable field, which is replaced by the masked extension (SPEC 1.3).
/// Returns true when something was hidden.
pub fn mask_secrets(resource_type: &str, body: &mut Value) -> bool {
    let mut changed = false;
    if resource_type == "Client" {
        if let Some(fields) = body.as_object_mut() {
            changed |= secret_hash::strip_hash(fields);
        }
    }
    for slot in field_slots(resource_type, body) {
        let Some(parent) = body
            .pointer_mut(&slot.parent)
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if parent.get(slot.key).is_some_and(|v| !v.is_null()) {
            parent.remove(slot.key);
            parent.insert(format!("_{}", slot.key), masked_element());
            changed = true;
        }
    }
    changed
}

/// A literal secret value a client sent back masked, as a read showed it,
/// is kept from the current version: the client never saw it, so it cannot
/// send it (PATCH works on the masked view for the same reason).
fn carry_over_literals(
    resource_type: &str,
    mut body: Value,
    current: Option<&StoredResource>,
) -> Value {
    let slots = field_slots(resource_type, &body);
    if slots.is_empty() {
        return body;
    }
    let Some(previous) = current.and_then(|c| serde_json::from_str::<Value>(&c.body).ok()) else {
        return body;
    };
    let previous_slots = field_slots(resource_type, &previous);
    for slot in slots {
        let Some(parent) = body
            .pointer_mut(&slot.parent)
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let element_key = format!("_{}", slot.key);
        let element = parent.get(&element_key);
        if parent.get(slot.key).is_some_and(|v| !v.is_null())
            || !secret_hash::is_masked(element)
            || secret_hash::referenced_name(element).is_some()
        {
            continue;
        }
        let kept = previous_slots
            .iter()
            .find(|p| p.ident == slot.ident)
            .and_then(|p| previous.pointer(&p.parent).and_then(|o| o.get(p.key)))
            .filter(|v| !v.is_null());
        if let Some(value) = kept {
            parent.insert(slot.key.to_owned(), value.clone());
            parent.remove(&element_key);
        }
    }
    body
}

/// The body a client may see (`mask_secrets` applied); borrowed when there
/// is nothing to hide.
pub fn public_body(stored: &StoredResource) -> std::borrow::Cow<'_, str> {
    let rt = stored.resource_type.as_str();
    if fields_of(rt).next().is_none()
        || (rt == "Client" && !stored.body.contains(secret_hash::SECRET_HASH_URL))
    {
        return std::borrow::Cow::Borrowed(&stored.body);
    }
    match serde_json::from_str::<Value>(&stored.body) {
        Ok(mut v) => {
            if mask_secrets(rt, &mut v) {
                std::borrow::Cow::Owned(v.to_string())
            } else {
                std::borrow::Cow::Borrowed(&stored.body)
            }
        }
        // A body we cannot parse is not shown at all rather than shown unmasked.
        Err(_) => std::borrow::Cow::Borrowed("{}"),
    }
}

/// The stored body as a client sees it, parsed: what a PATCH applies to.
pub fn public_value(stored: &StoredResource) -> Result<Value, serde_json::Error> {
    let mut v: Value = serde_json::from_str(&stored.body)?;
    mask_secrets(&stored.resource_type, &mut v);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(body: &Value) -> StoredResource {
        StoredResource {
            resource_type: "Client".into(),
            id: "c".into(),
            version_id: 1,
            last_updated: 0,
            deleted: false,
            body: body.to_string(),
        }
    }

    #[test]
    fn literal_secret_becomes_a_hash_that_is_never_shown() {
        let out = finalize_client(
            json!({"resourceType": "Client", "id": "c", "secret": "s3cr3t-value"}),
            None,
        )
        .unwrap();
        assert!(out.get("secret").is_none());
        let text = out.to_string();
        assert!(!text.contains("s3cr3t-value"));
        assert!(secret_hash::verify(
            b"s3cr3t-value",
            secret_hash::stored_hash(out.get("_secret")).unwrap()
        ));
        let public = public_body(&stored(&out)).into_owned();
        assert!(!public.contains("argon2"), "{public}");
        assert!(public.contains("masked"));
    }

    #[test]
    fn masked_round_trip_keeps_the_hash_and_planted_hashes_are_dropped() {
        let first = finalize_client(json!({"id": "c", "secret": "keep-me"}), None).unwrap();
        let current = stored(&first);
        let read_back: Value = serde_json::from_str(&public_body(&current)).unwrap();
        let second = finalize_client(read_back, Some(&current)).unwrap();
        assert!(secret_hash::verify(
            b"keep-me",
            secret_hash::stored_hash(second.get("_secret")).unwrap()
        ));
        let planted = finalize_client(json!({"id": "c", "_secret": {"extension": [{"url": secret_hash::SECRET_HASH_URL, "valueString": "x"}]}}), None).unwrap();
        assert_eq!(secret_hash::stored_hash(planted.get("_secret")), None);
    }

    #[test]
    fn refuses_literal_plus_reference_and_bad_shapes() {
        let both = json!({"id": "c", "secret": "x", "_secret": {"extension": [
            {"url": fhirbox_fhir::secret_fields::SECRET_REFERENCE_URL, "valueString": "client-secret"}]}});
        assert!(finalize_client(both, None).is_err());
        assert!(finalize_client(json!({"id": "c", "secret": 5}), None).is_err());
        assert!(finalize_client(json!({"id": "c", "grant_types": "basic"}), None).is_err());
        assert!(finalize_policy(json!({"engine": "magic"}), None).is_err());
    }
}
