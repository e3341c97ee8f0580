//! Prometheus metrics, kept per server instance in atomics (no global recorder, so several
//! servers in one process — the tests — count separately). Labels are policy names and fixed
//! outcome words: a raw key is never a label.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodgate::{Decision, DecisionSource};

/// Counters of one policy (or one Envoy rule).
#[derive(Debug, Default)]
pub struct PolicyCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
    shadow_denied: AtomicU64,
    charged: AtomicU64,
    fail_open: AtomicU64,
    fail_closed: AtomicU64,
    local: AtomicU64,
    cache_hits: AtomicU64,
}

impl PolicyCounters {
    /// Counts one decision; `shadow` marks a policy in shadow mode.
    pub fn record(&self, decision: &Decision, shadow: bool) {
        let outcome = match (decision.is_allowed(), shadow) {
            (true, _) => &self.allowed,
            (false, false) => &self.denied,
            (false, true) => &self.shadow_denied,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        self.record_source(decision);
    }

    /// Counts one charge (`POST /v1/charge`): usage reported after the fact, neither allowed
    /// nor denied.
    pub fn record_charge(&self, decision: &Decision) {
        self.charged.fetch_add(1, Ordering::Relaxed);
        self.record_source(decision);
    }

    fn record_source(&self, decision: &Decision) {
        let source = match decision.source() {
            DecisionSource::FailOpen => &self.fail_open,
            DecisionSource::FailClosed => &self.fail_closed,
            DecisionSource::LocalFallback => &self.local,
            DecisionSource::Cache => &self.cache_hits,
            _ => return,
        };
        source.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one login guard: attempts by answer, results by outcome. Labels are the
/// guard's name and fixed words, never a username or an address.
#[derive(Debug, Default)]
pub struct LoginCounters {
    /// Attempts by answer, in the order of [`LOGIN_ANSWERS`].
    attempts: [AtomicU64; 6],
    success: AtomicU64,
    failure: AtomicU64,
    store_errors: AtomicU64,
}

/// What an attempt was answered: allowed, refused by a rule, or refused because the store
/// failed (`unavailable`, under `on_error = "deny"`).
pub const LOGIN_ANSWERS: [&str; 6] = [
    "allowed",
    "ip",
    "username",
    "pair",
    "lockout",
    "unavailable",
];

impl LoginCounters {
    /// Counts an attempt answered `answer` (one of [`LOGIN_ANSWERS`]).
    pub fn attempt(&self, answer: &str) {
        if let Some(i) = LOGIN_ANSWERS.iter().position(|a| *a == answer) {
            self.attempts[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Counts a recorded result.
    pub fn result(&self, success: bool) {
        let counter = if success {
            &self.success
        } else {
            &self.failure
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts a store failure during an attempt or a record.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the store latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25,
];

/// A listener, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP JSON API.
    Http = 0,
    /// The Envoy RLS gRPC API.
    Grpc = 1,
}

impl Listener {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Grpc => "grpc",
        }
    }
}

/// Why the server closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The first request head (HTTP) or the HTTP/2 preface and `SETTINGS` (gRPC) did not
    /// arrive in time.
    HandshakeTimeout = 0,
    /// No request for the keep-alive (HTTP) or idle (gRPC) timeout.
    Idle = 1,
    /// Drained or cut at shutdown.
    Shutdown = 2,
}

impl Closed {
    const ALL: [Closed; 3] = [Closed::HandshakeTimeout, Closed::Idle, Closed::Shutdown];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Closed::HandshakeTimeout => "handshake_timeout",
            Closed::Idle => "idle",
            Closed::Shutdown => "shutdown",
        }
    }
}

const LISTENERS: [Listener; 2] = [Listener::Http, Listener::Grpc];

/// All of one server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    policies: ByName<PolicyCounters>,
    logins: ByName<LoginCounters>,
    concurrency: ByName<crate::permits::ConcurrencyCounters>,
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    store_errors: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    config_version: AtomicU64,
    grpc_requests: AtomicU64,
    http_bad_requests: AtomicU64,
    closed: [[AtomicU64; 3]; 2],
    accept_errors: [AtomicU64; 2],
}

impl Metrics {
    /// The counters of `policy`, created on first use and kept across reloads.
    pub fn policy(&self, policy: &str) -> Arc<PolicyCounters> {
        entry(&self.policies, policy)
    }

    /// Every policy's (allowed, denied, shadow-denied) totals, by name.
    pub fn policy_totals(&self) -> Vec<(String, [u64; 3])> {
        sorted(&self.policies)
            .into_iter()
            .map(|(name, c)| {
                let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (
                    name,
                    [load(&c.allowed), load(&c.denied), load(&c.shadow_denied)],
                )
            })
            .collect()
    }

    /// Totals over every policy: fallback decisions (fail open, fail closed, local) and
    /// deny-cache hits.
    pub fn fallback_totals(&self) -> [u64; 4] {
        let mut totals = [0; 4];
        for (_, c) in sorted(&self.policies) {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            totals[0] += load(&c.fail_open);
            totals[1] += load(&c.fail_closed);
            totals[2] += load(&c.local);
            totals[3] += load(&c.cache_hits);
        }
        totals
    }

    /// Store calls that failed so far.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed)
    }

    /// Upper bounds of the store latency quantiles `qs` (each in (0, 1]), from the
    /// histogram's buckets; `None` before the first call (or beyond the last bucket).
    pub fn store_latency_quantiles(&self, qs: &[f64]) -> Vec<Option<Duration>> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        qs.iter()
            .map(|q| {
                if total == 0 {
                    return None;
                }
                let wanted = (q * total as f64).ceil() as u64;
                let mut cumulative = 0;
                for (i, count) in counts.iter().enumerate() {
                    cumulative += count;
                    if cumulative >= wanted.max(1) {
                        return BUCKETS.get(i).map(|s| Duration::from_secs_f64(*s));
                    }
                }
                None
            })
            .collect()
    }

    /// Keeps the counters of the policies in `live` and drops every other series (called at
    /// reload, so removed policies leave `/metrics`).
    pub fn retain_policies(&self, live: &std::collections::HashSet<&str>) {
        retain(&self.policies, live);
    }

    /// The counters of login guard `guard`, created on first use and kept across reloads.
    pub fn login(&self, guard: &str) -> Arc<LoginCounters> {
        entry(&self.logins, guard)
    }

    /// Keeps the counters of the guards in `live` (called at reload).
    pub fn retain_logins(&self, live: &std::collections::HashSet<&str>) {
        retain(&self.logins, live);
    }

    /// The counters of concurrency limit `name`, created on first use and kept across
    /// reloads.
    pub fn concurrency(&self, name: &str) -> Arc<crate::permits::ConcurrencyCounters> {
        entry(&self.concurrency, name)
    }

    /// Keeps the counters of the concurrency limits in `live` (called at reload).
    pub fn retain_concurrency(&self, live: &std::collections::HashSet<&str>) {
        retain(&self.concurrency, live);
    }

    /// Every concurrency limit's counters, by name.
    pub fn concurrency_counters(&self) -> Vec<(String, Arc<crate::permits::ConcurrencyCounters>)> {
        sorted(&self.concurrency)
    }

    /// Counts a connection the server closed.
    pub fn closed(&self, listener: Listener, reason: Closed) {
        self.closed[listener as usize][reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed `accept` (such as running out of file descriptors).
    pub fn accept_error(&self, listener: Listener) {
        self.accept_errors[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long one store call took.
    pub fn store_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(BUCKETS.len());
        self.latency[slot].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a store call that failed.
    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reload attempt and, when it succeeded, the new config version.
    pub fn reload(&self, result: Result<u64, ()>) {
        match result {
            Ok(version) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.config_version.store(version, Ordering::Relaxed);
            }
            Err(()) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sets the version of the config being served.
    pub fn set_version(&self, version: u64) {
        self.config_version.store(version, Ordering::Relaxed);
    }

    /// Counts one `ShouldRateLimit` call.
    pub fn grpc_request(&self) {
        self.grpc_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one HTTP request answered with a 4xx problem.
    pub fn bad_request(&self) {
        self.http_bad_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Reload counts: (succeeded, failed).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let policies = sorted(&self.policies);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        let family =
            |out: &mut String,
             name: &str,
             help: &str,
             label: &str,
             counters: &dyn Fn(&PolicyCounters) -> Vec<(&'static str, u64)>| {
                header(out, name, "counter", help);
                for (policy, c) in &policies {
                    for (value, count) in counters(c) {
                        let _ = writeln!(
                            out,
                            "{name}{{policy=\"{policy}\",{label}=\"{value}\"}} {count}"
                        );
                    }
                }
            };
        family(
            &mut out,
            "floodgate_decisions_total",
            "Decisions by policy and outcome (shadow_denied: denied by a policy in shadow mode, answered allowed; charged: usage charged by POST /v1/charge).",
            "outcome",
            &|c| {
                vec![
                    ("allowed", load(&c.allowed)),
                    ("denied", load(&c.denied)),
                    ("shadow_denied", load(&c.shadow_denied)),
                    ("charged", load(&c.charged)),
                ]
            },
        );
        family(
            &mut out,
            "floodgate_fallback_decisions_total",
            "Decisions made without the store, by policy and failure mode.",
            "mode",
            &|c| {
                vec![
                    ("fail_open", load(&c.fail_open)),
                    ("fail_closed", load(&c.fail_closed)),
                    ("local", load(&c.local)),
                ]
            },
        );
        header(
            &mut out,
            "floodgate_deny_cache_hits_total",
            "counter",
            "Denials answered from the local deny cache without a Redis round trip.",
        );
        for (name, c) in &policies {
            let _ = writeln!(
                out,
                "floodgate_deny_cache_hits_total{{policy=\"{name}\"}} {}",
                load(&c.cache_hits)
            );
        }
        header(
            &mut out,
            "floodgate_store_latency_seconds",
            "histogram",
            "Time of one store call (check, peek, reset).",
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += load(&self.latency[i]);
            let _ = writeln!(
                out,
                "floodgate_store_latency_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += load(&self.latency[BUCKETS.len()]);
        let _ = writeln!(
            out,
            "floodgate_store_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "floodgate_store_latency_seconds_sum {}",
            load(&self.latency_sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "floodgate_store_latency_seconds_count {cumulative}");
        for (name, kind, help, value) in [
            (
                "floodgate_store_errors_total",
                "counter",
                "Store calls that failed (timeouts, connection errors, error replies).",
                load(&self.store_errors),
            ),
            (
                "floodgate_grpc_requests_total",
                "counter",
                "ShouldRateLimit calls.",
                load(&self.grpc_requests),
            ),
            (
                "floodgate_http_bad_requests_total",
                "counter",
                "HTTP API requests answered with a 4xx problem.",
                load(&self.http_bad_requests),
            ),
            (
                "floodgate_config_version",
                "gauge",
                "Version of the configuration being served (1 at start, +1 per applied reload).",
                load(&self.config_version),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "floodgate_connections_closed_total",
            "counter",
            "Connections the server closed, by listener and reason (handshake_timeout, idle, shutdown).",
        );
        for listener in LISTENERS {
            for reason in Closed::ALL {
                let _ = writeln!(
                    out,
                    "floodgate_connections_closed_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    listener.label(),
                    reason.label(),
                    load(&self.closed[listener as usize][reason as usize])
                );
            }
        }
        header(
            &mut out,
            "floodgate_accept_errors_total",
            "counter",
            "Failed accepts by listener (such as running out of file descriptors); accepting backs off.",
        );
        for listener in LISTENERS {
            let _ = writeln!(
                out,
                "floodgate_accept_errors_total{{listener=\"{}\"}} {}",
                listener.label(),
                load(&self.accept_errors[listener as usize])
            );
        }
        self.render_logins(&mut out);
        header(
            &mut out,
            "floodgate_config_reloads_total",
            "counter",
            "Configuration reloads by result (a failed reload keeps the old configuration).",
        );
        let _ = writeln!(
            out,
            "floodgate_config_reloads_total{{result=\"ok\"}} {}",
            load(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "floodgate_config_reloads_total{{result=\"failed\"}} {}",
            load(&self.reloads_failed)
        );
        out
    }
}

impl Metrics {
    /// The login guards' families (absent when no guard is configured).
    fn render_logins(&self, out: &mut String) {
        let guards = sorted(&self.logins);
        if guards.is_empty() {
            return;
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            out,
            "floodgate_login_attempts_total",
            "counter",
            "Login attempts by guard and answer (allowed, or the rule that refused: ip, username, pair, lockout; unavailable: the store failed and the guard fails closed).",
        );
        for (guard, c) in &guards {
            for (answer, count) in LOGIN_ANSWERS.iter().zip(&c.attempts) {
                let _ = writeln!(
                    out,
                    "floodgate_login_attempts_total{{guard=\"{guard}\",answer=\"{answer}\"}} {}",
                    load(count)
                );
            }
        }
        header(
            out,
            "floodgate_login_results_total",
            "counter",
            "Recorded password checks by guard and outcome.",
        );
        for (guard, c) in &guards {
            for (outcome, count) in [("success", &c.success), ("failure", &c.failure)] {
                let _ = writeln!(
                    out,
                    "floodgate_login_results_total{{guard=\"{guard}\",outcome=\"{outcome}\"}} {}",
                    load(count)
                );
            }
        }
        header(
            out,
            "floodgate_login_store_errors_total",
            "counter",
            "Attempts and results of a login guard that the store failed to decide or record.",
        );
        for (guard, c) in &guards {
            let _ = writeln!(
                out,
                "floodgate_login_store_errors_total{{guard=\"{guard}\"}} {}",
                load(&c.store_errors)
            );
        }
    }
}

/// Counters by name (of a policy or a guard), shared by every server task.
type ByName<T> = Mutex<HashMap<String, Arc<T>>>;

fn lock<T>(map: &ByName<T>) -> std::sync::MutexGuard<'_, HashMap<String, Arc<T>>> {
    map.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The counters of `name`, created on first use.
fn entry<T: Default>(map: &ByName<T>, name: &str) -> Arc<T> {
    lock(map).entry(name.to_owned()).or_default().clone()
}

/// Drops the counters of every name not in `live`.
fn retain<T>(map: &ByName<T>, live: &std::collections::HashSet<&str>) {
    lock(map).retain(|name, _| live.contains(name.as_str()));
}

/// A snapshot of every counter, by name.
fn sorted<T>(map: &ByName<T>) -> Vec<(String, Arc<T>)> {
    let mut all: Vec<_> = lock(map)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}
