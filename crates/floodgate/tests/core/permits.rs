//! The memory store's concurrency permits beyond the shared suite: the cap on keys with
//! permits (a held permit is never dropped to make room), independence from the rate-limit
//! table's evictions, and never more than `max` in flight under real threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::{Acquisition, Concurrency, ManualClock, MemoryStore, Policy, RateLimiter};
use floodgate_testkit::now_or_never;

#[test]
fn at_the_cap_a_new_key_is_refused_and_counted_and_no_held_permit_is_dropped() {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(16)
        .build();
    let limiter = RateLimiter::new(store.clone());
    let jobs = Concurrency::named("jobs", 1)
        .unwrap()
        .lease(Duration::from_secs(5))
        .unwrap();
    let mut held = Vec::new();
    let mut refused = None;
    for n in 0..10_000 {
        let key = format!("k{n}");
        match now_or_never(limiter.acquire(&jobs, &key)).unwrap() {
            Acquisition::Acquired(permit) => held.push((key, permit)),
            Acquisition::Full(full) => {
                assert_eq!(
                    full.in_flight, 0,
                    "a new key is refused by the cap, not its limit"
                );
                assert_eq!(full.retry_after, Duration::from_secs(5));
                refused = Some(key);
                break;
            }
        }
    }
    let refused = refused.expect("the cap of 16 keys was never reached");
    assert!(!held.is_empty() && held.len() <= 16, "{} held", held.len());
    assert_eq!(store.permits_refused_at_cap(), 1);
    assert_eq!(store.permit_keys(), held.len());
    for (key, _) in &held {
        assert_eq!(store.in_flight(&jobs, key), 1, "{key} lost its permit");
    }
    // Once the leases end, the abandoned permits are reclaimed to make room.
    for (_, permit) in held.drain(..) {
        std::mem::forget(permit);
    }
    clock.advance(Duration::from_secs(5));
    assert!(
        now_or_never(limiter.acquire(&jobs, &refused))
            .unwrap()
            .is_acquired()
    );
    assert!(store.permits_reclaimed() >= 1);
}

#[test]
fn rate_limit_evictions_never_touch_a_held_permit() {
    let store = MemoryStore::builder().max_keys(64).build();
    let limiter = RateLimiter::new(store.clone());
    let db = Concurrency::named("db", 1).unwrap();
    let permit = now_or_never(limiter.acquire(&db, "tenant"))
        .unwrap()
        .permit()
        .unwrap();
    let policy = Policy::parse("api", "1/h").unwrap();
    for n in 0..10_000 {
        now_or_never(limiter.check(&policy, &format!("user:{n}"))).unwrap();
    }
    assert!(store.len() <= 64);
    assert_eq!(store.in_flight(&db, "tenant"), 1);
    assert!(
        !now_or_never(limiter.acquire(&db, "tenant"))
            .unwrap()
            .is_acquired()
    );
    drop(permit);
    assert_eq!(
        store.in_flight(&db, "tenant"),
        0,
        "a drop releases at once, with no runtime"
    );
}

#[test]
fn eight_threads_never_hold_more_than_max() {
    const MAX: u32 = 3;
    let limiter = Arc::new(RateLimiter::in_memory());
    let db = Concurrency::named("db", MAX).unwrap();
    let holding = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (limiter, db) = (limiter.clone(), db.clone());
            let (holding, most, granted) = (holding.clone(), most.clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    if let Some(permit) = now_or_never(limiter.acquire(&db, "k")).unwrap().permit()
                    {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        granted.fetch_add(1, Ordering::Relaxed);
                        std::hint::spin_loop();
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(
        most.load(Ordering::SeqCst) <= MAX,
        "{} held at once",
        most.load(Ordering::SeqCst)
    );
    assert!(
        granted.load(Ordering::Relaxed) >= 5_000,
        "{} granted",
        granted.load(Ordering::Relaxed)
    );
    assert_eq!(limiter.store().in_flight(&db, "k"), 0);
}
