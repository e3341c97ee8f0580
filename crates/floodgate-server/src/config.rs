//! The server's configuration: a TOML file parsed into raw serde types (unknown keys are
//! errors), then converted once into validated domain types. Every error names the file, the
//! key and the reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floodgate::{FailurePolicy, Policy};
use serde::Deserialize;

use crate::envoy::{self, Domains, LoadOptions};
use crate::files;
use crate::listener::{DEFAULT_SHUTDOWN_GRACE, GrpcLimits, HttpLimits};

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

/// `on_error` as written in TOML; converted to a [`FailurePolicy`] in one place
/// ([`failure_policy`]), with `store.local_share` for `"local"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawOnError {
    Allow,
    Deny,
    Local,
}

/// The failure policy `on_error` names; `"local"` takes `store.local_share`, which it
/// requires.
fn failure_policy(on_error: RawOnError, share: Option<f64>) -> Result<FailurePolicy, String> {
    Ok(match on_error {
        RawOnError::Allow => FailurePolicy::Allow,
        RawOnError::Deny => FailurePolicy::Deny,
        RawOnError::Local => FailurePolicy::Local {
            share: share.ok_or(
                "required when on_error is \"local\" (the fraction of each limit one node may \
                 use, e.g. 0.25 for 4 nodes)",
            )?,
        },
    })
}

/// The `on_error` value naming a failure policy, as the config file spells it.
fn on_error_name(policy: FailurePolicy) -> &'static str {
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
    /// Redis (`redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`); may hold a
    /// password.
    Redis(Secret),
}

impl StoreUrl {
    /// Whether the URL names a Cluster (`redis+cluster://`, `rediss+cluster://`).
    pub fn is_cluster(&self) -> bool {
        matches!(self, StoreUrl::Redis(url) if url.expose().contains("+cluster://"))
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
}

/// One `[policies]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// The policy (its name is the table key).
    pub policy: Policy,
    /// This policy's failure policy (the store's when `None`).
    pub on_error: Option<FailurePolicy>,
    /// Shadow mode: answer `allowed`, report what would have happened.
    pub shadow: bool,
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
    /// The Envoy domains loaded from `[envoy] config_dir`.
    pub envoy: Domains,
    /// `[envoy] config_dir`, resolved against the config file's directory.
    pub envoy_dir: Option<PathBuf>,
    /// How the Envoy files are loaded (`[envoy] merge_domains`, `max_file_bytes`).
    pub envoy_options: LoadOptions,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    policies: BTreeMap<String, toml::Value>,
    envoy: Option<RawEnvoy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    http: Option<String>,
    grpc: Option<String>,
    admin_token: Option<String>,
    max_connections: Option<i64>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    max_header_bytes: Option<i64>,
    grpc_max_connections: Option<i64>,
    grpc_handshake_timeout: Option<String>,
    grpc_idle_timeout: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    max_keys: Option<i64>,
    on_error: Option<RawOnError>,
    local_share: Option<f64>,
    timeout: Option<String>,
    tls_ca_file: Option<String>,
    connections: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    limits: String,
    on_error: Option<RawOnError>,
    #[serde(default)]
    shadow: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvoy {
    config_dir: String,
    merge_domains: Option<bool>,
    max_file_bytes: Option<i64>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (key, line) = e
                .span()
                .map(|span| locate(text, span.start))
                .unwrap_or_default();
            let line = if line > 0 {
                format!("line {line}: ")
            } else {
                String::new()
            };
            ConfigError::new(file, key, format!("{line}{}", e.message()))
        })?;
        let err = |key: &str, reason: String| ConfigError::new(file, key, reason);

        let addr = |key: &str, value: Option<String>, default: &str| -> Result<SocketAddr, _> {
            let text = value.unwrap_or_else(|| default.to_owned());
            text.parse::<SocketAddr>().map_err(|_| {
                err(
                    key,
                    format!("'{text}' is not a socket address such as \"127.0.0.1:8080\""),
                )
            })
        };
        let defaults = HttpLimits::default();
        let duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => {
                parse_duration(&text, Duration::from_secs(3_600)).map_err(|reason| err(key, reason))
            }
        };
        let count = |key: &str, value: Option<i64>, default: usize, min: i64, max: i64| match value
        {
            None => Ok(default),
            Some(n) if n < min || n > max => {
                Err(err(key, format!("must be from {min} to {max}, got {n}")))
            }
            Some(n) => usize::try_from(n).map_err(|_| err(key, format!("{n} is out of range"))),
        };
        let limits = HttpLimits {
            max_connections: count(
                "server.max_connections",
                raw.server.max_connections,
                defaults.max_connections,
                1,
                1_000_000,
            )?,
            header_timeout: duration(
                "server.header_timeout",
                raw.server.header_timeout,
                defaults.header_timeout,
            )?,
            body_timeout: duration(
                "server.body_timeout",
                raw.server.body_timeout,
                defaults.body_timeout,
            )?,
            max_header_bytes: count(
                "server.max_header_bytes",
                raw.server.max_header_bytes,
                defaults.max_header_bytes,
                1_024,
                1_048_576,
            )?,
            max_headers: defaults.max_headers,
        };
        let grpc_defaults = GrpcLimits::default();
        let grpc_limits = GrpcLimits {
            max_connections: count(
                "server.grpc_max_connections",
                raw.server.grpc_max_connections,
                grpc_defaults.max_connections,
                1,
                1_000_000,
            )?,
            // The preface and SETTINGS are a request head's HTTP/2 counterpart.
            handshake_timeout: duration(
                "server.grpc_handshake_timeout",
                raw.server.grpc_handshake_timeout,
                limits.header_timeout,
            )?,
            idle_timeout: match raw.server.grpc_idle_timeout {
                None => grpc_defaults.idle_timeout,
                Some(text) => parse_duration(&text, Duration::from_secs(86_400))
                    .map_err(|reason| err("server.grpc_idle_timeout", reason))?,
            },
        };
        let shutdown_grace = match raw.server.shutdown_grace {
            None => DEFAULT_SHUTDOWN_GRACE,
            Some(text) => parse_duration_or_zero(&text, Duration::from_secs(3_600))
                .map_err(|reason| err("server.shutdown_grace", reason))?,
        };
        let server = ServerConfig {
            http: addr("server.http", raw.server.http, "127.0.0.1:8080")?,
            grpc: addr("server.grpc", raw.server.grpc, "127.0.0.1:8081")?,
            admin_token: match raw.server.admin_token {
                Some(token) if token.trim().is_empty() => {
                    return Err(err(
                        "server.admin_token",
                        "must not be empty (remove the key to leave /v1/reset open)".into(),
                    ));
                }
                token => token.map(Secret),
            },
            limits,
            grpc_limits,
            shutdown_grace,
        };
        if server.http == server.grpc && server.http.port() != 0 {
            return Err(err(
                "server.grpc",
                format!("the same address as server.http ({})", server.http),
            ));
        }

        let url = parse_store_url(raw.store.url.as_deref().unwrap_or("memory://"))
            .map_err(|reason| err("store.url", reason))?;
        let max_keys = match raw.store.max_keys {
            None => SERVER_DEFAULT_MAX_KEYS,
            Some(_) if url != StoreUrl::Memory => {
                return Err(err(
                    "store.max_keys",
                    "applies to the memory store only (Redis keys expire by themselves)".into(),
                ));
            }
            Some(n) if n < 1 => {
                return Err(err(
                    "store.max_keys",
                    format!("must be at least 1, got {n}"),
                ));
            }
            Some(n) => usize::try_from(n)
                .map_err(|_| err("store.max_keys", format!("{n} is too large")))?,
        };
        let timeout = match raw.store.timeout {
            None => SERVER_DEFAULT_STORE_TIMEOUT,
            Some(text) => parse_duration(&text, Duration::from_secs(60))
                .map_err(|reason| err("store.timeout", reason))?,
        };
        let share = raw.store.local_share;
        if let Some(share) = share {
            FailurePolicy::Local { share }
                .validate()
                .map_err(|reason| err("store.local_share", reason))?;
        }
        let on_error = |raw: RawOnError| {
            failure_policy(raw, share).map_err(|reason| err("store.local_share", reason))
        };
        let tls_ca = match raw.store.tls_ca_file {
            None => None,
            Some(_) if !url.is_tls() => {
                return Err(err(
                    "store.tls_ca_file",
                    "applies to TLS store URLs only (rediss:// or rediss+cluster://)".into(),
                ));
            }
            Some(file_name) => {
                let path = dir.unwrap_or(Path::new(".")).join(&file_name);
                // Read as every config file is: only a regular file, capped, never blocking.
                let pem = match files::read_capped(&path, files::MAX_CONFIG_BYTES) {
                    Ok(pem) => pem.into_bytes(),
                    Err(files::ReadError::NotText) => Vec::new(),
                    Err(files::ReadError::Io(e)) => {
                        return Err(err(
                            "store.tls_ca_file",
                            format!("cannot read '{}': {e}", path.display()),
                        ));
                    }
                    Err(e) => {
                        return Err(err(
                            "store.tls_ca_file",
                            format!("'{}': {e}", path.display()),
                        ));
                    }
                };
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(err(
                        "store.tls_ca_file",
                        format!("'{}' holds no PEM certificate", path.display()),
                    ));
                }
                Some((path, pem))
            }
        };
        let connections = match raw.store.connections {
            None => 1,
            Some(_) if !matches!(url, StoreUrl::Redis(_)) => {
                return Err(err(
                    "store.connections",
                    "applies to the Redis store only".into(),
                ));
            }
            Some(n) => {
                let n = usize::try_from(n)
                    .map_err(|_| err("store.connections", format!("must be positive, got {n}")))?;
                if let StoreUrl::Redis(url) = &url {
                    floodgate_redis::check_connections(url.expose(), n)
                        .map_err(|reason| err("store.connections", reason))?;
                }
                n
            }
        };
        let store = StoreConfig {
            url,
            max_keys,
            connections,
            on_error: on_error(raw.store.on_error.unwrap_or(RawOnError::Allow))?,
            local_share: share,
            timeout,
            tls_ca,
        };

        let mut policies = BTreeMap::new();
        for (name, value) in raw.policies {
            let key = format!("policies.{}", bare_or_quoted(&name));
            if name.starts_with(RESERVED_PREFIX) {
                return Err(err(
                    &key,
                    format!("names starting with '{RESERVED_PREFIX}' are reserved for Envoy rules"),
                ));
            }
            let (limits, on_error, shadow) = match value {
                toml::Value::String(limits) => (limits, None, false),
                toml::Value::Table(table) => {
                    let raw: RawPolicy = toml::Value::Table(table)
                        .try_into()
                        .map_err(|e: toml::de::Error| err(&key, e.message().to_owned()))?;
                    (
                        raw.limits,
                        raw.on_error.map(on_error).transpose()?,
                        raw.shadow,
                    )
                }
                other => {
                    return Err(err(
                        &key,
                        format!(
                            "expected limits as a string (\"5/s burst 10\") or a table \
                             ({{ limits = \"…\", on_error = \"deny\" }}), got {}",
                            match other.type_str() {
                                kind @ ("integer" | "array") => format!("an {kind}"),
                                kind => format!("a {kind}"),
                            }
                        ),
                    ));
                }
            };
            let policy =
                Policy::parse(name.clone(), &limits).map_err(|e| err(&key, e.to_string()))?;
            policies.insert(
                name,
                PolicyConfig {
                    policy,
                    on_error,
                    shadow,
                },
            );
        }
        let (envoy, envoy_dir, envoy_options) = match raw.envoy {
            None => (Domains::default(), None, LoadOptions::default()),
            Some(raw) => {
                let Some(dir) = dir else {
                    return Err(err(
                        "envoy.config_dir",
                        "cannot be resolved without a config file".into(),
                    ));
                };
                let defaults = LoadOptions::default();
                let options = LoadOptions {
                    merge_domains: raw.merge_domains.unwrap_or(defaults.merge_domains),
                    max_file_bytes: match raw.max_file_bytes {
                        None => defaults.max_file_bytes,
                        Some(n) if !(1..=envoy::MAX_FILE_BYTES_LIMIT as i64).contains(&n) => {
                            return Err(err(
                                "envoy.max_file_bytes",
                                format!(
                                    "must be from 1 to {}, got {n}",
                                    envoy::MAX_FILE_BYTES_LIMIT
                                ),
                            ));
                        }
                        Some(n) => n.unsigned_abs(),
                    },
                };
                let path = dir.join(&raw.config_dir);
                if !path.is_dir() {
                    return Err(err(
                        "envoy.config_dir",
                        format!("'{}' is not a directory", path.display()),
                    ));
                }
                (envoy::load_dir(&path, &options)?, Some(path), options)
            }
        };
        if policies.is_empty() && envoy.is_empty() {
            return Err(err(
                "policies",
                "no policies and no Envoy domains: nothing to serve".into(),
            ));
        }
        Ok(Config {
            source: Some(file.to_path_buf()),
            server,
            store,
            policies,
            envoy,
            envoy_dir,
            envoy_options,
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
            let _ = writeln!(out);
        }
        if let Some(dir) = &self.envoy_dir {
            let _ = writeln!(
                out,
                "envoy: config_dir {}, merge_domains {}, max_file_bytes {}",
                dir.display(),
                self.envoy_options.merge_domains,
                self.envoy_options.max_file_bytes
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

/// A duration such as `"50ms"` or `"10s"`: above zero and at most `max`.
fn parse_duration(text: &str, max: Duration) -> Result<Duration, String> {
    duration_within(text, false, max)
}

/// A duration such as `"10s"`, or `"0s"`: at most `max`.
fn parse_duration_or_zero(text: &str, max: Duration) -> Result<Duration, String> {
    duration_within(text, true, max)
}

fn duration_within(text: &str, zero_allowed: bool, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration such as \"50ms\": {e}"))?;
    if (duration.is_zero() && !zero_allowed) || duration > max {
        return Err(format!(
            "must be {}at most {}, got '{text}'",
            if zero_allowed { "" } else { "above 0 and " },
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

/// The dotted key and the 1-based line of a byte offset in TOML text: the key on that line
/// (or the table header's name) under the last `[table]` header above it.
fn locate(text: &str, offset: usize) -> (String, usize) {
    let mut offset = offset.min(text.len());
    // Slice only at character boundaries, whatever offset the parser reports.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..offset].matches('\n').count() + 1;
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|h| h.trim_matches(['[', ']', ' ']).to_owned())
    };
    if let Some(table) = header(line) {
        return (table, line_no);
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| header(l.trim()));
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .unwrap_or_default();
    let dotted = match (table, key.is_empty()) {
        (Some(table), false) => format!("{table}.{key}"),
        (Some(table), true) => table,
        (None, _) => key,
    };
    (dotted, line_no)
}

/// A TOML key as written in a dotted path: bare when it can be, else quoted.
fn bare_or_quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn parse_store_url(url: &str) -> Result<StoreUrl, String> {
    if url == "memory://" {
        return Ok(StoreUrl::Memory);
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some("redis" | "rediss" | "redis+cluster" | "rediss+cluster") => {
            Ok(StoreUrl::Redis(Secret(url.to_owned())))
        }
        _ => Err(format!(
            "'{}' is not a store URL: use memory://, redis://host:port, rediss://host:port, \
             redis+cluster://h1:p1,h2:p2 or rediss+cluster://h1:p1,h2:p2",
            redact_url(url)
        )),
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
    fn error_locations_inside_multibyte_text_do_not_panic() {
        let text = "[policies]\nfree = \"5/s é\"\n";
        for offset in 0..=text.len() + 3 {
            let _ = locate(text, offset);
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://app:hunter2@10.0.0.1:6379/0"),
            "redis://app:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:hunter2@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(
            redact_url("redis+cluster://u:p@a:1,u:p@b:2"),
            "redis+cluster://u:***@a:1,u:***@b:2"
        );
        let secret = Secret("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
