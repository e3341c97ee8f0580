//! The `job_throttle` example on tokio's paused clock: the upstream never sees more than its
//! limit, and when it is stricter than the workers believed, they back off as it says.

#[path = "../../examples/job_throttle.rs"]
#[allow(dead_code)]
mod example;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::{Policy, RateLimiter, TokioClock};

#[tokio::test(start_paused = true)]
async fn workers_never_exceed_the_upstreams_limit() {
    let clock = TokioClock::new();
    let upstream = example::Fragile::new(clock.clone(), "10/s burst 2").unwrap();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let started = tokio::time::Instant::now();
    let report = example::run_jobs(
        limiter,
        Policy::parse("upstream", "10/s burst 2").unwrap(),
        upstream.clone(),
        40,
        8,
    )
    .await;
    assert_eq!(report.done, 40);
    assert_eq!(
        upstream.refused.load(Ordering::Relaxed),
        0,
        "the upstream had to refuse calls"
    );
    assert_eq!(upstream.served.load(Ordering::Relaxed), 40);
    // Two at once, then one every 100 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(3_800));
}

#[tokio::test(start_paused = true)]
async fn workers_back_off_when_the_upstream_is_stricter_than_promised() {
    let clock = TokioClock::new();
    let upstream = example::Fragile::new(clock.clone(), "2/s burst 1").unwrap();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let started = tokio::time::Instant::now();
    let report = example::run_jobs(
        limiter,
        Policy::parse("upstream", "10/s burst 2").unwrap(),
        upstream.clone(),
        20,
        4,
    )
    .await;
    assert_eq!(report.done, 20);
    assert_eq!(upstream.served.load(Ordering::Relaxed), 20);
    // The upstream did refuse (the workers were promised 10/s), and after each refusal no
    // worker called again before the Retry-After it gave.
    assert!(upstream.refused.load(Ordering::Relaxed) > 0);
    assert_eq!(
        upstream.impatient.load(Ordering::Relaxed),
        0,
        "a worker ignored Retry-After"
    );
    // The upstream's own pace bounds the run: 20 calls at 2/s take at least 9.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(9_500),
        "{:?}",
        started.elapsed()
    );
}
