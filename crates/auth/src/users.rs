//! `User` resources: the people who sign in through an IdentityProvider
//! (docs/sign-in.md, "Users"). One User per (provider `system`, `sub`),
//! with an id derived from that pair, so a second sign-in finds the first
//! one's User and two at once write the same resource.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A User as the authorizer sees it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub version: i64,
    /// False when `active` is false or `inactive` is true: no sign-in, and
    /// every token of this user is refused.
    pub active: bool,
    /// The stored body (with `id` and `resourceType`), which policies see as `user`.
    pub body: Value,
}

impl UserRecord {
    pub fn from_body(body: Value, version: i64) -> UserRecord {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let active = body.get("active") != Some(&Value::Bool(false))
            && body.get("inactive") != Some(&Value::Bool(true));
        UserRecord {
            id,
            version,
            active,
            body,
        }
    }
}

/// The id of the User a provider's `sub` signs in as: a digest of the pair,
/// so it is the same on every instance and reveals neither.
pub fn user_id(system: &str, sub: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [system, sub] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    format!("u-{hex}")
}

/// Claims that change at every sign-in or only describe the token itself:
/// kept out of `User.data`, so signing in again does not rewrite the User.
const TOKEN_MECHANICS: &[&str] = &[
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "auth_time",
    "jti",
    "sid",
    "aud",
    "azp",
];

/// The User body after a sign-in with `claims`, built on `existing` (whose
/// other elements are kept); `None` when nothing would change.
pub fn signed_in_body(
    existing: Option<&Value>,
    id: &str,
    system: &str,
    sub: &str,
    claims: &Map<String, Value>,
) -> Option<Value> {
    let mut body = existing
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    body.remove("meta");
    let before = Value::Object(body.clone());
    body.insert("resourceType".into(), Value::String("User".into()));
    body.insert("id".into(), Value::String(id.to_owned()));
    let mut identifiers: Vec<Value> = match body.remove("identifier") {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter(|i| i.get("system").and_then(Value::as_str) != Some(system))
            .collect(),
        _ => Vec::new(),
    };
    identifiers.insert(0, serde_json::json!({"system": system, "value": sub}));
    body.insert("identifier".into(), Value::Array(identifiers));
    if let Some(email) = claims.get("email").and_then(Value::as_str) {
        body.insert("email".into(), Value::String(email.to_owned()));
    }
    let mut name = Map::new();
    if let Some(text) = claims.get("name").and_then(Value::as_str) {
        name.insert("text".into(), Value::String(text.to_owned()));
    }
    if let Some(family) = claims.get("family_name").and_then(Value::as_str) {
        name.insert("family".into(), Value::String(family.to_owned()));
    }
    if let Some(given) = claims.get("given_name").and_then(Value::as_str) {
        name.insert("given".into(), serde_json::json!([given]));
    }
    if !name.is_empty() {
        body.insert("name".into(), Value::Object(name));
    }
    // The provider's claims are merged into `data`: keys an operator added stay.
    let mut data = match body.remove("data") {
        Some(Value::Object(data)) => data,
        _ => Map::new(),
    };
    for (key, value) in claims {
        if !TOKEN_MECHANICS.contains(&key.as_str()) {
            data.insert(key.clone(), value.clone());
        }
    }
    body.insert("data".into(), Value::Object(data));
    let after = Value::Object(body);
    (after != before).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_stable_per_pair_and_distinct_across_providers() {
        assert_eq!(user_id("https://a", "alice"), user_id("https://a", "alice"));
        assert_ne!(user_id("https://a", "alice"), user_id("https://b", "alice"));
        // The length prefix keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(user_id("ab", "c"), user_id("a", "bc"));
        assert!(user_id("s", "x").len() <= 64);
    }

    #[test]
    fn signing_in_again_with_the_same_claims_changes_nothing() {
        let claims = json!({"sub": "alice", "email": "a@example.org", "name": "Alice A",
            "given_name": "Alice", "iat": 1, "exp": 2, "nonce": "n"});
        let claims = claims.as_object().unwrap();
        let first = signed_in_body(None, "u-1", "https://idp", "alice", claims).unwrap();
        assert_eq!(
            first["identifier"][0],
            json!({"system": "https://idp", "value": "alice"})
        );
        assert_eq!(first["email"], "a@example.org");
        assert_eq!(first["name"]["given"], json!(["Alice"]));
        assert!(first["data"].get("nonce").is_none() && first["data"]["sub"] == "alice");
        let mut stored = first.clone();
        stored["meta"] = json!({"versionId": "1"});
        let mut later = claims.clone();
        later.insert("iat".into(), json!(99));
        assert_eq!(
            signed_in_body(Some(&stored), "u-1", "https://idp", "alice", &later),
            None
        );
        later.insert("email".into(), json!("new@example.org"));
        stored["data"]["ward"] = json!("7");
        let changed = signed_in_body(Some(&stored), "u-1", "https://idp", "alice", &later).unwrap();
        assert_eq!(changed["email"], "new@example.org");
        assert_eq!(changed["data"]["ward"], "7", "an operator's data stays");
    }

    #[test]
    fn inactive_users_are_recognised_either_way() {
        assert!(!UserRecord::from_body(json!({"id": "u", "active": false}), 1).active);
        assert!(!UserRecord::from_body(json!({"id": "u", "inactive": true}), 1).active);
        assert!(UserRecord::from_body(json!({"id": "u"}), 1).active);
    }
}
