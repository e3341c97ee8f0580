//! Config files: every bad fixture fails with its exact message (in-process and through
//! `floodgate check-config`, exit code 1); the full example loads and prints with secrets
//! redacted.

use std::path::{Path, PathBuf};
use std::process::Command;

use floodgate_server::Config;

/// `(fixture in tests/fixtures/config/bad, the message as printed from that directory's parent)`.
const BAD: &[(&str, &str)] = &[
    (
        "bad_address.toml",
        "bad/bad_address.toml: server.http: 'localhost' is not a socket address such as \"127.0.0.1:8080\"",
    ),
    (
        "bad_envoy_file.toml",
        "bad/../../envoy/invalid/bad_limit_unit.yaml: test-domain.key1_value1: invalid rate limit unit 'foo' (use second, minute, hour, day or week)",
    ),
    (
        "bad_limit.toml",
        "bad/bad_limit.toml: policies.free: rate \"5/fortnight\": unknown unit \"fortnight\" at position 2",
    ),
    (
        "bad_on_error.toml",
        "bad/bad_on_error.toml: store.on_error: line 2: unknown variant `maybe`, expected one of `allow`, `deny`, `local`",
    ),
    (
        "bad_policy_name.toml",
        "bad/bad_policy_name.toml: policies.\"free tier\": invalid policy \"free tier\": character ' ' is not allowed in a policy name (use ASCII letters, digits and -_.:/)",
    ),
    (
        "bad_share.toml",
        "bad/bad_share.toml: store.local_share: must be above 0 and at most 1, got 1.5",
    ),
    (
        "bad_store_url.toml",
        "bad/bad_store_url.toml: store.url: 'mysql://root:***@db:3306' is not a store URL: use memory://, redis://host:port, rediss://host:port, redis+cluster://h1:p1,h2:p2, rediss+cluster://h1:p1,h2:p2, redis+sentinel://h1:p1,h2:p2/master-name or rediss+sentinel://h1:p1,h2:p2/master-name",
    ),
    (
        "bad_timeout.toml",
        "bad/bad_timeout.toml: store.timeout: 'soon' is not a duration such as \"50ms\": expected number at 0",
    ),
    (
        "batching_with_memory.toml",
        "bad/batching_with_memory.toml: store.batching: applies to the Redis store only",
    ),
    (
        "cluster_connections.toml",
        "bad/cluster_connections.toml: store.connections: a Cluster keeps one connection per node; leave it at 1",
    ),
    (
        "concurrency_not_a_number.toml",
        "bad/concurrency_not_a_number.toml: concurrency.db: expected the most in flight (20) or a table ({ max = 20, lease = \"30s\" }), got a string",
    ),
    (
        "concurrency_reserved_name.toml",
        "bad/concurrency_reserved_name.toml: concurrency.\"envoy:db\": names starting with 'envoy:' are reserved",
    ),
    (
        "concurrency_shares_a_policy_name.toml",
        "bad/concurrency_shares_a_policy_name.toml: concurrency.db: a policy is named 'db' too: concurrency limits share the namespace of [policies] and [login]",
    ),
    (
        "concurrency_short_lease.toml",
        "bad/concurrency_short_lease.toml: concurrency.db.lease: invalid limit \"db: 2 in flight, lease 100µs\": lease 100µs is outside 1ms to 24h (renew a permit to hold it longer)",
    ),
    (
        "concurrency_unknown_key.toml",
        "bad/concurrency_unknown_key.toml: concurrency.db: unknown field `leases`, expected one of `max`, `lease`, `on_error`",
    ),
    (
        "concurrency_zero_max.toml",
        "bad/concurrency_zero_max.toml: concurrency.db.max: must be from 1 to 4294967295, got 0",
    ),
    (
        "empty_admin_token.toml",
        "bad/empty_admin_token.toml: server.admin_token: must not be empty (remove the key to leave /v1/reset open)",
    ),
    (
        "envoy_file_over_cap.toml",
        "bad/../../envoy/valid/basic_config.yaml: the file is 1431 bytes, over the cap of 100 bytes (envoy.max_file_bytes)",
    ),
    (
        "lease_with_memory.toml",
        "bad/lease_with_memory.toml: policies.hot.lease: token leasing needs a Redis store (the memory store is local already)",
    ),
    (
        "local_without_share.toml",
        "bad/local_without_share.toml: store.local_share: required when on_error is \"local\" (the fraction of each limit one node may use, e.g. 0.25 for 4 nodes)",
    ),
    (
        "login_bad_lockout.toml",
        "bad/login_bad_lockout.toml: login.web.lockouts: 'soon' is not a duration such as \"50ms\": expected number at 0",
    ),
    (
        "login_bad_rate.toml",
        "bad/login_bad_rate.toml: login.web.per_ip: rate \"30/fortnight\": unknown unit \"fortnight\" at position 3",
    ),
    (
        "login_local_without_share.toml",
        "bad/login_local_without_share.toml: login.web.on_error: required when on_error is \"local\" (the fraction of each limit one node may use, e.g. 0.25 for 4 nodes)",
    ),
    (
        "login_long_lockout.toml",
        "bad/login_long_lockout.toml: login.web.lockouts: must be above 0 and at most 24days, got '30d'",
    ),
    (
        "login_not_a_table.toml",
        "bad/login_not_a_table.toml: login.web: expected a table of settings (`web = {}` takes every default), got a string",
    ),
    (
        "login_reserved_policy_name.toml",
        "bad/login_reserved_policy_name.toml: policies.\"login:web:ip\": names starting with 'login:' are reserved for [login] guards",
    ),
    (
        "login_shares_a_policy_name.toml",
        "bad/login_shares_a_policy_name.toml: login.web: a policy is named 'web' too: guard names share the namespace of [policies]",
    ),
    (
        "login_short_secret.toml",
        "bad/login_short_secret.toml: login.web.secret: must be at least 16 bytes (a random string shared by every node), got 3",
    ),
    (
        "login_unknown_key.toml",
        "bad/login_unknown_key.toml: login.web: unknown field `per_username`, expected one of `per_ip`, `per_user`, `per_pair`, `strikes`, `strike_window`, `lockouts`, `forget_after`, `known_device_for`, `secret`, `on_error`",
    ),
    (
        "login_zero_strikes.toml",
        "bad/login_zero_strikes.toml: login.web.strikes: must be from 1 to 1000, got 0",
    ),
    (
        "long_shutdown_grace.toml",
        "bad/long_shutdown_grace.toml: server.shutdown_grace: must be at most 1h, got '2h'",
    ),
    (
        "max_keys_with_redis.toml",
        "bad/max_keys_with_redis.toml: store.max_keys: applies to the memory store only (Redis keys expire by themselves)",
    ),
    (
        "missing_envoy_dir.toml",
        "bad/missing_envoy_dir.toml: envoy.config_dir: 'bad/no-such-dir/' is not a directory",
    ),
    (
        "missing_tls_ca.toml",
        "bad/missing_tls_ca.toml: store.tls_ca_file: cannot read 'bad/no-such-ca.crt': No such file or directory (os error 2)",
    ),
    (
        "nothing_to_serve.toml",
        "bad/nothing_to_serve.toml: policies: no policies, no login guards, no concurrency limits and no Envoy domains: nothing to serve",
    ),
    (
        "policy_local_without_share.toml",
        "bad/policy_local_without_share.toml: store.local_share: required when on_error is \"local\" (the fraction of each limit one node may use, e.g. 0.25 for 4 nodes)",
    ),
    (
        "policy_missing_limits.toml",
        "bad/policy_missing_limits.toml: policies.login: missing field `limits`",
    ),
    (
        "policy_number.toml",
        "bad/policy_number.toml: policies.free: expected limits as a string (\"5/s burst 10\") or a table ({ limits = \"…\", on_error = \"deny\" }), got an integer",
    ),
    (
        "policy_unknown_key.toml",
        "bad/policy_unknown_key.toml: policies.login: unknown field `shadw`, expected one of `limits`, `on_error`, `shadow`, `lease`",
    ),
    (
        "redis_url_unparsable.toml",
        "bad/redis_url_unparsable.toml: store.url: invalid setting `url`: redis://u:***@[bad: Redis URL did not parse - InvalidClientConfig",
    ),
    (
        "reserved_policy_name.toml",
        "bad/reserved_policy_name.toml: policies.\"envoy:free\": names starting with 'envoy:' are reserved for Envoy rules",
    ),
    (
        "same_ports.toml",
        "bad/same_ports.toml: server.grpc: the same address as server.http (127.0.0.1:9000)",
    ),
    (
        "sentinel_password_without_sentinel.toml",
        "bad/sentinel_password_without_sentinel.toml: store.sentinel_password: applies to Sentinel store URLs only (redis+sentinel:// or rediss+sentinel://)",
    ),
    (
        "sentinel_without_master.toml",
        "bad/sentinel_without_master.toml: store.url: invalid setting `url`: redis+sentinel://127.0.0.1:26379: no master name; expected redis+sentinel://[user:password@]host:port,host:port/master-name",
    ),
    (
        "syntax.toml",
        "bad/syntax.toml: policies.free: line 2: invalid basic string, expected `\"`",
    ),
    (
        "tls_ca_not_pem.toml",
        "bad/tls_ca_not_pem.toml: store.tls_ca_file: 'bad/tls_ca_not_pem.toml' holds no PEM certificate",
    ),
    (
        "tls_ca_without_tls.toml",
        "bad/tls_ca_without_tls.toml: store.tls_ca_file: applies to TLS store URLs only (rediss:// or rediss+cluster://)",
    ),
    (
        "top_keys_negative.toml",
        "bad/top_keys_negative.toml: server.top_keys: must be from 0 to 100000, got -1",
    ),
    (
        "unknown_key.toml",
        "bad/unknown_key.toml: server.https: line 2: unknown field `https`, expected one of `http`, `grpc`, `admin_token`, `max_connections`, `header_timeout`, `body_timeout`, `max_header_bytes`, `grpc_max_connections`, `grpc_handshake_timeout`, `grpc_idle_timeout`, `shutdown_grace`, `top_keys`, `top_keys_memory`",
    ),
    (
        "unknown_section.toml",
        "bad/unknown_section.toml: serverr: line 1: unknown field `serverr`, expected one of `server`, `store`, `policies`, `envoy`, `login`, `concurrency`",
    ),
    (
        "zero_burst.toml",
        "bad/zero_burst.toml: policies.free: invalid limit \"5/s burst 0\": burst must be at least 1",
    ),
    (
        "zero_connections.toml",
        "bad/zero_connections.toml: store.connections: must be from 1 to 64, got 0",
    ),
    (
        "zero_grpc_idle_timeout.toml",
        "bad/zero_grpc_idle_timeout.toml: server.grpc_idle_timeout: must be above 0 and at most 1day, got '0s'",
    ),
    (
        "zero_max_keys.toml",
        "bad/zero_max_keys.toml: store.max_keys: must be at least 1, got 0",
    ),
    (
        "zero_timeout.toml",
        "bad/zero_timeout.toml: store.timeout: must be above 0 and at most 1m, got '0ms'",
    ),
];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// What `serve` and `check-config` both run.
async fn validate(path: &Path) -> Result<Config, floodgate_server::ConfigError> {
    floodgate_server::validate(&floodgate_server::Options {
        config: Some(path.to_path_buf()),
        ..floodgate_server::Options::default()
    })
    .await
}

#[tokio::test]
async fn every_bad_fixture_has_its_exact_message() {
    let bad = config_dir().join("bad");
    let mut listed: Vec<String> = std::fs::read_dir(&bad)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let expected: Vec<String> = BAD.iter().map(|(f, _)| (*f).to_owned()).collect();
    assert_eq!(listed, expected, "every fixture has an expectation");
    for (file, message) in BAD {
        let error = validate(&bad.join(file)).await.expect_err(file);
        let in_process = message.replace("bad/", &format!("{}/", bad.display()));
        assert_eq!(error.to_string(), in_process, "{file}");
    }
}

#[test]
fn check_config_exits_1_with_the_error_on_each_bad_fixture() {
    for (file, message) in BAD {
        let output = Command::new(env!("CARGO_BIN_EXE_floodgate"))
            .current_dir(config_dir())
            .args(["check-config", &format!("bad/{file}")])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{file}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            format!("error: {message}\n"),
            "{file}"
        );
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn check_config_prints_the_resolved_config_with_secrets_redacted() {
    let output = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .current_dir(config_dir())
        .args(["check-config", "good.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(!stdout.contains("do-not-print-me"), "{stdout}");
    assert!(!stdout.contains("login-secret-do-not-print"), "{stdout}");
    for line in [
        "server.admin_token: set (redacted)",
        "store: redis://app:***@127.0.0.1:6379 (timeout 50ms, on_error allow, local_share 0.25, batching on)",
        "policy free: 5/s burst 10; 1000/d",
        "policy login: 5/m; 20/d (on_error deny)",
        "policy search: 10/s (on_error local) (shadow)",
        "concurrency exports: at most 5 in flight, lease 30s",
        "concurrency legacy-db: at most 20 in flight, lease 30s (on_error deny)",
        "login web: per_ip 30/m, per_user 10/m; 100/d, per_pair 5/m, 3 strikes in 15m lock for 1m, 5m, 15m (one level forgotten per 1h), known devices for 30days, secret not set, on_error deny",
        "login api: per_ip 100/m, per_user 20/m; 200/d, per_pair 10/m, 5 strikes in 10m lock for 30s, 2m, 10m, 1h (one level forgotten per 2h), known devices for 14days, secret set (redacted), on_error local",
        "envoy domain test-domain: 10 rate limits (from ../envoy/valid/basic_config.yaml)",
        "envoy domain burst-domain: 1 rate limit (from ../envoy/valid/burst.yaml)",
        "ok",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    // The Debug form of the config is safe to log too.
    let config = Config::load(&config_dir().join("good.toml")).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2") && !debug.contains("do-not-print-me"));
    assert!(!debug.contains("login-secret-do-not-print"), "{debug}");
}

#[test]
fn check_config_on_a_missing_file_names_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_floodgate"))
        .args(["check-config", "/nonexistent/floodgate.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: /nonexistent/floodgate.toml: cannot read: "),
        "{stderr}"
    );
}
