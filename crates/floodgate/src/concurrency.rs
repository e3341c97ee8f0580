//! Concurrency limits: at most `max` permits in flight per key, each held for at most a lease
//! time, so a holder that dies never leaks capacity for longer than its lease.
//!
//! A [`Concurrency`] names the limit; [`RateLimiter::acquire`](crate::RateLimiter::acquire)
//! hands out a [`Permit`] or reports the limit [`Full`]. The store keeps, per key, the
//! permits in flight and when each lease ends on the store's clock; an acquire first drops
//! the leases that have ended (reclaiming the permits of holders that died), then admits if
//! fewer than `max` remain.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::limit::{MAX_NAME_LEN, validate_name};
use crate::store::ConcurrencyStore;
use crate::sync::{AtomicU64, Mutex, Ordering, lock};
use crate::{Clock, DecisionSource, Error, MemoryStore};

/// The lease a permit gets unless [`Concurrency::lease`] says otherwise: 30 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease: one millisecond (the Redis store counts leases in microseconds, and
/// a shorter lease would end before most acquires are answered).
pub const MIN_LEASE: Duration = Duration::from_millis(1);
/// The longest lease: one day. A longer job renews its permit ([`Permit::renew`]).
pub const MAX_LEASE: Duration = Duration::from_secs(86_400);

/// A concurrency limit: at most `max` permits in flight per key, each leased for a time.
///
/// ```
/// use std::time::Duration;
/// use floodgate::{Concurrency, RateLimiter};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), floodgate::Error> {
/// // At most 2 exports per tenant at once; a holder that dies frees its slot within 60 s.
/// let exports = Concurrency::named("exports", 2)?.lease(Duration::from_secs(60))?;
/// let limiter = RateLimiter::in_memory();
/// let first = limiter.acquire(&exports, "tenant:7").await?.permit().unwrap();
/// let _second = limiter.acquire(&exports, "tenant:7").await?.permit().unwrap();
/// let full = limiter.acquire(&exports, "tenant:7").await?;
/// assert!(!full.is_acquired());
/// first.release().await?; // or drop it
/// assert!(limiter.acquire(&exports, "tenant:7").await?.is_acquired());
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Concurrency {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    name: Box<str>,
    max: u32,
    lease: Duration,
    /// A stable (unkeyed) hash of the name, as for a policy's.
    name_hash: u64,
}

impl Concurrency {
    /// At most `max` in flight per key, keyed by the key string alone (no name). A `max` of
    /// zero is [`Error::InvalidLimit`].
    pub fn new(max: u32) -> Result<Self, Error> {
        Self::build(String::new(), max, DEFAULT_LEASE)
    }

    /// At most `max` in flight per key under `name`, which is part of the store key, the
    /// metric label and the server's entry: the same key under two names is two limits.
    /// Names follow [`Policy`](crate::Policy)'s rules; a `max` of zero is
    /// [`Error::InvalidLimit`].
    pub fn named(name: impl Into<String>, max: u32) -> Result<Self, Error> {
        let name = name.into();
        validate_name(&name).map_err(|reason| Error::InvalidPolicy {
            name: name.clone(),
            reason,
        })?;
        Self::build(name, max, DEFAULT_LEASE)
    }

    /// The same limit with each permit leased for `lease` (default [`DEFAULT_LEASE`]), from
    /// [`MIN_LEASE`] to [`MAX_LEASE`]; another value is [`Error::InvalidLimit`].
    pub fn lease(self, lease: Duration) -> Result<Self, Error> {
        Self::build(self.name().to_owned(), self.max(), lease)
    }

    fn build(name: String, max: u32, lease: Duration) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidLimit {
            limit: describe(&name, max, lease),
            reason,
        };
        if max == 0 {
            return Err(invalid(
                "max is 0: a limit that admits nothing in flight blocks every request".into(),
            ));
        }
        if lease < MIN_LEASE || lease > MAX_LEASE {
            // MIN_LEASE and MAX_LEASE, as an operator reads them.
            return Err(invalid(format!(
                "lease {lease:?} is outside 1ms to 24h (renew a permit to hold it longer)"
            )));
        }
        debug_assert!(name.len() <= MAX_NAME_LEN);
        let name_hash = crate::store::stable_hash(name.bytes());
        Ok(Concurrency {
            inner: Arc::new(Inner {
                name: name.into_boxed_str(),
                max,
                lease,
                name_hash,
            }),
        })
    }

    /// The name; empty for [`Concurrency::new`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The most permits in flight per key.
    pub fn max(&self) -> u32 {
        self.inner.max
    }

    /// How long a permit is held before the store reclaims it, unless renewed.
    pub fn lease_time(&self) -> Duration {
        self.inner.lease
    }

    /// A stable, unkeyed 64-bit hash of the name, for stores to mix into their keyed hashes.
    pub(crate) fn name_hash(&self) -> u64 {
        self.inner.name_hash
    }
}

fn describe(name: &str, max: u32, lease: Duration) -> String {
    let name = if name.is_empty() { "(unnamed)" } else { name };
    format!("{name}: {max} in flight, lease {lease:?}")
}

impl fmt::Debug for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Concurrency")
            .field("name", &self.name())
            .field("max", &self.max())
            .field("lease", &self.lease_time())
            .finish()
    }
}

impl fmt::Display for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(self.name(), self.max(), self.lease_time()))
    }
}

/// A permit's identity: 128 random bits chosen by the caller and sent with the acquire, so
/// an acquire whose reply was lost can be sent again with the same id (it then holds one
/// permit, not two) or released by id. Written as 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermitId(u128);

impl PermitId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Self {
        // OS randomness, fetched 4 KiB at a time per thread: one system call per 256 ids.
        thread_local! {
            static POOL: std::cell::RefCell<([u8; 4096], usize)> =
                const { std::cell::RefCell::new(([0; 4096], 4096)) };
        }
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let (bytes, used) = &mut *pool;
            if *used == bytes.len() {
                getrandom::fill(bytes).ok()?;
                *used = 0;
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&bytes[*used..*used + 16]);
            // Each id's bytes are handed out once.
            bytes[*used..*used + 16].fill(0);
            *used += 16;
            Some(id)
        });
        if let Some(bytes) = pooled {
            return PermitId(u128::from_le_bytes(bytes));
        }
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness (never seen on supported platforms): fall back to a keyed
            // hash of a counter and the time, still unique within this process.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let state = ahash::RandomState::new();
            let high = state.hash_one((n, std::time::SystemTime::now()));
            let low = state.hash_one((high, n));
            return PermitId(u128::from(high) << 64 | u128::from(low));
        }
        PermitId(u128::from_le_bytes(bytes))
    }

    /// The id with these 128 bits.
    pub const fn from_u128(bits: u128) -> Self {
        PermitId(bits)
    }

    /// The id's 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for PermitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for PermitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PermitId({self})")
    }
}

impl FromStr for PermitId {
    type Err = Error;

    /// Parses 32 hexadecimal digits (either case); anything else is
    /// [`Error::InvalidPermit`].
    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = || Error::InvalidPermit {
            permit: text.chars().take(64).collect(),
            reason: "a permit id is 32 hexadecimal digits",
        };
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        u128::from_str_radix(text, 16)
            .map(PermitId)
            .map_err(|_| invalid())
    }
}

/// A store's answer to a permit acquire ([`ConcurrencyStore::permit_acquire`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermitAnswer {
    /// Whether the permit was granted (or already held under this id).
    pub acquired: bool,
    /// Permits in flight for the key after the acquire (this one included when granted).
    pub in_flight: u32,
    /// When denied: the time until the earliest lease in flight ends (an upper bound; a
    /// release frees a slot sooner). Zero when granted.
    pub retry_after: Duration,
    /// Which path answered (the store, or a failure policy).
    pub source: DecisionSource,
}

impl PermitAnswer {
    /// Granted, `in_flight` now held (this one included).
    pub fn granted(in_flight: u32) -> Self {
        PermitAnswer {
            acquired: true,
            in_flight,
            retry_after: Duration::ZERO,
            source: DecisionSource::Store,
        }
    }

    /// Denied: `in_flight` held, the earliest ending in `retry_after`.
    pub fn full(in_flight: u32, retry_after: Duration) -> Self {
        PermitAnswer {
            acquired: false,
            in_flight,
            retry_after,
            source: DecisionSource::Store,
        }
    }

    /// The same answer, from `source`.
    pub fn with_source(mut self, source: DecisionSource) -> Self {
        self.source = source;
        self
    }
}

/// The answer to [`RateLimiter::acquire`](crate::RateLimiter::acquire): a permit, or the
/// limit full.
#[must_use = "a permit is released when dropped: keep it for as long as the work runs"]
#[derive(Debug)]
pub enum Acquisition<S: ConcurrencyStore = MemoryStore> {
    /// A permit was granted; it is released when dropped.
    Acquired(Permit<S>),
    /// `max` permits are in flight for the key.
    Full(Full),
}

impl<S: ConcurrencyStore> Acquisition<S> {
    /// Whether a permit was granted.
    pub fn is_acquired(&self) -> bool {
        matches!(self, Acquisition::Acquired(_))
    }

    /// The permit, if one was granted.
    pub fn permit(self) -> Option<Permit<S>> {
        match self {
            Acquisition::Acquired(permit) => Some(permit),
            Acquisition::Full(_) => None,
        }
    }
}

/// A concurrency limit that was full: [`Acquisition::Full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Full {
    /// Permits in flight for the key.
    pub in_flight: u32,
    /// The limit's `max`.
    pub limit: u32,
    /// The time until the earliest lease in flight ends: an upper bound on the wait, since a
    /// release frees a slot sooner.
    pub retry_after: Duration,
    /// Which path answered (the store, or a failure policy).
    pub source: DecisionSource,
}

/// A held slot of a concurrency limit. Release it with [`release`](Self::release), or drop
/// it: a store that can release synchronously (the memory store) does so at once; others
/// spawn the release on the current tokio runtime, and with no runtime to run it the store
/// reclaims the permit when its lease ends. A permit is `Send + 'static`: it owns what it
/// needs to release itself.
pub struct Permit<S: ConcurrencyStore = MemoryStore> {
    held: Option<Held<S>>,
    id: PermitId,
    expires_at: Duration,
    in_flight: u32,
    source: DecisionSource,
}

struct Held<S> {
    store: S,
    limit: Concurrency,
    key: Box<str>,
    releases: Arc<Releases>,
}

impl<S: ConcurrencyStore> Permit<S> {
    pub(crate) fn new(
        store: S,
        limit: Concurrency,
        key: &str,
        releases: Arc<Releases>,
        id: PermitId,
        sent_at: Duration,
        answer: PermitAnswer,
    ) -> Self {
        Permit {
            expires_at: sent_at.saturating_add(limit.lease_time()),
            held: Some(Held {
                store,
                limit,
                key: key.into(),
                releases,
            }),
            id,
            in_flight: answer.in_flight,
            source: answer.source,
        }
    }

    /// The permit's id (for a release by id from elsewhere).
    pub fn id(&self) -> PermitId {
        self.id
    }

    /// When the lease ends, on the store's clock (compare with its `now()`): the moment the
    /// acquire (or the last renew) was *sent* plus the lease, so never later than the end
    /// the store itself holds.
    pub fn expires_at(&self) -> Duration {
        self.expires_at
    }

    /// Time left on the lease now, zero once it has ended.
    pub fn lease_left(&self) -> Duration {
        match &self.held {
            Some(held) => self.expires_at.saturating_sub(held.store.clock().now()),
            None => Duration::ZERO,
        }
    }

    /// Permits in flight for the key when this one was granted (this one included).
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Which path granted it: [`DecisionSource::Store`], or a failure policy's (a fail-open
    /// permit is held nowhere; releasing it does nothing).
    pub fn source(&self) -> DecisionSource {
        self.source
    }

    /// Keeps the permit held in the store but forgets it here, returning its id: nothing is
    /// released on drop. Whoever holds the id releases it
    /// ([`release_by_id`](crate::RateLimiter::release_by_id)) or renews it
    /// ([`renew_by_id`](crate::RateLimiter::renew_by_id)); otherwise it ends with its lease
    /// (a server handing permits to its clients does this).
    pub fn detach(mut self) -> PermitId {
        self.held = None;
        self.id
    }

    /// Releases the permit now, waiting for the store to confirm. Releasing is idempotent
    /// on the store: a permit that already expired is simply gone.
    pub async fn release(mut self) -> Result<(), Error> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let result = held
            .store
            .permit_release(&held.limit, &held.key, self.id)
            .await;
        held.releases.notify();
        result
    }

    /// Extends the lease by the limit's lease time from now (measured from when the renew is
    /// sent). A permit whose lease already ended on the store's clock is
    /// [`Error::PermitExpired`]: its slot may be someone else's by now.
    pub async fn renew(&mut self) -> Result<(), Error> {
        let Some(held) = &self.held else {
            return Err(Error::PermitExpired { permit: self.id });
        };
        let sent_at = held.store.clock().now();
        held.store
            .permit_renew(&held.limit, &held.key, self.id)
            .await?;
        self.expires_at = sent_at.saturating_add(held.limit.lease_time());
        Ok(())
    }
}

impl<S: ConcurrencyStore> Drop for Permit<S> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.store
                .release_on_drop(&held.limit, &held.key, self.id, &held.releases);
        }
    }
}

impl<S: ConcurrencyStore> fmt::Debug for Permit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Permit");
        if let Some(held) = &self.held {
            s.field("limit", &held.limit.name()).field("key", &held.key);
        }
        s.field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("released", &self.held.is_none())
            .finish()
    }
}

/// Releases on this node, for [`acquire_wait`](crate::RateLimiter::acquire_wait) to wake
/// on: every release bumps an epoch and wakes the waiters registered before it.
#[derive(Default)]
pub struct Releases {
    epoch: AtomicU64,
    /// Wakers registered in `waiters` (kept equal to its size under its lock), so that a
    /// release with nobody waiting takes no lock.
    waiting: AtomicU64,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next: u64,
    wakers: HashMap<u64, Waker>,
}

impl Releases {
    /// A permit was released on this node: wake every waiter.
    pub fn notify(&self) {
        // SeqCst pairs with a waiter's registration: it counts itself in `waiting`, then
        // reads the epoch; this bumps the epoch, then reads `waiting`. One of the two sees
        // the other's write, so a waiter is never missed.
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut waiters = lock(&self.waiters);
            let wakers: Vec<Waker> = waiters.wakers.drain().map(|(_, w)| w).collect();
            self.waiting
                .fetch_sub(wakers.len() as u64, Ordering::SeqCst);
            wakers
        };
        for waker in wakers {
            waker.wake();
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Completes once a release after `epoch` happened (or at once if one did).
    pub(crate) fn after(self: &Arc<Self>, epoch: u64) -> Released {
        Released {
            releases: Arc::clone(self),
            epoch,
            ticket: None,
        }
    }
}

impl fmt::Debug for Releases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Releases")
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

/// The future of [`Releases::after`]; deregisters itself when dropped.
pub(crate) struct Released {
    releases: Arc<Releases>,
    epoch: u64,
    ticket: Option<u64>,
}

impl Future for Released {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.releases.epoch() != self.epoch {
            return Poll::Ready(());
        }
        let releases = Arc::clone(&self.releases);
        let mut waiters = lock(&releases.waiters);
        let ticket = match self.ticket {
            Some(ticket) => ticket,
            None => {
                waiters.next += 1;
                waiters.next
            }
        };
        if waiters.wakers.insert(ticket, cx.waker().clone()).is_none() {
            releases.waiting.fetch_add(1, Ordering::SeqCst);
        }
        drop(waiters);
        self.ticket = Some(ticket);
        // A release between the first check and the registration would be missed: look again.
        if self.releases.epoch() != self.epoch {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let mut waiters = lock(&self.releases.waiters);
            if waiters.wakers.remove(&ticket).is_some() {
                self.releases.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Completes when either future does.
pub(crate) async fn either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_limits_are_refused_naming_the_value() {
        let zero = Concurrency::named("db", 0).unwrap_err().to_string();
        assert!(
            zero.contains("db: 0 in flight") && zero.contains("max is 0"),
            "{zero}"
        );
        let short = Concurrency::new(3)
            .unwrap()
            .lease(Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(short.contains("lease 0ns is outside"), "{short}");
        let long = Concurrency::named("db", 1)
            .unwrap()
            .lease(Duration::from_secs(86_401))
            .unwrap_err();
        assert!(matches!(long, Error::InvalidLimit { .. }), "{long}");
        let name = Concurrency::named("bad name", 1).unwrap_err();
        assert!(matches!(name, Error::InvalidPolicy { .. }), "{name}");
    }

    #[test]
    fn a_limit_keeps_its_name_max_and_lease() {
        let db = Concurrency::named("legacy-db", 20)
            .unwrap()
            .lease(Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            (db.name(), db.max(), db.lease_time()),
            ("legacy-db", 20, Duration::from_secs(5))
        );
        assert_eq!(Concurrency::new(1).unwrap().lease_time(), DEFAULT_LEASE);
        assert_eq!(db.to_string(), "legacy-db: 20 in flight, lease 5s");
    }

    #[test]
    fn permit_ids_round_trip_as_32_hex_digits_and_nothing_else_parses() {
        let id = PermitId::random();
        assert_ne!(id, PermitId::random());
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<PermitId>().unwrap(), id);
        assert_eq!(
            "0000000000000000000000000000000A"
                .parse::<PermitId>()
                .unwrap(),
            PermitId::from_u128(10)
        );
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            let error = bad.parse::<PermitId>().unwrap_err();
            assert!(
                matches!(error, Error::InvalidPermit { .. }),
                "{bad}: {error}"
            );
        }
    }
}
