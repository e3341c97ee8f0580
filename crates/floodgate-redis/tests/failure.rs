//! Failure policies, the circuit breaker and recovery: Redis killed, restarted and paused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use floodgate::{DecisionSource, Error, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::redis_server::RedisServer;

async fn limiter(server: &RedisServer, on_failure: FailurePolicy) -> RateLimiter<RedisStore> {
    let store = RedisStore::builder(&server.url())
        .timeout(Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500))
        .on_failure(on_failure)
        .on_failure_for("login", FailurePolicy::Deny)
        .circuit_breaker(3, Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    RateLimiter::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_policy_is_followed_while_redis_is_down_and_service_resumes_after() {
    let mut server = RedisServer::start();
    let api = Policy::parse("api", "10/s").unwrap();
    let login = Policy::parse("login", "5/m").unwrap();
    let error = limiter(&server, FailurePolicy::Error).await;
    let allow = limiter(&server, FailurePolicy::Allow).await;
    let deny = limiter(&server, FailurePolicy::Deny).await;
    let local = limiter(&server, FailurePolicy::Local { share: 0.5 }).await;
    for l in [&error, &allow, &deny, &local] {
        assert_eq!(
            l.check(&api, "k").await.unwrap().source(),
            DecisionSource::Store
        );
    }

    server.kill();
    for _ in 0..10 {
        assert!(matches!(error.check(&api, "k").await, Err(Error::Store(_))));
        let d = allow.check(&api, "k").await.unwrap();
        assert!(
            d.is_allowed() && d.source() == DecisionSource::FailOpen,
            "{d:?}"
        );
        let d = deny.check(&api, "k").await.unwrap();
        assert!(
            !d.is_allowed() && d.source() == DecisionSource::FailClosed,
            "{d:?}"
        );
        assert!(d.retry_after() > Duration::ZERO);
        // The per-policy override: logins fail closed even where the store fails open.
        let d = allow.check(&login, "alice").await.unwrap();
        assert!(
            !d.is_allowed() && d.source() == DecisionSource::FailClosed,
            "{d:?}"
        );
    }
    // Local: half of 10/s, burst 5, decided in this process.
    let mut admitted = 0;
    for _ in 0..20 {
        let d = local.check(&api, "fresh").await.unwrap();
        assert_eq!(d.source(), DecisionSource::LocalFallback);
        admitted += u32::from(d.is_allowed());
    }
    assert_eq!(admitted, 5);

    server.restart();
    let back = Instant::now();
    loop {
        if let Ok(d) = error.check(&api, "k").await {
            assert_eq!(d.source(), DecisionSource::Store);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "no service 3 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovered = back.elapsed();
    println!("service resumed {recovered:?} after Redis came back");
    assert!(
        recovered < Duration::from_millis(1_500),
        "service resumed after {recovered:?}"
    );
    for l in [&allow, &deny, &local] {
        let deadline = Instant::now() + Duration::from_secs(2);
        while l.check(&api, "k").await.unwrap().source() != DecisionSource::Store {
            assert!(Instant::now() < deadline, "a store did not resume");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_the_timeout_a_few_times_then_nothing() {
    let server = RedisServer::start();
    let limiter = limiter(&server, FailurePolicy::Allow).await;
    let api = Policy::parse("api", "10/s").unwrap();
    assert_eq!(
        limiter.check(&api, "k").await.unwrap().source(),
        DecisionSource::Store
    );
    server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let mut slow = 0;
    let started = Instant::now();
    for _ in 0..50 {
        let call = Instant::now();
        let d = limiter.check(&api, "k").await.unwrap();
        assert_eq!(d.source(), DecisionSource::FailOpen);
        let took = call.elapsed();
        assert!(
            took < Duration::from_millis(100 + 300),
            "a decision took {took:?} with a 100 ms timeout"
        );
        if took >= Duration::from_millis(50) {
            slow += 1;
        }
    }
    // Three failures open the breaker; then only a probe every 200 ms pays the timeout.
    let probes = started.elapsed().as_millis() / 200 + 1;
    println!(
        "{slow} of 50 decisions paid the timeout over {:?}",
        started.elapsed()
    );
    assert!(slow as u128 <= 3 + probes, "{slow} slow decisions");
}
