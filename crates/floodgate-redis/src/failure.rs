//! What a decision does when Redis fails: the failure policy, the local fallback and the
//! circuit breaker that spares callers the timeout while Redis is down.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::store::Op;
use floodgate::{
    Clock, Decision, DecisionSource, Error, FailurePolicy, Limit, MemoryStore, MonotonicClock,
    Policy, Store,
};

/// Opens after `threshold` consecutive failures; while open, calls skip Redis and go to the
/// failure policy; after `cooldown` one call probes Redis, and its success closes it.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ns: u64,
    failures: AtomicU32,
    /// While `now < open_until`, the breaker is open. 0: closed.
    open_until: AtomicU64,
    probing: AtomicBool,
    clock: MonotonicClock,
}

/// The circuit breaker's state ([`RedisHealth::breaker`](crate::RedisHealth)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Decisions go to Redis.
    Closed,
    /// Redis failed repeatedly: decisions go to the failure policy until the cooldown ends.
    Open,
    /// The cooldown ended: the next decision probes Redis, and its success closes it.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go to Redis.
pub(crate) enum Gate {
    /// Closed: call Redis.
    Pass,
    /// Half-open: this call probes Redis; report its outcome.
    Probe,
    /// Open: skip Redis for this long.
    Open(Duration),
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ns: u64::try_from(cooldown.as_nanos()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            clock: MonotonicClock::new(),
        }
    }

    pub(crate) fn gate(&self) -> Gate {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Gate::Pass;
        }
        let now = self.clock.now_nanos();
        if now < open_until {
            return Gate::Open(Duration::from_nanos(open_until - now));
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Gate::Probe
        } else {
            Gate::Open(Duration::from_nanos(self.cooldown_ns.min(1_000_000)))
        }
    }

    pub(crate) fn success(&self) {
        // The common case writes nothing: no cache line bounces between worker threads.
        if self.failures.load(Ordering::Acquire) == 0
            && self.open_until.load(Ordering::Acquire) == 0
            && !self.probing.load(Ordering::Acquire)
        {
            return;
        }
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= self.threshold || self.probing.load(Ordering::Acquire) {
            let until = self
                .clock
                .now_nanos()
                .saturating_add(self.cooldown_ns)
                .max(1);
            self.open_until.store(until, Ordering::Release);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// The breaker's state now, without changing it.
    pub(crate) fn state(&self) -> BreakerState {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            BreakerState::Closed
        } else if self.clock.now_nanos() < open_until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    pub(crate) fn cooldown(&self) -> Duration {
        Duration::from_nanos(self.cooldown_ns)
    }
}

/// The failure policies of a store: a default and per-policy overrides, and the local
/// limiter behind `Local`.
pub(crate) struct Fallback {
    pub(crate) default: FailurePolicy,
    pub(crate) overrides: HashMap<String, FailurePolicy>,
    local: MemoryStore,
}

impl Fallback {
    pub(crate) fn new(
        default: FailurePolicy,
        overrides: HashMap<String, FailurePolicy>,
    ) -> Arc<Self> {
        Arc::new(Fallback {
            default,
            overrides,
            local: MemoryStore::new(),
        })
    }

    pub(crate) fn policy_for(&self, policy: &Policy) -> FailurePolicy {
        self.policy_named(policy.name())
    }

    /// The failure policy for the policy or concurrency limit named `name`.
    pub(crate) fn policy_named(&self, name: &str) -> FailurePolicy {
        self.overrides.get(name).copied().unwrap_or(self.default)
    }

    /// The in-memory store behind `Local`.
    pub(crate) fn local(&self) -> &MemoryStore {
        &self.local
    }

    /// Decides `op` without Redis, after `error`, as `policy`'s failure policy says.
    pub(crate) async fn decide(
        &self,
        policy: &Policy,
        key: &str,
        op: Op,
        error: Error,
        wait: Duration,
    ) -> Result<Decision, Error> {
        let burst = policy
            .limits()
            .first()
            .map_or(0, |l| u64::from(l.capacity()));
        match self.policy_for(policy) {
            FailurePolicy::Error => Err(error),
            FailurePolicy::Allow => {
                Ok(Decision::allow(burst, 0).with_source(DecisionSource::FailOpen))
            }
            FailurePolicy::Deny => {
                Ok(Decision::deny(burst, wait).with_source(DecisionSource::FailClosed))
            }
            FailurePolicy::Local { share } => {
                let local = scaled(policy, share)?;
                let op = match op {
                    // A cost the full policy allows may exceed the scaled burst: cap it
                    // there rather than refuse a request Redis would have taken.
                    Op::Acquire(cost) => Op::Acquire(cost.min(local.max_cost())),
                    op => op,
                };
                let decision = self.local.apply(&local, key, op).await?;
                Ok(decision.with_source(DecisionSource::LocalFallback))
            }
            // A policy a later core adds that this store does not know yet: surface the error.
            _ => Err(error),
        }
    }

    /// Forgets `key` in the local fallback too.
    pub(crate) async fn reset(&self, policy: &Policy, key: &str) {
        if let FailurePolicy::Local { share } = self.policy_for(policy) {
            if let Ok(local) = scaled(policy, share) {
                let _ = self.local.reset(&local, key).await;
            }
        }
    }
}

/// `policy` with every count and burst multiplied by `share` (at least 1).
fn scaled(policy: &Policy, share: f64) -> Result<Policy, Error> {
    let scale = |n: u32| ((f64::from(n) * share).floor() as u32).max(1);
    Policy::new(
        policy.name(),
        policy
            .limits()
            .iter()
            .map(|l| Limit::per(scale(l.count()), l.period()).burst(scale(l.capacity()))),
    )
}
