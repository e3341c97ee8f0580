//! Redis Cluster: the conformance suite on three local masters, an even slot spread for
//! attacker-chosen keys, and decisions that follow a slot migration (ASK, then MOVED)
//! without losing or replaying state.

use crate::common;

use floodgate::{Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::{RedisCluster, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start(3);
    common::conformance_suite(&cluster.url(), 0, true).await;
    // One call per decision, as before per-slot batching.
    common::conformance_suite(&cluster.url(), 0, false).await;
    common::concurrency_suite(&cluster.url(), true).await;
    common::concurrency_suite(&cluster.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_chosen_by_an_attacker_spread_evenly_and_never_cross_slots() {
    let cluster = RedisCluster::start(3);
    let limiter = RateLimiter::new(RedisStore::connect(&cluster.url()).await.unwrap());
    // Multi-limit: every decision touches two keys, which must share a slot.
    let policy = Policy::parse("spread", "5/h; 100/d").unwrap();
    for i in 0..3_000 {
        // Braces that would pick one slot if they reached Redis as a hash tag.
        let key = format!("{{victim}}:{i}");
        assert!(limiter.check(&policy, &key).await.unwrap().is_allowed());
    }
    let sizes: Vec<u64> = cluster
        .nodes()
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).parse().unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<u64>(), 6_000, "{sizes:?}");
    for size in &sizes {
        assert!(
            (1_600..=2_400).contains(size),
            "uneven spread over masters: {sizes:?}"
        );
    }
}

fn find_key(cluster: &RedisCluster) -> (String, &RedisServer) {
    for node in cluster.nodes() {
        let keys = node.cli(&["--scan", "--pattern", "fg1{*"]);
        if let Some(key) = keys.lines().next() {
            return (key.to_owned(), node);
        }
    }
    panic!("no key written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_a_slot_migration_without_losing_state() {
    let cluster = RedisCluster::start(3);
    // No deny cache: every decision below must reach Redis.
    let store = RedisStore::builder(&cluster.url())
        .batching(true)
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("hot", "3/h").unwrap();
    for _ in 0..3 {
        assert!(
            limiter
                .check(&policy, "hot-key")
                .await
                .unwrap()
                .is_allowed()
        );
    }
    assert!(
        !limiter
            .check(&policy, "hot-key")
            .await
            .unwrap()
            .is_allowed()
    );

    let (key, source) = find_key(&cluster);
    let slot: u16 = source.cli(&["CLUSTER", "KEYSLOT", &key]).parse().unwrap();
    let target = cluster
        .nodes()
        .iter()
        .find(|n| n.port() != source.port())
        .unwrap();
    let (source_id, target_id) = (source.node_id(), target.node_id());
    assert_eq!(
        target.cli(&[
            "CLUSTER",
            "SETSLOT",
            &slot.to_string(),
            "IMPORTING",
            &source_id
        ]),
        "OK"
    );
    assert_eq!(
        source.cli(&[
            "CLUSTER",
            "SETSLOT",
            &slot.to_string(),
            "MIGRATING",
            &target_id
        ]),
        "OK"
    );
    let migrated = source.cli(&[
        "MIGRATE",
        "127.0.0.1",
        &target.port().to_string(),
        "",
        "0",
        "5000",
        "KEYS",
        &key,
    ]);
    assert_eq!(migrated, "OK");

    // Mid-migration the source answers ASK: the store follows it once, with ASKING.
    let d = limiter.check(&policy, "hot-key").await.unwrap();
    assert!(!d.is_allowed(), "the migrated bucket was lost: {d:?}");

    // Migration done: every node says so; the source now answers MOVED.
    for node in cluster.nodes() {
        assert_eq!(
            node.cli(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &target_id]),
            "OK"
        );
    }
    for _ in 0..5 {
        let d = limiter.check(&policy, "hot-key").await.unwrap();
        assert!(!d.is_allowed(), "after MOVED: {d:?}");
    }
    assert!(target.cli(&["PTTL", &key]).parse::<i64>().unwrap() > 0);
    limiter.reset(&policy, "hot-key").await.unwrap();
    assert!(
        limiter
            .check(&policy, "hot-key")
            .await
            .unwrap()
            .is_allowed()
    );
    assert!(target.owns(slot) && !source.owns(slot));
}

/// Decisions waiting for one hot key's slot share batches, and decide as single calls
/// would: 32 checks issued together on a 20-token bucket (two halves of 16 in flight at
/// once, the older first) admit exactly 20, in order.
#[tokio::test]
async fn a_hot_keys_decisions_share_one_batch_per_slot() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::builder(&cluster.url())
        .batching(true)
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("hot", "1/h burst 20").unwrap();
    // The connection to the key's node is open and the script loaded.
    assert_eq!(
        limiter.check(&policy, "warm-up").await.unwrap().remaining(),
        19
    );
    let before = limiter.store().stats();
    let outcomes =
        futures_util::future::join_all((0..32).map(|_| limiter.check(&policy, "hot"))).await;
    let after = limiter.store().stats();
    assert_eq!(
        (
            after.script_calls - before.script_calls,
            after.decisions - before.decisions
        ),
        (2, 32),
        "two batches: {after:?}"
    );
    let remaining: Vec<u64> = outcomes
        .into_iter()
        .map(|o| o.unwrap())
        .filter(|d| d.is_allowed())
        .map(|d| d.remaining())
        .collect();
    assert_eq!(remaining, (0..20).rev().collect::<Vec<u64>>());
}

/// A Cluster leases too (a lease is one batch-script call, routed by its key): a hot key is
/// served from its lease, and the bucket on its node shows every leased token taken.
#[tokio::test]
async fn a_cluster_leases_a_hot_key() {
    let cluster = RedisCluster::start(3);
    let leasing = RateLimiter::new(
        RedisStore::builder(&cluster.url())
            .deny_cache(0)
            .lease_for("hot", std::time::Duration::from_secs(10))
            .build()
            .await
            .unwrap(),
    );
    let plain = RateLimiter::new(RedisStore::connect(&cluster.url()).await.unwrap());
    let policy = Policy::parse("hot", "1/h burst 400").unwrap();
    let mut leased = 0;
    for _ in 0..50 {
        let d = leasing.check(&policy, "k").await.unwrap();
        assert!(d.is_allowed());
        leased += u64::from(d.source() == floodgate::DecisionSource::Lease);
    }
    assert_eq!(
        leased, 49,
        "every decision after the first came from a lease"
    );
    let tokens = leasing.store().lease_tokens("hot");
    assert_eq!(tokens.spent, 49);
    assert_eq!(
        plain.peek(&policy, "k").await.unwrap().remaining(),
        400 - 1 - tokens.leased
    );
}
