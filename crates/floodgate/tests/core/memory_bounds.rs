//! Bounded memory without housekeeping: full buckets are swept as the store fills, and at
//! the cap the entries nearest to full go first, so a flood cannot free a throttled key.

use std::time::Duration;

use floodgate::{Error, ManualClock, MemoryStore, Policy, RateLimiter};
use floodgate_testkit::now_or_never;

/// Floods `keys` distinct keys into a store capped at `cap` while a victim is deeply
/// throttled; the cap holds throughout and the victim stays throttled.
fn flood(keys: u64, cap: usize) {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(cap)
        .build();
    let limiter = RateLimiter::new(store.clone());
    let login = Policy::parse("login", "100/h").unwrap();
    while now_or_never(limiter.check(&login, "victim"))
        .unwrap()
        .is_allowed()
    {}
    let before = now_or_never(limiter.check(&login, "victim")).unwrap();
    assert!(!before.is_allowed());
    let mut key = String::new();
    for i in 0..keys {
        use std::fmt::Write;
        key.clear();
        write!(key, "attacker:{i}").unwrap();
        now_or_never(limiter.check(&login, &key)).unwrap();
        if i % 65_536 == 0 {
            assert!(
                store.len() <= cap,
                "len {} above the cap {cap} after {i} keys",
                store.len()
            );
            clock.advance(Duration::from_millis(1));
        }
    }
    assert!(store.len() <= cap);
    assert!(
        store.len() >= cap * 3 / 4,
        "the store should be near its cap, has {}",
        store.len()
    );
    let after = now_or_never(limiter.check(&login, "victim")).unwrap();
    assert!(!after.is_allowed(), "the flood freed the throttled key");
    let elapsed = clock.now();
    assert_eq!(after.retry_after(), before.retry_after() - elapsed);
}

#[test]
fn a_flood_of_a_million_keys_keeps_the_cap_and_the_victim_throttled() {
    flood(1_000_000, 100_000);
}

/// Ten million keys: about 5 s in release mode on a 2-core VM. Run with
/// `cargo test --release -p floodgate --test core memory_bounds:: -- --ignored`.
#[test]
#[ignore = "long: ten million keys"]
fn a_flood_of_ten_million_keys_keeps_the_cap_and_the_victim_throttled() {
    flood(10_000_000, 1_000_000);
}

#[test]
fn full_buckets_are_swept_as_keys_churn() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let limiter = RateLimiter::new(store.clone());
    let policy = Policy::parse("api", "10/s").unwrap();
    for round in 0..100 {
        for i in 0..1_000 {
            now_or_never(limiter.check(&policy, &format!("r{round}:k{i}"))).unwrap();
        }
        clock.advance(Duration::from_secs(1)); // every bucket is full again
    }
    // 100 000 distinct keys went through; only recent ones may still be stored.
    assert!(
        store.len() < 8_000,
        "stale buckets were not swept: len {}",
        store.len()
    );
    store.sweep();
    assert_eq!(store.len(), 0);
}

#[test]
fn eviction_takes_the_least_indebted_keys_first() {
    let clock = ManualClock::new();
    // One shard (fewer than 128 keys): the order is exact.
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(16)
        .build();
    let limiter = RateLimiter::new(store.clone());
    let policy = Policy::parse("p", "100/s").unwrap();
    // key i takes i + 1 tokens: debts 1..=16.
    for i in 0..16u32 {
        now_or_never(limiter.check_n(&policy, &format!("k{i}"), i + 1)).unwrap();
    }
    assert_eq!(store.len(), 16);
    now_or_never(limiter.check(&policy, "newcomer")).unwrap();
    assert!(store.len() <= 16);
    let remaining = |key: &str| {
        now_or_never(limiter.peek(&policy, key))
            .unwrap()
            .remaining()
    };
    // The two least indebted keys (16 / 8) were evicted: they read as full again.
    assert_eq!(remaining("k0"), 100);
    assert_eq!(remaining("k1"), 100);
    for i in 2..16u64 {
        assert_eq!(
            remaining(&format!("k{i}")),
            100 - (i + 1),
            "k{i} should have kept its debt"
        );
    }
}

#[test]
fn a_cap_of_zero_is_refused_by_try_build() {
    let error = MemoryStore::builder().max_keys(0).try_build().unwrap_err();
    assert!(matches!(
        error,
        Error::InvalidConfig {
            knob: "max_keys",
            ..
        }
    ));
    assert_eq!(MemoryStore::builder().max_keys(0).build().max_keys(), 1);
}

#[test]
fn a_clock_stepping_back_after_a_sweep_admits_no_more_than_keeping_the_state() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let limiter = RateLimiter::new(store.clone());
    let policy = Policy::parse("p", "10/s").unwrap();
    clock.set(Duration::from_secs(100));
    for _ in 0..10 {
        now_or_never(limiter.check(&policy, "k")).unwrap();
    }
    clock.set(Duration::from_secs(102)); // full again, so the sweep drops it
    store.sweep();
    assert_eq!(store.len(), 0);
    clock.set(Duration::from_millis(100_500)); // back to when the bucket held 5 tokens
    let mut admitted = 0;
    while now_or_never(limiter.check(&policy, "k"))
        .unwrap()
        .is_allowed()
    {
        admitted += 1;
    }
    assert!(
        admitted <= 5,
        "admitted {admitted} after the clock stepped back"
    );
}
