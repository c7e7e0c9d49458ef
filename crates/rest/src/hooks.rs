//! Per-type rules applied to every stored body, inside the write transaction
//! (store `Finalize`): literal Client secrets become salted hashes
//! (docs/external-secrets.md, "Literal secrets"),
//! masked literals sent back are kept, Client and AccessPolicy shapes are
//! checked so the authenticator can trust what it loads, and
//! AidboxTopicDestination shapes so delivery can (docs/subscriptions.md). And the other way:
//! the one view of a stored body a client may see (`public_body`).

use std::sync::Arc;

use fhirbox_secrets::SecretResolver;
use fhirbox_store::{Finalize, Refusal, StoredResource};
use serde_json::Value;

use fhirbox_fhir::secret_fields::{field_slots, fields_of, DATA_ABSENT_REASON_URL};

use fhirbox_auth::secret_hash;
pub use fhirbox_auth::write_rules::{self, Prehashed};

/// The finalizer for a write of `resource_type/id`: the secret-reference
/// rules (docs/external-secrets.md, "Rules on write") for every type, then
/// the type's own rules.
pub fn finalizer(
    resource_type: &str,
    id: &str,
    vault: Option<&SecretResolver>,
    prehashed: Prehashed,
) -> Finalize {
    let resource_type = resource_type.to_owned();
    let id = id.to_owned();
    let vault = vault.cloned();
    Arc::new(move |body: Value, current: Option<&StoredResource>| {
        // A conditional write finds its resource, and so its id, in the store.
        let id = current.map_or(id.as_str(), |c| c.id.as_str());
        crate::references::check_references(&resource_type, id, &body, vault.as_ref())
            .map_err(Refusal::from)?;
        match resource_type.as_str() {
            "Client" => write_rules::finalize_client(body, current, &prehashed),
            "AccessPolicy" => write_rules::finalize_policy(body, current),
            "TokenIntrospector" => carry_over_literals("TokenIntrospector", body, current)
                .and_then(write_rules::finalize_introspector),
            "IdentityProvider" => carry_over_literals("IdentityProvider", body, current)
                .and_then(write_rules::finalize_identity_provider),
            "AidboxSubscriptionTopic" => {
                carry_over_literals("AidboxSubscriptionTopic", body, current)
                    .and_then(fhirbox_subscriptions::topic::finalize)
            }
            "AidboxTopicDestination" => {
                carry_over_literals("AidboxTopicDestination", body, current)
                    .and_then(fhirbox_subscriptions::destination::finalize)
            }
            other => carry_over_literals(other, body, current),
        }
    })
}

fn refuse(message: String, at: &str) -> Refusal {
    Refusal::invalid(message).at(at)
}

/// The element a literal secret value is shown as (docs/external-secrets.md,
/// "Literal secrets").
fn masked_element() -> Value {
    serde_json::json!({"extension": [
        {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"}
    ]})
}

/// Hides server-held secret material in a body: the private hash of a
/// literal `Client.secret`, and the literal value of every other
/// secret-capable field, which is replaced by the masked extension
/// (docs/external-secrets.md, "Literal secrets").
/// Returns true when something was hidden.
pub fn mask_secrets(resource_type: &str, body: &mut Value) -> bool {
    let mut changed = false;
    if resource_type == "Client" {
        if let Some(fields) = body.as_object_mut() {
            changed |= secret_hash::strip_hash(fields);
        }
    }
    for slot in field_slots(resource_type, body) {
        if !slot.field.masks_literals {
            continue;
        }
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
/// send it (PATCH works on the masked view for the same reason). The value
/// goes back only to the same slot — same field, same key `kid` (or, without
/// one, an unchanged key array), same parameter — and only when that slot
/// is otherwise unchanged; a masked slot that cannot be matched so is a 422
/// rather than a guess that could revive a removed key under another entry.
fn carry_over_literals(
    resource_type: &str,
    mut body: Value,
    current: Option<&StoredResource>,
) -> Result<Value, Refusal> {
    let slots = field_slots(resource_type, &body);
    if slots.is_empty() {
        return Ok(body);
    }
    let Some(previous) = current.and_then(|c| serde_json::from_str::<Value>(&c.body).ok()) else {
        return Ok(body);
    };
    let previous_slots = field_slots(resource_type, &previous);
    let mut shown_previous = previous.clone();
    mask_secrets(resource_type, &mut shown_previous);
    let mut shown_new = body.clone();
    mask_secrets(resource_type, &mut shown_new);
    for slot in &slots {
        let Some(parent) = body.pointer(&slot.parent).and_then(Value::as_object) else {
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
        let same: Vec<_> = previous_slots
            .iter()
            .filter(|p| p.ident == slot.ident)
            .collect();
        let [kept_slot] = same.as_slice() else {
            if same.is_empty() {
                continue;
            }
            return Err(refuse(
                format!("{resource_type}.{}: several stored entries match this masked value, so it cannot be kept; send the value again or a secret reference", slot.field.display),
                &format!("{resource_type}.{}", slot.field.display),
            ));
        };
        let unchanged = match (&slot.context, &kept_slot.context) {
            (Some(now), Some(before)) => shown_new.pointer(now) == shown_previous.pointer(before),
            _ => true,
        };
        let duplicated = slots.iter().filter(|s| s.ident == slot.ident).count() > 1;
        if !unchanged || duplicated {
            return Err(refuse(
                format!("{resource_type}.{}: the masked value's entry changed (or repeats), so the stored value cannot be matched to it; send the value again or a secret reference", slot.field.display),
                &format!("{resource_type}.{}", slot.field.display),
            ));
        }
        let kept = previous
            .pointer(&kept_slot.parent)
            .and_then(|o| o.get(kept_slot.key))
            .filter(|v| !v.is_null())
            .cloned();
        if let Some(value) = kept {
            if let Some(parent) = body
                .pointer_mut(&slot.parent)
                .and_then(Value::as_object_mut)
            {
                parent.insert(slot.key.to_owned(), value);
                parent.remove(&element_key);
            }
        }
    }
    Ok(body)
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

    fn stored_as(resource_type: &str, body: &Value) -> StoredResource {
        StoredResource {
            resource_type: resource_type.into(),
            ..stored(body)
        }
    }

    #[test]
    fn masked_keys_go_back_to_their_own_entry_or_are_refused() {
        let before = json!({"resourceType": "TokenIntrospector", "jwt": {"keys": [
            {"kid": "a", "k": "SECRET-A"}, {"kid": "b", "k": "SECRET-B"}]}});
        let current = stored_as("TokenIntrospector", &before);
        let mut shown = before.clone();
        assert!(mask_secrets("TokenIntrospector", &mut shown));
        assert!(!shown.to_string().contains("SECRET"));
        // Revoking key a keeps b's value with b, never a's.
        let mut revoked = shown.clone();
        revoked["jwt"]["keys"].as_array_mut().unwrap().remove(0);
        let kept = carry_over_literals("TokenIntrospector", revoked, Some(&current)).unwrap();
        assert_eq!(kept["jwt"]["keys"], json!([{"kid": "b", "k": "SECRET-B"}]));
        // Unchanged: both come back.
        let kept = carry_over_literals("TokenIntrospector", shown.clone(), Some(&current)).unwrap();
        assert_eq!(kept, before);
        // An entry changed beside its masked value cannot be matched.
        let mut changed = shown.clone();
        changed["jwt"]["keys"][1]["alg"] = json!("HS512");
        assert!(carry_over_literals("TokenIntrospector", changed, Some(&current)).is_err());
        // Without kids, only an unchanged key array is matched by position.
        let before = json!({"jwt": {"keys": [{"k": "SECRET-A"}, {"k": "SECRET-B"}]}});
        let current = stored_as("TokenIntrospector", &before);
        let mut shown = before.clone();
        mask_secrets("TokenIntrospector", &mut shown);
        assert_eq!(
            carry_over_literals("TokenIntrospector", shown.clone(), Some(&current)).unwrap(),
            before
        );
        shown["jwt"]["keys"].as_array_mut().unwrap().remove(0);
        assert!(carry_over_literals("TokenIntrospector", shown, Some(&current)).is_err());
        // A parameter repeated cannot be matched either.
        let before = json!({"parameter": [{"name": "saslJaasConfig", "valueString": "JAAS"}]});
        let current = stored_as("AidboxTopicDestination", &before);
        let mut shown = before.clone();
        mask_secrets("AidboxTopicDestination", &mut shown);
        let twice =
            json!({"parameter": [shown["parameter"][0].clone(), shown["parameter"][0].clone()]});
        assert!(carry_over_literals("AidboxTopicDestination", twice, Some(&current)).is_err());
        assert_eq!(
            carry_over_literals("AidboxTopicDestination", shown, Some(&current)).unwrap(),
            before
        );
    }
}
