//! Concurrency permits on a real `redis-server` of each test's own, across OS processes:
//! never more than `max` in flight (zero tolerance, every interval bracketed by the host's
//! realtime clock), the limit used under saturating demand, permits of a SIGKILLed holder
//! reclaimed exactly at their lease end, each failure policy through an outage, and a lost
//! acquire reply that never strands a permit longer than its lease.
//!
//! The worker processes are this test binary re-run with `permit_worker` or
//! `permit_holder`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::now_ns;

use floodgate::{Acquisition, Concurrency, DecisionSource, Error, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::proxy::{Fault, Proxy};
use floodgate_testkit::redis_server::RedisServer;

const MAX: u32 = 5;
const WORKERS: usize = 3;
const TASKS: usize = 4;

fn db(lease: Duration) -> Concurrency {
    Concurrency::named("legacy-db", MAX)
        .unwrap()
        .lease(lease)
        .unwrap()
}

/// The most intervals `[lo, hi]` open at one instant; at equal times a close comes first
/// (a release sent at `t` can free the slot an acquire answered at `t` holds).
fn most_overlapping(intervals: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i8)> = intervals
        .iter()
        .flat_map(|&(lo, hi)| [(lo, 1), (hi, -1)])
        .collect();
    edges.sort_unstable();
    let (mut open, mut most) = (0i64, 0i64);
    for (_, step) in edges {
        open += i64::from(step);
        most = most.max(open);
    }
    usize::try_from(most).unwrap()
}

#[test]
fn the_overlap_checker_counts_what_it_should() {
    assert_eq!(most_overlapping(&[(0, 10), (5, 15), (10, 20)]), 2);
    assert_eq!(most_overlapping(&[(0, 10), (1, 9), (2, 8), (3, 7)]), 4);
    assert_eq!(most_overlapping(&[(0, 1), (2, 3)]), 1);
}

#[test]
fn several_processes_never_hold_more_than_max_and_use_the_limit() {
    let server = RedisServer::start();
    let start = now_ns() + 1_000_000_000;
    let end = start + 3_000_000_000;
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "permit_worker", "--ignored", "--nocapture"])
                .env(
                    "FLOODGATE_PERMITS",
                    format!("{} {start} {end}", server.url()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (_, lines) = common::worker_output(workers);
    let mut intervals = Vec::new();
    let mut renewed = 0;
    for line in &lines {
        if let Some(rest) = line.strip_prefix("IV ") {
            let mut parts = rest.split(' ').map(|n| n.parse::<u64>().unwrap());
            let (lo, hi, renews) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            assert!(lo <= hi);
            intervals.push((lo, hi));
            renewed += renews;
        }
    }
    let most = most_overlapping(&intervals);
    // In flight over the run, each interval clipped to it.
    let held: u64 = intervals
        .iter()
        .map(|&(lo, hi)| hi.min(end).saturating_sub(lo.min(end)))
        .sum();
    let span = end - start;
    let mean = held as f64 / span as f64;
    println!(
        "{} permits ({renewed} renewals), at most {most} in flight at once, mean {mean:.2} of {MAX}",
        intervals.len()
    );
    assert!(renewed > 0, "no permit was renewed");
    assert!(
        most <= MAX as usize,
        "{most} permits in flight at once, max {MAX}"
    );
    assert!(
        mean >= 0.9 * f64::from(MAX),
        "under saturating demand the limit was used {mean:.2} of {MAX} on average"
    );
}

/// One worker process: tasks that wait for a permit, hold it 5–24 ms (one in 40 holds it
/// 400 ms, past its 300 ms lease, renewing it halfway), and release it; each interval from
/// the acquire's answer to the release's sending is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of several_processes_never_hold_more_than_max_and_use_the_limit"]
async fn permit_worker() {
    let Ok(spec) = std::env::var("FLOODGATE_PERMITS") else {
        return;
    };
    let mut spec = spec.split(' ');
    let url = spec.next().unwrap().to_owned();
    let start: u64 = spec.next().unwrap().parse().unwrap();
    let end: u64 = spec.next().unwrap().parse().unwrap();
    let limiter = Arc::new(RateLimiter::new(
        RedisStore::builder(&url)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap(),
    ));
    let db = db(Duration::from_millis(300));
    while now_ns() < start {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (limiter, db) = (limiter.clone(), db.clone());
            tokio::spawn(async move {
                let mut intervals = Vec::new();
                let mut i: u64 = task as u64 + 1;
                while now_ns() < end {
                    let Ok(mut permit) =
                        limiter.acquire_wait(&db, "k", Duration::from_secs(1)).await
                    else {
                        continue;
                    };
                    let lo = now_ns();
                    i = i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let mut renews = 0;
                    if (i >> 33) % 40 == 0 {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        permit.renew().await.unwrap();
                        renews = 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(5 + (i >> 40) % 20)).await;
                    }
                    let hi = now_ns();
                    permit.release().await.unwrap();
                    intervals.push((lo, hi, renews));
                }
                intervals
            })
        })
        .collect();
    for task in tasks {
        for (lo, hi, renews) in task.await.unwrap() {
            println!("IV {lo} {hi} {renews}");
        }
    }
}

#[test]
fn a_killed_holders_permits_are_reclaimed_exactly_at_their_lease_end() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(1_500);
    let exe = std::env::current_exe().unwrap();
    let mut holder = Command::new(&exe)
        .args(["--exact", "permit_holder", "--ignored", "--nocapture"])
        .env("FLOODGATE_PERMIT_HOLDER", server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The holder prints when it sent its acquires and when the last answer came.
    let mut reader = BufReader::new(holder.stdout.take().unwrap());
    let (sent, answered) = loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the holder exited"
        );
        if let Some(rest) = line.trim().strip_prefix("HELD ") {
            let (sent, answered) = rest.split_once(' ').unwrap();
            break (
                sent.parse::<u64>().unwrap(),
                answered.parse::<u64>().unwrap(),
            );
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
        let db = db(lease);
        // This node holds the other three slots, renewing them so the key's TTL stays fresh.
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(limiter.acquire(&db, "k").await.unwrap().permit().unwrap());
        }
        holder.kill().unwrap(); // SIGKILL, by our own child's pid
        holder.wait().unwrap();
        let lease_ns = u64::try_from(lease.as_nanos()).unwrap();
        let mut renewed_at = Instant::now();
        loop {
            if renewed_at.elapsed() > Duration::from_millis(400) {
                for permit in &mut mine {
                    permit.renew().await.unwrap();
                }
                renewed_at = Instant::now();
            }
            let lo = now_ns();
            let acquisition = limiter.acquire(&db, "k").await.unwrap();
            let hi = now_ns();
            match acquisition {
                Acquisition::Acquired(permit) => {
                    // Reclaimed no earlier than the lease end on Redis's clock (at or after
                    // the grant, itself after the holder sent its acquire).
                    assert!(
                        hi >= sent + lease_ns,
                        "a slot freed {} ms before the dead holder's lease could end",
                        (sent + lease_ns - hi) / 1_000_000
                    );
                    mine.push(permit);
                    break;
                }
                Acquisition::Full(full) => {
                    assert_eq!(full.in_flight, MAX);
                    // The lease ended no later than its answer plus the lease.
                    assert!(
                        lo <= answered + lease_ns,
                        "still full {} ms after the dead holder's lease ended",
                        (lo - answered - lease_ns) / 1_000_000
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Both of the dead holder's slots are back once both leases ended; ours stayed held
        // throughout.
        while now_ns() <= answered + lease_ns {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        mine.push(limiter.acquire(&db, "k").await.unwrap().permit().unwrap());
        assert!(!limiter.acquire(&db, "k").await.unwrap().is_acquired());
        assert!(limiter.store().stats().permits_reclaimed >= 2);
        let ttl: i64 = server.cli(&["PTTL", &permit_key(&server)]).parse().unwrap();
        assert!(ttl > 0 && ttl <= 1_500, "PTTL {ttl}");
        drop(mine);
    });
}

/// The one permit set the test above wrote.
fn permit_key(server: &RedisServer) -> String {
    let keys = server.cli(&["--scan", "--pattern", "*fg1{*}p"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].to_owned()
}

/// Takes two permits and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of a_killed_holders_permits_are_reclaimed_exactly_at_their_lease_end"]
async fn permit_holder() {
    let Ok(url) = std::env::var("FLOODGATE_PERMIT_HOLDER") else {
        return;
    };
    let limiter = RateLimiter::new(RedisStore::connect(&url).await.unwrap());
    let db = db(Duration::from_millis(1_500));
    let sent = now_ns();
    let first = limiter.acquire(&db, "k").await.unwrap().permit().unwrap();
    let second = limiter.acquire(&db, "k").await.unwrap().permit().unwrap();
    println!("HELD {sent} {}", now_ns());
    std::mem::forget((first, second));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

async fn through(addr: String, policy: FailurePolicy) -> RateLimiter<RedisStore> {
    RateLimiter::new(
        RedisStore::builder(&addr)
            .timeout(Duration::from_millis(300))
            .on_failure(policy)
            .circuit_breaker(1_000, Duration::from_millis(10))
            .build()
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_policy_is_followed_while_redis_is_down() {
    let mut server = RedisServer::start();
    let db = Concurrency::named("exports", 4).unwrap();
    let open = through(server.url(), FailurePolicy::Allow).await;
    let closed = through(server.url(), FailurePolicy::Deny).await;
    let error = through(server.url(), FailurePolicy::Error).await;
    let local = through(server.url(), FailurePolicy::Local { share: 0.5 }).await;
    assert!(open.acquire(&db, "k").await.unwrap().is_acquired());
    server.kill();

    let permit = open.acquire(&db, "k").await.unwrap().permit().unwrap();
    assert_eq!(permit.source(), DecisionSource::FailOpen);
    match closed.acquire(&db, "k").await.unwrap() {
        Acquisition::Full(full) => assert_eq!(full.source, DecisionSource::FailClosed),
        Acquisition::Acquired(p) => panic!("fail closed granted {p:?}"),
    }
    let failed = error.acquire(&db, "k").await.unwrap_err();
    assert!(matches!(failed, Error::Store(_)), "{failed}");
    // Local: 4 × 0.5 = 2 in flight on this node.
    let a = local.acquire(&db, "k").await.unwrap().permit().unwrap();
    let mut b = local.acquire(&db, "k").await.unwrap().permit().unwrap();
    assert_eq!(
        (a.source(), b.source()),
        (DecisionSource::LocalFallback, DecisionSource::LocalFallback)
    );
    assert!(!local.acquire(&db, "k").await.unwrap().is_acquired());
    b.renew().await.unwrap();
    // A release while Redis is down frees the local slot, and reports Redis's failure.
    assert!(a.release().await.is_err());
    assert!(local.acquire(&db, "k").await.unwrap().is_acquired());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    let permit = loop {
        match error.acquire(&db, "k").await {
            Ok(acquisition) => break acquisition.permit().unwrap(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no service after the restart: {e}"),
        }
    };
    assert_eq!(permit.source(), DecisionSource::Store);
    assert_eq!(
        permit.in_flight(),
        1,
        "the restarted Redis holds no earlier permit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acquire_reply_never_strands_a_permit_past_its_lease() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let lease = Duration::from_millis(800);
    let db = Concurrency::named("jobs", 1).unwrap().lease(lease).unwrap();
    let direct = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());

    // Failing closed: the caller holds nothing, and the permit Redis granted ends with its
    // lease.
    let closed = through(format!("redis://{}", proxy.addr()), FailurePolicy::Deny).await;
    // Loads the script: a lost reply to NOSCRIPT would mean the acquire never ran.
    let first = closed
        .acquire(&db, "warm-up")
        .await
        .unwrap()
        .permit()
        .unwrap();
    first.release().await.unwrap();
    proxy.set(Fault::LoseReplies);
    let sent = Instant::now();
    assert!(!closed.acquire(&db, "k").await.unwrap().is_acquired());
    proxy.set(Fault::Pass);
    assert!(
        !direct.acquire(&db, "k").await.unwrap().is_acquired(),
        "the lost acquire ran in Redis"
    );
    let deadline = sent + lease + Duration::from_secs(2);
    loop {
        if direct.acquire(&db, "k").await.unwrap().is_acquired() {
            assert!(sent.elapsed() >= lease, "reclaimed before its lease ended");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stranded permit outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(direct);

    // Failing open: the permit granted under the same id releases the one Redis holds.
    let key = "k2";
    let open = through(format!("redis://{}", proxy.addr()), FailurePolicy::Allow).await;
    proxy.set(Fault::LoseReplies);
    let permit = open.acquire(&db, key).await.unwrap().permit().unwrap();
    assert_eq!(permit.source(), DecisionSource::FailOpen);
    proxy.set(Fault::Pass);
    let check = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    assert!(!check.acquire(&db, key).await.unwrap().is_acquired());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open.release_by_id(&db, key, permit.id()).await {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no service after the fault: {e}"),
        }
    }
    assert!(check.acquire(&db, key).await.unwrap().is_acquired());
    drop(permit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_state_at_most_twice_max_are_held_and_old_permits_cannot_renew() {
    let mut server = RedisServer::start();
    let limiter = through(server.url(), FailurePolicy::Error).await;
    let db = Concurrency::named("db", 2)
        .unwrap()
        .lease(Duration::from_secs(5))
        .unwrap();
    let mut old = Vec::new();
    for _ in 0..2 {
        old.push(limiter.acquire(&db, "k").await.unwrap().permit().unwrap());
    }
    assert!(!limiter.acquire(&db, "k").await.unwrap().is_acquired());
    server.restart(); // empty: every permit forgotten
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        match limiter.acquire(&db, "k").await {
            Ok(acquisition) => break acquisition.permit().expect("the restarted Redis is empty"),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no service after the restart: {e}"),
        }
    };
    let second = limiter.acquire(&db, "k").await.unwrap().permit().unwrap();
    // Two from before the loss, two after: 2·max, and not one more.
    match limiter.acquire(&db, "k").await.unwrap() {
        Acquisition::Full(full) => assert_eq!(full.in_flight, 2),
        Acquisition::Acquired(p) => panic!("a fifth permit: {p:?}"),
    }
    // The holders from before cannot extend their leases: they stop by their expires_at.
    for permit in &mut old {
        let error = permit.renew().await.unwrap_err();
        assert!(matches!(error, Error::PermitExpired { .. }), "{error}");
    }
    drop((first, second, old));
}
