//! Writers that rewrite a secret file in place instead of swapping it (an editor, `kubectl
//! cp`, a hostPath volume): truncate, write part of the value, pause, write the rest. A
//! partial value must never be adopted as a rotation (docs/external-secrets.md, "Settle
//! rule"); the value in force stays in force until the new one is complete.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fhirbox_secrets::{ResolverOptions, SecretResolver, SecretState};
use serde_json::json;

use crate::common::*;

/// Rewrites `path` the way an editor saving in place does: truncate, write the first half,
/// pause, write the rest, close. Returns how long the file really sat half-written.
fn rewrite_in_place(path: &Path, value: &[u8], pause: Duration) -> Duration {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let (first, rest) = value.split_at(value.len() / 2);
    file.write_all(first).unwrap();
    let half_written = Instant::now();
    // The scenario's pause between the two writes, not a synchronisation.
    thread::sleep(pause);
    file.write_all(rest).unwrap();
    half_written.elapsed()
}

/// The writer pauses 1 ms between its halves, but on a busy machine it can be descheduled
/// for longer, and no rule can tell a writer stalled that long from one that has finished.
/// The default settle time (50 ms) leaves room for such stalls; these tests run with it.
fn in_place_options() -> ResolverOptions {
    events_only()
}

fn plain_secret(fx: &Fixture, value: &[u8]) -> PathBuf {
    let dir = fx.tmp.path().join("plain");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client-secret");
    fs::write(&path, value).unwrap();
    fx.write_config(&config(&[("client-secret", &path, json!(["Client"]))]));
    path
}

/// Threads that verify `expected()` against the resolver until stopped; counts outcomes.
struct Verifiers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Verifiers {
    fn start(r: &SecretResolver, expected: Arc<Mutex<Vec<Vec<u8>>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let handles = (0..3)
            .map(|i| {
                let (r, expected, stop, ok, failed) = (
                    r.clone(),
                    expected.clone(),
                    stop.clone(),
                    ok.clone(),
                    failed.clone(),
                );
                thread::spawn(move || {
                    let who = client(&format!("verifier-{i}"));
                    while !stop.load(Ordering::Relaxed) {
                        // Any of the accepted values must verify: the one in force before a
                        // rewrite and, once complete, the one it writes.
                        let accepted = expected.lock().unwrap().clone();
                        let verified = accepted.iter().any(|v| {
                            r.verify_client_secret("client-secret", &who, v)
                                .unwrap_or(false)
                        });
                        let counter = if verified { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            handles,
        }
    }

    /// Stops the threads; returns (verified, failed).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().expect("a verifier panicked");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn an_editor_rewriting_the_file_in_place_never_fails_the_current_secret() {
    let value = b"in-place-current-secret-0123456789abcdef";
    let fx = Fixture::new();
    let path = plain_secret(&fx, value);
    let (options, rec) = with_recorder(in_place_options());
    let r = fx.start(options);
    let expected = Arc::new(Mutex::new(vec![value.to_vec()]));
    let verifiers = Verifiers::start(&r, expected);

    let mut longest_pause = Duration::ZERO;
    for _ in 0..150 {
        let pause = rewrite_in_place(&path, value, Duration::from_millis(1));
        longest_pause = longest_pause.max(pause);
        // Let the resolver see each rewrite finish before the next one starts.
        thread::sleep(Duration::from_millis(2));
    }
    assert!(
        wait_until(Duration::from_secs(2), || status_of(&r, "client-secret")
            .state
            == SecretState::Ok),
        "the secret did not come back to ok: {:?}",
        status_of(&r, "client-secret").state
    );
    let (verified, failed) = verifiers.finish();

    assert!(verified > 0, "the verifiers never ran");
    assert_eq!(
        failed,
        0,
        "{failed} of {} verifications of the current secret failed during in-place rewrites \
         (longest half-written pause {longest_pause:?})",
        failed + verified
    );
    assert_eq!(
        rec.rotations_of("client-secret"),
        0,
        "a partial value was adopted as a rotation"
    );
    assert!(r
        .verify_client_secret("client-secret", &client("x"), value)
        .unwrap());
}

#[test]
fn a_new_value_written_in_place_is_adopted_once_complete_and_never_half() {
    let values: Vec<Vec<u8>> = (0..8)
        .map(|n| format!("in-place-rotation-{n}-{:016x}", n * 0x9e37_79b9_u64).into_bytes())
        .collect();
    let fx = Fixture::new();
    let path = plain_secret(&fx, &values[0]);
    let (options, rec) = with_recorder(in_place_options());
    let r = fx.start(options);
    let expected = Arc::new(Mutex::new(vec![values[0].clone()]));
    let verifiers = Verifiers::start(&r, expected.clone());
    let who = client("writer");

    for (n, pair) in values.windows(2).enumerate() {
        let (old, new) = (&pair[0], &pair[1]);
        // While the rewrite is under way the old value is in force, then the new one.
        expected.lock().unwrap().push(new.clone());
        rewrite_in_place(&path, new, Duration::from_millis(1));
        assert!(
            wait_until(Duration::from_secs(2), || current(
                &r,
                "client-secret",
                &who
            )
            .as_deref()
                == Some(new.as_slice())),
            "rewrite {n} was never adopted"
        );
        expected.lock().unwrap().retain(|v| v != old);
        assert!(!r.verify_client_secret("client-secret", &who, old).unwrap());
    }
    let (verified, failed) = verifiers.finish();

    assert!(verified > 0, "the verifiers never ran");
    assert_eq!(
        failed, 0,
        "{failed} verifications saw neither the old nor the new value"
    );
    // Exactly one rotation per complete value: no partial value was ever adopted.
    assert_eq!(rec.rotations_of("client-secret"), values.len() - 1);
    assert_eq!(status_of(&r, "client-secret").state, SecretState::Ok);
    assert_eq!(
        current(&r, "client-secret", &who).unwrap(),
        values[values.len() - 1]
    );
}
