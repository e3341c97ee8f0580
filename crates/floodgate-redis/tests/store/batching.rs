//! Exact batching: a batch decides its decisions in order, each exactly as a single call
//! would — the same answers, stored values and TTLs — and single-call (older) clients share
//! buckets with batching ones; an item that fails fails alone.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use floodgate::{Error, ManualClock, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;
use futures_util::future::join_all;
use proptest::prelude::*;

/// Numbers each case's key prefixes: every case of the property test writes fresh keys on
/// the one server of the test.
static CASE: AtomicU32 = AtomicU32::new(0);

/// Long periods make TTLs longer than the manual clock's one-hour floor, so a TTL written
/// from the wrong TAT would differ by hours.
static POLICIES: LazyLock<[Policy; 3]> = LazyLock::new(|| {
    [
        Policy::parse("daily", "10/d burst 4").unwrap(),
        Policy::parse("tiers", "3/h burst 3; 20/d").unwrap(),
        Policy::parse("fast", "100/s burst 5").unwrap(),
    ]
});

#[derive(Clone, Copy, Debug)]
enum Step {
    Acquire(usize, usize, u32),
    Peek(usize, usize),
    Charge(usize, usize, u32),
}

#[derive(Clone, Debug)]
struct Group {
    steps: Vec<Step>,
    advance_ms: u64,
    reset: Option<(usize, usize)>,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, 1..=4u32).prop_map(|(p, k, c)| Step::Acquire(p, k, c)),
        1 => (0..3usize, 0..3usize).prop_map(|(p, k)| Step::Peek(p, k)),
        1 => (0..3usize, 0..3usize, 1..=6u32).prop_map(|(p, k, c)| Step::Charge(p, k, c)),
    ]
}

fn group() -> impl Strategy<Value = Group> {
    (
        proptest::collection::vec(step(), 1..12),
        prop_oneof![Just(0u64), 0..30_000u64, 0..4_000_000u64],
        proptest::option::weighted(0.15, (0..3usize, 0..3usize)),
    )
        .prop_map(|(steps, advance_ms, reset)| Group {
            steps,
            advance_ms,
            reset,
        })
}

type Limiter = RateLimiter<RedisStore<ManualClock>>;

async fn limiter(url: &str, prefix: &str, clock: &ManualClock, batching: bool) -> Limiter {
    let store = RedisStore::builder(url)
        .key_prefix(prefix)
        .deny_cache(0)
        .batching(batching)
        .timeout(Duration::from_secs(5))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    RateLimiter::new(store)
}

/// Runs `steps` on `limiter` concurrently (issued in order: one batch when batching) or one
/// after another, and returns each outcome as text.
async fn run(limiter: &Limiter, steps: &[Step], concurrently: bool) -> Vec<String> {
    let one = |step: Step| async move {
        let key = |k: usize| format!("user:{k}");
        let outcome = match step {
            Step::Acquire(p, k, cost) => limiter.check_n(&POLICIES[p], &key(k), cost).await,
            Step::Peek(p, k) => limiter.peek(&POLICIES[p], &key(k)).await,
            Step::Charge(p, k, cost) => limiter.charge(&POLICIES[p], &key(k), cost).await,
        };
        match outcome {
            Ok(decision) => format!("{decision:?}"),
            Err(error) => format!("error: {error}"),
        }
    };
    common::at_once_or_in_turn(steps, concurrently, one).await
}

/// Every key under `prefix`, without it: its stored value and PTTL.
async fn state(
    connection: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BTreeMap<String, (String, i64)> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(connection)
        .await
        .unwrap();
    let mut state = BTreeMap::new();
    for key in keys {
        let (value, ttl): (String, i64) = redis::pipe()
            .get(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(connection)
            .await
            .unwrap();
        state.insert(key[prefix.len()..].to_owned(), (value, ttl));
    }
    state
}

fn assert_same_state(
    reference: &BTreeMap<String, (String, i64)>,
    other: &BTreeMap<String, (String, i64)>,
    what: &str,
) {
    assert_eq!(
        reference.keys().collect::<Vec<_>>(),
        other.keys().collect::<Vec<_>>(),
        "{what}: different keys"
    );
    for (key, (value, ttl)) in reference {
        let (other_value, other_ttl) = &other[key];
        assert_eq!(value, other_value, "{what}: {key}");
        // Written moments apart in real time: PTTLs agree to the time between the writes.
        assert!(
            (ttl - other_ttl).abs() <= 2_000,
            "{what}: {key} PTTL {ttl} against {other_ttl}"
        );
    }
}

/// One case: the reference sends every decision alone, in order (`s:`); the batching store
/// sends each group concurrently, so as one batch (`b:`); and `m:` alternates, group by
/// group, between a batching and a single-call store on the same buckets (a rolling upgrade).
async fn case(url: &str, groups: Vec<Group>) {
    let n = CASE.fetch_add(1, Ordering::Relaxed);
    let (s, b, m) = (format!("s{n}:"), format!("b{n}:"), format!("m{n}:"));
    let clock = ManualClock::new();
    let single = limiter(url, &s, &clock, false).await;
    let batched = limiter(url, &b, &clock, true).await;
    let mixed = [
        limiter(url, &m, &clock, true).await,
        limiter(url, &m, &clock, false).await,
    ];
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for (g, group) in groups.iter().enumerate() {
        clock.advance(Duration::from_millis(group.advance_ms));
        if let Some((p, k)) = group.reset {
            let key = format!("user:{k}");
            single.reset(&POLICIES[p], &key).await.unwrap();
            batched.reset(&POLICIES[p], &key).await.unwrap();
            mixed[g % 2].reset(&POLICIES[p], &key).await.unwrap();
        }
        let calls = batched.store().stats().script_calls;
        let expected = run(&single, &group.steps, false).await;
        let got = run(&batched, &group.steps, true).await;
        assert_eq!(expected, got, "group {g}: {group:?}");
        assert!(
            batched.store().stats().script_calls <= calls + 1,
            "group {g} took more than one batch"
        );
        let got = run(&mixed[g % 2], &group.steps, true).await;
        assert_eq!(expected, got, "mixed, group {g}: {group:?}");
        let reference = state(&mut connection, &s).await;
        assert_same_state(&reference, &state(&mut connection, &b).await, "batched");
        assert_same_state(&reference, &state(&mut connection, &m).await, "mixed");
    }
}

/// Random interleavings of acquire, peek, charge and reset over several keys and policies
/// (one of two limits) on a manual clock: batched decisions and state are those of single
/// calls, and old and new clients share buckets exactly. One server of the test's own,
/// stopped when the test ends (`PROPTEST_CASES` sets the number of cases, 48 by default).
#[test]
fn batches_decide_exactly_as_single_calls() {
    let server = RedisServer::start();
    let url = server.url();
    common::run_cases(&proptest::collection::vec(group(), 1..8), |groups| {
        case(&url, groups)
    });
}

#[tokio::test]
async fn an_item_that_fails_fails_alone_and_the_batch_is_one_call() {
    let server = RedisServer::start();
    let store = RedisStore::builder(&server.url())
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    let limiter = Arc::new(RateLimiter::new(store));
    let policy = Policy::parse("api", "10/h").unwrap();
    limiter.check(&policy, "bad").await.unwrap();
    let bad = server.cli(&["--scan", "--pattern", "fg1{*"]);
    server.cli(&["SET", bad.trim(), "not-a-number"]);
    let before = limiter.store().stats();
    let keys = ["good", "bad", "good", "other", "bad", "good"];
    let outcomes = join_all(keys.iter().map(|k| limiter.check(&policy, k))).await;
    let after = limiter.store().stats();
    assert_eq!(after.script_calls - before.script_calls, 1, "one batch");
    assert_eq!(after.decisions - before.decisions, keys.len() as u64);
    let mut remaining = Vec::new();
    for (key, outcome) in keys.iter().zip(outcomes) {
        match (key, outcome) {
            (&"bad", Err(Error::Store(e))) => {
                assert!(e.to_string().contains("corrupted state"), "{key}: {e}")
            }
            (&"bad", other) => panic!("the corrupted key decided: {other:?}"),
            (_, Ok(decision)) => remaining.push(decision.remaining()),
            (_, Err(e)) => panic!("{key} failed with its neighbour: {e}"),
        }
    }
    // In order: good 9, 8, other 9, good 7 — as single calls would have left them.
    assert_eq!(remaining, [9, 8, 9, 7]);
    assert_eq!(server.cli(&["GET", bad.trim()]), "not-a-number");
}

#[tokio::test]
async fn at_low_load_a_batch_holds_one_decision() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    let policy = Policy::parse("api", "1000/s").unwrap();
    for i in 0..20 {
        assert!(
            limiter
                .check(&policy, &format!("k{i}"))
                .await
                .unwrap()
                .is_allowed()
        );
    }
    let stats = limiter.store().stats();
    assert_eq!((stats.script_calls, stats.decisions), (20, 20));
}

#[tokio::test]
async fn a_long_queue_goes_as_two_batches_in_flight_and_keeps_its_order() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(
        RedisStore::builder(&server.url())
            .deny_cache(0)
            .build()
            .await
            .unwrap(),
    );
    let policy = Policy::parse("api", "30/h").unwrap();
    let outcomes = join_all((0..40).map(|_| limiter.check(&policy, "hot"))).await;
    let stats = limiter.store().stats();
    assert_eq!((stats.script_calls, stats.decisions), (2, 40));
    // The older half's batch went first: exactly the first 30 are admitted, in order.
    let allowed: Vec<bool> = outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap().is_allowed())
        .collect();
    assert!(allowed[..30].iter().all(|&a| a), "{allowed:?}");
    assert!(allowed[30..].iter().all(|&a| !a), "{allowed:?}");
}
