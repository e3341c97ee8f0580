//! Redis Cluster failover (3 masters + 3 replicas): a manual `CLUSTER FAILOVER` loses no
//! bucket state and the store follows the new master; a killed master is replaced by its
//! replica and service returns, with at most the writes asynchronous replication had not
//! yet shipped forgotten (each worth at most a burst).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use floodgate::{Decision, DecisionSource, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::redis_server::RedisCluster;

async fn limiter(cluster: &RedisCluster) -> RateLimiter<RedisStore> {
    RateLimiter::new(
        RedisStore::builder(&cluster.url())
            .timeout(Duration::from_millis(300))
            .on_failure(FailurePolicy::Error)
            .deny_cache(0)
            .build()
            .await
            .unwrap(),
    )
}

/// The master holding the (only) bucket written so far, found by its stored key.
fn master_of_bucket(cluster: &RedisCluster) -> usize {
    let slot = cluster
        .nodes()
        .iter()
        .filter(|node| node.ping() && node.is_master())
        .find_map(|node| {
            let keys = node.cli(&["--scan", "--pattern", "fg1{*"]);
            keys.lines().next().map(|key| node.key_slot(key))
        })
        .expect("a bucket on some master");
    cluster.master_for_slot(slot)
}

/// Retries `peek` until the store answers from Redis; returns the decision and how long.
async fn until_served(
    limiter: &RateLimiter<RedisStore>,
    policy: &Policy,
    key: &str,
    within: Duration,
) -> (Decision, Duration) {
    let started = Instant::now();
    loop {
        match limiter.peek(policy, key).await {
            Ok(decision) if decision.source() == DecisionSource::Store => {
                return (decision, started.elapsed());
            }
            _ if started.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => panic!("no service {within:?} after the failover: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_loses_nothing_and_decisions_follow_the_new_master() {
    let cluster = RedisCluster::start_with_replicas(3, 1_000);
    let limiter = limiter(&cluster).await;
    let policy = Policy::parse("api", "1/hour burst 5").unwrap();
    for _ in 0..3 {
        assert!(limiter.check(&policy, "victim").await.unwrap().is_allowed());
    }
    let master = master_of_bucket(&cluster);
    let replica = cluster.replica_of(master);
    // A manual failover waits until the replica has every write: nothing is lost.
    assert_eq!(cluster.nodes()[replica].cli(&["CLUSTER", "FAILOVER"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cluster.nodes()[replica].is_master() {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        std::thread::sleep(Duration::from_millis(25));
    }
    cluster.wait_until_ok(Duration::from_secs(15));
    let (decision, took) = until_served(&limiter, &policy, "victim", Duration::from_secs(5)).await;
    eprintln!("manual failover: served again after {took:?}");
    assert_eq!(decision.remaining(), 2, "the bucket survived the failover");
    assert!(limiter.check(&policy, "victim").await.unwrap().is_allowed());
    assert!(limiter.check(&policy, "victim").await.unwrap().is_allowed());
    assert!(
        !limiter.check(&policy, "victim").await.unwrap().is_allowed(),
        "still exactly the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_service_returns() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1_000);
    let limiter = limiter(&cluster).await;
    let policy = Policy::parse("api", "1/hour burst 5").unwrap();
    for _ in 0..3 {
        assert!(limiter.check(&policy, "victim").await.unwrap().is_allowed());
    }
    // Let replication ship the writes (asynchronous: a crash right after a write may lose it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let master = master_of_bucket(&cluster);
    let replica = cluster.replica_of(master);
    cluster.node_mut(master).kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    while !cluster.nodes()[replica].is_master() {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        std::thread::sleep(Duration::from_millis(25));
    }
    let promoted = killed.elapsed();
    cluster.wait_until_ok(Duration::from_secs(20));
    let (decision, took) = until_served(&limiter, &policy, "victim", Duration::from_secs(10)).await;
    eprintln!("killed master: replica promoted after {promoted:?}, served again {took:?} later");
    assert!(
        took < Duration::from_secs(2),
        "service returns soon after the promotion: {took:?}"
    );
    let lost = decision.remaining().saturating_sub(2);
    eprintln!("tokens regained through the failover: {lost} (bound: the burst, 5)");
    assert!(decision.remaining() >= 2, "{decision:?}");
    assert_eq!(lost, 0, "with replication given time, nothing is lost");
}
