//! Many threads using a secret while it rotates (reference test 20): every answer is the
//! current value, the previous one within grace, or a clean "no"; never a panic, an error,
//! or a torn or empty value.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::common::*;

fn value(n: u32) -> String {
    // "vN-xxxxxxxx": the suffix varies with N so that a mix of two values is detectable.
    format!("v{n}-{:08x}", n.wrapping_mul(0x9e37_79b9))
}

#[test]
fn readers_see_only_written_values_during_twenty_rotations() {
    let fx = Fixture::new();
    fx.mount.write(&[("s", value(0).as_bytes())]).unwrap();
    fx.write_config(&json!({"secret": {"s": {"path": fx.mount.path_of("s"), "scope": ["Client"], "rotation_grace": "10s"}}}));
    let r = fx.start(events_only());
    let written: Arc<BTreeSet<String>> = Arc::new((0..=20).map(value).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let matched = Arc::new(AtomicUsize::new(0));
    let moved_on = Arc::new(AtomicUsize::new(0));

    let readers: Vec<_> = (0..6)
        .map(|i| {
            let (r, written, stop, matched, moved_on) = (
                r.clone(),
                written.clone(),
                stop.clone(),
                matched.clone(),
                moved_on.clone(),
            );
            thread::spawn(move || {
                let who = client(&format!("reader-{i}"));
                let mut loops = 0u64;
                while !stop.load(Ordering::Relaxed) || loops == 0 {
                    loops += 1;
                    let seen = r
                        .resolve("s", &who)
                        .expect("resolve must not fail during rotations");
                    let seen = String::from_utf8(seen.expose_bytes().to_vec()).expect("torn value");
                    assert!(written.contains(&seen), "value never written: {seen:?}");
                    // The value just resolved is current or, after one rotation, previous within
                    // the 10 s grace; only two rotations in between can make it fail.
                    if r.verify_client_secret("s", &who, seen.as_bytes())
                        .expect("verify must not fail")
                    {
                        matched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let now = r.resolve("s", &who).unwrap();
                        assert_ne!(
                            now.expose_bytes(),
                            seen.as_bytes(),
                            "current value rejected"
                        );
                        moved_on.fetch_add(1, Ordering::Relaxed);
                    }
                    assert!(!r
                        .verify_client_secret("s", &who, b"v99-not-written")
                        .unwrap());
                    assert!(!r.verify_client_secret("s", &who, b"").unwrap());
                }
                loops
            })
        })
        .collect();

    for n in 1..=20 {
        let v = value(n);
        fx.mount.write(&[("s", v.as_bytes())]).unwrap();
        assert!(
            wait_until(Duration::from_secs(2), || current(
                &r,
                "s",
                &client("writer")
            )
            .as_deref()
                == Some(v.as_bytes())),
            "rotation {n} not seen"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let loops: u64 = readers
        .into_iter()
        .map(|h| h.join().expect("a reader panicked"))
        .sum();

    assert!(loops >= 6, "readers ran {loops} times");
    assert!(matched.load(Ordering::Relaxed) > 0);
    assert_eq!(
        current(&r, "s", &client("x")).unwrap(),
        value(20).as_bytes()
    );
    // After the last rotation: current and previous (grace) match, older ones do not.
    assert!(r
        .verify_client_secret("s", &client("x"), value(20).as_bytes())
        .unwrap());
    assert!(r
        .verify_client_secret("s", &client("x"), value(19).as_bytes())
        .unwrap());
    assert!(!r
        .verify_client_secret("s", &client("x"), value(18).as_bytes())
        .unwrap());
    eprintln!(
        "{loops} reader loops, {} matched, {} moved on",
        matched.load(Ordering::Relaxed),
        moved_on.load(Ordering::Relaxed)
    );
}
