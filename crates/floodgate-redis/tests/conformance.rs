//! The shared conformance suite against a real `redis-server` of the test's own, driven by a
//! manual clock through the test-only clock override.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use floodgate_testkit::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_passes_the_conformance_suite() {
    suite(0).await;
}

/// With the deny cache, denials are answered locally: decisions must not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_with_its_deny_cache_passes_the_conformance_suite() {
    suite(1_000).await;
}

async fn suite(deny_cache: usize) {
    let server = RedisServer::start();
    common::conformance_suite(&server.url(), deny_cache).await;
    // Every key written carries a TTL: PTTL is -1 for a key without one (-2 for a key that
    // has expired since the scan, 0 for one expiring right now).
    let keys = server.cli(&["--scan", "--pattern", "*fg1{*"]);
    assert!(!keys.is_empty(), "the suite wrote no keys");
    for key in keys.lines() {
        let ttl: i64 = server.cli(&["PTTL", key]).parse().unwrap_or(-3);
        assert!(ttl >= 0 || ttl == -2, "key {key} has PTTL {ttl}");
    }
}
