//! Token leasing for hot keys: a node takes `k` tokens from the shared bucket in one call
//! and spends them locally for at most the lease time `L`, measured on this node's clock
//! from the moment the lease request was *sent*.
//!
//! **The bound.** Every admission is a grant by Redis: a single decision's cost at its
//! Redis time, or a lease's `k` tokens at the lease's Redis time `g`. A leased token is
//! spent at a time `s` after the reply arrived (so `s ≥ g`) and before the lease ended
//! (`s < sent + L ≤ g + L`, since the request was sent before Redis ran it): `g ∈ (s − L, s]`.
//! The spends of any window `[a, a + Δ]` therefore come from grants made in
//! `(a − L, a + Δ]`, a window of length `Δ + L`, and the bucket grants at most
//! `B + ⌊r·(Δ + L)⌋` tokens in any such window (the GCRA bound). So over every window of
//! length Δ a key admits at most `B + ⌊r·(Δ + L)⌋`: leasing acts as a burst larger by at
//! most `r·L`. Unspent tokens expire with the lease; they are never returned (a return
//! could let the tokens held grow without bound). This assumes this node's clock and
//! Redis's run at the same rate over `L` — true on one host, and to parts per million
//! between hosts.
//!
//! **When a key leases.** A key leases once this node has made at least
//! [`MIN_TOKENS_PER_LEASE`] tokens' worth of decisions on it within one `L`; below that
//! rate each decision is one exact call. A lease asks for about the tokens the key used in
//! the last `L` (at least the request's cost, at most a quarter of the smallest burst), and
//! takes what every limit can give, all or nothing. While one caller asks for a lease,
//! others on the same key wait for it rather than ask too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use floodgate::Policy;
use tokio::sync::Notify;

const SHARDS: usize = 16;

/// Tokens a key must use within one lease time before it leases.
pub(crate) const MIN_TOKENS_PER_LEASE: u64 = 2;

/// Keys tracked per shard at most; beyond, new keys are decided one call at a time.
const PER_SHARD: usize = 4_096;

/// The lease times of a store: a default and per-policy ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseTimes {
    pub(crate) default: Option<Duration>,
    pub(crate) overrides: HashMap<String, Duration>,
}

impl LeaseTimes {
    pub(crate) fn is_empty(&self) -> bool {
        self.default.is_none() && self.overrides.is_empty()
    }

    fn for_policy(&self, policy: &Policy) -> Option<Duration> {
        self.overrides.get(policy.name()).copied().or(self.default)
    }
}

/// Token counts, for [`RedisStats`](crate::RedisStats) and
/// [`RedisStore::lease_tokens`](crate::RedisStore::lease_tokens).
#[derive(Default)]
pub(crate) struct LeaseCounters {
    pub(crate) leased: AtomicU64,
    pub(crate) spent: AtomicU64,
    pub(crate) expired: AtomicU64,
}

/// The store-wide counters and one policy's, counted together.
#[derive(Clone)]
struct Both<'a>(&'a LeaseCounters, &'a LeaseCounters);

impl Both<'_> {
    fn leased(&self, n: u64) {
        self.0.leased.fetch_add(n, Ordering::Relaxed);
        self.1.leased.fetch_add(n, Ordering::Relaxed);
    }
    fn spent(&self, n: u64) {
        self.0.spent.fetch_add(n, Ordering::Relaxed);
        self.1.spent.fetch_add(n, Ordering::Relaxed);
    }
    fn expired(&self, n: u64) {
        self.0.expired.fetch_add(n, Ordering::Relaxed);
        self.1.expired.fetch_add(n, Ordering::Relaxed);
    }
}

/// This node's leases.
pub(crate) struct Leases {
    times: LeaseTimes,
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: ahash::RandomState,
    pub(crate) counters: LeaseCounters,
    per_policy: RwLock<HashMap<String, Arc<LeaseCounters>>>,
}

#[derive(Default)]
struct Entry {
    /// The counters of the entry's policy.
    counters: Arc<LeaseCounters>,
    /// Tokens left in the lease.
    tokens: u64,
    /// The lease ends at this time (ns, the store's clock).
    ends: u64,
    /// The current rate window: its start (ns) and the tokens asked for in it.
    window_start: u64,
    window_tokens: u64,
    /// Tokens asked for in the previous window.
    last_window_tokens: u64,
    /// A lease request in flight, and who waits for it.
    pending: Option<Arc<Notify>>,
}

/// What a decision does about a lease.
pub(crate) enum Plan {
    /// The policy does not lease, or the key is not hot: one exact call.
    Single,
    /// Served from this node's lease: the tokens left after it.
    Spent(u64),
    /// Another caller is asking for a lease on this key: wait, then try again.
    Wait(Arc<Notify>),
    /// Ask for a lease of this many tokens (at least the cost), sent at `sent` (ns), for `L`.
    Request {
        wanted: u64,
        sent: u64,
        length: Duration,
    },
}

impl Leases {
    /// `None` when no policy leases.
    pub(crate) fn new(times: LeaseTimes) -> Option<Self> {
        (!times.is_empty()).then(|| Leases {
            times,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::new(),
            counters: LeaseCounters::default(),
            per_policy: RwLock::new(HashMap::new()),
        })
    }

    /// One policy's counters (created on first use).
    pub(crate) fn policy_counters(&self, name: &str) -> Arc<LeaseCounters> {
        if let Some(c) = self
            .per_policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return c.clone();
        }
        self.per_policy
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn slot(&self, policy: &Policy, key: &str) -> (usize, u64) {
        let hash = self.hasher.hash_one((policy.name(), key));
        ((hash as usize) % SHARDS, hash)
    }

    /// Decides how an acquire of `cost` on `(policy, key)` at `now` (ns) goes.
    pub(crate) fn plan(&self, policy: &Policy, key: &str, cost: u32, now: u64) -> Plan {
        let Some(length) = self.times.for_policy(policy) else {
            return Plan::Single;
        };
        let length_ns = u64::try_from(length.as_nanos()).unwrap_or(u64::MAX);
        let cost = u64::from(cost);
        let (shard, hash) = self.slot(policy, key);
        let mut shard = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(&hash) && shard.len() >= PER_SHARD {
            // Full: drop what no lease and no recent use keeps alive.
            shard.retain(|_, e| {
                e.pending.is_some()
                    || e.tokens > 0
                    || now.saturating_sub(e.window_start) < length_ns.saturating_mul(2)
            });
            if shard.len() >= PER_SHARD {
                return Plan::Single;
            }
        }
        let entry = shard.entry(hash).or_insert_with(|| Entry {
            counters: self.policy_counters(policy.name()),
            ..Entry::default()
        });
        let count = Both(&self.counters, &entry.counters);
        if now.saturating_sub(entry.window_start) >= length_ns {
            entry.last_window_tokens = if now - entry.window_start < length_ns.saturating_mul(2) {
                entry.window_tokens
            } else {
                0
            };
            entry.window_start = now;
            entry.window_tokens = 0;
        }
        entry.window_tokens = entry.window_tokens.saturating_add(cost);
        if entry.tokens > 0 && now >= entry.ends {
            count.expired(entry.tokens);
            entry.tokens = 0;
        }
        if entry.tokens >= cost {
            entry.tokens -= cost;
            count.spent(cost);
            return Plan::Spent(entry.tokens);
        }
        if let Some(pending) = &entry.pending {
            return Plan::Wait(pending.clone());
        }
        let rate = entry.last_window_tokens.max(entry.window_tokens);
        if rate < MIN_TOKENS_PER_LEASE {
            return Plan::Single;
        }
        let burst = policy
            .limits()
            .iter()
            .map(|l| u64::from(l.capacity()))
            .min()
            .unwrap_or(1);
        let cap = (burst / 4).max(cost);
        entry.pending = Some(Arc::new(Notify::new()));
        Plan::Request {
            wanted: rate.clamp(cost, cap),
            sent: now,
            length,
        }
    }

    /// A lease request sent at `sent` came back with `granted` tokens (0: refused or
    /// failed), of which the requester spends `cost`. The tokens left.
    pub(crate) fn granted(
        &self,
        policy: &Policy,
        key: &str,
        granted: u64,
        cost: u32,
        sent: u64,
        length: Duration,
    ) -> u64 {
        let (shard, hash) = self.slot(policy, key);
        let mut shard = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.entry(hash).or_insert_with(|| Entry {
            counters: self.policy_counters(policy.name()),
            ..Entry::default()
        });
        if let Some(pending) = entry.pending.take() {
            pending.notify_waiters();
        }
        if granted == 0 {
            return 0;
        }
        let count = Both(&self.counters, &entry.counters);
        let cost = u64::from(cost);
        count.leased(granted);
        count.spent(cost);
        // Whatever was left of an earlier lease has ended by now (this one replaces it).
        if entry.tokens > 0 {
            count.expired(entry.tokens);
        }
        entry.tokens = granted.saturating_sub(cost);
        entry.ends = sent.saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX));
        entry.tokens
    }

    /// Drops this node's lease on `(policy, key)` (a reset).
    pub(crate) fn forget(&self, policy: &Policy, key: &str) {
        let (shard, hash) = self.slot(policy, key);
        let mut shard = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.get_mut(&hash) {
            if entry.tokens > 0 {
                Both(&self.counters, &entry.counters).expired(entry.tokens);
            }
            entry.tokens = 0;
            entry.ends = 0;
        }
    }

    /// Counts as expired every lease that has ended by `now` (for the statistics; spends
    /// check the end themselves).
    pub(crate) fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in shard.values_mut() {
                if entry.tokens > 0 && now >= entry.ends {
                    Both(&self.counters, &entry.counters).expired(entry.tokens);
                    entry.tokens = 0;
                }
            }
        }
    }
}
