//! Authentication and authorization (docs/security.md): the root client,
//! `Client` resources (HTTP Basic, `client_credentials` tokens) and
//! `AccessPolicy` resources, all served from an in-memory snapshot so the hot
//! path neither hits the database nor runs the KDF for a credential it has
//! recently verified.

pub mod access;
pub mod clients;
pub mod external;
pub mod fields;
pub mod identity_provider;
pub mod pem_guard;
pub mod policy;
pub mod secret_hash;
pub mod signin;
pub mod throttle;
pub mod token;
pub mod users;
pub mod write_rules;

#[cfg(test)]
mod test_support {
    /// A masked secret-reference element naming vault secret `name`.
    pub fn reference(name: &str) -> serde_json::Value {
        serde_json::json!({"extension": [
            {"url": fhirbox_fhir::secret_fields::DATA_ABSENT_REASON_URL, "valueCode": "masked"},
            {"url": fhirbox_fhir::secret_fields::SECRET_REFERENCE_URL, "valueString": name}
        ]})
    }
}

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fhirbox_store::{ChangeWatch, Reload, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use clients::{ClientRecord, ClientSecret, Grant};
use policy::Policy;
use token::TokenSigner;

/// Resource types whose changes invalidate the snapshot.
pub const AUTH_TYPES: &[&str] = &[
    "Client",
    "AccessPolicy",
    "TokenIntrospector",
    "IdentityProvider",
    "User",
];

/// How long a verified (client, version, secret) triple is trusted without the KDF after its last use.
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

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Root {
        id: String,
    },
    Client {
        id: String,
    },
    /// The bearer of another issuer's token (docs/tokens.md).
    External(Arc<external::External>),
    /// A User signed in through an application (docs/sign-in.md).
    User {
        client: String,
        user: String,
    },
}

impl Identity {
    /// Who the caller is, for logs: a client's id, or an external token's
    /// user (else its introspector).
    pub fn id(&self) -> &str {
        match self {
            Identity::Root { id } | Identity::Client { id } => id,
            Identity::User { user, .. } => user,
            Identity::External(caller) => {
                // Another issuer chose this name: logs get at most 128 bytes of it.
                let user = caller.user.as_deref().unwrap_or(&caller.introspector);
                let mut end = user.len().min(128);
                while !user.is_char_boundary(end) {
                    end -= 1;
                }
                &user[..end]
            }
        }
    }
}

/// A caller whose secret was just checked, with what its tokens are bound to.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: Identity,
    generation: String,
    lifetime: u64,
    /// The client's grant types (`None` for root, which has every one).
    grants: Option<Vec<String>>,
}

impl Verified {
    /// Whether the verified caller may use `grant`.
    pub fn allows(&self, grant: Grant) -> bool {
        self.grants
            .as_ref()
            .is_none_or(|grants| grants.iter().any(|g| g == grant.code()))
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
    InactiveUser,
    GrantNotAllowed,
    NoSecret,
    SecretUnavailable,
    Throttled,
    Token(token::TokenError),
    External(external::ExternalFailure),
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::MissingCredentials => "missing_credentials",
            AuthFailure::MalformedHeader => "malformed_header",
            AuthFailure::UnknownClient => "unknown_client",
            AuthFailure::WrongSecret => "wrong_secret",
            AuthFailure::InactiveClient => "inactive_client",
            AuthFailure::InactiveUser => "inactive_user",
            AuthFailure::GrantNotAllowed => "grant_not_allowed",
            AuthFailure::NoSecret => "no_secret",
            AuthFailure::SecretUnavailable => "secret_unavailable",
            AuthFailure::Throttled => "throttled",
            AuthFailure::Token(e) => e.reason(),
            AuthFailure::External(e) => e.reason(),
        }
    }

    /// True when the credentials could not be checked at all (the issuer or
    /// a key is unavailable): 503 rather than 401 (docs/tokens.md).
    pub fn is_unavailable(self) -> bool {
        matches!(self, AuthFailure::External(e) if e.is_unavailable())
    }

    /// True for a refused Bearer token (the `WWW-Authenticate` challenge names it).
    pub fn is_token(self) -> bool {
        matches!(self, AuthFailure::Token(_) | AuthFailure::External(_))
    }
}

/// Clients and policies as last loaded.
#[derive(Default)]
struct Snapshot {
    clients: HashMap<String, Arc<ClientRecord>>,
    policies: Vec<Policy>,
    /// Sorted by id; the first of several naming one issuer wins.
    introspectors: Vec<Arc<external::introspector::Introspector>>,
    identity_providers: HashMap<String, Arc<identity_provider::IdentityProvider>>,
    users: HashMap<String, Arc<users::UserRecord>>,
    /// Numbers this snapshot: verdicts on tokens reached under another one
    /// are never served (the route a token takes may have changed).
    epoch: u64,
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
    /// The change marker the snapshot reflects, the reload lock and the
    /// gate of early catch-ups (at most every 100 ms).
    watch: ChangeWatch,
    /// The epoch of the last snapshot made.
    epochs: std::sync::atomic::AtomicU64,
    /// Digest of (client, version, secret) -> when the verification expires.
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    kdf: Arc<throttle::KdfGate>,
    vault: Option<fhirbox_secrets::SecretResolver>,
    external: external::ExternalTokens,
    signin: signin::SignIn,
    /// Signs the ID tokens of sign-ins (`BOX_AUTH_ID_TOKEN_KEY_FILE`).
    id_tokens: Option<signin::id_token::IdTokenKey>,
    /// The store the snapshot is loaded from, for catching up early.
    store: Store,
}

/// The least time between two early catch-ups (`AuthService::catch_up`).
const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

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
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key).expect("the operating system's random generator works");
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
            watch: ChangeWatch::new(AUTH_TYPES, CATCH_UP_EVERY),
            epochs: std::sync::atomic::AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            kdf: Arc::new(throttle::KdfGate::new(measure_kdf().await)),
            vault,
            external: external::ExternalTokens::new(external::ExternalOptions::default()),
            signin: signin::SignIn::new(store.clone(), external::DEFAULT_TIMEOUT),
            id_tokens: None,
            store: store.clone(),
        };
        service.reload(store).await?;
        Ok(service)
    }

    /// Sets how other issuers' tokens are checked (call before sharing the service).
    pub fn configure_external(&mut self, options: external::ExternalOptions) {
        self.signin.provider = signin::provider::ProviderClient::new(options.timeout);
        self.external = external::ExternalTokens::new(options);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads every Client and AccessPolicy and swaps the snapshot whole.
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let reload = self.watch.begin(store).await?;
        self.load(store, reload).await
    }

    /// Reads every Client, AccessPolicy, TokenIntrospector, IdentityProvider
    /// and User (under `reload`'s lock) and swaps the snapshot whole.
    async fn load(&self, store: &Store, reload: Reload<'_>) -> Result<(), StoreError> {
        let mut snapshot = Snapshot::default();
        for resource_type in AUTH_TYPES {
            for stored in &fhirbox_store::load_all(store, resource_type).await? {
                let Ok(body) = serde_json::from_str::<Value>(&stored.body) else {
                    tracing::error!(resource_type, id = %stored.id, "stored body is not JSON; ignored");
                    continue;
                };
                let parsed = match *resource_type {
                "Client" => ClientRecord::from_body(&body, stored.version_id).map(|c| {
                    if let Err(problem) = &c.code_flow {
                        tracing::warn!(client = %c.id, %problem, "the client cannot use the authorization code grant until it is corrected");
                    }
                    snapshot.clients.insert(c.id.clone(), Arc::new(c));
                }),
                "TokenIntrospector" => external::introspector::Introspector::parse(&body)
                    .map(|mut i| {
                        i.id = stored.id.clone();
                        i.version = stored.version_id;
                        snapshot.introspectors.push(Arc::new(i));
                    }),
                "IdentityProvider" => identity_provider::IdentityProvider::parse(&body)
                    .map(|mut p| {
                        p.id = stored.id.clone();
                        p.version = stored.version_id;
                        snapshot
                            .identity_providers
                            .insert(p.id.clone(), Arc::new(p));
                    }),
                "User" => {
                    let user = users::UserRecord::from_body(body, stored.version_id);
                    snapshot.users.insert(stored.id.clone(), Arc::new(user));
                    Ok(())
                }
                _ => Policy::parse(&body).map(|p| snapshot.policies.push(p)),
            };
                if let Err(problem) = parsed {
                    tracing::warn!(resource_type, id = %stored.id, %problem, "stored resource cannot be used for access control; ignored");
                }
            }
        }
        snapshot.introspectors.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, later) in snapshot.introspectors.iter().enumerate() {
            let Some(iss) = later.issuer() else { continue };
            if let Some(first) = snapshot.introspectors[..i]
                .iter()
                .find(|e| e.issuer() == Some(iss))
            {
                tracing::warn!(introspector = %later.id, used = %first.id, issuer = iss, "two TokenIntrospectors name one issuer; only the first by id is used");
            }
        }
        for introspector in &snapshot.introspectors {
            for url in introspector.urls() {
                if external::introspector::is_plain_http_off_host(url) {
                    tracing::warn!(introspector = %introspector.id, url = %external::http::for_log(url), "a TokenIntrospector calls a plain http URL off this host: anyone on the path could change its keys or answers; use https");
                }
            }
        }
        let opaque = snapshot
            .introspectors
            .iter()
            .filter(|i| i.issuer().is_none())
            .count();
        if opaque > 1 {
            tracing::warn!(count = opaque, "several opaque TokenIntrospectors name no issuer; opaque tokens go to the first by id only");
        }
        snapshot.epoch = self.epochs.fetch_add(1, Ordering::SeqCst) + 1;
        self.external.retain(&snapshot.introspectors);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.watch.loaded(reload);
        // Verified entries stay: each is keyed by the client's version, so a
        // changed or re-created client never matches an old entry, and an
        // unrelated write does not send every client back to the KDF.
        Ok(())
    }

    /// Reloads now if another instance changed clients, policies or Users,
    /// rather than at the next periodic re-check: for a token or a code
    /// naming what this instance has not seen yet. At most once per
    /// [`CATCH_UP_EVERY`], so tokens naming what does not exist cannot
    /// make every request query the store.
    pub async fn catch_up(&self) {
        if !self.watch.due() {
            return;
        }
        if let Err(e) = self.reload_if_changed(&self.store).await {
            tracing::warn!(error = %e, "could not catch up with clients, policies and users");
        }
    }

    /// Reloads when another instance changed clients or policies.
    pub async fn reload_if_changed(&self, store: &Store) -> Result<bool, StoreError> {
        let Some(reload) = self.watch.begin_if_changed(store).await? else {
            return Ok(false);
        };
        self.load(store, reload).await?;
        Ok(true)
    }

    /// Checks an id and secret for `grant`, presented from `peer`.
    /// Credentials are checked before anything else about the client, and
    /// every failure costs what a KDF run costs (`throttle`), so neither
    /// the answer nor its timing tells an unknown id from a known one.
    pub async fn verify_secret(
        &self,
        id: &str,
        secret: &SecretString,
        grants: &[Grant],
        peer: Option<std::net::IpAddr>,
    ) -> Result<Verified, AuthFailure> {
        let started = Instant::now();
        let keys = throttle::Keys::new(id, peer);
        let (checked, kdf_ran) = self.check_secret(id, secret, &keys).await;
        let result = checked.and_then(|client| match client {
            None => Ok(Verified {
                identity: Identity::Root { id: id.to_owned() },
                generation: self.root_generation(),
                lifetime: clients::DEFAULT_TOKEN_LIFETIME,
                grants: None,
            }),
            Some(client) if !client.active => Err(AuthFailure::InactiveClient),
            Some(client) if !grants.iter().any(|g| client.allows(*g)) => {
                Err(AuthFailure::GrantNotAllowed)
            }
            // The generation is the version whose secret was just checked, so
            // a token can never outlive a change made during the check.
            Some(client) => Ok(Verified {
                identity: Identity::Client {
                    id: client.id.clone(),
                },
                generation: client.version_id.to_string(),
                lifetime: client.token_lifetime,
                grants: Some(client.grant_types.clone()),
            }),
        });
        match result {
            // Only a caller holding the right secret learns about grants.
            Ok(_) | Err(AuthFailure::GrantNotAllowed) => {
                if !kdf_ran {
                    self.kdf.record_success(&keys);
                }
            }
            Err(AuthFailure::Throttled) => self.kdf.pad(started).await,
            Err(_) if kdf_ran => {}
            Err(_) => {
                if !self.kdf.stand_in(&keys).await {
                    self.kdf.pad(started).await;
                    self.kdf.record_failure(&keys);
                    return Err(AuthFailure::Throttled);
                }
                self.kdf.record_failure(&keys);
            }
        }
        result
    }

    /// Checks the secret alone; `Ok(None)` is root, `Ok(Some)` a client.
    /// The flag says whether a KDF run (and its bookkeeping) happened.
    async fn check_secret(
        &self,
        id: &str,
        secret: &SecretString,
        keys: &throttle::Keys,
    ) -> (Result<Option<Arc<ClientRecord>>, AuthFailure>, bool) {
        let presented = secret.expose_secret().as_bytes();
        if let Some(root) = &self.root {
            if root.id == id {
                let digest = sha256(&[presented]);
                return if bool::from(digest.ct_eq(&root.digest)) {
                    (Ok(None), false)
                } else {
                    (Err(AuthFailure::WrongSecret), false)
                };
            }
        }
        let Some(client) = self.snapshot().clients.get(id).cloned() else {
            return (Err(AuthFailure::UnknownClient), false);
        };
        let phc = match &client.secret {
            ClientSecret::None => return (Err(AuthFailure::NoSecret), false),
            ClientSecret::Reference(name) => {
                let checked = self.verify_vault_secret(&client.id, name, presented);
                return (checked.map(|()| Some(client.clone())), false);
            }
            ClientSecret::Hash(phc) => phc.clone(),
        };
        let key = sha256(&[id.as_bytes(), &client.version_id.to_be_bytes(), presented]);
        if self.recently_verified(&key) {
            return (Ok(Some(client)), true);
        }
        let Some(permit) = self.kdf.admit(keys).await else {
            return (Err(AuthFailure::Throttled), true);
        };
        // Checked again with a slot held: when many requests miss at once
        // (a cold start, an expired entry), the first verification serves
        // the rest instead of each running the KDF.
        if self.recently_verified(&key) {
            return (Ok(Some(client)), true);
        }
        let candidate = secret.clone();
        let gate = self.kdf.clone();
        let keys = *keys;
        // The permit and the bookkeeping move into the blocking task, so a
        // request that goes away mid-run neither frees its slot early nor
        // skips counting its failure.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let ok = secret_hash::verify(candidate.expose_secret().as_bytes(), &phc);
            gate.observe(started.elapsed());
            if ok {
                gate.record_success(&keys);
            } else {
                gate.record_failure(&keys);
            }
            ok
        })
        .await
        .unwrap_or(false);
        if !ok {
            return (Err(AuthFailure::WrongSecret), true);
        }
        self.remember(key);
        (Ok(Some(client)), true)
    }

    /// Checks a presented secret against the vault secret `name`, resolved now
    /// for `Client/<id>` (scope is checked at every use, docs/external-secrets.md, "At use"). The resolver
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

    /// True when this (client, version, secret) was verified lately; a hit
    /// extends the entry, so a client in use never falls back to the KDF
    /// (and into a queue an attacker may be filling).
    fn recently_verified(&self, key: &[u8; 32]) -> bool {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match verified.get_mut(key) {
            Some(expires) if *expires > now => {
                *expires = now + VERIFIED_TTL;
                true
            }
            _ => false,
        }
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
    /// Keyed with the signing key, so a leaked root token gives no way to
    /// test guesses of the root secret offline.
    fn root_generation(&self) -> String {
        match &self.root {
            Some(root) => self
                .signer
                .fingerprint(&[b"root token generation", &root.digest]),
            None => String::new(),
        }
    }

    /// Checks a Bearer token issued by this server. The token names the
    /// generation of its client; a changed, deleted or re-created client
    /// has another one.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthFailure> {
        let claims = self.signer.verify(token).map_err(AuthFailure::Token)?;
        let stale = AuthFailure::Token(token::TokenError::Revoked);
        if let Some(root) = &self.root {
            if root.id == claims.sub {
                return if claims.gen == self.root_generation() {
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
        if let Some(user) = claims.usr {
            // A signed-in user's token: the application must still allow
            // the grant, and the User must still exist and be active.
            if !client.allows(Grant::AuthorizationCode) {
                return Err(AuthFailure::GrantNotAllowed);
            }
            let snapshot = self.snapshot();
            let Some(record) = snapshot.users.get(&user) else {
                return Err(stale);
            };
            if !record.active {
                return Err(AuthFailure::InactiveUser);
            }
            return Ok(Identity::User {
                client: client.id.clone(),
                user,
            });
        }
        if !client.allows(Grant::ClientCredentials) {
            return Err(AuthFailure::GrantNotAllowed);
        }
        Ok(Identity::Client {
            id: client.id.clone(),
        })
    }

    /// Checks one of this server's own tokens; one naming a client version
    /// or a User this instance has not seen yet (another instance changed
    /// or created it a moment ago) is checked again after catching up.
    async fn verify_own(&self, token: &str) -> Result<Identity, AuthFailure> {
        match self.verify_token(token) {
            // The signature held: only a token this server signed gets here.
            Err(AuthFailure::Token(token::TokenError::Revoked) | AuthFailure::UnknownClient) => {
                self.catch_up().await;
                self.verify_token(token)
            }
            other => other,
        }
    }

    /// Checks a Bearer token: one of this server's own, or another issuer's
    /// matched to a TokenIntrospector (docs/tokens.md).
    pub async fn verify_bearer(&self, token: &str) -> Result<Identity, AuthFailure> {
        let snapshot = self.snapshot();
        if snapshot.introspectors.is_empty() {
            return self.verify_own(token).await;
        }
        if let Some(found) = self
            .external
            .cached(token, &snapshot.introspectors, snapshot.epoch)
        {
            return found.map(Identity::External).map_err(AuthFailure::External);
        }
        match external::route(token, &snapshot.introspectors) {
            external::Route::Own => self.verify_own(token).await,
            route => self
                .external
                .verify(route, token, self.vault.as_ref(), snapshot.epoch)
                .await
                .map(Identity::External)
                .map_err(AuthFailure::External),
        }
    }

    /// Which resources use each vault secret: `Client/<id>` and
    /// `TokenIntrospector/<id>`, by secret name (for `/admin/secrets`).
    pub fn secret_users(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let snapshot = self.snapshot();
        let mut users: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for client in snapshot.clients.values() {
            if let ClientSecret::Reference(name) = &client.secret {
                users
                    .entry(name.clone())
                    .or_default()
                    .push(format!("Client/{}", client.id));
            }
        }
        for introspector in &snapshot.introspectors {
            for name in introspector.secret_names() {
                users
                    .entry(name.to_owned())
                    .or_default()
                    .push(format!("TokenIntrospector/{}", introspector.id));
            }
        }
        for provider in snapshot.identity_providers.values() {
            for name in provider.secret_names() {
                users
                    .entry(name.to_owned())
                    .or_default()
                    .push(format!("IdentityProvider/{}", provider.id));
            }
        }
        for list in users.values_mut() {
            list.sort();
            list.dedup();
        }
        users
    }

    /// Issues an access token for a verified caller; returns (token,
    /// expires_in seconds).
    pub fn issue_token(&self, verified: &Verified) -> (String, u64) {
        let (token, _) = self.signer.issue(
            verified.identity.id(),
            &verified.generation,
            verified.lifetime,
        );
        (token, verified.lifetime)
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
