//! The grants fhirbox gives applications: authorization codes (RFC 6749
//! §4.1.2) and refresh tokens (§6). Each is random, stored only as the
//! SHA-256 of its value in the database (`fhirbox_store::GrantStore`), so
//! any instance redeems what another issued, and only once. A code lives
//! [`CODE_TTL`] and is bound to the client, the redirect URI and the PKCE
//! challenge (RFC 7636) it was issued for. A refresh token is replaced at
//! each use; presenting a used code or refresh token again revokes every
//! refresh token of its family (RFC 9700 §4.14.2).

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fhirbox_store::{GrantStore, Redeemed, Store, StoreError, StoredGrant};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::token::now_seconds;

/// How long a code may wait for its exchange (RFC 6749 §4.1.2 recommends
/// at most 10 minutes; an application exchanges at once).
pub const CODE_TTL: Duration = Duration::from_secs(60);
const CODE: &str = "code";
const REFRESH: &str = "refresh";

/// What a code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub user: String,
    pub scope: Option<String>,
    /// The application's `nonce`, for its ID token.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// What a refresh token stands for; it ends at `until` however often it is
/// replaced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshGrant {
    pub client_id: String,
    pub user: String,
    pub scope: Option<String>,
    pub until: u64,
}

/// What presenting a code or refresh token found.
#[derive(Debug)]
pub enum Redemption<T> {
    /// Its grant, and its family (for the tokens it leads to).
    Fresh(T, String),
    /// Presented before: its family is revoked.
    Replayed,
    Unknown,
}

fn digest(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 random bytes, base64url: a code, a `state`, a nonce, a PKCE verifier.
pub fn random_text() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The grants in the database.
#[derive(Clone)]
pub struct Grants {
    store: Store,
}

impl Grants {
    pub fn new(store: Store) -> Grants {
        Grants { store }
    }

    async fn put(
        &self,
        kind: &str,
        family: String,
        body: &impl Serialize,
        expires_at: u64,
    ) -> Result<String, StoreError> {
        let value = random_text();
        self.store
            .put_grant(
                StoredGrant {
                    digest: digest(&value),
                    kind: kind.to_owned(),
                    family,
                    body: serde_json::to_string(body).expect("a grant serializes"),
                    expires_at: i64::try_from(expires_at).unwrap_or(i64::MAX),
                },
                i64::try_from(now_seconds()).unwrap_or(i64::MAX),
            )
            .await?;
        Ok(value)
    }

    async fn redeem<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        value: &str,
    ) -> Result<Redemption<T>, StoreError> {
        let now = i64::try_from(now_seconds()).unwrap_or(i64::MAX);
        match self.store.redeem_grant(&digest(value), kind, now).await? {
            Redeemed::Fresh(grant) => Ok(match serde_json::from_str(&grant.body) {
                Ok(body) => Redemption::Fresh(body, grant.family),
                Err(_) => Redemption::Unknown,
            }),
            Redeemed::Used { family } => {
                let revoked = self.store.revoke_family(&family).await?;
                tracing::warn!(kind, revoked, "a used grant was presented again; the refresh tokens of its family are revoked");
                Ok(Redemption::Replayed)
            }
            Redeemed::Unknown => Ok(Redemption::Unknown),
        }
    }

    /// A new code for `grant`, starting a family.
    pub async fn issue_code(&self, grant: &CodeGrant) -> Result<String, StoreError> {
        self.put(
            CODE,
            random_text(),
            grant,
            now_seconds() + CODE_TTL.as_secs(),
        )
        .await
    }

    /// The grant of `code`, which is used up by asking, whatever happens next.
    pub async fn redeem_code(&self, code: &str) -> Result<Redemption<CodeGrant>, StoreError> {
        self.redeem(CODE, code).await
    }

    /// Drops every grant of `family`.
    pub async fn revoke(&self, family: &str) -> Result<u64, StoreError> {
        self.store.revoke_family(family).await
    }

    /// A refresh token of `family` for `grant`.
    pub async fn issue_refresh(
        &self,
        family: String,
        grant: &RefreshGrant,
    ) -> Result<String, StoreError> {
        self.put(REFRESH, family, grant, grant.until).await
    }

    /// The grant of a refresh token, used up by asking.
    pub async fn redeem_refresh(
        &self,
        token: &str,
    ) -> Result<Redemption<RefreshGrant>, StoreError> {
        self.redeem(REFRESH, token).await
    }

    /// After `used` was redeemed and its successor issued: forgets the
    /// family's older used tokens (a replay of one of those is then merely
    /// unknown), so a client refreshing in a loop does not grow the table;
    /// and `false` when the family was revoked meanwhile (by a replay racing
    /// this refresh), in which case the successor is dropped too.
    pub async fn settle_refresh(&self, family: &str, used: &str) -> Result<bool, StoreError> {
        let kept = self
            .store
            .prune_family(family, &format!("{REFRESH}-used"), &digest(used))
            .await?;
        if !kept {
            self.store.revoke_family(family).await?;
        }
        Ok(kept)
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
