//! An issuer's key set (RFC 7517) fetched from `jwks_uri` and kept for the
//! introspector's `cache_ttl`. A token naming a `kid` the set lacks causes
//! one refetch, at most once per [`REFETCH_EVERY`]; callers that miss at
//! the same moment share that fetch. A failed fetch keeps the last good set
//! (docs/tokens.md, "Key sets").

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::http::{FetchError, Fetcher};

/// The least time between two refetches caused by unknown `kid`s.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// The most keys taken from one set.
const MAX_KEYS: usize = 100;

/// One usable key of a set.
pub struct SetKey {
    pub kid: Option<String>,
    /// The algorithms this key verifies: the JWK's own `alg`, or, without
    /// one, those its type and curve allow.
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// A parsed key set; `generation` grows with each successful fetch.
pub struct KeySet {
    pub keys: Vec<SetKey>,
    pub generation: u64,
}

impl KeySet {
    /// The keys that may verify a token with this `alg` and `kid`.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a SetKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algs.contains(&alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(wanted), Some(have)) => wanted == have,
                    _ => true,
                }
        })
    }

    fn knows(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

struct State {
    set: Option<Arc<KeySet>>,
    fetched: Option<Instant>,
    /// When the last fetch for an unknown `kid` started.
    last_miss_fetch: Option<Instant>,
    /// A fetch is under way: callers missing a `kid` wait for it rather
    /// than be turned away by the rate limit it just set.
    in_flight: bool,
    /// The last failed fetch, while no set was ever fetched.
    failed: Option<(Instant, FetchError)>,
    /// Grows with every fetch, good or bad.
    generation: u64,
}

/// How long a failed first fetch is reported to new callers before one of
/// them tries again (so requests do not queue behind an issuer that is down).
const RETRY_FIRST_AFTER: Duration = Duration::from_secs(1);

/// The cached key set of one `jwks_uri`.
pub struct JwksCache {
    url: String,
    ttl: Duration,
    state: Mutex<State>,
    /// Held while fetching, so concurrent callers share one fetch.
    fetching: tokio::sync::Mutex<()>,
}

/// What a fetch told the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Ok,
    Failed,
}

impl JwksCache {
    pub fn new(url: String, ttl: Duration) -> JwksCache {
        JwksCache {
            url,
            ttl,
            state: Mutex::new(State {
                set: None,
                fetched: None,
                last_miss_fetch: None,
                in_flight: false,
                failed: None,
                generation: 0,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The generation of the set in use while it is younger than
    /// `cache_ttl`: a verdict reached with an older set is checked again
    /// (and the set refetched) rather than served.
    pub fn generation(&self) -> Option<u64> {
        let state = self.lock();
        if state.fetched.is_none_or(|at| at.elapsed() >= self.ttl) {
            return None;
        }
        state.set.as_ref().map(|set| set.generation)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached set, when it may serve a token with `kid` without a fetch:
    /// it is younger than `cache_ttl`, and it knows `kid` or a refetch for an
    /// unknown one happened less than [`REFETCH_EVERY`] ago.
    fn usable(&self, state: &State, kid: Option<&str>) -> Option<Arc<KeySet>> {
        let set = state.set.as_ref()?;
        if state.fetched.is_none_or(|at| at.elapsed() >= self.ttl) {
            return None;
        }
        let unknown = kid.is_some_and(|kid| !set.knows(kid));
        let may_refetch = state
            .last_miss_fetch
            .is_none_or(|t| t.elapsed() >= REFETCH_EVERY);
        (!unknown || !may_refetch).then(|| set.clone())
    }

    /// The set to verify a token with `kid`, fetching when the set is
    /// missing, older than `cache_ttl`, or lacks `kid` (rate-limited).
    /// `Err` only when no set was ever fetched; `report` hears of each fetch.
    pub async fn key_set(
        &self,
        fetcher: &Fetcher,
        kid: Option<&str>,
        report: impl Fn(Fetched),
    ) -> Result<Arc<KeySet>, FetchError> {
        let seen = {
            let state = self.lock();
            if let Some(set) = self.usable(&state, kid) {
                if !state.in_flight || kid.is_none_or(|kid| set.knows(kid)) {
                    return Ok(set);
                }
            }
            if let (None, Some((at, e))) = (&state.set, &state.failed) {
                if at.elapsed() < RETRY_FIRST_AFTER {
                    return Err(e.clone());
                }
            }
            state.generation
        };
        let _one_fetch = self.fetching.lock().await;
        let miss = {
            let mut state = self.lock();
            // Someone else fetched while this caller waited: use theirs.
            if state.generation != seen {
                match (&state.set, &state.failed) {
                    (Some(set), _) => return Ok(set.clone()),
                    (None, Some((_, e))) => return Err(e.clone()),
                    (None, None) => {}
                }
            }
            if let Some(set) = self.usable(&state, kid) {
                return Ok(set);
            }
            let fresh = state.fetched.is_some_and(|at| at.elapsed() < self.ttl);
            if fresh {
                state.last_miss_fetch = Some(Instant::now());
            }
            state.in_flight = true;
            fresh
        };
        // A caller that goes away mid-fetch (its client hung up) must not
        // leave the fetch marked as running. The refetch allowance stays
        // spent: the request went out, and hanging up must not buy another.
        let mut unfinished = Unfinished {
            cache: self,
            done: false,
        };
        let fetched = fetch(fetcher, &self.url).await;
        unfinished.done = true;
        drop(unfinished);
        match fetched {
            Ok(keys) => {
                report(Fetched::Ok);
                let mut state = self.lock();
                state.in_flight = false;
                state.generation += 1;
                let set = Arc::new(KeySet {
                    keys,
                    generation: state.generation,
                });
                state.set = Some(set.clone());
                state.fetched = Some(Instant::now());
                state.failed = None;
                Ok(set)
            }
            Err(e) => {
                report(Fetched::Failed);
                tracing::warn!(jwks_uri = %super::http::for_log(&self.url), problem = %e, unknown_kid = miss, "fetching the issuer's key set failed; the last good set, if any, stays in use");
                let mut state = self.lock();
                state.in_flight = false;
                state.generation += 1;
                match state.set.clone() {
                    Some(set) => {
                        // Keep the stale set, and wait a while before the next try
                        // rather than fetching on every request while the issuer is down.
                        state.fetched = Some(
                            Instant::now()
                                .checked_sub(self.ttl.saturating_sub(REFETCH_EVERY))
                                .unwrap_or_else(Instant::now),
                        );
                        state.last_miss_fetch = Some(Instant::now());
                        Ok(set)
                    }
                    None => {
                        state.failed = Some((Instant::now(), e.clone()));
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Clears the mark of a fetch that never finished (its future was dropped).
struct Unfinished<'a> {
    cache: &'a JwksCache,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.lock().in_flight = false;
        }
    }
}

async fn fetch(fetcher: &Fetcher, url: &str) -> Result<Vec<SetKey>, FetchError> {
    let body = fetcher.get_json(url).await?;
    let set: JwkSet = serde_json::from_value(body)
        .map_err(|e| FetchError::Invalid(format!("not a JWK set: {e}")))?;
    let mut keys = Vec::new();
    for jwk in set.keys.iter().take(MAX_KEYS) {
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let by_type: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => {
                vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
            }
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            // Shared secrets never come from a public key set.
            _ => continue,
        };
        let algs = match jwk.common.key_algorithm {
            None => by_type,
            Some(named) => match algorithm_of(named) {
                Some(alg) if by_type.contains(&alg) => vec![alg],
                _ => continue,
            },
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(SetKey {
            kid: jwk.common.key_id.clone(),
            algs,
            key,
        });
    }
    if keys.is_empty() {
        return Err(FetchError::Invalid(
            "the key set holds no RSA or EC signature key".into(),
        ));
    }
    Ok(keys)
}

fn algorithm_of(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    })
}
