//! Concurrency permits in Redis: acquires, releases and renews applied by the permit script
//! (see `scripts/permit.lua`) on Redis's clock, with the store's failure policies. With
//! batching on, the operations waiting for one connection go as one call, applied in order,
//! each as if sent alone; off, each is a call of its own.
//!
//! Like a decision, a call whose outcome is unknown is never sent again: the caller's
//! failure policy answers. A lost acquire reply leaves at most a permit that ends with its
//! lease; when a failure policy granted a permit under the same id instead, that permit's
//! release removes it from Redis too.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::store::PermitAnswer;
use floodgate::{
    Clock, Concurrency, ConcurrencyStore, DecisionSource, Error, FailurePolicy, PermitId,
};
use redis::Value;

use crate::batch::{self, Counters, Work};
use crate::connection::{LuaScript, PERMIT};
use crate::failure::Gate;
use crate::keys;
use crate::store::{RedisStore, UNIT_NS, store_error, timed_out, unavailable};

/// The script's operations (ARGV[1]).
#[derive(Clone, Copy)]
enum Call {
    Acquire = 1,
    Release = 2,
    Renew = 3,
}

/// One permit operation, for the permit script.
pub(crate) struct PermitCall {
    /// The permit set's Redis key.
    key: String,
    call: Call,
    id: PermitId,
    max: u32,
    /// Lease in microseconds.
    lease: i64,
    /// The time sent to the script: -1 for Redis's clock.
    now: i64,
}

impl Work for PermitCall {
    fn script() -> &'static LuaScript {
        &PERMIT
    }

    fn args(&self) -> usize {
        6
    }

    fn bytes(&self) -> usize {
        self.key.len() + 16 + 32 + 24 * 5
    }

    fn first_key(&self) -> &str {
        &self.key
    }

    /// `EVALSHA` of the permit script: each set once in KEYS, the call's one time (the
    /// latest any operation asked for), then five arguments per operation, in order.
    fn command(batch: &[&Self]) -> redis::Cmd {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        let mut keys: Vec<&str> = Vec::with_capacity(batch.len());
        for call in batch {
            index.entry(call.key.as_str()).or_insert_with(|| {
                keys.push(&call.key);
                keys.len()
            });
        }
        let args = 4 + keys.len() + 5 * batch.len();
        let bytes = 64 + keys.iter().map(|k| k.len() + 16).sum::<usize>() + 40 * args;
        let mut command = redis::Cmd::with_capacity(args, bytes);
        command
            .arg("EVALSHA")
            .arg(PERMIT.sha())
            .arg(keys.len())
            .arg(&keys[..]);
        command.arg(batch.iter().map(|call| call.now).max().unwrap_or(-1));
        for call in batch {
            command
                .arg(call.call as i64)
                .arg(index[call.key.as_str()])
                .arg(call.id.to_string())
                .arg(call.max)
                .arg(call.lease);
        }
        command
    }

    fn count(counters: &Counters, items: usize) {
        counters.count_permits(items);
    }
}

/// Why a call brought no answer.
enum Failed {
    /// Redis could not answer (or the breaker is open): the failure policy decides; the
    /// breaker's cooldown is the wait a closed policy reports.
    Outage(Error, Duration),
    /// Redis answered with an error about this request.
    Refused(Error),
}

impl<C: Clock> RedisStore<C> {
    /// Runs `call` for `permit`, counting it for the circuit breaker.
    async fn permit_call(
        &self,
        limit: &Concurrency,
        key: &str,
        call: Call,
        permit: PermitId,
    ) -> Result<Vec<i64>, Failed> {
        if let Gate::Open(wait) = self.breaker.gate() {
            let error = store_error(format!(
                "{}: skipped while Redis is failing (circuit open)",
                self.url
            ));
            return Err(Failed::Outage(error, wait));
        }
        let now = if self.send_time {
            i64::try_from(self.clock.now_nanos() / UNIT_NS).unwrap_or(i64::MAX)
        } else {
            -1
        };
        let work = PermitCall {
            key: keys::permit_key(&self.prefix, limit, key),
            call,
            id: permit,
            max: limit.max(),
            lease: i64::try_from(limit.lease_time().as_micros()).unwrap_or(i64::MAX),
            now,
        };
        let (reply, counted) = match &self.permit_batcher {
            Some(batcher) => (batcher.call(work).await, true),
            None => {
                self.counters.count_permits(1);
                let call =
                    tokio::time::timeout(self.timeout, batch::send_alone(&self.connection, &work));
                (call.await.unwrap_or_else(|_| Err(timed_out())), false)
            }
        };
        match reply {
            Ok(value) => {
                if !counted {
                    self.breaker.success();
                }
                let numbers = integers(&value).ok_or_else(|| {
                    Failed::Refused(store_error(format!(
                        "{}: unexpected reply to the permit script: {value:?}",
                        self.url
                    )))
                })?;
                if let Some(&reclaimed) = numbers.last() {
                    let reclaimed = u64::try_from(reclaimed).unwrap_or(0);
                    self.counters
                        .reclaimed_permits
                        .fetch_add(reclaimed, Ordering::Relaxed);
                }
                Ok(numbers)
            }
            Err(e) if !unavailable(&e) => {
                if !counted {
                    self.breaker.success();
                }
                Err(Failed::Refused(self.error(&e)))
            }
            Err(e) => {
                if !counted {
                    self.breaker.failure();
                }
                Err(Failed::Outage(self.error(&e), self.breaker.cooldown()))
            }
        }
    }

    /// `limit` as the local fallback enforces it: `max` scaled by the share, at least 1.
    fn local_limit(limit: &Concurrency, share: f64) -> Result<Concurrency, Error> {
        let max = ((f64::from(limit.max()) * share).floor() as u32).max(1);
        let scaled = if limit.name().is_empty() {
            Concurrency::new(max)?
        } else {
            Concurrency::named(limit.name(), max)?
        };
        scaled.lease(limit.lease_time())
    }
}

impl<C: Clock> ConcurrencyStore for RedisStore<C> {
    async fn permit_acquire(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<PermitAnswer, Error> {
        let (error, wait) = match self.permit_call(limit, key, Call::Acquire, permit).await {
            Ok(reply) => return acquired(&reply).ok_or_else(|| self.bad_reply(&reply)),
            Err(Failed::Refused(error)) => return Err(error),
            Err(Failed::Outage(error, wait)) => (error, wait),
        };
        match self.fallback.policy_named(limit.name()) {
            FailurePolicy::Allow => {
                Ok(PermitAnswer::granted(0).with_source(DecisionSource::FailOpen))
            }
            FailurePolicy::Deny => {
                Ok(PermitAnswer::full(0, wait).with_source(DecisionSource::FailClosed))
            }
            FailurePolicy::Local { share } => {
                let local = Self::local_limit(limit, share)?;
                let answer = self
                    .fallback
                    .local()
                    .permit_acquire(&local, key, permit)
                    .await?;
                Ok(answer.with_source(DecisionSource::LocalFallback))
            }
            _ => Err(error),
        }
    }

    async fn permit_release(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        // A permit the local fallback granted is released there; releasing an id it does
        // not hold does nothing.
        if let FailurePolicy::Local { share } = self.fallback.policy_named(limit.name()) {
            let local = Self::local_limit(limit, share)?;
            self.fallback
                .local()
                .permit_release(&local, key, permit)
                .await?;
        }
        match self.permit_call(limit, key, Call::Release, permit).await {
            Ok(_) => Ok(()),
            // Unreleased, the permit ends with its lease.
            Err(Failed::Outage(error, _) | Failed::Refused(error)) => Err(error),
        }
    }

    async fn permit_renew(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        let error = match self.permit_call(limit, key, Call::Renew, permit).await {
            Ok(reply) if reply.first() == Some(&1) => return Ok(()),
            Ok(reply) if reply.first() == Some(&0) => {
                return Err(Error::PermitExpired { permit });
            }
            Ok(reply) => return Err(self.bad_reply(&reply)),
            Err(Failed::Refused(error)) => return Err(error),
            Err(Failed::Outage(error, _)) => error,
        };
        match self.fallback.policy_named(limit.name()) {
            // Failing open, the holder keeps its permit.
            FailurePolicy::Allow => Ok(()),
            FailurePolicy::Local { share } => {
                let local = Self::local_limit(limit, share)?;
                match self
                    .fallback
                    .local()
                    .permit_renew(&local, key, permit)
                    .await
                {
                    // Not a local permit: Redis granted it, and cannot renew it now.
                    Err(Error::PermitExpired { .. }) => Err(error),
                    result => result,
                }
            }
            _ => Err(error),
        }
    }
}

impl<C: Clock> RedisStore<C> {
    fn bad_reply(&self, reply: &[i64]) -> Error {
        store_error(format!(
            "{}: unexpected reply to the permit script: {reply:?}",
            self.url
        ))
    }
}

/// `{ granted, in_flight, retry_after_us, reclaimed }` as an answer.
fn acquired(reply: &[i64]) -> Option<PermitAnswer> {
    let &[granted, in_flight, retry_us, _] = reply else {
        return None;
    };
    let in_flight = u32::try_from(in_flight).ok()?;
    match granted {
        1 => Some(PermitAnswer::granted(in_flight)),
        0 => {
            let retry = Duration::from_micros(u64::try_from(retry_us).ok()?.max(1));
            Some(PermitAnswer::full(in_flight, retry))
        }
        _ => None,
    }
}

/// An array of integers (Lua numbers come back as integers).
fn integers(value: &Value) -> Option<Vec<i64>> {
    let Value::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|item| match item {
            Value::Int(n) => Some(*n),
            _ => None,
        })
        .collect()
}
