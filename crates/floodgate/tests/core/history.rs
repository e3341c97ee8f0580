//! The memory store under the history checker: threads hammer a hot key and many cold ones on
//! the real clock, every decision bracketed by clock reads; every window of every key must
//! respect `B + ⌊r·Δ⌋`. The checker itself must catch two broken stores: one that admits an
//! extra token per refill interval, and one that trusts each client's skewed clock.

use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use floodgate::store::Op;
use floodgate::{Clock, Decision, Error, Limit, MemoryStore, MonotonicClock, Policy, Store};
use floodgate_testkit::history::{self, Event};
use floodgate_testkit::now_or_never;

const HOT: &str = "hot";
const COLD_KEYS: usize = 50;

/// Slow enough that the drivers' demand stays far above it even when a loaded machine
/// stretches their 50 µs pauses to a millisecond: saturation is about demand, not speed.
fn limit() -> Limit {
    Limit::per_second(500).burst(20)
}

/// `threads` threads for `run`, each alternating between the hot key and a cold one, a
/// decision every ~50 µs (demand far above the 500/s rate, without starving the machine).
/// Each decision is bracketed by `clock` reads; odd threads believe they are 50 ms ahead
/// (only a store that trusts client clocks, like `TrustingClock`, notices) and start a
/// quarter of the run late.
fn drive<S: Store>(store: &S, clock: &MonotonicClock, threads: usize, run: Duration) -> Vec<Event> {
    let policy = Policy::new("p", [limit()]).unwrap();
    let events = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (policy, events) = (&policy, &events);
            scope.spawn(move || {
                SKEW.with(|s| s.set(if t % 2 == 1 { 50_000_000 } else { 0 }));
                if t % 2 == 1 {
                    // Honest clients use the buckets first: when a client whose clock runs
                    // ahead joins, a trusting store hands it tokens the bucket does not
                    // have (a store that trusted it from the start would just run on its
                    // time).
                    std::thread::sleep(run / 4);
                }
                let mut mine = Vec::new();
                let end = Instant::now() + run;
                let mut i: usize = t;
                while Instant::now() < end {
                    i = i.wrapping_mul(31).wrapping_add(7);
                    let key = if i % 2 == 0 {
                        HOT.to_owned()
                    } else {
                        format!("cold{}", (i / 2) % COLD_KEYS)
                    };
                    let lo = clock.now_nanos();
                    let decision = now_or_never(store.acquire(policy, &key, 1)).unwrap();
                    let hi = clock.now_nanos();
                    mine.push(Event {
                        key,
                        cost: 1,
                        admitted: decision.is_allowed(),
                        lo,
                        hi,
                    });
                    std::thread::sleep(Duration::from_micros(50));
                }
                events.lock().unwrap().extend(mine);
            });
        }
    });
    events.into_inner().unwrap()
}

#[test]
fn the_memory_store_keeps_every_window_of_every_key() {
    let clock = MonotonicClock::new();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let events = drive(&store, &clock, 4, Duration::from_millis(600));
    let report = history::check(&limit(), &events).unwrap_or_else(|v| panic!("{v}"));
    eprintln!("memory store: {report}");
    assert!(report.decisions > 4_000, "{report}");
    let (admitted, bound) = history::saturation(&limit(), &events, HOT);
    eprintln!("hot key: {admitted} admitted, saturation floor {bound}");
    assert!(
        admitted as f64 >= 0.99 * bound as f64,
        "the hot key admitted {admitted} of a bound of {bound}"
    );
}

thread_local! {
    /// The clock error of the current thread's "client" (ns ahead of the true time).
    static SKEW: Cell<u64> = const { Cell::new(0) };
}

/// A clock that believes each client: the true time plus the calling thread's skew.
#[derive(Clone)]
struct TrustingClock(MonotonicClock);

impl Clock for TrustingClock {
    fn now_nanos(&self) -> u64 {
        self.0.now_nanos() + SKEW.with(Cell::get)
    }
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.0.sleep(duration)
    }
}

#[test]
fn the_checker_catches_a_store_that_trusts_skewed_client_clocks() {
    let clock = MonotonicClock::new();
    let store = MemoryStore::builder()
        .clock(TrustingClock(clock.clone()))
        .build();
    // Clients 1 and 3 run 50 ms ahead: on a key they share with honest clients they see up
    // to a burst of tokens the bucket does not have.
    let events = drive(&store, &clock, 4, Duration::from_millis(300));
    let violation = history::check(&limit(), &events).expect_err("a skewed clock over-admits");
    eprintln!("caught: {violation}");
    assert!(violation.0.admitted > violation.0.bound);
}

/// Admits one token more than the bucket holds every refill interval.
struct Leaky {
    inner: MemoryStore,
    interval_ns: u64,
    last_extra: Mutex<u64>,
}

impl Store for Leaky {
    type Clock = MonotonicClock;
    fn clock(&self) -> &MonotonicClock {
        self.inner.clock()
    }
    async fn apply(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        let decision = self.inner.apply(policy, key, op).await?;
        if decision.is_allowed() || !matches!(op, Op::Acquire(_)) {
            return Ok(decision);
        }
        // The clock is read under the lock: a thread that read it earlier but took the lock
        // later would otherwise see `last` ahead of its `now`.
        let mut last = self.last_extra.lock().unwrap();
        let now = self.clock().now_nanos();
        if now.saturating_sub(*last) >= self.interval_ns {
            *last = now;
            return Ok(Decision::allow(decision.limit(), 0));
        }
        Ok(decision)
    }
    async fn reset(&self, policy: &Policy, key: &str) -> Result<(), Error> {
        self.inner.reset(policy, key).await
    }
}

#[test]
fn the_checker_catches_a_store_that_leaks_one_token_per_refill() {
    let clock = MonotonicClock::new();
    let store = Leaky {
        inner: MemoryStore::builder().clock(clock.clone()).build(),
        interval_ns: 1_000_000_000 / u64::from(limit().count()), // one refill
        last_extra: Mutex::new(0),
    };
    let events = drive(&store, &clock, 2, Duration::from_millis(300));
    let violation = history::check(&limit(), &events).expect_err("a leaky store over-admits");
    eprintln!("caught: {violation}");
    assert!(violation.0.admitted > violation.0.bound);
}
