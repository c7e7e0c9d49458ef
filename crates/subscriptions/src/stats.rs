//! The counters of one destination's delivery on this instance (`$status`,
//! metrics), which the delivery workers and the Kafka client's callbacks
//! both write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// What happened to one destination's notifications on this instance since
/// it started (`$status`, metrics).
#[derive(Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    pub in_process: AtomicU64,
    /// Best-effort notifications dropped: the memory queue was full, or
    /// the send failed.
    pub lost: AtomicU64,
    last_error: Mutex<Option<(String, SystemTime)>>,
}

impl Stats {
    /// The last failure: what went wrong (never a credential or a response
    /// body) and when.
    pub fn last_error(&self) -> Option<(String, SystemTime)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a problem the Kafka client reported between sends (shown
    /// by `$status` as the last error, not counted as a failed attempt).
    pub(crate) fn noticed(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((message, SystemTime::now()));
    }

    pub(crate) fn failed(&self, message: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((message, SystemTime::now()));
    }
}
