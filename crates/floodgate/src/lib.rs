//! floodgate: a fast, exact token-bucket rate limiter.
//!
//! A [`Limit`] is a token bucket: a capacity (the burst) refilled continuously at a
//! sustained rate, so legitimate bursts pass and the long-term average is capped. A
//! [`Policy`] names one or more limits checked together, all or nothing. A [`RateLimiter`]
//! answers each request with a [`Decision`], keeping bucket state in a [`Store`]: the
//! in-process [`MemoryStore`] here, or a shared store such as Redis from another crate.
//!
//! ```
//! use floodgate::{Limit, Policy, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), floodgate::Error> {
//! // The free plan: 5 requests per second with bursts of 10, and at most 1000 a day.
//! let free = Policy::parse("free", "5/s burst 10; 1000/day")?;
//! assert_eq!(free, Policy::new("free", [Limit::per_second(5).burst(10), Limit::per_day(1_000)])?);
//!
//! let limiter = RateLimiter::in_memory();
//! let mut allowed = 0;
//! for _ in 0..15 {
//!     if limiter.check(&free, "user:42").await?.is_allowed() {
//!         allowed += 1;
//!     }
//! }
//! assert_eq!(allowed, 10); // the burst passes, the rest waits for the refill
//!
//! let denied = limiter.check(&free, "user:42").await?;
//! println!("retry in {:?}", denied.retry_after()); // about 200 ms: one token at 5/s
//!
//! // Background jobs wait for capacity instead of failing:
//! let mailer = Policy::parse("mailer", "100/s")?;
//! limiter.until_ready(&mailer, "smtp", 1).await?;
//! # Ok(()) }
//! ```
//!
//! Cargo features: `tokio` (default) sleeps on tokio's timer in `until_ready` when inside a
//! tokio runtime (elsewhere a small timer thread is used); `serde` (de)serializes `Limit`
//! and `Policy` as rate notation; `login` adds [`login::LoginGuard`], brute-force protection
//! for logins (limits per IP, username and pair, an escalating lockout, known devices) on
//! any store. [`ip`] keys client addresses (IPv6 by /64). See the [`guide`] for the
//! algorithm, the memory store's design, choosing a store and the login guard's proofs.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod clock;
pub mod concurrency;
mod decision;
mod error;
mod failure;
mod gcra;
pub mod guide;
pub mod ip;
mod limit;
mod limiter;
#[cfg(feature = "login")]
#[cfg_attr(docsrs, doc(cfg(feature = "login")))]
pub mod login;
mod notation;
pub mod store;
mod sync;

#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use concurrency::{Acquisition, Concurrency, Full, Permit, PermitId};
pub use decision::{Decision, DecisionSource};
pub use error::{BoxError, Error};
pub use failure::FailurePolicy;
pub use limit::{Limit, MAX_LIMITS, MAX_NAME_LEN, Policy, is_name_char};
pub use limiter::RateLimiter;
pub use store::memory::{DEFAULT_MAX_KEYS, MemoryStore, MemoryStoreBuilder};
pub use store::{ConcurrencyStore, Store};
