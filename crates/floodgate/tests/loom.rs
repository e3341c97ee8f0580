//! loom models of the memory store's concurrency: the compare-and-swap on a bucket's state
//! cell, inserts racing on an absent key, and sweeps and evictions racing with consumers.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p floodgate --test loom --release`
//! (`scripts/test` does, in its own target directory).
#![cfg(loom)]

use std::sync::Arc;
use std::time::Duration;

use floodgate::{ManualClock, MemoryStore, Policy, RateLimiter};
use floodgate_testkit::now_or_never;
use loom::thread;

fn limiter(
    max_keys: usize,
) -> (
    Arc<RateLimiter<MemoryStore<ManualClock>>>,
    MemoryStore<ManualClock>,
    ManualClock,
) {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(max_keys)
        .build();
    (Arc::new(RateLimiter::new(store.clone())), store, clock)
}

fn allowed(limiter: &RateLimiter<MemoryStore<ManualClock>>, policy: &Policy, key: &str) -> bool {
    now_or_never(limiter.check(policy, key))
        .unwrap()
        .is_allowed()
}

/// Two consumers race for the last token of an existing bucket: exactly one wins.
#[test]
fn the_state_cell_hands_the_last_token_to_exactly_one_consumer() {
    loom::model(|| {
        let (limiter, _, _) = limiter(64);
        let policy = Policy::parse("p", "2/h").unwrap();
        assert!(allowed(&limiter, &policy, "k"));
        let racer = {
            let (limiter, policy) = (Arc::clone(&limiter), policy.clone());
            thread::spawn(move || allowed(&limiter, &policy, "k"))
        };
        let mine = allowed(&limiter, &policy, "k");
        let theirs = racer.join().unwrap();
        assert!(mine ^ theirs, "exactly one consumer gets the last token");
    });
}

/// Two consumers race to insert an absent key with a burst of one: exactly one wins.
#[test]
fn racing_inserts_of_an_absent_key_admit_exactly_the_burst() {
    loom::model(|| {
        let (limiter, store, _) = limiter(64);
        let policy = Policy::parse("p", "1/h").unwrap();
        let racer = {
            let (limiter, policy) = (Arc::clone(&limiter), policy.clone());
            thread::spawn(move || allowed(&limiter, &policy, "k"))
        };
        let mine = allowed(&limiter, &policy, "k");
        let theirs = racer.join().unwrap();
        assert!(mine ^ theirs);
        assert_eq!(store.len(), 1);
    });
}

/// A sweep racing with a consumer of a full bucket never loses the consumer's charge.
#[test]
fn a_sweep_never_loses_a_concurrent_charge() {
    loom::model(|| {
        let (limiter, store, clock) = limiter(64);
        let policy = Policy::parse("p", "1/h").unwrap();
        assert!(allowed(&limiter, &policy, "k"));
        clock.advance(Duration::from_secs(3_600)); // full again: sweepable
        let sweeper = {
            let store = store.clone();
            thread::spawn(move || store.sweep())
        };
        assert!(allowed(&limiter, &policy, "k"));
        sweeper.join().unwrap();
        assert!(
            !allowed(&limiter, &policy, "k"),
            "the sweep dropped a fresh charge"
        );
    });
}

/// An insert that forces an eviction, racing with a throttled key's consumer: the least
/// indebted key is evicted, the throttled one stays throttled.
#[test]
fn an_eviction_never_frees_a_throttled_key() {
    loom::model(|| {
        let (limiter, store, _) = limiter(2);
        let policy = Policy::parse("p", "3/h").unwrap();
        for _ in 0..3 {
            assert!(allowed(&limiter, &policy, "deep"));
        }
        assert!(allowed(&limiter, &policy, "light"));
        let newcomer = {
            let (limiter, policy) = (Arc::clone(&limiter), policy.clone());
            thread::spawn(move || allowed(&limiter, &policy, "new"))
        };
        assert!(!allowed(&limiter, &policy, "deep"));
        assert!(newcomer.join().unwrap());
        assert!(!allowed(&limiter, &policy, "deep"));
        assert!(store.len() <= 2);
    });
}
