//! The error type: impossible requests, bad input and store failures.
//!
//! Being rate limited is not an error; it is a [`Decision`](crate::Decision).

use std::time::Duration;

/// A boxed error from a store's backend, kept as the [`Error::Store`] source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in floodgate, other than being rate limited.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Rate notation that does not parse, pointing at the offending text.
    #[error("rate \"{input}\": {reason} at position {position}")]
    Parse {
        /// The whole text that was parsed.
        input: String,
        /// Byte offset of the offending text in `input`.
        position: usize,
        /// What is wrong there.
        reason: String,
    },
    /// A limit that parses but cannot be enforced (zero count, period or burst, a window too
    /// long, a rate too fast to represent).
    #[error("invalid limit \"{limit}\": {reason}")]
    InvalidLimit {
        /// The limit, in canonical notation.
        limit: String,
        /// Which value is wrong and why.
        reason: String,
    },
    /// A policy that cannot be built (bad name, no limits, too many limits).
    #[error("invalid policy \"{name}\": {reason}")]
    InvalidPolicy {
        /// The policy's name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A cost that no request may have (zero).
    #[error("invalid cost {cost}: {reason}")]
    InvalidCost {
        /// The cost given.
        cost: u32,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The request costs more than a limit's burst: it can never succeed, so it is refused
    /// outright and nothing is charged.
    #[error(
        "cost {cost} exceeds the burst {burst} of the policy's limit: it can never be admitted"
    )]
    CostExceedsBurst {
        /// The cost of the request.
        cost: u32,
        /// The burst of the first limit that is smaller than the cost.
        burst: u64,
    },
    /// `until_ready_timeout` would have to wait longer than its timeout.
    #[error("waiting for capacity would take {retry_after:?}, longer than the timeout")]
    Timeout {
        /// How long the wait would have been from the moment the timeout was decided.
        retry_after: Duration,
    },
    /// A configuration knob with a value that cannot work.
    #[error("invalid setting `{knob}`: {reason}")]
    InvalidConfig {
        /// The knob's name.
        knob: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A permit id that does not parse (see [`PermitId`](crate::PermitId)).
    #[error("invalid permit id \"{permit}\": {reason}")]
    InvalidPermit {
        /// The text given (at most 64 characters of it).
        permit: String,
        /// What a permit id looks like.
        reason: &'static str,
    },
    /// A permit's lease ended on the store's clock before it was renewed: the store has
    /// reclaimed it, and its slot may be someone else's.
    #[error("permit {permit} has expired: its lease ended before the renew reached the store")]
    PermitExpired {
        /// The permit's id.
        permit: crate::PermitId,
    },
    /// The store failed and its failure policy says to surface the error.
    #[error("rate limit store failed: {0}")]
    Store(#[source] BoxError),
}

impl Error {
    /// Wraps a store backend's error as [`Error::Store`].
    pub fn store(error: impl Into<BoxError>) -> Self {
        Error::Store(error.into())
    }
}
