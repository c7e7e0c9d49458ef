//! Keeping an in-memory view of some resource types (the authenticator's
//! clients and policies, the subscriptions' topics and destinations) in
//! step with the database, which other instances may change: the change
//! marker the view was loaded at, the lock that lets one reload run at a
//! time, and a gate for callers that may ask often.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::MutexGuard;

use crate::{ChangeMarker, StoreResult};

/// The change marker of a view of `types`.
pub struct ChangeWatch {
    types: &'static [&'static str],
    /// The marker the view was loaded at.
    marker: AtomicI64,
    reload: tokio::sync::Mutex<()>,
    /// When `due` last said yes (milliseconds since `started`).
    asked: AtomicI64,
    started: Instant,
    every_ms: i64,
}

/// A reload in progress: it holds the lock; `marker` is what the database
/// said before the view is read, to be passed to [`ChangeWatch::loaded`].
pub struct Reload<'a> {
    _lock: MutexGuard<'a, ()>,
    pub marker: i64,
}

impl ChangeWatch {
    /// A watch of `types` whose `due` says yes at most once per `every`.
    pub fn new(types: &'static [&'static str], every: Duration) -> ChangeWatch {
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
        ChangeWatch {
            types,
            marker: AtomicI64::new(i64::MIN),
            reload: tokio::sync::Mutex::new(()),
            asked: AtomicI64::new(i64::MIN / 2),
            started: Instant::now(),
            every_ms,
        }
    }

    /// Starts a reload whatever the marker says.
    pub async fn begin(&self, store: &impl ChangeMarker) -> StoreResult<Reload<'_>> {
        let lock = self.reload.lock().await;
        let marker = store.latest_change(self.types).await?;
        Ok(Reload {
            _lock: lock,
            marker,
        })
    }

    /// Starts a reload if the database changed since the view was loaded
    /// (asked again under the lock, so of several callers that notice one
    /// change, one reloads).
    pub async fn begin_if_changed(
        &self,
        store: &impl ChangeMarker,
    ) -> StoreResult<Option<Reload<'_>>> {
        if store.latest_change(self.types).await? == self.marker.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let reload = self.begin(store).await?;
        Ok((reload.marker != self.marker.load(Ordering::SeqCst)).then_some(reload))
    }

    /// The view now reflects the database at `reload`'s marker.
    pub fn loaded(&self, reload: Reload<'_>) {
        self.marker.store(reload.marker, Ordering::SeqCst);
    }

    /// Yes at most once per the watch's interval, to whichever caller asks
    /// first: a gate for asking the database on a path that runs often.
    pub fn due(&self) -> bool {
        let now = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let last = self.asked.load(Ordering::SeqCst);
        now - last >= self.every_ms
            && self
                .asked
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }
}
