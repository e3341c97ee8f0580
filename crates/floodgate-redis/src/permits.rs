//! Concurrency permits in Redis: one script call per acquire, release and renew (see
//! `scripts/permit.lua`), on Redis's clock, with the store's failure policies.
//!
//! Like a decision, a call whose outcome is unknown is never sent again: the caller's
//! failure policy answers. A lost acquire reply leaves at most a permit that ends with its
//! lease; when a failure policy granted a permit under the same id instead, that permit's
//! release removes it from Redis too.

use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::store::PermitAnswer;
use floodgate::{
    Clock, Concurrency, ConcurrencyStore, DecisionSource, Error, FailurePolicy, PermitId,
};
use redis::Value;

use crate::connection::PERMIT;
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
        let redis_key = keys::permit_key(&self.prefix, limit, key);
        let now = if self.send_time {
            i64::try_from(self.clock.now_nanos() / UNIT_NS).unwrap_or(i64::MAX)
        } else {
            -1
        };
        let lease = i64::try_from(limit.lease_time().as_micros()).unwrap_or(i64::MAX);
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(PERMIT.sha())
            .arg(1)
            .arg(&redis_key)
            .arg(call as i64)
            .arg(permit.to_string())
            .arg(limit.max())
            .arg(lease)
            .arg(now);
        self.counters.permit_calls.fetch_add(1, Ordering::Relaxed);
        let reply = tokio::time::timeout(
            self.timeout,
            self.connection.script(&PERMIT, &command, &redis_key),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out()));
        match reply {
            Ok(value) => {
                self.breaker.success();
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
                self.breaker.success();
                Err(Failed::Refused(self.error(&e)))
            }
            Err(e) => {
                self.breaker.failure();
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
