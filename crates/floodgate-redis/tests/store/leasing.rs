//! Token leasing on a manual clock: a key leases only once it is hot, spends its lease
//! locally (`DecisionSource::Lease`), and an idle node's lease expires on time; the tokens
//! a lease takes are gone from the shared bucket; bad settings are refused.

use std::time::Duration;

use floodgate::{DecisionSource, Error, ManualClock, Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;

async fn limiter(
    server: &RedisServer,
    clock: &ManualClock,
    lease: Duration,
    batching: bool,
) -> RateLimiter<RedisStore<ManualClock>> {
    let store = RedisStore::builder(&server.url())
        .deny_cache(0)
        .batching(batching)
        .lease_for("hot", lease)
        .manual_clock(clock.clone())
        .build()
        .await
        .unwrap();
    RateLimiter::new(store)
}

/// A store on `server` that does not lease and caches nothing: what another node sees.
async fn plain(server: &RedisServer, clock: &ManualClock) -> RateLimiter<RedisStore<ManualClock>> {
    RateLimiter::new(
        RedisStore::builder(&server.url())
            .deny_cache(0)
            .manual_clock(clock.clone())
            .build()
            .await
            .unwrap(),
    )
}

async fn leases_then_expire(batching: bool) {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let limiter = limiter(&server, &clock, Duration::from_millis(100), batching).await;
    // Another node, without leases, sees the shared bucket.
    let other = plain(&server, &clock).await;
    let hot = Policy::parse("hot", "1000/s burst 400").unwrap();
    let cold = Policy::parse("cold", "1000/s burst 400").unwrap();

    // A policy without a lease time never leases, however hot.
    for _ in 0..10 {
        let d = limiter.check(&cold, "k").await.unwrap();
        assert_eq!(d.source(), DecisionSource::Store);
    }
    // The first decision on a key is one exact call; from the second within 100 ms the
    // key leases: the second asks for a lease of the two tokens it used, spends one.
    let first = limiter.check(&hot, "k").await.unwrap();
    assert_eq!(first.source(), DecisionSource::Store);
    let second = limiter.check(&hot, "k").await.unwrap();
    assert_eq!(
        (second.source(), second.remaining()),
        (DecisionSource::Lease, 1)
    );
    let third = limiter.check(&hot, "k").await.unwrap();
    assert_eq!(
        (third.source(), third.remaining()),
        (DecisionSource::Lease, 0)
    );
    let stats = limiter.store().stats();
    assert_eq!(
        (
            stats.leased_tokens,
            stats.spent_lease_tokens,
            stats.expired_lease_tokens
        ),
        (2, 2, 0)
    );
    // The shared bucket lost 1 + 2 tokens: what the other node sees.
    assert_eq!(other.peek(&hot, "k").await.unwrap().remaining(), 400 - 3);

    // Hotter: leases grow with the use in the last 100 ms (capped at a quarter burst).
    let mut served = 0;
    for _ in 0..200 {
        let d = limiter.check(&hot, "k").await.unwrap();
        assert!(d.is_allowed());
        served += u64::from(d.source() == DecisionSource::Lease);
    }
    let calls = limiter.store().stats().script_calls;
    assert!(served > 150, "most decisions came from leases: {served}");
    assert!(calls < 10 + 3 + 50, "few calls: {calls}");
    let stats = limiter.store().stats();
    let held = stats.leased_tokens - stats.spent_lease_tokens - stats.expired_lease_tokens;
    assert!(held > 0, "a lease holds tokens: {stats:?}");
    // Every decision after the first was served by a lease (the requester's own included).
    assert_eq!(stats.spent_lease_tokens, 203 - 1, "{stats:?}");
    // The bucket shows every leased token taken, spent or not.
    let taken = 1 + stats.leased_tokens;
    assert_eq!(
        other.peek(&hot, "k").await.unwrap().remaining(),
        400 - taken,
        "{stats:?}"
    );

    // Idle: the lease ends 100 ms after its request was sent, and its tokens with it.
    clock.advance(Duration::from_millis(99));
    let before = limiter.store().stats();
    assert_eq!(before.expired_lease_tokens, stats.expired_lease_tokens);
    clock.advance(Duration::from_millis(1));
    let after = limiter.store().stats();
    assert_eq!(
        after.expired_lease_tokens - before.expired_lease_tokens,
        held,
        "the unspent tokens expired on time"
    );
    // 100 ms refilled 100 tokens on the shared bucket; the expired ones are not returned.
    assert_eq!(
        other.peek(&hot, "k").await.unwrap().remaining(),
        (400 - taken + 100).min(400)
    );
}

#[tokio::test]
async fn a_hot_key_leases_and_an_idle_lease_expires_on_time() {
    leases_then_expire(true).await;
}

#[tokio::test]
async fn leasing_works_with_batching_off() {
    leases_then_expire(false).await;
}

#[tokio::test]
async fn a_lease_takes_the_same_tokens_from_every_limit_all_or_nothing() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let limiter = limiter(&server, &clock, Duration::from_millis(100), true).await;
    let other = plain(&server, &clock).await;
    // The second limit has 3 tokens: a lease can take at most 3 from both.
    let hot = Policy::parse("hot", "1000/s burst 400; 10/h burst 4").unwrap();
    let fresh = Policy::parse("hot", "1000/s burst 400").unwrap();
    assert!(limiter.check(&hot, "k").await.unwrap().is_allowed());
    let mut admitted = 1;
    while let Ok(d) = limiter.check(&hot, "k").await {
        if !d.is_allowed() {
            assert_eq!(
                d.source(),
                DecisionSource::Store,
                "a refused lease is a denial"
            );
            break;
        }
        admitted += 1;
        assert!(admitted <= 4, "never past the smallest limit");
    }
    assert_eq!(admitted, 4);
    // The first limit lost exactly what the second did: 4 tokens.
    assert_eq!(other.peek(&fresh, "k").await.unwrap().remaining(), 400 - 4);
}

#[tokio::test]
async fn a_reset_drops_this_nodes_lease() {
    let server = RedisServer::start();
    let clock = ManualClock::new();
    let limiter = limiter(&server, &clock, Duration::from_secs(10), true).await;
    let hot = Policy::parse("hot", "1000/s burst 400").unwrap();
    for _ in 0..20 {
        limiter.check(&hot, "k").await.unwrap();
    }
    let before = limiter.store().stats();
    let held = before.leased_tokens - before.spent_lease_tokens - before.expired_lease_tokens;
    assert!(held > 0, "{before:?}");
    limiter.reset(&hot, "k").await.unwrap();
    let after = limiter.store().stats();
    assert_eq!(
        after.expired_lease_tokens - before.expired_lease_tokens,
        held
    );
    // The key is still hot: the next decision leases again, from a fresh bucket.
    let d = limiter.check(&hot, "k").await.unwrap();
    let again = limiter.store().stats();
    let granted = again.leased_tokens - after.leased_tokens;
    assert_eq!(
        (d.source(), d.remaining()),
        (DecisionSource::Lease, granted - 1)
    );
    assert_eq!(
        plain(&server, &clock)
            .await
            .peek(&hot, "k")
            .await
            .unwrap()
            .remaining(),
        400 - granted,
        "the reset emptied the bucket's history; only the new lease is taken"
    );
}

#[tokio::test]
async fn bad_lease_settings_are_refused() {
    for builder in [
        RedisStore::builder("redis://127.0.0.1:6379").lease(Duration::ZERO),
        RedisStore::builder("redis://127.0.0.1:6379").lease_for("api", Duration::ZERO),
    ] {
        let error = builder.check().unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidConfig {
                    knob: "lease" | "lease_for",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
