//! Reference-model property tests: random histories against a plain token-bucket model,
//! with zero tolerance.

use std::time::Duration;

use floodgate::{Decision, Error, Limit, ManualClock, MemoryStore, Policy, RateLimiter};
use floodgate_testkit::model::{Expected, Model};
use floodgate_testkit::{now_or_never, window};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Op {
    Check(u32),
    Peek,
    Charge(u32),
    Reset,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Forward(u64),
    Back(u64),
}

fn limit() -> impl Strategy<Value = Limit> {
    let ordinary =
        (1u32..=1_000, 1u64..=100_000, 1u32..=1_000).prop_map(|(count, period_ms, burst)| {
            Limit::per(count, Duration::from_millis(period_ms)).burst(burst)
        });
    let extreme = (
        prop_oneof![
            Just(1u32),
            Just(2),
            Just(7),
            Just(1_000_000),
            Just(u32::MAX)
        ],
        prop_oneof![
            Just(1u64),
            Just(3),
            Just(1_000),
            Just(86_400_000),
            Just(1_000 * 86_400_000 * 365)
        ],
        prop_oneof![Just(1u32), Just(2), Just(1_000), Just(u32::MAX)],
    )
        .prop_map(|(count, period_ms, burst)| {
            Limit::per(count, Duration::from_millis(period_ms)).burst(burst)
        });
    prop_oneof![3 => ordinary, 1 => extreme]
        .prop_filter("valid limits only", |l| l.validate().is_ok())
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::collection::vec(limit(), 1..=3)
        .prop_map(|limits| Policy::new("p", limits).expect("validated limits"))
}

fn op() -> impl Strategy<Value = Op> {
    let cost = prop_oneof![4 => Just(1u32), 2 => 1u32..=5, 1 => 1u32..=2_000, 1 => Just(u32::MAX)];
    prop_oneof![6 => cost.clone().prop_map(Op::Check), 2 => Just(Op::Peek), 1 => cost.prop_map(Op::Charge), 1 => Just(Op::Reset)]
}

fn forward() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 0u64..1_000_000_000,
        1 => 0u64..(1 << 45),
        1 => Just(u64::MAX),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![6 => forward().prop_map(Step::Forward), 1 => (0u64..(1 << 40)).prop_map(Step::Back)]
}

fn expected_of(d: &Decision) -> Expected {
    Expected {
        allowed: d.is_allowed(),
        decided_by: d.decided_by(),
        limit: d.limit(),
        remaining: d.remaining(),
        retry_after: u64::try_from(d.retry_after().as_nanos()).expect("fits"),
        reset_after: u64::try_from(d.reset_after().as_nanos()).expect("fits"),
    }
}

/// Runs `history` on a fresh store and the model, comparing every decision.
fn replay(
    store: MemoryStore<ManualClock>,
    clock: &ManualClock,
    policy: &Policy,
    history: &[(Step, usize, Op)],
) {
    let limiter = RateLimiter::new(store);
    let mut model = Model::new(policy, 1);
    let mut now = 0u64;
    for (i, &(step, key, op)) in history.iter().enumerate() {
        now = match step {
            Step::Forward(gap) => now.saturating_add(gap).min(1 << 62),
            Step::Back(gap) => now.saturating_sub(gap),
        };
        clock.set(Duration::from_nanos(now));
        let key = format!("key:{key}");
        let (got, want) = match op {
            Op::Check(cost) => match now_or_never(limiter.check_n(policy, &key, cost)) {
                Err(Error::CostExceedsBurst { cost: c, burst }) => {
                    assert_eq!(c, cost);
                    assert!(
                        cost > policy.max_cost() && burst == u64::from(policy.max_cost())
                            || burst < u64::from(cost)
                    );
                    continue;
                }
                result => (result, model.acquire(&key, cost, now)),
            },
            Op::Peek => (
                now_or_never(limiter.peek(policy, &key)),
                model.peek(&key, now),
            ),
            Op::Charge(cost) => (
                now_or_never(limiter.charge(policy, &key, cost)),
                model.charge(&key, cost, now),
            ),
            Op::Reset => {
                now_or_never(limiter.reset(policy, &key)).expect("reset");
                model.reset(&key);
                continue;
            }
        };
        let got = got.unwrap_or_else(|e| panic!("step {i}: {op:?} failed: {e}"));
        assert_eq!(
            expected_of(&got),
            want,
            "step {i}: {op:?} on {key} at {now} ns"
        );
    }
}

/// 512 cases by default; `PROPTEST_CASES=20000` for a longer run.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// Few keys, so no table is ever rebuilt: exact agreement even when the clock steps
    /// back.
    #[test]
    fn decisions_match_the_model_with_clock_jumps_both_ways(
        policy in policy(),
        history in prop::collection::vec((step(), 0usize..2, op()), 1..200),
    ) {
        let clock = ManualClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build();
        replay(store, &clock, &policy, &history);
    }

    /// Many keys in a tiny store: tables sweep and grow throughout, and decisions still
    /// match the model exactly (time only moves forward, the cap is never reached).
    #[test]
    fn decisions_match_the_model_while_tables_sweep_and_grow(
        policy in policy(),
        history in prop::collection::vec((forward().prop_map(Step::Forward), 0usize..60, op()), 1..400),
    ) {
        let clock = ManualClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).max_keys(1_000).build();
        replay(store, &clock, &policy, &history);
    }

    /// Whatever the demand, admitted cost in every window is at most `B + ⌊r·Δ⌋`, per
    /// limit; and under saturating demand the total reaches at least 99% of the bound.
    #[test]
    fn admissions_stay_within_the_sliding_window_bound(
        policy in policy(),
        requests in prop::collection::vec((0u64..400_000_000, prop_oneof![3 => Just(1u32), 1 => 1u32..=4]), 1..300),
    ) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::in_memory_with_clock(clock.clone());
        let mut admitted = Vec::new();
        let mut now = 0;
        for (gap, cost) in requests {
            now += gap;
            clock.set(Duration::from_nanos(now));
            if let Ok(d) = now_or_never(limiter.check_n(&policy, "k", cost)) {
                if d.is_allowed() {
                    admitted.push((now, u64::from(cost)));
                }
            }
        }
        for limit in policy.limits() {
            if let Err(w) = window::check(limit, &admitted) {
                prop_assert!(false, "{limit}: {} admitted in [{}, {}] ns, bound {}", w.admitted, w.start, w.end, w.bound);
            }
        }
    }
}

/// Saturating demand (draining the bucket every tenth of an interval) over a long run admits at least
/// 99% of the bound, for rates whose interval rounds in nanoseconds too.
#[test]
fn saturating_demand_reaches_at_least_99_percent_of_the_bound() {
    let limits = [
        Limit::per_second(3),
        Limit::per_second(7).burst(2),
        Limit::per(1_000_000, Duration::from_millis(1)).burst(5),
        // T = ⌈1e6 / 9900⌉ = 102 ns instead of 101.01: the largest rounding loss accepted.
        Limit::per(9_900, Duration::from_millis(1)),
        Limit::per_minute(1_000).burst(1),
        Limit::per_day(86_399).burst(10),
    ];
    for limit in limits {
        let policy = Policy::new("sat", [limit]).expect("valid");
        let clock = ManualClock::new();
        let limiter = RateLimiter::in_memory_with_clock(clock.clone());
        let period = u64::try_from(limit.period().as_nanos()).expect("fits");
        let interval = period.div_ceil(u64::from(limit.count()));
        let step = (interval / 10).max(1);
        let span = interval * 5_000;
        let mut admitted = Vec::new();
        let mut now = 0;
        while now <= span {
            clock.set(Duration::from_nanos(now));
            while now_or_never(limiter.check(&policy, "k"))
                .expect("check")
                .is_allowed()
            {
                admitted.push((now, 1));
            }
            now += step;
        }
        window::check(&limit, &admitted)
            .unwrap_or_else(|w| panic!("{limit}: over the bound: {w:?}"));
        let first = admitted.first().map_or(0, |a| a.0);
        let last = admitted.last().map_or(0, |a| a.0);
        let bound = window::bound(&limit, last - first);
        let total = admitted.len() as u64;
        assert!(
            total * 100 >= bound * 99,
            "{limit}: admitted {total} of a bound of {bound}"
        );
    }
}
