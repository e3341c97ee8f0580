//! `RedisStore`: the `Store` implementation over one Redis server.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate::gcra::{self, Op, Rate, Verdict};
use floodgate::{
    Clock, Decision, Error, FailurePolicy, Limit, ManualClock, MonotonicClock, Policy, Store,
};

use crate::cache::DenyCache;
use crate::connection::Connection;
use crate::failure::{Breaker, Fallback, Gate};
use crate::keys;

/// Microseconds: Redis decisions' time unit (Lua numbers are exact to 2^53).
const UNIT_NS: u64 = 1_000;
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BREAKER_FAILURES: u32 = 3;
const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(250);
const DEFAULT_DENY_CACHE: usize = 100_000;

/// The decision script's first two arguments for `op`: its code (1 acquire, 2 peek,
/// 3 charge) and its cost.
fn wire(op: Op) -> [i64; 2] {
    match op {
        Op::Acquire(cost) => [1, i64::from(cost)],
        Op::Peek => [2, 1],
        Op::Charge(cost) => [3, i64::from(cost)],
    }
}

/// Bucket state in Redis, shared by every process that uses the same server and prefix.
///
/// Cheap to clone: clones share the multiplexed connection(s), which reconnect by themselves
/// after the server restarts. A request whose outcome is unknown (a timeout, a connection
/// lost after sending) is never sent again: it surfaces as [`Error::Store`]. A script
/// missing from the server's cache (after a restart, failover or `SCRIPT FLUSH`) is loaded
/// and the call retried transparently: that error means the script never ran.
#[derive(Clone)]
pub struct RedisStore<C: Clock = MonotonicClock> {
    connection: Connection,
    prefix: Arc<str>,
    timeout: Duration,
    clock: C,
    /// Send the clock's time to the script instead of using Redis's `TIME` (tests only).
    send_time: bool,
    url: Arc<str>,
    fallback: Arc<Fallback>,
    breaker: Arc<Breaker>,
    cache: Option<Arc<DenyCache>>,
}

/// Builds a [`RedisStore`].
#[must_use]
pub struct RedisStoreBuilder<C: Clock = MonotonicClock> {
    url: String,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    clock: C,
    send_time: bool,
    on_failure: FailurePolicy,
    overrides: HashMap<String, FailurePolicy>,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    deny_cache: usize,
    root_certificate: Option<Vec<u8>>,
    connections: usize,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) with default settings.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::builder(url).build().await
    }

    /// A builder for the key prefix, timeouts and (for tests) a manual clock.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.to_owned(),
            prefix: String::new(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            clock: MonotonicClock::new(),
            send_time: false,
            on_failure: FailurePolicy::Error,
            overrides: HashMap::new(),
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            deny_cache: DEFAULT_DENY_CACHE,
            root_certificate: None,
            connections: 1,
        }
    }
}

impl<C: Clock> RedisStoreBuilder<C> {
    /// A prefix for every key this store writes (default none), to share a Redis server
    /// between applications. Must not contain `{` or `}`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one decision may take before it fails with [`Error::Store`] (default
    /// 100 ms). A timed-out request is not retried: it may or may not have been applied.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// What decisions do when Redis cannot answer (default [`FailurePolicy::Error`]).
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_failure = policy;
        self
    }

    /// The failure policy for one policy name, overriding [`on_failure`](Self::on_failure)
    /// (for example `Deny` for logins, `Allow` for reads).
    pub fn on_failure_for(mut self, policy_name: impl Into<String>, policy: FailurePolicy) -> Self {
        self.overrides.insert(policy_name.into(), policy);
        self
    }

    /// The circuit breaker: after `failures` consecutive failures (default 3), decisions skip
    /// Redis and follow the failure policy at once; after `cooldown` (default 250 ms) one
    /// decision probes Redis again, and normal service resumes when it succeeds.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker_failures = failures;
        self.breaker_cooldown = cooldown;
        self
    }

    /// How many multiplexed connections to a standalone server calls take turns on
    /// (default 1, at most 64). One pipelined connection carries tens of thousands of
    /// decisions a second; a few let Redis work on one batch while the replies of another
    /// travel back, for nodes that make more decisions than that. A Cluster keeps one
    /// connection per node: the setting must stay 1 there.
    pub fn connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// How many denied keys this node remembers (default 100 000; 0 turns the cache off).
    /// While Redis's last answer for a key still denies, later checks of that key are
    /// denied here without a round trip, with the same arithmetic; anything that might pass
    /// goes to Redis. A reset through this store clears the key at once; a reset made on
    /// another node is seen here at the latest when the denial this node reported runs out.
    pub fn deny_cache(mut self, capacity: usize) -> Self {
        self.deny_cache = capacity;
        self
    }

    /// For `rediss://` and `rediss+cluster://` (feature `tls`): trust the certificate
    /// authority in `pem` (a private CA) instead of the system's roots.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate = Some(pem.into());
        self
    }

    /// **For tests only**: decide on `clock` instead of the Redis server's `TIME`, so a test
    /// can drive Redis-backed decisions with a [`ManualClock`]. Never use it in production:
    /// nodes with different clocks would disagree about every bucket.
    pub fn manual_clock(self, clock: ManualClock) -> RedisStoreBuilder<ManualClock> {
        RedisStoreBuilder {
            url: self.url,
            prefix: self.prefix,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            clock,
            send_time: true,
            on_failure: self.on_failure,
            overrides: self.overrides,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown,
            deny_cache: self.deny_cache,
            root_certificate: self.root_certificate,
            connections: self.connections,
        }
    }

    /// Runs every check [`build`](Self::build) makes short of connecting: the settings, and
    /// the URL (every Cluster node's) and TLS settings parsed as connecting would parse them.
    /// What `floodgate check-config` runs, so it refuses exactly what a start refuses before
    /// reaching the network.
    pub fn check(&self) -> Result<(), Error> {
        let redacted = redact_url(&self.url);
        keys::validate_prefix(&self.prefix).map_err(|reason| config("key_prefix", reason))?;
        if self.breaker_failures == 0 {
            return Err(config(
                "circuit_breaker",
                "failures must be at least 1".into(),
            ));
        }
        self.on_failure
            .validate()
            .map_err(|reason| config("on_failure", format!("local share {reason}")))?;
        for (name, policy) in &self.overrides {
            policy.validate().map_err(|reason| {
                config(
                    "on_failure_for",
                    format!("policy {name:?}: local share {reason}"),
                )
            })?;
        }
        check_connections(&self.url, self.connections).map_err(|r| config("connections", r))?;
        if self.timeout.is_zero() {
            return Err(config("timeout", "must be longer than zero".into()));
        }
        if self.url.starts_with("rediss") && !cfg!(feature = "tls") {
            return Err(config(
                "url",
                format!("{redacted}: TLS (rediss://) needs floodgate-redis's `tls` feature"),
            ));
        }
        let parsed = match self.target()? {
            Target::Cluster(nodes) => Connection::check_cluster(
                nodes,
                self.connect_timeout,
                self.root_certificate.as_deref(),
            ),
            Target::Standalone => {
                Connection::check_standalone(&self.url, self.root_certificate.as_deref())
            }
        };
        parsed.map_err(|e| self.connect_error(e))
    }

    /// A Cluster's node URLs, or a standalone server; an error for any other URL.
    fn target(&self) -> Result<Target, Error> {
        match cluster_nodes(&self.url) {
            Some(nodes) => Ok(Target::Cluster(nodes?)),
            None if ["redis://", "rediss://", "unix://"]
                .iter()
                .any(|scheme| self.url.starts_with(scheme)) =>
            {
                Ok(Target::Standalone)
            }
            None => Err(config(
                "url",
                format!(
                    "{}: expected redis://host:port, rediss://host:port, \
                     redis+cluster://host:port,host:port or rediss+cluster://host:port,host:port",
                    redact_url(&self.url)
                ),
            )),
        }
    }

    /// A connection error as the caller sees it: a bad URL is a config error, anything else
    /// a store error; the password never appears.
    fn connect_error(&self, e: redis::RedisError) -> Error {
        let redacted = redact_url(&self.url);
        if e.kind() == redis::ErrorKind::InvalidClientConfig {
            config(
                "url",
                format!("{redacted}: {}", sanitize(&e.to_string(), &self.url)),
            )
        } else {
            store_error(format!(
                "cannot connect to {redacted}: {}",
                sanitize(&e.to_string(), &self.url)
            ))
        }
    }

    /// Connects and checks the server: refuses bad URLs and settings with a clear error
    /// (everything [`check`](Self::check) refuses), and warns (a `tracing` event at WARN
    /// level) when Redis may evict limiter keys.
    pub async fn build(self) -> Result<RedisStore<C>, Error> {
        self.check()?;
        let redacted = redact_url(&self.url);
        let connect = match self.target()? {
            Target::Cluster(nodes) => {
                Connection::cluster(
                    nodes,
                    self.connect_timeout,
                    self.root_certificate.as_deref(),
                )
                .await
            }
            Target::Standalone => {
                Connection::standalone(
                    &self.url,
                    self.connect_timeout,
                    self.root_certificate.as_deref(),
                    self.connections,
                )
                .await
            }
        };
        let connection = connect.map_err(|e| self.connect_error(e))?;
        let store = RedisStore {
            connection,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            clock: self.clock,
            send_time: self.send_time,
            url: redacted.into(),
            fallback: Fallback::new(self.on_failure, self.overrides),
            breaker: Arc::new(Breaker::new(self.breaker_failures, self.breaker_cooldown)),
            cache: DenyCache::new(self.deny_cache).map(Arc::new),
        };
        store.warn_if_keys_can_be_evicted().await;
        Ok(store)
    }
}

impl<C: Clock> RedisStore<C> {
    /// Warns when `maxmemory-policy` lets Redis evict keys that carry a TTL (all of ours):
    /// an evicted bucket is a reset.
    async fn warn_if_keys_can_be_evicted(&self) {
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

    async fn decide(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        debug_assert!(op.is_validated_for(policy), "{op:?} reached the store");
        let rates = policy.rates_us().ok_or_else(|| too_fast(policy))?;
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
        let mut args = Vec::with_capacity(3 + 2 * rates.len());
        args.extend(wire(op));
        args.push(now);
        for rate in rates {
            args.push(i64::try_from(rate.interval()).unwrap_or(i64::MAX));
            args.push(i64::try_from(rate.burst()).unwrap_or(i64::MAX));
        }
        // One deadline for the whole call: reconnecting, redirects and a script reload.
        let call = tokio::time::timeout(self.timeout, self.connection.eval(&keys, &args));
        let failure = match call.await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(reply) => {
                self.breaker.success();
                let (decision, ahead) = read_reply(reply, rates)?;
                if let Some(cache) = &self.cache {
                    cache.record(policy, key, rates, self.local_micros(), &ahead);
                }
                return Ok(decision);
            }
            Err(e) if !unavailable(&e) => {
                // Redis answered, with an error about this request: not an outage.
                self.breaker.success();
                return Err(self.error(&e));
            }
            Err(e) => self.error(&e),
        };
        self.breaker.failure();
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
fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// Whether an error means Redis could not answer (an outage, for the failure policy), as
/// opposed to an error reply about this request.
fn unavailable(error: &redis::RedisError) -> bool {
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
        .find(|l| l.rate_in_unit(UNIT_NS).is_none())
        .map_or_else(String::new, Limit::to_string);
    Error::InvalidLimit {
        limit,
        reason:
            "too fast for the Redis store, which counts whole microseconds: the interval would \
                 round by more than 1%"
                .into(),
    }
}

/// The decision in a script reply: a bare integer is the single-limit admission
/// (`{1, 0, 0, ahead}`, no array to unpack), an array is read as is, anything else is an
/// invalid reply.
fn read_reply(reply: redis::Value, rates: &[Rate]) -> Result<(Decision, Vec<u64>), Error> {
    match reply {
        redis::Value::Int(ahead) => parse_reply(&[1, 0, 0, ahead], rates),
        redis::Value::Array(items) => {
            let integers: Vec<i64> = items
                .into_iter()
                .map(|v| if let redis::Value::Int(i) = v { i } else { -1 })
                .collect();
            parse_reply(&integers, rates)
        }
        _ => parse_reply(&[], rates),
    }
}

/// The decision in a script reply (`{allowed, denied_by, retry_after, ahead_1..n}`), and
/// each limit's TAT ahead of the decision time (µs).
pub(crate) fn parse_reply(reply: &[i64], rates: &[Rate]) -> Result<(Decision, Vec<u64>), Error> {
    let bad = || {
        store_error(format!(
            "unexpected reply from the decision script: {reply:?}"
        ))
    };
    if reply.len() != 3 + rates.len() {
        return Err(bad());
    }
    if reply.iter().any(|&v| v < 0) {
        return Err(bad());
    }
    let value = |i: usize| reply[i].unsigned_abs();
    let allowed = value(0) == 1;
    // Each limit's TAT relative to the decision time: the state at `now = 0`.
    let ahead: Vec<u64> = reply[3..].iter().map(|v| v.unsigned_abs()).collect();
    let decided_by = if allowed {
        gcra::fewest_tokens(rates, &ahead, 0)
    } else {
        // The script names the denying limit (the conformance suite pins it to the rule).
        usize::try_from(value(1))
            .ok()
            .filter(|&i| i < rates.len())
            .ok_or_else(bad)?
    };
    let verdict = Verdict::of(rates, &ahead, 0, decided_by, allowed, value(2), false);
    Ok((Decision::from_verdict(&verdict, UNIT_NS), ahead))
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
            .field("on_failure", &self.fallback.default)
            .field("on_failure_for", &self.fallback.overrides)
            .finish()
    }
}

impl<C: Clock> fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("connections", &self.connections)
            .field(
                "tls_root_certificate",
                &self
                    .root_certificate
                    .as_ref()
                    .map(|pem| format!("{} bytes", pem.len())),
            )
            .finish()
    }
}

/// The most connections [`RedisStoreBuilder::connections`] opens to one standalone server.
pub const MAX_CONNECTIONS: usize = 64;

/// Why `connections` connections cannot be opened to the Redis at `url`, if they cannot:
/// the count is 1 to [`MAX_CONNECTIONS`], and a Cluster keeps one connection per node.
/// [`RedisStoreBuilder::check`] applies it; front ends call it to point at their own
/// setting.
pub fn check_connections(url: &str, connections: usize) -> Result<(), String> {
    if !(1..=MAX_CONNECTIONS).contains(&connections) {
        return Err(format!(
            "must be from 1 to {MAX_CONNECTIONS}, got {connections}"
        ));
    }
    if connections > 1 && cluster_nodes(url).is_some() {
        return Err("a Cluster keeps one connection per node; leave it at 1".into());
    }
    Ok(())
}

fn config(knob: &'static str, reason: String) -> Error {
    Error::InvalidConfig { knob, reason }
}

fn store_error(message: String) -> Error {
    Error::Store(message.into())
}

/// The node URLs of a `redis+cluster://[user:password@]h1:p1,h2:p2` URL (the credentials
/// apply to every node; `rediss+cluster://` makes every node `rediss://`), or `None` for
/// another scheme.
/// Where a URL points.
enum Target {
    /// A Cluster, through these node URLs.
    Cluster(Vec<String>),
    /// One server.
    Standalone,
}

fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, Error>> {
    let (scheme, rest) = [
        ("redis://", "redis+cluster://"),
        ("rediss://", "rediss+cluster://"),
    ]
    .into_iter()
    .find_map(|(scheme, cluster)| Some((scheme, url.strip_prefix(cluster)?)))?;
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}{userinfo}{host}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(config(
            "url",
            format!("{}: no Cluster node given", redact_url(url)),
        )));
    }
    Some(Ok(nodes))
}

/// `url` with every password replaced by `***` — for each host of a Cluster list
/// (`redis+cluster://u:p@a:1,u:p@b:2`) — and everything else kept, so messages and logs can
/// name the server without the secret.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let hosts: Vec<String> = rest
        .split(',')
        .map(|host| match host.rfind('@') {
            None => host.to_owned(),
            Some(at) => {
                let userinfo = &host[..at];
                let redacted = match userinfo.find(':') {
                    Some(colon) => format!("{}:***", &userinfo[..colon]),
                    None if userinfo.is_empty() => String::new(),
                    None => "***".to_owned(),
                };
                format!("{redacted}{}", &host[at..])
            }
        })
        .collect();
    format!("{scheme}{}", hosts.join(","))
}

/// An error message with the URL's password removed, should the client library echo it.
fn sanitize(message: &str, url: &str) -> String {
    let mut message = message.replace(url, &redact_url(url));
    if let Some(password) = password(url) {
        if !password.is_empty() {
            message = message.replace(password, "***");
        }
    }
    message
}

fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://s3cret@host"), "redis://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            sanitize("failed: s3cret rejected", "redis://u:s3cret@h"),
            "failed: *** rejected"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1024)
        ))]

        /// Property version of the `redis_reply` fuzz target: whatever Redis (or something
        /// pretending to be it) replies, parsing gives a decision or an error, never a panic,
        /// and every field of an accepted decision can be read.
        #[test]
        fn any_reply_is_a_decision_or_an_error(
            reply in proptest::collection::vec(
                proptest::prop_oneof![0i64..3, proptest::num::i64::ANY, 0i64..2_000_000],
                0..7,
            ),
            limits in proptest::collection::vec((1u64..1_000_000, 1u64..100), 1..4),
        ) {
            let rates: Vec<Rate> = limits.iter().map(|&(t, b)| Rate::new(t, b)).collect();
            if let Ok((decision, ahead)) = parse_reply(&reply, &rates) {
                proptest::prop_assert_eq!(ahead.len(), rates.len());
                proptest::prop_assert!(decision.decided_by() < rates.len());
                let _ = (
                    decision.remaining(),
                    decision.retry_after(),
                    decision.reset_after(),
                    decision.next_token_after(),
                    decision.limit(),
                );
                // The deny cache takes the same values: recording and consulting them stays
                // panic-free even at the end of the clock's range.
                let cache = crate::cache::DenyCache::new(16).unwrap();
                let policy = floodgate::Policy::parse("p", "1/s").unwrap();
                for now in [0, 1_000_000, u64::MAX - 5] {
                    cache.record(&policy, "k", &rates, now, &ahead);
                    let _ = cache.deny(&policy, "k", &rates, now.saturating_add(1), floodgate::gcra::Op::Acquire(1));
                }
            }
            let _ = read_reply(redis::Value::Array(reply.iter().map(|&v| redis::Value::Int(v)).collect()), &rates);
        }
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors() {
        let rates = [Rate::new(200_000, 10)];
        assert!(parse_reply(&[1, 0, 0], &rates).is_err());
        assert!(parse_reply(&[1, 0, 0, 1, 2], &rates).is_err());
        assert!(parse_reply(&[0, 3, 5, 0], &rates).is_err());
        assert!(parse_reply(&[1, 0, 0, -5], &rates).is_err());
        let (d, ahead) = parse_reply(&[1, 0, 0, 200_000], &rates).unwrap();
        assert_eq!(
            (d.remaining(), d.reset_after()),
            (9, Duration::from_millis(200))
        );
        assert_eq!(ahead, [200_000]);
    }
}
