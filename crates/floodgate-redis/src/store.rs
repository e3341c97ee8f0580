//! `RedisStore`: the `Store` implementation over one Redis server.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::store::{self, Op};
use floodgate::{Clock, Decision, DecisionSource, Error, Limit, MonotonicClock, Policy, Store};

use crate::batch::{self, Batcher, Counters, Decide};
use crate::cache::DenyCache;
use crate::connection::Connection;
use crate::failure::{Breaker, Fallback, Gate};
use crate::keys;
use crate::lease::{Leases, Plan};
use crate::permits::PermitCall;
use crate::reply;
use crate::reply::{read_reply, wire};
use crate::url::sanitize;

/// Microseconds: Redis decisions' time unit (Lua numbers are exact to 2^53).
pub(crate) const UNIT_NS: u64 = 1_000;

/// Bucket state in Redis, shared by every process that uses the same server and prefix.
///
/// Cheap to clone: clones share the multiplexed connection(s), which reconnect by themselves
/// after the server restarts. A request whose outcome is unknown (a timeout, a connection
/// lost after sending) is never sent again: it surfaces as [`Error::Store`]. A script
/// missing from the server's cache (after a restart, failover or `SCRIPT FLUSH`) is loaded
/// and the call retried transparently: that error means the script never ran.
#[derive(Clone)]
pub struct RedisStore<C: Clock = MonotonicClock> {
    pub(crate) connection: Connection,
    pub(crate) prefix: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) clock: C,
    /// Send the clock's time to the script instead of using Redis's `TIME` (tests only).
    pub(crate) send_time: bool,
    pub(crate) url: Arc<str>,
    pub(crate) fallback: Arc<Fallback>,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) cache: Option<Arc<DenyCache>>,
    /// Exact batching: `None` sends each decision as its own call.
    pub(crate) batcher: Option<Arc<Batcher<Decide>>>,
    /// Batching of concurrency-permit operations, on when decisions are batched.
    pub(crate) permit_batcher: Option<Arc<Batcher<PermitCall>>>,
    pub(crate) counters: Arc<Counters>,
    /// Token leasing, when some policy leases.
    pub(crate) leases: Option<Arc<Leases>>,
}

/// One policy's leased tokens: [`RedisStore::lease_tokens`]. Leased tokens are spent or
/// expire; `leased − spent − expired` are held in leases now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseTokens {
    /// Taken from Redis by leases.
    pub leased: u64,
    /// Spent from leases: admissions without a round trip (each lease requester's own
    /// cost included).
    pub spent: u64,
    /// Unspent when their lease ended (or was dropped by a reset).
    pub expired: u64,
}

/// How a [`RedisStore`] is doing: [`RedisStore::health`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHealth {
    /// The circuit breaker's state.
    pub breaker: crate::BreakerState,
    /// What the store has sent so far.
    pub stats: RedisStats,
}

/// What a [`RedisStore`] has sent to Redis since it was built (shared by its clones):
/// [`RedisStore::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Decision script calls sent: one per batch with batching on, one per decision off.
    pub script_calls: u64,
    /// Decisions those calls carried (decisions answered locally — by the deny cache or a
    /// failure policy — are not counted). `decisions / script_calls` is the mean batch.
    pub decisions: u64,
    /// Behind Sentinel: how many times the store moved to a new master (0 otherwise).
    pub master_switches: u64,
    /// Token leasing: tokens leased from Redis, spent from leases (each an admission
    /// without a round trip, the requester's own included), and expired unspent.
    pub leased_tokens: u64,
    /// See [`leased_tokens`](Self::leased_tokens).
    pub spent_lease_tokens: u64,
    /// See [`leased_tokens`](Self::leased_tokens).
    pub expired_lease_tokens: u64,
    /// Concurrency-permit script calls sent: one per batch with batching on, one per
    /// operation off.
    pub permit_calls: u64,
    /// Permit operations (acquires, releases and renews) those calls carried.
    pub permit_operations: u64,
    /// Permits the permit script reclaimed because their lease ended unreleased (counted by
    /// the calls of this store that found them; another node's calls count their own).
    pub permits_reclaimed: u64,
}

impl<C: Clock> RedisStore<C> {
    /// Warns when `maxmemory-policy` lets Redis evict keys that carry a TTL (all of ours):
    /// an evicted bucket is a reset.
    pub(crate) async fn warn_if_keys_can_be_evicted(&self) {
        let mut command = redis::cmd("CONFIG");
        command.arg("GET").arg("maxmemory-policy");
        let reply = tokio::time::timeout(
            self.timeout * 10,
            self.connection.query::<Vec<String>>(&command),
        )
        .await;
        let reply = reply.unwrap_or_else(|_| Err(timed_out()));
        if let Ok(values) = reply {
            if let Some(policy) = values.get(1) {
                if policy != "noeviction" {
                    tracing::warn!(
                        url = %self.url,
                        maxmemory_policy = %policy,
                        "under memory pressure Redis may evict rate-limit keys, which resets \
                         those buckets; use maxmemory-policy noeviction"
                    );
                }
            }
        }
    }

    /// One policy's leased tokens so far: leased from Redis, spent from leases, expired
    /// unspent (all zero for a policy that does not lease).
    pub fn lease_tokens(&self, policy_name: &str) -> LeaseTokens {
        let Some(leases) = &self.leases else {
            return LeaseTokens::default();
        };
        leases.sweep(self.clock.now_nanos());
        let c = leases.policy_counters(policy_name);
        LeaseTokens {
            leased: c.leased.load(Ordering::Relaxed),
            spent: c.spent.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// The store's health for an operator: the circuit breaker's state and [`stats`](Self::stats).
    pub fn health(&self) -> RedisHealth {
        RedisHealth {
            breaker: self.breaker.state(),
            stats: self.stats(),
        }
    }

    /// What this store (and its clones) has sent to Redis so far.
    pub fn stats(&self) -> RedisStats {
        let (leased, spent, expired) = match &self.leases {
            Some(leases) => {
                leases.sweep(self.clock.now_nanos());
                let c = &leases.counters;
                (
                    c.leased.load(Ordering::Relaxed),
                    c.spent.load(Ordering::Relaxed),
                    c.expired.load(Ordering::Relaxed),
                )
            }
            None => (0, 0, 0),
        };
        RedisStats {
            script_calls: self.counters.calls.load(Ordering::Relaxed),
            decisions: self.counters.decisions.load(Ordering::Relaxed),
            master_switches: self.connection.master_switches(),
            leased_tokens: leased,
            spent_lease_tokens: spent,
            expired_lease_tokens: expired,
            permit_calls: self.counters.permit_calls.load(Ordering::Relaxed),
            permit_operations: self.counters.permit_operations.load(Ordering::Relaxed),
            permits_reclaimed: self.counters.reclaimed_permits.load(Ordering::Relaxed),
        }
    }

    async fn decide(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        debug_assert!(op.is_validated_for(policy), "{op:?} reached the store");
        let rates = store::rates_us(policy).ok_or_else(|| too_fast(policy))?;
        if let Some(cache) = &self.cache {
            if let Some(denied) = cache.deny(policy, key, rates, self.local_micros(), op) {
                // Answered without I/O: still give way when the task's budget is spent, so a
                // task looping over cached denials cannot starve the connection driver (and
                // every other task's Redis replies) on its worker.
                tokio::task::consume_budget().await;
                return Ok(denied);
            }
        }
        if let Gate::Open(wait) = self.breaker.gate() {
            tokio::task::consume_budget().await;
            let error = store_error(format!(
                "{}: skipped while Redis is failing (circuit open)",
                self.url
            ));
            return self.fallback.decide(policy, key, op, error, wait).await;
        }
        // A hot key of a leasing policy: spend this node's lease, or ask for one.
        let mut lease = None;
        if let (Some(leases), Op::Acquire(cost)) = (&self.leases, op) {
            let mut waited = Duration::ZERO;
            loop {
                match leases.plan(policy, key, cost, self.clock.now_nanos()) {
                    Plan::Single => break,
                    Plan::Spent(left) => {
                        tokio::task::consume_budget().await;
                        return Ok(leased(policy, left));
                    }
                    // Another caller is asking for this key's lease: wait for it (a missed
                    // wake-up costs one step), then try again; past the timeout, decide alone.
                    Plan::Wait(notify) if waited < self.timeout => {
                        let step = Duration::from_millis(2);
                        let _ = tokio::time::timeout(step, notify.notified()).await;
                        waited += step;
                    }
                    Plan::Wait(_) => break,
                    Plan::Request {
                        wanted,
                        sent,
                        length,
                    } => {
                        lease = Some(Pending {
                            leases,
                            policy,
                            key,
                            wanted,
                            cost,
                            sent,
                            length,
                            open: true,
                        });
                        break;
                    }
                }
            }
        }
        let keys = keys::keys(&self.prefix, policy, key);
        let now = if self.send_time {
            i64::try_from(self.clock.now_nanos() / UNIT_NS).unwrap_or(i64::MAX)
        } else {
            -1
        };
        let limits_of = || -> Vec<(i64, i64)> {
            rates
                .iter()
                .map(|rate| {
                    (
                        i64::try_from(rate.interval()).unwrap_or(i64::MAX),
                        i64::try_from(rate.burst()).unwrap_or(i64::MAX),
                    )
                })
                .collect()
        };
        let (words, least) = match &lease {
            Some(lease) => (
                [0, i64::try_from(lease.wanted).unwrap_or(i64::MAX)],
                Some(i64::from(lease.cost)),
            ),
            None => (wire(op), None),
        };
        let (reply, counted) = match &self.batcher {
            None if lease.is_some() => {
                // Batching off: a lease still goes through the batch script, alone.
                let item = Decide {
                    keys,
                    op: words,
                    least,
                    limits: limits_of(),
                    now,
                };
                self.counters.count(1);
                let call =
                    tokio::time::timeout(self.timeout, batch::send_alone(&self.connection, &item));
                (call.await.unwrap_or_else(|_| Err(timed_out())), false)
            }
            Some(batcher) => {
                let work = Decide {
                    keys,
                    op: words,
                    least,
                    limits: limits_of(),
                    now,
                };
                (batcher.call(work).await, true)
            }
            None => {
                let mut args = Vec::with_capacity(3 + 2 * rates.len());
                args.extend(wire(op));
                args.push(now);
                for rate in rates {
                    args.push(i64::try_from(rate.interval()).unwrap_or(i64::MAX));
                    args.push(i64::try_from(rate.burst()).unwrap_or(i64::MAX));
                }
                self.counters.count(1);
                // One deadline for the whole call: reconnecting, redirects and a script
                // reload.
                let call = tokio::time::timeout(self.timeout, self.connection.eval(&keys, &args));
                (call.await.unwrap_or_else(|_| Err(timed_out())), false)
            }
        };
        let failure = match reply {
            Ok(reply) => {
                if !counted {
                    self.breaker.success();
                }
                if let Some(mut lease) = lease {
                    if let Some(granted) = reply::lease_granted(&reply, rates.len()) {
                        return Ok(leased(policy, lease.grant(granted)));
                    }
                    // Refused: the denial an acquire of its cost gets (the lease is dropped).
                }
                let (decision, ahead) = read_reply(reply, rates)?;
                if let Some(cache) = &self.cache {
                    cache.record(policy, key, rates, self.local_micros(), &ahead);
                }
                return Ok(decision);
            }
            Err(e) if !unavailable(&e) => {
                // Redis answered, with an error about this request: not an outage.
                if !counted {
                    self.breaker.success();
                }
                return Err(self.error(&e));
            }
            Err(e) => self.error(&e),
        };
        if !counted {
            self.breaker.failure();
        }
        self.fallback
            .decide(policy, key, op, failure, self.breaker.cooldown())
            .await
    }
}

impl<C: Clock> RedisStore<C> {
    /// A store error for `error`, saying when the outcome is unknown, without the password.
    pub(crate) fn error(&self, error: &redis::RedisError) -> Error {
        if error.is_timeout() {
            return store_error(format!(
                "{}: no reply within {:?}; the request may or may not have been applied",
                self.url, self.timeout
            ));
        }
        store_error(format!(
            "{}: {}",
            self.url,
            sanitize(&error.to_string(), &self.url)
        ))
    }

    /// This node's clock in microseconds: the deny cache's time base.
    fn local_micros(&self) -> u64 {
        self.clock.now_nanos() / UNIT_NS
    }
}

/// The error of a call that ran out of time: an I/O timeout, so it counts as an outage.
pub(crate) fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// Whether an error means Redis could not answer (an outage, for the failure policy), as
/// opposed to an error reply about this request.
pub(crate) fn unavailable(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        // A Cluster node that went away (the client has no connection to it any more): the
        // request was not sent.
        || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || (error.kind() == redis::ErrorKind::Client
            && error.to_string().contains("Requested connection not found"))
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.code(),
            Some(
                "LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY"
                    | "MOVED" | "ASK"
            )
        )
}

/// `InvalidLimit` for the first limit of `policy` that rounding to microseconds would
/// change by more than 1% of its rate.
fn too_fast(policy: &Policy) -> Error {
    let limit = policy
        .limits()
        .iter()
        .find(|l| store::rate_in_unit(l, UNIT_NS).is_none())
        .map_or_else(String::new, Limit::to_string);
    Error::InvalidLimit {
        limit,
        reason:
            "too fast for the Redis store, which counts whole microseconds: the interval would \
                 round by more than 1%"
                .into(),
    }
}

impl<C: Clock> Store for RedisStore<C> {
    type Clock = C;

    fn clock(&self) -> &C {
        &self.clock
    }

    async fn apply(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        self.decide(policy, key, op).await
    }

    async fn reset(&self, policy: &Policy, key: &str) -> Result<(), Error> {
        self.fallback.reset(policy, key).await;
        if let Some(leases) = &self.leases {
            leases.forget(policy, key);
        }
        if let Some(cache) = &self.cache {
            cache.forget(policy, key);
        }
        let keys = keys::keys(&self.prefix, policy, key);
        let mut command = redis::cmd("DEL");
        command.arg(&keys);
        let call = tokio::time::timeout(self.timeout, self.connection.query::<i64>(&command));
        match call.await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(&e)),
        }
    }
}

impl<C: Clock> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("manual_clock", &self.send_time)
            .field("batching", &self.batcher.is_some())
            .field("on_failure", &self.fallback.default)
            .field("on_failure_for", &self.fallback.overrides)
            .finish()
    }
}

/// A lease request on its way: settles the key's pending lease when granted, and when
/// dropped without a grant (refused, failed, or the caller gone), so that other callers
/// waiting for it go on.
struct Pending<'a> {
    leases: &'a Leases,
    policy: &'a Policy,
    key: &'a str,
    wanted: u64,
    cost: u32,
    sent: u64,
    length: Duration,
    open: bool,
}

impl Pending<'_> {
    /// `granted` tokens came back: the requester spends its cost; the tokens left.
    fn grant(&mut self, granted: u64) -> u64 {
        self.open = false;
        self.leases.granted(
            self.policy,
            self.key,
            granted,
            self.cost,
            self.sent,
            self.length,
        )
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.open {
            self.leases
                .granted(self.policy, self.key, 0, self.cost, self.sent, self.length);
        }
    }
}

/// An admission served from this node's lease, `left` tokens remaining in it.
fn leased(policy: &Policy, left: u64) -> Decision {
    let limit = policy
        .limits()
        .iter()
        .map(|l| u64::from(l.capacity()))
        .min()
        .unwrap_or(0);
    Decision::allow(limit, left).with_source(DecisionSource::Lease)
}

pub(crate) fn store_error(message: String) -> Error {
    Error::Store(message.into())
}
