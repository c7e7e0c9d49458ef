//! `TokenIntrospector` resources (Aidbox's shape) as the authenticator sees
//! them: which tokens an introspector accepts (`jwt.iss`), and where the
//! key or the verdict comes from — one key source for `type: jwt` (a shared
//! secret, configured keys, or a JWKS URL), an RFC 7662 endpoint for
//! `type: opaque`. The same parser checks every write (docs/tokens.md), so
//! whatever is stored can be loaded.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::fields::{http_url, slot, SecretSlot};

/// `cache_ttl` when none is given, and its bounds, in seconds.
pub const DEFAULT_CACHE_TTL: u64 = 300;
const MAX_CACHE_TTL: u64 = 86_400;

/// What signs the tokens of a key.
#[derive(Clone)]
pub enum KeyMaterial {
    /// An HMAC key (`kty: OCT`).
    Symmetric(SecretSlot),
    /// A public key (`kty: RSA` or `EC`), parsed once.
    Public(DecodingKey),
}

/// One entry of `jwt.keys`.
#[derive(Clone)]
pub struct ConfiguredKey {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: Algorithm,
    pub material: KeyMaterial,
}

/// Where a `jwt` introspector's keys come from: exactly one source.
#[derive(Clone)]
pub enum KeySource {
    /// `jwt.secret`: one HS256 key.
    Secret(SecretSlot),
    /// `jwt.keys`: chosen by the token's `alg` and, when both name one, `kid`.
    Keys(Vec<ConfiguredKey>),
    /// `jwks_uri`: the issuer's key set, fetched and cached.
    Jwks(String),
}

/// `introspection_endpoint`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    /// The whole `Authorization` header value sent with each call.
    pub authorization: Option<SecretSlot>,
}

#[derive(Clone)]
pub enum Kind {
    Jwt {
        iss: String,
        source: KeySource,
        /// `jwt.typ`: when set, the header's `typ` must name it (RFC 9068
        /// `at+jwt`), so an ID token is never taken for an access token.
        typ: Option<String>,
    },
    Opaque {
        endpoint: Endpoint,
        /// `jwt.iss` on an opaque introspector: JWT-shaped tokens of this
        /// issuer are introspected too.
        iss: Option<String>,
    },
}

/// A parsed TokenIntrospector.
#[derive(Clone)]
pub struct Introspector {
    pub id: String,
    /// The stored version this was read from (0 before it is stored).
    pub version: i64,
    pub kind: Kind,
    pub cache_ttl: Duration,
    /// `identity_provider` (`IdentityProvider/<id>`), kept for user resolution.
    pub identity_provider: Option<String>,
}

impl Introspector {
    /// The issuer whose JWT-shaped tokens this introspector takes.
    pub fn issuer(&self) -> Option<&str> {
        match &self.kind {
            Kind::Jwt { iss, .. } => Some(iss),
            Kind::Opaque { iss, .. } => iss.as_deref(),
        }
    }

    /// The URLs this introspector calls.
    pub fn urls(&self) -> Vec<&str> {
        match &self.kind {
            Kind::Jwt {
                source: KeySource::Jwks(url),
                ..
            } => vec![url],
            Kind::Jwt { .. } => Vec::new(),
            Kind::Opaque { endpoint, .. } => vec![&endpoint.url],
        }
    }

    /// The vault secrets this introspector refers to.
    pub fn secret_names(&self) -> Vec<&str> {
        fn vault(slot: &SecretSlot) -> Option<&str> {
            match slot {
                SecretSlot::Vault(name) => Some(name.as_str()),
                SecretSlot::Literal(_) => None,
            }
        }
        match &self.kind {
            Kind::Jwt {
                source: KeySource::Secret(slot),
                ..
            } => vault(slot).into_iter().collect(),
            Kind::Jwt {
                source: KeySource::Keys(keys),
                ..
            } => keys
                .iter()
                .filter_map(|k| match &k.material {
                    KeyMaterial::Symmetric(slot) => vault(slot),
                    KeyMaterial::Public(_) => None,
                })
                .collect(),
            Kind::Jwt { .. } => Vec::new(),
            Kind::Opaque { endpoint, .. } => endpoint
                .authorization
                .as_ref()
                .and_then(vault)
                .into_iter()
                .collect(),
        }
    }

    /// Reads a stored (or about-to-be-stored) TokenIntrospector; the error
    /// says what to fix, naming the element.
    pub fn parse(body: &Value) -> Result<Introspector, String> {
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let cache_ttl = match body.get("cache_ttl") {
            None | Some(Value::Null) => DEFAULT_CACHE_TTL,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_CACHE_TTL).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "cache_ttl must be a whole number of seconds from 1 to {MAX_CACHE_TTL}"
                    ))
                }
            },
        };
        let identity_provider = match body.get("identity_provider") {
            None | Some(Value::Null) => None,
            Some(reference) => Some(
                reference
                    .get("reference")
                    .and_then(Value::as_str)
                    .filter(|r| r.starts_with("IdentityProvider/"))
                    .map(str::to_owned)
                    .or_else(|| {
                        reference
                            .get("id")
                            .and_then(Value::as_str)
                            .map(|id| format!("IdentityProvider/{id}"))
                    })
                    .ok_or("identity_provider must be a reference to an IdentityProvider, {\"reference\": \"IdentityProvider/<id>\"}")?,
            ),
        };
        let jwt = match body.get("jwt") {
            None | Some(Value::Null) => None,
            Some(Value::Object(jwt)) => Some(jwt),
            Some(_) => return Err("jwt must be an object".into()),
        };
        let iss = match jwt.and_then(|j| j.get("iss")) {
            None | Some(Value::Null) => None,
            Some(Value::String(iss)) if !iss.trim().is_empty() => Some(iss.clone()),
            Some(_) => return Err("jwt.iss must be a non-empty string, the issuer exactly as tokens name it in their iss claim".into()),
        };
        if iss.as_deref() == Some(crate::token::ISSUER) {
            return Err(format!(
                "jwt.iss {:?} is the issuer of fhirbox's own tokens; name another issuer",
                crate::token::ISSUER
            ));
        }
        let jwks_uri = match body.get("jwks_uri") {
            None | Some(Value::Null) => None,
            Some(Value::String(uri)) => Some(http_url(uri, "jwks_uri")?),
            Some(_) => return Err("jwks_uri must be a string".into()),
        };
        let endpoint = match body.get("introspection_endpoint") {
            None | Some(Value::Null) => None,
            Some(Value::Object(e)) => Some(endpoint(e)?),
            Some(_) => return Err("introspection_endpoint must be an object".into()),
        };
        let kind = match body.get("type").and_then(Value::as_str) {
            Some("jwt") => {
                if endpoint.is_some() {
                    return Err("introspection_endpoint is for type \"opaque\"; a jwt introspector checks signatures itself".into());
                }
                let secret = jwt
                    .map(|j| slot(j, "secret", "jwt.secret"))
                    .transpose()?
                    .flatten();
                let keys = match jwt.and_then(|j| j.get("keys")) {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(keys)) if !keys.is_empty() => Some(configured_keys(keys)?),
                    Some(_) => return Err("jwt.keys must be a non-empty array of keys".into()),
                };
                let source = match (secret, keys, jwks_uri) {
                    (Some(secret), None, None) => KeySource::Secret(secret),
                    (None, Some(keys), None) => KeySource::Keys(keys),
                    (None, None, Some(uri)) => KeySource::Jwks(uri),
                    (None, None, None) => return Err("a jwt introspector needs one key source: jwt.secret, jwt.keys or jwks_uri".into()),
                    _ => return Err("a jwt introspector takes exactly one key source: jwt.secret, jwt.keys or jwks_uri, not several".into()),
                };
                let iss = iss.ok_or(if matches!(source, KeySource::Jwks(_)) {
                    "jwks_uri needs jwt.iss: tokens are matched to an introspector by their iss claim"
                } else {
                    "a jwt introspector needs jwt.iss: tokens are matched to an introspector by their iss claim"
                })?;
                let typ = match jwt.and_then(|j| j.get("typ")) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                    Some(_) => {
                        return Err("jwt.typ must be a non-empty string such as \"at+jwt\"".into())
                    }
                };
                Kind::Jwt { iss, source, typ }
            }
            Some("opaque") => {
                let has_keys = jwt.is_some_and(|j| {
                    ["secret", "_secret", "keys", "typ"]
                        .iter()
                        .any(|k| j.contains_key(*k))
                });
                if has_keys || jwks_uri.is_some() {
                    return Err("an opaque introspector asks its introspection_endpoint; keys (jwt.secret, jwt.keys, jwks_uri) are for type \"jwt\"".into());
                }
                let endpoint = endpoint
                    .ok_or("an opaque introspector needs introspection_endpoint.url (RFC 7662)")?;
                Kind::Opaque { endpoint, iss }
            }
            Some("aspxauth") => {
                return Err("type \"aspxauth\" is not supported; use \"jwt\" or \"opaque\"".into())
            }
            Some(other) => {
                return Err(format!(
                    "type {other:?} is not known; use \"jwt\" or \"opaque\""
                ))
            }
            None => return Err("type is missing; use \"jwt\" or \"opaque\"".into()),
        };
        Ok(Introspector {
            id,
            version: 0,
            kind,
            cache_ttl: Duration::from_secs(cache_ttl),
            identity_provider,
        })
    }
}

/// True for an `http` URL to a host other than the loopback interface:
/// anyone on the path could change its answers (logged as a warning at load).
pub fn is_plain_http_off_host(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|u| {
        u.scheme() == "http" && !matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
    })
}

fn endpoint(fields: &Map<String, Value>) -> Result<Endpoint, String> {
    let url = match fields.get("url") {
        Some(Value::String(url)) => http_url(url, "introspection_endpoint.url")?,
        _ => {
            return Err(
                "introspection_endpoint.url must be the URL of the RFC 7662 endpoint".into(),
            )
        }
    };
    let authorization = slot(
        fields,
        "authorization",
        "introspection_endpoint.authorization",
    )?;
    if let Some(SecretSlot::Literal(value)) = &authorization {
        use secrecy::ExposeSecret;
        if !header_value_ok(value.expose_secret()) {
            return Err("introspection_endpoint.authorization must be one line of visible ASCII, the whole header value such as \"Basic …\"".into());
        }
    }
    Ok(Endpoint { url, authorization })
}

/// Whether bytes can be an HTTP header value (RFC 9110 §5.5, without obs-text).
pub fn header_value_ok(value: &[u8]) -> bool {
    !value.is_empty()
        && value
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
}

fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

/// The key type an algorithm needs (`kty` of RFC 7518 §6.1).
pub fn key_type(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "OCT",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        _ => "RSA",
    }
}

fn configured_keys(keys: &[Value]) -> Result<Vec<ConfiguredKey>, String> {
    let mut parsed: Vec<ConfiguredKey> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let at = format!("jwt.keys[{i}]");
        let Some(fields) = key.as_object() else {
            return Err(format!("{at} must be an object"));
        };
        let alg = match fields.get("alg").and_then(Value::as_str) {
            Some(name) => algorithm(name).ok_or_else(|| {
                format!("{at}.alg {name:?} is not supported; use one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384")
            })?,
            None => return Err(format!("{at}.alg is missing: each key verifies exactly one algorithm, e.g. \"RS256\"")),
        };
        let wanted = key_type(alg);
        if let Some(kty) = fields.get("kty").and_then(Value::as_str) {
            if !kty.eq_ignore_ascii_case(wanted) {
                return Err(format!(
                    "{at}: kty {kty:?} does not fit alg {alg:?}, which needs a {wanted} key"
                ));
            }
        }
        let kid = match fields.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) if !kid.is_empty() => Some(kid.clone()),
            Some(_) => return Err(format!("{at}.kid must be a non-empty string")),
        };
        if kid.is_some() && parsed.iter().any(|k| k.kid == kid) {
            return Err(format!(
                "{at}.kid {:?} names another key too; kids must be unique",
                kid.unwrap_or_default()
            ));
        }
        let format = fields.get("format").and_then(Value::as_str);
        let material = if wanted == "OCT" {
            if fields.contains_key("pub") {
                return Err(format!(
                    "{at}: an {alg:?} key is a shared secret in k (or _k), not a public key in pub"
                ));
            }
            if format == Some("PEM") {
                return Err(format!("{at}: an {alg:?} key is a plain shared secret; format \"PEM\" is for public keys"));
            }
            let slot = slot(fields, "k", &format!("{at}.k"))?.ok_or_else(|| {
                format!("{at}: an {alg:?} key needs k, or a secret reference in _k")
            })?;
            if let SecretSlot::Literal(value) = &slot {
                use secrecy::ExposeSecret;
                check_hmac_key(value.expose_secret()).map_err(|e| format!("{at}.k {e}"))?;
            }
            KeyMaterial::Symmetric(slot)
        } else {
            if fields.contains_key("k") || fields.contains_key("_k") {
                return Err(format!(
                    "{at}: an {alg:?} key is a public key in pub; k is for HS keys"
                ));
            }
            if format == Some("plain") {
                return Err(format!("{at}: a public key must be given in PEM format"));
            }
            let pem = fields.get("pub").and_then(Value::as_str).ok_or_else(|| {
                format!("{at}: an {alg:?} key needs pub, the PEM of the public key")
            })?;
            KeyMaterial::Public(public_key(pem, alg).map_err(|e| format!("{at}.pub {e}"))?)
        };
        parsed.push(ConfiguredKey { kid, alg, material });
    }
    Ok(parsed)
}

/// A PEM public key for `alg`.
pub fn public_key(pem: &str, alg: Algorithm) -> Result<DecodingKey, String> {
    if pem.contains("PRIVATE KEY") {
        return Err("holds a private key; configure the public key only".into());
    }
    crate::pem_guard::blocks(pem)?;
    let key = if key_type(alg) == "EC" {
        DecodingKey::from_ec_pem(pem.as_bytes())
    } else {
        DecodingKey::from_rsa_pem(pem.as_bytes())
    };
    key.map_err(|_| format!("is not a PEM {} public key", key_type(alg)))
}

/// An HMAC key must be a plain secret: a PEM (a public key pasted where a
/// shared secret belongs) is the algorithm-confusion mistake, refused.
pub fn check_hmac_key(key: &[u8]) -> Result<(), String> {
    if key.windows(10).any(|w| w == b"-----BEGIN") {
        return Err("holds a PEM block; an HS key is a shared secret, not a public key".into());
    }
    if key.len() < 16 {
        return Err(
            "is shorter than 16 bytes; use a random shared secret of at least 32 bytes".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::reference;
    use serde_json::json;

    fn problem(body: Value) -> String {
        match Introspector::parse(&body) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn each_key_source_parses() {
        let hs = Introspector::parse(&json!({"id": "a", "type": "jwt", "jwt": {"iss": "https://idp", "secret": "0123456789abcdef0123"}})).unwrap();
        assert!(matches!(
            hs.kind,
            Kind::Jwt {
                source: KeySource::Secret(_),
                ..
            }
        ));
        assert_eq!(hs.cache_ttl, Duration::from_secs(300));
        let vault = Introspector::parse(&json!({"id": "a", "type": "jwt", "jwt": {"iss": "https://idp", "_secret": reference("hs")}})).unwrap();
        assert_eq!(vault.secret_names(), ["hs"]);
        let jwks = Introspector::parse(&json!({"id": "a", "type": "jwt", "jwt": {"iss": "https://idp"}, "jwks_uri": "https://idp/jwks", "cache_ttl": 60})).unwrap();
        assert!(
            matches!(&jwks.kind, Kind::Jwt { source: KeySource::Jwks(u), .. } if u == "https://idp/jwks")
        );
        assert_eq!(jwks.cache_ttl, Duration::from_secs(60));
        let opaque = Introspector::parse(&json!({"id": "o", "type": "opaque",
            "introspection_endpoint": {"url": "http://127.0.0.1:9/introspect", "_authorization": reference("basic")}})).unwrap();
        assert_eq!(opaque.secret_names(), ["basic"]);
        assert_eq!(opaque.issuer(), None);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let jwt = |extra: Value| {
            let mut body = json!({"type": "jwt", "jwt": {"iss": "https://idp"}});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        assert!(
            problem(json!({"type": "jwt", "jwt": {"iss": "x"}})).contains("needs one key source")
        );
        assert!(problem(json!({"type": "jwt", "jwt": {"iss": "x", "secret": "0123456789abcdef0"}, "jwks_uri": "https://x/j"})).contains("exactly one key source"));
        assert!(problem(json!({"type": "jwt", "jwks_uri": "https://x/j"}))
            .contains("jwks_uri needs jwt.iss"));
        assert!(
            problem(json!({"type": "jwt", "jwt": {"secret": "0123456789abcdef0"}}))
                .contains("needs jwt.iss")
        );
        assert!(problem(
            json!({"type": "jwt", "jwt": {"iss": "fhirbox", "secret": "0123456789abcdef0"}})
        )
        .contains("fhirbox's own"));
        assert!(problem(jwt(json!({"jwks_uri": "ftp://x/j"}))).contains("http or https"));
        assert!(problem(jwt(json!({"jwks_uri": "https://u:p@x/j"}))).contains("credentials"));
        assert!(problem(json!({"type": "aspxauth"})).contains("not supported"));
        assert!(problem(json!({})).contains("type is missing"));
        assert!(problem(json!({"type": "opaque"})).contains("introspection_endpoint.url"));
        assert!(problem(json!({"type": "opaque", "jwks_uri": "https://x/j", "introspection_endpoint": {"url": "https://x/i"}})).contains("are for type \"jwt\""));
        assert!(problem(json!({"type": "opaque", "introspection_endpoint": {"url": "https://x/i", "authorization": "Basic a\nb"}})).contains("one line"));
        assert!(
            problem(jwt(json!({"jwks_uri": "https://x/j", "cache_ttl": 0}))).contains("cache_ttl")
        );
        assert!(
            problem(jwt(json!({"jwks_uri": "https://x/j", "cache_ttl": 86401})))
                .contains("cache_ttl")
        );
        let keys = |key: Value| json!({"type": "jwt", "jwt": {"iss": "x", "keys": [key]}});
        assert!(
            problem(keys(json!({"kty": "OCT", "k": "0123456789abcdef0"})))
                .contains("alg is missing")
        );
        assert!(
            problem(keys(json!({"alg": "none", "k": "0123456789abcdef0"})))
                .contains("not supported")
        );
        assert!(problem(keys(
            json!({"alg": "RS256", "kty": "OCT", "k": "0123456789abcdef0"})
        ))
        .contains("does not fit"));
        assert!(problem(keys(
            json!({"alg": "HS256", "k": "-----BEGIN PUBLIC KEY-----\nMIIB"})
        ))
        .contains("PEM block"));
        assert!(problem(keys(json!({"alg": "HS256", "k": "short"}))).contains("16 bytes"));
        assert!(problem(keys(json!({"alg": "HS256", "pub": "x"}))).contains("shared secret"));
        assert!(problem(keys(json!({"alg": "RS256", "pub": "not a pem"})))
            .contains("pub holds no PEM block"));
        assert!(
            problem(keys(json!({"alg": "RS256", "k": "0123456789abcdef0"})))
                .contains("public key in pub")
        );
        assert!(problem(keys(
            json!({"alg": "HS256", "k": "0123456789abcdef0", "_k": reference("k")})
        ))
        .contains("both"));
        assert!(problem(json!({"type": "jwt", "jwt": {"iss": "x", "keys": [
            {"alg": "HS256", "kid": "a", "k": "0123456789abcdef0"},
            {"alg": "HS384", "kid": "a", "k": "0123456789abcdef0"}]}}))
        .contains("unique"));
    }
}
