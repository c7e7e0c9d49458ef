//! The ID tokens fhirbox gives applications that ask for `openid` (OpenID
//! Connect Core §2, §3.1.3.3): signed with the private key in the file
//! `BOX_AUTH_ID_TOKEN_KEY_FILE` names, whose public half `/auth/jwks`
//! publishes (RFC 7517) under its RFC 7638 thumbprint as `kid`. The file is
//! read again when its size or modification time changes, and at least
//! every [`RELOAD_EVERY`], so a rotated key applies within seconds
//! (docs/sign-in.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// How long an ID token is good for: the application checks it at once.
pub const ID_TOKEN_LIFETIME: u64 = 300;

/// The longest a loaded key is used without reading its file again.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The ID-token key, by the path of its file, and the issuer it names.
pub struct IdTokenKey {
    path: PathBuf,
    issuer: String,
    /// The key last read, with the file's size and modification time then.
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    read_at: Instant,
    stamp: (u64, Option<SystemTime>),
    loaded: Arc<Loaded>,
}

/// The key as read just now.
struct Loaded {
    key: EncodingKey,
    alg: Algorithm,
    jwk: Jwk,
}

impl IdTokenKey {
    pub fn new(path: PathBuf, issuer: String) -> IdTokenKey {
        IdTokenKey {
            path,
            issuer,
            cached: Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Reads and checks the key: one unencrypted PEM private key (PKCS#8,
    /// or PKCS#1 for RSA) that signs. The error names what to fix, never
    /// the key.
    pub fn check(&self) -> Result<Algorithm, String> {
        self.load().map(|loaded| loaded.alg)
    }

    fn load(&self) -> Result<Arc<Loaded>, String> {
        let metadata = std::fs::metadata(&self.path)
            .map_err(|e| format!("{} cannot be read: {e}", self.path.display()))?;
        let stamp = (metadata.len(), metadata.modified().ok());
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref() {
            if c.stamp == stamp && c.read_at.elapsed() < RELOAD_EVERY {
                return Ok(c.loaded.clone());
            }
        }
        let loaded = Arc::new(self.read(&metadata)?);
        *cached = Some(Cached {
            read_at: Instant::now(),
            stamp,
            loaded: loaded.clone(),
        });
        Ok(loaded)
    }

    fn read(&self, metadata: &std::fs::Metadata) -> Result<Loaded, String> {
        if metadata.len() > crate::pem_guard::MAX_PEM_BYTES as u64 {
            return Err(format!("{} is larger than a PEM key", self.path.display()));
        }
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("{} cannot be read: {e}", self.path.display()))?;
        let (key, alg) = crate::identity_provider::check_private_key(&text)
            .map_err(|e| format!("{} {e}", self.path.display()))?;
        let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(|_| {
            format!(
                "{} holds a key whose public half cannot be published",
                self.path.display()
            )
        })?;
        jwk.common.key_id = Some(
            jwk.thumbprint(ThumbprintHash::SHA256)
                .map_err(|_| "the key has no thumbprint".to_owned())?,
        );
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Loaded { key, alg, jwk })
    }

    /// The key set `/auth/jwks` serves.
    pub fn key_set(&self) -> Result<JwkSet, String> {
        Ok(JwkSet {
            keys: vec![self.load()?.jwk.clone()],
        })
    }

    /// Signs an ID token with `claims` (which must hold `sub`, `aud`,
    /// `nonce` when there is one); `iss`, `iat` and `exp` are added.
    pub fn sign(&self, mut claims: serde_json::Map<String, Value>) -> Result<String, String> {
        let loaded = self.load()?;
        let now = crate::token::now_seconds();
        claims.insert("iss".into(), Value::String(self.issuer.clone()));
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ID_TOKEN_LIFETIME).into());
        let mut header = Header::new(loaded.alg);
        header.kid = loaded.jwk.common.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &loaded.key)
            .map_err(|_| "the ID-token key could not sign".to_owned())
    }
}
