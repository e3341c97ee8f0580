//! Redis Sentinel (a master, a replica and Sentinels of the test's own): the conformance
//! suite through `redis+sentinel://` with batching on and off; a `SENTINEL FAILOVER` under
//! load keeps every window within `2B + ⌊r·(Δ + W)⌋`, W the time from the promotion until
//! the store stopped writing to the old master (measured); a killed master is replaced and
//! service returns within 2 s of the promotion.
//!
//! Every server runs on this machine, so the scripts' `TIME` reads the clock this process
//! brackets each decision with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::now_ns;

use floodgate::{DecisionSource, Error, Limit, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::history;
use floodgate_testkit::redis_server::SentinelGroup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_passes_through_sentinel_with_batching_on_and_off() {
    let group = SentinelGroup::start(2, 1_000);
    // A Sentinel that is down comes first: the store asks the next one.
    let url = group
        .url()
        .replace("redis+sentinel://", "redis+sentinel://127.0.0.1:1,");
    common::conformance_suite(&url, 0, true).await;
    common::conformance_suite(&url, 0, false).await;
    common::concurrency_suite(&url, true).await;
    // Everything went to the master: the replica holds copies, and refuses writes.
    let keys = group.servers()[0].cli(&["DBSIZE"]);
    assert_ne!(keys, "0", "the suite wrote to the master");
}

#[tokio::test]
async fn bad_sentinel_urls_and_unknown_masters_are_clear_errors() {
    for url in [
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/",
        "redis+sentinel:///master",
    ] {
        let error = RedisStore::builder(url).check().unwrap_err();
        assert!(
            matches!(error, Error::InvalidConfig { knob: "url", .. }),
            "{url}: {error:?}"
        );
    }
    let group = SentinelGroup::start(1, 1_000);
    let url = group.url().replace("/floodgate", "/nobody");
    let error = RedisStore::builder(&url)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Store(_)), "{error:?}");
    assert!(error.to_string().contains("nobody"), "{error}");
}

/// Polls the servers every couple of milliseconds: when the replica became master, and the
/// last moment the old master was seen running a decision script that succeeded.
struct Watch {
    /// The last poll that still saw server 1 as a replica, before one saw it as master.
    promoted_after: Option<u64>,
    /// The poll that first saw the old master's count of successful scripts stop rising for
    /// good (the end of the last poll interval in which it rose).
    last_old_write: u64,
    /// When the store first reported a move to another master.
    switched_at: Option<u64>,
}

fn watch(
    group: &SentinelGroup,
    store: RedisStore,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Watch> {
    let urls: Vec<String> = group.servers().iter().map(|s| s.url()).collect();
    std::thread::spawn(move || {
        // One connection per server, opened again whenever a role change closes it.
        let mut connections: Vec<Option<redis::Connection>> = vec![None, None];
        let mut info = |server: usize, section: &str| -> String {
            for _ in 0..2 {
                if connections[server].is_none() {
                    connections[server] = redis::Client::open(urls[server].as_str())
                        .ok()
                        .and_then(|c| c.get_connection().ok());
                }
                let Some(connection) = connections[server].as_mut() else {
                    continue;
                };
                match redis::cmd("INFO").arg(section).query::<String>(connection) {
                    Ok(text) => return text,
                    Err(_) => connections[server] = None,
                }
            }
            String::new()
        };
        let succeeded = |text: String| -> Option<i64> {
            if text.is_empty() {
                return None;
            }
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
                .unwrap_or_default();
            let field = |name: &str| -> i64 {
                line.split(',')
                    .find_map(|kv| kv.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            Some(field("calls=") - field("failed_calls="))
        };
        let mut watch = Watch {
            promoted_after: None,
            last_old_write: 0,
            switched_at: None,
        };
        let mut last_count = succeeded(info(0, "commandstats")).unwrap_or(0);
        let mut last_poll = now_ns();
        while !stop.load(Ordering::Relaxed) {
            let count = succeeded(info(0, "commandstats"));
            let now = now_ns();
            if let Some(count) = count {
                if count != last_count {
                    watch.last_old_write = now;
                    last_count = count;
                }
            }
            if watch.promoted_after.is_none() && info(1, "replication").contains("role:master") {
                watch.promoted_after = Some(last_poll);
            }
            if watch.switched_at.is_none() && store.stats().master_switches > 0 {
                watch.switched_at = Some(now);
            }
            last_poll = now;
            std::thread::sleep(Duration::from_millis(2));
        }
        watch
    })
}

fn limit() -> Limit {
    Limit::per_second(500).burst(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_keeps_every_window_within_bounds() {
    let group = SentinelGroup::start(2, 1_000);
    let store = RedisStore::builder(&group.url())
        .timeout(Duration::from_millis(300))
        .on_failure(FailurePolicy::Deny)
        .circuit_breaker(3, Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let limiter = Arc::new(RateLimiter::new(store.clone()));
    let policy = Policy::new("sentinel-history", [limit()]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = common::hot_and_cold_load(&limiter, &policy, &stop, 4);
    let watching = Arc::new(AtomicBool::new(false));
    let watcher = watch(&group, store.clone(), watching.clone());

    let group = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(700));
        let before = group.master_port();
        assert_eq!(
            group.sentinel(&["SENTINEL", "FAILOVER", SentinelGroup::MASTER]),
            "OK"
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while group.master_port() == before {
            assert!(Instant::now() < deadline, "Sentinel did not fail over");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Until the old master is a replica and the load has run on the new one a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !group.servers()[0]
            .cli(&["INFO", "replication"])
            .contains("role:slave")
        {
            assert!(Instant::now() < deadline, "the old master was not demoted");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1_000));
        group
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    let mut fallbacks = 0;
    for task in tasks {
        let (mine, n) = task.await.unwrap();
        events.extend(mine);
        fallbacks += n;
    }
    watching.store(true, Ordering::Relaxed);
    let watch = watcher.join().unwrap();
    drop(group);

    let promoted = watch.promoted_after.expect("the replica was promoted");
    let w_ns = watch.last_old_write.saturating_sub(promoted);
    let switched = watch
        .switched_at
        .expect("the store moved to the new master");
    let w = Duration::from_nanos(w_ns);
    eprintln!(
        "W (promotion until the last write the old master took): {w:?}; the store moved {:?} \
         after the promotion; {fallbacks} fail-closed decisions",
        Duration::from_nanos(switched.saturating_sub(promoted))
    );
    assert!(
        switched.saturating_sub(promoted) < 2_000_000_000,
        "service on the new master within 2 s of the promotion"
    );
    // 2B + ⌊r·(Δ + W)⌋ ≥ (2B + ⌊r·W⌋) + ⌊r·Δ⌋: checked with that burst, zero tolerance.
    let b = u64::from(limit().capacity());
    let extra = (500 * w_ns / 1_000_000_000) as u32;
    let bound = Limit::per_second(500).burst(u32::try_from(2 * b).unwrap() + extra);
    let report = history::check(&bound, &events).unwrap_or_else(|v| panic!("{v}"));
    println!("through the failover: {report}");
    assert!(report.decisions > 500, "{report}");
    match history::check(&limit(), &events) {
        Ok(_) => println!("the failover lost no write: B + ⌊r·Δ⌋ held"),
        Err(v) => println!("writes were lost with the old master: {v}"),
    }
    let served_after = events.iter().filter(|e| e.lo > switched).count();
    assert!(served_after > 100, "service on the new master");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_and_service_returns_within_two_seconds() {
    let mut group = SentinelGroup::start(1, 500);
    let store = RedisStore::builder(&group.url())
        .timeout(Duration::from_millis(300))
        .on_failure(FailurePolicy::Error)
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store.clone());
    let policy = Policy::parse("api", "1/hour burst 5").unwrap();
    for _ in 0..3 {
        assert!(limiter.check(&policy, "victim").await.unwrap().is_allowed());
    }
    // Let replication ship the writes (asynchronous: a crash right after a write may lose it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let old = group.master_port();
    group.server_mut(0).kill();
    let killed = Instant::now();
    loop {
        // Decisions fail while there is no master; none is replayed.
        let _ = limiter.peek(&policy, "victim").await;
        if group.master_port() != old {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "no promotion");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let promoted = Instant::now();
    let decision = loop {
        match limiter.peek(&policy, "victim").await {
            Ok(decision) if decision.source() == DecisionSource::Store => break decision,
            _ => {
                assert!(
                    promoted.elapsed() < Duration::from_secs(2),
                    "no service 2 s after the promotion"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    eprintln!(
        "killed master: promoted {:?} after the kill, served again {:?} after the promotion",
        promoted - killed,
        promoted.elapsed()
    );
    assert_eq!(
        decision.remaining(),
        2,
        "replication had shipped the writes"
    );
    assert_eq!(store.stats().master_switches, 1);
}
