//! The memory store's concurrency permits: per key, the permits in flight and the end of
//! each lease, in shards of their own (apart from the rate-limit table, whose entries may be
//! evicted: a key with permits in flight never is).
//!
//! At its cap on keys, a shard first drops ended leases; an acquire for a new key that still
//! finds no room is denied and counted, never served by dropping a held permit.

use std::collections::HashMap;
use std::time::Duration;

use crate::store::PermitAnswer;
use crate::sync::{AtomicU64, Mutex, Ordering, lock};
use crate::{DecisionSource, Error, PermitId};

const SHARDS: usize = 16;

/// One permit in flight: its id and when its lease ends (nanoseconds on the store's clock).
#[derive(Clone, Copy)]
struct Holder {
    id: u128,
    ends: u64,
}

/// One shard: the permits in flight per key hash.
type Shard = Mutex<Keys>;

/// Empty holder lists a shard keeps for reuse, so a key whose permits come and go does not
/// allocate each time its first permit is taken.
const SPARE: usize = 32;

#[derive(Default)]
struct Keys {
    keys: HashMap<u64, Vec<Holder>>,
    spare: Vec<Vec<Holder>>,
}

impl Keys {
    /// Drops `hash`'s entry if it holds no permit, keeping its allocation for reuse.
    fn drop_if_empty(&mut self, hash: u64) {
        if self.keys.get(&hash).is_some_and(Vec::is_empty) {
            if let Some(list) = self.keys.remove(&hash) {
                if self.spare.len() < SPARE {
                    self.spare.push(list);
                }
            }
        }
    }
}

pub(super) struct Permits {
    shards: Box<[Shard]>,
    /// Keys a shard may hold at once.
    keys_per_shard: usize,
    refused: AtomicU64,
    reclaimed: AtomicU64,
}

impl Permits {
    pub(super) fn new(max_keys: usize) -> Self {
        Permits {
            shards: (0..SHARDS).map(|_| Mutex::new(Keys::default())).collect(),
            keys_per_shard: max_keys.div_ceil(SHARDS).max(1),
            refused: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// Grants `id` for the key hashed to `hash` at `now` if fewer than `max` are in flight.
    pub(super) fn acquire(
        &self,
        hash: u64,
        id: PermitId,
        max: u32,
        lease_ns: u64,
        now: u64,
    ) -> PermitAnswer {
        let id = id.as_u128();
        let ends = now.saturating_add(lease_ns);
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        if !shard.keys.contains_key(&hash) && shard.keys.len() >= self.keys_per_shard {
            let reclaimed = sweep(&mut shard.keys, now);
            self.count_reclaimed(reclaimed);
            if shard.keys.len() >= self.keys_per_shard {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let earliest = shard
                    .keys
                    .values()
                    .flat_map(|holders| holders.iter().map(|h| h.ends))
                    .min()
                    .unwrap_or(ends);
                return PermitAnswer::full(0, wait(earliest, now));
            }
        }
        let spare = &mut shard.spare;
        let holders = shard
            .keys
            .entry(hash)
            .or_insert_with(|| spare.pop().unwrap_or_default());
        let reclaimed = drop_ended(holders, now);
        let answer = if let Some(held) = holders.iter_mut().find(|h| h.id == id) {
            // A retried acquire: the same permit, its lease renewed.
            held.ends = ends;
            PermitAnswer::granted(count(holders.len()))
        } else if holders.len() < max as usize {
            holders.push(Holder { id, ends });
            PermitAnswer::granted(count(holders.len()))
        } else {
            let earliest = holders.iter().map(|h| h.ends).min().unwrap_or(ends);
            PermitAnswer::full(count(holders.len()), wait(earliest, now))
        };
        shard.drop_if_empty(hash);
        drop(guard);
        self.count_reclaimed(reclaimed);
        answer.with_source(DecisionSource::Store)
    }

    /// Releases `id` if it is in flight.
    pub(super) fn release(&self, hash: u64, id: PermitId, now: u64) {
        let mut shard = lock(self.shard(hash));
        let Some(holders) = shard.keys.get_mut(&hash) else {
            return;
        };
        let reclaimed = drop_ended(holders, now);
        if let Some(at) = holders.iter().position(|h| h.id == id.as_u128()) {
            holders.swap_remove(at);
        }
        shard.drop_if_empty(hash);
        drop(shard);
        self.count_reclaimed(reclaimed);
    }

    /// Extends `id`'s lease to `now + lease_ns`, or [`Error::PermitExpired`].
    pub(super) fn renew(
        &self,
        hash: u64,
        id: PermitId,
        lease_ns: u64,
        now: u64,
    ) -> Result<(), Error> {
        let mut shard = lock(self.shard(hash));
        let mut found = false;
        let mut reclaimed = 0;
        if let Some(holders) = shard.keys.get_mut(&hash) {
            reclaimed = drop_ended(holders, now);
            if let Some(held) = holders.iter_mut().find(|h| h.id == id.as_u128()) {
                held.ends = now.saturating_add(lease_ns);
                found = true;
            }
            shard.drop_if_empty(hash);
        }
        drop(shard);
        self.count_reclaimed(reclaimed);
        if found {
            Ok(())
        } else {
            Err(Error::PermitExpired { permit: id })
        }
    }

    /// Permits in flight for the key hashed to `hash` at `now`.
    pub(super) fn in_flight(&self, hash: u64, now: u64) -> u32 {
        let shard = lock(self.shard(hash));
        shard.keys.get(&hash).map_or(0, |holders| {
            count(holders.iter().filter(|h| h.ends > now).count())
        })
    }

    /// Keys with permits in flight (or ended but not yet dropped).
    pub(super) fn keys(&self) -> usize {
        self.shards.iter().map(|s| lock(s).keys.len()).sum()
    }

    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub(super) fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    fn count_reclaimed(&self, reclaimed: usize) {
        if reclaimed > 0 {
            self.reclaimed
                .fetch_add(reclaimed as u64, Ordering::Relaxed);
        }
    }
}

/// Drops `holders` whose lease ended at or before `now`; how many.
fn drop_ended(holders: &mut Vec<Holder>, now: u64) -> usize {
    let before = holders.len();
    holders.retain(|h| h.ends > now);
    before - holders.len()
}

/// Drops every ended lease in a shard, and the keys left with none; how many leases.
fn sweep(shard: &mut HashMap<u64, Vec<Holder>>, now: u64) -> usize {
    let mut reclaimed = 0;
    shard.retain(|_, holders| {
        reclaimed += drop_ended(holders, now);
        !holders.is_empty()
    });
    reclaimed
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn wait(ends: u64, now: u64) -> Duration {
    Duration::from_nanos(ends.saturating_sub(now).max(1))
}
