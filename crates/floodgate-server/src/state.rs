//! What a request sees: one immutable [`Served`] (config, policies, store) swapped atomically
//! on reload, and the per-server state that outlives reloads ([`Shared`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use floodgate::FailurePolicy;
use floodgate::login::LoginGuard;
use floodgate::store::{Op, PermitAnswer, Releases};
use floodgate::{
    Concurrency, ConcurrencyStore, Decision, Error, MemoryStore, MonotonicClock, PermitId, Policy,
    RateLimiter, Store,
};
use floodgate_redis::RedisStore;
use http::HeaderValue;

use crate::config::{Config, ConfigError, Overrides, StoreUrl};
use crate::listener::HttpLimits;
use crate::metrics::{LoginCounters, Metrics, PolicyCounters};

/// The store the server runs on, chosen once from the config URL (static dispatch).
#[derive(Clone)]
pub enum AnyStore {
    /// `memory://`.
    Memory(MemoryStore),
    /// `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`, `redis+sentinel://`,
    /// `rediss+sentinel://`.
    Redis(RedisStore),
}

impl AnyStore {
    /// Permits the store reclaimed because their lease ended unreleased.
    pub(crate) fn permits_reclaimed(&self) -> u64 {
        match self {
            AnyStore::Memory(store) => store.permits_reclaimed(),
            AnyStore::Redis(store) => store.stats().permits_reclaimed,
        }
    }
}

impl Store for AnyStore {
    type Clock = MonotonicClock;

    fn clock(&self) -> &MonotonicClock {
        match self {
            AnyStore::Memory(s) => s.clock(),
            AnyStore::Redis(s) => s.clock(),
        }
    }

    async fn apply(&self, policy: &Policy, key: &str, op: Op) -> Result<Decision, Error> {
        match self {
            AnyStore::Memory(s) => s.apply(policy, key, op).await,
            AnyStore::Redis(s) => s.apply(policy, key, op).await,
        }
    }

    async fn reset(&self, policy: &Policy, key: &str) -> Result<(), Error> {
        match self {
            AnyStore::Memory(s) => s.reset(policy, key).await,
            AnyStore::Redis(s) => s.reset(policy, key).await,
        }
    }
}

impl ConcurrencyStore for AnyStore {
    async fn permit_acquire(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<PermitAnswer, Error> {
        match self {
            AnyStore::Memory(s) => s.permit_acquire(limit, key, permit).await,
            AnyStore::Redis(s) => s.permit_acquire(limit, key, permit).await,
        }
    }

    async fn permit_release(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        match self {
            AnyStore::Memory(s) => s.permit_release(limit, key, permit).await,
            AnyStore::Redis(s) => s.permit_release(limit, key, permit).await,
        }
    }

    async fn permit_renew(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
    ) -> Result<(), Error> {
        match self {
            AnyStore::Memory(s) => s.permit_renew(limit, key, permit).await,
            AnyStore::Redis(s) => s.permit_renew(limit, key, permit).await,
        }
    }

    fn release_on_drop(
        &self,
        limit: &Concurrency,
        key: &str,
        permit: PermitId,
        releases: &Arc<Releases>,
    ) {
        match self {
            AnyStore::Memory(s) => s.release_on_drop(limit, key, permit, releases),
            AnyStore::Redis(s) => s.release_on_drop(limit, key, permit, releases),
        }
    }
}

/// A policy as the HTTP API serves it.
pub(crate) struct ServedPolicy {
    pub(crate) policy: Policy,
    pub(crate) shadow: bool,
    pub(crate) counters: Arc<PolicyCounters>,
    /// The `RateLimit-Policy` field, computed once.
    pub(crate) policy_field: Option<HeaderValue>,
    /// Per limit: the `RateLimit` field up to its remaining count (`"name.i";r=`).
    pub(crate) state_prefixes: Vec<String>,
    /// The JSON answer's end: `,"policy":"name"`.
    pub(crate) json_tail: String,
}

/// One configuration version, immutable once built.
pub(crate) struct Served {
    pub(crate) version: u64,
    pub(crate) config: Config,
    pub(crate) policies: HashMap<String, ServedPolicy>,
    /// Counters of the Envoy rules' bucket policies, by policy name.
    pub(crate) rule_counters: HashMap<String, Arc<PolicyCounters>>,
    pub(crate) limiter: Arc<RateLimiter<AnyStore>>,
    /// `[login]` guards, by name.
    pub(crate) logins: HashMap<String, ServedLogin>,
    /// `[concurrency]` limits, by name.
    pub(crate) concurrency: HashMap<String, ServedConcurrency>,
    /// `GET /v1/policies`, rendered once.
    pub(crate) policy_list: String,
}

/// A concurrency limit as the HTTP API serves it.
pub(crate) struct ServedConcurrency {
    pub(crate) limit: Concurrency,
    pub(crate) counters: Arc<crate::permits::ConcurrencyCounters>,
}

/// A login guard as the HTTP API serves it.
pub(crate) struct ServedLogin {
    pub(crate) guard: LoginGuard<AnyStore>,
    pub(crate) on_error: FailurePolicy,
    pub(crate) counters: Arc<LoginCounters>,
}

/// Per-server state shared by every request and task.
pub(crate) struct Shared {
    pub(crate) served: ArcSwap<Served>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) overrides: Overrides,
    reload_lock: tokio::sync::Mutex<()>,
    versions: AtomicU64,
    /// The readiness probe's policy.
    pub(crate) probe: Policy,
    /// Top keys per policy (`/v1/top`); sized at start.
    pub(crate) top: crate::top::TopKeys,
    /// The last five minutes of each policy's rates (`/v1/stats`).
    pub(crate) history: Arc<crate::history::History>,
    /// When the server started.
    pub(crate) started: Instant,
    /// When the served config was applied, and the last refused reload (`/v1/config`).
    pub(crate) reloads: std::sync::Mutex<ReloadLog>,
}

/// When configurations were applied and refused.
#[derive(Clone, Debug)]
pub(crate) struct ReloadLog {
    /// When the configuration being served was applied (at start or by a reload).
    pub(crate) applied: std::time::SystemTime,
    /// The last reload that was refused: when, and why.
    pub(crate) failed: Option<(std::time::SystemTime, String)>,
}

impl Shared {
    pub(crate) async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        overrides: Overrides,
    ) -> Result<Arc<Shared>, ConfigError> {
        let metrics = Arc::new(Metrics::default());
        let top = crate::top::TopKeys::new(config.server.top_keys, config.server.top_keys_memory);
        let store = build_store(&config).await?;
        let served = Served::new(1, config, Arc::new(RateLimiter::new(store)), &metrics);
        metrics.set_version(1);
        let probe = Policy::parse("floodgate-readyz", "1000000/s")
            .map_err(|e| ConfigError::new(std::path::Path::new("<built-in>"), "", e.to_string()))?;
        Ok(Arc::new(Shared {
            served: ArcSwap::from_pointee(served),
            metrics,
            config_path,
            overrides,
            reload_lock: tokio::sync::Mutex::new(()),
            versions: AtomicU64::new(1),
            probe,
            top,
            history: Arc::default(),
            started: Instant::now(),
            reloads: std::sync::Mutex::new(ReloadLog {
                applied: std::time::SystemTime::now(),
                failed: None,
            }),
        }))
    }

    /// Re-reads the config file and, when it is valid, swaps it in atomically; otherwise
    /// the running config keeps serving. Returns the version now served.
    pub(crate) async fn reload(&self) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload().await;
        let mut log = self
            .reloads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &result {
            Ok(version) => {
                log.applied = std::time::SystemTime::now();
                self.metrics.reload(Ok(*version));
                tracing::info!(version, "configuration reloaded");
            }
            Err(e) => {
                log.failed = Some((std::time::SystemTime::now(), e.to_string()));
                self.metrics.reload(Err(()));
                tracing::warn!(error = %e, "configuration reload failed; the previous configuration keeps serving");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<u64, ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(ConfigError::new(
                std::path::Path::new("<built-in demo>"),
                "",
                "no config file to reload (start with --config FILE)",
            ));
        };
        let owned = path.clone();
        let mut config = tokio::task::spawn_blocking(move || Config::load(&owned))
            .await
            .map_err(|e| ConfigError::new(path, "", format!("cannot load: {e}")))??;
        config.apply(&self.overrides)?;
        check_store(&config)?;
        let current = self.served.load_full();
        // Listen addresses are bound once.
        if config.server.http != current.config.server.http
            || config.server.grpc != current.config.server.grpc
        {
            tracing::warn!("server.http / server.grpc changes take effect at restart");
            config.server.http = current.config.server.http;
            config.server.grpc = current.config.server.grpc;
        }
        // The listener's limits too, except the body timeout, read per request.
        let (old, new) = (current.config.server.limits, config.server.limits);
        if (
            old.max_connections,
            old.header_timeout,
            old.max_header_bytes,
        ) != (
            new.max_connections,
            new.header_timeout,
            new.max_header_bytes,
        ) {
            tracing::warn!(
                "server.max_connections / header_timeout / max_header_bytes changes take effect at restart"
            );
            config.server.limits = HttpLimits {
                body_timeout: new.body_timeout,
                ..old
            };
        }
        let (old, new) = (&current.config.server, &config.server);
        if (old.top_keys, old.top_keys_memory) != (new.top_keys, new.top_keys_memory) {
            tracing::warn!("server.top_keys / top_keys_memory changes take effect at restart");
            config.server.top_keys = current.config.server.top_keys;
            config.server.top_keys_memory = current.config.server.top_keys_memory;
        }
        let (old, new) = (&current.config.server, &config.server);
        if (old.grpc_limits, old.shutdown_grace) != (new.grpc_limits, new.shutdown_grace) {
            tracing::warn!(
                "server.grpc_max_connections / grpc_handshake_timeout / grpc_idle_timeout / shutdown_grace changes take effect at restart"
            );
            config.server.grpc_limits = current.config.server.grpc_limits;
            config.server.shutdown_grace = current.config.server.shutdown_grace;
        }
        let limiter = if same_store(&current.config, &config) {
            current.limiter.clone()
        } else if current.config.store.url == StoreUrl::Memory
            && config.store.url == StoreUrl::Memory
        {
            tracing::warn!("store.max_keys changes take effect at restart");
            config.store.max_keys = current.config.store.max_keys;
            current.limiter.clone()
        } else {
            Arc::new(RateLimiter::new(build_store(&config).await?))
        };
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let served = Served::new(version, config, limiter, &self.metrics);
        // Series of policies no longer configured leave `/metrics`.
        let live: std::collections::HashSet<&str> = served
            .policies
            .keys()
            .chain(served.rule_counters.keys())
            .map(String::as_str)
            .collect();
        self.metrics.retain_policies(&live);
        self.top.retain(&live);
        let guards: std::collections::HashSet<&str> =
            served.logins.keys().map(String::as_str).collect();
        self.metrics.retain_logins(&guards);
        let limits: std::collections::HashSet<&str> =
            served.concurrency.keys().map(String::as_str).collect();
        self.metrics.retain_concurrency(&limits);
        self.served.store(Arc::new(served));
        Ok(version)
    }

    /// Whether the store answers (a peek on a probe key).
    pub(crate) async fn ready(&self) -> bool {
        let served = self.served.load_full();
        let started = Instant::now();
        let result = served.limiter.peek(&self.probe, "probe").await;
        self.metrics.store_latency(started.elapsed());
        matches!(result, Ok(d) if d.source() == floodgate::DecisionSource::Store)
    }
}

impl Served {
    fn new(
        version: u64,
        config: Config,
        limiter: Arc<RateLimiter<AnyStore>>,
        metrics: &Metrics,
    ) -> Served {
        let mut policies = HashMap::new();
        let mut list = Vec::new();
        for (name, p) in &config.policies {
            policies.insert(
                name.clone(),
                ServedPolicy {
                    policy: p.policy.clone(),
                    shadow: p.shadow,
                    counters: metrics.policy(name),
                    policy_field: HeaderValue::try_from(floodgate_tower::headers::policy_field(
                        &p.policy,
                    ))
                    .ok(),
                    state_prefixes: (0..p.policy.limits().len())
                        .map(|i| floodgate_tower::headers::state_prefix(&p.policy, i))
                        .collect(),
                    json_tail: format!(",\"policy\":{}", serde_json::Value::from(name.as_str())),
                },
            );
            list.push(format!(
                "{{\"name\":{},\"limits\":{}}}",
                serde_json::Value::from(name.as_str()),
                serde_json::Value::from(p.policy.to_string())
            ));
        }
        let rule_counters = config
            .envoy
            .policies()
            .into_iter()
            .map(|p| (p.name().to_owned(), metrics.policy(p.name())))
            .collect();
        let mut logins = HashMap::new();
        for (name, g) in &config.login {
            // The config loader built a guard from the same settings: this cannot fail.
            match LoginGuard::new(limiter.clone(), name, g.config.clone()) {
                Ok(guard) => {
                    logins.insert(
                        name.clone(),
                        ServedLogin {
                            guard,
                            on_error: g.on_error,
                            counters: metrics.login(name),
                        },
                    );
                }
                Err(e) => tracing::error!(guard = %name, error = %e, "login guard not served"),
            }
        }
        let concurrency = config
            .concurrency
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    ServedConcurrency {
                        limit: c.limit.clone(),
                        counters: metrics.concurrency(name),
                    },
                )
            })
            .collect();
        Served {
            version,
            logins,
            concurrency,
            policy_list: format!("[{}]", list.join(",")),
            config,
            policies,
            rule_counters,
            limiter,
        }
    }
}

fn same_store(a: &Config, b: &Config) -> bool {
    // The Redis store is built with each policy's failure policy and lease time.
    let overrides =
        |c: &Config| -> Vec<(String, Option<FailurePolicy>, Option<std::time::Duration>)> {
            c.policies
                .iter()
                .map(|(name, p)| (name.clone(), p.on_error, p.lease))
                .collect()
        };
    let guards = |c: &Config| -> Vec<(String, FailurePolicy)> {
        c.login
            .iter()
            .map(|(name, g)| (name.clone(), g.on_error))
            .collect()
    };
    let limits = |c: &Config| -> Vec<(String, Option<FailurePolicy>)> {
        c.concurrency
            .iter()
            .map(|(name, l)| (name.clone(), l.on_error))
            .collect()
    };
    a.store == b.store
        && (a.store.url == StoreUrl::Memory
            || (overrides(a) == overrides(b) && guards(a) == guards(b) && limits(a) == limits(b)))
}

fn origin(config: &Config) -> PathBuf {
    config
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from("<built-in demo>"))
}

/// The Redis store's builder for `url` and the config's store settings.
fn redis_builder(config: &Config, url: &str) -> floodgate_redis::RedisStoreBuilder {
    let mut builder = RedisStore::builder(url)
        .connections(config.store.connections)
        .timeout(config.store.timeout)
        .on_failure(config.store.on_error);
    for guard in config.login.values() {
        // A guard's store errors reach the endpoint, which answers by the guard's
        // `on_error`; only `local` is the store's to apply.
        let on_failure = match guard.on_error {
            local @ FailurePolicy::Local { .. } => local,
            _ => FailurePolicy::Error,
        };
        for policy in &guard.policies {
            builder = builder.on_failure_for(policy.name().to_owned(), on_failure);
        }
    }
    for (name, c) in &config.concurrency {
        if let Some(on_error) = c.on_error {
            builder = builder.on_failure_for(name.clone(), on_error);
        }
    }
    for (name, p) in &config.policies {
        if let Some(on_error) = p.on_error {
            builder = builder.on_failure_for(name.clone(), on_error);
        }
        if let Some(lease) = p.lease {
            builder = builder.lease_for(name.clone(), lease);
        }
    }
    if let Some((_, pem)) = &config.store.tls_ca {
        builder = builder.tls_root_certificate(pem.clone());
    }
    if let Some(on) = config.store.batching {
        builder = builder.batching(on);
    }
    if let Some(password) = &config.store.sentinel_password {
        builder = builder.sentinel_password(password.expose());
    }
    builder
}

/// Every check building the store makes, short of connecting (see [`crate::validate`]).
pub(crate) fn check_store(config: &Config) -> Result<(), ConfigError> {
    match &config.store.url {
        // `Config` already refuses a zero `max_keys`, all a memory store can refuse.
        StoreUrl::Memory => Ok(()),
        StoreUrl::Redis(url) => redis_builder(config, url.expose())
            .check()
            .map_err(|e| ConfigError::new(&origin(config), "store.url", e.to_string())),
    }
}

async fn build_store(config: &Config) -> Result<AnyStore, ConfigError> {
    let origin = origin(config);
    match &config.store.url {
        StoreUrl::Memory => MemoryStore::builder()
            .max_keys(config.store.max_keys)
            .try_build()
            .map(AnyStore::Memory)
            .map_err(|e| ConfigError::new(&origin, "store.max_keys", e.to_string())),
        StoreUrl::Redis(url) => redis_builder(config, url.expose())
            .build()
            .await
            .map(AnyStore::Redis)
            .map_err(|e| ConfigError::new(&origin, "store.url", e.to_string())),
    }
}
