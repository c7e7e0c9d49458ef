//! The server's own access tokens: compact JWTs (RFC 7519) signed with
//! HMAC-SHA256 (RFC 7518 §3.2). Only `HS256` is ever accepted, so `none` and
//! HS/RS confusion are impossible by construction; the signature is checked
//! in constant time before any claim is read.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// `iss` of every token this server issues.
pub const ISSUER: &str = "fhirbox";
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

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

    /// Issues a token for `client_id` valid for `lifetime_secs`.
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

    pub fn issue(&self, client_id: &str, generation: &str, lifetime_secs: u64) -> (String, Claims) {
        let iat = now_seconds();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: client_id.to_owned(),
            iat,
            exp: iat.saturating_add(lifetime_secs),
            jti: uuid::Uuid::new_v4().to_string(),
            gen: generation.to_owned(),
        };
        let payload = serde_json::to_vec(&claims).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{signing_input}.{signature}"), claims)
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| fhirbox_fhir::json::from_slice_strict(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header_json.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(TokenError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| fhirbox_fhir::json::from_slice_strict(&b).ok())
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        if claims.exp <= now_seconds() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
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
    fn expired_tokens_are_refused() {
        let (token, _) = signer().issue("basic", "1", 0);
        assert_eq!(signer().verify(&token), Err(TokenError::Expired));
    }
}
