//! The shared conformance suite against a real `redis-server` of the test's own, driven by a
//! manual clock through the test-only clock override: one test per case, with batching (the
//! default) without and with the deny cache, and with every decision its own call; the
//! concurrency cases, batched and as single calls; and one run of the whole suite that checks every key it wrote expires.

use crate::common;

use floodgate::ManualClock;
use floodgate_redis::RedisStore;
use floodgate_testkit::conformance::Case;
use floodgate_testkit::redis_server::RedisServer;

async fn on_a_fresh_server(case: Case<RedisStore<ManualClock>>, deny_cache: usize, batching: bool) {
    let server = RedisServer::start();
    case(common::harness(&server.url(), "case:", deny_cache, batching).await).await;
}

async fn without_deny_cache(case: Case<RedisStore<ManualClock>>) {
    on_a_fresh_server(case, 0, true).await;
}

/// With the deny cache, denials are answered locally: decisions must not change.
async fn with_deny_cache(case: Case<RedisStore<ManualClock>>) {
    on_a_fresh_server(case, 1_000, true).await;
}

/// Batching off: every decision is one call of the single-decision script.
async fn single_calls(case: Case<RedisStore<ManualClock>>) {
    on_a_fresh_server(case, 0, false).await;
}

mod redis_store {
    floodgate_testkit::conformance_tests!(super::without_deny_cache);
}

mod redis_store_with_deny_cache {
    floodgate_testkit::conformance_tests!(super::with_deny_cache);
}

mod redis_store_single_calls {
    floodgate_testkit::conformance_tests!(super::single_calls);
}

mod redis_store_concurrency {
    floodgate_testkit::concurrency_tests!(super::without_deny_cache);
}

mod redis_store_concurrency_single_calls {
    floodgate_testkit::concurrency_tests!(super::single_calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_the_suite_writes_expires() {
    let server = RedisServer::start();
    common::conformance_suite(&server.url(), 0, true).await;
    common::concurrency_suite(&server.url(), true).await;
    // Every key written carries a TTL: PTTL is -1 for a key without one (-2 for a key that
    // has expired since the scan, 0 for one expiring right now).
    let keys = server.cli(&["--scan", "--pattern", "*fg1{*"]);
    assert!(!keys.is_empty(), "the suite wrote no keys");
    for key in keys.lines() {
        let ttl: i64 = server.cli(&["PTTL", key]).parse().unwrap_or(-3);
        assert!(ttl >= 0 || ttl == -2, "key {key} has PTTL {ttl}");
    }
}
