//! `Client` resources as the authenticator sees them.

use serde_json::Value;

use super::secret_hash;

/// Where a client's secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecret {
    /// No secret: the client cannot authenticate with one.
    None,
    /// argon2id PHC hash of a literal secret.
    Hash(String),
    /// Name of a secret in the vault config (docs/external-secrets.md,
    /// "Referring to a secret from a resource").
    Reference(String),
}

/// OAuth grants fhirbox checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Basic,
    ClientCredentials,
}

impl Grant {
    pub fn code(self) -> &'static str {
        match self {
            Grant::Basic => "basic",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

/// Default `expires_in` of an access token, in seconds.
pub const DEFAULT_TOKEN_LIFETIME: u64 = 3600;

/// The parts of a Client that authentication needs.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub id: String,
    pub version_id: i64,
    pub active: bool,
    pub grant_types: Vec<String>,
    pub secret: ClientSecret,
    pub token_lifetime: u64,
}

impl ClientRecord {
    /// Reads a stored (or about-to-be-stored) Client body; errors say what is wrong.
    pub fn from_body(body: &Value, version_id: i64) -> Result<ClientRecord, String> {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let active = match body.get("active") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("active must be true or false".into()),
        };
        let grant_types = match body.get("grant_types") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| {
                    g.as_str()
                        .map(str::to_owned)
                        .ok_or("grant_types must be an array of strings")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err("grant_types must be an array of strings such as [\"basic\"]".into())
            }
        };
        let token_lifetime = match body.pointer("/auth/client_credentials/access_token_expiration") {
            None | Some(Value::Null) => DEFAULT_TOKEN_LIFETIME,
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or("auth.client_credentials.access_token_expiration must be a positive whole number of seconds")?,
        };
        let element = body.get("_secret");
        let secret = if let Some(name) = secret_hash::referenced_name(element) {
            ClientSecret::Reference(name.to_owned())
        } else if let Some(hash) = secret_hash::stored_hash(element) {
            ClientSecret::Hash(hash.to_owned())
        } else {
            ClientSecret::None
        };
        Ok(ClientRecord {
            id,
            version_id,
            active,
            grant_types,
            secret,
            token_lifetime,
        })
    }

    pub fn allows(&self, grant: Grant) -> bool {
        self.grant_types.iter().any(|g| g == grant.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_grants_activity_lifetime_and_secret_kind() {
        let c = ClientRecord::from_body(
            &json!({"id": "c", "grant_types": ["basic"], "auth": {"client_credentials": {"access_token_expiration": 60}},
                    "_secret": secret_hash::masked_with_hash("$argon2id$h")}),
            3,
        )
        .unwrap();
        assert!(c.active && c.allows(Grant::Basic) && !c.allows(Grant::ClientCredentials));
        assert_eq!(c.token_lifetime, 60);
        assert_eq!(c.secret, ClientSecret::Hash("$argon2id$h".into()));
        let inactive = ClientRecord::from_body(&json!({"active": false}), 1).unwrap();
        assert!(!inactive.active);
        assert_eq!(inactive.secret, ClientSecret::None);
        assert!(ClientRecord::from_body(&json!({"grant_types": "basic"}), 1).is_err());
        assert!(ClientRecord::from_body(&json!({"active": "yes"}), 1).is_err());
        assert!(ClientRecord::from_body(
            &json!({"auth": {"client_credentials": {"access_token_expiration": -5}}}),
            1
        )
        .is_err());
    }
}
