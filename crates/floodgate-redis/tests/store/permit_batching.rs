//! Batched concurrency permits: operations waiting for one connection go as one call of the
//! permit script, applied in order, each exactly as a call of its own would be — the same
//! answers, permit sets and TTLs; an operation that fails fails alone.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use floodgate::{Concurrency, ConcurrencyStore, Error, ManualClock, PermitId, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;
use futures_util::future::join_all;
use proptest::prelude::*;

/// Numbers each case's key prefixes: every case writes fresh keys on the test's one server.
static CASE: AtomicU32 = AtomicU32::new(0);

/// One lease shorter and one far longer than the manual clock's one-hour TTL floor, so a
/// TTL written from the wrong lease end would differ by hours.
static LIMITS: LazyLock<[Concurrency; 2]> = LazyLock::new(|| {
    [
        Concurrency::named("db", 3)
            .unwrap()
            .lease(Duration::from_secs(20))
            .unwrap(),
        Concurrency::named("export", 2)
            .unwrap()
            .lease(Duration::from_secs(5 * 3600))
            .unwrap(),
    ]
});

#[derive(Clone, Copy, Debug)]
enum Step {
    Acquire(usize, usize, u128),
    Release(usize, usize, u128),
    Renew(usize, usize, u128),
}

#[derive(Clone, Debug)]
struct Group {
    steps: Vec<Step>,
    advance_ms: u64,
}

fn step() -> impl Strategy<Value = Step> {
    // Few keys and ids: retried acquires, releases of held and unknown ids, full sets.
    let at = (0..2usize, 0..2usize, 0..6u128);
    prop_oneof![
        5 => at.clone().prop_map(|(l, k, id)| Step::Acquire(l, k, id)),
        3 => at.clone().prop_map(|(l, k, id)| Step::Release(l, k, id)),
        2 => at.prop_map(|(l, k, id)| Step::Renew(l, k, id)),
    ]
}

fn group() -> impl Strategy<Value = Group> {
    (
        proptest::collection::vec(step(), 1..14),
        prop_oneof![Just(0u64), 0..25_000u64, 0..20_000_000u64],
    )
        .prop_map(|(steps, advance_ms)| Group { steps, advance_ms })
}

async fn store(
    url: &str,
    prefix: &str,
    clock: &ManualClock,
    batching: bool,
) -> RedisStore<ManualClock> {
    RedisStore::builder(url)
        .key_prefix(prefix)
        .batching(batching)
        .timeout(Duration::from_secs(5))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap()
}

/// Runs `steps` on `store` concurrently (issued in order: one batch when batching) or one
/// after another, and returns each outcome as text.
async fn run(store: &RedisStore<ManualClock>, steps: &[Step], concurrently: bool) -> Vec<String> {
    let one = |step: Step| async move {
        let key = |k: usize| format!("tenant:{k}");
        match step {
            Step::Acquire(l, k, id) => format!(
                "{:?}",
                store
                    .permit_acquire(&LIMITS[l], &key(k), PermitId::from_u128(id))
                    .await
            ),
            Step::Release(l, k, id) => format!(
                "{:?}",
                store
                    .permit_release(&LIMITS[l], &key(k), PermitId::from_u128(id))
                    .await
            ),
            Step::Renew(l, k, id) => format!(
                "{:?}",
                store
                    .permit_renew(&LIMITS[l], &key(k), PermitId::from_u128(id))
                    .await
            ),
        }
    };
    common::at_once_or_in_turn(steps, concurrently, one).await
}

/// Every permit set under `prefix`, without it: its members with their lease ends, and its
/// PTTL.
async fn state(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, (Vec<(String, i64)>, i64)> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(connection)
        .await
        .unwrap();
    let mut state = BTreeMap::new();
    for key in keys {
        let (members, ttl): (Vec<(String, i64)>, i64) = redis::pipe()
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("PTTL")
            .arg(&key)
            .query_async(connection)
            .await
            .unwrap();
        state.insert(key[prefix.len()..].to_owned(), (members, ttl));
    }
    state
}

/// One case: the reference sends every operation alone, in order (`s:`); the batching store
/// sends each group concurrently, so as one call (`b:`).
async fn case(url: &str, groups: Vec<Group>) {
    let n = CASE.fetch_add(1, Ordering::Relaxed);
    let (s, b) = (format!("s{n}:"), format!("b{n}:"));
    let clock = ManualClock::new();
    let single = store(url, &s, &clock, false).await;
    let batched = store(url, &b, &clock, true).await;
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for (g, group) in groups.iter().enumerate() {
        clock.advance(Duration::from_millis(group.advance_ms));
        let before = batched.stats();
        let expected = run(&single, &group.steps, false).await;
        let got = run(&batched, &group.steps, true).await;
        assert_eq!(expected, got, "group {g}: {group:?}");
        let after = batched.stats();
        assert_eq!(
            after.permit_calls,
            before.permit_calls + 1,
            "group {g} was not one call"
        );
        assert_eq!(
            after.permit_operations - before.permit_operations,
            group.steps.len() as u64
        );
        let reference = state(&mut connection, &s).await;
        let other = state(&mut connection, &b).await;
        assert_eq!(
            reference.keys().collect::<Vec<_>>(),
            other.keys().collect::<Vec<_>>(),
            "group {g}: different sets"
        );
        for (key, (members, ttl)) in &reference {
            let (other_members, other_ttl) = &other[key];
            assert_eq!(members, other_members, "group {g}: {key}");
            // Written moments apart in real time: PTTLs agree to the time between writes.
            assert!(
                (ttl - other_ttl).abs() <= 2_000,
                "group {g}: {key} PTTL {ttl} against {other_ttl}"
            );
        }
    }
    assert_eq!(
        single.stats().permit_operations,
        single.stats().permit_calls
    );
}

/// Random interleavings of acquire, release and renew over two limits, two keys and a few
/// permit ids (retries, unknown ids, full sets, leases ending between groups) on a manual
/// clock: batched answers and permit sets are those of single calls. One server of the
/// test's own (`PROPTEST_CASES` sets the number of cases, 48 by default).
#[test]
fn batched_permit_operations_apply_exactly_as_single_calls() {
    let server = RedisServer::start();
    let url = server.url();
    common::run_cases(&proptest::collection::vec(group(), 1..8), |groups| {
        case(&url, groups)
    });
}

#[tokio::test]
async fn a_permit_operation_that_fails_fails_alone_in_one_call() {
    let server = RedisServer::start();
    let limiter = Arc::new(RateLimiter::new(
        RedisStore::connect(&server.url()).await.unwrap(),
    ));
    let db = Concurrency::named("db", 2).unwrap();
    // A permit set for "bad", then a string in its place.
    let permit = limiter.acquire(&db, "bad").await.unwrap().permit().unwrap();
    let _ = permit.detach();
    let bad = server.cli(&["--scan", "--pattern", "fg1{*"]);
    let bad = bad.trim();
    server.cli(&["DEL", bad]);
    server.cli(&["SET", bad, "not-a-set"]);
    let before = limiter.store().stats();
    let keys = ["good", "bad", "good", "bad", "good"];
    let outcomes = join_all(keys.iter().map(|k| limiter.acquire(&db, k))).await;
    let after = limiter.store().stats();
    assert_eq!(after.permit_calls - before.permit_calls, 1, "one call");
    assert_eq!(after.permit_operations - before.permit_operations, 5);
    let mut granted = Vec::new();
    for (key, outcome) in keys.iter().zip(outcomes) {
        match (key, outcome) {
            (&"bad", Err(Error::Store(e))) => {
                assert!(e.to_string().contains("not a permit set"), "{key}: {e}");
            }
            (&"bad", other) => panic!("the corrupted set answered: {other:?}"),
            (_, Ok(acquisition)) => granted.push(acquisition.is_acquired()),
            (_, Err(e)) => panic!("{key} failed with its neighbour: {e}"),
        }
    }
    // In order, as single calls would have answered: two granted, then full.
    assert_eq!(granted, [true, true, false]);
    assert_eq!(server.cli(&["GET", bad]), "not-a-set");
}

#[tokio::test]
async fn at_low_load_a_permit_call_holds_one_operation() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    let db = Concurrency::named("db", 5).unwrap();
    for i in 0..10 {
        let permit = limiter
            .acquire(&db, &format!("k{i}"))
            .await
            .unwrap()
            .permit()
            .unwrap();
        permit.release().await.unwrap();
    }
    let stats = limiter.store().stats();
    assert_eq!((stats.permit_calls, stats.permit_operations), (20, 20));
}
