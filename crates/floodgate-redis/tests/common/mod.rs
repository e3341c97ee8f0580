//! Shared by the Redis test files: a conformance harness against a URL, and the whole suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodgate::{ManualClock, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::conformance::{self, Harness};

/// A conformance harness on the Redis at `url`: keys under `prefix`, a manual clock (the
/// test-only override), a deny cache of `deny_cache` keys, batching on or off.
pub(crate) async fn harness(
    url: &str,
    prefix: &str,
    deny_cache: usize,
    batching: bool,
) -> Harness<RedisStore<ManualClock>> {
    let clock = ManualClock::new();
    let store = RedisStore::builder(url)
        .key_prefix(prefix)
        .deny_cache(deny_cache)
        .batching(batching)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Harness {
        limiter: Arc::new(RateLimiter::new(store)),
        clock,
        resolution: Duration::from_micros(1),
    }
}

/// Runs the whole conformance suite against the Redis at `url`, each case on a fresh key
/// prefix (fresh state), with a deny cache of `deny_cache` keys, batching on or off.
#[allow(dead_code)] // not every test file that shares this module runs the whole suite
pub(crate) async fn conformance_suite(url: &str, deny_cache: usize, batching: bool) {
    // Unique across runs on one server.
    static CASE: AtomicU32 = AtomicU32::new(0);
    conformance::run(|| {
        let prefix = format!("case{}:", CASE.fetch_add(1, Ordering::Relaxed));
        let url = url.to_owned();
        async move { harness(&url, &prefix, deny_cache, batching).await }
    })
    .await;
}
