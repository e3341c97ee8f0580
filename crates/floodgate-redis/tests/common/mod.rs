//! Shared by the Redis test files: a conformance harness against a URL, and the whole suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use floodgate::{ManualClock, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::conformance::{self, Harness};

/// A conformance harness on the Redis at `url`: keys under `prefix`, a manual clock (the
/// test-only override), a deny cache of `deny_cache` keys, batching on or off.
#[allow(dead_code)] // not every test file that shares this module uses it
pub(crate) async fn harness(
    url: &str,
    prefix: &str,
    deny_cache: usize,
    batching: bool,
) -> Harness<RedisStore<ManualClock>> {
    let clock = ManualClock::new();
    // The suite checks decisions, not latency: a loaded machine must not turn a slow reply
    // into a failed case (the default timeout is 100 ms; timing has tests of its own).
    let store = RedisStore::builder(url)
        .timeout(Duration::from_secs(2))
        .key_prefix(prefix)
        .deny_cache(deny_cache)
        .batching(batching)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Harness {
        limiter: Arc::new(RateLimiter::new(store)),
        clock,
        resolution: Duration::from_micros(1),
    }
}

/// Runs the whole conformance suite against the Redis at `url`, each case on a fresh key
/// prefix (fresh state), with a deny cache of `deny_cache` keys, batching on or off.
#[allow(dead_code)] // not every test file that shares this module runs the whole suite
pub(crate) async fn conformance_suite(url: &str, deny_cache: usize, batching: bool) {
    // Unique across runs on one server.
    static CASE: AtomicU32 = AtomicU32::new(0);
    conformance::run(|| {
        let prefix = format!("case{}:", CASE.fetch_add(1, Ordering::Relaxed));
        let url = url.to_owned();
        async move { harness(&url, &prefix, deny_cache, batching).await }
    })
    .await;
}

/// Runs every concurrency case of the suite against the Redis at `url`, each on a fresh key
/// prefix, batching on or off.
#[allow(dead_code)]
pub(crate) async fn concurrency_suite(url: &str, batching: bool) {
    static CASE: AtomicU32 = AtomicU32::new(0);
    floodgate_testkit::concurrency::run(|| {
        let prefix = format!("permits{}:", CASE.fetch_add(1, Ordering::Relaxed));
        let url = url.to_owned();
        async move { harness(&url, &prefix, 0, batching).await }
    })
    .await;
}

/// Runs `case` on values of `strategy`, each on a fresh current-thread runtime:
/// `PROPTEST_CASES` cases (48 by default). A failing case panics with proptest's report of
/// the smallest failing value.
#[allow(dead_code)]
pub(crate) fn run_cases<S, F, Fut>(strategy: &S, case: F)
where
    S: proptest::strategy::Strategy,
    F: Fn(S::Value) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let result = runner.run(strategy, |value| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(case(value));
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// Runs `one` on each of `steps`: all issued at once, in order (one batch when the store
/// batches), or one after another; the outcomes in the steps' order.
#[allow(dead_code)]
pub(crate) async fn at_once_or_in_turn<T, F, Fut>(steps: &[T], at_once: bool, one: F) -> Vec<String>
where
    T: Copy,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    if at_once {
        futures_util::future::join_all(steps.iter().map(|&s| one(s))).await
    } else {
        let mut outcomes = Vec::with_capacity(steps.len());
        for &s in steps {
            outcomes.push(one(s).await);
        }
        outcomes
    }
}

/// The host's realtime clock in nanoseconds: on one machine, the clock Redis `TIME` reads.
#[allow(dead_code)]
pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `tasks` tasks deciding until `stop` on a hot key (half the checks) and 50 cold ones,
/// each decision bracketed by [`now_ns`]; the failure policy must be fail-closed. Each task
/// returns the decisions the store made (with the cache's) and how many fell back.
#[allow(dead_code)]
pub(crate) fn hot_and_cold_load(
    limiter: &Arc<RateLimiter<RedisStore>>,
    policy: &floodgate::Policy,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    tasks: usize,
) -> Vec<tokio::task::JoinHandle<(Vec<floodgate_testkit::history::Event>, u64)>> {
    use floodgate::DecisionSource;
    (0..tasks)
        .map(|task| {
            let (limiter, policy, stop) = (limiter.clone(), policy.clone(), stop.clone());
            tokio::spawn(async move {
                let mut events = Vec::new();
                let mut fallbacks = 0u64;
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    i = i.wrapping_mul(31).wrapping_add(7);
                    let key = if i % 2 == 0 {
                        "hot".to_owned()
                    } else {
                        format!("cold{}", (i / 2) % 50)
                    };
                    let lo = now_ns();
                    let decision = limiter.check(&policy, &key).await.unwrap();
                    let hi = now_ns();
                    if matches!(
                        decision.source(),
                        DecisionSource::Store | DecisionSource::Cache
                    ) {
                        events.push(floodgate_testkit::history::Event {
                            key,
                            cost: 1,
                            admitted: decision.is_allowed(),
                            lo,
                            hi,
                        });
                    } else {
                        assert!(!decision.is_allowed(), "fail-closed");
                        fallbacks += 1;
                    }
                }
                (events, fallbacks)
            })
        })
        .collect()
}

/// Waits for worker processes and reads what they printed: their `EV ` lines as events,
/// and every other line as is. Panics, with the worker's output, if one failed.
#[allow(dead_code)]
pub(crate) fn worker_output(
    workers: Vec<std::process::Child>,
) -> (Vec<floodgate_testkit::history::Event>, Vec<String>) {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "worker failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout.lines() {
            match line.strip_prefix("EV ") {
                Some(event) => {
                    events.push(floodgate_testkit::history::Event::from_line(event).unwrap())
                }
                None => lines.push(line.to_owned()),
            }
        }
    }
    (events, lines)
}
