//! The local deny cache: remembers, per (policy, key), the whole bucket state Redis last
//! returned, while that state denies; later checks that it still denies are answered here,
//! with the same arithmetic, without a round trip. This is what keeps Redis alive when most
//! traffic comes from clients that are over their limits.
//!
//! The cache only ever *denies*: a request it would admit goes to Redis. Its state is the
//! Redis state shifted onto this node's clock at the moment the reply arrived, which is at
//! least as late as the decision — so a cached bucket refills no earlier than the real one,
//! and a cached `retry_after` is never earlier than the truth (it can be later by the round
//! trip). Staleness: a `reset` made through this store clears its entry at once; a reset
//! made on another node is seen here when the cached denial runs out, at the latest after
//! the `retry_after` this node last reported for the key.

use std::collections::HashMap;
use std::sync::Mutex;

use floodgate::store::{self, Op, Rate};
use floodgate::{Decision, DecisionSource, Policy};

const SHARDS: usize = 16;

pub(crate) struct DenyCache {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    hasher: ahash::RandomState,
    per_shard: usize,
}

struct Entry {
    /// Each limit's TAT on this node's clock, in microseconds.
    tats: Box<[u64]>,
    /// Every limit admits a cost-1 request from this time on: the entry is dead.
    expires: u64,
}

impl DenyCache {
    /// A cache of at most `capacity` keys; `None` for a capacity of zero (disabled).
    pub(crate) fn new(capacity: usize) -> Option<Self> {
        (capacity > 0).then(|| DenyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: ahash::RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn slot(&self, policy: &Policy, key: &str) -> (&Mutex<HashMap<u64, Entry>>, u64) {
        let hash = self
            .hasher
            .hash_one((store::name_hash(policy), policy.name(), key));
        (&self.shards[(hash >> 60) as usize % SHARDS], hash)
    }

    /// A denial of `op` at `now` (µs, local clock), if the cached state denies it. A charge
    /// is never answered here: it consumes even when it does not fit.
    pub(crate) fn deny(
        &self,
        policy: &Policy,
        key: &str,
        rates: &[Rate],
        now: u64,
        op: Op,
    ) -> Option<Decision> {
        if matches!(op, Op::Charge(_)) {
            return None;
        }
        let (shard, hash) = self.slot(policy, key);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get(&hash)?;
        if now >= entry.expires || entry.tats.len() != rates.len() {
            shard.remove(&hash);
            return None;
        }
        let mut tats = entry.tats.to_vec();
        let verdict = store::evaluate(rates, &mut tats, now, op);
        (!verdict.allowed)
            .then(|| store::decision(&verdict, 1_000).with_source(DecisionSource::Cache))
    }

    /// Records the state Redis returned (`ahead[i]`: µs each TAT is ahead of the decision),
    /// received at `now` on the local clock; keeps it only while it denies a cost-1 request.
    pub(crate) fn record(
        &self,
        policy: &Policy,
        key: &str,
        rates: &[Rate],
        now: u64,
        ahead: &[u64],
    ) {
        let (shard, hash) = self.slot(policy, key);
        let tats: Box<[u64]> = ahead.iter().map(|a| now.saturating_add(*a)).collect();
        // When every limit admits one token again: TAT + T − τ.
        let expires = rates
            .iter()
            .zip(tats.iter())
            .map(|(rate, tat)| {
                tat.saturating_add(rate.interval())
                    .saturating_sub(rate.tolerance())
            })
            .max()
            .unwrap_or(0);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if expires <= now {
            shard.remove(&hash);
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, entry| entry.expires > now);
            if shard.len() >= self.per_shard {
                return; // Full of live denials: this one goes to Redis next time.
            }
        }
        shard.insert(hash, Entry { tats, expires });
    }

    /// Forgets `key` (after a reset through this store).
    pub(crate) fn forget(&self, policy: &Policy, key: &str) {
        let (shard, hash) = self.slot(policy, key);
        shard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash);
    }
}
