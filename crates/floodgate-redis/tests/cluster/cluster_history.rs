//! The history checker on a Redis Cluster with replicas (3 + 3) while its topology changes
//! under load: a manual failover of the hot key's master, a migration of the hot key's slot
//! to another master (ASK, then MOVED), and finally a crash of the master that then owns it
//! (its replica takes over). Four tasks decide on a hot key and 50 cold ones, fail-closed.
//!
//! Every node runs on this machine, so the script's `TIME` reads the same clock as this
//! process: each decision is bracketed by the system clock read around the call.
//!
//! Guarantees checked: no over-admission in any window through the failover and the
//! migration (zero tolerance, checked against the real burst up to the crash), and at most
//! one extra burst per key for the crash, where asynchronous replication may lose the last
//! writes (checked against burst + burst over the whole run).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use floodgate::{Limit, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::history::{self, Event};
use floodgate_testkit::redis_server::RedisCluster;

fn limit() -> Limit {
    Limit::per_second(500).burst(10)
}

use crate::common::now_ns;

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Moves every key of `slot` from master `from` to master `to`, then assigns the slot.
fn migrate(cluster: &RedisCluster, slot: u16, from: usize, to: usize) {
    let (source, target) = (&cluster.nodes()[from], &cluster.nodes()[to]);
    let slot_text = slot.to_string();
    let (source_id, target_id) = (source.node_id(), target.node_id());
    assert_eq!(
        target.cli(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &source_id]),
        "OK"
    );
    assert_eq!(
        source.cli(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &target_id]),
        "OK"
    );
    loop {
        let keys = source.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = target.port().to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        assert_eq!(source.cli(&args), "OK");
    }
    for node in cluster.nodes().iter().filter(|n| n.ping() && n.is_master()) {
        assert_eq!(
            node.cli(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &target_id]),
            "OK"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_changes_under_load_keep_every_window_within_bounds() {
    let mut cluster = RedisCluster::start_with_replicas(3, 1_000);
    let limiter = Arc::new(RateLimiter::new(
        RedisStore::builder(&cluster.url())
            .batching(true)
            .timeout(Duration::from_millis(300))
            .on_failure(FailurePolicy::Deny)
            .circuit_breaker(3, Duration::from_millis(100))
            .build()
            .await
            .unwrap(),
    ));
    let policy = Policy::new("cluster-history", [limit()]).unwrap();
    // Create the hot bucket, in debt so that it lives a while (its debt is capped at two
    // bursts: 40 ms), to learn its key (and so its slot); again if it expired before the
    // scan found it, as it can on a loaded machine.
    let mut hot_key = None;
    for _ in 0..50 {
        limiter.charge(&policy, "hot", 200).await.unwrap();
        hot_key = cluster
            .nodes()
            .iter()
            .filter(|n| n.is_master())
            .find_map(|n| {
                n.cli(&["--scan", "--pattern", "fg1{*"])
                    .lines()
                    .next()
                    .map(str::to_owned)
            });
        if hot_key.is_some() {
            break;
        }
    }
    let hot_key = hot_key.expect("the hot bucket exists");
    let slot = cluster.nodes()[0].key_slot(&hot_key);

    let stop = Arc::new(AtomicBool::new(false));
    let tasks = crate::common::hot_and_cold_load(&limiter, &policy, &stop, 4);

    // The topology changes, from a blocking thread (redis-cli).
    let crash_at = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(700));
        let master = cluster.master_for_slot(slot);
        let replica = cluster.replica_of(master);
        assert_eq!(cluster.nodes()[replica].cli(&["CLUSTER", "FAILOVER"]), "OK");
        wait_for("the manual failover", Duration::from_secs(15), || {
            cluster.nodes()[replica].is_master()
        });
        cluster.wait_until_ok(Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(700));
        let owner = cluster.master_for_slot(slot);
        let other = (0..cluster.nodes().len())
            .find(|&i| i != owner && cluster.nodes()[i].ping() && cluster.nodes()[i].is_master())
            .unwrap();
        migrate(&cluster, slot, owner, other);
        std::thread::sleep(Duration::from_millis(700));
        let owner = cluster.master_for_slot(slot);
        let heir = cluster.replica_of(owner);
        let crash_at = now_ns();
        cluster.node_mut(owner).kill();
        wait_for(
            "the promotion after the crash",
            Duration::from_secs(20),
            || cluster.nodes()[heir].is_master(),
        );
        cluster.wait_until_ok(Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(700));
        (cluster, crash_at)
    });
    let (cluster, crash_at) = crash_at.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    let mut fallbacks = 0;
    for task in tasks {
        let (mine, n) = task.await.unwrap();
        events.extend(mine);
        fallbacks += n;
    }
    drop(cluster);

    // Up to the crash: the real burst, zero tolerance.
    let before: Vec<Event> = events.iter().filter(|e| e.hi < crash_at).cloned().collect();
    let report = history::check(&limit(), &before).unwrap_or_else(|v| panic!("{v}"));
    println!("failover and migration: {report}");
    assert!(report.decisions > 500, "{report}");
    // The whole run, crash included: at most one extra burst per key.
    let crash_bound = Limit::per_second(500).burst(20);
    let report = history::check(&crash_bound, &events).unwrap_or_else(|v| panic!("{v}"));
    println!("whole run ({fallbacks} fail-closed decisions): {report}");
    match history::check(&limit(), &events) {
        Ok(_) => println!("the crash lost no write"),
        Err(v) => println!("the crash lost writes: {v}"),
    }
    let served_after = events.iter().filter(|e| e.lo > crash_at).count();
    assert!(served_after > 0, "service returned after the crash");
}
