//! The conformance suite: exact expectations every store must meet, driven by a
//! [`ManualClock`]. [`conformance_tests!`](crate::conformance_tests) makes one test per case
//! for a store; [`run`] runs them all in one test.
//!
//! Every limit used here has an emission interval that is exact in both nanoseconds and
//! microseconds, so stores with either unit decide identically.

use std::sync::Arc;
use std::time::Duration;

use floodgate::{Decision, Error, Limit, ManualClock, Policy, RateLimiter, Store};

/// A fresh store under test, with the clock it decides on.
pub struct Harness<S: Store> {
    /// A limiter over a store with no state.
    pub limiter: Arc<RateLimiter<S>>,
    /// The clock the store decides on (the store must not read another).
    pub clock: ManualClock,
    /// The store's time unit: 1 ns for memory, 1 µs for Redis.
    pub resolution: Duration,
}

/// One case of the suite: runs against the harness it is given, panicking on a violation.
pub type Case<S> =
    fn(Harness<S>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Generates one `#[tokio::test]` per case of the suite, named after it, each calling
/// `runner(case)`: an `async fn(Case<S>)` that builds a fresh harness (and whatever it needs,
/// such as a `redis-server`), runs the case on it, and cleans up. Put each store's tests in
/// a module of their own:
///
/// ```ignore
/// async fn fresh(case: Case<MemoryStore<ManualClock>>) {
///     let clock = ManualClock::new();
///     case(Harness { limiter: Arc::new(RateLimiter::in_memory_with_clock(clock.clone())), clock,
///                    resolution: Duration::from_nanos(1) }).await;
/// }
/// mod memory { floodgate_testkit::conformance_tests!(super::fresh); }
/// ```
///
/// Each case is then a test of its own: a failure names it, the other cases still run, and
/// `cargo test <case name>` runs one.
#[macro_export]
macro_rules! conformance_tests {
    ($runner:path) => {
        $crate::__conformance_cases!(tests $runner);
    };
}

/// The one list of the suite's cases, handed to [`__conformance_each`] in the mode given.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($mode:ident $($arg:tt)*) => {
        $crate::__conformance_each! {
            $mode [$($arg)*]
            a_fresh_bucket_reports_the_state_after_the_charge,
            peek_reports_the_state_now_and_consumes_nothing,
            denies_after_the_burst_with_an_exact_retry_after,
            a_denial_leaves_the_state_unchanged,
            check_n_takes_cost_tokens,
            cost_above_the_burst_is_an_error_and_charges_nothing,
            zero_cost_is_an_error,
            multi_limit_policies_are_all_or_nothing,
            decided_by_follows_its_tie_rules,
            reset_forgets_the_key,
            keys_and_policies_are_independent,
            charge_consumes_without_checking_and_caps_the_debt,
            an_idle_bucket_admits_exactly_its_burst,
            a_clock_stepping_back_lengthens_a_denial_by_the_step,
            until_ready_completes_exactly_when_capacity_appears,
            a_dropped_until_ready_charges_nothing,
            until_ready_timeout_fails_at_once_when_the_wait_is_too_long,
            next_token_after_is_the_time_until_one_whole_token
        }
    };
}

/// Expands the case list: as tests for a runner, or as `(name, case)` pairs.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each {
    (tests [$runner:path] $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $runner(|h| ::std::boxed::Box::pin($crate::conformance::$case(h))).await;
            }
        )*
    };
    (list [] $($case:ident),* $(,)?) => {
        vec![$((
            stringify!($case),
            (|h| ::std::boxed::Box::pin($crate::conformance::$case(h))) as $crate::conformance::Case<_>,
        )),*]
    };
}

/// Every case of the suite, by name.
pub fn cases<S: Store>() -> Vec<(&'static str, Case<S>)> {
    crate::__conformance_cases!(list)
}

/// Runs every case, each on a fresh store from `make`, and panics naming every case that
/// failed (each failure's message is printed as it happens). For stores too costly to set
/// up once per case (a Redis Cluster); others get one test per case from
/// [`conformance_tests!`](crate::conformance_tests).
pub async fn run<S: Store, F: std::future::Future<Output = Harness<S>>>(make: impl Fn() -> F) {
    let mut failed = Vec::new();
    for (name, case) in cases::<S>() {
        if tokio::spawn(case(make().await)).await.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "conformance cases failed: {failed:?}");
}

fn policy(name: &str, text: &str) -> Policy {
    Policy::parse(name, text).unwrap_or_else(|e| panic!("test policy {text:?}: {e}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn check<S: Store>(h: &Harness<S>, p: &Policy, key: &str) -> Decision {
    h.limiter
        .check(p, key)
        .await
        .unwrap_or_else(|e| panic!("check {key}: {e}"))
}

async fn check_n<S: Store>(h: &Harness<S>, p: &Policy, key: &str, cost: u32) -> Decision {
    h.limiter
        .check_n(p, key, cost)
        .await
        .unwrap_or_else(|e| panic!("check_n {key} {cost}: {e}"))
}

async fn peek<S: Store>(h: &Harness<S>, p: &Policy, key: &str) -> Decision {
    h.limiter
        .peek(p, key)
        .await
        .unwrap_or_else(|e| panic!("peek {key}: {e}"))
}

async fn exhaust<S: Store>(h: &Harness<S>, p: &Policy, key: &str) -> u64 {
    let mut admitted = 0;
    while check(h, p, key).await.is_allowed() {
        admitted += 1;
        assert!(admitted <= 1_000_000, "bucket never ran out");
    }
    admitted
}

/// Real time for a spawned task to run up to its next wait (stores may do network I/O).
async fn settle() {
    tokio::time::sleep(ms(50)).await;
}

#[doc(hidden)]
pub async fn a_fresh_bucket_reports_the_state_after_the_charge<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    let d = check(&h, &p, "user:42").await;
    assert!(d.is_allowed());
    assert_eq!(
        (
            d.decided_by(),
            d.limit(),
            d.remaining(),
            d.retry_after(),
            d.reset_after()
        ),
        (0, 10, 9, Duration::ZERO, ms(200))
    );
}

#[doc(hidden)]
pub async fn peek_reports_the_state_now_and_consumes_nothing<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    for _ in 0..25 {
        let d = peek(&h, &p, "user:42").await;
        assert!(d.is_allowed());
        assert_eq!(
            (d.limit(), d.remaining(), d.reset_after()),
            (10, 10, Duration::ZERO)
        );
    }
    assert_eq!(exhaust(&h, &p, "user:42").await, 10);
    let d = peek(&h, &p, "user:42").await;
    assert!(!d.is_allowed());
    assert_eq!(
        (d.remaining(), d.retry_after(), d.reset_after()),
        (0, ms(200), ms(2_000))
    );
}

#[doc(hidden)]
pub async fn denies_after_the_burst_with_an_exact_retry_after<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    for expected_left in (0..10).rev() {
        let d = check(&h, &p, "k").await;
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), expected_left);
    }
    let d = check(&h, &p, "k").await;
    assert!(!d.is_allowed());
    assert_eq!(
        (d.remaining(), d.retry_after(), d.reset_after()),
        (0, ms(200), ms(2_000))
    );
    h.clock.advance(d.retry_after() - h.resolution);
    let early = check(&h, &p, "k").await;
    assert!(
        !early.is_allowed(),
        "admitted one time unit before retry_after"
    );
    assert_eq!(early.retry_after(), h.resolution);
    h.clock.advance(h.resolution);
    assert!(
        check(&h, &p, "k").await.is_allowed(),
        "denied at retry_after"
    );
}

#[doc(hidden)]
pub async fn a_denial_leaves_the_state_unchanged<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    exhaust(&h, &p, "k").await;
    h.clock.advance(ms(300));
    let before = peek(&h, &p, "k").await;
    for _ in 0..5 {
        let d = check_n(&h, &p, "k", 3).await;
        assert!(!d.is_allowed());
        assert_eq!((d.remaining(), d.retry_after()), (1, ms(300)));
    }
    assert_eq!(peek(&h, &p, "k").await, before);
    assert_eq!((before.remaining(), before.reset_after()), (1, ms(1_700)));
}

#[doc(hidden)]
pub async fn check_n_takes_cost_tokens<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    let d = check_n(&h, &p, "k", 3).await;
    assert!(d.is_allowed());
    assert_eq!((d.remaining(), d.reset_after()), (7, ms(600)));
    let d = check_n(&h, &p, "k", 8).await;
    assert!(!d.is_allowed());
    assert_eq!((d.remaining(), d.retry_after()), (7, ms(200)));
    let d = check_n(&h, &p, "k", 7).await;
    assert!(d.is_allowed());
    assert_eq!((d.remaining(), d.reset_after()), (0, ms(2_000)));
}

#[doc(hidden)]
pub async fn cost_above_the_burst_is_an_error_and_charges_nothing<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10; 1000/d burst 8");
    let error = h
        .limiter
        .check_n(&p, "k", 9)
        .await
        .expect_err("cost 9 > burst 8");
    assert!(
        matches!(error, Error::CostExceedsBurst { cost: 9, burst: 8 }),
        "{error:?}"
    );
    let error = h
        .limiter
        .until_ready(&p, "k", 9)
        .await
        .expect_err("cost 9 > burst 8");
    assert!(
        matches!(error, Error::CostExceedsBurst { cost: 9, burst: 8 }),
        "{error:?}"
    );
    let d = peek(&h, &p, "k").await;
    assert_eq!((d.remaining(), d.reset_after()), (8, Duration::ZERO));
    assert!(check_n(&h, &p, "k", 8).await.is_allowed());
}

#[doc(hidden)]
pub async fn zero_cost_is_an_error<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s");
    for result in [
        h.limiter.check_n(&p, "k", 0).await,
        h.limiter.charge(&p, "k", 0).await,
        h.limiter.until_ready(&p, "k", 0).await,
    ] {
        assert!(
            matches!(result, Err(Error::InvalidCost { cost: 0, .. })),
            "{result:?}"
        );
    }
    assert_eq!(peek(&h, &p, "k").await.remaining(), 5);
}

#[doc(hidden)]
pub async fn multi_limit_policies_are_all_or_nothing<S: Store>(h: Harness<S>) {
    // A: 6/h (600 s each), B: 4/s (250 ms each), C: 100/h (36 s each).
    let p = Policy::new(
        "tiers",
        [
            Limit::per_hour(6),
            Limit::per_second(4),
            Limit::per_hour(100),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exhaust(&h, &p, "k").await, 4);
    let denied = check(&h, &p, "k").await;
    assert_eq!((denied.decided_by(), denied.retry_after()), (1, ms(250)));
    h.clock.advance(ms(1_000));
    // Had the denials charged A, it would have fewer than 1 token left here.
    let d = check(&h, &p, "k").await;
    assert!(d.is_allowed());
    assert_eq!((d.decided_by(), d.remaining()), (0, 1));
    let d = check(&h, &p, "k").await;
    assert_eq!((d.decided_by(), d.remaining()), (0, 0));
    let d = check(&h, &p, "k").await;
    assert!(!d.is_allowed());
    assert_eq!((d.decided_by(), d.retry_after()), (0, ms(599_000)));
    assert_eq!(d.reset_after(), ms(3_600_000 - 1_000));
    h.clock.advance(ms(3_599_000));
    let d = peek(&h, &p, "k").await;
    assert_eq!(
        (d.decided_by(), d.remaining(), d.reset_after()),
        (1, 4, Duration::ZERO)
    );
}

#[doc(hidden)]
pub async fn decided_by_follows_its_tie_rules<S: Store>(h: Harness<S>) {
    let equal = policy("equal", "10/s; 10/s");
    assert_eq!(check(&h, &equal, "k").await.decided_by(), 0);
    let fewer_second = policy("fewer", "10/s; 5/s");
    let d = check(&h, &fewer_second, "k").await;
    assert_eq!((d.decided_by(), d.limit(), d.remaining()), (1, 5, 4));
    let tie = policy("tie", "1/s; 1/s");
    check(&h, &tie, "k").await;
    let d = check(&h, &tie, "k").await;
    assert_eq!((d.is_allowed(), d.decided_by()), (false, 0));
    let longer_second = policy("longer", "2/s burst 1; 1/s");
    check(&h, &longer_second, "k").await;
    let d = check(&h, &longer_second, "k").await;
    assert_eq!(
        (d.is_allowed(), d.decided_by(), d.retry_after()),
        (false, 1, ms(1_000))
    );
}

#[doc(hidden)]
pub async fn reset_forgets_the_key<S: Store>(h: Harness<S>) {
    let p = policy("login", "5/m; 20/d");
    exhaust(&h, &p, "alice").await;
    exhaust(&h, &p, "bob").await;
    h.limiter
        .reset(&p, "alice")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(peek(&h, &p, "alice").await.reset_after(), Duration::ZERO);
    assert_eq!(exhaust(&h, &p, "alice").await, 5);
    assert!(
        !check(&h, &p, "bob").await.is_allowed(),
        "reset of alice touched bob"
    );
    h.limiter
        .reset(&p, "never-seen")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[doc(hidden)]
pub async fn keys_and_policies_are_independent<S: Store>(h: Harness<S>) {
    let p = policy("a", "2/s");
    let q = policy("b", "2/s");
    assert_eq!(exhaust(&h, &p, "k").await, 2);
    assert_eq!(exhaust(&h, &p, "k2").await, 2);
    assert_eq!(exhaust(&h, &q, "k").await, 2);
    assert_eq!(exhaust(&h, &p, "{k}").await, 2);
    assert_eq!(exhaust(&h, &p, "").await, 2);
    assert_eq!(exhaust(&h, &p, &"x".repeat(10_000)).await, 2);
}

#[doc(hidden)]
pub async fn charge_consumes_without_checking_and_caps_the_debt<S: Store>(h: Harness<S>) {
    let p = policy("bytes", "5/s burst 10");
    let d = h
        .limiter
        .charge(&p, "fresh", 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.is_allowed());
    assert_eq!((d.remaining(), d.reset_after()), (7, ms(600)));
    let d = h
        .limiter
        .charge(&p, "k", 25)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.is_allowed());
    // Capped at one burst below empty: 2 × 10 tokens × 200 ms from full.
    assert_eq!(
        (d.remaining(), d.reset_after(), d.retry_after()),
        (0, ms(4_000), ms(2_200))
    );
    let d = check(&h, &p, "k").await;
    assert_eq!((d.is_allowed(), d.retry_after()), (false, ms(2_200)));
    h.clock.advance(ms(2_200));
    assert!(check(&h, &p, "k").await.is_allowed());
}

#[doc(hidden)]
pub async fn an_idle_bucket_admits_exactly_its_burst<S: Store>(h: Harness<S>) {
    for burst in [1u32, 2, 5, 1000] {
        let p = Policy::new(format!("idle{burst}"), [Limit::per_second(burst)])
            .unwrap_or_else(|e| panic!("{e}"));
        let window = ms(1_000); // B·T
        for (i, idle) in [window, window * 10, window + Duration::from_secs(3_600)]
            .into_iter()
            .enumerate()
        {
            let key = format!("k{i}");
            assert_eq!(exhaust(&h, &p, &key).await, u64::from(burst));
            h.clock.advance(idle);
            assert_eq!(
                exhaust(&h, &p, &key).await,
                u64::from(burst),
                "burst {burst} after idle {idle:?}"
            );
        }
    }
}

#[doc(hidden)]
pub async fn a_clock_stepping_back_lengthens_a_denial_by_the_step<S: Store>(h: Harness<S>) {
    let p = policy("free", "5/s burst 10");
    h.clock.set(Duration::from_secs(10));
    exhaust(&h, &p, "k").await;
    h.clock.set(Duration::from_secs(7));
    let d = check(&h, &p, "k").await;
    assert_eq!((d.is_allowed(), d.retry_after()), (false, ms(3_200)));
    assert!(check(&h, &p, "new").await.is_allowed());
    h.clock
        .set(Duration::from_secs(10) + ms(200) - h.resolution);
    assert!(!check(&h, &p, "k").await.is_allowed());
    h.clock.advance(h.resolution);
    assert!(check(&h, &p, "k").await.is_allowed());
}

#[doc(hidden)]
pub async fn until_ready_completes_exactly_when_capacity_appears<S: Store>(h: Harness<S>) {
    let p = policy("jobs", "5/s burst 10");
    exhaust(&h, &p, "mailer").await;
    let waiter = {
        let (limiter, p) = (Arc::clone(&h.limiter), p.clone());
        tokio::spawn(async move { limiter.until_ready(&p, "mailer", 2).await })
    };
    settle().await;
    h.clock.advance(ms(400) - h.resolution);
    settle().await;
    assert!(
        !waiter.is_finished(),
        "until_ready returned before capacity appeared"
    );
    h.clock.advance(h.resolution);
    let d = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap_or_else(|_| panic!("until_ready did not wake when capacity appeared"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
}

#[doc(hidden)]
pub async fn a_dropped_until_ready_charges_nothing<S: Store>(h: Harness<S>) {
    let p = policy("jobs", "5/s burst 10");
    exhaust(&h, &p, "k").await;
    let waiter = {
        let (limiter, p) = (Arc::clone(&h.limiter), p.clone());
        tokio::spawn(async move { limiter.until_ready(&p, "k", 1).await })
    };
    settle().await;
    waiter.abort();
    assert!(waiter.await.is_err_and(|e| e.is_cancelled()));
    h.clock.advance(ms(200));
    let d = peek(&h, &p, "k").await;
    assert_eq!((d.is_allowed(), d.remaining()), (true, 1));
}

#[doc(hidden)]
pub async fn until_ready_timeout_fails_at_once_when_the_wait_is_too_long<S: Store>(h: Harness<S>) {
    let p = policy("jobs", "5/s burst 10");
    exhaust(&h, &p, "k").await;
    let result = h.limiter.until_ready_timeout(&p, "k", 1, ms(199)).await;
    assert!(
        matches!(result, Err(Error::Timeout { retry_after }) if retry_after == ms(200)),
        "{result:?}"
    );
    let waiter = {
        let (limiter, p) = (Arc::clone(&h.limiter), p.clone());
        tokio::spawn(async move { limiter.until_ready_timeout(&p, "k", 1, ms(200)).await })
    };
    settle().await;
    assert!(!waiter.is_finished());
    h.clock.advance(ms(200));
    let d = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap_or_else(|_| panic!("until_ready_timeout did not wake"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(d.is_allowed());
}

#[doc(hidden)]
pub async fn next_token_after_is_the_time_until_one_whole_token<S: Store>(h: Harness<S>) {
    let p = policy("tokens", "5/s burst 10");
    assert_eq!(check(&h, &p, "k").await.next_token_after(), Duration::ZERO);
    exhaust(&h, &p, "k").await;
    let d = peek(&h, &p, "k").await;
    assert_eq!((d.remaining(), d.next_token_after()), (0, ms(200)));
    h.clock.advance(ms(150));
    assert_eq!(peek(&h, &p, "k").await.next_token_after(), ms(50));
    let d = check_n(&h, &p, "k", 3).await;
    assert_eq!(
        (d.is_allowed(), d.retry_after(), d.next_token_after()),
        (false, ms(450), ms(50))
    );
    h.clock.advance(ms(50));
    assert_eq!(peek(&h, &p, "k").await.next_token_after(), Duration::ZERO);
}
