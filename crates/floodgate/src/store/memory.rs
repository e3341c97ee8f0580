//! `MemoryStore`: bucket state in this process, sharded, bounded, safe against chosen keys.
//!
//! Layout: the key space is split into shards by a keyed hash of `(policy, key)`. Each shard
//! is an open-addressing table of 16-byte slots `(fingerprint, TAT)` behind a spin lock
//! whose critical section is a probe and a few integer operations: one atomic
//! read-modify-write to enter, a plain store to leave. The fingerprint is the 64-bit keyed
//! hash (mixed with the limit's index), so no key is stored and no `String` is built to
//! look one up. All limits of one key live in the same shard, so a multi-limit decision is
//! all-or-nothing under one lock.
//!
//! Memory is bounded without housekeeping by the caller: when a shard would exceed its
//! load factor it first drops full buckets (a TAT at or before now equals an absent key),
//! and only grows if that freed too little; at its share of `max_keys` it evicts the
//! entries nearest to full.

use std::fmt;
use std::sync::Arc;

use crate::clock::MonotonicClock;
use crate::gcra::{self, Op, Rate, Verdict};
use crate::limit::MAX_LIMITS;
use crate::store::Store;
use crate::sync::{ShardLock, lock_shard};

mod permits;
mod table;

use crate::concurrency::Releases;
use crate::store::{ConcurrencyStore, PermitAnswer};
use crate::{Clock, Concurrency, Decision, Error, PermitId, Policy};
use permits::Permits;
use table::Table;

/// Default cap on stored limit states: 2^22 (about 4.2 million, at most ~90 MB of tables).
pub const DEFAULT_MAX_KEYS: usize = 1 << 22;
const MAX_SHARDS: usize = 64;
/// Nanoseconds: the memory store's time unit.
const UNIT_NS: u64 = 1;

/// In-process bucket state. Cheap to clone: clones share the same state.
///
/// ```
/// use floodgate::{MemoryStore, Policy, RateLimiter};
/// # async fn run() -> Result<(), floodgate::Error> {
/// let store = MemoryStore::builder().max_keys(1_000_000).build();
/// let limiter = RateLimiter::new(store.clone());
/// limiter.check(&Policy::parse("api", "10/s")?, "user:1").await?;
/// assert_eq!(store.len(), 1);
/// # Ok(()) }
/// ```
///
/// `len` and `max_keys` count stored *limit states*: one per key for a single-limit policy,
/// up to one per limit for a policy with several. Keys whose buckets are full take no room
/// once swept.
pub struct MemoryStore<C: Clock = MonotonicClock> {
    inner: Arc<Inner<C>>,
}

struct Inner<C> {
    shards: Box<[Shard]>,
    shard_shift: u32,
    hasher: ahash::RandomState,
    clock: C,
    max_keys: usize,
    /// Concurrency limits' permits, apart from the rate-limit table.
    permits: Permits,
}

/// One shard on its own cache lines, so shards' locks do not share a line.
#[repr(align(128))]
struct Shard {
    table: ShardLock<Table>,
}

impl MemoryStore {
    /// A store with the default cap ([`DEFAULT_MAX_KEYS`]) and the default clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for the cap and the clock.
    pub fn builder() -> MemoryStoreBuilder<MonotonicClock> {
        MemoryStoreBuilder {
            clock: MonotonicClock::new(),
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> Clone for MemoryStore<C> {
    fn clone(&self) -> Self {
        MemoryStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Clock> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.len())
            .field("max_keys", &self.inner.max_keys)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// Builds a [`MemoryStore`].
#[derive(Debug)]
#[must_use]
pub struct MemoryStoreBuilder<C> {
    clock: C,
    max_keys: usize,
}

impl<C: Clock> MemoryStoreBuilder<C> {
    /// Most limit states kept at once (default [`DEFAULT_MAX_KEYS`]). At the cap, the
    /// entries nearest to full are evicted first; each shard enforces its share of the cap.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The clock decisions are made with (default: [`MonotonicClock`]).
    pub fn clock<D: Clock>(self, clock: D) -> MemoryStoreBuilder<D> {
        MemoryStoreBuilder {
            clock,
            max_keys: self.max_keys,
        }
    }

    /// Builds the store, refusing a cap of zero.
    pub fn try_build(self) -> Result<MemoryStore<C>, Error> {
        if self.max_keys == 0 {
            return Err(Error::InvalidConfig {
                knob: "max_keys",
                reason: "must be at least 1: a store that can hold no state cannot limit anything"
                    .into(),
            });
        }
        Ok(self.build())
    }

    /// Builds the store. A cap of zero is raised to one (see [`try_build`](Self::try_build)
    /// to have it refused instead).
    pub fn build(self) -> MemoryStore<C> {
        let max_keys = self.max_keys.max(1);
        // At least 64 entries per shard where possible, so evictions choose among many.
        let wanted = (max_keys / 64).clamp(1, MAX_SHARDS);
        let shards = if wanted.is_power_of_two() {
            wanted
        } else {
            wanted.next_power_of_two() / 2
        };
        let base = max_keys / shards;
        let extra = max_keys % shards;
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards)
                    .map(|i| Shard {
                        table: ShardLock::new(Table::new(base + usize::from(i < extra))),
                    })
                    .collect(),
                shard_shift: 64 - shards.trailing_zeros(),
                hasher: keyed_hasher(),
                clock: self.clock,
                max_keys,
                permits: Permits::new(max_keys),
            }),
        }
    }
}

impl<C: Clock> MemoryStore<C> {
    /// Limit states stored now (swept full buckets are not counted).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock_shard(&s.table).len)
            .sum()
    }

    /// Whether no state is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on stored limit states.
    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
    }

    /// Drops every full bucket now. Never needed for correctness or bounded memory (that
    /// happens as the store fills); useful to return memory after a burst of keys.
    pub fn sweep(&self) {
        let now = self.inner.clock.now_nanos();
        for shard in &self.inner.shards {
            lock_shard(&shard.table).sweep_and_shrink(now);
        }
    }

    /// Permits of `limit` in flight for `key` now.
    pub fn in_flight(&self, limit: &Concurrency, key: &str) -> u32 {
        let now = self.inner.clock.now_nanos();
        self.inner
            .permits
            .in_flight(self.permit_hash(limit, key), now)
    }

    /// Keys with concurrency permits in flight. They count toward no cap of the rate-limit
    /// table, and are never evicted; their own cap is `max_keys`.
    pub fn permit_keys(&self) -> usize {
        self.inner.permits.keys()
    }

    /// Acquires denied because the store held `max_keys` keys with permits in flight (a
    /// held permit is never dropped to make room).
    pub fn permits_refused_at_cap(&self) -> u64 {
        self.inner.permits.refused()
    }

    /// Permits reclaimed because their lease ended before they were released.
    pub fn permits_reclaimed(&self) -> u64 {
        self.inner.permits.reclaimed()
    }

    fn permit_hash(&self, limit: &Concurrency, key: &str) -> u64 {
        // A domain of its own: a permit key never shares a hash with a bucket's.
        self.inner
            .hasher
            .hash_one((PERMITS, limit.name_hash(), key))
    }

    fn locate(&self, policy: &Policy, key: &str) -> (&Shard, u64) {
        let hash = self.inner.hasher.hash_one((policy.name_hash(), key));
        let shard = if self.inner.shard_shift == 64 {
            0
        } else {
            (hash >> self.inner.shard_shift) as usize
        };
        (&self.inner.shards[shard], hash)
    }

    /// Runs `op` for `(policy, key)` at the store's current time.
    #[inline]
    fn run(&self, policy: &Policy, key: &str, op: Op) -> Decision {
        let (shard, hash) = self.locate(policy, key);
        let now = self.inner.clock.now_nanos();
        let verdict = match policy.rates_ns() {
            [rate] => run_single(shard, fingerprint(hash, 0), *rate, now, op),
            rates => run_multi(shard, hash, rates, now, op),
        };
        Decision::from_verdict(&verdict, UNIT_NS)
    }

    fn forget(&self, policy: &Policy, key: &str) {
        let (shard, hash) = self.locate(policy, key);
        let mut table = lock_shard(&shard.table);
        for index in 0..policy.limits().len() {
            table.remove(fingerprint(hash, index));
        }
    }
}

/// Mixed into permit keys' hashes.
const PERMITS: u8 = 0xc0;

/// A hasher with fresh random keys, so fingerprints cannot be predicted from outside.
#[cfg(not(loom))]
fn keyed_hasher() -> ahash::RandomState {
    ahash::RandomState::new()
}

/// Under loom every run of a model must do the same operations: fixed keys.
#[cfg(loom)]
fn keyed_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// A single-limit decision under the shard lock.
#[inline]
fn run_single(shard: &Shard, fingerprint: u64, rate: Rate, now: u64, op: Op) -> Verdict {
    let mut table = lock_shard(&shard.table);
    let found = table.find(fingerprint);
    let mut tats = [found.map_or(table.swept_at, |slot| table.slots[slot].tat)];
    let verdict = gcra::evaluate(&[rate], &mut tats, now, op);
    if verdict.write {
        match found {
            Some(slot) => table.slots[slot].tat = tats[0],
            None => table.insert(fingerprint, tats[0], now),
        }
    }
    verdict
}

/// A multi-limit decision: all limits of one key live in the same shard, and its lock
/// makes the check-and-consume across them atomic.
fn run_multi(shard: &Shard, hash: u64, rates: &[Rate], now: u64, op: Op) -> Verdict {
    let count = rates.len().min(MAX_LIMITS);
    let rates = &rates[..count];
    let mut fingerprints = [0u64; MAX_LIMITS];
    for (index, fp) in fingerprints[..count].iter_mut().enumerate() {
        *fp = fingerprint(hash, index);
    }
    let fingerprints = &fingerprints[..count];
    let mut tats = [0u64; MAX_LIMITS];
    let tats = &mut tats[..count];
    let mut table = lock_shard(&shard.table);
    for (tat, &fp) in tats.iter_mut().zip(fingerprints) {
        *tat = table.tat_of(fp);
    }
    let verdict = gcra::evaluate(rates, tats, now, op);
    if verdict.write {
        table.store_all(fingerprints, tats, now);
    }
    verdict
}

/// The fingerprint of limit `index` of the key whose keyed hash is `hash`. Limit 0 uses the
/// hash itself; others a bijective remix of it, so fingerprints of one key never collide
/// with each other and are as unpredictable as the hash.
#[inline]
fn fingerprint(hash: u64, index: usize) -> u64 {
    let fp = if index == 0 {
        hash
    } else {
        // splitmix64's finalizer: a bijection on u64.
        let mut z = hash.wrapping_add((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    if fp == 0 { 0x5bd1_e995 } else { fp }
}

impl<C: Clock> Store for MemoryStore<C> {
    type Clock = C;

    fn clock(&self) -> &C {
        &self.inner.clock
    }

    #[inline]
    async fn apply(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        debug_assert!(op.is_validated_for(policy), "{op:?} reached the store");
        Ok(self.run(policy, key, op))
    }

    async fn reset(&self, policy: &Policy, key: &str) -> Result<(), Error> {
        self.forget(policy, key);
        Ok(())
    }
}

impl<C: Clock> ConcurrencyStore for MemoryStore<C> {
    async fn permit_acquire(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<PermitAnswer, Error> {
        let now = self.inner.clock.now_nanos();
        Ok(self.inner.permits.acquire(
            self.permit_hash(limit, key),
            permit,
            limit.max(),
            lease_ns(limit),
            now,
        ))
    }

    async fn permit_release(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        self.release_now(limit, key, permit);
        Ok(())
    }

    async fn permit_renew(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        let now = self.inner.clock.now_nanos();
        self.inner
            .permits
            .renew(self.permit_hash(limit, key), permit, lease_ns(limit), now)
    }

    /// Released at once, without a runtime.
    fn release_on_drop(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
        releases: &Arc<Releases>,
    ) {
        self.release_now(limit, key, permit);
        releases.notify();
    }
}

impl<C: Clock> MemoryStore<C> {
    fn release_now(&self, limit: &Concurrency, key: &str, permit: PermitId) {
        let now = self.inner.clock.now_nanos();
        self.inner
            .permits
            .release(self.permit_hash(limit, key), permit, now);
    }
}

fn lease_ns(limit: &Concurrency) -> u64 {
    u64::try_from(limit.lease_time().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Limit, ManualClock};

    fn stored_tats(
        store: &MemoryStore<ManualClock>,
        policy: &Policy,
        key: &str,
    ) -> Vec<Option<u64>> {
        let (shard, hash) = store.locate(policy, key);
        let table = lock_shard(&shard.table);
        (0..policy.limits().len())
            .map(|i| {
                table
                    .find(fingerprint(hash, i))
                    .map(|slot| table.slots[slot].tat)
            })
            .collect()
    }

    #[test]
    fn a_denial_by_the_second_of_three_limits_changes_no_state() {
        let clock = ManualClock::new();
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let policy = Policy::new(
            "three",
            [
                Limit::per_hour(100),
                Limit::per_second(2),
                Limit::per_day(1_000),
            ],
        )
        .unwrap();
        for _ in 0..2 {
            assert!(store.run(&policy, "k", Op::Acquire(1)).is_allowed());
        }
        clock.advance(Duration::from_millis(100));
        let before = stored_tats(&store, &policy, "k");
        assert!(before.iter().all(Option::is_some));
        let denied = store.run(&policy, "k", Op::Acquire(1));
        assert!(!denied.is_allowed());
        assert_eq!(denied.decided_by(), 1);
        assert_eq!(stored_tats(&store, &policy, "k"), before);
    }
}
