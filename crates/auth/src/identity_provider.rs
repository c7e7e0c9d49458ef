//! `IdentityProvider` resources (Aidbox's shape) as sign-in will use them:
//! an external OpenID provider's endpoints and fhirbox's client there. The
//! parser checks every write (docs/sign-in.md), so what is stored can be
//! used: the endpoints are http(s) URLs, the client authenticates one way
//! (`symmetric` with a secret, `asymmetric` with a private key), and a
//! literal key or certificate is a PEM of the right kind.

use serde_json::{Map, Value};

use crate::fields::SecretSlot;
use crate::fields::{http_url, slot};

/// How fhirbox authenticates itself at the provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_secret_basic` / `client_secret_post` with `client.secret`.
    Symmetric,
    /// RFC 7523 `private_key_jwt`, signed with `client.private-key`.
    Asymmetric,
}

/// How fhirbox presents `client.secret` (`symmetric`): RFC 6749 §2.3.1
/// allows either; `client.token_endpoint_auth_method` chooses (the names of
/// OpenID Connect Dynamic Client Registration §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMethod {
    Basic,
    Post,
}

/// Where a user's claims come from (`userinfo-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserinfoSource {
    IdToken,
    UserinfoEndpoint,
}

/// A parsed IdentityProvider (the parts sign-in needs).
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    pub id: String,
    pub version: i64,
    pub active: bool,
    pub system: Option<String>,
    /// The `iss` its ID tokens carry.
    pub issuer: Option<String>,
    pub authorize_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub scopes: Vec<String>,
    pub userinfo_source: UserinfoSource,
    pub client_id: String,
    pub redirect_uri: Option<String>,
    pub auth_method: AuthMethod,
    pub secret_method: SecretMethod,
    pub secret: Option<SecretSlot>,
    pub private_key: Option<SecretSlot>,
    pub certificate: Option<SecretSlot>,
}

/// What a key signs to show it can, and that it belongs to a certificate.
#[derive(serde::Serialize)]
struct Probe {
    probe: &'static str,
}

const PROBE: Probe = Probe {
    probe: "fhirbox: does this key sign, and belong to this certificate?",
};

/// A literal private key: one unencrypted PEM key (PKCS#8, or PKCS#1 for
/// RSA) that signs, checked by signing a probe; with the algorithm it signs.
pub fn check_private_key(
    text: &str,
) -> Result<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm), String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let blocks = crate::pem_guard::blocks(text)?;
    let [block] = blocks.as_slice() else {
        return Err("must be one PEM private key, not several blocks".into());
    };
    match block.tag() {
        "PRIVATE KEY" | "RSA PRIVATE KEY" => {}
        "EC PRIVATE KEY" => return Err(
            "is a SEC1 EC key; convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt) and send that"
                .into(),
        ),
        "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "is encrypted; send it unencrypted (it is masked on read) or keep it in the vault"
                    .into(),
            )
        }
        _ => {
            return Err(
                "must be a PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)".into(),
            )
        }
    }
    let bytes = text.as_bytes();
    let signs = |key: &EncodingKey, alg: Algorithm| {
        jsonwebtoken::encode(&Header::new(alg), &PROBE, key).is_ok()
    };
    if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
        if signs(&key, Algorithm::RS256) {
            return Ok((key, Algorithm::RS256));
        }
    }
    if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
        for alg in [Algorithm::ES256, Algorithm::ES384] {
            if signs(&key, alg) {
                return Ok((key, alg));
            }
        }
    }
    Err("is not an RSA or EC (P-256, P-384) private key that can sign".into())
}

fn check_certificate(text: &str) -> Result<(), String> {
    use x509_cert::der::Decode;
    for block in crate::pem_guard::blocks(text)? {
        if block.tag() != "CERTIFICATE" {
            return Err(
                "must hold PEM certificates only (BEGIN CERTIFICATE), the client's first".into(),
            );
        }
        x509_cert::Certificate::from_der(block.contents())
            .map_err(|_| "holds a block that is not an X.509 certificate")?;
    }
    Ok(())
}

/// The public key of the first certificate in `pem_text`, and the JWS
/// algorithm a private key of its type signs with.
fn certificate_key(
    pem_text: &str,
) -> Result<(jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm), String> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    use x509_cert::der::asn1::ObjectIdentifier;
    use x509_cert::der::Decode;
    const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
    let first = crate::pem_guard::blocks(pem_text)?
        .into_iter()
        .next()
        .ok_or("holds no certificate")?;
    let certificate = x509_cert::Certificate::from_der(first.contents())
        .map_err(|_| "is not an X.509 certificate")?;
    let info = certificate.tbs_certificate().subject_public_key_info();
    let key = info.subject_public_key.raw_bytes();
    if info.algorithm.oid == RSA {
        return Ok((DecodingKey::from_rsa_der(key), Algorithm::RS256));
    }
    if info.algorithm.oid == EC {
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        let alg = match curve {
            Some(c) if c == P256 => Algorithm::ES256,
            Some(c) if c == P384 => Algorithm::ES384,
            _ => return Err("holds an EC key on a curve other than P-256 or P-384".into()),
        };
        return Ok((DecodingKey::from_ec_der(key), alg));
    }
    Err("holds a key that is neither RSA nor EC".into())
}

/// Whether `private` (signing with `private_alg`) is the key of the first
/// certificate in `cert_pem`: a probe signed with the one must verify with
/// the other.
pub fn key_matches_certificate(
    private: &jsonwebtoken::EncodingKey,
    private_alg: jsonwebtoken::Algorithm,
    cert_pem: &str,
) -> Result<(), String> {
    use jsonwebtoken::{Header, Validation};
    let (public, alg) = certificate_key(cert_pem).map_err(|e| format!("client.certificate {e}"))?;
    let mismatch = || {
        "client.private-key is not the key of client.certificate; send the pair that belongs together".to_owned()
    };
    if alg != private_alg {
        return Err(mismatch());
    }
    let signed =
        jsonwebtoken::encode(&Header::new(alg), &PROBE, private).map_err(|_| mismatch())?;
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(&signed, &public, &validation).map_err(|_| mismatch())?;
    Ok(())
}

fn url(body: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => http_url(text, at).map(Some),
        Some(_) => Err(format!("{at} must be a string")),
    }
}

/// The SHA-1 and SHA-256 thumbprints of the first certificate's DER,
/// base64url: the `x5t` and `x5t#S256` header parameters (RFC 7515 §4.1.7–8).
pub fn certificate_thumbprints(pem_text: &str) -> Result<(String, String), String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use sha1::Digest as _;
    let first = crate::pem_guard::blocks(pem_text)?
        .into_iter()
        .next()
        .ok_or("holds no certificate")?;
    let der = first.contents();
    Ok((
        URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der)),
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)),
    ))
}

impl IdentityProvider {
    /// The identifier system of the Users this provider signs in: `system`,
    /// else `issuer`, else one made from the provider's id.
    pub fn user_system(&self) -> String {
        self.system
            .clone()
            .or_else(|| self.issuer.clone())
            .unwrap_or_else(|| format!("urn:fhirbox:identity-provider:{}", self.id))
    }

    /// The vault secrets this provider uses, by name.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        [&self.secret, &self.private_key, &self.certificate]
            .into_iter()
            .filter_map(|slot| match slot {
                Some(SecretSlot::Vault(name)) => Some(name.as_str()),
                _ => None,
            })
    }

    /// Reads a stored (or about-to-be-stored) IdentityProvider; the error
    /// says what to fix, naming the element.
    pub fn parse(body: &Value) -> Result<IdentityProvider, String> {
        let Some(fields) = body.as_object() else {
            return Err("must be a JSON object".into());
        };
        let id = fields
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let active = crate::fields::active(body)?;
        let system = fields
            .get("system")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let authorize_endpoint = url(fields, "authorize_endpoint", "authorize_endpoint")?;
        let token_endpoint = url(fields, "token_endpoint", "token_endpoint")?;
        let userinfo_endpoint = url(fields, "userinfo_endpoint", "userinfo_endpoint")?;
        let jwks_uri = url(fields, "jwks_uri", "jwks_uri")?;
        if fields.get("userinfo-source").and_then(Value::as_str) == Some("userinfo-endpoint")
            && userinfo_endpoint.is_none()
        {
            return Err("userinfo-source \"userinfo-endpoint\" needs userinfo_endpoint".into());
        }
        let client = match fields.get("client") {
            Some(Value::Object(client)) => client,
            None | Some(Value::Null) => {
                return Err("client is missing: client.id names fhirbox at the provider".into())
            }
            Some(_) => return Err("client must be an object".into()),
        };
        let client_id = match client.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err("client.id must be the id fhirbox has at the provider".into()),
        };
        let redirect_uri = url(client, "redirect_uri", "client.redirect_uri")?;
        let auth_method = match client.get("auth-method").and_then(Value::as_str) {
            None | Some("symmetric") => AuthMethod::Symmetric,
            Some("asymmetric") => AuthMethod::Asymmetric,
            Some(other) => {
                return Err(format!(
                    "client.auth-method {other:?} is not known; use \"symmetric\" (a client secret) or \"asymmetric\" (a private key)"
                ))
            }
        };
        let secret = slot(client, "secret", "client.secret")?;
        let private_key = slot(client, "private-key", "client.private-key")?;
        let certificate = slot(client, "certificate", "client.certificate")?;
        let secret_method = match (
            auth_method,
            client.get("token_endpoint_auth_method").and_then(Value::as_str),
        ) {
            (AuthMethod::Symmetric, None | Some("client_secret_basic")) => SecretMethod::Basic,
            (AuthMethod::Symmetric, Some("client_secret_post")) => SecretMethod::Post,
            (AuthMethod::Asymmetric, None | Some("private_key_jwt")) => SecretMethod::Basic,
            (_, Some(other)) => {
                return Err(format!(
                    "client.token_endpoint_auth_method {other:?} does not fit client.auth-method: symmetric takes client_secret_basic or client_secret_post, asymmetric private_key_jwt"
                ))
            }
        };
        let scopes = match fields.get("scopes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|s| {
                    s.as_str()
                        .filter(|s| !s.is_empty() && !s.contains(' '))
                        .map(str::to_owned)
                        .ok_or("scopes must be an array of scope names without spaces")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("scopes must be an array of strings".into()),
        };
        let issuer = match fields.get("issuer") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(http_url(text, "issuer")?),
            Some(_) => return Err("issuer must be the provider's issuer identifier (a URL)".into()),
        };
        let userinfo_source = match fields.get("userinfo-source").and_then(Value::as_str) {
            Some("userinfo-endpoint") => UserinfoSource::UserinfoEndpoint,
            _ => UserinfoSource::IdToken,
        };
        match auth_method {
            AuthMethod::Symmetric if secret.is_none() => {
                return Err("client.auth-method \"symmetric\" needs client.secret, or a secret reference in client._secret".into())
            }
            AuthMethod::Asymmetric if private_key.is_none() => {
                return Err("client.auth-method \"asymmetric\" needs client.private-key, or a secret reference in client._private-key".into())
            }
            _ => {}
        }
        if certificate.is_some() && private_key.is_none() {
            return Err(
                "client.certificate belongs to client.private-key, which is missing".into(),
            );
        }
        // Literal values are checked now; vault-backed ones will be at use.
        let key = match client.get("private-key") {
            Some(Value::String(key)) => {
                Some(check_private_key(key).map_err(|e| format!("client.private-key {e}"))?)
            }
            _ => None,
        };
        if let Some(Value::String(cert)) = client.get("certificate") {
            check_certificate(cert).map_err(|e| format!("client.certificate {e}"))?;
            if let Some((key, alg)) = &key {
                key_matches_certificate(key, *alg, cert)?;
            }
        }
        Ok(IdentityProvider {
            id,
            version: 0,
            active,
            system,
            issuer,
            authorize_endpoint,
            token_endpoint,
            userinfo_endpoint,
            jwks_uri,
            scopes,
            userinfo_source,
            client_id,
            redirect_uri,
            auth_method,
            secret_method,
            secret,
            private_key,
            certificate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::reference;
    use serde_json::json;

    fn problem(body: Value) -> String {
        match IdentityProvider::parse(&body) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => e,
        }
    }

    #[test]
    fn both_ways_of_authenticating_parse() {
        let symmetric = IdentityProvider::parse(&json!({"id": "okta", "type": "OIDC", "system": "https://okta.example",
            "authorize_endpoint": "https://okta.example/authorize", "token_endpoint": "https://okta.example/token",
            "client": {"id": "fhirbox", "secret": "s3cret", "redirect_uri": "https://fhirbox.example/auth/callback/okta"}}))
        .unwrap();
        assert_eq!(symmetric.auth_method, AuthMethod::Symmetric);
        assert!(symmetric.active);
        let asymmetric = IdentityProvider::parse(&json!({"id": "azure", "active": false,
            "client": {"id": "app", "auth-method": "asymmetric", "_private-key": reference("key"), "_certificate": reference("cert")}}))
        .unwrap();
        assert_eq!(asymmetric.auth_method, AuthMethod::Asymmetric);
        assert!(!asymmetric.active);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        assert!(problem(json!({"type": "OIDC"})).contains("client is missing"));
        assert!(problem(json!({"client": {"secret": "s"}})).contains("client.id"));
        assert!(problem(json!({"client": {"id": "x"}})).contains("needs client.secret"));
        assert!(problem(
            json!({"client": {"id": "x", "auth-method": "asymmetric", "secret": "s"}})
        )
        .contains("needs client.private-key"));
        assert!(
            problem(json!({"client": {"id": "x", "auth-method": "mtls"}})).contains("not known")
        );
        assert!(
            problem(json!({"client": {"id": "x", "secret": "s", "_secret": reference("s")}}))
                .contains("both")
        );
        assert!(problem(
            json!({"client": {"id": "x", "secret": "s", "_certificate": reference("c")}})
        )
        .contains("private-key, which is missing"));
        assert!(problem(
            json!({"token_endpoint": "ftp://x/token", "client": {"id": "x", "secret": "s"}})
        )
        .contains("http or https"));
        assert!(problem(
            json!({"userinfo-source": "userinfo-endpoint", "client": {"id": "x", "secret": "s"}})
        )
        .contains("needs userinfo_endpoint"));
        let key = |pem: &str| json!({"client": {"id": "x", "auth-method": "asymmetric", "private-key": pem}});
        assert!(problem(key("not a pem")).contains("client.private-key"));
        assert!(problem(key(
            "-----BEGIN PUBLIC KEY-----\nMAMCAQA=\n-----END PUBLIC KEY-----\n"
        ))
        .contains("must be a PEM private key"));
        assert!(problem(key(
            "-----BEGIN EC PRIVATE KEY-----\nMAMCAQA=\n-----END EC PRIVATE KEY-----\n"
        ))
        .contains("PKCS#8"));
        assert!(problem(key(
            "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n"
        ))
        .contains("RSA or EC (P-256, P-384) private key"));
        let cert = json!({"client": {"id": "x", "auth-method": "asymmetric", "_private-key": reference("k"),
            "certificate": "-----BEGIN PRIVATE KEY-----\nMAMCAQA=\n-----END PRIVATE KEY-----\n"}});
        assert!(problem(cert).contains("certificates only"));
    }
}
