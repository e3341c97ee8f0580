//! The memory store's table: open addressing over 16-byte slots `(fingerprint, TAT)` with
//! linear probing and backward-shift deletion, sweeping of full buckets, and eviction of the
//! entries nearest to full when a shard reaches its share of `max_keys`. It never sees a
//! policy or a clock: callers pass fingerprints and the time in nanoseconds.
//!
//! A table has any number of slots (not only powers of two): a fingerprint's home slot is
//! its low 32 bits scaled to the table (multiply and shift, as cheap as a mask), so the
//! table can grow by 4/3 instead of 2× and run between 9/16 and 3/4 full — 21 to 28 bytes
//! per key, where a doubling table swings between 18 and 37. (The shard is chosen by the
//! fingerprint's top bits, the home slot by its low ones: independent.)

pub(super) const MIN_SLOTS: usize = 8;
/// How long a bucket stays stored after it became full, when the store sweeps on its own:
/// a key seen again within this time finds its slot instead of being inserted anew.
pub(super) const SWEEP_GRACE_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Default)]
pub(super) struct Slot {
    /// Keyed hash of (policy, key, limit index); 0 marks an empty slot.
    pub(super) fingerprint: u64,
    pub(super) tat: u64,
}

pub(super) struct Table {
    pub(super) slots: Box<[Slot]>,
    pub(super) len: usize,
    /// Most entries this shard may hold (its share of `max_keys`).
    pub(super) cap: usize,
    /// Most slots the table grows to: enough to hold `cap` entries at 3/4 load.
    pub(super) max_slots: usize,
    /// The latest time at which entries were dropped. An absent key is read as a bucket
    /// that was full at this time: the same as "full" while the clock moves forward, and
    /// never more generous than the dropped state if the clock later steps back.
    pub(super) swept_at: u64,
    /// Inserts since the last sweep: sweeping again sooner than an eighth of a table's
    /// worth of inserts means the table is too small for the keys in use.
    pub(super) inserts_since_sweep: usize,
}

impl Table {
    pub(super) fn new(cap: usize) -> Self {
        let max_slots = slots_for(cap).max(MIN_SLOTS);
        Table {
            slots: vec![Slot::default(); MIN_SLOTS].into_boxed_slice(),
            len: 0,
            cap,
            max_slots,
            swept_at: 0,
            inserts_since_sweep: 0,
        }
    }

    /// `fingerprint`'s home slot: its low 32 bits scaled to the table's size.
    #[inline]
    pub(super) fn home(&self, fingerprint: u64) -> usize {
        ((u64::from(fingerprint as u32) * self.slots.len() as u64) >> 32) as usize
    }

    /// The slot after `i`, wrapping at the end.
    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    /// The slot holding `fingerprint`, if any. Terminates: the table is never full.
    #[inline]
    pub(super) fn find(&self, fingerprint: u64) -> Option<usize> {
        let mut i = self.home(fingerprint);
        loop {
            let slot = &self.slots[i];
            if slot.fingerprint == fingerprint {
                return Some(i);
            }
            if slot.fingerprint == 0 {
                return None;
            }
            i = self.next(i);
        }
    }

    /// The TAT of `fingerprint`, reading an absent one as full since the last sweep.
    #[inline]
    pub(super) fn tat_of(&self, fingerprint: u64) -> u64 {
        self.find(fingerprint)
            .map_or(self.swept_at, |slot| self.slots[slot].tat)
    }

    /// Stores the TATs of all limits of one key. If some are new, the key's entries are
    /// taken out first and room is made for all of them at once, so making room (sweeping,
    /// evicting) can never drop an entry this very write is storing.
    #[inline]
    pub(super) fn store_all(&mut self, fingerprints: &[u64], tats: &[u64], now: u64) {
        if fingerprints.iter().all(|&fp| self.find(fp).is_some()) {
            for (&fp, &tat) in fingerprints.iter().zip(tats) {
                if let Some(slot) = self.find(fp) {
                    self.slots[slot].tat = tat;
                }
            }
            return;
        }
        for &fp in fingerprints {
            self.remove(fp);
        }
        self.reserve(now, fingerprints.len());
        for (&fp, &tat) in fingerprints.iter().zip(tats) {
            self.insert_reserved(fp, tat);
        }
    }

    /// Inserts an absent `fingerprint`, making room first.
    #[inline]
    pub(super) fn insert(&mut self, fingerprint: u64, tat: u64, now: u64) {
        self.reserve(now, 1);
        self.insert_reserved(fingerprint, tat);
    }

    /// Inserts an absent `fingerprint` into room made by an earlier [`reserve`](Self::reserve)
    /// (which must have counted it).
    #[inline]
    pub(super) fn insert_reserved(&mut self, fingerprint: u64, tat: u64) {
        let slot = self.empty_slot_for(fingerprint);
        self.slots[slot] = Slot { fingerprint, tat };
        self.len += 1;
        self.inserts_since_sweep += 1;
    }

    /// The first empty slot on `fingerprint`'s probe path.
    #[inline]
    pub(super) fn empty_slot_for(&self, fingerprint: u64) -> usize {
        let mut i = self.home(fingerprint);
        while self.slots[i].fingerprint != 0 {
            i = self.next(i);
        }
        i
    }

    /// Makes room for `extra` more entries: within the shard's cap and at most 3/4 load.
    /// First drops full buckets (in place, no allocation); at the cap evicts the entries
    /// nearest to full down to 7/8 of it; grows the table (to 9/16 full) only if it would
    /// otherwise stay more than 9/16 full, so the next sweep is a 4/3 growth away
    /// (amortised O(1) per insert).
    pub(super) fn reserve(&mut self, now: u64, extra: usize) {
        if self.len + extra <= self.cap && (self.len + extra) * 4 <= self.slots.len() * 3 {
            return;
        }
        let at_cap = self.len + extra > self.cap || self.slots.len() >= self.max_slots;
        if !at_cap && self.inserts_since_sweep < self.slots.len() / 8 {
            // Sweeps are coming too often: the working set outgrew the table (keys that
            // were swept as full keep coming back). Grow instead of sweeping again. (A
            // table grown to 9/16 takes 3/16 of its size in inserts to reach 3/4.)
            self.resize(grown(self.len + extra).min(self.max_slots));
        } else {
            self.sweep(now.saturating_sub(SWEEP_GRACE_NS));
            if self.len + extra > self.cap {
                self.evict(extra);
            }
        }
        let needed = self.len + extra;
        if needed * 16 > self.slots.len() * 9 && self.slots.len() < self.max_slots {
            self.resize(grown(needed).min(self.max_slots));
        }
        if needed * 4 > self.slots.len() * 3 {
            // Only when one write needs more entries than the whole cap (tiny caps).
            self.resize(slots_for(needed));
        }
    }

    /// Drops every bucket that was full at `now` (TAT at or before it).
    pub(super) fn sweep(&mut self, now: u64) {
        self.swept_at = self.swept_at.max(now);
        self.inserts_since_sweep = 0;
        let full = self
            .slots
            .iter()
            .filter(|s| s.fingerprint != 0 && s.tat <= now)
            .count();
        if full * 4 > self.len {
            // Mostly full buckets: copying the rest into a fresh table is cheaper than
            // shifting entries for each removal.
            let size = self.slots.len();
            let old = std::mem::replace(
                &mut self.slots,
                vec![Slot::default(); size].into_boxed_slice(),
            );
            self.len = 0;
            for entry in old.iter().filter(|s| s.fingerprint != 0 && s.tat > now) {
                let slot = self.empty_slot_for(entry.fingerprint);
                self.slots[slot] = *entry;
                self.len += 1;
            }
        } else if full > 0 {
            self.retain(|slot| slot.tat > now);
        }
    }

    /// Drops full buckets and returns memory: shrinks a table that is mostly empty.
    pub(super) fn sweep_and_shrink(&mut self, now: u64) {
        self.sweep(now);
        if self.len * 8 < self.slots.len() && self.slots.len() > MIN_SLOTS {
            self.resize(grown(self.len).max(MIN_SLOTS));
        }
    }

    /// Evicts the entries nearest to full (smallest TAT) so that `extra` more fit, down to
    /// 7/8 of the cap: a key deep in debt goes only after every less indebted one in its
    /// shard.
    pub(super) fn evict(&mut self, extra: usize) {
        let keep = self.cap.saturating_sub(extra.max((self.cap / 8).max(1)));
        let evict = self.len.saturating_sub(keep);
        if evict == 0 {
            return;
        }
        let mut tats: Vec<u64> = self
            .slots
            .iter()
            .filter(|s| s.fingerprint != 0)
            .map(|s| s.tat)
            .collect();
        let (_, &mut threshold, _) = tats.select_nth_unstable(evict - 1);
        // Everything below the threshold goes, then entries at it until enough are gone.
        let below = tats.iter().filter(|&&tat| tat < threshold).count();
        let mut at_threshold = evict - below;
        self.retain(|slot| {
            if slot.tat < threshold {
                false
            } else if slot.tat == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Keeps the entries for which `keep` is true, with backward-shift deletion. After a
    /// deletion at `i` the slot is examined again (an entry shifted into it); entries only
    /// ever move into the hole, so every entry is examined at least once.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Slot) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            let slot = self.slots[i];
            if slot.fingerprint != 0 && !keep(&slot) {
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Moves every entry into a fresh table of `slots` slots.
    pub(super) fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(
            &mut self.slots,
            vec![Slot::default(); slots].into_boxed_slice(),
        );
        for entry in old.iter().filter(|s| s.fingerprint != 0) {
            let slot = self.empty_slot_for(entry.fingerprint);
            self.slots[slot] = *entry;
        }
    }

    /// Removes `fingerprint`, if present.
    pub(super) fn remove(&mut self, fingerprint: u64) {
        if let Some(slot) = self.find(fingerprint) {
            self.remove_at(slot);
        }
    }

    /// Empties `slot` with backward-shift deletion (no tombstones).
    pub(super) fn remove_at(&mut self, slot: usize) {
        let size = self.slots.len();
        // Forward distance from `from` to `to` along the probe order.
        let distance = |from: usize, to: usize| {
            if to >= from {
                to - from
            } else {
                to + size - from
            }
        };
        let mut hole = slot;
        let mut next = hole;
        loop {
            next = self.next(next);
            let candidate = self.slots[next].fingerprint;
            if candidate == 0 {
                break;
            }
            let home = self.home(candidate);
            // Move the entry back if the hole lies on its probe path (between home and it).
            if distance(home, next) >= distance(hole, next) {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }
}

/// Slots that hold `entries` at most 3/4 full (a multiple of 8).
fn slots_for(entries: usize) -> usize {
    (entries + entries / 3 + 2).next_multiple_of(8)
}

/// Slots for a table growing past `entries`: 9/16 full (a multiple of 8).
fn grown(entries: usize) -> usize {
    (entries * 16 / 9 + 1).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_shift_deletion_keeps_every_other_entry_findable() {
        let mut table = Table::new(1_000);
        // Fingerprints crowded onto a few home slots (the home is the low 32 bits scaled to
        // the table: these are at its very end and very start), so probe chains wrap and
        // overlap.
        let fingerprints: Vec<u64> = (1..=60u64)
            .map(|i| (i << 32) | crowded(i, 3) | 0x1_0000_0000_0000)
            .collect();
        for (i, &fp) in fingerprints.iter().enumerate() {
            table.insert(fp, 1_000 + i as u64, 0);
        }
        for (removed, &fp) in fingerprints.iter().enumerate().step_by(2) {
            table.remove(fp);
            for (i, &other) in fingerprints.iter().enumerate() {
                let expected = (i > removed || i % 2 == 1).then_some(1_000 + i as u64);
                assert_eq!(
                    table.find(other).map(|s| table.slots[s].tat),
                    expected,
                    "fp #{i} after removing #{removed}"
                );
            }
        }
        assert_eq!(table.len, 30);
    }

    /// Low 32 bits that put the fingerprint's home at the table's last slot (even `i`) or
    /// its first (odd `i`), one of `spread` values each.
    fn crowded(i: u64, spread: u64) -> u64 {
        if i % 2 == 0 {
            0xFFFF_FFFF - i % spread
        } else {
            i % spread
        }
    }

    #[test]
    fn homes_cover_a_table_of_any_size() {
        for size in [8usize, 24, 1_000, 18_312] {
            let mut table = Table::new(size * 2);
            table.resize(size);
            assert_eq!(table.home(0xFFFF_FFFF), size - 1);
            assert_eq!(
                table.home(0x1_0000_0000),
                0,
                "the high bits pick the shard, not this"
            );
            let mut seen = vec![false; size];
            for i in 0..(size as u64 * 64) {
                let fp = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                seen[table.home(fp)] = true;
            }
            assert!(seen.iter().all(|&s| s), "a slot of {size} is nobody's home");
        }
    }

    #[test]
    fn a_growing_table_stays_between_nine_sixteenths_and_three_quarters_full() {
        let mut table = Table::new(1_000_000);
        let mut lowest = 1.0f64;
        for i in 1..=200_000u64 {
            table.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), u64::MAX, 0);
            let load = table.len as f64 / table.slots.len() as f64;
            assert!(load <= 0.75, "load {load} at {i}");
            if i > 1_000 {
                lowest = lowest.min(load);
            }
        }
        assert!(lowest >= 0.55, "a growth left the table {lowest} full");
    }

    #[test]
    fn a_sweep_drops_exactly_the_full_buckets() {
        let mut table = Table::new(1_000);
        for i in 1..=200u64 {
            table.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i, 0);
        }
        table.sweep(100);
        assert_eq!(table.len, 100);
        for i in 1..=200u64 {
            assert_eq!(
                table.find(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).is_some(),
                i > 100,
                "tat {i}"
            );
        }
        assert_eq!(table.swept_at, 100);
        // Few full buckets: removed in place by shifting.
        table.sweep(110);
        assert_eq!(table.len, 90);
        for i in 101..=200u64 {
            assert_eq!(
                table.find(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).is_some(),
                i > 110,
                "tat {i}"
            );
        }
    }

    /// Regression: making room for a multi-limit write once evicted one of that write's
    /// own entries (the least indebted one) and then re-inserted it past the cap.
    #[test]
    fn making_room_for_a_write_never_evicts_its_own_entries() {
        let (a, b, c, d) = (1 << 40, 2 << 40, 3 << 40, 4 << 40);
        let mut table = Table::new(3);
        table.store_all(&[a], &[5_000], 0);
        table.store_all(&[b], &[1], 0);
        table.store_all(&[c, b, d], &[10, 10, 10], 0);
        assert_eq!(table.len, 3);
        for fp in [b, c, d] {
            assert_eq!(table.find(fp).map(|s| table.slots[s].tat), Some(10));
        }
        assert_eq!(table.find(a), None, "the other key makes room");
    }

    #[derive(Clone, Debug)]
    enum TableOp {
        Write(Vec<u64>, u64),
        Remove(u64),
        Sweep(u64),
        Advance(u64),
    }

    fn table_op() -> impl proptest::strategy::Strategy<Value = TableOp> {
        use proptest::prelude::*;
        // Few distinct fingerprints, crowded on a few home slots, so chains collide.
        let fp = (1u64..80).prop_map(|i| (i << 40) | crowded(i, 5));
        prop_oneof![
            6 => (proptest::collection::vec(fp.clone(), 1..=4), 1u64..5_000_000_000)
                .prop_map(|(fps, ahead)| TableOp::Write(fps, ahead)),
            2 => fp.prop_map(TableOp::Remove),
            1 => (0u64..3_000_000_000).prop_map(TableOp::Sweep),
            2 => (0u64..2_000_000_000).prop_map(TableOp::Advance),
        ]
    }

    proptest::proptest! {
        /// Whatever the operations, the table stays consistent: every stored entry is
        /// findable with its TAT, `len` counts them, load stays at most 3/4 and the cap
        /// holds (a single write may overshoot a cap smaller than itself). An entry leaves
        /// only by removal, by a sweep that found it full, or by eviction when a write met
        /// the cap — and then only entries no further from full than every survivor.
        #[test]
        fn the_table_stays_consistent(cap in 1usize..40, ops in proptest::collection::vec(table_op(), 1..300)) {
            let mut table = Table::new(cap);
            let mut now = 0u64;
            let mut model: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
            for op in ops {
                let len_before = table.len;
                let mut written: Vec<u64> = Vec::new();
                let mut pressure = false;
                let mut inserted = false;
                let mut swept_below = 0;
                match op {
                    TableOp::Write(mut fps, ahead) => {
                        fps.sort_unstable();
                        fps.dedup();
                        let missing = fps.iter().filter(|&&fp| table.find(fp).is_none()).count();
                        pressure = table.len + missing > cap;
                        inserted = missing > 0;
                        swept_below = now.saturating_sub(SWEEP_GRACE_NS);
                        table.store_all(&fps, &vec![now + ahead; fps.len()], now);
                        for &fp in &fps {
                            model.insert(fp, now + ahead);
                        }
                        written = fps;
                    }
                    TableOp::Remove(fp) => {
                        table.remove(fp);
                        model.remove(&fp);
                    }
                    TableOp::Sweep(at) => {
                        swept_below = at.min(now);
                        table.sweep(swept_below);
                    }
                    TableOp::Advance(step) => now += step,
                }
                let stored: Vec<Slot> = table.slots.iter().filter(|s| s.fingerprint != 0).copied().collect();
                proptest::prop_assert_eq!(stored.len(), table.len);
                proptest::prop_assert!(table.len * 4 <= table.slots.len() * 3);
                // A write may overshoot a cap smaller than itself; nothing else adds entries.
                let bound = if inserted { cap.max(written.len()) } else { cap.max(len_before) };
                proptest::prop_assert!(table.len <= bound, "len {} above cap {}", table.len, cap);
                for slot in &stored {
                    proptest::prop_assert_eq!(table.find(slot.fingerprint).map(|s| table.slots[s].tat), Some(slot.tat));
                    proptest::prop_assert_eq!(model.get(&slot.fingerprint), Some(&slot.tat));
                }
                for &fp in &written {
                    proptest::prop_assert!(table.find(fp).is_some(), "a write lost its own entry");
                }
                let vanished: Vec<u64> = model.iter().filter(|(fp, _)| table.find(**fp).is_none()).map(|(_, &tat)| tat).collect();
                let nearest_survivor = stored.iter().filter(|s| !written.contains(&s.fingerprint)).map(|s| s.tat).min();
                for &tat in &vanished {
                    let swept = tat <= swept_below;
                    let evicted = pressure && nearest_survivor.is_none_or(|n| tat <= n);
                    proptest::prop_assert!(swept || evicted, "tat {} vanished (now {}, pressure {})", tat, now, pressure);
                }
                model.retain(|fp, _| table.find(*fp).is_some());
            }
        }
    }
}
