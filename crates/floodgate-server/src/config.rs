//! The server's configuration: a TOML file parsed into raw serde types (unknown keys are
//! errors), then converted once into validated domain types. Every error names the file, the
//! key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floodgate::{FailurePolicy, Policy};

use crate::files;
use crate::listener::{GrpcLimits, HttpLimits};

// The YAML loader is public for the fuzz targets and their property-test twins only.
#[cfg(feature = "fuzzing")]
pub mod envoy;
#[cfg(not(feature = "fuzzing"))]
#[allow(unreachable_pub, dead_code)] // `parse_domain` is the fuzz targets' entry point
mod envoy;
mod sections;
mod toml_location;

pub use crate::rules::{Domain, Domains};
pub use envoy::{DEFAULT_MAX_FILE_BYTES, LoadOptions, MAX_FILE_BYTES_LIMIT, MAX_YAML_NODES};
use sections::{
    RawConfig, concurrency_section, envoy_section, login_section, parse_store_url,
    policies_section, server_section, store_section,
};

/// The built-in configuration `floodgate serve` runs without `--config`: three SaaS tiers on
/// the embedded memory store.
pub const DEMO_CONFIG: &str = r#"# floodgate's built-in demo configuration.
[server]
http = "127.0.0.1:8080"
grpc = "127.0.0.1:8081"

[store]
url = "memory://"

[policies]
free = "5/s burst 10; 1000/day"
pro = "50/s burst 100"
enterprise = "100/s burst 200"
"#;

/// Policy names starting with this prefix are reserved for the Envoy rules' buckets.
pub const RESERVED_PREFIX: &str = "envoy:";
/// Policy names starting with this prefix are reserved for the login guards' buckets.
pub const LOGIN_PREFIX: &str = "login:";

/// A configuration error: which file, which key, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the error is in.
    pub file: String,
    /// The key (dotted path), empty when the error is about the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A string that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The `on_error` value naming a failure policy, as the config file spells it.
pub(crate) fn on_error_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Allow => "allow",
        FailurePolicy::Deny => "deny",
        FailurePolicy::Local { .. } => "local",
        _ => "error",
    }
}

/// Where bucket state lives.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreUrl {
    /// The embedded memory store (`memory://`).
    Memory,
    /// Redis (`redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`,
    /// `redis+sentinel://`, `rediss+sentinel://`); may hold a
    /// password.
    Redis(Secret),
}

impl StoreUrl {
    /// Whether the URL names a Cluster (`redis+cluster://`, `rediss+cluster://`).
    pub fn is_cluster(&self) -> bool {
        matches!(self, StoreUrl::Redis(url) if url.expose().contains("+cluster://"))
    }

    /// Whether the URL names a master behind Sentinel (`redis+sentinel://`,
    /// `rediss+sentinel://`).
    pub fn is_sentinel(&self) -> bool {
        matches!(self, StoreUrl::Redis(url) if url.expose().contains("+sentinel://"))
    }

    /// Whether the URL asks for TLS (`rediss://`, `rediss+cluster://`).
    pub fn is_tls(&self) -> bool {
        matches!(self, StoreUrl::Redis(url) if url.expose().starts_with("rediss"))
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreUrl::Memory => "memory://".into(),
            StoreUrl::Redis(url) => redact_url(url.expose()),
        }
    }
}

pub use floodgate_redis::redact_url;

/// `[server]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// The HTTP JSON API's listen address.
    pub http: SocketAddr,
    /// The Envoy RLS gRPC API's listen address.
    pub grpc: SocketAddr,
    /// The bearer token `POST /v1/reset` requires, when set.
    pub admin_token: Option<Secret>,
    /// Connection and request limits of the HTTP listener.
    pub limits: HttpLimits,
    /// Connection limits of the gRPC listener.
    pub grpc_limits: GrpcLimits,
    /// How long shutdown waits for open connections to finish before cutting them.
    pub shutdown_grace: Duration,
    /// `server.top_keys`: counters per policy summary of `/v1/top` (0: top keys off).
    pub top_keys: usize,
    /// `server.top_keys_memory`: the bytes all summaries may hold together.
    pub top_keys_memory: usize,
}

/// `[store]`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// Where buckets live.
    pub url: StoreUrl,
    /// The memory store's cap on live limit states.
    pub max_keys: usize,
    /// The default failure policy (`on_error`, with `local_share` for `"local"`).
    pub on_error: FailurePolicy,
    /// `local_share` as given: the fraction of each limit a node may use under
    /// `on_error = "local"` (already inside every `Local` failure policy).
    pub local_share: Option<f64>,
    /// Per-call timeout of the Redis store.
    pub timeout: Duration,
    /// `store.tls_ca_file`: where the certificate authority (PEM) trusted for a `rediss://`
    /// store came from, and its contents; `None`: the system's roots.
    pub tls_ca: Option<(PathBuf, Vec<u8>)>,
    /// Multiplexed connections to a standalone Redis that calls take turns on.
    pub connections: usize,
    /// `store.batching`: the Redis store's exact batching (`None`: its default, on except
    /// on a Cluster).
    pub batching: Option<bool>,
    /// `store.sentinel_password`: what the Sentinels themselves require, for a
    /// `redis+sentinel://` store.
    pub sentinel_password: Option<Secret>,
}

/// One `[policies]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// The policy (its name is the table key).
    pub policy: Policy,
    /// `lease`: token leasing with this lease time (Redis stores only).
    pub lease: Option<Duration>,
    /// This policy's failure policy (the store's when `None`).
    pub on_error: Option<FailurePolicy>,
    /// Shadow mode: answer `allowed`, report what would have happened.
    pub shadow: bool,
}

/// One `[login]` guard.
#[derive(Clone, Debug, PartialEq)]
pub struct LoginGuardConfig {
    /// What the guard enforces (checked: a guard builds from it).
    pub config: floodgate::login::LoginConfig,
    /// What an attempt is answered when the store fails (`deny` by default: never fail
    /// open on a login); `local` decides on this node's share of each limit.
    pub on_error: FailurePolicy,
    /// The guard's policies (`login:{name}:…`), for the store's per-policy settings.
    pub policies: Vec<Policy>,
}

/// One `[concurrency]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ConcurrencyConfig {
    /// The limit (its name is the table key).
    pub limit: floodgate::Concurrency,
    /// This limit's failure policy (the store's when `None`).
    pub on_error: Option<FailurePolicy>,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from (`None`: the built-in demo).
    pub source: Option<PathBuf>,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[policies]`, by name.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// `[login]` guards, by name.
    pub login: BTreeMap<String, LoginGuardConfig>,
    /// `[concurrency]` limits, by name.
    pub concurrency: BTreeMap<String, ConcurrencyConfig>,
    /// The Envoy domains loaded from `[envoy] config_dir`.
    pub envoy: Domains,
    /// `[envoy] config_dir`, resolved against the config file's directory.
    pub envoy_dir: Option<PathBuf>,
    /// How the Envoy files are loaded (`[envoy] merge_domains`, `max_file_bytes`).
    pub envoy_options: LoadOptions,
    /// How every Envoy answer is made (`[envoy] quota_mode`, `shadow_mode`).
    pub envoy_modes: EnvoyModes,
}

/// Server-wide switches of the Envoy answers (envoyproxy/ratelimit's `QUOTA_MODE` and
/// `SHADOW_MODE`), applied at reload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvoyModes {
    /// `[envoy] quota_mode`: every descriptor but `unlimited` ones counts as a quota
    /// descriptor (unmatched ones as passing), so an answer is `OVER_LIMIT` only when all
    /// are over.
    pub quota_mode: bool,
    /// `[envoy] shadow_mode`: a final `OVER_LIMIT` is answered `OK` (descriptor statuses
    /// still tell).
    pub shadow_mode: bool,
    /// `[envoy] response_dynamic_metadata`: answers carry `dynamic_metadata` (the domain,
    /// the descriptors, the hits and the merged `metadata` of the passing descriptors), as
    /// envoyproxy/ratelimit's `RESPONSE_DYNAMIC_METADATA` builds it.
    pub response_dynamic_metadata: bool,
}

/// Settings that override the file (command line and environment).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces `server.http`.
    pub http: Option<SocketAddr>,
    /// Replaces `server.grpc`.
    pub grpc: Option<SocketAddr>,
    /// Replaces `store.url` (keeps a Redis password out of the file).
    pub store_url: Option<String>,
    /// Replaces `server.admin_token`.
    pub admin_token: Option<String>,
}

/// The server's default `store.max_keys`. Not the library's
/// [`floodgate::DEFAULT_MAX_KEYS`] (2²², a power of two that sizes its tables exactly): an
/// operator reads and writes the server's cap in its config, where a round million is the
/// number that means something, and the documented default has always been that.
pub const SERVER_DEFAULT_MAX_KEYS: usize = 1_000_000;
/// The server's default `store.timeout`. Shorter than the Redis store's own 100 ms: the
/// server answers other services (Envoy, HTTP callers) inside their request deadlines, so a
/// slow Redis call should give way to the failure policy sooner than in a library caller
/// that owns its whole deadline.
pub const SERVER_DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

impl Config {
    /// The built-in demo configuration.
    pub fn demo() -> Config {
        match Config::parse(DEMO_CONFIG, Path::new("<built-in demo>"), None) {
            Ok(config) => config,
            // The demo text is a constant checked by the tests.
            Err(e) => unreachable!("the built-in demo config is valid: {e}"),
        }
    }

    /// Reads and validates a configuration file (blocking file I/O: off the async workers).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = files::read_capped(path, files::MAX_CONFIG_BYTES)
            .map_err(|e| ConfigError::new(path, "", e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, Some(dir))
    }

    /// Validates configuration text; `file` names it in errors and `dir` resolves
    /// `envoy.config_dir` (`None`: no Envoy directory may be given) and `store.tls_ca_file`
    /// (`None`: against the working directory).
    pub fn parse(text: &str, file: &Path, dir: Option<&Path>) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| toml_location::error(&e, text, file))?;
        let err = |key: &str, reason: String| ConfigError::new(file, key, reason);

        let server = server_section(raw.server, file)?;
        let store = store_section(raw.store, file, dir)?;
        let policies = policies_section(raw.policies, file, store.local_share, &store.url)?;
        let login = login_section(raw.login, file, store.local_share, &policies)?;
        let concurrency =
            concurrency_section(raw.concurrency, file, store.local_share, &policies, &login)?;
        let (envoy, envoy_dir, envoy_options, envoy_modes) = envoy_section(raw.envoy, file, dir)?;
        if policies.is_empty() && envoy.is_empty() && login.is_empty() && concurrency.is_empty() {
            return Err(err(
                "policies",
                "no policies, no login guards, no concurrency limits and no Envoy domains: \
                 nothing to serve"
                    .into(),
            ));
        }
        Ok(Config {
            source: Some(file.to_path_buf()),
            server,
            store,
            policies,
            login,
            concurrency,
            envoy,
            envoy_dir,
            envoy_options,
            envoy_modes,
        })
    }

    /// Applies command-line and environment overrides, validating them like the file.
    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        let origin = Path::new("<environment>");
        if let Some(http) = overrides.http {
            self.server.http = http;
        }
        if let Some(grpc) = overrides.grpc {
            self.server.grpc = grpc;
        }
        if let Some(url) = &overrides.store_url {
            let url = parse_store_url(url).map_err(|r| ConfigError::new(origin, "store.url", r))?;
            if url != StoreUrl::Memory {
                self.store.max_keys = SERVER_DEFAULT_MAX_KEYS;
            }
            self.store.url = url;
        }
        if let Some(token) = &overrides.admin_token {
            if token.trim().is_empty() {
                return Err(ConfigError::new(
                    origin,
                    "server.admin_token",
                    "must not be empty",
                ));
            }
            self.server.admin_token = Some(Secret(token.clone()));
        }
        Ok(())
    }

    /// The failure policy of `policy` (its own, else the store's).
    pub fn on_error_for(&self, policy: &str) -> FailurePolicy {
        self.policies
            .get(policy)
            .and_then(|p| p.on_error)
            .unwrap_or(self.store.on_error)
    }

    /// A human-readable summary with secrets redacted (what `check-config` prints).
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let source = self
            .source
            .as_ref()
            .map_or("<built-in demo>".into(), |p| p.display().to_string());
        let _ = writeln!(out, "config: {source}");
        let _ = writeln!(out, "server.http: {}", self.server.http);
        let _ = writeln!(out, "server.grpc: {}", self.server.grpc);
        let _ = writeln!(
            out,
            "server.admin_token: {}",
            if self.server.admin_token.is_some() {
                "set (redacted)"
            } else {
                "not set (POST /v1/reset is open)"
            }
        );
        let limits = &self.server.limits;
        let _ = writeln!(
            out,
            "server limits: max_connections {}, header_timeout {}, body_timeout {}, max_header_bytes {}",
            limits.max_connections,
            humantime::format_duration(limits.header_timeout),
            humantime::format_duration(limits.body_timeout),
            limits.max_header_bytes
        );
        let grpc = &self.server.grpc_limits;
        let _ = writeln!(
            out,
            "server gRPC limits: grpc_max_connections {}, grpc_handshake_timeout {}, grpc_idle_timeout {}",
            grpc.max_connections,
            humantime::format_duration(grpc.handshake_timeout),
            humantime::format_duration(grpc.idle_timeout),
        );
        let _ = writeln!(
            out,
            "server.shutdown_grace: {}",
            humantime::format_duration(self.server.shutdown_grace)
        );
        let _ = write!(out, "store: {}", self.store.url.redacted());
        match self.store.url {
            StoreUrl::Memory => {
                let _ = writeln!(out, " (max_keys {})", self.store.max_keys);
            }
            StoreUrl::Redis(_) => {
                let _ = write!(
                    out,
                    " (timeout {}, on_error {}",
                    humantime::format_duration(self.store.timeout),
                    on_error_name(self.store.on_error)
                );
                if let Some(share) = self.store.local_share {
                    let _ = write!(out, ", local_share {share}");
                }
                if self.store.connections > 1 {
                    let _ = write!(out, ", connections {}", self.store.connections);
                }
                if let Some(on) = self.store.batching {
                    let _ = write!(out, ", batching {}", if on { "on" } else { "off" });
                }
                if self.store.sentinel_password.is_some() {
                    let _ = write!(out, ", sentinel_password ***");
                }
                if let Some((path, _)) = &self.store.tls_ca {
                    let _ = write!(out, ", tls_ca_file {}", path.display());
                }
                let _ = writeln!(out, ")");
            }
        }
        for (name, p) in &self.policies {
            let _ = write!(out, "policy {name}: {}", p.policy);
            if let Some(on_error) = p.on_error {
                let _ = write!(out, " (on_error {})", on_error_name(on_error));
            }
            if p.shadow {
                let _ = write!(out, " (shadow)");
            }
            if let Some(lease) = p.lease {
                let _ = write!(out, " (lease {})", humantime::format_duration(lease));
            }
            let _ = writeln!(out);
        }
        for (name, guard) in &self.login {
            let c = &guard.config;
            let limits = |limits: &[floodgate::Limit]| {
                limits
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let lengths: Vec<String> = c
                .lockouts
                .iter()
                .map(|d| humantime::format_duration(*d).to_string())
                .collect();
            let _ = writeln!(
                out,
                "login {name}: per_ip {}, per_user {}, per_pair {}, {} strikes in {} lock for {} (one level forgotten per {}), known devices for {}, secret {}, on_error {}",
                limits(&c.per_ip),
                limits(&c.per_user),
                limits(&c.per_pair),
                c.strikes,
                humantime::format_duration(c.strike_window),
                lengths.join(", "),
                humantime::format_duration(c.forget_after),
                humantime::format_duration(c.known_device_for),
                if c.secret.is_some() {
                    "set (redacted)"
                } else {
                    "not set"
                },
                on_error_name(guard.on_error)
            );
        }
        for (name, c) in &self.concurrency {
            let _ = write!(
                out,
                "concurrency {name}: at most {} in flight, lease {}",
                c.limit.max(),
                humantime::format_duration(c.limit.lease_time())
            );
            if let Some(on_error) = c.on_error {
                let _ = write!(out, " (on_error {})", on_error_name(on_error));
            }
            let _ = writeln!(out);
        }
        if let Some(dir) = &self.envoy_dir {
            let _ = writeln!(
                out,
                "envoy: config_dir {}, merge_domains {}, max_file_bytes {}, quota_mode {}, shadow_mode {}, response_dynamic_metadata {}",
                dir.display(),
                self.envoy_options.merge_domains,
                self.envoy_options.max_file_bytes,
                self.envoy_modes.quota_mode,
                self.envoy_modes.shadow_mode,
                self.envoy_modes.response_dynamic_metadata
            );
        }
        for domain in self.envoy.iter() {
            let files: Vec<String> = domain
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            let _ = writeln!(
                out,
                "envoy domain {}: {} rate limit{} (from {})",
                domain.name(),
                domain.rule_count(),
                if domain.rule_count() == 1 { "" } else { "s" },
                files.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid() {
        let demo = Config::demo();
        assert_eq!(demo.policies.len(), 3);
        assert_eq!(
            demo.policies["free"].policy.to_string(),
            "5/s burst 10; 1000/d"
        );
        assert_eq!(demo.server.http, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn secrets_never_print() {
        let url = StoreUrl::Redis(Secret("redis://app:hunter2@10.0.0.1:6379/0".into()));
        assert_eq!(url.redacted(), "redis://app:***@10.0.0.1:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        let secret = Secret("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
