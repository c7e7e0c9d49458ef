//! Keeps credential checks fair and uniform under attack (docs/security.md):
//!
//! - Every failed secret check costs what a KDF run costs: a wrong secret for
//!   a hashed client runs the KDF; every other failure (unknown id, no
//!   secret, wrong root or vault-backed secret) takes a KDF slot the same way
//!   and waits one measured KDF time in it, without using a core. So neither
//!   the answer, its timing, nor how concurrent attempts queue tells whether
//!   a client id exists.
//! - At most `KDF_SLOTS` checks hold a slot at once. A client id that failed
//!   recently, or an address with `ADDRESS_FAILURES` recent failures, is
//!   "suspect": its checks share one lane before a slot, so floods hold at
//!   most one slot and other clients wait for at most one run. Each suspect
//!   id (or address) may have a few checks waiting; more are refused.
//! - A permit lives as long as the KDF run it admitted, even when the
//!   request that asked for it is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Checks allowed to hold a KDF slot at once.
pub const KDF_SLOTS: usize = 2;
/// How long failures count.
pub const SUSPECT_FOR: Duration = Duration::from_secs(60);
/// Failures from one address (within `SUSPECT_FOR`) that make it suspect;
/// one failure is enough for a client id.
pub const ADDRESS_FAILURES: u32 = 10;
/// Suspect checks one client id may have waiting; more are refused.
pub const WAITING_PER_ID: usize = 8;
/// Suspect checks one address may have waiting; more are refused.
pub const WAITING_PER_ADDRESS: usize = 32;
/// Bound on remembered ids and addresses.
const RECORDS_MAX: usize = 10_000;

/// A client id or an address, as a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

/// What one credential check is accounted under.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    id: Key,
    address: Option<Key>,
}

impl Keys {
    pub fn new(client_id: &str, address: Option<IpAddr>) -> Keys {
        let digest = |kind: &[u8], value: &[u8]| {
            let mut hasher = Sha256::new();
            hasher.update(kind);
            hasher.update(value);
            Key(hasher.finalize().into())
        };
        Keys {
            id: digest(b"id:", client_id.as_bytes()),
            address: address.map(|a| digest(b"addr:", a.to_string().as_bytes())),
        }
    }
}

#[derive(Debug)]
struct Record {
    failures: u32,
    first: Instant,
    last: Instant,
    waiting: usize,
}

impl Record {
    fn recent_failures(&self) -> u32 {
        if self.last.elapsed() < SUSPECT_FOR {
            self.failures
        } else {
            0
        }
    }
}

/// The permission to run one KDF verification (or its stand-in).
pub struct KdfPermit {
    _slot: OwnedSemaphorePermit,
    _lane: Option<OwnedSemaphorePermit>,
}

/// Counts a waiting suspect check until it stops waiting (also when the
/// request is dropped while it waits).
struct Waiting<'a> {
    gate: &'a KdfGate,
    keys: Keys,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut records = self.gate.records();
        for key in [Some(self.keys.id), self.keys.address]
            .into_iter()
            .flatten()
        {
            if let Some(r) = records.get_mut(&key) {
                r.waiting = r.waiting.saturating_sub(1);
            }
        }
    }
}

pub struct KdfGate {
    slots: Arc<Semaphore>,
    suspect_lane: Arc<Semaphore>,
    records: Mutex<HashMap<Key, Record>>,
    /// Moving average of one KDF run, in microseconds.
    estimate_micros: AtomicU64,
}

impl KdfGate {
    pub fn new(initial_estimate: Duration) -> KdfGate {
        KdfGate {
            slots: Arc::new(Semaphore::new(KDF_SLOTS)),
            suspect_lane: Arc::new(Semaphore::new(1)),
            records: Mutex::new(HashMap::new()),
            estimate_micros: AtomicU64::new(initial_estimate.as_micros() as u64),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_suspect(&self, keys: &Keys) -> bool {
        let records = self.records();
        records
            .get(&keys.id)
            .is_some_and(|r| r.recent_failures() > 0)
            || keys.address.is_some_and(|a| {
                records
                    .get(&a)
                    .is_some_and(|r| r.recent_failures() >= ADDRESS_FAILURES)
            })
    }

    /// Counts a failure against the id and the address.
    pub fn record_failure(&self, keys: &Keys) {
        let mut records = self.records();
        if records.len() >= RECORDS_MAX {
            records.retain(|_, r| r.waiting > 0 || r.last.elapsed() < SUSPECT_FOR);
            if records.len() >= RECORDS_MAX {
                records.retain(|_, r| r.waiting > 0);
            }
        }
        let now = Instant::now();
        for key in [Some(keys.id), keys.address].into_iter().flatten() {
            let r = records.entry(key).or_insert(Record {
                failures: 0,
                first: now,
                last: now,
                waiting: 0,
            });
            if now.duration_since(r.first) >= SUSPECT_FOR {
                r.failures = 0;
                r.first = now;
            }
            r.failures = r.failures.saturating_add(1);
            r.last = now;
        }
    }

    /// A right secret clears the id's failures (not the address's).
    pub fn record_success(&self, keys: &Keys) {
        let mut records = self.records();
        if let Some(r) = records.get_mut(&keys.id) {
            r.failures = 0;
            if r.waiting == 0 {
                records.remove(&keys.id);
            }
        }
    }

    /// Joins the suspect queue of the id and the address, or `None` when
    /// either already has its fill waiting.
    fn enqueue(&self, keys: Keys) -> Option<Waiting<'_>> {
        let mut records = self.records();
        let full = |key: Key, max: usize, records: &HashMap<Key, Record>| {
            records.get(&key).is_some_and(|r| r.waiting >= max)
        };
        if full(keys.id, WAITING_PER_ID, &records)
            || keys
                .address
                .is_some_and(|a| full(a, WAITING_PER_ADDRESS, &records))
        {
            return None;
        }
        let now = Instant::now();
        for key in [Some(keys.id), keys.address].into_iter().flatten() {
            records
                .entry(key)
                .or_insert(Record {
                    failures: 0,
                    first: now,
                    last: now,
                    waiting: 0,
                })
                .waiting += 1;
        }
        Some(Waiting { gate: self, keys })
    }

    /// Waits for a KDF slot, through the suspect lane when the id or the
    /// address failed recently; `None` when the suspect queue is full.
    pub async fn admit(&self, keys: &Keys) -> Option<KdfPermit> {
        let mut lane = None;
        loop {
            if lane.is_none() && self.is_suspect(keys) {
                let waiting = self.enqueue(*keys)?;
                lane = Some(self.suspect_lane.clone().acquire_owned().await.ok()?);
                drop(waiting);
            }
            let slot = self.slots.clone().acquire_owned().await.ok()?;
            // The id may have failed while this check waited: take the lane
            // then, so a burst that arrived before the first failure does
            // not keep every slot.
            if lane.is_none() && self.is_suspect(keys) {
                drop(slot);
                continue;
            }
            return Some(KdfPermit {
                _slot: slot,
                _lane: lane,
            });
        }
    }

    /// Stands in for a KDF run on a failure path that needs none: admitted
    /// like a KDF run, then one estimated run of waiting. False when the
    /// suspect queue was full.
    pub async fn stand_in(&self, keys: &Keys) -> bool {
        let Some(_permit) = self.admit(keys).await else {
            return false;
        };
        self.pad(Instant::now()).await;
        true
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
        let jitter = getrandom::u64().unwrap_or(0) % (estimate / 5 + 1);
        let target = Duration::from_micros(estimate - estimate / 10 + jitter);
        tokio::time::sleep_until((since + target).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(id: &str, address: Option<&str>) -> Keys {
        Keys::new(id, address.map(|a| a.parse().unwrap()))
    }

    #[tokio::test]
    async fn suspect_ids_share_one_lane_and_clean_ids_keep_a_slot() {
        let gate = KdfGate::new(Duration::from_millis(1));
        let (bad, good) = (keys("bad", None), keys("good", None));
        gate.record_failure(&bad);
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
        gate.record_success(&bad);
        assert!(!gate.is_suspect(&bad));
    }

    #[tokio::test]
    async fn each_suspect_id_has_a_bounded_queue_of_its_own() {
        let gate = Arc::new(KdfGate::new(Duration::from_millis(1)));
        let (bad, victim) = (keys("bad", None), keys("victim", None));
        gate.record_failure(&bad);
        gate.record_failure(&victim);
        let held = gate.admit(&bad).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..WAITING_PER_ID {
            let gate = gate.clone();
            waiters.push(tokio::spawn(
                async move { gate.admit(&bad).await.is_some() },
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.records().get(&bad.id).map_or(0, |r| r.waiting) < WAITING_PER_ID {
            assert!(Instant::now() < deadline, "waiters queue up");
            tokio::task::yield_now().await;
        }
        assert!(
            gate.admit(&bad).await.is_none(),
            "one more for that id is refused"
        );
        // Another suspect id still queues (its own count), and is served.
        let victim_turn = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(&victim).await.is_some() })
        };
        drop(held);
        assert!(victim_turn.await.unwrap());
        for w in waiters {
            assert!(w.await.unwrap(), "queued checks are served in turn");
        }
        assert_eq!(gate.records().get(&bad.id).unwrap().waiting, 0);
    }

    #[tokio::test]
    async fn an_address_becomes_suspect_after_repeated_failures() {
        let gate = KdfGate::new(Duration::from_millis(1));
        for i in 0..ADDRESS_FAILURES {
            let k = keys(&format!("random-{i}"), Some("192.0.2.7"));
            assert!(!gate.is_suspect(&k), "failure {i}");
            gate.record_failure(&k);
        }
        assert!(gate.is_suspect(&keys("fresh", Some("192.0.2.7"))));
        assert!(!gate.is_suspect(&keys("fresh", Some("192.0.2.8"))));
        assert!(!gate.is_suspect(&keys("fresh", None)));
    }

    #[tokio::test]
    async fn a_stand_in_holds_a_slot_for_about_one_estimate() {
        let gate = Arc::new(KdfGate::new(Duration::from_millis(40)));
        let start = Instant::now();
        assert!(gate.stand_in(&keys("nobody", None)).await);
        assert!(start.elapsed() >= Duration::from_millis(36));
        // Two stand-ins hold both slots: a third check waits for one.
        let (a, b) = (gate.clone(), gate.clone());
        let one = tokio::spawn(async move { a.stand_in(&keys("x", None)).await });
        let two = tokio::spawn(async move { b.stand_in(&keys("y", None)).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.slots.available_permits() > 0 {
            assert!(Instant::now() < deadline, "stand-ins take the slots");
            tokio::task::yield_now().await;
        }
        assert!(one.await.unwrap() && two.await.unwrap());
        gate.observe(Duration::from_millis(80));
        assert!(gate.estimate() > Duration::from_millis(40));
    }
}
