//! The shared conformance suite, run against the memory store.

use std::sync::Arc;
use std::time::Duration;

use floodgate::{ManualClock, MemoryStore, RateLimiter};
use floodgate_testkit::conformance::{self, Harness};

fn fresh() -> Harness<MemoryStore<ManualClock>> {
    let clock = ManualClock::new();
    Harness {
        limiter: Arc::new(RateLimiter::in_memory_with_clock(clock.clone())),
        clock,
        resolution: Duration::from_nanos(1),
    }
}

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run(|| async { fresh() }).await;
}

#[tokio::test]
async fn a_tiny_memory_store_passes_the_conformance_suite() {
    // Small enough that sweeps and growth happen during the cases, big enough that no
    // case's keys are evicted.
    conformance::run(|| async {
        let clock = ManualClock::new();
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .max_keys(64)
            .build();
        Harness {
            limiter: Arc::new(RateLimiter::new(store)),
            clock,
            resolution: Duration::from_nanos(1),
        }
    })
    .await;
}
