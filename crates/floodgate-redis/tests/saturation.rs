//! No over-admission across processes: two OS processes, each with four tasks on one key
//! and four tasks spread over 1 000 keys, hammer a real `redis-server` on its own clock. For
//! every key, admitted ≤ B + ⌊r·span⌋ (zero tolerance). Under saturating demand the one key
//! admits ≥ 99% of its bound. The 1 000 keys are visited in turn, so each is under demand
//! only from its first visit: together they admit ≥ 99% of their bounds counted from the
//! moment every key had been visited once (Redis time, reported by the workers).
//!
//! The worker processes are this test binary re-run with `saturation_worker`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::process::{Command, Stdio};
use std::time::Duration;

use floodgate::{Limit, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;
use floodgate_testkit::window;

const KEYS: usize = 1_000;
const WINDOW_US: u64 = 4_000_000;

fn one_key_limit() -> Limit {
    Limit::per_second(1_000).burst(20)
}

fn many_keys_limit() -> Limit {
    // A burst deep enough that a key visited every few hundred milliseconds never sits full
    // (which would waste refill): only the end of the window loses a fraction of a token.
    Limit::per_second(5).burst(10)
}

fn redis_time(server: &RedisServer) -> u64 {
    let reply = server.cli(&["TIME"]);
    let mut parts = reply.lines().map(|l| l.trim().parse::<u64>().unwrap());
    parts.next().unwrap() * 1_000_000 + parts.next().unwrap()
}

#[test]
fn two_processes_never_over_admit_and_saturate_the_bound() {
    let server = RedisServer::start();
    let start = redis_time(&server) + 1_000_000; // time for the workers to start
    let end = start + WINDOW_US;
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "saturation_worker",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(
                    "FLOODGATE_SATURATION",
                    format!("{} {start} {end}", server.url()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let workers: Vec<_> = workers
        .into_iter()
        .map(|w| w.wait_with_output().unwrap())
        .collect();
    let finished = redis_time(&server);
    let mut one = 0u64;
    let mut many = vec![0u64; KEYS];
    let mut all_visited = u64::MAX;
    for output in &workers {
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "worker failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("admitted ").map(|(_, counts)| counts))
            .unwrap_or_else(|| panic!("no report from a worker:\n{stdout}"));
        let mut counts = line.split(',').map(|n| n.parse::<u64>().unwrap());
        all_visited = all_visited.min(counts.next().unwrap());
        one += counts.next().unwrap();
        for (total, n) in many.iter_mut().zip(counts) {
            *total += n;
        }
    }
    // Every admission happened within [start, finished].
    let span_ns = (finished - start) * 1_000;
    let upper = window::bound(&one_key_limit(), span_ns);
    let lower = window::bound(&one_key_limit(), WINDOW_US * 1_000);
    assert!(one <= upper, "one key: admitted {one} > bound {upper}");
    assert!(
        one * 100 >= lower * 99,
        "one key: admitted {one} < 99% of {lower}"
    );
    println!("one key: admitted {one}, bound {upper}, saturation floor {lower}");
    let upper = window::bound(&many_keys_limit(), span_ns);
    for (key, &n) in many.iter().enumerate() {
        assert!(n <= upper, "key {key}: admitted {n} > bound {upper}");
    }
    assert!(
        all_visited < end,
        "the keys were not all visited before the window closed"
    );
    let demanded = window::bound(&many_keys_limit(), (end - all_visited) * 1_000);
    let total: u64 = many.iter().sum();
    let bounds = demanded * KEYS as u64;
    println!("1 000 keys: admitted {total} in all, {bounds} under demand; per key at most {upper}");
    assert!(
        total * 100 >= bounds * 99,
        "1 000 keys: admitted {total} < 99% of {bounds}"
    );
}

/// One worker process: waits for `start` on the Redis clock, hammers until `end`, prints
/// its admissions. Does nothing unless run by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of two_processes_never_over_admit_and_saturate_the_bound"]
async fn saturation_worker() {
    let Ok(spec) = std::env::var("FLOODGATE_SATURATION") else {
        return;
    };
    let mut spec = spec.split(' ');
    let url = spec.next().unwrap().to_owned();
    let start: u64 = spec.next().unwrap().parse().unwrap();
    let end: u64 = spec.next().unwrap().parse().unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let clock = client.get_multiplexed_async_connection().await.unwrap();
    let limiter = std::sync::Arc::new(RateLimiter::new(
        RedisStore::builder(&url)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap(),
    ));
    let one = Policy::new("one", [one_key_limit()]).unwrap();
    let many = Policy::new("many", [many_keys_limit()]).unwrap();
    while now(&mut clock.clone()).await < start {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (limiter, one, many, mut clock) =
                (limiter.clone(), one.clone(), many.clone(), clock.clone());
            tokio::spawn(async move {
                let mut counts = vec![0u64; KEYS + 1];
                let mut visited_all = u64::MAX;
                let mut checks = 0;
                let mut i = task;
                loop {
                    for _ in 0..32 {
                        let (policy, key, slot) = if task < 4 {
                            (&one, "hot".to_owned(), 0)
                        } else {
                            (&many, format!("k{}", i % KEYS), 1 + i % KEYS)
                        };
                        if limiter.check(policy, &key).await.unwrap().is_allowed() {
                            counts[slot] += 1;
                        }
                        i += 7;
                        checks += 1;
                    }
                    let time = now(&mut clock).await;
                    // Stepping by 7 over 1 000 keys visits every key once per 1 000 checks.
                    if task >= 4 && checks >= KEYS && visited_all == u64::MAX {
                        visited_all = time;
                    }
                    if time >= end {
                        return (visited_all, counts);
                    }
                }
            })
        })
        .collect();
    let mut totals = vec![0u64; KEYS + 1];
    let mut all_visited = u64::MAX;
    for task in tasks {
        let (visited, counts) = task.await.unwrap();
        all_visited = all_visited.min(visited);
        for (total, n) in totals.iter_mut().zip(counts) {
            *total += n;
        }
    }
    let report: Vec<String> = std::iter::once(all_visited)
        .chain(totals)
        .map(|n| n.to_string())
        .collect();
    println!("admitted {}", report.join(","));
}

/// The Redis server's clock, in microseconds.
async fn now(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await.unwrap();
    seconds * 1_000_000 + micros
}
