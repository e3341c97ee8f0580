//! The seam between the [`RateLimiter`](crate::RateLimiter) facade and where bucket state
//! lives.

use std::future::Future;

use crate::{Clock, Decision, Error, Policy};

pub(crate) mod memory;

/// Where bucket state lives, and the atomic check-and-consume on it.
///
/// Each method acts on every limit of `policy` for `key` at once and atomically: no other
/// caller observes or changes the state between the check and the update, and a denial by
/// one limit charges none. The facade validates costs before calling (`1 ≤ cost`, and for
/// `acquire`, `cost ≤` every limit's burst); stores must still never panic on other input.
///
/// Methods return `impl Future + Send` so generic callers can rely on `Send` futures;
/// dispatch is static.
pub trait Store: Send + Sync + 'static {
    /// The clock `until_ready` sleeps on. A store that decides on a remote clock still
    /// sleeps locally: the waits it reports are relative.
    type Clock: Clock;

    /// Whether `acquire` itself rejects a zero cost and a cost above a burst (with the same
    /// errors), so the facade need not check twice.
    const VALIDATES_COST: bool = false;

    /// The clock this store's waits are measured against.
    fn clock(&self) -> &Self::Clock;

    /// Checks `cost` tokens against every limit and consumes them from all if all have
    /// room. A denied decision reports the unchanged state.
    fn acquire(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;

    /// Reports the current state without consuming; `is_allowed` tells whether a cost-1
    /// acquire would pass.
    fn peek(
        &self,
        policy: &Policy,
        key: &str,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;

    /// Forgets the state of every limit of `policy` for `key` (its buckets become full).
    fn reset(&self, policy: &Policy, key: &str) -> impl Future<Output = Result<(), Error>> + Send;

    /// Consumes `cost` tokens from every limit without checking, capping the debt at one
    /// burst below empty, and reports the state after.
    fn charge(
        &self,
        policy: &Policy,
        key: &str,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, Error>> + Send;
}
