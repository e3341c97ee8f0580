//! `GET /v1/config`: the effective configuration as JSON (never a secret); `GET /v1/stats`:
//! live rates and the store's health; and the per-limit gauges of `/metrics`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use floodgate::{Clock as _, Limit, Policy, Store as _};
use http::{HeaderMap, header};
use serde_json::{Value, json};

use super::authorize;
use crate::config::{StoreUrl, on_error_name};
use crate::rules::{Action, Rule};
use crate::state::{Served, Shared};

pub(super) async fn config(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let current = shared.served.load();
    if let Err(response) = authorize(&shared, &current, &headers, "GET /v1/config") {
        return response;
    }
    let log = reload_log(&shared);
    let body = view(&current, log.applied, log.failed.as_ref());
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) async fn stats(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let current = shared.served.load();
    if let Err(response) = authorize(&shared, &current, &headers, "GET /v1/stats") {
        return response;
    }
    let log = reload_log(&shared);
    let metrics = &shared.metrics;
    let policies: Vec<Value> = shared
        .history
        .rates()
        .into_iter()
        .map(|(name, rates)| {
            json!({
                "name": name,
                "allowed_per_second": rates.allowed,
                "denied_per_second": rates.denied,
                "shadow_denied_per_second": rates.shadow_denied,
            })
        })
        .collect();
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let quantiles = metrics.store_latency_quantiles(&[0.5, 0.99]);
    let [fail_open, fail_closed, local, cache_hits] = metrics.fallback_totals();
    let mut store = json!({
        "kind": match current.config.store.url { StoreUrl::Memory => "memory", StoreUrl::Redis(_) => "redis" },
        "latency_ms_p50_at_most": ms(quantiles[0]),
        "latency_ms_p99_at_most": ms(quantiles[1]),
        "errors": metrics.store_errors(),
        "fallback_decisions": { "fail_open": fail_open, "fail_closed": fail_closed, "local": local },
        "deny_cache_hits": cache_hits,
        "breaker": Value::Null,
    });
    let now = current.limiter.store().clock().now_nanos();
    let mut concurrency: Vec<(&String, &crate::state::ServedConcurrency)> =
        current.concurrency.iter().collect();
    concurrency.sort_by(|a, b| a.0.cmp(b.0));
    let concurrency: Vec<Value> = concurrency
        .into_iter()
        .map(|(name, served)| {
            let mut entry = json!({
                "name": name,
                "max": served.limit.max(),
                "lease_ms": u64::try_from(served.limit.lease_time().as_millis()).unwrap_or(u64::MAX),
                "in_flight": served.counters.in_flight(now),
            });
            for (outcome, count) in served.counters.totals() {
                entry[outcome] = count.into();
            }
            entry
        })
        .collect();
    store["permits_reclaimed"] = current.limiter.store().permits_reclaimed().into();
    if let crate::state::AnyStore::Redis(redis) = current.limiter.store() {
        let health = redis.health();
        store["permit_calls"] = health.stats.permit_calls.into();
        store["permit_operations"] = health.stats.permit_operations.into();
        store["breaker"] = health.breaker.as_str().into();
        store["script_calls"] = health.stats.script_calls.into();
        store["decisions_sent"] = health.stats.decisions.into();
        store["master_switches"] = health.stats.master_switches.into();
        store["lease_tokens"] = json!({
            "leased": health.stats.leased_tokens,
            "spent": health.stats.spent_lease_tokens,
            "expired": health.stats.expired_lease_tokens,
        });
    }
    let (ok, failed) = metrics.reloads();
    let body = json!({
        "version": current.version,
        "uptime_s": shared.started.elapsed().as_secs(),
        "window_s": crate::history::WINDOW_SECS,
        "resolution_s": 1,
        "reloads": {
            "applied": ok,
            "failed": failed,
            "applied_at": time(log.applied),
            "last_failed": log.failed.as_ref().map(|(at, error)| json!({ "at": time(*at), "error": error })),
        },
        "policies": policies,
        "concurrency": concurrency,
        "store": store,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A copy of when the served config was applied and the last refused reload.
fn reload_log(shared: &Shared) -> crate::state::ReloadLog {
    shared
        .reloads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

fn limits(limits: &[Limit]) -> Value {
    limits
        .iter()
        .map(|l| {
            json!({
                "limit": l.to_string(),
                "count": l.count(),
                "period_ms": u64::try_from(l.period().as_millis()).unwrap_or(u64::MAX),
                "burst": l.capacity(),
            })
        })
        .collect()
}

fn rule(rule: &Rule) -> Value {
    let (action, policy) = match &rule.action {
        Action::Unlimited => ("unlimited", None),
        Action::Block => ("block", None),
        Action::Bucket(policy) => ("bucket", Some(policy)),
    };
    json!({
        "key": rule.key,
        "name": rule.name,
        "action": action,
        "requests_per_unit": rule.requests_per_unit,
        "unit": rule.unit.map(|u| u.name()),
        "policy": policy.map(Policy::name),
        "limits": policy.map_or(Value::Array(Vec::new()), |p| limits(p.limits())),
        "shadow_mode": rule.shadow,
        "quota_mode": rule.quota,
        "charge": rule.charge,
        "replaces": rule.replaces,
    })
}

/// The JSON view of the served configuration.
fn view(current: &Served, applied: SystemTime, failed: Option<&(SystemTime, String)>) -> Value {
    let config = &current.config;
    let store = &config.store;
    let store_view = match store.url {
        StoreUrl::Memory => json!({ "url": "memory://", "max_keys": store.max_keys }),
        StoreUrl::Redis(_) => json!({
            "url": store.url.redacted(),
            "timeout_ms": u64::try_from(store.timeout.as_millis()).unwrap_or(u64::MAX),
            "on_error": on_error_name(store.on_error),
            "local_share": store.local_share,
            "connections": store.connections,
            "batching": store.batching,
        }),
    };
    let policies: Vec<Value> = config
        .policies
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "limits": limits(p.policy.limits()),
                "on_error": on_error_name(config.on_error_for(name)),
                "shadow": p.shadow,
                "lease_ms": p.lease.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            })
        })
        .collect();
    let login: Vec<Value> = config
        .login
        .iter()
        .map(|(name, g)| {
            let c = &g.config;
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            json!({
                "name": name,
                "per_ip": limits(&c.per_ip),
                "per_user": limits(&c.per_user),
                "per_pair": limits(&c.per_pair),
                "strikes": c.strikes,
                "strike_window_ms": ms(c.strike_window),
                "lockouts_ms": c.lockouts.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "forget_after_ms": ms(c.forget_after),
                "known_device_for_ms": ms(c.known_device_for),
                "secret": c.secret.is_some(),
                "on_error": on_error_name(g.on_error),
            })
        })
        .collect();
    let concurrency: Vec<Value> = config
        .concurrency
        .iter()
        .map(|(name, c)| {
            json!({
                "name": name,
                "max": c.limit.max(),
                "lease_ms": u64::try_from(c.limit.lease_time().as_millis()).unwrap_or(u64::MAX),
                "on_error": on_error_name(c.on_error.unwrap_or(config.store.on_error)),
            })
        })
        .collect();
    let domains: Vec<Value> = config
        .envoy
        .iter()
        .map(|domain| {
            json!({
                "name": domain.name(),
                "files": domain.files().iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
                "rules": domain.rules().iter().map(|r| rule(r)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": current.version,
        "source": config.source.as_ref().map(|p| p.display().to_string()),
        "applied_at": time(applied),
        "last_failed_reload": failed.map(|(at, error)| json!({ "at": time(*at), "error": error })),
        "admin_token": config.server.admin_token.is_some(),
        "store": store_view,
        "policies": policies,
        "login": login,
        "concurrency": concurrency,
        "envoy": {
            "config_dir": config.envoy_dir.as_ref().map(|p| p.display().to_string()),
            "merge_domains": config.envoy_options.merge_domains,
            "domains": domains,
        },
    })
}

/// `floodgate_limit_burst` and `floodgate_limit_rate_per_second` for every limit of the
/// `[policies]` and of the named Envoy rules, from the served configuration (so a reload
/// drops the series of what it removed).
pub(super) fn limit_gauges(current: &Served, out: &mut String) {
    let config = &current.config;
    let mut all: Vec<(&str, &[Limit])> = config
        .policies
        .values()
        .map(|p| (p.policy.name(), p.policy.limits()))
        .collect();
    let rules: Vec<Arc<Rule>> = config.envoy.iter().flat_map(|d| d.rules()).collect();
    for rule in &rules {
        if let (Some(_), Action::Bucket(policy)) = (&rule.name, &rule.action) {
            all.push((policy.name(), policy.limits()));
        }
    }
    if all.is_empty() {
        return;
    }
    all.sort_by(|a, b| a.0.cmp(b.0));
    out.push_str(
        "# HELP floodgate_limit_burst The burst (bucket capacity) of each configured limit, by policy and limit index.\n\
         # TYPE floodgate_limit_burst gauge\n",
    );
    for (policy, limits) in &all {
        for (i, limit) in limits.iter().enumerate() {
            let _ = writeln!(
                out,
                "floodgate_limit_burst{{policy=\"{policy}\",limit=\"{i}\"}} {}",
                limit.capacity()
            );
        }
    }
    out.push_str(
        "# HELP floodgate_limit_rate_per_second The sustained rate of each configured limit, in tokens per second.\n\
         # TYPE floodgate_limit_rate_per_second gauge\n",
    );
    for (policy, limits) in &all {
        for (i, limit) in limits.iter().enumerate() {
            let rate = f64::from(limit.count()) / limit.period().as_secs_f64();
            let _ = writeln!(
                out,
                "floodgate_limit_rate_per_second{{policy=\"{policy}\",limit=\"{i}\"}} {rate}"
            );
        }
    }
}
