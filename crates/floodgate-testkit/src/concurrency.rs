//! The concurrency-limit cases of the conformance suite: exact expectations every
//! [`ConcurrencyStore`] must meet, driven by the harness's manual clock.
//! [`concurrency_tests!`](crate::concurrency_tests) makes one test per case for a store, from
//! the same runner the conformance suite takes; [`run`] runs them all in one test.

use std::time::Duration;

use floodgate::{Acquisition, Concurrency, ConcurrencyStore, Error, Full, Permit, PermitId};

use crate::conformance::{Case, Harness};

/// Generates one `#[tokio::test]` per concurrency case, each calling `runner(case)` as
/// [`conformance_tests!`](crate::conformance_tests) does.
#[macro_export]
macro_rules! concurrency_tests {
    ($runner:path) => {
        $crate::__concurrency_cases!(tests $runner);
    };
}

/// The one list of the concurrency cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __concurrency_cases {
    ($mode:ident $($arg:tt)*) => {
        $crate::__concurrency_each! {
            $mode [$($arg)*]
            grants_up_to_max_then_reports_full_until_the_earliest_lease_ends,
            a_release_frees_a_slot_at_once_and_is_idempotent,
            a_release_for_another_key_or_limit_changes_nothing,
            an_abandoned_permit_is_reclaimed_exactly_when_its_lease_ends,
            renew_extends_the_lease_and_an_ended_lease_cannot_be_renewed,
            acquiring_again_with_the_same_id_holds_one_permit,
            keys_and_limits_are_independent,
            dropping_a_permit_releases_it,
            acquire_wait_is_woken_by_a_release_on_this_node,
            acquire_wait_times_out_with_the_reported_wait
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __concurrency_each {
    (tests [$runner:path] $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $runner(|h| ::std::boxed::Box::pin($crate::concurrency::$case(h))).await;
            }
        )*
    };
    (list [] $($case:ident),* $(,)?) => {
        vec![$((
            stringify!($case),
            (|h| ::std::boxed::Box::pin($crate::concurrency::$case(h))) as $crate::conformance::Case<_>,
        )),*]
    };
}

/// Every concurrency case, by name.
pub fn cases<S: ConcurrencyStore>() -> Vec<(&'static str, Case<S>)> {
    crate::__concurrency_cases!(list)
}

/// Runs every case, each on a fresh store from `make`, and panics naming every case that
/// failed (for stores too costly to set up once per case).
pub async fn run<S: ConcurrencyStore, F: std::future::Future<Output = Harness<S>>>(
    make: impl Fn() -> F,
) {
    let mut failed = Vec::new();
    for (name, case) in cases::<S>() {
        if tokio::spawn(case(make().await)).await.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "concurrency cases failed: {failed:?}");
}

const LEASE: Duration = Duration::from_secs(10);

/// Real time any one wait in a case may take before it fails: generous for a loaded
/// machine, and only ever spent when the store is wrong.
const PATIENCE: Duration = Duration::from_secs(10);

fn limit(name: &str, max: u32) -> Concurrency {
    Concurrency::named(name, max)
        .and_then(|c| c.lease(LEASE))
        .unwrap_or_else(|e| panic!("test limit {name}: {e}"))
}

async fn acquire<S: ConcurrencyStore>(
    h: &Harness<S>,
    limit: &Concurrency,
    key: &str,
) -> Acquisition<S> {
    h.limiter
        .acquire(limit, key)
        .await
        .unwrap_or_else(|e| panic!("acquire {key}: {e}"))
}

async fn granted<S: ConcurrencyStore>(h: &Harness<S>, limit: &Concurrency, key: &str) -> Permit<S> {
    match acquire(h, limit, key).await {
        Acquisition::Acquired(permit) => permit,
        Acquisition::Full(full) => panic!("acquire {key}: full, {full:?}"),
    }
}

async fn full<S: ConcurrencyStore>(h: &Harness<S>, limit: &Concurrency, key: &str) -> Full {
    match acquire(h, limit, key).await {
        Acquisition::Full(full) => full,
        Acquisition::Acquired(permit) => panic!("acquire {key}: granted {permit:?}"),
    }
}

/// Asserts `actual` is `expected` to within the store's resolution (Redis counts µs).
fn assert_near<S: ConcurrencyStore>(h: &Harness<S>, actual: Duration, expected: Duration) {
    let diff = actual.abs_diff(expected);
    assert!(
        diff < h.resolution.max(Duration::from_nanos(1)) * 2,
        "{actual:?} is not {expected:?} (resolution {:?})",
        h.resolution
    );
}

/// Permits are granted up to `max`; then the limit is full, with the count in flight and
/// the time until the earliest lease ends.
pub async fn grants_up_to_max_then_reports_full_until_the_earliest_lease_ends<
    S: ConcurrencyStore,
>(
    h: Harness<S>,
) {
    let db = limit("db", 3);
    let start = h.clock.now();
    let mut held = Vec::new();
    for n in 1..=3 {
        let permit = granted(&h, &db, "k").await;
        assert_eq!(permit.in_flight(), n);
        assert_eq!(permit.expires_at(), h.clock.now() + LEASE);
        held.push(permit);
        h.clock.advance(Duration::from_secs(1));
    }
    let denied = full(&h, &db, "k").await;
    assert_eq!((denied.in_flight, denied.limit), (3, 3));
    // The first lease ends at start + 10 s; it is start + 3 s now.
    assert_near(&h, denied.retry_after, start + LEASE - h.clock.now());
    drop(held);
}

/// A release frees its slot at once; releasing it again (or by id) changes nothing.
pub async fn a_release_frees_a_slot_at_once_and_is_idempotent<S: ConcurrencyStore>(h: Harness<S>) {
    let db = limit("db", 2);
    let first = granted(&h, &db, "k").await;
    let id = first.id();
    let second = granted(&h, &db, "k").await;
    full(&h, &db, "k").await;
    first.release().await.expect("release");
    let third = granted(&h, &db, "k").await;
    assert_eq!(third.in_flight(), 2);
    // The first permit's id is gone: releasing it again must not free the third's slot.
    h.limiter
        .release_by_id(&db, "k", id)
        .await
        .expect("release again");
    h.limiter
        .release_by_id(&db, "k", PermitId::random())
        .await
        .expect("release of an unknown id");
    assert_eq!(full(&h, &db, "k").await.in_flight, 2);
    drop((second, third));
}

/// A release names its key and limit: the same id under another key or limit is not in
/// flight there, and the permit stays held.
pub async fn a_release_for_another_key_or_limit_changes_nothing<S: ConcurrencyStore>(
    h: Harness<S>,
) {
    let db = limit("db", 1);
    let other = limit("other", 1);
    let permit = granted(&h, &db, "k").await;
    h.limiter
        .release_by_id(&db, "elsewhere", permit.id())
        .await
        .expect("release, other key");
    h.limiter
        .release_by_id(&other, "k", permit.id())
        .await
        .expect("release, other limit");
    assert_eq!(full(&h, &db, "k").await.in_flight, 1);
    drop(permit);
}

/// A holder that dies (its permit neither released nor dropped) loses its slot exactly when
/// its lease ends on the store's clock, not before.
pub async fn an_abandoned_permit_is_reclaimed_exactly_when_its_lease_ends<S: ConcurrencyStore>(
    h: Harness<S>,
) {
    let db = limit("db", 1);
    let start = h.clock.now();
    std::mem::forget(granted(&h, &db, "k").await);
    h.clock.advance(LEASE - h.resolution);
    let denied = full(&h, &db, "k").await;
    assert_near(&h, denied.retry_after, start + LEASE - h.clock.now());
    h.clock.advance(h.resolution);
    let permit = granted(&h, &db, "k").await;
    assert_eq!(permit.in_flight(), 1);
}

/// `renew` extends the lease from now; a permit whose lease ended is `PermitExpired`.
pub async fn renew_extends_the_lease_and_an_ended_lease_cannot_be_renewed<S: ConcurrencyStore>(
    h: Harness<S>,
) {
    let db = limit("db", 1);
    let start = h.clock.now();
    let mut permit = granted(&h, &db, "k").await;
    h.clock.advance(Duration::from_secs(6));
    permit.renew().await.expect("renew");
    assert_eq!(permit.expires_at(), start + Duration::from_secs(16));
    // Past the first lease's end, the renewed permit still holds the slot.
    h.clock.advance(Duration::from_secs(6));
    assert_near(
        &h,
        full(&h, &db, "k").await.retry_after,
        Duration::from_secs(4),
    );
    h.clock.advance(Duration::from_secs(4));
    let error = permit.renew().await.expect_err("renew after the lease");
    assert!(
        matches!(error, Error::PermitExpired { permit: p } if p == permit.id()),
        "{error}"
    );
    granted(&h, &db, "k").await;
}

/// An acquire sent again with the same id (its reply lost) holds one permit, not two.
pub async fn acquiring_again_with_the_same_id_holds_one_permit<S: ConcurrencyStore>(h: Harness<S>) {
    let db = limit("db", 2);
    let id = PermitId::random();
    let first = h
        .limiter
        .acquire_with_id(&db, "k", id)
        .await
        .expect("acquire");
    let first = first.permit().expect("first granted");
    let again = h
        .limiter
        .acquire_with_id(&db, "k", id)
        .await
        .expect("again");
    let again = again.permit().expect("the same id is granted again");
    assert_eq!((first.in_flight(), again.in_flight()), (1, 1));
    let other = granted(&h, &db, "k").await;
    assert_eq!(other.in_flight(), 2);
    drop((first, again, other));
}

/// Keys, and limits of different names, have slots of their own.
pub async fn keys_and_limits_are_independent<S: ConcurrencyStore>(h: Harness<S>) {
    let a = limit("a", 1);
    let b = limit("b", 1);
    let held = [
        granted(&h, &a, "k").await,
        granted(&h, &a, "j").await,
        granted(&h, &b, "k").await,
    ];
    full(&h, &a, "k").await;
    full(&h, &b, "k").await;
    drop(held);
}

/// Dropping a permit releases it (at once on the memory store, by a spawned release
/// elsewhere): a waiting acquire gets the slot without any lease ending.
pub async fn dropping_a_permit_releases_it<S: ConcurrencyStore>(h: Harness<S>) {
    let db = limit("db", 1);
    let permit = granted(&h, &db, "k").await;
    drop(permit);
    let wait = h.limiter.acquire_wait(&db, "k", LEASE);
    let next = tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("the dropped permit was never released")
        .expect("acquire_wait");
    assert_eq!(next.in_flight(), 1);
}

/// `acquire_wait` on a full limit is woken by a release on this node, with the store's
/// clock standing still.
pub async fn acquire_wait_is_woken_by_a_release_on_this_node<S: ConcurrencyStore>(h: Harness<S>) {
    let db = limit("db", 1);
    let permit = granted(&h, &db, "k").await;
    let limiter = h.limiter.clone();
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move { limiter.acquire_wait(&db, "k", LEASE).await })
    };
    // Let the waiter find the limit full first (it cannot get a permit before the release).
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "acquire_wait returned while full");
    permit.release().await.expect("release");
    let next = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("acquire_wait was not woken by the release")
        .expect("waiter task")
        .expect("acquire_wait");
    assert_eq!(next.in_flight(), 1);
}

/// `acquire_wait` gives up once its timeout has passed on the store's clock, reporting the
/// time until the earliest lease ends.
pub async fn acquire_wait_times_out_with_the_reported_wait<S: ConcurrencyStore>(h: Harness<S>) {
    let db = limit("db", 1);
    let start = h.clock.now();
    let permit = granted(&h, &db, "k").await;
    let limiter = h.limiter.clone();
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move { limiter.acquire_wait(&db, "k", Duration::from_secs(2)).await })
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !waiter.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acquire_wait never timed out"
        );
        h.clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let error = waiter
        .await
        .expect("waiter task")
        .expect_err("a full limit timed out");
    let Error::Timeout { retry_after } = error else {
        panic!("not a timeout: {error}");
    };
    let elapsed = h.clock.now() - start;
    assert!(
        elapsed >= Duration::from_secs(2),
        "gave up after {elapsed:?}"
    );
    assert!(
        retry_after <= LEASE - Duration::from_secs(2) && retry_after > Duration::ZERO,
        "{retry_after:?}"
    );
    drop(permit);
}
