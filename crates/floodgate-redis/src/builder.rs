//! [`RedisStoreBuilder`]: every setting of a [`RedisStore`], checked before it connects.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use floodgate::{Clock, Error, FailurePolicy, ManualClock, MonotonicClock};

use crate::batch::{Batcher, Counters};
use crate::cache::DenyCache;
use crate::connection::Connection;
use crate::failure::{Breaker, Fallback};
use crate::keys;
use crate::lease::{LeaseTimes, Leases};
use crate::store::{RedisStore, store_error};
use crate::url::{Target, cluster_nodes, redact_url, sanitize, sentinel_target};

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_BREAKER_FAILURES: u32 = 3;
const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(250);
const DEFAULT_DENY_CACHE: usize = 100_000;

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
    /// `None`: the default, on for a standalone server and Sentinel, off on a Cluster.
    batching: Option<bool>,
    sentinel_password: Option<String>,
    leases: LeaseTimes,
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
            batching: None,
            sentinel_password: None,
            leases: LeaseTimes::default(),
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

    /// Exact batching: decisions waiting for the same connection go to Redis as one script
    /// call, which decides them in order, each exactly as if sent alone at the batch's time
    /// — the same answers, state and TTLs. There is no timer: a batch leaves as soon as the
    /// previous one on its connection has its reply, so at low load it holds one decision.
    /// Off, every decision is its own call. Concurrency-permit operations (acquire, release,
    /// renew) follow the same setting: batched, they go as one call of the permit script,
    /// applied in order, each as if sent alone.
    ///
    /// On by default for a standalone server and behind Sentinel. **Off by default on a
    /// Cluster**, where a batch can only hold decisions on keys of one hash slot: measured,
    /// that is 1.66× the throughput of one call per decision on a hot key but 0.63× on
    /// random keys, where each slot's batches hold one decision. `batching(true)` turns
    /// per-slot batching on for a Cluster dominated by hot keys.
    pub fn batching(mut self, on: bool) -> Self {
        self.batching = Some(on);
        self
    }

    /// Token leasing for every policy, with lease time `lease` (see also
    /// [`lease_for`](Self::lease_for)): a key this node decides often takes a share of its
    /// tokens from Redis in one call and spends them here for at most `lease`, measured from
    /// when the lease request was sent; unspent tokens expire. Keys this node uses less than
    /// twice per `lease` are decided one exact call at a time. The cost: over any window Δ a
    /// key admits at most `B + ⌊r·(Δ + lease)⌋` — the burst grows by at most `r·lease`.
    /// `charge` and `peek` always go to Redis; `reset` drops this node's lease only (other
    /// nodes spend theirs). A lease request is one batch-script call, with batching on or
    /// off, on every kind of deployment.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.leases.default = Some(lease);
        self
    }

    /// Token leasing for one policy name, with its own lease time (overriding
    /// [`lease`](Self::lease) for it).
    pub fn lease_for(mut self, policy_name: impl Into<String>, lease: Duration) -> Self {
        self.leases.overrides.insert(policy_name.into(), lease);
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

    /// For `redis+sentinel://` URLs: the password the Sentinels themselves require
    /// (`requirepass` in their config), which may differ from the master's (the URL's). The
    /// Sentinels are asked with it; the master and replicas with the URL's credentials.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
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
            batching: self.batching,
            sentinel_password: self.sentinel_password,
            leases: self.leases,
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
        if self.leases.default.is_some_and(|l| l.is_zero()) {
            return Err(config("lease", "must be longer than zero".into()));
        }
        if let Some((name, _)) = self.leases.overrides.iter().find(|(_, l)| l.is_zero()) {
            return Err(config(
                "lease_for",
                format!("policy {name:?}: must be longer than zero"),
            ));
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
            Target::Sentinel(target) => target
                .sentinels
                .iter()
                .map(|s| target.sentinel_url(s, self.sentinel_password.as_deref()))
                .chain(std::iter::once(target.master_url("127.0.0.1:6379")))
                .try_for_each(|url| {
                    Connection::check_standalone(&url, self.root_certificate.as_deref())
                }),
        };
        parsed.map_err(|e| self.connect_error(e))
    }

    /// Whether decisions are batched: as set, or by default everywhere but on a Cluster.
    fn batches(&self) -> bool {
        self.batching
            .unwrap_or_else(|| cluster_nodes(&self.url).is_none())
    }

    /// A Cluster's node URLs, or a standalone server; an error for any other URL.
    fn target(&self) -> Result<Target, Error> {
        if let Some(target) = sentinel_target(&self.url) {
            return Ok(Target::Sentinel(target?));
        }
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
                     redis+cluster://host:port,host:port, rediss+cluster://host:port,host:port, \
                     redis+sentinel://host:port,host:port/master-name or \
                     rediss+sentinel://host:port,host:port/master-name",
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
            Target::Sentinel(target) => {
                Connection::through_sentinels(
                    target,
                    self.sentinel_password.clone(),
                    self.connect_timeout,
                    self.root_certificate.as_deref(),
                    self.connections,
                )
                .await
            }
        };
        let connection = connect.map_err(|e| self.connect_error(e))?;
        let breaker = Arc::new(Breaker::new(self.breaker_failures, self.breaker_cooldown));
        let counters = Arc::new(Counters::default());
        let batcher = self.batches().then(|| {
            Arc::new(Batcher::new(
                &connection,
                self.timeout,
                breaker.clone(),
                counters.clone(),
            ))
        });
        let permit_batcher = self.batches().then(|| {
            Arc::new(Batcher::new(
                &connection,
                self.timeout,
                breaker.clone(),
                counters.clone(),
            ))
        });
        let store = RedisStore {
            connection,
            prefix: self.prefix.into(),
            timeout: self.timeout,
            clock: self.clock,
            send_time: self.send_time,
            url: redacted.into(),
            fallback: Fallback::new(self.on_failure, self.overrides),
            breaker,
            cache: DenyCache::new(self.deny_cache).map(Arc::new),
            batcher,
            permit_batcher,
            counters,
            leases: Leases::new(self.leases).map(Arc::new),
        };
        store.warn_if_keys_can_be_evicted().await;
        Ok(store)
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
            .field("batching", &self.batching)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
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

pub(crate) fn config(knob: &'static str, reason: String) -> Error {
    Error::InvalidConfig { knob, reason }
}
