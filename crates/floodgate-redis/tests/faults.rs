//! Network faults between the store and Redis, injected by the test kit's loopback proxy:
//! a request whose reply is lost is never replayed, and service comes back within a second
//! of the network healing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

use std::time::{Duration, Instant};

use floodgate::{DecisionSource, Policy, RateLimiter};
use floodgate_redis::{FailurePolicy, RedisStore};
use floodgate_testkit::proxy::{Fault, Proxy};

use floodgate_testkit::redis_server::RedisServer;

async fn through(proxy: &Proxy, on_failure: FailurePolicy) -> RateLimiter<RedisStore> {
    let store = RedisStore::builder(&format!("redis://{}", proxy.addr()))
        .timeout(Duration::from_millis(300))
        .on_failure(on_failure)
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    RateLimiter::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_reply_is_lost_is_not_replayed() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let limiter = through(&proxy, FailurePolicy::Error).await;
    let direct = RateLimiter::new(RedisStore::connect(&server.url()).await.unwrap());
    let policy = Policy::parse("api", "1/hour burst 10").unwrap();

    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());
    for lost in 1..=3 {
        proxy.set(Fault::LoseReplies);
        let outcome = limiter.check(&policy, "k").await;
        assert!(outcome.is_err(), "the reply was lost: {outcome:?}");
        proxy.set(Fault::Pass);
        // Once the store reconnects, the bucket shows each request exactly once: the lost
        // one ran in Redis, and nothing ran it again.
        let deadline = Instant::now() + Duration::from_secs(5);
        let decision = loop {
            match limiter.peek(&policy, "k").await {
                Ok(decision) => break decision,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("no service after the fault: {e}"),
            }
        };
        let expected = 10 - 1 - lost;
        assert_eq!(decision.remaining(), expected, "after {lost} lost replies");
        assert_eq!(
            direct.peek(&policy, "k").await.unwrap().remaining(),
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_returns_within_a_second_after_a_cut_or_a_stall() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let limiter = through(&proxy, FailurePolicy::Deny).await;
    let policy = Policy::parse("api", "1000/s").unwrap();
    assert_eq!(
        limiter.check(&policy, "k").await.unwrap().source(),
        DecisionSource::Store
    );
    for fault in [Fault::Cut, Fault::Stall] {
        proxy.set(fault);
        let down_until = Instant::now() + Duration::from_millis(800);
        while Instant::now() < down_until {
            let decision = limiter.check(&policy, "k").await.unwrap();
            assert_eq!(
                decision.source(),
                DecisionSource::FailClosed,
                "{fault:?}: every decision follows the failure policy"
            );
            assert!(!decision.is_allowed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.set(Fault::Pass);
        let healed = Instant::now();
        loop {
            let decision = limiter.check(&policy, "k").await.unwrap();
            if decision.source() == DecisionSource::Store {
                break;
            }
            assert!(
                healed.elapsed() < Duration::from_secs(1),
                "{fault:?}: no service 1 s after the network healed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("{fault:?}: service back after {:?}", healed.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_network_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let limiter = through(&proxy, FailurePolicy::Allow).await;
    let policy = Policy::parse("api", "1000/s").unwrap();
    limiter.check(&policy, "k").await.unwrap();
    proxy.set(Fault::Delay(Duration::from_millis(100)));
    // 100 ms each way: slower, but inside the 300 ms timeout: still decided by Redis.
    let started = Instant::now();
    let decision = limiter.check(&policy, "k").await.unwrap();
    assert_eq!(decision.source(), DecisionSource::Store);
    assert!(started.elapsed() >= Duration::from_millis(200));
    proxy.set(Fault::Delay(Duration::from_millis(400)));
    let started = Instant::now();
    let decision = limiter.check(&policy, "k").await.unwrap();
    assert_eq!(decision.source(), DecisionSource::FailOpen);
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

/// One batch of eight decisions loses its reply: each caller gets its error once, the
/// batch is never resent (the bucket shows each decision exactly once), and the circuit
/// breaker counts one failure for the batch, not eight.
#[tokio::test]
async fn a_lost_batch_is_not_replayed_and_counts_once_for_the_breaker() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let store = RedisStore::builder(&format!("redis://{}", proxy.addr()))
        .timeout(Duration::from_millis(300))
        .circuit_breaker(3, Duration::from_secs(30))
        .deny_cache(0)
        .build()
        .await
        .unwrap();
    let limiter = RateLimiter::new(store);
    let policy = Policy::parse("api", "1/hour burst 20").unwrap();
    assert!(limiter.check(&policy, "k").await.unwrap().is_allowed());

    proxy.set(Fault::LoseReplies);
    let before = limiter.store().stats();
    // Issued together on this one-thread runtime: one batch.
    let outcomes =
        futures_util::future::join_all((0..8).map(|_| limiter.check(&policy, "k"))).await;
    let after = limiter.store().stats();
    assert_eq!(after.script_calls - before.script_calls, 1, "one batch");
    assert_eq!(after.decisions - before.decisions, 8);
    for outcome in outcomes {
        // A timeout or the connection closing under the reply: the outcome is unknown.
        assert!(
            matches!(outcome, Err(floodgate::Error::Store(_))),
            "{outcome:?}"
        );
    }
    proxy.set(Fault::Pass);
    // Eight lost decisions were one failure: with a threshold of three, the circuit stays
    // closed (a reconnect may cost one more failure), so no decision is skipped as "open".
    let deadline = Instant::now() + Duration::from_secs(5);
    let decision = loop {
        match limiter.peek(&policy, "k").await {
            Ok(decision) => break decision,
            Err(e) => {
                assert!(
                    !e.to_string().contains("circuit open"),
                    "the breaker opened: {e}"
                );
                assert!(Instant::now() < deadline, "no service after the fault: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(
        decision.remaining(),
        20 - 1 - 8,
        "each lost decision ran exactly once"
    );
}
