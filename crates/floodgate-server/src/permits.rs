//! The `[concurrency]` limits' counters and the permits this server handed out, for
//! `/metrics`: permits by outcome, permits in flight per limit, and leases the store
//! reclaimed.
//!
//! The server holds no permit itself: it answers an acquire with the permit's id, and the
//! client releases or renews it by id. So "in flight" is what this server granted and has
//! not seen released, nor seen its lease end (on this node's clock, from when the acquire
//! or renew was sent). Summed over every server node that is the limit's count in flight,
//! except permits released or renewed through another node than the one that granted them.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use floodgate::PermitId;

/// Permits a book keeps per limit; past this, the gauge is a lower bound (and says so in
/// its help text). 100 000 ids are about 3 MB.
pub const MAX_TRACKED: usize = 100_000;

/// What happened to permit requests, in the order of [`OUTCOMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An acquire granted a permit.
    Acquired = 0,
    /// An acquire found the limit full.
    Denied = 1,
    /// A release (idempotent: counted whether or not the permit was in flight).
    Released = 2,
    /// A renew extended a lease.
    Renewed = 3,
    /// A renew came too late: the lease had ended.
    Expired = 4,
    /// The store failed to answer.
    StoreError = 5,
}

/// The `outcome` label values.
pub const OUTCOMES: [&str; 6] = [
    "acquired",
    "denied",
    "released",
    "renewed",
    "expired",
    "store_error",
];

/// One `[concurrency]` limit's counters and the permits this server granted.
#[derive(Debug, Default)]
pub struct ConcurrencyCounters {
    outcomes: [AtomicU64; 6],
    /// (permit id, hash of its key) → end of its lease (nanoseconds on the server's clock):
    /// a release naming another key leaves the entry alone, as the store does.
    book: Mutex<HashMap<(u128, u64), u64>>,
    /// Grants not booked because the book was full.
    untracked: AtomicU64,
}

impl ConcurrencyCounters {
    /// Counts an outcome.
    pub fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A permit was granted (or renewed), its lease ending at `ends` (nanoseconds, the
    /// server's clock); `now` prunes ended leases when the book is full.
    pub fn hold(&self, id: PermitId, key: &str, ends: u64, now: u64) {
        let entry = (id.as_u128(), floodgate::store::stable_hash(key.bytes()));
        let mut book = lock(&self.book);
        if book.len() >= MAX_TRACKED && !book.contains_key(&entry) {
            book.retain(|_, &mut end| end > now);
            if book.len() >= MAX_TRACKED {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        book.insert(entry, ends);
    }

    /// A permit was released, or found expired.
    pub fn forget(&self, id: PermitId, key: &str) {
        let entry = (id.as_u128(), floodgate::store::stable_hash(key.bytes()));
        lock(&self.book).remove(&entry);
    }

    /// Permits granted here whose lease has not ended at `now` and that were not released.
    pub fn in_flight(&self, now: u64) -> usize {
        let mut book = lock(&self.book);
        book.retain(|_, &mut end| end > now);
        book.len()
    }

    /// Every outcome's count so far, by its label.
    pub fn totals(&self) -> [(&'static str, u64); 6] {
        std::array::from_fn(|i| (OUTCOMES[i], self.load(i)))
    }

    fn load(&self, outcome: usize) -> u64 {
        self.outcomes[outcome].load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The concurrency families for `limits` (name, counters), sorted by name; `reclaimed` is
/// the store's count of leases it reclaimed. Nothing when no limit is configured.
pub fn render(
    out: &mut String,
    limits: &[(String, std::sync::Arc<ConcurrencyCounters>)],
    reclaimed: u64,
    now: u64,
) {
    if limits.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP floodgate_permits_total Concurrency permit requests by limit and outcome \
         (acquired, denied: the limit was full, released, renewed, expired: a renew after the \
         lease ended, store_error).\n# TYPE floodgate_permits_total counter"
    );
    for (name, c) in limits {
        for (i, outcome) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                out,
                "floodgate_permits_total{{limit=\"{name}\",outcome=\"{outcome}\"}} {}",
                c.load(i)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP floodgate_permits_in_flight Permits this server granted that were neither \
         released through it nor past their lease (a lower bound when more than {MAX_TRACKED} \
         are tracked).\n# TYPE floodgate_permits_in_flight gauge"
    );
    for (name, c) in limits {
        let _ = writeln!(
            out,
            "floodgate_permits_in_flight{{limit=\"{name}\"}} {}",
            c.in_flight(now)
        );
    }
    let _ = writeln!(
        out,
        "# HELP floodgate_permits_reclaimed_total Permits the store reclaimed because their \
         lease ended unreleased (a holder died or forgot), as this server's calls found them.\n\
         # TYPE floodgate_permits_reclaimed_total counter\nfloodgate_permits_reclaimed_total \
         {reclaimed}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_counts_what_is_held_and_forgets_ended_leases() {
        let c = ConcurrencyCounters::default();
        let (a, b) = (PermitId::from_u128(1), PermitId::from_u128(2));
        c.hold(a, "k", 100, 0);
        c.hold(b, "k", 200, 0);
        assert_eq!(c.in_flight(50), 2);
        c.forget(a, "other");
        assert_eq!(
            c.in_flight(50),
            2,
            "a release naming another key frees nothing"
        );
        c.forget(a, "k");
        assert_eq!(c.in_flight(50), 1);
        assert_eq!(c.in_flight(200), 0, "a lease ending at 200 is over at 200");
    }
}
