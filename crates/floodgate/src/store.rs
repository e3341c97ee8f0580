//! The seam between the [`RateLimiter`](crate::RateLimiter) facade and where bucket state
//! lives: the [`Store`] trait, and everything a store's author needs and nobody else does.
//!
//! A store keeps one "theoretical arrival time" (TAT) per limit and decides with
//! [`evaluate`], pure integer arithmetic in the store's time unit (nanoseconds for the
//! memory store, microseconds for Redis). With emission interval `T` and capacity `B`, the
//! tolerance is `τ = B·T` and:
//!
//! ```text
//! tat'      = max(tat, now) + c·T
//! allowed   = tat' − now ≤ τ            (else denied, state unchanged)
//! after     = tat' if allowed, else max(tat, now)
//! remaining = ⌊(τ − (after − now)) / T⌋,  reset_after = after − now
//! retry     = tat' − now − τ            (denied)
//! ```
//!
//! A stored `tat ≤ now` is a full bucket, the same as no state at all, so such state may be
//! dropped at any time. A store that computes elsewhere (a Lua script) reads its answer back
//! into a [`Verdict`] with [`Verdict::of`], and either way turns it into a [`Decision`] with
//! [`decision`]. Policies precompute their limits' rates: [`rates_ns`] and [`rates_us`].

use std::future::Future;
use std::sync::Arc;

pub use crate::concurrency::{PermitAnswer, Releases};
pub use crate::gcra::{Op, Rate, Verdict, evaluate, fewest_tokens};
use crate::{Clock, Concurrency, Decision, Error, Limit, PermitId, Policy};

pub(crate) mod memory;

/// Where bucket state lives, and the atomic check-and-consume on it.
///
/// A store implements three methods: [`apply`](Store::apply) (every decision),
/// [`reset`](Store::reset) and [`clock`](Store::clock); `acquire`, `peek` and `charge` are
/// `apply` with the matching [`Op`].
///
/// `apply` acts on every limit of `policy` for `key` at once and atomically: no other
/// caller observes or changes the state between the check and the update, and a denial by
/// one limit charges none.
///
/// **Costs arrive validated.** The [`RateLimiter`](crate::RateLimiter) facade is the one
/// place that checks them: `1 ≤ cost` for [`Op::Acquire`] and [`Op::Charge`], and for
/// `Acquire` also `cost ≤` every limit's burst. A store may `debug_assert!` this and need not
/// check it again; it must still never panic on other input in release builds.
///
/// Methods return `impl Future + Send` so generic callers can rely on `Send` futures;
/// dispatch is static.
pub trait Store: Send + Sync + 'static {
    /// The clock `until_ready` sleeps on. A store that decides on a remote clock still
    /// sleeps locally: the waits it reports are relative.
    type Clock: Clock;

    /// The clock this store's waits are measured against.
    fn clock(&self) -> &Self::Clock;

    /// Applies `op` to every limit of `policy` for `key`, atomically, and reports the
    /// decision (see [`Op`] for what each operation reports).
    fn apply(
        &self,
        policy: &Policy,
        key: &str,
        op: Op,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;

    /// Forgets the state of every limit of `policy` for `key` (its buckets become full).
    fn reset(&self, policy: &Policy, key: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Checks `cost` tokens against every limit and consumes them from all if all have
    /// room. A denied decision reports the unchanged state.
    fn acquire(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, Error>> + Send {
        // An async block, not `apply`'s future itself: the operation is then a constant
        // where `apply` is inlined, and the compiler specializes the decision for it (a
        // quarter faster on the memory store's hot key than passing it through).
        async move { self.apply(policy, key, Op::Acquire(cost)).await }
    }

    /// Reports the current state without consuming; `is_allowed` tells whether a cost-1
    /// acquire would pass.
    fn peek(
        &self,
        policy: &Policy,
        key: &str,
    ) -> impl Future<Output = Result<Decision, Error>> + Send {
        async move { self.apply(policy, key, Op::Peek).await }
    }

    /// Consumes `cost` tokens from every limit without checking, capping the debt at one
    /// burst below empty, and reports the state after.
    fn charge(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, Error>> + Send {
        async move { self.apply(policy, key, Op::Charge(cost)).await }
    }
}

/// A store that also keeps concurrency limits' permits: implemented by the memory store,
/// the Redis store and the server's store; a [`Store`] that does not implement it keeps
/// compiling and offers rate limits only.
///
/// Per `(limit, key)` the store keeps the permits in flight, each with the end of its lease
/// on the store's clock (`now + lease` when the acquire or renew is applied). Every
/// operation first drops the leases that have ended. All three are atomic per key and
/// idempotent per permit id: an acquire with an id already in flight renews it and answers
/// granted (so a caller whose reply was lost may send it again); a release of an id not in
/// flight does nothing.
///
/// Limits arrive validated ([`Concurrency`] cannot hold a `max` of zero or a lease out of
/// range).
pub trait ConcurrencyStore: Store + Clone {
    /// Grants `permit` for `key` if fewer than `limit.max()` are in flight (after dropping
    /// ended leases), leasing it for `limit.lease_time()`.
    fn permit_acquire(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> impl Future<Output = Result<PermitAnswer, Error>> + Send;

    /// Releases `permit`; nothing happens if it is not in flight for `key` (released
    /// before, expired, or never granted).
    fn permit_release(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Extends `permit`'s lease to `limit.lease_time()` from now, or answers
    /// [`Error::PermitExpired`] when it is not in flight (its lease ended, or it was
    /// released).
    fn permit_renew(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases a dropped [`Permit`](crate::Permit), then wakes this node's waiters with
    /// [`Releases::notify`]. By default the release is spawned on the current tokio runtime
    /// (feature `tokio`); with no runtime, nothing is sent and the store reclaims the permit
    /// when its lease ends. A store that can release synchronously should do so here.
    fn release_on_drop(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
        releases: &Arc<Releases>,
    ) {
        #[cfg(feature = "tokio")]
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, limit, key) = (self.clone(), limit.clone(), key.to_owned());
            let releases = Arc::clone(releases);
            runtime.spawn(async move {
                let _ = store.permit_release(&limit, &key, permit).await;
                releases.notify();
            });
        }
        #[cfg(not(feature = "tokio"))]
        let _ = (limit, key, permit, releases);
    }
}

/// The decision a [`Verdict`] computed in units of `unit_ns` nanoseconds stands for.
#[inline]
pub fn decision(verdict: &Verdict, unit_ns: u64) -> Decision {
    Decision::from_verdict(verdict, unit_ns)
}

/// A stable, unkeyed 64-bit hash of `policy`'s name (computed once), for a store to mix into
/// its own keyed hash.
#[inline]
pub fn name_hash(policy: &Policy) -> u64 {
    policy.name_hash()
}

/// Each limit of `policy` in nanoseconds, computed once when the policy was built.
#[inline]
pub fn rates_ns(policy: &Policy) -> &[Rate] {
    policy.rates_ns()
}

/// Each limit of `policy` in microseconds ([`rate_in_unit`] with 1 000 ns), computed once;
/// `None` when some limit cannot be represented in whole microseconds within 1%.
#[inline]
pub fn rates_us(policy: &Policy) -> Option<&[Rate]> {
    policy.rates_us()
}

/// `limit`'s emission interval and capacity in a unit of `unit_ns` nanoseconds, or `None`
/// when rounding to that unit would lose more than 1% of the rate: a store with a coarser
/// clock than nanoseconds refuses such limits.
pub fn rate_in_unit(limit: &Limit, unit_ns: u64) -> Option<Rate> {
    limit.rate_in_unit(unit_ns)
}

/// FNV-1a over `bytes`: stable across processes, platforms and versions (unlike `std`'s
/// hashers), for names that key stored state ([`name_hash`], generated policy
/// names). Not a defence against anything; stores key it with their own secret hash.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Op {
    /// Whether the facade lets this operation through for `policy` (see [`Store`]): what a
    /// store's `debug_assert!` checks.
    pub fn is_validated_for(self, policy: &Policy) -> bool {
        match self {
            Op::Acquire(cost) => policy.check_cost(cost).is_ok(),
            Op::Peek => true,
            Op::Charge(cost) => cost >= 1,
        }
    }
}
