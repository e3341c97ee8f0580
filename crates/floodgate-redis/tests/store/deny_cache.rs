//! The local deny cache: denials answered without a round trip, invalidated by local
//! resets, bounded staleness for resets made elsewhere.

use std::time::Duration;

use floodgate::{DecisionSource, ManualClock, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::redis_server::RedisServer;

async fn store(server: &RedisServer, clock: &ManualClock) -> RateLimiter<RedisStore<ManualClock>> {
    let store = RedisStore::builder(&server.url())
        .on_failure(FailurePolicy::Error)
        .timeout(Duration::from_millis(200))
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    RateLimiter::new(store)
}

#[tokio::test]
async fn a_cached_denial_needs_no_round_trip() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new();
    let limiter = store(&server, &clock).await;
    let policy = Policy::parse("api", "5/s burst 10; 100/m").unwrap();
    while limiter.check(&policy, "abuser").await.unwrap().is_allowed() {}
    // Redis is gone: only the cache can answer, and it does, for any cost and for peeks.
    server.kill();
    for cost in [1, 3, 10] {
        let d = limiter.check_n(&policy, "abuser", cost).await.unwrap();
        assert!(!d.is_allowed());
        assert_eq!(d.source(), DecisionSource::Cache);
        assert_eq!(
            d.retry_after(),
            Duration::from_millis(200 * u64::from(cost))
        );
    }
    let d = limiter.peek(&policy, "abuser").await.unwrap();
    assert_eq!((d.is_allowed(), d.source()), (false, DecisionSource::Cache));
    // A request that may pass goes to Redis (which is down: the failure policy says error).
    clock.advance(Duration::from_millis(200));
    assert!(limiter.check(&policy, "abuser").await.is_err());
}

#[tokio::test]
async fn a_local_reset_clears_the_cache_and_a_remote_one_is_seen_when_the_denial_ends() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let here = store(&server, &clock).await;
    let there = store(&server, &clock).await;
    let policy = Policy::parse("login", "5/m").unwrap();
    while here.check(&policy, "alice").await.unwrap().is_allowed() {}
    let denied = here.check(&policy, "alice").await.unwrap();
    assert_eq!(denied.retry_after(), Duration::from_secs(12));

    here.reset(&policy, "alice").await.unwrap();
    assert_eq!(
        here.check(&policy, "alice").await.unwrap().source(),
        DecisionSource::Store
    );
    while here.check(&policy, "alice").await.unwrap().is_allowed() {}

    // Reset on another node: this node keeps denying from its cache, at most until the
    // denial it reported runs out, then asks Redis and sees the reset.
    there.reset(&policy, "alice").await.unwrap();
    let stale = here.check(&policy, "alice").await.unwrap();
    assert_eq!(
        (stale.is_allowed(), stale.source()),
        (false, DecisionSource::Cache)
    );
    clock.advance(stale.retry_after());
    let fresh = here.check(&policy, "alice").await.unwrap();
    assert_eq!(
        (fresh.is_allowed(), fresh.source(), fresh.remaining()),
        (true, DecisionSource::Store, 4)
    );
}

#[tokio::test]
async fn the_cache_stays_within_its_capacity() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let limiter = RateLimiter::new(
        RedisStore::builder(&server.url())
            .deny_cache(64)
            .manual_clock(clock.clone())
            .build()
            .await
            .unwrap(),
    );
    let policy = Policy::parse("api", "1/m").unwrap();
    for i in 0..500 {
        let key = format!("k{i}");
        limiter.check(&policy, &key).await.unwrap();
        assert!(!limiter.check(&policy, &key).await.unwrap().is_allowed());
    }
    // At most 64 keys answered from the cache; the rest went to Redis, with the same answer.
    let mut cached = 0;
    for i in 0..500 {
        let d = limiter.check(&policy, &format!("k{i}")).await.unwrap();
        assert!(!d.is_allowed());
        cached += usize::from(d.source() == DecisionSource::Cache);
    }
    assert!(
        (1..=64).contains(&cached),
        "{cached} answers from a cache of 64"
    );
}

/// Cached denials need no I/O, yet a task looping over them must still give way: on a
/// single-threaded runtime another task's Redis call completes while the loop runs.
#[test]
fn a_task_looping_over_cached_denials_does_not_starve_others() {
    let server = RedisServer::start();
    let url = server.url();
    // A starved runtime never returns: watch it from here.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        starve_attempt(&url);
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the looping task starved the other one");
}

fn starve_attempt(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter =
            std::sync::Arc::new(RateLimiter::new(RedisStore::connect(url).await.unwrap()));
        let policy = Policy::parse("api", "1/hour").unwrap();
        limiter.check(&policy, "attacker").await.unwrap();
        assert!(
            !limiter
                .check(&policy, "attacker")
                .await
                .unwrap()
                .is_allowed()
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let (limiter, policy, stop) = (limiter.clone(), policy.clone(), stop.clone());
            tokio::spawn(async move {
                let mut hits = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let d = limiter.check(&policy, "attacker").await.unwrap();
                    assert!(!d.is_allowed());
                    hits += 1;
                }
                hits
            })
        };
        tokio::task::yield_now().await;
        let other = limiter.check(&policy, "someone-else").await.unwrap();
        assert!(other.is_allowed());
        assert_eq!(other.source(), floodgate::DecisionSource::Store);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(spinner.await.unwrap() > 0);
    });
}
