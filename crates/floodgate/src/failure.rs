//! What a decision does when a shared store cannot answer: one vocabulary for every store
//! and front end (the Redis store's `on_failure`, the server's `on_error`).

/// What a decision does when the store cannot answer (unreachable, timed out, or an error
/// reply). Stores that can fail take one (`floodgate_redis::RedisStoreBuilder::on_failure`);
/// the memory store never fails.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Return [`Error::Store`](crate::Error::Store) and let the caller decide (the default).
    Error,
    /// Allow the request ("fail open"): availability over protection.
    Allow,
    /// Deny the request ("fail closed"): protection over availability; the denial's
    /// `retry_after` is the time until the store is tried again.
    Deny,
    /// Decide with an in-memory limiter on this node given `share` (0 < share ≤ 1) of every
    /// limit: with N application nodes, `1/N` keeps the whole fleet near the real limit.
    /// Counts and bursts are scaled down (never below 1).
    Local {
        /// The fraction of each limit this node may use while the store is down.
        share: f64,
    },
}

impl FailurePolicy {
    /// Why this failure policy cannot be used, if it cannot: a `Local` share outside
    /// (0, 1]. The reason is about the share; callers name the setting that holds it.
    /// Stores check it when they are built.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            FailurePolicy::Local { share } if !(share > 0.0 && share <= 1.0) => {
                Err(format!("must be above 0 and at most 1, got {share}"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_share_in_the_unit_interval_is_valid() {
        for share in [f64::MIN_POSITIVE, 0.25, 1.0] {
            assert_eq!(FailurePolicy::Local { share }.validate(), Ok(()));
        }
        for share in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let reason = FailurePolicy::Local { share }.validate().unwrap_err();
            assert!(reason.contains("above 0 and at most 1"), "{reason}");
        }
        assert_eq!(FailurePolicy::Deny.validate(), Ok(()));
    }
}
