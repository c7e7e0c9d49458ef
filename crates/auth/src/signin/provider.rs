//! fhirbox as the client of an IdentityProvider (OpenID Connect Core §3.1):
//! the authorization URL (with `state`, `nonce` and PKCE), the code
//! exchange authenticated with `client.secret` (RFC 6749 §2.3.1) or an
//! RFC 7523 assertion signed with `client.private-key`, the ID token's
//! checks (§3.1.3.7), and userinfo (§5.3). Secret-capable fields are read
//! at each sign-in, so a rotated file applies to the next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use fhirbox_secrets::{Requester, SecretResolver};
use jsonwebtoken::{Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};

use super::codes::challenge_of;
use super::flow::{with_query, Flow};
use crate::external::http::{FetchError, Fetcher};
use crate::external::jwks::JwksCache;
use crate::external::LEEWAY_SECONDS;
use crate::fields::SecretSlot;
use crate::identity_provider::{self, AuthMethod, IdentityProvider, SecretMethod, UserinfoSource};
use crate::token::now_seconds;

/// How long a provider's key set is kept before it is fetched again.
const KEY_SET_TTL: Duration = Duration::from_secs(300);
/// How long a provider's discovery document is kept.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a client assertion (RFC 7523 §3: "limits the time window").
const ASSERTION_LIFETIME: u64 = 60;

/// Why a sign-in at a provider failed (logged and counted; the user and
/// the application are told only that it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInFailure {
    /// The provider lacks what sign-in needs (an endpoint, `issuer` with `jwks_uri`).
    NotConfigured,
    Inactive,
    /// The provider answered the user with an error, or refused the exchange.
    ProviderRefused,
    /// The provider could not be reached, or answered 5xx, or too slowly.
    ProviderUnavailable,
    /// `client.secret` (or the key or certificate) could not be resolved.
    SecretUnavailable,
    /// `client.private-key` is not a key that signs.
    KeyUnusable,
    /// `client.private-key` and `client.certificate` do not belong together
    /// (a rotation that changed one file and not yet the other).
    KeyCertificateMismatch,
    IdToken(&'static str),
    Userinfo,
    /// The discovery document could not be fetched, or names another issuer.
    Discovery,
    /// The application may not sign its users in through this provider.
    NotAllowed,
}

impl SignInFailure {
    pub fn reason(self) -> &'static str {
        match self {
            SignInFailure::NotConfigured => "idp_not_configured",
            SignInFailure::Inactive => "idp_inactive",
            SignInFailure::ProviderRefused => "idp_refused",
            SignInFailure::ProviderUnavailable => "idp_unavailable",
            SignInFailure::SecretUnavailable => "idp_secret_unavailable",
            SignInFailure::KeyUnusable => "idp_key_unusable",
            SignInFailure::KeyCertificateMismatch => "idp_key_certificate_mismatch",
            SignInFailure::IdToken(reason) => reason,
            SignInFailure::Userinfo => "idp_userinfo",
            SignInFailure::Discovery => "idp_discovery",
            SignInFailure::NotAllowed => "idp_not_allowed",
        }
    }

    /// The OAuth error the application receives (RFC 6749 §4.1.2.1).
    pub fn oauth_error(self) -> &'static str {
        match self {
            SignInFailure::ProviderUnavailable | SignInFailure::Discovery => {
                "temporarily_unavailable"
            }
            SignInFailure::ProviderRefused => "access_denied",
            SignInFailure::NotAllowed => "unauthorized_client",
            _ => "server_error",
        }
    }
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct ProviderUser {
    pub sub: String,
    pub claims: Map<String, Value>,
}

/// The calls fhirbox makes to providers, and their key sets.
pub struct ProviderClient {
    fetcher: Fetcher,
    /// By IdentityProvider id: the `jwks_uri` and its cache.
    key_sets: Mutex<HashMap<String, (String, Arc<JwksCache>)>>,
    /// By IdentityProvider id.
    discovered: Mutex<HashMap<String, Discovered>>,
}

/// A provider with the endpoints its discovery document gave, or (`None`)
/// the time its fetch last failed.
struct Discovered {
    /// The IdentityProvider's version it was made for.
    version: i64,
    at: std::time::Instant,
    provider: Option<Arc<IdentityProvider>>,
}

/// How long a failed discovery is answered from memory, so sign-ins do not
/// each wait on a provider that is down.
const DISCOVERY_RETRY: Duration = Duration::from_secs(10);

impl ProviderClient {
    pub fn new(timeout: Duration) -> ProviderClient {
        ProviderClient {
            fetcher: Fetcher::new(timeout),
            key_sets: Mutex::default(),
            discovered: Mutex::default(),
        }
    }

    /// The provider with the endpoints it leaves out filled from its
    /// OpenID discovery document (OpenID Connect Discovery §4), fetched
    /// from `issuer` and kept for an hour (a failure for
    /// [`DISCOVERY_RETRY`]); the endpoints it names win.
    pub async fn complete(
        &self,
        idp: Arc<IdentityProvider>,
    ) -> Result<Arc<IdentityProvider>, SignInFailure> {
        let wants_userinfo = idp.userinfo_source == UserinfoSource::UserinfoEndpoint;
        let missing = idp.authorize_endpoint.is_none()
            || idp.token_endpoint.is_none()
            || idp.jwks_uri.is_none()
            || (wants_userinfo && idp.userinfo_endpoint.is_none());
        let Some(issuer) = idp.issuer.clone().filter(|_| missing) else {
            return Ok(idp);
        };
        if let Some(known) = self
            .discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&idp.id)
        {
            if known.version == idp.version {
                match &known.provider {
                    Some(provider) if known.at.elapsed() < DISCOVERY_TTL => {
                        return Ok(provider.clone())
                    }
                    None if known.at.elapsed() < DISCOVERY_RETRY => {
                        return Err(SignInFailure::Discovery)
                    }
                    _ => {}
                }
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let fetched = self.discover(&idp, &issuer, &url).await;
        if let Err(problem) = &fetched {
            tracing::warn!(identity_provider = %idp.id, reason = "idp_discovery", url = %crate::external::http::for_log(&url), %problem, "the provider's discovery document cannot be used");
        }
        self.discovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                idp.id.clone(),
                Discovered {
                    version: idp.version,
                    at: std::time::Instant::now(),
                    provider: fetched.as_ref().ok().cloned(),
                },
            );
        fetched.map_err(|_| SignInFailure::Discovery)
    }

    async fn discover(
        &self,
        idp: &IdentityProvider,
        issuer: &str,
        url: &str,
    ) -> Result<Arc<IdentityProvider>, String> {
        let document = self
            .fetcher
            .get_json(url)
            .await
            .map_err(|e| e.to_string())?;
        // Discovery §4.3: the document's issuer must be the one asked about.
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(
                "its issuer is not the IdentityProvider's issuer, character for character".into(),
            );
        }
        let endpoint = |key: &str| -> Result<Option<String>, String> {
            match document.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => crate::fields::http_url(text, key).map(Some),
                Some(_) => Err(format!("{key} is not a string")),
            }
        };
        let mut filled = idp.clone();
        if filled.authorize_endpoint.is_none() {
            filled.authorize_endpoint = endpoint("authorization_endpoint")?;
        }
        if filled.token_endpoint.is_none() {
            filled.token_endpoint = endpoint("token_endpoint")?;
        }
        if filled.jwks_uri.is_none() {
            filled.jwks_uri = endpoint("jwks_uri")?;
        }
        if filled.userinfo_endpoint.is_none()
            && filled.userinfo_source == UserinfoSource::UserinfoEndpoint
        {
            filled.userinfo_endpoint = endpoint("userinfo_endpoint")?;
        }
        Ok(Arc::new(filled))
    }

    /// The provider's authorization URL for this sign-in. It carries no
    /// secret: the PKCE verifier stays in the sealed cookie, only its
    /// challenge travels.
    pub fn authorize_url(idp: &IdentityProvider, flow: &Flow) -> Result<String, SignInFailure> {
        let endpoint = idp
            .authorize_endpoint
            .as_deref()
            .ok_or(SignInFailure::NotConfigured)?;
        let scope = if idp.scopes.is_empty() {
            "openid".to_owned()
        } else {
            idp.scopes.join(" ")
        };
        let challenge = challenge_of(&flow.verifier);
        Ok(with_query(
            endpoint,
            &[
                ("response_type", Some("code")),
                ("client_id", Some(&idp.client_id)),
                ("redirect_uri", Some(&flow.callback)),
                ("scope", Some(&scope)),
                ("state", Some(&flow.state)),
                ("nonce", Some(&flow.nonce)),
                ("code_challenge", Some(&challenge)),
                ("code_challenge_method", Some("S256")),
            ],
        ))
    }

    /// Exchanges the provider's `code` and returns who signed in.
    pub async fn finish(
        &self,
        idp: &IdentityProvider,
        vault: Option<&SecretResolver>,
        flow: &Flow,
        code: &str,
    ) -> Result<ProviderUser, SignInFailure> {
        let tokens = self.exchange(idp, vault, flow, code).await?;
        // An ID token is required: it binds the answer to this sign-in
        // (its nonce) and to fhirbox (its audience).
        let Some(id_token) = tokens.get("id_token").and_then(Value::as_str) else {
            tracing::warn!(identity_provider = %idp.id, reason = "id_token_missing", "the provider gave no ID token; ask for the openid scope");
            return Err(SignInFailure::IdToken("id_token_missing"));
        };
        let mut claims = self.verify_id_token(idp, id_token, &flow.nonce).await?;
        if idp.userinfo_source == UserinfoSource::UserinfoEndpoint {
            let info = self.userinfo(idp, &tokens).await?;
            // OpenID Connect Core §5.3.2: the userinfo `sub` must be the ID token's.
            if info.get("sub") != claims.get("sub") {
                tracing::warn!(identity_provider = %idp.id, reason = "userinfo_sub", "userinfo names another subject than the ID token");
                return Err(SignInFailure::Userinfo);
            }
            claims.extend(info);
        }
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() && sub.len() <= 255 => sub.clone(),
            _ => return Err(SignInFailure::IdToken("id_token_claims")),
        };
        Ok(ProviderUser { sub, claims })
    }

    async fn exchange(
        &self,
        idp: &IdentityProvider,
        vault: Option<&SecretResolver>,
        flow: &Flow,
        code: &str,
    ) -> Result<Map<String, Value>, SignInFailure> {
        let endpoint = idp
            .token_endpoint
            .as_deref()
            .ok_or(SignInFailure::NotConfigured)?;
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "authorization_code".into()),
            ("code", code.into()),
            ("redirect_uri", flow.callback.clone()),
            ("code_verifier", flow.verifier.clone()),
        ];
        let mut basic = None;
        match idp.auth_method {
            AuthMethod::Symmetric => {
                let slot = idp.secret.as_ref().ok_or(SignInFailure::NotConfigured)?;
                let secret = read_slot(idp, slot, vault, "client.secret")?;
                match idp.secret_method {
                    SecretMethod::Basic => {
                        basic = Some(SecretString::from(basic_credentials(
                            &idp.client_id,
                            secret.expose_secret(),
                        )))
                    }
                    SecretMethod::Post => {
                        form.push(("client_id", idp.client_id.clone()));
                        form.push(("client_secret", secret.expose_secret().to_owned()));
                    }
                }
            }
            AuthMethod::Asymmetric => {
                let assertion = client_assertion(idp, vault, endpoint)?;
                form.push(("client_id", idp.client_id.clone()));
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = self
            .fetcher
            .post_form(endpoint, basic.as_ref().map(|b| b.expose_secret()), &pairs)
            .await;
        let answer = answer.map_err(|e| {
            let failure = match &e {
                FetchError::OAuth(..) | FetchError::Status(400..=499) => SignInFailure::ProviderRefused,
                _ => SignInFailure::ProviderUnavailable,
            };
            tracing::warn!(identity_provider = %idp.id, reason = failure.reason(), problem = %e, "the provider's token endpoint did not give tokens");
            failure
        })?;
        match answer {
            Value::Object(map) => Ok(map),
            _ => Err(SignInFailure::ProviderRefused),
        }
    }

    fn key_set(&self, idp: &IdentityProvider, uri: &str) -> Arc<JwksCache> {
        let mut sets = self.key_sets.lock().unwrap_or_else(|p| p.into_inner());
        match sets.get(&idp.id) {
            Some((known, cache)) if known == uri => cache.clone(),
            _ => {
                let cache = Arc::new(JwksCache::new(uri.to_owned(), KEY_SET_TTL));
                sets.insert(idp.id.clone(), (uri.to_owned(), cache.clone()));
                cache
            }
        }
    }

    /// OpenID Connect Core §3.1.3.7: signature by a key of the provider's
    /// set, `iss` exact, `aud` containing our client id (and `azp` that is
    /// ours when present), `exp`, and the `nonce` this sign-in sent.
    async fn verify_id_token(
        &self,
        idp: &IdentityProvider,
        token: &str,
        nonce: &str,
    ) -> Result<Map<String, Value>, SignInFailure> {
        let fail = |reason: &'static str| {
            tracing::warn!(identity_provider = %idp.id, reason, "ID token refused");
            SignInFailure::IdToken(reason)
        };
        let (Some(issuer), Some(jwks_uri)) = (idp.issuer.as_deref(), idp.jwks_uri.as_deref())
        else {
            tracing::warn!(identity_provider = %idp.id, reason = "idp_not_configured", "an ID token needs issuer and jwks_uri on the IdentityProvider to be checked");
            return Err(SignInFailure::NotConfigured);
        };
        let header = token
            .split('.')
            .next()
            .and_then(crate::external::part)
            .ok_or_else(|| fail("id_token_malformed"))?;
        let header =
            crate::external::read_header(&header).map_err(|_| fail("id_token_malformed"))?;
        // Only public-key algorithms: fhirbox holds no key the provider
        // could have signed an HS256 ID token with.
        let alg = crate::external::algorithm(&header.alg)
            .filter(|a| {
                !matches!(
                    a,
                    jsonwebtoken::Algorithm::HS256
                        | jsonwebtoken::Algorithm::HS384
                        | jsonwebtoken::Algorithm::HS512
                )
            })
            .ok_or_else(|| fail("id_token_algorithm"))?;
        let set = self
            .key_set(idp, jwks_uri)
            .key_set(&self.fetcher, header.kid.as_deref(), |_| {})
            .await
            .map_err(|e| {
                tracing::warn!(identity_provider = %idp.id, reason = "idp_unavailable", problem = %e, "the provider's key set could not be fetched");
                SignInFailure::ProviderUnavailable
            })?;
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&idp.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let mut outcome = Err("id_token_unknown_key");
        for key in set.candidates(alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    outcome = Err(match e.kind() {
                        ErrorKind::InvalidSignature => "id_token_signature",
                        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                            "id_token_expired"
                        }
                        ErrorKind::InvalidIssuer => "id_token_issuer",
                        ErrorKind::InvalidAudience => "id_token_audience",
                        _ => "id_token_malformed",
                    });
                    if outcome != Err("id_token_signature") {
                        break;
                    }
                }
            }
        }
        let claims = outcome.map_err(fail)?;
        if let Some(azp) = claims.get("azp") {
            if azp.as_str() != Some(idp.client_id.as_str()) {
                return Err(fail("id_token_audience"));
            }
        } else if matches!(claims.get("aud"), Some(Value::Array(a)) if a.len() > 1) {
            return Err(fail("id_token_audience"));
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(fail("id_token_nonce"));
        }
        Ok(claims)
    }

    async fn userinfo(
        &self,
        idp: &IdentityProvider,
        tokens: &Map<String, Value>,
    ) -> Result<Map<String, Value>, SignInFailure> {
        let endpoint = idp
            .userinfo_endpoint
            .as_deref()
            .ok_or(SignInFailure::NotConfigured)?;
        let access = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or(SignInFailure::Userinfo)?;
        match self
            .fetcher
            .get_json_authorized(endpoint, &format!("Bearer {access}"))
            .await
        {
            Ok(Value::Object(info)) => Ok(info),
            Ok(_) => Err(SignInFailure::Userinfo),
            Err(e) => {
                tracing::warn!(identity_provider = %idp.id, reason = "idp_userinfo", problem = %e, "the provider's userinfo endpoint did not answer with claims");
                Err(SignInFailure::Userinfo)
            }
        }
    }
}

/// RFC 6749 §2.3.1: id and secret are form-encoded, then joined and base64'd.
fn basic_credentials(id: &str, secret: &str) -> String {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
    )
}

/// A secret-capable field's value now: the literal, or the vault file read
/// for `IdentityProvider/<id>` (its scope checked at this use).
fn read_slot(
    idp: &IdentityProvider,
    slot: &SecretSlot,
    vault: Option<&SecretResolver>,
    field: &'static str,
) -> Result<SecretString, SignInFailure> {
    match slot {
        SecretSlot::Literal(bytes) => std::str::from_utf8(bytes.expose_secret())
            .map(|text| SecretString::from(text.to_owned()))
            .map_err(|_| SignInFailure::SecretUnavailable),
        SecretSlot::Vault(name) => {
            let Some(vault) = vault else {
                tracing::warn!(identity_provider = %idp.id, field, secret = %name, reason = "vault_disabled", "the IdentityProvider refers to an external secret but external secrets are off");
                return Err(SignInFailure::SecretUnavailable);
            };
            let value = vault
                .resolve(name, &Requester::new("IdentityProvider", &idp.id))
                .map_err(|e| {
                    tracing::warn!(identity_provider = %idp.id, field, secret = %name, reason = e.reason(), problem = %e, "external secret unusable");
                    SignInFailure::SecretUnavailable
                })?;
            let text = value.expose_utf8().map_err(|_| {
                tracing::warn!(identity_provider = %idp.id, field, secret = %name, reason = "not_utf8", "external secret is not text");
                SignInFailure::SecretUnavailable
            })?;
            Ok(SecretString::from(
                text.trim_end_matches(['\n', '\r']).to_owned(),
            ))
        }
    }
}

/// The RFC 7523 client assertion: signed with `client.private-key`, with
/// the certificate's thumbprints in the header when there is one (the
/// key must belong to it: a half-rotated pair fails here, loudly).
fn client_assertion(
    idp: &IdentityProvider,
    vault: Option<&SecretResolver>,
    audience: &str,
) -> Result<String, SignInFailure> {
    let slot = idp
        .private_key
        .as_ref()
        .ok_or(SignInFailure::NotConfigured)?;
    let key_pem = read_slot(idp, slot, vault, "client.private-key")?;
    let (key, alg) = identity_provider::check_private_key(key_pem.expose_secret()).map_err(|problem| {
        tracing::error!(identity_provider = %idp.id, reason = "idp_key_unusable", %problem, "client.private-key cannot sign");
        SignInFailure::KeyUnusable
    })?;
    let mut header = Header::new(alg);
    if let Some(slot) = &idp.certificate {
        let cert_pem = read_slot(idp, slot, vault, "client.certificate")?;
        if let Err(problem) =
            identity_provider::key_matches_certificate(&key, alg, cert_pem.expose_secret())
        {
            tracing::error!(identity_provider = %idp.id, reason = "idp_key_certificate_mismatch", %problem, "client.private-key and client.certificate do not belong together (is a rotation half done?); sign-in through this provider fails until they match");
            return Err(SignInFailure::KeyCertificateMismatch);
        }
        let (x5t, x5t_s256) = identity_provider::certificate_thumbprints(cert_pem.expose_secret())
            .map_err(|_| SignInFailure::KeyCertificateMismatch)?;
        header.x5t = Some(x5t);
        header.x5t_s256 = Some(x5t_s256);
    }
    let now = now_seconds();
    let claims = json!({
        "iss": idp.client_id, "sub": idp.client_id, "aud": audience,
        "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "exp": now + ASSERTION_LIFETIME,
    });
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| SignInFailure::KeyUnusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        // RFC 6749 §2.3.1: "application/x-www-form-urlencoded" before base64.
        let header = basic_credentials("my app", "p:ss&word");
        let decoded = STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, b"my+app:p%3Ass%26word");
    }
}
