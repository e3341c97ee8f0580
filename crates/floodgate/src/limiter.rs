//! `RateLimiter`: the facade users call, delegating to a [`Store`]. It is the one place
//! that validates costs: stores receive them checked.

use std::time::Duration;

use std::sync::Arc;

use crate::clock::MonotonicClock;
use crate::concurrency::{Acquisition, Full, Permit, PermitAnswer, PermitId, Releases, either};
use crate::store::memory::MemoryStore;
use crate::store::{ConcurrencyStore, Store};
use crate::{Clock, Concurrency, Decision, Error, Policy};

/// `acquire_wait`'s first poll interval for releases on other nodes; it doubles up to
/// [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(2);
const MAX_POLL: Duration = Duration::from_millis(250);

/// Checks requests against policies, with state kept in a [`Store`].
///
/// `RateLimiter` is `Send + Sync`: share one across tasks and threads with an `Arc`.
///
/// ```
/// use floodgate::{Limit, Policy, RateLimiter};
/// # async fn run() -> Result<(), floodgate::Error> {
/// let free = Policy::new("free", [Limit::per_second(5).burst(10), Limit::per_day(1_000)])?;
/// let limiter = RateLimiter::in_memory();
/// let decision = limiter.check(&free, "user:42").await?;
/// if !decision.is_allowed() {
///     println!("slow down, retry in {:?}", decision.retry_after());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter<S: Store = MemoryStore> {
    store: S,
    /// Permit releases on this node, which wake [`acquire_wait`](Self::acquire_wait).
    releases: Arc<Releases>,
}

impl RateLimiter<MemoryStore> {
    /// A limiter on an in-process [`MemoryStore`] with default settings.
    pub fn in_memory() -> Self {
        Self::new(MemoryStore::new())
    }
}

impl<C: Clock> RateLimiter<MemoryStore<C>> {
    /// A limiter on an in-process store that reads time from `clock` (for tests: a
    /// [`ManualClock`](crate::ManualClock)).
    pub fn in_memory_with_clock(clock: C) -> Self {
        Self::new(MemoryStore::builder().clock(clock).build())
    }
}

impl<S: Store> RateLimiter<S> {
    /// A limiter on any store.
    pub fn new(store: S) -> Self {
        RateLimiter {
            store,
            releases: Arc::default(),
        }
    }

    /// The store behind this limiter.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Checks and consumes one token of every limit of `policy` for `key`.
    pub async fn check(&self, policy: &Policy, key: &str) -> Result<Decision, Error> {
        self.check_n(policy, key, 1).await
    }

    /// Checks and consumes `cost` tokens, all or nothing. A cost above any limit's burst can
    /// never pass and is [`Error::CostExceedsBurst`]; a cost of zero is
    /// [`Error::InvalidCost`].
    pub async fn check_n(&self, policy: &Policy, key: &str, cost: u32) -> Result<Decision, Error> {
        policy.check_cost(cost)?;
        self.store.acquire(policy, key, cost).await
    }

    /// The current state, consuming nothing; `is_allowed` tells whether a `check` would
    /// pass now.
    pub async fn peek(&self, policy: &Policy, key: &str) -> Result<Decision, Error> {
        self.store.peek(policy, key).await
    }

    /// Forgets `key`'s state under `policy`: its buckets are full again (after a good
    /// login, say).
    pub async fn reset(&self, policy: &Policy, key: &str) -> Result<(), Error> {
        self.store.reset(policy, key).await
    }

    /// Consumes `cost` tokens without checking, for costs known only afterwards (bytes
    /// sent, rows scanned). Debt delays later requests and is capped at one burst below
    /// empty. The decision describes the state after the charge: allowed if it fit without
    /// debt, otherwise denied with the wait until a one-token request would pass.
    pub async fn charge(&self, policy: &Policy, key: &str, cost: u32) -> Result<Decision, Error> {
        crate::limit::check_nonzero(cost)?;
        self.store.charge(policy, key, cost).await
    }

    /// Waits until `cost` tokens are available, then consumes them (background job
    /// throttling). Sleeps on the store's clock. Dropping the future before it completes
    /// charges nothing.
    pub async fn until_ready(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
    ) -> Result<Decision, Error> {
        self.wait(policy, key, cost, None).await
    }

    /// Like [`until_ready`](Self::until_ready), but returns [`Error::Timeout`] at once,
    /// without waiting, as soon as a wait would end after `timeout`.
    pub async fn until_ready_timeout(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
        timeout: Duration,
    ) -> Result<Decision, Error> {
        self.wait(policy, key, cost, Some(timeout)).await
    }

    async fn wait(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
        timeout: Option<Duration>,
    ) -> Result<Decision, Error> {
        policy.check_cost(cost)?;
        let clock = self.store.clock();
        let deadline = timeout.map(|t| clock.now().saturating_add(t));
        loop {
            let decision = self.store.acquire(policy, key, cost).await?;
            if decision.is_allowed() {
                return Ok(decision);
            }
            // A denial always has a positive wait; guard against a store that says zero.
            let wait = decision.retry_after().max(Duration::from_nanos(1));
            if let Some(deadline) = deadline {
                if clock.now().saturating_add(wait) > deadline {
                    return Err(Error::Timeout { retry_after: wait });
                }
            }
            clock.sleep(wait).await;
        }
    }
}

/// Concurrency limits: permits in flight per key (see [`Concurrency`]).
impl<S: ConcurrencyStore> RateLimiter<S> {
    /// Takes a permit of `limit` for `key` if fewer than its `max` are in flight, or
    /// reports the limit [`Full`] with the count in flight and how long until the earliest
    /// lease ends. The permit's lease runs from the moment the acquire is sent.
    pub async fn acquire(&self, limit: &Concurrency, key: &str) -> Result<Acquisition<S>, Error> {
        self.acquire_with_id(limit, key, PermitId::random()).await
    }

    /// [`acquire`](Self::acquire) with an id the caller chose: sending it again after a
    /// lost reply holds one permit, not two (the store renews it), and an id known before
    /// the reply can be released with [`release_by_id`](Self::release_by_id).
    pub async fn acquire_with_id(
        &self,
        limit: &Concurrency,
        key: &str,
        id: PermitId,
    ) -> Result<Acquisition<S>, Error> {
        let sent_at = self.store.clock().now();
        let answer = self.store.permit_acquire(limit, key, id).await?;
        Ok(self.acquisition(limit, key, id, sent_at, answer))
    }

    fn acquisition(
        &self,
        limit: &Concurrency,
        key: &str,
        id: PermitId,
        sent_at: Duration,
        answer: PermitAnswer,
    ) -> Acquisition<S> {
        if answer.acquired {
            Acquisition::Acquired(Permit::new(
                self.store.clone(),
                limit.clone(),
                key,
                Arc::clone(&self.releases),
                id,
                sent_at,
                answer,
            ))
        } else {
            Acquisition::Full(Full {
                in_flight: answer.in_flight,
                limit: limit.max(),
                retry_after: answer.retry_after,
                source: answer.source,
            })
        }
    }

    /// Waits for a permit of `limit` for `key` (background workers), at most `timeout`:
    /// woken at once by a release on this node, and polling the store for releases
    /// elsewhere every few milliseconds at first, backing off to every 250 ms, never past
    /// the earliest lease end the store reported. When `timeout` passes first it returns
    /// [`Error::Timeout`] with the last reported wait. Dropping the future takes nothing.
    pub async fn acquire_wait(
        &self,
        limit: &Concurrency,
        key: &str,
        timeout: Duration,
    ) -> Result<Permit<S>, Error> {
        let clock = self.store.clock();
        let deadline = clock.now().saturating_add(timeout);
        let id = PermitId::random();
        let mut poll = FIRST_POLL;
        loop {
            let epoch = self.releases.epoch();
            let full = match self.acquire_with_id(limit, key, id).await? {
                Acquisition::Acquired(permit) => return Ok(permit),
                Acquisition::Full(full) => full,
            };
            let now = clock.now();
            if now >= deadline {
                return Err(Error::Timeout {
                    retry_after: full.retry_after,
                });
            }
            let wait = poll
                .min(full.retry_after.max(Duration::from_millis(1)))
                .min(deadline - now);
            either(clock.sleep(wait), self.releases.after(epoch)).await;
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    /// Renews the permit `id` of `limit` for `key` (see [`Permit::renew`]): its lease runs
    /// for the limit's lease time from now, or it is [`Error::PermitExpired`].
    pub async fn renew_by_id(
        &self,
        limit: &Concurrency,
        key: &str,
        id: PermitId,
    ) -> Result<(), Error> {
        self.store.permit_renew(limit, key, id).await
    }

    /// Releases the permit `id` of `limit` for `key`, held here or anywhere (a permit
    /// whose acquire reply was lost, say). Idempotent: an id not in flight is a no-op.
    pub async fn release_by_id(
        &self,
        limit: &Concurrency,
        key: &str,
        id: PermitId,
    ) -> Result<(), Error> {
        let result = self.store.permit_release(limit, key, id).await;
        self.releases.notify();
        result
    }
}

impl Default for RateLimiter<MemoryStore<MonotonicClock>> {
    fn default() -> Self {
        Self::in_memory()
    }
}
