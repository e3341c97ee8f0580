//! The shared conformance suite against the memory store: one test per case, for a store
//! with default settings and for one small enough that sweeps and growth happen during the
//! cases.

use std::sync::Arc;
use std::time::Duration;

use floodgate::{ManualClock, MemoryStore, RateLimiter};
use floodgate_testkit::conformance::{Case, Harness};

fn harness(
    store: MemoryStore<ManualClock>,
    clock: ManualClock,
) -> Harness<MemoryStore<ManualClock>> {
    Harness {
        limiter: Arc::new(RateLimiter::new(store)),
        clock,
        resolution: Duration::from_nanos(1),
    }
}

async fn default_store(case: Case<MemoryStore<ManualClock>>) {
    let clock = ManualClock::new();
    case(harness(
        MemoryStore::builder().clock(clock.clone()).build(),
        clock,
    ))
    .await;
}

/// Small enough that sweeps and growth happen during the cases, big enough that no case's
/// keys are evicted.
async fn tiny_store(case: Case<MemoryStore<ManualClock>>) {
    let clock = ManualClock::new();
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .max_keys(64)
        .build();
    case(harness(store, clock)).await;
}

mod memory_store {
    floodgate_testkit::conformance_tests!(super::default_store);
}

mod tiny_memory_store {
    floodgate_testkit::conformance_tests!(super::tiny_store);
}

mod login {
    floodgate_testkit::login_tests!(super::default_store);
}

mod concurrency {
    floodgate_testkit::concurrency_tests!(super::default_store);
}

mod tiny_concurrency {
    floodgate_testkit::concurrency_tests!(super::tiny_store);
}
