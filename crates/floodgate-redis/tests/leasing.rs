//! Token leasing under the history checker: three worker processes × four tasks share one
//! Redis, leasing (L = 50 ms) on a hot key and twenty warm ones, every decision bracketed by
//! reads of the host's realtime clock (the clock Redis `TIME` reads on this machine). Every
//! window of every key must respect `B + ⌊r·(Δ + L)⌋` (zero tolerance) until Redis is
//! killed and restarted empty near the end, and `2B + ⌊r·(Δ + L)⌋` over the whole run.
//! Under demand that saturates every node, the hot key admits at least 95% of
//! `B + ⌊r·Δ⌋` over the run.
//!
//! Admissions are all recorded; denials (mostly answered by the deny cache, millions of
//! them) one in 64, enough to show the demand never let up.
//!
//! The worker processes are this test binary re-run with `leasing_worker`.
//! `FLOODGATE_HISTORY_SECS` lengthens the run (default 4 s).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::now_ns;

use floodgate::{DecisionSource, Limit, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::history::{self, Event};
use floodgate_testkit::redis_server::RedisServer;

const LEASE: Duration = Duration::from_millis(50);
const WARM_KEYS: usize = 20;

/// 1 000/s, burst 100: r·L = 50 tokens exactly.
fn limit() -> Limit {
    Limit::per_second(1_000).burst(100)
}

#[test]
fn leasing_never_admits_more_than_b_plus_r_times_delta_plus_l() {
    let seconds: u64 = std::env::var("FLOODGATE_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let mut server = RedisServer::start();
    let start = now_ns() + 1_000_000_000;
    let end = start + seconds * 1_000_000_000;
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "leasing_worker", "--ignored", "--nocapture"])
                .env(
                    "FLOODGATE_LEASING",
                    format!("{} {start} {end}", server.url()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Redis dies and comes back empty 600 ms before the end: every bucket is forgotten.
    let restart_at = end - 600_000_000;
    while now_ns() < restart_at {
        std::thread::sleep(Duration::from_millis(5));
    }
    let restarted_at = now_ns();
    server.restart();

    let (events, lines) = common::worker_output(workers);
    let stats: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("STATS "))
        .collect();
    for line in &stats {
        println!("worker: {line}");
    }
    let b = u64::from(limit().capacity());
    let r_l = 50; // r·L: 1 000/s × 50 ms
    // Until the restart: B + ⌊r·(Δ + L)⌋ = (B + r·L) + ⌊r·Δ⌋, zero tolerance.
    let before: Vec<Event> = events
        .iter()
        .filter(|e| e.hi < restarted_at)
        .cloned()
        .collect();
    let leased = Limit::per_second(1_000).burst(u32::try_from(b + r_l).unwrap());
    let report = history::check(&leased, &before).unwrap_or_else(|v| panic!("{v}"));
    println!("before the restart, against B + ⌊r·(Δ + L)⌋: {report}");
    assert!(report.admitted > 2_000, "{report}");
    match history::check(&limit(), &before) {
        Ok(_) => println!("(even B + ⌊r·Δ⌋ held)"),
        Err(v) => println!("leasing used its allowance: B + ⌊r·Δ⌋ alone fails: {v}"),
    }
    // The restart forgets every bucket: one more burst per key over the whole run.
    let forgetful = Limit::per_second(1_000).burst(u32::try_from(2 * b + r_l).unwrap());
    let report = history::check(&forgetful, &events).unwrap_or_else(|v| panic!("{v}"));
    println!("whole run, restart included, against 2B + ⌊r·(Δ + L)⌋: {report}");
    assert!(
        events.iter().any(|e| e.lo > restarted_at && e.admitted),
        "service returned after the restart"
    );
    // Saturation: every node wants far more than the limit gives.
    let (admitted, floor) = history::saturation(&limit(), &before, "hot");
    println!("hot key before the restart: {admitted} admitted, B + ⌊r·Δ⌋ = {floor}");
    assert!(
        admitted * 100 >= floor * 95,
        "saturation: {admitted} admitted of {floor}"
    );
}

/// One worker process. Does nothing unless run by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of leasing_never_admits_more_than_b_plus_r_times_delta_plus_l"]
async fn leasing_worker() {
    let Ok(spec) = std::env::var("FLOODGATE_LEASING") else {
        return;
    };
    let mut spec = spec.split(' ');
    let url = spec.next().unwrap().to_owned();
    let start: u64 = spec.next().unwrap().parse().unwrap();
    let end: u64 = spec.next().unwrap().parse().unwrap();
    let limiter = std::sync::Arc::new(RateLimiter::new(
        RedisStore::builder(&url)
            .timeout(Duration::from_millis(150))
            .on_failure(FailurePolicy::Deny)
            .circuit_breaker(3, Duration::from_millis(50))
            .lease(LEASE)
            .build()
            .await
            .unwrap(),
    ));
    let policy = Policy::new("leasing-history", [limit()]).unwrap();
    while now_ns() < start {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tasks: Vec<_> = (0..4)
        .map(|task| {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tokio::spawn(async move {
                let mut events = Vec::new();
                let mut denials = 0u64;
                let mut i: usize = task;
                loop {
                    i = i.wrapping_mul(31).wrapping_add(7);
                    let key = if i % 4 != 0 {
                        "hot".to_owned()
                    } else {
                        format!("warm{}", (i / 4) % WARM_KEYS)
                    };
                    let lo = now_ns();
                    if lo >= end {
                        return events;
                    }
                    let decision = limiter.check(&policy, &key).await.unwrap();
                    let hi = now_ns();
                    match decision.source() {
                        DecisionSource::Store | DecisionSource::Cache | DecisionSource::Lease => {
                            let admitted = decision.is_allowed();
                            denials += u64::from(!admitted);
                            if admitted || denials % 64 == 0 {
                                events.push(Event {
                                    key,
                                    cost: 1,
                                    admitted,
                                    lo,
                                    hi,
                                });
                            }
                        }
                        other => {
                            assert_eq!(other, DecisionSource::FailClosed);
                            assert!(!decision.is_allowed());
                        }
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        for event in task.await.unwrap() {
            println!("EV {}", event.to_line());
        }
    }
    let stats = limiter.store().stats();
    println!(
        "STATS {} script calls for {} decisions; {} tokens leased, {} spent, {} expired",
        stats.script_calls,
        stats.decisions,
        stats.leased_tokens,
        stats.spent_lease_tokens,
        stats.expired_lease_tokens
    );
}
