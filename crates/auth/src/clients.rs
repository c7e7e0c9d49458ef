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
    AuthorizationCode,
    RefreshToken,
}

impl Grant {
    pub fn code(self) -> &'static str {
        match self {
            Grant::Basic => "basic",
            Grant::ClientCredentials => "client_credentials",
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
        }
    }
}

/// Default `expires_in` of an access token, in seconds.
pub const DEFAULT_TOKEN_LIFETIME: u64 = 3600;

/// How a client uses the authorization code grant
/// (`auth.authorization_code`, Aidbox's shape; docs/sign-in.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFlow {
    /// The one registered redirect URI, matched exactly (RFC 6749 §3.1.2).
    pub redirect_uri: String,
    /// PKCE (RFC 7636, S256) is required: always for a client without a
    /// secret, and for any client that sets `pkce: true`.
    pub pkce: bool,
    /// The client must authenticate at the token endpoint.
    pub secret_required: bool,
    /// The IdentityProvider `/auth/authorize` sends users to.
    pub default_identity_provider: Option<String>,
    /// Every IdentityProvider its users may sign in with: the default and
    /// those `identity_providers` lists (fhirbox). No other provider's
    /// users can take this application's policies.
    pub identity_providers: Vec<String>,
    /// `expires_in` of the access tokens of this grant.
    pub token_lifetime: u64,
    /// How long the refresh tokens of one sign-in last, replaced or not
    /// (`refresh_token_expiration`).
    pub refresh_lifetime: u64,
    /// Aidbox's `refresh_token: true`: refresh tokens are issued as when
    /// `grant_types` has `refresh_token`.
    pub refresh_tokens: bool,
}

/// Default lifetime of a sign-in's refresh tokens: 30 days.
pub const DEFAULT_REFRESH_LIFETIME: u64 = 30 * 24 * 3600;

impl CodeFlow {
    fn parse(body: &Value) -> Result<Option<CodeFlow>, String> {
        let allowed = matches!(body.get("grant_types"), Some(Value::Array(g)) if g.iter().any(|g| g == "authorization_code"));
        let flow = match body.pointer("/auth/authorization_code") {
            None | Some(Value::Null) if !allowed => return Ok(None),
            None | Some(Value::Null) => {
                return Err("grant_types has authorization_code: auth.authorization_code.redirect_uri must name the application's redirect URI".into())
            }
            Some(Value::Object(flow)) => flow,
            Some(_) => return Err("auth.authorization_code must be an object".into()),
        };
        let redirect_uri = match flow.get("redirect_uri") {
            Some(Value::String(uri)) => {
                let parsed = reqwest::Url::parse(uri).map_err(|_| {
                    "auth.authorization_code.redirect_uri must be an absolute URL".to_owned()
                })?;
                if parsed.fragment().is_some() {
                    return Err("auth.authorization_code.redirect_uri must not have a fragment (RFC 6749 §3.1.2)".into());
                }
                // RFC 9700 §2.6: codes travel over TLS, or stay on the device
                // (a loopback address, or a native app's private-use scheme,
                // RFC 8252 §7.1, which names a reversed domain).
                let loopback = matches!(parsed.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"));
                let fine = match parsed.scheme() {
                    "https" => true,
                    "http" => loopback,
                    scheme => scheme.contains('.'),
                };
                if !fine {
                    return Err("auth.authorization_code.redirect_uri must be https (http only on a loopback address, or a private-use scheme such as com.example.app:/callback)".into());
                }
                uri.clone()
            }
            None | Some(Value::Null) if !allowed => String::new(),
            _ => return Err("auth.authorization_code.redirect_uri must be the application's redirect URI (a string)".into()),
        };
        let flag = |key: &str| match flow.get(key) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!(
                "auth.authorization_code.{key} must be true or false"
            )),
        };
        let provider = |reference: &Value, at: &str| -> Result<String, String> {
            reference
                .get("reference")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("IdentityProvider/"))
                .or_else(|| {
                    (reference.get("resourceType").and_then(Value::as_str)
                        == Some("IdentityProvider"))
                    .then(|| reference.get("id").and_then(Value::as_str))
                    .flatten()
                })
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or(format!(
                    "auth.authorization_code.{at} must be {{\"reference\": \"IdentityProvider/<id>\"}}"
                ))
        };
        let default_identity_provider = match flow.get("default_identity_provider") {
            None | Some(Value::Null) => None,
            Some(reference) => Some(provider(reference, "default_identity_provider")?),
        };
        let mut identity_providers: Vec<String> =
            default_identity_provider.iter().cloned().collect();
        match flow.get("identity_providers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    identity_providers.push(provider(item, &format!("identity_providers[{i}]"))?);
                }
            }
            Some(_) => {
                return Err(
                    "auth.authorization_code.identity_providers must be an array of references"
                        .into(),
                )
            }
        }
        let token_lifetime = match flow.get("access_token_expiration") {
            None | Some(Value::Null) => DEFAULT_TOKEN_LIFETIME,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or(
                "auth.authorization_code.access_token_expiration must be a positive whole number of seconds",
            )?,
        };
        let refresh_lifetime = match flow.get("refresh_token_expiration") {
            None | Some(Value::Null) => DEFAULT_REFRESH_LIFETIME,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or(
                "auth.authorization_code.refresh_token_expiration must be a positive whole number of seconds",
            )?,
        };
        Ok(Some(CodeFlow {
            refresh_lifetime,
            refresh_tokens: flag("refresh_token")?,
            redirect_uri,
            pkce: flag("pkce")?,
            secret_required: flag("secret_required")?,
            default_identity_provider,
            identity_providers,
            token_lifetime,
        })
        .filter(|_| allowed))
    }
}

/// The parts of a Client that authentication needs.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub id: String,
    pub version_id: i64,
    pub active: bool,
    pub grant_types: Vec<String>,
    pub secret: ClientSecret,
    pub token_lifetime: u64,
    /// The authorization code grant, when `grant_types` allows it; `Err`
    /// says why a stored client cannot use it (a write is refused with it).
    pub code_flow: Result<Option<CodeFlow>, String>,
}

impl ClientRecord {
    /// Reads a stored (or about-to-be-stored) Client body; errors say what is wrong.
    pub fn from_body(body: &Value, version_id: i64) -> Result<ClientRecord, String> {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let active = crate::fields::active(body)?;
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
            code_flow: CodeFlow::parse(body),
        })
    }

    /// True when the client has a secret to authenticate with.
    pub fn has_secret(&self) -> bool {
        !matches!(self.secret, ClientSecret::None)
    }

    pub fn allows(&self, grant: Grant) -> bool {
        self.grant_types.iter().any(|g| g == grant.code())
            || (grant == Grant::RefreshToken
                && matches!(&self.code_flow, Ok(Some(flow)) if flow.refresh_tokens))
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

    #[test]
    fn reads_the_authorization_code_flow() {
        let app = ClientRecord::from_body(
            &json!({"grant_types": ["authorization_code"], "auth": {"authorization_code": {
                "redirect_uri": "https://app.example/cb", "pkce": true,
                "default_identity_provider": {"reference": "IdentityProvider/okta"}}}}),
            1,
        )
        .unwrap();
        let flow = app.code_flow.unwrap().unwrap();
        assert_eq!(flow.redirect_uri, "https://app.example/cb");
        assert!(flow.pkce && !flow.secret_required);
        assert_eq!(flow.default_identity_provider.as_deref(), Some("okta"));
        let problem = |body: Value| {
            ClientRecord::from_body(&body, 1)
                .unwrap()
                .code_flow
                .unwrap_err()
        };
        assert!(problem(json!({"grant_types": ["authorization_code"]})).contains("redirect_uri"));
        assert!(problem(json!({"grant_types": ["authorization_code"], "auth": {"authorization_code": {"redirect_uri": "/cb"}}})).contains("absolute"));
        assert!(problem(json!({"grant_types": ["authorization_code"], "auth": {"authorization_code": {"redirect_uri": "https://a/cb#x"}}})).contains("fragment"));
        assert!(problem(json!({"grant_types": ["authorization_code"], "auth": {"authorization_code": {"redirect_uri": "https://a/cb", "default_identity_provider": {"reference": "Client/x"}}}})).contains("IdentityProvider/<id>"));
        // Without the grant, the flow is not used.
        let basic = ClientRecord::from_body(
            &json!({"grant_types": ["basic"], "auth": {"authorization_code": {"pkce": true}}}),
            1,
        )
        .unwrap();
        assert_eq!(basic.code_flow, Ok(None));
    }
}
