//! `SecretResolver`: the in-memory cache of secret values, the scope check and constant-time
//! verification at use, rotation tracking with the optional grace, status for operators, and
//! the worker thread that reloads on watcher signals and on a timed poll that re-reads
//! everything (the fallback for filesystems without events). See docs/external-secrets.md:
//! "At use", "Reading, caching and rotation", "Operating it".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use subtle::Choice;

use crate::config::{ConfigError, SecretEntry, VaultConfig, MAX_CONFIG_SIZE};
use crate::error::SecretError;
use crate::file::{
    read_bounded, read_settled, FileId, FileRead, SettleRequest, SettleRule, DEFAULT_CHANGE_SETTLE,
    DEFAULT_MAX_FILE_SIZE,
};
use crate::scope::Requester;
use crate::value::{invalid_client_secret, Digest, SecretValue};
use crate::watcher::{saturating_add, DirWatcher, Signal};

/// Hooks for the embedding service's metrics (docs/external-secrets.md, "Operating it"), so
/// that this crate needs no metrics library. Every method has a no-op default. Methods are
/// called from the caller's thread (`resolution`) or the reload thread (`rotation`,
/// `config_reload`); they must be quick and must not call back into
/// [`SecretResolver::reload_now`].
pub trait SecretEvents: Send + Sync {
    /// A `resolve` or `verify_client_secret` finished: `reason` is `"ok"` or
    /// [`SecretError::reason`]. `name` is as asked for and may not exist in the config.
    fn resolution(&self, name: &str, reason: &'static str) {
        let _ = (name, reason);
    }

    /// The content of a secret changed.
    fn rotation(&self, name: &str) {
        let _ = name;
    }

    /// The vault config was (re)loaded (`true`) or a changed config was rejected (`false`).
    fn config_reload(&self, ok: bool) {
        let _ = ok;
    }
}

/// The default [`SecretEvents`]: does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopEvents;

impl SecretEvents for NoopEvents {}

/// Settings of a [`SecretResolver`]. Build with [`ResolverOptions::new`], then adjust fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct ResolverOptions {
    /// Resource types that have a secret-capable field (docs/external-secrets.md, "The
    /// secret-capable fields"); scopes may name only these.
    pub secret_capable_types: Vec<String>,
    /// Largest secret file accepted, in bytes. Default 64 KiB (docs/external-secrets.md,
    /// "Reading, caching and rotation").
    pub max_file_size: u64,
    /// How often everything is re-read even without watcher events, for filesystems that
    /// send none (NFS, some FUSE). Default 1 s (`BOX_VAULT_POLL_MS`, docs/external-secrets.md,
    /// "Turning it on"), so a change is seen within a second even without events.
    pub poll_interval: Duration,
    /// Watch directories with inotify (default `true`). With `false` only the poll runs.
    pub watch_events: bool,
    /// How long a secret whose file stopped being readable keeps serving its last good value
    /// while reads are retried. Rides out in-place writers that truncate then write, and the
    /// brief window of a swap. Default 1 s.
    pub settle_window: Duration,
    /// Retry cadence during the settle window. Default 100 ms.
    pub settle_retry_interval: Duration,
    /// How long a value that changed *inside* the file it was read from (an in-place writer:
    /// truncate, write, write more) must read the same before it is adopted; until then the
    /// cached value stays in force. A value in a new file (the atomic writer's swap) is
    /// adopted as soon as two reads agree. Re-reading stops after ten times this (at least
    /// 20 ms). Default 50 ms; at most 100 ms. See docs/external-secrets.md, "Settle rule".
    pub change_settle: Duration,
    /// Metrics hooks. Default: [`NoopEvents`].
    pub events: Arc<dyn SecretEvents>,
}

impl ResolverOptions {
    /// Options with the defaults above and the given secret-capable resource types.
    pub fn new<I, S>(secret_capable_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            secret_capable_types: secret_capable_types.into_iter().map(Into::into).collect(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            poll_interval: Duration::from_secs(1),
            watch_events: true,
            settle_window: Duration::from_secs(1),
            settle_retry_interval: Duration::from_millis(100),
            change_settle: DEFAULT_CHANGE_SETTLE,
            events: Arc::new(NoopEvents),
        }
    }
}

impl fmt::Debug for ResolverOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverOptions")
            .field("secret_capable_types", &self.secret_capable_types)
            .field("max_file_size", &self.max_file_size)
            .field("poll_interval", &self.poll_interval)
            .field("watch_events", &self.watch_events)
            .field("settle_window", &self.settle_window)
            .field("settle_retry_interval", &self.settle_retry_interval)
            .field("change_settle", &self.change_settle)
            .finish_non_exhaustive()
    }
}

/// What an operator may know about one secret (docs/external-secrets.md, "Operating it"):
/// never its value, nor a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretStatus {
    /// Secret name.
    pub name: String,
    /// Path from the vault config.
    pub path: PathBuf,
    /// Scope as `Type/id` / `Type` strings.
    pub scope: Vec<String>,
    /// Grace for the previous value after a rotation, if configured.
    pub rotation_grace: Option<Duration>,
    /// Whether the secret can be used now.
    pub state: SecretState,
    /// Last time the file was read successfully (confirms the cached value as of then).
    pub last_loaded: Option<SystemTime>,
    /// Last time the content changed, if it has since the resolver started.
    pub last_rotated: Option<SystemTime>,
    /// Size of the value being served, in bytes.
    pub size: Option<usize>,
}

/// Health of one secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    /// The file reads fine; its value is served.
    Ok,
    /// The last read failed; the last good value is still served while reads are retried
    /// for the settle window.
    Retrying {
        /// [`SecretError::reason`] of the failed read.
        reason: &'static str,
        /// Its message (no value).
        message: String,
    },
    /// The secret cannot be used; every use fails with this reason.
    Error {
        /// [`SecretError::reason`].
        reason: &'static str,
        /// Its message (no value).
        message: String,
    },
}

impl SecretState {
    /// True when uses of the secret succeed (`Ok` or `Retrying`).
    pub fn is_usable(&self) -> bool {
        !matches!(self, Self::Error { .. })
    }
}

/// Health of the vault config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigStatus {
    /// Config file path.
    pub path: PathBuf,
    /// Number of secrets in the config in force.
    pub secrets: usize,
    /// When the config in force was last loaded or re-validated successfully.
    pub last_ok: SystemTime,
    /// Set while the latest reload attempt failed; the last good config stays in force.
    pub last_error: Option<ConfigFailure>,
}

/// A rejected reload of the vault config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFailure {
    /// When it was rejected.
    pub at: SystemTime,
    /// Why, as [`ConfigError`]'s `Display` (file, secret, JSON location).
    pub message: String,
}

/// Resolves secret names to values for the requesting resource.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`. Uses never touch the filesystem: they
/// read the snapshot that the reload thread swaps in whole after each re-read. The
/// background thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct SecretResolver {
    inner: Arc<Inner>,
}

struct Inner {
    config_path: PathBuf,
    options: ResolverOptions,
    snapshot: RwLock<Arc<Snapshot>>,
    state: Mutex<ReloadState>,
    signal: Arc<Signal>,
    passes: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signal.stop();
    }
}

/// What uses read: one consistent view of config and values, replaced whole.
struct Snapshot {
    config: Arc<VaultConfig>,
    slots: BTreeMap<String, Slot>,
    config_status: ConfigStatus,
}

/// State kept between reloads, only touched by the reload in progress.
struct ReloadState {
    config: Arc<VaultConfig>,
    /// Digest of the config bytes last parsed (good or bad): unchanged bytes are not re-parsed,
    /// logged or counted again.
    config_seen: Option<Digest>,
    config_read_failing_since: Option<Instant>,
    config_last_ok: SystemTime,
    config_error: Option<(SystemTime, ConfigError)>,
    slots: BTreeMap<String, Slot>,
}

#[derive(Clone)]
struct Loaded {
    value: SecretValue,
    digest: Digest,
    client_secret_ok: bool,
}

impl Loaded {
    fn new(read: FileRead) -> Self {
        Self {
            client_secret_ok: read.value.is_valid_client_secret(),
            digest: read.digest,
            value: read.value,
        }
    }

    /// A 1-byte value is almost certainly not the credential that was meant (a stray
    /// character, a file cut short): say so, by name only, whenever one is taken into use.
    fn warn_if_one_byte(&self, name: &str) {
        if self.value.len() == 1 {
            tracing::warn!(
                secret = name,
                "secret value is 1 byte long; check that its file holds the whole credential"
            );
        }
    }
}

#[derive(Clone)]
enum SlotState {
    Good(Loaded),
    /// Reads fail, but for less than the settle window: keep serving `last_good`.
    Settling {
        last_good: Loaded,
        error: SecretError,
        since: Instant,
    },
    Failed(SecretError),
}

/// The value before the last rotation, accepted by `verify_client_secret` and offered by
/// `resolve_with_previous` until `until`.
#[derive(Clone)]
struct Previous {
    value: SecretValue,
    digest: Digest,
    until: Instant,
}

#[derive(Clone)]
struct Slot {
    path: PathBuf,
    state: SlotState,
    previous: Option<Previous>,
    /// Digest of the last value ever served, kept across failures so that a file coming
    /// back with other content counts as a rotation and the same content does not.
    last_digest: Option<Digest>,
    /// The file `last_digest` was last read from: a different value in the same file means
    /// an in-place writer, which the settle rule waits out (docs/external-secrets.md).
    last_file: Option<FileId>,
    last_loaded: Option<SystemTime>,
    last_rotated: Option<SystemTime>,
}

impl Slot {
    fn serving(&self) -> Result<&Loaded, &SecretError> {
        match &self.state {
            SlotState::Good(l) | SlotState::Settling { last_good: l, .. } => Ok(l),
            SlotState::Failed(e) => Err(e),
        }
    }
}

struct PassOutcome {
    /// Some secret or the config is inside its settle window: re-read soon.
    retry_soon: bool,
    config: Result<(), ConfigError>,
    dirs: BTreeSet<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SecretResolver {
    /// Loads the vault config at `config_path`, reads every secret it names, arms the
    /// directory watches and starts the reload thread.
    ///
    /// Fails only when the config itself cannot be used (docs/external-secrets.md, "Turning it
    /// on": an invalid config at startup stops the server). A secret whose file is bad at
    /// startup does not fail `start`: it shows in [`status`](Self::status) and its uses fail
    /// until it is fixed.
    pub fn start(
        config_path: impl AsRef<Path>,
        options: ResolverOptions,
    ) -> Result<Self, ConfigError> {
        let given = config_path.as_ref();
        // Absolute, so that the directory to watch is well defined ("" for a bare file name).
        let config_path = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
        let mut options = options;
        options.poll_interval = options.poll_interval.max(Duration::from_millis(10));
        options.settle_retry_interval =
            options.settle_retry_interval.max(Duration::from_millis(10));
        // Bounds the time one reload pass may spend re-reading (ten times this).
        options.change_settle = options.change_settle.min(Duration::from_millis(100));

        let types: Vec<&str> = options
            .secret_capable_types
            .iter()
            .map(String::as_str)
            .collect();
        let bytes = read_bounded(&config_path, MAX_CONFIG_SIZE).map_err(|f| ConfigError::Read {
            path: config_path.clone(),
            reason: f.describe(),
        })?;
        let config = Arc::new(VaultConfig::parse(&bytes, &config_path, &types)?);
        options.events.config_reload(true);
        tracing::info!(path = %config_path.display(), secrets = config.len(), "vault config loaded");

        let signal = Arc::new(Signal::default());
        // Arm the watches before the first read, so that a change right after it is not missed.
        let mut watcher = None;
        if options.watch_events {
            match DirWatcher::new(signal.clone()) {
                Ok(mut w) => {
                    w.sync(&config.watch_dirs(&config_path), false);
                    watcher = Some(w);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start the directory watcher; relying on the poll")
                }
            }
        }

        let now = SystemTime::now();
        let empty = Snapshot {
            config: config.clone(),
            slots: BTreeMap::new(),
            config_status: ConfigStatus {
                path: config_path.clone(),
                secrets: config.len(),
                last_ok: now,
                last_error: None,
            },
        };
        let inner = Arc::new(Inner {
            state: Mutex::new(ReloadState {
                config,
                config_seen: Some(Digest::of(&bytes)),
                config_read_failing_since: None,
                config_last_ok: now,
                config_error: None,
                slots: BTreeMap::new(),
            }),
            snapshot: RwLock::new(Arc::new(empty)),
            signal: signal.clone(),
            passes: AtomicU64::new(0),
            config_path,
            options,
        });
        let first = inner.reload_pass(false);

        let weak = Arc::downgrade(&inner);
        let timing = LoopTiming {
            poll: inner.options.poll_interval,
            retry: inner.options.settle_retry_interval,
        };
        // The reload thread logs through the subscriber in force where `start` was called.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        thread::Builder::new()
            .name("fhirbox-secrets".to_string())
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    reload_loop(&weak, &signal, watcher, timing, first);
                });
            })
            .map_err(|e| ConfigError::Start {
                path: inner.config_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { inner })
    }

    /// The config file this resolver follows.
    pub fn config_path(&self) -> &Path {
        &self.inner.config_path
    }

    /// The vault config in force now.
    pub fn config(&self) -> Arc<VaultConfig> {
        self.snapshot().config.clone()
    }

    /// The value of secret `name` for `requester`: the name must be in the config in force
    /// now and the requester in its scope (docs/external-secrets.md, "At use"). Served from
    /// memory; no file I/O.
    pub fn resolve(&self, name: &str, requester: &Requester) -> Result<SecretValue, SecretError> {
        let result = self.with_slot(name, requester, |slot| match slot.serving() {
            Ok(loaded) => Ok(loaded.value.clone()),
            Err(err) => Err(err.clone()),
        });
        self.report(name, &result);
        result
    }

    /// The value of secret `name` for `requester`, as [`resolve`](Self::resolve), with the
    /// value it had before its last rotation while the secret's `rotation_grace` lasts: keys
    /// that verify signatures try both, so tokens signed with the old key keep working for
    /// the grace and no longer (docs/tokens.md, "Rotation").
    pub fn resolve_with_previous(
        &self,
        name: &str,
        requester: &Requester,
    ) -> Result<(SecretValue, Option<SecretValue>), SecretError> {
        let result = self.with_slot(name, requester, |slot| {
            let current = slot.serving().map_err(Clone::clone)?.value.clone();
            let previous = slot
                .previous
                .as_ref()
                .filter(|p| Instant::now() < p.until)
                .map(|p| p.value.clone());
            Ok((current, previous))
        });
        self.report(name, &result);
        result
    }

    /// Checks a presented OAuth client secret against secret `name` for `requester`.
    ///
    /// `Ok(false)` means "wrong secret"; `Err` means the secret cannot be used at all (unknown,
    /// out of scope, unreadable, or not VSCHAR: RFC 6749 appendix A). The comparison is of
    /// SHA-256 digests in constant time (docs/external-secrets.md, "At use"). During a
    /// configured `rotation_grace` after a rotation the previous value matches too.
    pub fn verify_client_secret(
        &self,
        name: &str,
        requester: &Requester,
        presented: &[u8],
    ) -> Result<bool, SecretError> {
        let result = self.with_slot(name, requester, |slot| {
            let current = slot.serving().map_err(Clone::clone)?;
            if !current.client_secret_ok {
                return Err(invalid_client_secret(name));
            }
            let presented = Digest::of(presented);
            let mut matches = presented.ct_eq(&current.digest);
            if let Some(previous) = &slot.previous {
                let in_grace = Choice::from(u8::from(Instant::now() < previous.until));
                matches |= presented.ct_eq(&previous.digest) & in_grace;
            }
            Ok(bool::from(matches))
        });
        self.report(name, &result);
        result
    }

    /// Write-time validation of a secret reference (docs/external-secrets.md, "Rules on
    /// write"): the name exists in the config in force and `requester` is in its scope. Does
    /// not look at the file.
    pub fn check_reference(&self, name: &str, requester: &Requester) -> Result<(), SecretError> {
        self.with_slot(name, requester, |_| Ok(()))
    }

    /// Every secret of the config in force, ordered by name, with its state and times.
    pub fn status(&self) -> Vec<SecretStatus> {
        let snap = self.snapshot();
        snap.config
            .secrets()
            .map(|entry| {
                let slot = snap.slots.get(entry.name());
                let (state, size) = match slot.map(|s| &s.state) {
                    Some(SlotState::Good(l)) => (SecretState::Ok, Some(l.value.len())),
                    Some(SlotState::Settling {
                        last_good, error, ..
                    }) => (
                        SecretState::Retrying {
                            reason: error.reason(),
                            message: error.to_string(),
                        },
                        Some(last_good.value.len()),
                    ),
                    Some(SlotState::Failed(error)) => (
                        SecretState::Error {
                            reason: error.reason(),
                            message: error.to_string(),
                        },
                        None,
                    ),
                    None => (
                        SecretState::Error {
                            reason: "missing",
                            message: "not read yet".to_string(),
                        },
                        None,
                    ),
                };
                SecretStatus {
                    name: entry.name().to_string(),
                    path: entry.path().to_path_buf(),
                    scope: entry.scope_strings(),
                    rotation_grace: entry.rotation_grace(),
                    state,
                    last_loaded: slot.and_then(|s| s.last_loaded),
                    last_rotated: slot.and_then(|s| s.last_rotated),
                    size,
                }
            })
            .collect()
    }

    /// Health of the vault config file.
    pub fn config_status(&self) -> ConfigStatus {
        self.snapshot().config_status.clone()
    }

    /// Re-reads the config and every secret now, on the calling thread (for SIGHUP and
    /// tests). The config is re-parsed even when unchanged. Returns the config outcome; on
    /// `Err` the last good config stays in force.
    pub fn reload_now(&self) -> Result<(), ConfigError> {
        let outcome = self.inner.reload_pass(true);
        // Let the reload thread re-arm watches if the set of directories changed.
        self.inner.signal.changed();
        outcome.config
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn with_slot<T>(
        &self,
        name: &str,
        requester: &Requester,
        use_slot: impl FnOnce(&Slot) -> Result<T, SecretError>,
    ) -> Result<T, SecretError> {
        let snap = self.snapshot();
        let entry = snap
            .config
            .get(name)
            .ok_or_else(|| SecretError::UnknownSecret {
                name: name.to_string(),
            })?;
        if !entry.allows(requester) {
            return Err(SecretError::NotInScope {
                name: name.to_string(),
                requester: requester.to_string(),
                scope: entry.scope_strings().join(", "),
            });
        }
        let slot = snap.slots.get(name).ok_or_else(|| SecretError::Missing {
            name: name.to_string(),
            path: entry.path().to_path_buf(),
            dangling: false,
        })?;
        use_slot(slot)
    }

    fn report<T>(&self, name: &str, result: &Result<T, SecretError>) {
        let reason = match result {
            Ok(_) => "ok",
            Err(err) => {
                tracing::debug!(secret = name, reason = err.reason(), "secret use refused");
                err.reason()
            }
        };
        self.inner.options.events.resolution(name, reason);
    }

    #[cfg(test)]
    fn passes(&self) -> u64 {
        self.inner.passes.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for SecretResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.snapshot();
        f.debug_struct("SecretResolver")
            .field("config_path", &self.inner.config_path)
            .field(
                "secrets",
                &snap
                    .config
                    .secrets()
                    .map(SecretEntry::name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// One full re-read: config, then every secret; then the new snapshot is swapped in
    /// whole. Serialised by the state lock.
    fn reload_pass(&self, force: bool) -> PassOutcome {
        self.passes.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut retry_soon = false;

        let config_result = self.refresh_config(&mut st, force, now, wall, &mut retry_soon);
        let config = st.config.clone();

        // A secret that left the config, or whose path changed, starts over: its old value
        // came from a file the config no longer names.
        let mut slots = std::mem::take(&mut st.slots);
        slots.retain(|name, slot| config.get(name).is_some_and(|e| e.path() == slot.path));
        let requests: Vec<SettleRequest<'_>> = config
            .secrets()
            .map(|entry| SettleRequest {
                name: entry.name(),
                path: entry.path(),
                cached: slots
                    .get(entry.name())
                    .and_then(|slot| Some((slot.last_digest.as_ref()?, slot.last_file))),
            })
            .collect();
        let reads = read_settled(
            &requests,
            self.options.max_file_size,
            SettleRule::new(self.options.change_settle),
        );
        drop(requests);
        for (entry, read) in config.secrets().zip(reads) {
            match slots.get_mut(entry.name()) {
                Some(slot) => retry_soon |= self.apply_read(slot, entry, read, now, wall),
                None => {
                    slots.insert(entry.name().to_string(), first_read(entry, read, wall));
                }
            }
        }
        for slot in slots.values_mut() {
            if slot.previous.as_ref().is_some_and(|p| now >= p.until) {
                slot.previous = None;
            }
        }
        st.slots = slots;

        let snapshot = Arc::new(Snapshot {
            config: config.clone(),
            slots: st.slots.clone(),
            config_status: ConfigStatus {
                path: self.config_path.clone(),
                secrets: config.len(),
                last_ok: st.config_last_ok,
                last_error: st.config_error.as_ref().map(|(at, err)| ConfigFailure {
                    at: *at,
                    message: err.to_string(),
                }),
            },
        });
        // Published before the state lock is released, so that two passes (the reload thread
        // and `reload_now`) can never publish out of order.
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
        drop(st);
        PassOutcome {
            retry_soon,
            config: config_result,
            dirs: config.watch_dirs(&self.config_path),
        }
    }

    fn refresh_config(
        &self,
        st: &mut ReloadState,
        force: bool,
        now: Instant,
        wall: SystemTime,
        retry_soon: &mut bool,
    ) -> Result<(), ConfigError> {
        let bytes = match read_bounded(&self.config_path, MAX_CONFIG_SIZE) {
            Ok(bytes) => bytes,
            Err(fault) => {
                // A ConfigMap volume is swapped like a CSI one (docs/external-secrets.md, "Changing
                // the config at run time"): a read can fail for an instant. Report only a failure
                // that outlasts the settle window.
                let err = ConfigError::Read {
                    path: self.config_path.clone(),
                    reason: fault.describe(),
                };
                let since = *st.config_read_failing_since.get_or_insert(now);
                if !force && now.duration_since(since) < self.options.settle_window {
                    *retry_soon = true;
                    return Ok(());
                }
                let already_reported = st.config_error.as_ref().is_some_and(|(_, e)| *e == err);
                if !already_reported {
                    self.config_failed(st, wall, err.clone());
                }
                // Parse again when the file is back, even with the same bytes, to clear the error.
                st.config_seen = None;
                return Err(err);
            }
        };
        st.config_read_failing_since = None;
        let digest = Digest::of(&bytes);
        if !force && st.config_seen.as_ref() == Some(&digest) {
            return match &st.config_error {
                Some((_, err)) => Err(err.clone()),
                None => Ok(()),
            };
        }
        st.config_seen = Some(digest);
        let types: Vec<&str> = self
            .options
            .secret_capable_types
            .iter()
            .map(String::as_str)
            .collect();
        match VaultConfig::parse(&bytes, &self.config_path, &types) {
            Ok(config) => {
                let changed = *st.config != config;
                st.config = Arc::new(config);
                st.config_last_ok = wall;
                st.config_error = None;
                self.options.events.config_reload(true);
                if changed {
                    tracing::info!(path = %self.config_path.display(), secrets = st.config.len(), "vault config reloaded");
                }
                Ok(())
            }
            Err(err) => {
                self.config_failed(st, wall, err.clone());
                Err(err)
            }
        }
    }

    fn config_failed(&self, st: &mut ReloadState, wall: SystemTime, err: ConfigError) {
        tracing::warn!(error = %err, "vault config rejected; the last good config stays in force");
        self.options.events.config_reload(false);
        st.config_error = Some((wall, err));
    }

    /// Folds one read into an existing slot. Returns true while the slot is settling.
    fn apply_read(
        &self,
        slot: &mut Slot,
        entry: &SecretEntry,
        read: Result<FileRead, SecretError>,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        let name = entry.name();
        match read {
            Ok(read) => {
                slot.last_file = Some(read.file);
                let fresh = Loaded::new(read);
                let rotated = slot
                    .last_digest
                    .as_ref()
                    .is_some_and(|d| !bool::from(d.ct_eq(&fresh.digest)));
                if let SlotState::Failed(err) = &slot.state {
                    tracing::info!(
                        secret = name,
                        previous_reason = err.reason(),
                        "secret readable again"
                    );
                    if !rotated {
                        fresh.warn_if_one_byte(name);
                    }
                }
                if rotated {
                    // Grace applies only to a value that was being served right up to now: a
                    // secret that failed (e.g. was removed from the mount) must not come back.
                    slot.previous = match (slot.serving(), entry.rotation_grace()) {
                        (Ok(old), Some(grace)) if !grace.is_zero() => Some(Previous {
                            value: old.value.clone(),
                            digest: old.digest.clone(),
                            until: saturating_add(now, grace),
                        }),
                        _ => None,
                    };
                    slot.last_rotated = Some(wall);
                    self.options.events.rotation(name);
                    tracing::info!(secret = name, "secret rotated");
                    fresh.warn_if_one_byte(name);
                    slot.last_digest = Some(fresh.digest.clone());
                    slot.state = SlotState::Good(fresh);
                } else {
                    // Same content: keep the value already handed out instead of the new copy.
                    let kept = match &slot.state {
                        SlotState::Good(l) | SlotState::Settling { last_good: l, .. } => l.clone(),
                        SlotState::Failed(_) => fresh,
                    };
                    slot.last_digest = Some(kept.digest.clone());
                    slot.state = SlotState::Good(kept);
                }
                slot.last_loaded = Some(wall);
                false
            }
            Err(error) => {
                let (next, settling) = match &slot.state {
                    SlotState::Good(last_good) => {
                        tracing::debug!(
                            secret = name,
                            reason = error.reason(),
                            "secret read failed; serving the last good value while retrying"
                        );
                        let next = SlotState::Settling {
                            last_good: last_good.clone(),
                            error,
                            since: now,
                        };
                        (next, true)
                    }
                    SlotState::Settling {
                        last_good, since, ..
                    } => {
                        if now.duration_since(*since) >= self.options.settle_window {
                            tracing::warn!(secret = name, reason = error.reason(), error = %error, "secret unavailable: reads kept failing; its uses now fail");
                            slot.previous = None;
                            (SlotState::Failed(error), false)
                        } else {
                            let next = SlotState::Settling {
                                last_good: last_good.clone(),
                                error,
                                since: *since,
                            };
                            (next, true)
                        }
                    }
                    SlotState::Failed(old) => {
                        if old.reason() != error.reason() {
                            tracing::warn!(secret = name, reason = error.reason(), error = %error, "secret unavailable");
                        }
                        (SlotState::Failed(error), false)
                    }
                };
                slot.state = next;
                settling
            }
        }
    }
}

fn first_read(entry: &SecretEntry, read: Result<FileRead, SecretError>, wall: SystemTime) -> Slot {
    let (state, last_digest, last_file, last_loaded) = match read {
        Ok(read) => {
            let file = read.file;
            let loaded = Loaded::new(read);
            loaded.warn_if_one_byte(entry.name());
            let digest = loaded.digest.clone();
            (
                SlotState::Good(loaded),
                Some(digest),
                Some(file),
                Some(wall),
            )
        }
        Err(error) => {
            tracing::warn!(secret = entry.name(), reason = error.reason(), error = %error, "secret unavailable");
            (SlotState::Failed(error), None, None, None)
        }
    };
    Slot {
        path: entry.path().to_path_buf(),
        state,
        previous: None,
        last_digest,
        last_file,
        last_loaded,
        last_rotated: None,
    }
}

/// The reload thread: waits for a watcher signal, the poll tick or a retry, re-reads
/// everything, and keeps the watches in line with the directories of the config in force.
/// Holds only a weak reference, so dropping the last `SecretResolver` ends it.
fn reload_loop(
    weak: &Weak<Inner>,
    signal: &Signal,
    mut watcher: Option<DirWatcher>,
    timing: LoopTiming,
    first: PassOutcome,
) {
    let LoopTiming { poll, retry } = timing;
    let mut retry_soon = first.retry_soon;
    let mut dirs = first.dirs;
    let mut next_poll = saturating_add(Instant::now(), poll);
    loop {
        let now = Instant::now();
        // A directory that could not be watched yet (not created yet, recreated) is retried
        // at the fast cadence, not at the poll, so the watcher takes over again quickly.
        let pending = watcher.as_ref().is_some_and(DirWatcher::has_pending);
        let wake = if retry_soon || pending {
            next_poll.min(saturating_add(now, retry))
        } else {
            next_poll
        };
        let flags = signal.wait(wake.saturating_duration_since(now));
        if flags.stop {
            break;
        }
        let Some(inner) = weak.upgrade() else { break };
        if flags.changed || retry_soon || Instant::now() >= next_poll {
            let outcome = inner.reload_pass(false);
            retry_soon = outcome.retry_soon;
            dirs = outcome.dirs;
            next_poll = saturating_add(Instant::now(), poll);
        }
        if let Some(w) = watcher.as_mut() {
            // A newly armed watch may have missed changes made before it existed.
            if w.sync(&dirs, flags.rearm) {
                signal.changed();
            }
        }
    }
    tracing::debug!("secret reload thread stopped");
}

#[derive(Clone, Copy)]
struct LoopTiming {
    poll: Duration,
    retry: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use fhirbox_test_support::wait_until;

    #[test]
    fn own_reads_do_not_wake_the_watcher_in_a_loop() {
        // Plain files directly in the watched directory: every read opens a file there, which
        // inotify reports on the directory.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vault.json");
        fs::write(dir.path().join("a"), b"one").unwrap();
        let json = format!(
            r#"{{"secret": {{"a": {{"path": "{}", "scope": ["Client"]}}}}}}"#,
            dir.path().join("a").display()
        );
        fs::write(&config, json).unwrap();
        let mut options = ResolverOptions::new(["Client"]);
        options.poll_interval = Duration::from_secs(3600);
        let r = SecretResolver::start(&config, options).unwrap();
        let who = Requester::new("Client", "x");

        fs::write(dir.path().join("a"), b"two").unwrap();
        assert!(wait_until(Duration::from_secs(2), || r
            .resolve("a", &who)
            .unwrap()
            .expose_bytes()
            == b"two"));
        // Let the trailing events of that write drain, then expect (near) silence.
        let settled = wait_until(Duration::from_secs(2), || {
            let before = r.passes();
            thread::sleep(Duration::from_millis(100));
            r.passes() == before
        });
        assert!(
            settled,
            "reload passes never stop: our own reads keep waking the watcher"
        );
        let before = r.passes();
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            assert!(
                r.passes() <= before + 1,
                "self-triggered reload loop: {} passes",
                r.passes() - before
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn reload_thread_stops_when_the_last_clone_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vault.json");
        fs::write(&config, br#"{"secret": {}}"#).unwrap();
        let mut options = ResolverOptions::new(["Client"]);
        options.poll_interval = Duration::from_millis(20);
        let r = SecretResolver::start(&config, options).unwrap();
        let signal = r.inner.signal.clone();
        let r2 = r.clone();
        drop(r);
        assert!(Arc::strong_count(&signal) > 1);
        drop(r2);
        // The thread and the watcher callback each hold the signal; both let go once stopped.
        assert!(wait_until(Duration::from_secs(5), || Arc::strong_count(
            &signal
        ) == 1));
    }
}
