//! Soak: eight tasks keep 20 000 keys at saturation through the Redis store (deny cache off:
//! every decision a round trip); once every key
//! exists, Redis's `used_memory` and this process's resident memory stay flat, and decisions
//! per CPU second (this process's and Redis's) do not decay. 6 s by default;
//! `FLOODGATE_SOAK_SECS=600 cargo test --release -p floodgate-redis --test soak` for ten
//! minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::{Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;
use floodgate_testkit::soak::{self, Sample};

const KEYS: u64 = 20_000;

fn used_memory(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_stays_flat_under_a_long_saturating_load() {
    let server = RedisServer::start();
    let run = soak::duration(Duration::from_secs(6));
    let interval = run / 12;
    let limiter = Arc::new(RateLimiter::new(
        // A generous timeout: the soak watches for degradation, not for latency spikes of a
        // shared machine.
        // Without the deny cache, every decision is a Redis round trip.
        RedisStore::builder(&server.url())
            .timeout(Duration::from_secs(2))
            .deny_cache(0)
            .build()
            .await
            .unwrap(),
    ));
    // A key is visited about once a second, far more often than it refills: every key stays
    // in Redis (its TTL is the time until its bucket is full again).
    let policy = Policy::parse("soak", "10/min burst 2").unwrap();
    let decisions = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let (limiter, policy, decisions, stop) = (
                limiter.clone(),
                policy.clone(),
                decisions.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    i = (i + 7_919) % KEYS;
                    limiter.check(&policy, &format!("user:{i}")).await.unwrap();
                    decisions.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut redis_samples = Vec::new();
    let mut process_samples = Vec::new();
    let mut cpu = soak::CpuClock::new(&[server.pid()]);
    for _ in 0..12 {
        tokio::time::sleep(interval).await;
        let rate = cpu.rate(decisions.load(Ordering::Relaxed));
        redis_samples.push(Sample {
            rate,
            memory: used_memory(&server),
        });
        process_samples.push(Sample {
            rate,
            memory: soak::resident_bytes().unwrap_or(0),
        });
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let keys: u64 = server.cli(&["DBSIZE"]).trim().parse().unwrap();
    assert_eq!(keys, KEYS, "every key exists, none twice");
    let redis = soak::judge(&redis_samples, 0.10, soak::MIN_RATE_RATIO)
        .unwrap_or_else(|e| panic!("Redis: {e}\n{redis_samples:?}"));
    eprintln!("Redis used_memory: {redis}");
    if soak::resident_bytes().is_some() {
        let process = soak::judge(&process_samples, 0.10, soak::MIN_RATE_RATIO)
            .unwrap_or_else(|e| panic!("client process: {e}\n{process_samples:?}"));
        eprintln!("client process: {process}");
    }
}
