//! Keeps credential checks fair and uniform under attack (docs/security.md):
//!
//! - Every failed secret check takes about as long as one KDF run, whether
//!   the client id exists or not, so timing does not tell which ids exist.
//!   Paths that need no KDF wait out the measured KDF time instead of
//!   burning a core on a dummy hash.
//! - At most `KDF_SLOTS` KDF runs happen at once. A client id that failed
//!   recently is "suspect": its checks take a single lane of their own
//!   before a slot, so a flood of wrong secrets for one id holds at most one
//!   slot and other clients wait for at most one run. A suspect queue that
//!   grows past `SUSPECT_QUEUE_MAX` is refused outright.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use tokio::sync::{Semaphore, SemaphorePermit};

/// KDF runs allowed at once, so wrong-secret floods cannot take every core.
pub const KDF_SLOTS: usize = 2;
/// How long a failure marks a client id as suspect.
pub const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Suspect checks allowed to wait at once; more are refused.
pub const SUSPECT_QUEUE_MAX: usize = 64;
/// Bound on remembered failures.
const FAILURES_MAX: usize = 10_000;

/// The permission to run one KDF verification.
pub struct KdfPermit<'a> {
    _slot: SemaphorePermit<'a>,
    _lane: Option<SemaphorePermit<'a>>,
}

/// Counts a waiting suspect check until it stops waiting (also when the
/// request is dropped while it waits).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct KdfGate {
    slots: Semaphore,
    suspect_lane: Semaphore,
    suspect_waiting: AtomicUsize,
    /// Digest of a client id -> when it last failed.
    failures: Mutex<HashMap<[u8; 32], Instant>>,
    /// Moving average of one KDF run, in microseconds.
    estimate_micros: AtomicU64,
}

impl KdfGate {
    pub fn new(initial_estimate: Duration) -> KdfGate {
        KdfGate {
            slots: Semaphore::new(KDF_SLOTS),
            suspect_lane: Semaphore::new(1),
            suspect_waiting: AtomicUsize::new(0),
            failures: Mutex::new(HashMap::new()),
            estimate_micros: AtomicU64::new(initial_estimate.as_micros() as u64),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_suspect(&self, id: &[u8; 32]) -> bool {
        self.failures()
            .get(id)
            .is_some_and(|at| at.elapsed() < SUSPECT_FOR)
    }

    pub fn record_failure(&self, id: [u8; 32]) {
        let mut failures = self.failures();
        if failures.len() >= FAILURES_MAX {
            failures.retain(|_, at| at.elapsed() < SUSPECT_FOR);
            if failures.len() >= FAILURES_MAX {
                failures.clear();
            }
        }
        failures.insert(id, Instant::now());
    }

    pub fn clear(&self, id: &[u8; 32]) {
        self.failures().remove(id);
    }

    /// Waits for a KDF slot, through the suspect lane when `id` failed
    /// recently; `None` when the suspect queue is full.
    pub async fn admit(&self, id: &[u8; 32]) -> Option<KdfPermit<'_>> {
        let mut lane = None;
        loop {
            if lane.is_none() && self.is_suspect(id) {
                if self.suspect_waiting.fetch_add(1, Ordering::SeqCst) >= SUSPECT_QUEUE_MAX {
                    self.suspect_waiting.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
                let waiting = Waiting(&self.suspect_waiting);
                lane = Some(self.suspect_lane.acquire().await.ok()?);
                drop(waiting);
            }
            let slot = self.slots.acquire().await.ok()?;
            // The id may have failed while this check waited: take the lane
            // then, so a burst that arrived before the first failure does
            // not keep every slot.
            if lane.is_none() && self.is_suspect(id) {
                drop(slot);
                continue;
            }
            return Some(KdfPermit {
                _slot: slot,
                _lane: lane,
            });
        }
    }

    /// Folds the duration of a real KDF run into the estimate.
    pub fn observe(&self, took: Duration) {
        let sample = took.as_micros() as u64;
        let old = self.estimate_micros.load(Ordering::Relaxed);
        self.estimate_micros
            .store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }

    /// The current estimate of one KDF run.
    pub fn estimate(&self) -> Duration {
        Duration::from_micros(self.estimate_micros.load(Ordering::Relaxed))
    }

    /// Sleeps until about one KDF run (±10%) has passed since `since`.
    pub async fn pad(&self, since: Instant) {
        let estimate = self.estimate_micros.load(Ordering::Relaxed);
        let jitter = u64::from(OsRng.next_u32()) % (estimate / 5 + 1);
        let target = Duration::from_micros(estimate - estimate / 10 + jitter);
        tokio::time::sleep_until((since + target).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn suspect_ids_share_one_lane_and_clean_ids_keep_a_slot() {
        let gate = KdfGate::new(Duration::from_millis(1));
        let (bad, good) = ([1u8; 32], [2u8; 32]);
        gate.record_failure(bad);
        assert!(gate.is_suspect(&bad) && !gate.is_suspect(&good));
        let first = gate.admit(&bad).await.expect("a suspect gets the lane");
        // The lane is taken: a second suspect check waits, a clean one does not.
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.admit(&bad)).await;
        assert!(waiting.is_err(), "the suspect lane admits one at a time");
        let clean = tokio::time::timeout(Duration::from_secs(5), gate.admit(&good))
            .await
            .expect("a clean id gets the free slot")
            .unwrap();
        drop((first, clean));
        gate.clear(&bad);
        assert!(!gate.is_suspect(&bad));
    }

    #[tokio::test]
    async fn a_full_suspect_queue_is_refused() {
        let gate = std::sync::Arc::new(KdfGate::new(Duration::from_millis(1)));
        let bad = [9u8; 32];
        gate.record_failure(bad);
        let held = gate.admit(&bad).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..SUSPECT_QUEUE_MAX {
            let gate = gate.clone();
            waiters.push(tokio::spawn(
                async move { gate.admit(&bad).await.is_some() },
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.suspect_waiting.load(Ordering::SeqCst) < SUSPECT_QUEUE_MAX {
            assert!(Instant::now() < deadline, "waiters queue up");
            tokio::task::yield_now().await;
        }
        assert!(gate.admit(&bad).await.is_none(), "one more is refused");
        drop(held);
        for w in waiters {
            assert!(w.await.unwrap(), "queued checks are served in turn");
        }
        assert_eq!(gate.suspect_waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn padding_waits_about_one_estimate() {
        let gate = KdfGate::new(Duration::from_millis(40));
        let start = Instant::now();
        gate.pad(start).await;
        assert!(start.elapsed() >= Duration::from_millis(36));
        gate.observe(Duration::from_millis(80));
        assert!(gate.estimate() > Duration::from_millis(40));
    }
}
