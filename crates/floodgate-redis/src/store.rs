//! `RedisStore`: the `Store` implementation over one Redis server.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::store::{self, Op};
use floodgate::{Clock, Decision, Error, Limit, MonotonicClock, Policy, Store};

use crate::batch::{self, Batcher, Counters};
use crate::cache::DenyCache;
use crate::connection::Connection;
use crate::failure::{Breaker, Fallback, Gate};
use crate::keys;
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
    /// Exact batching (standalone servers): `None` sends each decision as its own call.
    pub(crate) batcher: Option<Arc<Batcher>>,
    pub(crate) counters: Arc<Counters>,
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

    /// What this store (and its clones) has sent to Redis so far.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            script_calls: self.counters.calls.load(Ordering::Relaxed),
            decisions: self.counters.decisions.load(Ordering::Relaxed),
            master_switches: self.connection.master_switches(),
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
        let keys = keys::keys(&self.prefix, policy, key);
        let now = if self.send_time {
            i64::try_from(self.clock.now_nanos() / UNIT_NS).unwrap_or(i64::MAX)
        } else {
            -1
        };
        let (reply, counted) = match &self.batcher {
            Some(batcher) => {
                let limits = rates
                    .iter()
                    .map(|rate| {
                        (
                            i64::try_from(rate.interval()).unwrap_or(i64::MAX),
                            i64::try_from(rate.burst()).unwrap_or(i64::MAX),
                        )
                    })
                    .collect();
                let receiver = batcher.submit(keys, wire(op), limits, now);
                // The batch has told the circuit breaker how it went, once for all of its
                // decisions; a caller that stops waiting leaves the count to its batch.
                let reply = match tokio::time::timeout(self.timeout, receiver).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => Err(batch::dropped()),
                    Err(_) => Err(timed_out()),
                };
                (reply, true)
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
    fn error(&self, error: &redis::RedisError) -> Error {
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

pub(crate) fn store_error(message: String) -> Error {
    Error::Store(message.into())
}
