//! Exact counts under contention: with the clock frozen, however many threads race, a
//! bucket admits exactly its burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::{Limit, ManualClock, Policy, RateLimiter};
use floodgate_testkit::now_or_never;

#[test]
fn sixteen_threads_on_one_key_admit_exactly_the_burst() {
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let policy = Policy::new("hot", [Limit::per_hour(1_000)]).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (limiter, policy, admitted) =
                (Arc::clone(&limiter), policy.clone(), Arc::clone(&admitted));
            std::thread::spawn(move || {
                for _ in 0..100_000 {
                    if now_or_never(limiter.check(&policy, "one-key"))
                        .unwrap()
                        .is_allowed()
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
}

#[test]
fn eight_threads_over_ten_thousand_keys_admit_exactly_the_burst_of_each() {
    const KEYS: usize = 10_000;
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let policy = Policy::parse("spread", "5/h").unwrap();
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("user:{i}")).collect());
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..KEYS).map(|_| AtomicU32::new(0)).collect());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (limiter, policy, keys, counts) = (
                Arc::clone(&limiter),
                policy.clone(),
                Arc::clone(&keys),
                Arc::clone(&counts),
            );
            std::thread::spawn(move || {
                for round in 0..8 {
                    // Each thread walks the keys from a different offset, so inserts race too.
                    for i in 0..KEYS {
                        let k = (i + t * 1_250 + round * 17) % KEYS;
                        if now_or_never(limiter.check(&policy, &keys[k]))
                            .unwrap()
                            .is_allowed()
                        {
                            counts[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    for (k, count) in counts.iter().enumerate() {
        assert_eq!(count.load(Ordering::Relaxed), 5, "key {k}");
    }
    assert_eq!(limiter.store().len(), KEYS);
}

/// Racing requests on a two-limit policy: denials by one limit never charge the other, so
/// over refills of the fast limit the slow one admits exactly its burst.
#[test]
fn multi_limit_policies_stay_all_or_nothing_under_contention() {
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock.clone()));
    let policy = Policy::new("tiers", [Limit::per_hour(10), Limit::per_second(4)]).unwrap();
    let mut per_round = Vec::new();
    for _ in 0..5 {
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (limiter, policy, admitted) =
                    (Arc::clone(&limiter), policy.clone(), Arc::clone(&admitted));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if now_or_never(limiter.check(&policy, "k"))
                            .unwrap()
                            .is_allowed()
                        {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        per_round.push(admitted.load(Ordering::Relaxed));
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(per_round, [4, 4, 2, 0, 0]);
}
