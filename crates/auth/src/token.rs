//! The server's own access tokens: compact JWTs (RFC 7519) signed with
//! HMAC-SHA256 (RFC 7518 §3.2), made and checked by `jsonwebtoken` (the same
//! library external issuers' tokens will go through). Only `HS256` is ever
//! accepted, so `none` and HS/RS confusion are impossible; the signature is
//! checked before any claim is read.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `iss` of every token this server issues.
pub const ISSUER: &str = "fhirbox";

/// Claims fhirbox puts in (and requires of) its tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// The client id.
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// The generation of the client the token was issued to (its version,
    /// or a fingerprint of root's secret): a token dies when its client is
    /// changed, deleted or re-created.
    #[serde(default)]
    pub gen: String,
    /// The User the token acts for, when it came from a sign-in
    /// (docs/sign-in.md); `sub` is then the application's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usr: Option<String>,
}

/// Why a token was refused (logged and counted, never sent in detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    Issuer,
    /// Well signed, but its client changed since it was issued.
    Revoked,
}

impl TokenError {
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::Issuer => "token_issuer",
            TokenError::Revoked => "token_revoked",
        }
    }
}

/// Signs and verifies tokens with one symmetric key.
pub struct TokenSigner {
    key: SecretBox<Vec<u8>>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner([REDACTED])")
    }
}

pub fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenSigner {
    pub fn new(key: Vec<u8>) -> TokenSigner {
        TokenSigner {
            key: SecretBox::new(Box::new(key)),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length (RFC 2104), so this cannot fail.
        HmacSha256::new_from_slice(self.key.expose_secret()).expect("HMAC takes any key length")
    }

    /// A short keyed fingerprint (HMAC-SHA256, first 8 bytes in hex).
    pub fn fingerprint(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.mac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The full HMAC-SHA256 of `parts` (each length-prefixed): seals state
    /// that travels through a browser.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Issues a token for `user` through the application `client_id`.
    pub fn issue_for_user(
        &self,
        client_id: &str,
        generation: &str,
        user: &str,
        lifetime_secs: u64,
    ) -> (String, Claims) {
        self.sign(client_id, generation, Some(user), lifetime_secs)
    }

    /// Issues a token for `client_id` valid for `lifetime_secs`. The keys
    /// are made from the redacted secret at each use (a copy of 32 bytes),
    /// so no long-lived copy of it sits outside `SecretBox`.
    pub fn issue(&self, client_id: &str, generation: &str, lifetime_secs: u64) -> (String, Claims) {
        self.sign(client_id, generation, None, lifetime_secs)
    }

    fn sign(
        &self,
        client_id: &str,
        generation: &str,
        user: Option<&str>,
        lifetime_secs: u64,
    ) -> (String, Claims) {
        let iat = now_seconds();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: client_id.to_owned(),
            iat,
            exp: iat.saturating_add(lifetime_secs),
            jti: uuid::Uuid::new_v4().to_string(),
            gen: generation.to_owned(),
            usr: user.map(str::to_owned),
        };
        let token = EncodingKey::from_secret(self.key.expose_secret())
            .and_then(|key| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key))
            .unwrap_or_default();
        (token, claims)
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        // The header is read strictly first (one `alg`, and only HS256), so
        // `none` and algorithm confusion are refused before the library is
        // asked, with a reason of their own.
        let header = token.split('.').next().unwrap_or_default();
        let header_json: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| fhirbox_fhir::json::from_slice_strict(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        // No leeway: the server checks its own clock. A token whose `exp` is
        // now is already expired (RFC 7519 §4.1.4: "on or after").
        validation.leeway = 0;
        validation.reject_tokens_expiring_in_less_than = 1;
        let key = DecodingKey::from_secret(self.key.expose_secret())
            .map_err(|_| TokenError::Signature)?;
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => TokenError::Expired,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                _ => TokenError::Malformed,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> TokenSigner {
        TokenSigner::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn issued_tokens_verify() {
        let (token, claims) = signer().issue("basic", "1", 60);
        assert_eq!(signer().verify(&token).unwrap(), claims);
        assert_eq!(claims.sub, "basic");
    }

    #[test]
    fn tampering_other_keys_and_algorithms_are_refused() {
        let (token, _) = signer().issue("basic", "1", 60);
        let parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD
            .encode(br#"{"iss":"fhirbox","sub":"root","iat":0,"exp":99999999999,"jti":"x"}"#);
        let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(signer().verify(&tampered), Err(TokenError::Signature));
        let other = TokenSigner::new(b"another key that is long enough!!".to_vec());
        assert_eq!(other.verify(&token), Err(TokenError::Signature));
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            signer().verify(&format!("{none_header}.{}.", parts[1])),
            Err(TokenError::Algorithm)
        );
        let rs_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        assert_eq!(
            signer().verify(&format!("{rs_header}.{}.{}", parts[1], parts[2])),
            Err(TokenError::Algorithm)
        );
        assert_eq!(signer().verify("a.b"), Err(TokenError::Malformed));
        // A header that names its algorithm twice is not a token of ours.
        let twice = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","alg":"HS256"}"#);
        assert_eq!(
            signer().verify(&format!("{twice}.{}.{}", parts[1], parts[2])),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            signer().verify(&format!("{token}.x")),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn well_signed_tokens_with_wrong_claims_are_refused() {
        let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        let later = now_seconds() + 600;
        let other_issuer = sign(
            serde_json::json!({"iss": "someone-else", "sub": "basic", "iat": 0, "exp": later, "jti": "x", "gen": "1"}),
        );
        assert_eq!(signer().verify(&other_issuer), Err(TokenError::Issuer));
        let no_subject =
            sign(serde_json::json!({"iss": ISSUER, "iat": 0, "exp": later, "jti": "x"}));
        assert_eq!(signer().verify(&no_subject), Err(TokenError::Malformed));
        let no_expiry =
            sign(serde_json::json!({"iss": ISSUER, "sub": "basic", "iat": 0, "jti": "x"}));
        assert_eq!(signer().verify(&no_expiry), Err(TokenError::Malformed));
        let fine = sign(
            serde_json::json!({"iss": ISSUER, "sub": "basic", "iat": 0, "exp": later, "jti": "x", "gen": "1"}),
        );
        assert_eq!(signer().verify(&fine).unwrap().gen, "1");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (token, _) = signer().issue("basic", "1", 0);
        assert_eq!(signer().verify(&token), Err(TokenError::Expired));
    }
}
