//! Waiting for a condition with a deadline, never a bare sleep: tests of
//! anything asynchronous (a file watcher, a cache, a token's expiry) poll what
//! they expect until it holds or the deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two checks of an in-process condition: short, because such
/// a check is cheap and tests of the secret watcher race it against writers.
const POLL: Duration = Duration::from_millis(2);

/// Pause between two checks of an async condition, which is usually a whole
/// request to the server under test.
const POLL_ASYNC: Duration = Duration::from_millis(10);

/// Checks `condition` until it holds (`true`) or `within` has passed (`false`).
/// It is always checked at least once, and once more at the deadline.
pub fn wait_until(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// [`wait_until`] for conditions that are futures (an HTTP request, a store
/// query); it sleeps on the tokio runtime, so the server under test keeps
/// running on the same threads.
pub async fn wait_until_async<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_ASYNC.min(deadline - now)).await;
    }
}

/// [`wait_until_async`] for a condition that yields a value: the first
/// `Some` it gives, or `None` once `within` has passed.
pub async fn wait_for_async<T, F, Fut>(within: Duration, mut condition: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = condition().await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_ASYNC.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_at_the_deadline_and_stops_as_soon_as_the_condition_holds() {
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(started.elapsed() >= Duration::from_millis(50));
        let mut checks = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            checks += 1;
            checks == 3
        }));
        assert_eq!(checks, 3);
    }

    #[tokio::test]
    async fn the_async_form_behaves_the_same() {
        let started = Instant::now();
        assert!(!wait_until_async(Duration::from_millis(50), || async { false }).await);
        assert!(started.elapsed() >= Duration::from_millis(50));
        let mut checks = 0;
        assert!(
            wait_until_async(Duration::from_secs(5), || {
                checks += 1;
                let done = checks == 3;
                async move { done }
            })
            .await
        );
        assert_eq!(checks, 3);
    }
}
