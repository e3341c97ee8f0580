//! `Decision`: what a store answered for one request.

use std::fmt;
use std::time::Duration;

use crate::gcra::Verdict;

/// Which path produced a [`Decision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecisionSource {
    /// The store decided (the normal case).
    Store,
    /// A store-side cache answered without a round trip (a remembered denial).
    Cache,
    /// The store failed and a local in-memory limiter decided instead.
    LocalFallback,
    /// The store failed and the failure policy allowed the request.
    FailOpen,
    /// The store failed and the failure policy denied the request.
    FailClosed,
    /// Admitted from tokens this node leased from the shared store earlier (Redis token
    /// leasing); `remaining` is what is left of that lease.
    Lease,
}

/// The answer to a request: allowed or denied, and the state of the deciding limit.
///
/// An allowed `check` reports the state after its charge; a denied one reports the state
/// now, unchanged; `peek` reports the state now.
///
/// ```
/// # use floodgate::{Policy, RateLimiter};
/// # async fn run() -> Result<(), floodgate::Error> {
/// let policy = Policy::parse("api", "5/s burst 10")?;
/// let d = RateLimiter::in_memory().check(&policy, "user:42").await?;
/// assert!(d.is_allowed());
/// assert_eq!((d.limit(), d.remaining()), (10, 9));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Decision {
    allowed: bool,
    source: DecisionSource,
    decided_by: usize,
    limit: u64,
    // Kept raw and converted when asked for: most callers only look at `is_allowed`.
    /// Capacity left in the deciding limit, in time units; `remaining = left / interval`.
    left: u64,
    interval: u64,
    /// Waits in time units of `unit_ns` nanoseconds.
    retry_after: u64,
    reset_after: u64,
    unit_ns: u64,
    /// Built from a verdict (the refill arithmetic is known), not from parts.
    exact: bool,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Decision {
    /// An allowance by the first limit, of capacity `limit` with `remaining` tokens left
    /// and nothing to wait for (what a store that cannot compute the state answers, such as
    /// a fail-open decision). [`decided_by`](Self::with_decided_by) and
    /// [`reset_after`](Self::with_reset_after) can be set after.
    pub fn allow(limit: u64, remaining: u64) -> Self {
        Decision {
            allowed: true,
            source: DecisionSource::Store,
            decided_by: 0,
            limit,
            left: remaining,
            interval: 1,
            retry_after: 0,
            reset_after: 0,
            unit_ns: 1,
            exact: false,
        }
    }

    /// A denial by the first limit, of capacity `limit`, that may be retried after
    /// `retry_after` (its bucket full again then too, unless
    /// [`with_reset_after`](Self::with_reset_after) says otherwise).
    pub fn deny(limit: u64, retry_after: Duration) -> Self {
        Decision {
            allowed: false,
            retry_after: nanos(retry_after),
            reset_after: nanos(retry_after),
            ..Decision::allow(limit, 0)
        }
    }

    /// The same decision, decided by limit `index` of the policy.
    #[must_use]
    pub fn with_decided_by(mut self, index: usize) -> Self {
        self.decided_by = index;
        self
    }

    /// The same decision, with every limit full again after `reset_after` (rounded up to
    /// the decision's time unit).
    #[must_use]
    pub fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = nanos(reset_after).div_ceil(self.unit_ns);
        self
    }

    /// Builds a decision from a [`evaluate`](crate::store::evaluate) verdict computed in
    /// units of `unit_ns` nanoseconds (public as [`store::decision`](crate::store::decision)).
    #[inline]
    pub(crate) fn from_verdict(verdict: &Verdict, unit_ns: u64) -> Self {
        Decision {
            allowed: verdict.allowed,
            source: DecisionSource::Store,
            decided_by: verdict.decided_by,
            limit: verdict.burst,
            left: verdict.left,
            interval: verdict.interval.max(1),
            retry_after: if verdict.allowed {
                0
            } else {
                verdict.retry_after
            },
            reset_after: verdict.reset_after,
            unit_ns: unit_ns.max(1),
            exact: true,
        }
    }

    /// The same decision, marked as produced by `source`.
    #[must_use]
    pub fn with_source(mut self, source: DecisionSource) -> Self {
        self.source = source;
        self
    }

    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }
    /// Index of the deciding limit in [`Policy::limits`](crate::Policy::limits): for a
    /// denial the one with the longest wait, for an allowance the one with the fewest tokens
    /// left; ties go to the lowest index.
    pub fn decided_by(&self) -> usize {
        self.decided_by
    }
    /// The burst (capacity) of the deciding limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// Whole tokens left in the deciding limit.
    pub fn remaining(&self) -> u64 {
        self.left / self.interval
    }
    /// How long until the same request would be admitted; zero when allowed. Exact: a retry
    /// one time unit earlier is denied, a retry at it is admitted (absent other traffic).
    pub fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after.saturating_mul(self.unit_ns))
    }
    /// How long until the deciding limit holds at least one whole token: zero while
    /// `remaining() > 0`. (For the wait of a request of some cost, see
    /// [`retry_after`](Self::retry_after).)
    pub fn next_token_after(&self) -> Duration {
        if self.left >= self.interval {
            Duration::ZERO
        } else if !self.exact {
            // Built from parts: the refill time is unknown; the wait is the best bound.
            self.retry_after()
        } else {
            Duration::from_nanos((self.interval - self.left).saturating_mul(self.unit_ns))
        }
    }

    /// How long until every limit of the policy is full again.
    pub fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after.saturating_mul(self.unit_ns))
    }
    /// Which path produced this decision.
    pub fn source(&self) -> DecisionSource {
        self.source
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        (
            self.allowed,
            self.source,
            self.decided_by,
            self.limit,
            self.remaining(),
        ) == (
            other.allowed,
            other.source,
            other.decided_by,
            other.limit,
            other.remaining(),
        ) && (self.retry_after(), self.reset_after()) == (other.retry_after(), other.reset_after())
    }
}

impl Eq for Decision {}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.allowed)
            .field("decided_by", &self.decided_by)
            .field("limit", &self.limit)
            .field("remaining", &self.remaining())
            .field("retry_after", &self.retry_after())
            .field("reset_after", &self.reset_after())
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_constructors_say_what_they_build() {
        let open = Decision::allow(10, 4);
        assert!(open.is_allowed());
        assert_eq!(
            (open.decided_by(), open.limit(), open.remaining()),
            (0, 10, 4)
        );
        assert_eq!(
            (open.retry_after(), open.reset_after()),
            (Duration::ZERO, Duration::ZERO)
        );

        let closed = Decision::deny(10, Duration::from_millis(250))
            .with_decided_by(1)
            .with_reset_after(Duration::from_secs(2));
        assert!(!closed.is_allowed());
        assert_eq!(
            (closed.decided_by(), closed.limit(), closed.remaining()),
            (1, 10, 0)
        );
        assert_eq!(closed.retry_after(), Duration::from_millis(250));
        assert_eq!(closed.reset_after(), Duration::from_secs(2));
        assert_eq!(
            Decision::deny(1, Duration::from_millis(7)).reset_after(),
            Duration::from_millis(7),
            "a denial's bucket is full again when it may be retried, unless told otherwise"
        );
    }

    #[test]
    fn reset_after_is_kept_in_the_decisions_own_unit() {
        // A decision computed in microseconds: a reset set in nanoseconds rounds up to a µs
        // and leaves the retry unchanged.
        let verdict = crate::gcra::Verdict::of(
            &[crate::gcra::Rate::new(1_000, 1)],
            &[2_000],
            0,
            0,
            false,
            500,
            false,
        );
        let decision =
            Decision::from_verdict(&verdict, 1_000).with_reset_after(Duration::from_nanos(1_500));
        assert_eq!(decision.retry_after(), Duration::from_micros(500));
        assert_eq!(decision.reset_after(), Duration::from_micros(2));
    }
}
