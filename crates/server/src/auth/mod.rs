//! Authentication and authorization (SPEC section 3): the root client,
//! `Client` resources (HTTP Basic, `client_credentials` tokens) and
//! `AccessPolicy` resources, all served from an in-memory snapshot so the hot
//! path neither hits the database nor runs the KDF for a credential it has
//! recently verified.

pub mod access;
pub mod clients;
pub mod credentials;
pub mod endpoint;
pub mod layer;
pub mod policy;
pub mod secret_hash;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fhirbox_store::{ChangeMarker, ResourceSearch, SearchQuery, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use clients::{ClientRecord, ClientSecret, Grant};
use policy::Policy;
use token::TokenSigner;

/// Resource types whose changes invalidate the snapshot.
pub const AUTH_TYPES: &[&str] = &["Client", "AccessPolicy"];

/// How long a verified (client, secret) pair is trusted without the KDF.
const VERIFIED_TTL: Duration = Duration::from_secs(30);
/// Bound on remembered verifications; the map is cleared when it is full.
const VERIFIED_MAX: usize = 10_000;
/// How long one KDF run takes here, measured once at start: the time every
/// failed secret check is padded to until real runs refine it.
async fn measure_kdf() -> std::time::Duration {
    tokio::task::spawn_blocking(|| {
        let started = Instant::now();
        let _ = secret_hash::hash(b"fhirbox: calibrating the KDF");
        started.elapsed()
    })
    .await
    .unwrap_or(std::time::Duration::from_millis(50))
}

/// Page size when loading clients and policies.
const LOAD_PAGE: u32 = 1000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Root { id: String },
    Client { id: String },
}

impl Identity {
    pub fn id(&self) -> &str {
        match self {
            Identity::Root { id } | Identity::Client { id } => id,
        }
    }
}

/// Why authentication failed; the reason is logged and counted, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    MissingCredentials,
    MalformedHeader,
    UnknownClient,
    WrongSecret,
    InactiveClient,
    GrantNotAllowed,
    NoSecret,
    SecretUnavailable,
    Throttled,
    Token(token::TokenError),
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::MalformedHeader => "malformed_header",
            AuthFailure::UnknownClient => "unknown_client",
            AuthFailure::WrongSecret => "wrong_secret",
            AuthFailure::InactiveClient => "inactive_client",
            AuthFailure::GrantNotAllowed => "grant_not_allowed",
            AuthFailure::NoSecret => "no_secret",
            AuthFailure::SecretUnavailable => "secret_unavailable",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Token(e) => e.reason(),
        }
    }
}

/// Clients and policies as last loaded.
#[derive(Default)]
struct Snapshot {
    clients: HashMap<String, Arc<ClientRecord>>,
    policies: Vec<Policy>,
}

struct RootCredential {
    id: String,
    digest: [u8; 32],
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The authenticator and authorizer of one server.
pub struct AuthService {
    root: Option<RootCredential>,
    signer: TokenSigner,
    snapshot: RwLock<Arc<Snapshot>>,
    /// History position the snapshot reflects.
    marker: AtomicI64,
    /// Digest of (client, version, secret) -> when the verification expires.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    kdf: throttle::KdfGate,
    reload: tokio::sync::Mutex<()>,
    vault: Option<fhirbox_secrets::SecretResolver>,
}

impl AuthService {
    /// Builds the service and loads clients and policies from `store`.
    pub async fn start(
        store: &Store,
        root: Option<(&str, &SecretString)>,
        signing_key: Option<&SecretString>,
        vault: Option<fhirbox_secrets::SecretResolver>,
    ) -> Result<AuthService, StoreError> {
        let signer = match signing_key {
            Some(key) => TokenSigner::new(key.expose_secret().as_bytes().to_vec()),
            None => {
                use argon2::password_hash::rand_core::{OsRng, RngCore};
                let mut key = vec![0u8; 32];
                OsRng.fill_bytes(&mut key);
                tracing::warn!(
                    "BOX_SECURITY_AUTH_KEYS_SECRET is not set: access tokens are signed with a random key and will not survive a restart or work across instances"
                );
                TokenSigner::new(key)
            }
        };
        if root.is_none() {
            tracing::warn!("no root client: set BOX_ROOT_CLIENT_SECRET or BOX_ROOT_CLIENT_SECRET_FILE to create one");
        }
        let service = AuthService {
            root: root.map(|(id, secret)| RootCredential {
                id: id.to_owned(),
                digest: sha256(&[secret.expose_secret().as_bytes()]),
            }),
            signer,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            marker: AtomicI64::new(-1),
            verified: Mutex::new(HashMap::new()),
            kdf: throttle::KdfGate::new(measure_kdf().await),
            reload: tokio::sync::Mutex::new(()),
            vault,
        };
        service.reload(store).await?;
        Ok(service)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads every Client and AccessPolicy and swaps the snapshot whole.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let _guard = self.reload.lock().await;
        let marker = store.latest_change(AUTH_TYPES).await?;
        let mut snapshot = Snapshot::default();
        for resource_type in AUTH_TYPES {
            let mut query = SearchQuery {
                resource_type: Some((*resource_type).to_owned()),
                count: LOAD_PAGE,
                ..Default::default()
            };
            loop {
                let page = store.search(query.clone()).await?;
                for stored in &page.resources {
                    let Ok(body) = serde_json::from_str::<Value>(&stored.body) else {
                        tracing::error!(resource_type, id = %stored.id, "stored body is not JSON; ignored");
                        continue;
                    };
                    let parsed = match *resource_type {
                        "Client" => ClientRecord::from_body(&body, stored.version_id).map(|c| {
                            snapshot.clients.insert(c.id.clone(), Arc::new(c));
                        }),
                        _ => Policy::parse(&body).map(|p| snapshot.policies.push(p)),
                    };
                    if let Err(problem) = parsed {
                        tracing::warn!(resource_type, id = %stored.id, %problem, "stored resource cannot be used for access control; ignored");
                    }
                }
                match page.next {
                    Some(next) => query.cursor = Some(next),
                    None => break,
                }
            }
        }
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.marker.store(marker, Ordering::SeqCst);
        // Verified entries stay: each is keyed by the client's version, so a
        // changed or re-created client never matches an old entry, and an
        // unrelated write does not send every client back to the KDF.
        Ok(())
    }

    /// Reloads when another instance changed clients or policies.
    pub async fn reload_if_changed(&self, store: &Store) -> Result<bool, StoreError> {
        let latest = store.latest_change(AUTH_TYPES).await?;
        if latest == self.marker.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.reload(store).await?;
        Ok(true)
    }

    /// Checks an id and secret for `grant`. Credentials are checked before
    /// anything else about the client, and every failure takes about one
    /// KDF run (`throttle`), so neither the answer nor its timing tells an
    /// unknown id from a known one.
    pub async fn verify_secret(
        &self,
        id: &str,
        secret: &SecretString,
        grant: Grant,
    ) -> Result<Identity, AuthFailure> {
        let started = Instant::now();
        let result = self.check_secret(id, secret).await;
        let result = result.and_then(|client| match client {
            None => Ok(Identity::Root { id: id.to_owned() }),
            Some(client) if !client.active => Err(AuthFailure::InactiveClient),
            Some(client) if !client.allows(grant) => Err(AuthFailure::GrantNotAllowed),
            Some(client) => Ok(Identity::Client {
                id: client.id.clone(),
            }),
        });
        if let Err(failure) = result {
            if failure != AuthFailure::GrantNotAllowed {
                self.kdf.pad(started).await;
            }
        }
        result
    }

    /// Checks the secret alone; `Ok(None)` is root, `Ok(Some)` a client.
    async fn check_secret(
        &self,
        id: &str,
        secret: &SecretString,
    ) -> Result<Option<Arc<ClientRecord>>, AuthFailure> {
        let presented = secret.expose_secret().as_bytes();
        if let Some(root) = &self.root {
            if root.id == id {
                let digest = sha256(&[presented]);
                return if bool::from(digest.ct_eq(&root.digest)) {
                    Ok(None)
                } else {
                    Err(AuthFailure::WrongSecret)
                };
            }
        }
        let client = self
            .snapshot()
            .clients
            .get(id)
            .cloned()
            .ok_or(AuthFailure::UnknownClient)?;
        match &client.secret {
            ClientSecret::None => Err(AuthFailure::NoSecret),
            ClientSecret::Reference(name) => self
                .verify_vault_secret(&client.id, name, presented)
                .map(|()| Some(client.clone())),
            ClientSecret::Hash(phc) => {
                let key = sha256(&[id.as_bytes(), &client.version_id.to_be_bytes(), presented]);
                if self.recently_verified(&key) {
                    return Ok(Some(client));
                }
                let id_key = sha256(&[id.as_bytes()]);
                let Some(_permit) = self.kdf.admit(&id_key).await else {
                    return Err(AuthFailure::Throttled);
                };
                // Checked again with a slot held: when many requests miss at once
                // (a cold start, an expired entry), the first verification serves
                // the rest instead of each running the KDF.
                if self.recently_verified(&key) {
                    return Ok(Some(client));
                }
                let phc = phc.clone();
                let candidate = secret.clone();
                let kdf_started = Instant::now();
                let ok = tokio::task::spawn_blocking(move || {
                    secret_hash::verify(candidate.expose_secret().as_bytes(), &phc)
                })
                .await
                .unwrap_or(false);
                self.kdf.observe(kdf_started.elapsed());
                if !ok {
                    self.kdf.record_failure(id_key);
                    return Err(AuthFailure::WrongSecret);
                }
                self.kdf.clear(&id_key);
                self.remember(key);
                Ok(Some(client))
            }
        }
    }

    /// Checks a presented secret against the vault secret `name`, resolved now
    /// for `Client/<id>` (scope is checked at every use, SPEC 1.2). The resolver
    /// compares SHA-256 digests in constant time and honours `rotation_grace`.
    fn verify_vault_secret(
        &self,
        id: &str,
        name: &str,
        presented: &[u8],
    ) -> Result<(), AuthFailure> {
        let Some(vault) = &self.vault else {
            tracing::warn!(
                client = id,
                secret = name,
                reason = "vault_disabled",
                "client refers to an external secret but external secrets are off"
            );
            return Err(AuthFailure::SecretUnavailable);
        };
        match vault.verify_client_secret(
            name,
            &fhirbox_secrets::Requester::new("Client", id),
            presented,
        ) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthFailure::WrongSecret),
            Err(e) => {
                tracing::warn!(client = id, secret = name, reason = e.reason(), problem = %e, "external secret unusable");
                Err(AuthFailure::SecretUnavailable)
            }
        }
    }

    fn recently_verified(&self, key: &[u8; 32]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified
            .get(key)
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn remember(&self, key: [u8; 32]) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key, Instant::now() + VERIFIED_TTL);
    }

    /// Root's token generation: a fingerprint of its secret, so root's
    /// tokens die when the secret changes.
    fn root_generation(root: &RootCredential) -> String {
        let digest = sha256(&[b"fhirbox root token generation", &root.digest]);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks a Bearer token issued by this server. The token names the
    /// generation of its client; a changed, deleted or re-created client
    /// has another one.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthFailure> {
        let claims = self.signer.verify(token).map_err(AuthFailure::Token)?;
        let stale = AuthFailure::Token(token::TokenError::Revoked);
        if let Some(root) = &self.root {
            if root.id == claims.sub {
                return if claims.gen == Self::root_generation(root) {
                    Ok(Identity::Root {
                        id: root.id.clone(),
                    })
                } else {
                    Err(stale)
                };
            }
        }
        let client = self
            .snapshot()
            .clients
            .get(&claims.sub)
            .cloned()
            .ok_or(AuthFailure::UnknownClient)?;
        if claims.gen != client.version_id.to_string() {
            return Err(stale);
        }
        if !client.active {
            return Err(AuthFailure::InactiveClient);
        }
        if !client.allows(Grant::ClientCredentials) {
            return Err(AuthFailure::GrantNotAllowed);
        }
        Ok(Identity::Client {
            id: client.id.clone(),
        })
    }

    /// Issues an access token; returns (token, expires_in seconds).
    pub fn issue_token(&self, identity: &Identity) -> (String, u64) {
        let (generation, lifetime) = match identity {
            Identity::Root { .. } => (
                self.root
                    .as_ref()
                    .map(Self::root_generation)
                    .unwrap_or_default(),
                clients::DEFAULT_TOKEN_LIFETIME,
            ),
            Identity::Client { id } => self
                .snapshot()
                .clients
                .get(id)
                .map_or((String::new(), clients::DEFAULT_TOKEN_LIFETIME), |c| {
                    (c.version_id.to_string(), c.token_lifetime)
                }),
        };
        let (token, _) = self.signer.issue(identity.id(), &generation, lifetime);
        (token, lifetime)
    }
}

/// Keeps the snapshot in step with changes made through other instances.
pub fn spawn_recheck(auth: &Arc<AuthService>, store: Store, every: Duration) {
    let weak = Arc::downgrade(auth);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(auth) = weak.upgrade() else { break };
            if let Err(e) = auth.reload_if_changed(&store).await {
                tracing::warn!(error = %e, "could not re-check clients and policies");
            }
        }
    });
}
