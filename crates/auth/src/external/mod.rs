//! Access tokens from other issuers (docs/tokens.md): a Bearer token that is
//! not fhirbox's own is matched to a `TokenIntrospector` and checked there —
//! a JWT by its signature (a shared secret, configured keys, or the issuer's
//! key set), an opaque token by RFC 7662 introspection. Keys and credentials
//! that come from the vault are resolved at each use, so a rotated file
//! applies to the next token with no restart.

pub mod http;
pub mod introspector;
pub mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::fields::SecretSlot;
use fhirbox_secrets::{Requester, SecretResolver};
use http::Fetcher;
use introspector::{Introspector, KeyMaterial, KeySource, Kind};
use jwks::{Fetched, JwksCache};

/// Clock skew allowed on `exp` and `nbf` of other issuers' tokens, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;
/// Default bound on one call to an issuer (key set or introspection).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Introspection calls in flight at once per introspector; more wait for a
/// slot, within the call's deadline, so one silent endpoint starves no other.
const MAX_INTROSPECTIONS: usize = 32;
/// Bound on remembered verdicts of each kind (accepted, refused); a map is
/// cleared when it is full, so a flood of made-up tokens, which only ever
/// fills the refused map, never pushes out the good verdicts.
const VERDICTS_MAX: usize = 10_000;
/// The longest a refusal is remembered: a token an endpoint called inactive
/// a moment ago (a replica that had not seen it yet) is asked about again soon.
const REFUSED_FOR: Duration = Duration::from_secs(30);

/// A caller authenticated by another issuer's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// The id of the TokenIntrospector that accepted the token.
    pub introspector: String,
    /// The user: the `box_user` claim, else `sub`.
    pub user: Option<String>,
    /// The verified claims of a JWT.
    pub jwt: Option<Value>,
    /// The introspection response of an opaque token.
    pub token: Option<Value>,
}

/// Why another issuer's token was refused (logged and counted, never sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalFailure {
    Malformed,
    /// Its `iss` names no introspector.
    UnknownIssuer,
    /// `none`, or an algorithm the key was not configured for.
    Algorithm,
    /// The header's `typ` is not what the introspector requires.
    Type,
    /// No configured or published key has its `kid` and `alg`.
    UnknownKey,
    Signature,
    Expired,
    Issuer,
    /// The introspection endpoint says `active: false`.
    Inactive,
    /// The key or credential from the vault cannot be used now.
    KeyUnavailable,
    /// The issuer's key set or introspection endpoint gave no answer.
    IssuerUnavailable,
}

impl ExternalFailure {
    pub fn reason(self) -> &'static str {
        match self {
            ExternalFailure::Malformed => "external_malformed",
            ExternalFailure::UnknownIssuer => "external_unknown_issuer",
            ExternalFailure::Algorithm => "external_algorithm",
            ExternalFailure::Type => "external_type",
            ExternalFailure::UnknownKey => "external_unknown_key",
            ExternalFailure::Signature => "external_signature",
            ExternalFailure::Expired => "external_expired",
            ExternalFailure::Issuer => "external_issuer",
            ExternalFailure::Inactive => "external_inactive",
            ExternalFailure::KeyUnavailable => "external_key_unavailable",
            ExternalFailure::IssuerUnavailable => "external_issuer_unavailable",
        }
    }

    /// True when the token could not be checked (503), rather than was
    /// checked and refused (401).
    pub fn is_unavailable(self) -> bool {
        matches!(
            self,
            ExternalFailure::KeyUnavailable | ExternalFailure::IssuerUnavailable
        )
    }
}

/// What the operator's metrics hear about external tokens.
pub trait TokenEvents: Send + Sync {
    /// One token checked by `introspector`: `ok` or a failure's reason.
    fn verification(&self, _introspector: &str, _result: &'static str) {}
    /// One fetch of an introspector's key set.
    fn jwks_fetch(&self, _introspector: &str, _ok: bool) {}
    /// One call to an introspection endpoint: `active`, `inactive` or `error`.
    fn introspection(&self, _introspector: &str, _seconds: f64, _outcome: &'static str) {}
    /// A verdict served from the cache (an asymmetric JWT or an opaque token).
    fn cache_hit(&self, _introspector: &str) {}
}

struct NoEvents;
impl TokenEvents for NoEvents {}

/// Settings of external token checks.
#[derive(Clone)]
pub struct ExternalOptions {
    /// Bound on one call to an issuer.
    pub timeout: Duration,
    pub events: Arc<dyn TokenEvents>,
}

impl Default for ExternalOptions {
    fn default() -> Self {
        ExternalOptions {
            timeout: DEFAULT_TIMEOUT,
            events: Arc::new(NoEvents),
        }
    }
}

/// A remembered verdict on one token.
struct Verdict {
    /// The introspector (id and version) that reached it, and the epoch of
    /// the introspectors it was routed among.
    introspector: String,
    version: i64,
    epoch: u64,
    outcome: Result<Arc<External>, ExternalFailure>,
    /// The token's `exp` (seconds), checked again at each hit.
    exp: Option<u64>,
    until: Instant,
    /// The key set generation a JWT verdict was reached with.
    generation: u64,
}

/// The header fields that choose a key, read strictly.
pub(crate) struct JwtHeader {
    pub(crate) alg: String,
    pub(crate) kid: Option<String>,
    pub(crate) typ: Option<String>,
}

/// How a Bearer token is to be checked.
pub enum Route<'a> {
    /// One of fhirbox's own tokens (or no introspector could take it).
    Own,
    /// A JWT whose `iss` names this introspector.
    Jwt(&'a Arc<Introspector>),
    /// Introspection at this endpoint.
    Opaque(&'a Arc<Introspector>),
    /// A JWT of an issuer no introspector names.
    Unknown,
}

/// Decodes one base64url JSON part of a compact JWS, strictly.
pub(crate) fn part(text: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    match fhirbox_fhir::json::from_slice_strict(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Chooses how to check `token` among `introspectors` (sorted by id).
pub fn route<'a>(token: &str, introspectors: &'a [Arc<Introspector>]) -> Route<'a> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // A token is only ever shown to one endpoint: the first opaque
        // introspector (by id) that names no issuer. Sending it to several
        // would hand one issuer's tokens to another.
        return match introspectors
            .iter()
            .find(|i| matches!(i.kind, Kind::Opaque { iss: None, .. }))
        {
            Some(found) => Route::Opaque(found),
            None => Route::Own,
        };
    };
    let Some(iss) = part(payload).and_then(|claims| match claims.get("iss") {
        Some(Value::String(iss)) => Some(iss.clone()),
        _ => None,
    }) else {
        return Route::Own;
    };
    if iss == crate::token::ISSUER {
        return Route::Own;
    }
    match introspectors
        .iter()
        .find(|i| i.issuer() == Some(iss.as_str()))
    {
        Some(found) if matches!(found.kind, Kind::Jwt { .. }) => Route::Jwt(found),
        Some(found) => Route::Opaque(found),
        None => Route::Unknown,
    }
}

pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    name.parse().ok().filter(|a| {
        !matches!(
            a,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 | Algorithm::EdDSA
        )
    })
}

fn now_seconds() -> u64 {
    crate::token::now_seconds()
}

/// Checks other issuers' tokens; holds their key sets and verdicts.
pub struct ExternalTokens {
    fetcher: Fetcher,
    events: Arc<dyn TokenEvents>,
    /// Key sets by (introspector, version).
    jwks: Mutex<HashMap<(String, i64), Arc<JwksCache>>>,
    accepted: Mutex<HashMap<[u8; 32], Verdict>>,
    refused: Mutex<HashMap<[u8; 32], Verdict>>,
    /// Introspection slots by introspector id.
    introspections: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl ExternalTokens {
    pub fn new(options: ExternalOptions) -> ExternalTokens {
        ExternalTokens {
            fetcher: Fetcher::new(options.timeout),
            events: options.events,
            jwks: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            introspections: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self, introspector: &str) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self
            .introspections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slots
            .entry(introspector.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_INTROSPECTIONS)))
            .clone()
    }

    /// Drops the key sets of introspectors that are gone or changed.
    pub fn retain(&self, introspectors: &[Arc<Introspector>]) {
        let mut jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        jwks.retain(|(id, version), _| {
            introspectors
                .iter()
                .any(|i| &i.id == id && i.version == *version)
        });
        self.introspections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| introspectors.iter().any(|i| &i.id == id));
        for map in [&self.accepted, &self.refused] {
            map.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The key of a token's verdict: its SHA-256, so no token can find
    /// another's verdict.
    fn verdict_key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// A verdict reached lately by an introspector still in force, before
    /// the token is even routed: a token in use costs one digest and a
    /// lookup (docs/tokens.md). Verdicts are dropped whenever introspectors
    /// change, so the route they were reached by is the one the token would
    /// take now.
    pub fn cached(
        &self,
        token: &str,
        introspectors: &[Arc<Introspector>],
        epoch: u64,
    ) -> Option<Result<Arc<External>, ExternalFailure>> {
        let key = Self::verdict_key(token);
        let (id, version) = {
            let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            match accepted.get(&key) {
                Some(v) => (v.introspector.clone(), v.version),
                None => {
                    drop(accepted);
                    let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                    let v = refused.get(&key)?;
                    (v.introspector.clone(), v.version)
                }
            }
        };
        let introspector = introspectors
            .iter()
            .find(|i| i.id == id && i.version == version)?;
        let generation = match &introspector.kind {
            Kind::Jwt {
                source: KeySource::Jwks(_),
                ..
            } => Some(self.key_set_generation(introspector)?),
            Kind::Jwt { .. } => Some(0),
            Kind::Opaque { .. } => None,
        };
        let found = self.remembered(&key, introspector, epoch, generation)?;
        self.events.cache_hit(&introspector.id);
        self.events
            .verification(&introspector.id, result_label(&found));
        Some(found)
    }

    fn key_set_generation(&self, introspector: &Introspector) -> Option<u64> {
        let jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        jwks.get(&(introspector.id.clone(), introspector.version))?
            .generation()
    }

    fn remembered(
        &self,
        key: &[u8; 32],
        introspector: &Introspector,
        epoch: u64,
        generation: Option<u64>,
    ) -> Option<Result<Arc<External>, ExternalFailure>> {
        let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let refused;
        let verdict = match accepted.get(key) {
            Some(verdict) => verdict,
            None => {
                refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                refused.get(key)?
            }
        };
        if verdict.introspector != introspector.id
            || verdict.version != introspector.version
            || verdict.epoch != epoch
            || Instant::now() >= verdict.until
            || generation.is_some_and(|g| g != verdict.generation)
        {
            return None;
        }
        if let (Ok(found), Some(exp)) = (&verdict.outcome, verdict.exp) {
            // JWTs get the leeway; an introspection endpoint's exp is its own.
            let leeway = if found.jwt.is_some() {
                LEEWAY_SECONDS
            } else {
                0
            };
            if now_seconds() >= exp.saturating_add(leeway) {
                return Some(Err(ExternalFailure::Expired));
            }
        }
        Some(verdict.outcome.clone())
    }

    fn remember(&self, key: [u8; 32], mut verdict: Verdict) {
        let (map, other) = if verdict.outcome.is_ok() {
            (&self.accepted, &self.refused)
        } else {
            verdict.until = verdict.until.min(Instant::now() + REFUSED_FOR);
            (&self.refused, &self.accepted)
        };
        // A token has one verdict: the newer one replaces the other kind.
        other.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        let mut verdicts = map.lock().unwrap_or_else(|p| p.into_inner());
        if verdicts.len() >= VERDICTS_MAX {
            verdicts.clear();
        }
        verdicts.insert(key, verdict);
    }

    /// Checks `token` by the route `route` chose.
    /// `epoch` numbers the set of introspectors `route` chose among; verdicts
    /// reached under another one are never served.
    pub async fn verify(
        &self,
        route: Route<'_>,
        token: &str,
        vault: Option<&SecretResolver>,
        epoch: u64,
    ) -> Result<Arc<External>, ExternalFailure> {
        let (introspector, result) = match route {
            Route::Own | Route::Unknown => return Err(ExternalFailure::UnknownIssuer),
            Route::Jwt(introspector) => (
                introspector,
                self.verify_jwt(introspector, token, vault, epoch).await,
            ),
            Route::Opaque(introspector) => (
                introspector,
                self.introspect(introspector, token, vault, epoch).await,
            ),
        };
        self.events
            .verification(&introspector.id, result_label(&result));
        result
    }

    fn key_set_cache(&self, introspector: &Introspector, url: &str) -> Arc<JwksCache> {
        let mut jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        jwks.entry((introspector.id.clone(), introspector.version))
            .or_insert_with(|| Arc::new(JwksCache::new(url.to_owned(), introspector.cache_ttl)))
            .clone()
    }

    async fn verify_jwt(
        &self,
        introspector: &Introspector,
        token: &str,
        vault: Option<&SecretResolver>,
        epoch: u64,
    ) -> Result<Arc<External>, ExternalFailure> {
        let Kind::Jwt { iss, source, typ } = &introspector.kind else {
            return Err(ExternalFailure::UnknownIssuer);
        };
        let header = token
            .split('.')
            .next()
            .and_then(part)
            .ok_or(ExternalFailure::Malformed)?;
        let header = read_header(&header)?;
        // `none` and every algorithm outside the supported set stop here,
        // before any key is looked at.
        let alg = algorithm(&header.alg).ok_or(ExternalFailure::Algorithm)?;
        if let Some(wanted) = typ {
            let given = header.typ.as_deref().unwrap_or_default();
            let given = given
                .strip_prefix("application/")
                .or_else(|| given.strip_prefix("APPLICATION/"))
                .unwrap_or(given);
            if !given.eq_ignore_ascii_case(wanted) {
                return Err(ExternalFailure::Type);
            }
        }
        let kid = header.kid.as_deref();
        match source {
            KeySource::Secret(slot) => {
                if alg != Algorithm::HS256 {
                    return Err(ExternalFailure::Algorithm);
                }
                let keys = self.symmetric(introspector, slot, vault)?;
                check_with(token, iss, alg, keys.iter().map(Ok))
                    .map(|claims| external(introspector, claims))
            }
            KeySource::Keys(configured) => {
                let candidates: Vec<_> = configured
                    .iter()
                    .filter(|k| {
                        k.alg == alg
                            && match (kid, k.kid.as_deref()) {
                                (Some(wanted), Some(have)) => wanted == have,
                                _ => true,
                            }
                    })
                    .collect();
                if candidates.is_empty() {
                    // A token whose alg no key was configured for: the key's
                    // algorithm is pinned, whatever the header says.
                    return Err(if configured.iter().any(|k| k.alg == alg) {
                        ExternalFailure::UnknownKey
                    } else {
                        ExternalFailure::Algorithm
                    });
                }
                let public = candidates
                    .iter()
                    .all(|k| matches!(k.material, KeyMaterial::Public(_)));
                let cache_key = public.then(|| Self::verdict_key(token));
                if let Some(found) = cache_key
                    .as_ref()
                    .and_then(|k| self.remembered(k, introspector, epoch, Some(0)))
                {
                    self.events.cache_hit(&introspector.id);
                    return found;
                }
                let mut keys = Vec::new();
                for candidate in &candidates {
                    match &candidate.material {
                        KeyMaterial::Public(key) => keys.push(key.clone()),
                        KeyMaterial::Symmetric(slot) => {
                            keys.extend(self.symmetric(introspector, slot, vault)?)
                        }
                    }
                }
                let result = check_with(token, iss, alg, keys.iter().map(Ok))
                    .map(|claims| external(introspector, claims));
                if let Some(key) = cache_key {
                    self.remember_jwt(introspector, key, &result, 0, epoch);
                }
                result
            }
            KeySource::Jwks(url) => {
                let cache = self.key_set_cache(introspector, url);
                let set = cache
                    .key_set(&self.fetcher, kid, |fetched| {
                        self.events
                            .jwks_fetch(&introspector.id, fetched == Fetched::Ok)
                    })
                    .await
                    .map_err(|_| ExternalFailure::IssuerUnavailable)?;
                let key = Self::verdict_key(token);
                if let Some(found) =
                    self.remembered(&key, introspector, epoch, Some(set.generation))
                {
                    self.events.cache_hit(&introspector.id);
                    return found;
                }
                let candidates: Vec<_> = set.candidates(alg, kid).collect();
                if candidates.is_empty() {
                    return Err(if set.keys.iter().any(|k| k.algs.contains(&alg)) {
                        ExternalFailure::UnknownKey
                    } else {
                        ExternalFailure::Algorithm
                    });
                }
                let result = check_with(token, iss, alg, candidates.iter().map(|k| Ok(&k.key)))
                    .map(|claims| external(introspector, claims));
                self.remember_jwt(introspector, key, &result, set.generation, epoch);
                result
            }
        }
    }

    /// Remembers a signature verdict: a good one until the token expires or
    /// `cache_ttl` passes, a bad signature for `cache_ttl` (it can never
    /// become good under the same keys).
    fn remember_jwt(
        &self,
        introspector: &Introspector,
        key: [u8; 32],
        result: &Result<Arc<External>, ExternalFailure>,
        generation: u64,
        epoch: u64,
    ) {
        let exp = match result {
            Ok(found) => match found
                .jwt
                .as_ref()
                .and_then(|c| c.get("exp"))
                .map(numeric_date)
            {
                Some(Some(exp)) => Some(exp),
                // Verified tokens always carry a numeric `exp`; keep nothing otherwise.
                _ => return,
            },
            Err(ExternalFailure::Signature) => None,
            Err(_) => return,
        };
        self.remember(
            key,
            Verdict {
                introspector: introspector.id.clone(),
                version: introspector.version,
                epoch,
                outcome: result.clone(),
                exp,
                until: Instant::now() + introspector.cache_ttl,
                generation,
            },
        );
    }

    /// The current key, and the previous one while its rotation grace lasts.
    fn symmetric(
        &self,
        introspector: &Introspector,
        slot: &SecretSlot,
        vault: Option<&SecretResolver>,
    ) -> Result<Vec<DecodingKey>, ExternalFailure> {
        use secrecy::ExposeSecret;
        let secret = match slot {
            SecretSlot::Vault(name) => name.as_str(),
            SecretSlot::Literal(_) => "",
        };
        let unusable = |reason: &str| {
            tracing::warn!(introspector = %introspector.id, secret, reason, "the introspector's key cannot be used");
            ExternalFailure::KeyUnavailable
        };
        let key = |bytes: &[u8]| {
            introspector::check_hmac_key(bytes)
                .map_err(|_| unusable("not_a_shared_secret"))
                .and_then(|()| DecodingKey::from_secret(bytes).map_err(|_| unusable("invalid_key")))
        };
        match slot {
            SecretSlot::Literal(value) => Ok(vec![key(value.expose_secret())?]),
            SecretSlot::Vault(name) => {
                let vault = vault.ok_or_else(|| unusable("vault_disabled"))?;
                let (current, previous) = vault
                    .resolve_with_previous(name, &Requester::new("TokenIntrospector", &introspector.id))
                    .map_err(|e| {
                        tracing::warn!(introspector = %introspector.id, secret = name, reason = e.reason(), problem = %e, "external secret unusable");
                        ExternalFailure::KeyUnavailable
                    })?;
                let mut keys = vec![key(current.expose_bytes())?];
                if let Some(previous) = previous {
                    if let Ok(k) = key(previous.expose_bytes()) {
                        keys.push(k);
                    }
                }
                Ok(keys)
            }
        }
    }

    async fn introspect(
        &self,
        introspector: &Introspector,
        token: &str,
        vault: Option<&SecretResolver>,
        epoch: u64,
    ) -> Result<Arc<External>, ExternalFailure> {
        let Kind::Opaque { endpoint, .. } = &introspector.kind else {
            return Err(ExternalFailure::UnknownIssuer);
        };
        let key = Self::verdict_key(token);
        if let Some(found) = self.remembered(&key, introspector, epoch, None) {
            self.events.cache_hit(&introspector.id);
            return found;
        }
        // The header value is resolved for each call: a rotated file applies to the next one.
        let authorization = match &endpoint.authorization {
            None => None,
            Some(SecretSlot::Literal(value)) => {
                use secrecy::ExposeSecret;
                Some(String::from_utf8_lossy(value.expose_secret()).into_owned())
            }
            Some(SecretSlot::Vault(name)) => {
                let Some(vault) = vault else {
                    tracing::warn!(introspector = %introspector.id, reason = "vault_disabled", "the introspector's credential cannot be used");
                    return Err(ExternalFailure::KeyUnavailable);
                };
                let value = vault
                    .resolve(name, &Requester::new("TokenIntrospector", &introspector.id))
                    .and_then(|v| v.expose_utf8().map(str::to_owned))
                    .map_err(|e| {
                        tracing::warn!(introspector = %introspector.id, secret = name, reason = e.reason(), problem = %e, "external secret unusable");
                        ExternalFailure::KeyUnavailable
                    })?;
                if !introspector::header_value_ok(value.as_bytes()) {
                    tracing::warn!(introspector = %introspector.id, secret = name, reason = "not_a_header_value", "the authorization secret is not one line of visible ASCII");
                    return Err(ExternalFailure::KeyUnavailable);
                }
                Some(value)
            }
        };
        let started = Instant::now();
        let slots = self.slots(&introspector.id);
        let call = async {
            let _slot = slots
                .acquire()
                .await
                .map_err(|_| http::FetchError::Timeout)?;
            self.fetcher
                .post_form(
                    &endpoint.url,
                    authorization.as_deref(),
                    &[("token", token), ("token_type_hint", "access_token")],
                )
                .await
        };
        let answer = tokio::time::timeout(self.fetcher.timeout(), call)
            .await
            .unwrap_or(Err(http::FetchError::Timeout));
        let seconds = started.elapsed().as_secs_f64();
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                self.events
                    .introspection(&introspector.id, seconds, "error");
                tracing::warn!(introspector = %introspector.id, url = %http::for_log(&endpoint.url), problem = %e, "token introspection failed");
                return Err(ExternalFailure::IssuerUnavailable);
            }
        };
        // The endpoint is the authority on `active`; its `exp` only bounds
        // how long the answer is kept, so no leeway is added to it.
        let exp = answer.get("exp").map(numeric_date);
        let active = answer.get("active") == Some(&Value::Bool(true))
            && match exp {
                None => true,
                Some(Some(exp)) => now_seconds() < exp,
                // An `exp` that is not a time: nothing can bound the cache, refuse.
                Some(None) => false,
            };
        let exp = exp.flatten();
        self.events.introspection(
            &introspector.id,
            seconds,
            if active { "active" } else { "inactive" },
        );
        let outcome = if active {
            let user = user_of(&answer);
            Ok(Arc::new(External {
                introspector: introspector.id.clone(),
                user,
                jwt: None,
                token: Some(answer),
            }))
        } else {
            Err(ExternalFailure::Inactive)
        };
        // Never kept past the token's own expiry (RFC 7662 §4).
        let mut until = Instant::now() + introspector.cache_ttl;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(now_seconds());
            until = until.min(Instant::now() + Duration::from_secs(left));
        }
        self.remember(
            key,
            Verdict {
                introspector: introspector.id.clone(),
                version: introspector.version,
                epoch,
                outcome: outcome.clone(),
                exp,
                until,
                generation: 0,
            },
        );
        outcome
    }
}

/// A verdict as the verification metric labels it.
fn result_label(result: &Result<Arc<External>, ExternalFailure>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

pub(crate) fn read_header(header: &Map<String, Value>) -> Result<JwtHeader, ExternalFailure> {
    // RFC 7515 §4.1.11: a `crit` extension this server does not understand
    // makes the token invalid; it understands none.
    if header.contains_key("crit") {
        return Err(ExternalFailure::Malformed);
    }
    let text = |name: &str| match header.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ExternalFailure::Malformed),
    };
    Ok(JwtHeader {
        alg: text("alg")?.ok_or(ExternalFailure::Malformed)?,
        kid: text("kid")?,
        typ: text("typ")?,
    })
}

/// The user a token names: a non-empty `box_user`, else `sub`.
fn user_of(claims: &Value) -> Option<String> {
    ["box_user", "sub"]
        .iter()
        .find_map(|name| {
            claims
                .get(*name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(str::to_owned)
}

/// A NumericDate (RFC 7519 §2) as whole seconds, rounded down so a cache
/// never keeps a verdict past the instant; `None` when it is not one.
fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.floor() as u64)
    })
}

fn external(introspector: &Introspector, claims: Value) -> Arc<External> {
    Arc::new(External {
        introspector: introspector.id.clone(),
        user: user_of(&claims),
        jwt: Some(claims),
        token: None,
    })
}

/// Verifies the signature with each key in turn, then the claims: `iss`
/// exactly, `exp` required, `nbf` when present, both with the leeway.
fn check_with<'k>(
    token: &str,
    iss: &str,
    alg: Algorithm,
    keys: impl Iterator<Item = Result<&'k DecodingKey, ExternalFailure>>,
) -> Result<Value, ExternalFailure> {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[iss]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.leeway = LEEWAY_SECONDS;
    let mut failure = ExternalFailure::UnknownKey;
    for key in keys {
        match jsonwebtoken::decode::<Value>(token, key?, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => {
                let kind = match e.kind() {
                    ErrorKind::InvalidSignature => ExternalFailure::Signature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::InvalidKeyFormat => ExternalFailure::Algorithm,
                    ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                        ExternalFailure::Expired
                    }
                    ErrorKind::InvalidIssuer => ExternalFailure::Issuer,
                    _ => ExternalFailure::Malformed,
                };
                // A signature that held is the more telling failure.
                if failure == ExternalFailure::UnknownKey || failure == ExternalFailure::Signature {
                    failure = kind;
                }
            }
        }
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numeric_dates_round_down_and_others_are_not_times() {
        assert_eq!(numeric_date(&json!(1_760_000_000)), Some(1_760_000_000));
        assert_eq!(numeric_date(&json!(1_760_000_000.9)), Some(1_760_000_000));
        assert_eq!(numeric_date(&json!(-5)), None);
        assert_eq!(numeric_date(&json!("1760000000")), None);
    }

    #[test]
    fn the_user_is_box_user_else_sub() {
        assert_eq!(
            user_of(&json!({"box_user": "u1", "sub": "s"})).as_deref(),
            Some("u1")
        );
        assert_eq!(
            user_of(&json!({"box_user": "", "sub": "s"})).as_deref(),
            Some("s")
        );
        assert_eq!(user_of(&json!({"sub": 5})), None);
    }

    fn introspector(body: Value, id: &str) -> Arc<Introspector> {
        let mut parsed = Introspector::parse(&body).unwrap();
        parsed.id = id.to_owned();
        Arc::new(parsed)
    }

    #[test]
    fn tokens_are_routed_by_issuer_and_opaque_ones_to_one_endpoint() {
        let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let jwt = |iss: &str| {
            format!(
                "{}.{}.sig",
                part(json!({"alg": "RS256"})),
                part(json!({"iss": iss}))
            )
        };
        let all = vec![
            introspector(
                json!({"type": "jwt", "jwt": {"iss": "https://a"}, "jwks_uri": "https://a/keys"}),
                "a",
            ),
            introspector(
                json!({"type": "opaque", "introspection_endpoint": {"url": "https://o1/i"}}),
                "o1",
            ),
            introspector(
                json!({"type": "opaque", "introspection_endpoint": {"url": "https://o2/i"}}),
                "o2",
            ),
            introspector(
                json!({"type": "opaque", "jwt": {"iss": "https://b"}, "introspection_endpoint": {"url": "https://b/i"}}),
                "b",
            ),
        ];
        assert!(matches!(route(&jwt("https://a"), &all), Route::Jwt(i) if i.id == "a"));
        assert!(matches!(route(&jwt("https://b"), &all), Route::Opaque(i) if i.id == "b"));
        assert!(matches!(route(&jwt("https://a/"), &all), Route::Unknown));
        assert!(matches!(route(&jwt("fhirbox"), &all), Route::Own));
        assert!(matches!(route("opaque-token", &all), Route::Opaque(i) if i.id == "o1"));
        assert!(matches!(route("opaque-token", &all[..1]), Route::Own));
    }
}
