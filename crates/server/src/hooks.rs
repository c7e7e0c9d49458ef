//! Per-type rules applied to every stored body, inside the write transaction
//! (store `Finalize`): literal Client secrets become salted hashes (SPEC 1.3),
//! Client and AccessPolicy shapes are checked so the authenticator can trust
//! what it loads.

use std::sync::Arc;

use fhirbox_secrets::SecretResolver;
use fhirbox_store::{BoxError, Finalize, StoredResource};
use serde_json::Value;

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
            _ => Ok(body),
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

/// The body a client may see: the stored body minus the private hash extension.
pub fn public_body(stored: &StoredResource) -> std::borrow::Cow<'_, str> {
    if stored.resource_type != "Client" || !stored.body.contains(secret_hash::SECRET_HASH_URL) {
        return std::borrow::Cow::Borrowed(&stored.body);
    }
    match serde_json::from_str::<Value>(&stored.body) {
        Ok(mut v) => {
            if let Some(fields) = v.as_object_mut() {
                secret_hash::strip_hash(fields);
            }
            std::borrow::Cow::Owned(v.to_string())
        }
        // A body we cannot parse is not shown at all rather than shown with its hash.
        Err(_) => std::borrow::Cow::Borrowed("{}"),
    }
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
