//! The write rules of the auth types, applied to every stored body inside
//! the write transaction: a literal `Client.secret` becomes a salted hash
//! (computed beforehand, see [`Prehashed`]), a masked secret sent back keeps
//! the stored hash, a planted hash is dropped, and Client and AccessPolicy
//! shapes are checked so the authenticator can trust what it loads
//! (docs/external-secrets.md, "Literal secrets"; docs/security.md).

use std::collections::HashMap;
use std::sync::Arc;

use fhirbox_store::{Refusal, StoredResource};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clients::ClientRecord;
use crate::policy::Policy;
use crate::secret_hash;

/// Hashes of the literal `Client.secret` values a write carries, computed
/// before the write transaction on the blocking pool (keyed by the SHA-256
/// of the secret), so the KDF never runs while the store holds its writer —
/// SQLite's only one — nor again on a retry.
#[derive(Clone, Default)]
pub struct Prehashed(Arc<HashMap<[u8; 32], String>>);

impl Prehashed {
    fn key(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }

    async fn of(secrets: Vec<String>) -> Result<Prehashed, Refusal> {
        if secrets.is_empty() {
            return Ok(Prehashed::default());
        }
        let hashed = tokio::task::spawn_blocking(move || {
            secrets
                .into_iter()
                .map(|secret| Ok((Self::key(&secret), secret_hash::hash(secret.as_bytes())?)))
                .collect::<Result<HashMap<_, _>, String>>()
        })
        .await
        .map_err(|e| Refusal::internal(format!("hashing a client secret failed: {e}")))?
        .map_err(Refusal::internal)?;
        Ok(Prehashed(Arc::new(hashed)))
    }

    /// For a create or update body.
    pub async fn for_body(resource_type: &str, body: &Value) -> Result<Prehashed, Refusal> {
        let literal = (resource_type == "Client")
            .then(|| body.get("secret").and_then(Value::as_str))
            .flatten()
            .filter(|s| !s.is_empty());
        Self::of(literal.map(str::to_owned).into_iter().collect()).await
    }

    /// For a JSON Patch: the values it writes to `/secret` directly (a
    /// secret that arrives any other way is hashed in the finalizer).
    pub async fn for_patch(
        resource_type: &str,
        patch: &json_patch::Patch,
    ) -> Result<Prehashed, Refusal> {
        use json_patch::PatchOperation;
        if resource_type != "Client" {
            return Ok(Prehashed::default());
        }
        let mut secrets = Vec::new();
        for op in &patch.0 {
            let (path, value) = match op {
                PatchOperation::Add(json_patch::AddOperation { path, value })
                | PatchOperation::Replace(json_patch::ReplaceOperation { path, value }) => {
                    (path.as_str(), value)
                }
                _ => continue,
            };
            let secret = match path {
                "/secret" => value.as_str(),
                "" => value.get("secret").and_then(Value::as_str),
                _ => None,
            };
            if let Some(secret) = secret.filter(|s| !s.is_empty()) {
                secrets.push(secret.to_owned());
            }
        }
        Self::of(secrets).await
    }

    pub fn get(&self, secret: &str) -> Option<&str> {
        self.0.get(&Self::key(secret)).map(String::as_str)
    }
}

fn refuse(message: String, at: &str) -> Refusal {
    Refusal::invalid(message).at(at)
}

pub fn finalize_client(
    mut body: Value,
    current: Option<&StoredResource>,
    prehashed: &Prehashed,
) -> Result<Value, Refusal> {
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
            let phc = match prehashed.get(&secret) {
                Some(phc) => phc.to_owned(),
                // Only a secret that reached `secret` another way (a patch
                // `copy` or `move`) is hashed here, inside the transaction.
                None => secret_hash::hash(secret.as_bytes()).map_err(Refusal::internal)?,
            };
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
    let record =
        ClientRecord::from_body(&body, 0).map_err(|e| refuse(format!("Client: {e}"), "Client"))?;
    if let Err(e) = record.code_flow {
        return Err(refuse(
            format!("Client: {e}"),
            "Client.auth.authorization_code",
        ));
    }
    Ok(body)
}

/// A TokenIntrospector must be loadable: one key source, consistent keys,
/// `jwks_uri` with `jwt.iss` (docs/tokens.md).
pub fn finalize_introspector(body: Value) -> Result<Value, Refusal> {
    crate::external::introspector::Introspector::parse(&body)
        .map_err(|e| refuse(format!("TokenIntrospector: {e}"), "TokenIntrospector"))?;
    Ok(body)
}

/// An IdentityProvider must be usable for sign-in: its endpoints, its
/// client's one way of authenticating, literal keys of the right kind
/// (docs/sign-in.md).
pub fn finalize_identity_provider(body: Value) -> Result<Value, Refusal> {
    crate::identity_provider::IdentityProvider::parse(&body)
        .map_err(|e| refuse(format!("IdentityProvider: {e}"), "IdentityProvider"))?;
    Ok(body)
}

pub fn finalize_policy(body: Value, _current: Option<&StoredResource>) -> Result<Value, Refusal> {
    Policy::parse(&body).map_err(|e| refuse(format!("AccessPolicy: {e}"), "AccessPolicy"))?;
    Ok(body)
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
            &Prehashed::default(),
        )
        .unwrap();
        assert!(out.get("secret").is_none());
        let text = out.to_string();
        assert!(!text.contains("s3cr3t-value"));
        assert!(secret_hash::verify(
            b"s3cr3t-value",
            secret_hash::stored_hash(out.get("_secret")).unwrap()
        ));
        // What a read shows: the hash stripped, the masked marker kept.
        let mut public = out.clone();
        secret_hash::strip_hash(public.as_object_mut().unwrap());
        let public = public.to_string();
        assert!(!public.contains("argon2"), "{public}");
        assert!(public.contains("masked"));
    }

    #[tokio::test]
    async fn a_prehashed_secret_is_used_as_it_is() {
        let body = json!({"resourceType": "Client", "id": "c", "secret": "pre-hashed-value"});
        let prehashed = Prehashed::for_body("Client", &body).await.unwrap();
        let phc = prehashed.get("pre-hashed-value").unwrap().to_owned();
        let out = finalize_client(body, None, &prehashed).unwrap();
        assert_eq!(
            secret_hash::stored_hash(out.get("_secret")),
            Some(phc.as_str())
        );
        assert!(secret_hash::verify(b"pre-hashed-value", &phc));
        let patch: json_patch::Patch = serde_json::from_value(
            json!([{"op": "replace", "path": "/secret", "value": "from-a-patch"}]),
        )
        .unwrap();
        let from_patch = Prehashed::for_patch("Client", &patch).await.unwrap();
        assert!(from_patch.get("from-a-patch").is_some());
        assert!(Prehashed::for_patch("Patient", &patch)
            .await
            .unwrap()
            .get("from-a-patch")
            .is_none());
    }

    #[test]
    fn masked_round_trip_keeps_the_hash_and_planted_hashes_are_dropped() {
        let first = finalize_client(
            json!({"id": "c", "secret": "keep-me"}),
            None,
            &Prehashed::default(),
        )
        .unwrap();
        let current = stored(&first);
        let mut read_back = first.clone();
        secret_hash::strip_hash(read_back.as_object_mut().unwrap());
        let second = finalize_client(read_back, Some(&current), &Prehashed::default()).unwrap();
        assert!(secret_hash::verify(
            b"keep-me",
            secret_hash::stored_hash(second.get("_secret")).unwrap()
        ));
        let planted = finalize_client(json!({"id": "c", "_secret": {"extension": [{"url": secret_hash::SECRET_HASH_URL, "valueString": "x"}]}}), None, &Prehashed::default()).unwrap();
        assert_eq!(secret_hash::stored_hash(planted.get("_secret")), None);
    }

    #[test]
    fn refuses_literal_plus_reference_and_bad_shapes() {
        let both = json!({"id": "c", "secret": "x", "_secret": {"extension": [
            {"url": fhirbox_fhir::secret_fields::SECRET_REFERENCE_URL, "valueString": "client-secret"}]}});
        assert!(finalize_client(both, None, &Prehashed::default()).is_err());
        assert!(
            finalize_client(json!({"id": "c", "secret": 5}), None, &Prehashed::default()).is_err()
        );
        assert!(finalize_client(
            json!({"id": "c", "grant_types": "basic"}),
            None,
            &Prehashed::default()
        )
        .is_err());
        assert!(finalize_policy(json!({"engine": "magic"}), None).is_err());
    }
}
