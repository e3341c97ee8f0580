//! A Redis store for [`floodgate`]: many application instances share one set of
//! token buckets, each decision atomic, decisions batched into shared round trips.
//!
//! Every decision runs a Lua script inside Redis that reads, checks and updates all limits
//! of a policy at once, on the Redis server's clock (so application nodes with skewed clocks
//! cannot over-admit). Keys carry a TTL of the time until their bucket is full again.
//!
//! ```no_run
//! use floodgate::{Policy, RateLimiter};
//! use floodgate_redis::RedisStore;
//!
//! # async fn run() -> Result<(), floodgate::Error> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let limiter = RateLimiter::new(store);
//! let free = Policy::parse("free", "5/s burst 10; 1000/day")?;
//! let decision = limiter.check(&free, "user:42").await?;
//! # Ok(()) }
//! ```
//!
//! URLs: `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS (feature `tls`; a
//! private CA via [`RedisStoreBuilder::tls_root_certificate`]), and
//! `redis+cluster://[user:password@]host:port,host:port` for a Cluster
//! (`rediss+cluster://…` over TLS, every node verified against the same roots), and
//! `redis+sentinel://[user:password@]h1:26379,h2:26379/master-name` for a master behind
//! Sentinel (`rediss+sentinel://…` over TLS; the Sentinels' own password is
//! [`RedisStoreBuilder::sentinel_password`]). Passwords never appear in `Debug` output or
//! error messages.
//!
//! # Sentinel
//!
//! The store asks the Sentinels in turn for the master and connects to it. It follows a
//! failover: it subscribes to `+switch-master` (and checks every second without an
//! announcement) and moves to the new master once that answers `ROLE` as a master; a
//! `READONLY` reply — the old master, demoted, refused the write, so nothing ran — moves
//! it and sends the request again there; a lost connection makes it ask the Sentinels
//! again, and the request, whose outcome is unknown, is not replayed. Writes the old master
//! accepted after the promotion are lost with it: at most a burst per key, plus what
//! refills while the store still wrote there. [`RedisStats::master_switches`] counts the
//! moves. Batching works behind Sentinel as on a standalone server.
//!
//! # Keys
//!
//! The state of limit `i` of `(policy, key)` lives at `{prefix}fg1{tag}i`, where `tag` is 14
//! URL-safe base64 digits (84 bits) of a SHA-1 digest of the policy name and your key, for
//! example `fg1{Qk3v0F9aZx2mT1}0` (20 bytes). So keys of any length make short Redis keys, braces in
//! your keys never form a Cluster hash tag, all limits of one key share a hash slot, and
//! keys spread evenly over slots. Two keys share a bucket only if their 84-bit tags collide:
//! about one chance in 4 × 10^11 among ten million live keys. `fg1` is the layout version: a
//! future layout will use another, so both can coexist during a rolling upgrade.
//!
//! # Connections and batching
//!
//! Calls from all tasks are pipelined on one multiplexed connection per node. For a
//! standalone server, [`RedisStoreBuilder::connections`] opens several that calls take
//! turns on.
//!
//! **Exact batching** (on by default, [`RedisStoreBuilder::batching`]): the decisions
//! waiting for a connection go to Redis as one call of a batch script, which decides them
//! in order, each exactly as the single-decision script would decide it alone, one after
//! another, at the batch's Redis time — the same answers, the same stored values, the same
//! TTLs. The key layout does not change, so during a rolling upgrade older clients (one call
//! per decision) and batching ones share buckets exactly. There is no timer: at most two
//! batches await their replies per connection, and the next takes everything queued
//! meanwhile, so at low load a batch holds one decision and latency is that of a single
//! call. A batch holds at most 256 decisions (and 8 192 arguments, 256 KiB).
//!
//! The script reads and validates every decision before its first write: a bad argument or
//! a corrupted stored value fails only that decision (its caller gets the error a single
//! call would have), and a call that fails writes nothing. A batch whose reply is lost is
//! never resent: each of its callers gets its failure policy once, and the circuit breaker
//! counts one failure for the batch. [`RedisStore::stats`] counts script calls and the
//! decisions they carried.
//!
//! On a **Cluster**, batching is **off by default**: the declared keys of one script call
//! must share a slot (a script touching undeclared keys on other slots breaks with
//! migrations and redirects), so a batch can only hold the decisions waiting for one hash
//! slot. Measured on a local 3-master Cluster, that is 1.66× the throughput of one call per
//! decision on a hot key, but 0.63× on random keys, whose batches hold one decision each.
//! `batching(true)` turns per-slot batching on, for deployments dominated by hot keys;
//! redirects (MOVED, ASK, READONLY) are followed for a batch as for a single call, and a
//! batch is never resent on an unknown outcome.
//!
//! # Token leasing
//!
//! Opt-in per policy ([`RedisStoreBuilder::lease`], [`RedisStoreBuilder::lease_for`]): a key
//! this node decides at least twice per lease time `L` takes a share of its tokens from
//! Redis in one call — about what it used in the last `L`, at most a quarter of the
//! smallest burst, the same number from every limit, all or nothing — and spends them here
//! until the lease ends, `L` after the request was sent. Such admissions report
//! [`DecisionSource::Lease`](floodgate::DecisionSource::Lease), with `remaining` the tokens
//! left in the lease. Unspent tokens expire; they are never returned. Over any window Δ a
//! key admits at most `B + ⌊r·(Δ + L)⌋` (the proof is in floodgate's guide); a `reset`
//! drops this node's lease only, so across it a window admits at most `2B + ⌊r·(Δ + L)⌋`.
//! Keys used less often are decided one exact call at a time. `charge` and `peek` always
//! go to Redis. [`RedisStore::lease_tokens`] counts leased, spent and expired tokens.
//!
//! # Policy changes
//!
//! State is keyed by the policy's *name*: changing a policy's rates under the same name keeps
//! the stored TATs and reads them with the new rates (a throttled key stays throttled for at
//! most its old debt). Rename the policy to start from full buckets.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod batch;
mod builder;
mod cache;
mod connection;
mod failure;
mod keys;
mod lease;
mod permits;
mod reply;
mod sentinel;
mod store;
mod url;

/// The failure policy lives in the core, shared by every store and front end.
pub use floodgate::FailurePolicy;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub use builder::{MAX_CONNECTIONS, RedisStoreBuilder, check_connections};
pub use failure::BreakerState;
pub use store::{LeaseTokens, RedisHealth, RedisStats, RedisStore};
pub use url::redact_url;

/// The README's examples (core and Redis), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
