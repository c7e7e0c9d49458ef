//! The authorization codes fhirbox gives applications (RFC 6749 §4.1.2):
//! random, kept only as a SHA-256 digest, single-use, alive for
//! [`CODE_TTL`], bound to the client, the redirect URI and the PKCE
//! challenge (RFC 7636) they were issued for.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a code may wait for its exchange (RFC 6749 §4.1.2 recommends
/// at most 10 minutes; an application exchanges at once).
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// The most codes waiting at once; beyond it sign-ins are refused until
/// some are used or expire.
const MAX_CODES: usize = 10_000;

/// What a code stands for.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub user: String,
    pub scope: Option<String>,
    expires: Instant,
}

impl CodeGrant {
    pub fn new(
        client_id: String,
        redirect_uri: String,
        code_challenge: Option<String>,
        user: String,
        scope: Option<String>,
    ) -> CodeGrant {
        CodeGrant {
            client_id,
            redirect_uri,
            code_challenge,
            user,
            scope,
            expires: Instant::now() + CODE_TTL,
        }
    }
}

/// The codes waiting for their exchange, on this instance.
#[derive(Default)]
pub struct Codes {
    waiting: Mutex<HashMap<[u8; 32], CodeGrant>>,
}

fn digest(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

/// 32 random bytes, base64url: a code, a `state`, a nonce, a PKCE verifier.
pub fn random_text() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Codes {
    /// A new code for `grant`; `None` when too many are waiting.
    pub fn issue(&self, grant: CodeGrant) -> Option<String> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= MAX_CODES {
            let now = Instant::now();
            waiting.retain(|_, g| g.expires > now);
            if waiting.len() >= MAX_CODES {
                return None;
            }
        }
        let code = random_text();
        waiting.insert(digest(&code), grant);
        Some(code)
    }

    /// The grant of `code`, which is used up by asking, whatever happens next.
    pub fn take(&self, code: &str) -> Option<CodeGrant> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting
            .remove(&digest(code))
            .filter(|g| g.expires > Instant::now())
    }
}

/// A PKCE `code_verifier` or `code_challenge` as RFC 7636 §4.1–4.2 spell
/// them: 43 to 128 unreserved characters.
pub fn is_pkce_text(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// The S256 challenge of a verifier (RFC 7636 §4.2).
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` answers `challenge` (RFC 7636 §4.6), in constant time.
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    is_pkce_text(verifier)
        && bool::from(
            challenge_of(verifier)
                .as_bytes()
                .ct_eq(challenge.as_bytes()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> CodeGrant {
        CodeGrant::new(
            "app".into(),
            "https://app/cb".into(),
            None,
            "u-1".into(),
            None,
        )
    }

    #[test]
    fn a_code_is_used_once() {
        let codes = Codes::default();
        let code = codes.issue(grant()).unwrap();
        assert_eq!(codes.take(&code).unwrap().user, "u-1");
        assert!(codes.take(&code).is_none());
        assert!(codes.take("made-up").is_none());
    }

    #[test]
    fn an_expired_code_is_refused() {
        let codes = Codes::default();
        let mut old = grant();
        old.expires = Instant::now() - Duration::from_secs(1);
        let code = codes.issue(old).unwrap();
        assert!(codes.take(&code).is_none());
    }

    #[test]
    fn pkce_follows_rfc_7636() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(challenge_of(verifier), challenge);
        assert!(verifier_matches(verifier, challenge));
        assert!(!verifier_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXK",
            challenge
        ));
        assert!(!is_pkce_text("short"));
        assert!(!is_pkce_text(&"a".repeat(129)));
        assert!(!is_pkce_text(&format!("{}+", "a".repeat(43))));
    }
}
