//! One function per section of the config file, each converting its raw serde table into
//! validated settings, with errors naming the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use floodgate::{Concurrency, FailurePolicy, Policy};
use serde::Deserialize;

use super::envoy::{self, LoadOptions};
use super::toml_location::bare_or_quoted;
use super::{
    ConcurrencyConfig, ConfigError, EnvoyModes, LOGIN_PREFIX, LoginGuardConfig, PolicyConfig,
    RESERVED_PREFIX, SERVER_DEFAULT_MAX_KEYS, SERVER_DEFAULT_STORE_TIMEOUT, Secret, ServerConfig,
    StoreConfig, StoreUrl, redact_url,
};
use crate::files;
use crate::listener::{DEFAULT_SHUTDOWN_GRACE, GrpcLimits, HttpLimits};
use crate::rules::Domains;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) policies: BTreeMap<String, toml::Value>,
    pub(super) envoy: Option<RawEnvoy>,
    #[serde(default)]
    pub(super) login: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub(super) concurrency: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
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
    top_keys: Option<i64>,
    top_keys_memory: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    url: Option<String>,
    max_keys: Option<i64>,
    on_error: Option<RawOnError>,
    local_share: Option<f64>,
    timeout: Option<String>,
    tls_ca_file: Option<String>,
    connections: Option<i64>,
    batching: Option<bool>,
    sentinel_password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    limits: String,
    on_error: Option<RawOnError>,
    #[serde(default)]
    shadow: bool,
    lease: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    max: i64,
    lease: Option<String>,
    on_error: Option<RawOnError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    per_ip: Option<String>,
    per_user: Option<String>,
    per_pair: Option<String>,
    strikes: Option<i64>,
    strike_window: Option<String>,
    lockouts: Option<Vec<String>>,
    forget_after: Option<String>,
    known_device_for: Option<String>,
    secret: Option<String>,
    on_error: Option<RawOnError>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvoy {
    config_dir: String,
    merge_domains: Option<bool>,
    max_file_bytes: Option<i64>,
    #[serde(default)]
    quota_mode: bool,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    response_dynamic_metadata: bool,
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

/// `[server]`.
pub(super) fn server_section(raw: RawServer, file: &Path) -> Result<ServerConfig, ConfigError> {
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
    let count = |key: &str, value: Option<i64>, default: usize, min: i64, max: i64| match value {
        None => Ok(default),
        Some(n) if n < min || n > max => {
            Err(err(key, format!("must be from {min} to {max}, got {n}")))
        }
        Some(n) => usize::try_from(n).map_err(|_| err(key, format!("{n} is out of range"))),
    };
    let limits = HttpLimits {
        max_connections: count(
            "server.max_connections",
            raw.max_connections,
            defaults.max_connections,
            1,
            1_000_000,
        )?,
        header_timeout: duration(
            "server.header_timeout",
            raw.header_timeout,
            defaults.header_timeout,
        )?,
        body_timeout: duration(
            "server.body_timeout",
            raw.body_timeout,
            defaults.body_timeout,
        )?,
        max_header_bytes: count(
            "server.max_header_bytes",
            raw.max_header_bytes,
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
            raw.grpc_max_connections,
            grpc_defaults.max_connections,
            1,
            1_000_000,
        )?,
        // The preface and SETTINGS are a request head's HTTP/2 counterpart.
        handshake_timeout: duration(
            "server.grpc_handshake_timeout",
            raw.grpc_handshake_timeout,
            limits.header_timeout,
        )?,
        idle_timeout: match raw.grpc_idle_timeout {
            None => grpc_defaults.idle_timeout,
            Some(text) => parse_duration(&text, Duration::from_secs(86_400))
                .map_err(|reason| err("server.grpc_idle_timeout", reason))?,
        },
    };
    let shutdown_grace = match raw.shutdown_grace {
        None => DEFAULT_SHUTDOWN_GRACE,
        Some(text) => parse_duration_or_zero(&text, Duration::from_secs(3_600))
            .map_err(|reason| err("server.shutdown_grace", reason))?,
    };
    let top_keys = count("server.top_keys", raw.top_keys, 1_000, 0, 100_000)?;
    let top_keys_memory = count(
        "server.top_keys_memory",
        raw.top_keys_memory,
        64 << 20,
        1 << 20,
        1 << 40,
    )?;
    let server = ServerConfig {
        top_keys,
        top_keys_memory,
        http: addr("server.http", raw.http, "127.0.0.1:8080")?,
        grpc: addr("server.grpc", raw.grpc, "127.0.0.1:8081")?,
        admin_token: match raw.admin_token {
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
    Ok(server)
}

/// `[store]`; `dir` resolves `tls_ca_file`.
pub(super) fn store_section(
    raw: RawStore,
    file: &Path,
    dir: Option<&Path>,
) -> Result<StoreConfig, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let url = parse_store_url(raw.url.as_deref().unwrap_or("memory://"))
        .map_err(|reason| err("store.url", reason))?;
    let max_keys = match raw.max_keys {
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
        Some(n) => {
            usize::try_from(n).map_err(|_| err("store.max_keys", format!("{n} is too large")))?
        }
    };
    let timeout = match raw.timeout {
        None => SERVER_DEFAULT_STORE_TIMEOUT,
        Some(text) => parse_duration(&text, Duration::from_secs(60))
            .map_err(|reason| err("store.timeout", reason))?,
    };
    let share = raw.local_share;
    if let Some(share) = share {
        FailurePolicy::Local { share }
            .validate()
            .map_err(|reason| err("store.local_share", reason))?;
    }
    let on_error = |raw: RawOnError| {
        failure_policy(raw, share).map_err(|reason| err("store.local_share", reason))
    };
    let tls_ca = match raw.tls_ca_file {
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
    let connections = match raw.connections {
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
    if raw.batching.is_some() && !matches!(url, StoreUrl::Redis(_)) {
        return Err(err(
            "store.batching",
            "applies to the Redis store only".into(),
        ));
    }
    let sentinel_password = match raw.sentinel_password {
        None => None,
        Some(_) if !url.is_sentinel() => {
            return Err(err(
                "store.sentinel_password",
                "applies to Sentinel store URLs only (redis+sentinel:// or rediss+sentinel://)"
                    .into(),
            ));
        }
        Some(password) => Some(Secret(password)),
    };
    let store = StoreConfig {
        url,
        max_keys,
        connections,
        batching: raw.batching,
        sentinel_password,
        on_error: on_error(raw.on_error.unwrap_or(RawOnError::Allow))?,
        local_share: share,
        timeout,
        tls_ca,
    };
    Ok(store)
}

/// `[policies]`; `local_share` is the store's, for `on_error = "local"`.
pub(super) fn policies_section(
    raw: BTreeMap<String, toml::Value>,
    file: &Path,
    local_share: Option<f64>,
    store: &StoreUrl,
) -> Result<BTreeMap<String, PolicyConfig>, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let on_error = |raw: RawOnError| {
        failure_policy(raw, local_share).map_err(|reason| err("store.local_share", reason))
    };
    let mut policies = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("policies.{}", bare_or_quoted(&name));
        if name.starts_with(RESERVED_PREFIX) {
            return Err(err(
                &key,
                format!("names starting with '{RESERVED_PREFIX}' are reserved for Envoy rules"),
            ));
        }
        if name.starts_with(LOGIN_PREFIX) {
            return Err(err(
                &key,
                format!("names starting with '{LOGIN_PREFIX}' are reserved for [login] guards"),
            ));
        }
        let (limits, on_error, shadow, lease) = match value {
            toml::Value::String(limits) => (limits, None, false, None),
            toml::Value::Table(table) => {
                let raw: RawPolicy = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| err(&key, e.message().to_owned()))?;
                let lease = match raw.lease {
                    None => None,
                    Some(_) if !matches!(store, StoreUrl::Redis(_)) => {
                        return Err(err(
                            &format!("{key}.lease"),
                            "token leasing needs a Redis store (the memory store is local \
                             already)"
                                .into(),
                        ));
                    }
                    Some(text) => Some(
                        parse_duration(&text, Duration::from_secs(60))
                            .map_err(|reason| err(&format!("{key}.lease"), reason))?,
                    ),
                };
                (
                    raw.limits,
                    raw.on_error.map(on_error).transpose()?,
                    raw.shadow,
                    lease,
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
        let policy = Policy::parse(name.clone(), &limits).map_err(|e| err(&key, e.to_string()))?;
        policies.insert(
            name,
            PolicyConfig {
                policy,
                on_error,
                shadow,
                lease,
            },
        );
    }
    Ok(policies)
}

/// `[login]`: named login guards, each a table whose keys all have defaults (`web = {}`).
/// Guard names share the namespace of `[policies]`.
pub(super) fn login_section(
    raw: BTreeMap<String, toml::Value>,
    file: &Path,
    local_share: Option<f64>,
    policies: &BTreeMap<String, PolicyConfig>,
) -> Result<BTreeMap<String, LoginGuardConfig>, ConfigError> {
    use floodgate::login::LoginConfig;
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let mut guards = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("login.{}", bare_or_quoted(&name));
        if policies.contains_key(&name) {
            return Err(err(
                &key,
                format!(
                    "a policy is named '{}' too: guard names share the namespace of [policies]",
                    name.escape_debug()
                ),
            ));
        }
        let toml::Value::Table(table) = value else {
            return Err(err(
                &key,
                format!(
                    "expected a table of settings (`{} = {{}}` takes every default), got a {}",
                    bare_or_quoted(&name),
                    value.type_str()
                ),
            ));
        };
        let raw: RawLogin = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err(&key, e.message().to_owned()))?;
        let at = |field: &str| format!("{key}.{field}");
        let mut config = LoginConfig::default();
        let limits = |field: &str, text: Option<String>, default: &mut Vec<floodgate::Limit>| {
            if let Some(text) = text {
                // Parsed as a policy is: the same notation and checks.
                let policy =
                    Policy::parse("login", &text).map_err(|e| err(&at(field), e.to_string()))?;
                *default = policy.limits().to_vec();
            }
            Ok::<(), ConfigError>(())
        };
        limits("per_ip", raw.per_ip, &mut config.per_ip)?;
        limits("per_user", raw.per_user, &mut config.per_user)?;
        limits("per_pair", raw.per_pair, &mut config.per_pair)?;
        let year = Duration::from_secs(365 * 86_400);
        let duration =
            |field: &str, text: Option<String>, default: Duration, max: Duration| match text {
                None => Ok(default),
                Some(text) => parse_duration(&text, max).map_err(|reason| err(&at(field), reason)),
            };
        if let Some(strikes) = raw.strikes {
            config.strikes = match u32::try_from(strikes) {
                Ok(n @ 1..=1_000) => n,
                _ => {
                    return Err(err(
                        &at("strikes"),
                        format!("must be from 1 to 1000, got {strikes}"),
                    ));
                }
            };
        }
        config.strike_window = duration(
            "strike_window",
            raw.strike_window,
            config.strike_window,
            year,
        )?;
        if let Some(lockouts) = raw.lockouts {
            config.lockouts = lockouts
                .iter()
                .map(|text| {
                    parse_duration(text, floodgate::login::MAX_LOCKOUT)
                        .map_err(|reason| err(&at("lockouts"), reason))
                })
                .collect::<Result<_, _>>()?;
        }
        config.forget_after =
            duration("forget_after", raw.forget_after, config.forget_after, year)?;
        config.known_device_for = duration(
            "known_device_for",
            raw.known_device_for,
            config.known_device_for,
            10 * year,
        )?;
        if let Some(secret) = raw.secret {
            if secret.len() < 16 {
                return Err(err(
                    &at("secret"),
                    format!(
                        "must be at least 16 bytes (a random string shared by every node), got {}",
                        secret.len()
                    ),
                ));
            }
            config.secret = Some(secret.into_bytes());
        }
        let on_error = match raw.on_error {
            None => FailurePolicy::Deny,
            Some(raw) => {
                failure_policy(raw, local_share).map_err(|reason| err(&at("on_error"), reason))?
            }
        };
        // Every other check the guard makes (names, zero lengths, whole milliseconds).
        let policies = config
            .policies(&name)
            .map_err(|e| err(&key, e.to_string()))?;
        guards.insert(
            name,
            LoginGuardConfig {
                config,
                on_error,
                policies,
            },
        );
    }
    Ok(guards)
}

/// `[concurrency]`: named concurrency limits, each `name = { max = 20, lease = "30s" }` (or
/// `name = 20`, the default lease). Names share the namespace of `[policies]` and `[login]`.
pub(super) fn concurrency_section(
    raw: BTreeMap<String, toml::Value>,
    file: &Path,
    local_share: Option<f64>,
    policies: &BTreeMap<String, PolicyConfig>,
    login: &BTreeMap<String, LoginGuardConfig>,
) -> Result<BTreeMap<String, ConcurrencyConfig>, ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    let mut limits = BTreeMap::new();
    for (name, value) in raw {
        let key = format!("concurrency.{}", bare_or_quoted(&name));
        let clash = if policies.contains_key(&name) {
            Some("a policy")
        } else if login.contains_key(&name) {
            Some("a login guard")
        } else {
            None
        };
        if let Some(other) = clash {
            return Err(err(
                &key,
                format!(
                    "{other} is named '{}' too: concurrency limits share the namespace of \
                     [policies] and [login]",
                    name.escape_debug()
                ),
            ));
        }
        for prefix in [RESERVED_PREFIX, LOGIN_PREFIX] {
            if name.starts_with(prefix) {
                return Err(err(
                    &key,
                    format!("names starting with '{prefix}' are reserved"),
                ));
            }
        }
        let raw = match value {
            toml::Value::Integer(max) => RawConcurrency {
                max,
                lease: None,
                on_error: None,
            },
            toml::Value::Table(table) => toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| err(&key, e.message().to_owned()))?,
            other => {
                return Err(err(
                    &key,
                    format!(
                        "expected the most in flight (20) or a table ({{ max = 20, lease = \
                         \"30s\" }}), got a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let max = u32::try_from(raw.max)
            .ok()
            .filter(|&max| max >= 1)
            .ok_or_else(|| {
                err(
                    &format!("{key}.max"),
                    format!("must be from 1 to {}, got {}", u32::MAX, raw.max),
                )
            })?;
        let mut limit =
            Concurrency::named(name.clone(), max).map_err(|e| err(&key, e.to_string()))?;
        if let Some(text) = raw.lease {
            let lease = parse_duration(&text, floodgate::concurrency::MAX_LEASE)
                .map_err(|reason| err(&format!("{key}.lease"), reason))?;
            limit = limit
                .lease(lease)
                .map_err(|e| err(&format!("{key}.lease"), e.to_string()))?;
        }
        let on_error = raw
            .on_error
            .map(|raw| failure_policy(raw, local_share))
            .transpose()
            .map_err(|reason| err("store.local_share", reason))?;
        limits.insert(name, ConcurrencyConfig { limit, on_error });
    }
    Ok(limits)
}

/// `[envoy]`: the domains loaded from `config_dir` (resolved against `dir`), the directory,
/// and how it was loaded.
pub(super) fn envoy_section(
    raw: Option<RawEnvoy>,
    file: &Path,
    dir: Option<&Path>,
) -> Result<(Domains, Option<PathBuf>, LoadOptions, EnvoyModes), ConfigError> {
    let err = |key: &str, reason: String| ConfigError::new(file, key, reason);
    Ok(match raw {
        None => (
            Domains::default(),
            None,
            LoadOptions::default(),
            EnvoyModes::default(),
        ),
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
                            format!("must be from 1 to {}, got {n}", envoy::MAX_FILE_BYTES_LIMIT),
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
            let modes = EnvoyModes {
                quota_mode: raw.quota_mode,
                shadow_mode: raw.shadow_mode,
                response_dynamic_metadata: raw.response_dynamic_metadata,
            };
            (
                envoy::load_dir(&path, &options)?,
                Some(path),
                options,
                modes,
            )
        }
    })
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

pub(super) fn parse_store_url(url: &str) -> Result<StoreUrl, String> {
    if url == "memory://" {
        return Ok(StoreUrl::Memory);
    }
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(
            "redis" | "rediss" | "redis+cluster" | "rediss+cluster" | "redis+sentinel"
            | "rediss+sentinel",
        ) => Ok(StoreUrl::Redis(Secret(url.to_owned()))),
        _ => Err(format!(
            "'{}' is not a store URL: use memory://, redis://host:port, rediss://host:port, \
             redis+cluster://h1:p1,h2:p2, rediss+cluster://h1:p1,h2:p2, \
             redis+sentinel://h1:p1,h2:p2/master-name or rediss+sentinel://h1:p1,h2:p2/master-name",
            redact_url(url)
        )),
    }
}
