//! Literal `Client.secret` values (docs/external-secrets.md, "Literal secrets"):
//! stored only as an argon2id hash
//! inside a private extension of `_secret`, never returned, never logged.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fhirbox_fhir::secret_fields::DATA_ABSENT_REASON_URL;
use serde_json::{json, Map, Value};

/// Private extension that carries the hash in storage; removed from every response.
pub const SECRET_HASH_URL: &str = "urn:fhirbox:secret-hash";

/// Hashes a secret with a fresh random salt (PHC string format).
pub fn hash(secret: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret, &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("could not hash the secret: {e}"))
}

/// Checks a presented secret against a stored PHC hash (constant-time inside argon2).
pub fn verify(secret: &[u8], stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(secret, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The `_secret` element that replaces a literal secret.
pub fn masked_with_hash(phc: &str) -> Value {
    json!({"extension": [
        {"url": DATA_ABSENT_REASON_URL, "valueCode": "masked"},
        {"url": SECRET_HASH_URL, "valueString": phc},
    ]})
}

/// The stored hash in a `_secret` element, if any.
pub fn stored_hash(element: Option<&Value>) -> Option<&str> {
    extensions(element)
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_HASH_URL))
        .and_then(|e| e.get("valueString"))
        .and_then(Value::as_str)
}

use fhirbox_fhir::secret_refs::extensions;
pub use fhirbox_fhir::secret_refs::{is_masked, referenced_name};

/// Removes the hash extension from a `_secret` element held in `fields`.
pub fn strip_hash(fields: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(element)) = fields.get_mut("_secret") else {
        return false;
    };
    let Some(Value::Array(list)) = element.get_mut("extension") else {
        return false;
    };
    let before = list.len();
    list.retain(|e| e.get("url").and_then(Value::as_str) != Some(SECRET_HASH_URL));
    before != list.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_same_secret_and_never_contains_it() {
        let phc = hash(b"super-secret-value").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("super-secret-value"));
        assert!(verify(b"super-secret-value", &phc));
        assert!(!verify(b"super-secret-valuE", &phc));
        assert!(!verify(b"", &phc));
        assert!(!verify(b"x", "not a hash"));
        assert_ne!(hash(b"same").unwrap(), hash(b"same").unwrap(), "salted");
    }

    #[test]
    fn finds_and_strips_the_hash() {
        let mut body = json!({"_secret": masked_with_hash("$argon2id$x")});
        assert_eq!(stored_hash(body.get("_secret")), Some("$argon2id$x"));
        assert!(is_masked(body.get("_secret")));
        assert!(strip_hash(body.as_object_mut().unwrap()));
        assert_eq!(stored_hash(body.get("_secret")), None);
        assert!(is_masked(body.get("_secret")));
    }
}
