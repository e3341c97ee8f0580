//! `GET /v1/config` (the effective configuration, behind the admin token, never a secret)
//! and the per-limit gauges of `/metrics`, before and after a reload.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;

use common::{TempDir, assert_problem, get, request, server_with};

fn envoy_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/envoy/valid")
        .display()
        .to_string()
}

fn config(policies: &str) -> String {
    format!(
        "[server]\nadmin_token = \"admin-token-do-not-print\"\n\n[policies]\n{policies}\n\n[login]\nweb = {{ secret = \"login-secret-do-not-print\" }}\n\n[envoy]\nconfig_dir = {:?}\n",
        envoy_dir()
    )
}

async fn get_config(addr: std::net::SocketAddr) -> serde_json::Value {
    let reply = request(
        addr,
        "GET",
        "/v1/config",
        &[("authorization", "Bearer admin-token-do-not-print")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(
        !reply.body.contains("do-not-print"),
        "no secret: {}",
        reply.body
    );
    reply.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_effective_configuration_is_served_without_secrets() {
    let dir = TempDir::new("inspect");
    let server = server_with(
        &dir,
        &config("free = \"5/s burst 10; 1000/day\"\nstrict = { limits = \"1/m\", on_error = \"deny\", shadow = true }"),
    )
    .await;
    let addr = server.http_addr();
    // Behind the admin token.
    assert_problem(
        &get(addr, "/v1/config").await,
        401,
        "GET /v1/config needs the admin token",
    );
    let json = get_config(addr).await;
    assert_eq!(json["version"], 1);
    assert_eq!(json["admin_token"], true);
    assert_eq!(json["last_failed_reload"], serde_json::Value::Null);
    assert!(
        json["applied_at"].as_str().unwrap().ends_with('Z'),
        "{json}"
    );
    assert_eq!(json["store"]["url"], "memory://");
    assert_eq!(
        json["policies"][0],
        serde_json::json!({
            "name": "free",
            "limits": [
                { "limit": "5/s burst 10", "count": 5, "period_ms": 1000, "burst": 10 },
                { "limit": "1000/d", "count": 1000, "period_ms": 86_400_000u64, "burst": 1000 },
            ],
            "on_error": "allow",
            "shadow": false,
            "lease_ms": null,
        })
    );
    assert_eq!(json["policies"][1]["on_error"], "deny");
    assert_eq!(json["policies"][1]["shadow"], true);
    assert_eq!(json["login"][0]["name"], "web");
    assert_eq!(json["login"][0]["secret"], true, "set, never shown");
    assert_eq!(
        json["login"][0]["lockouts_ms"],
        serde_json::json!([60_000, 300_000, 900_000])
    );
    // Every Envoy rule, by its full key.
    let domains = json["envoy"]["domains"].as_array().unwrap();
    let test_domain = domains.iter().find(|d| d["name"] == "test-domain").unwrap();
    let rules = test_domain["rules"].as_array().unwrap();
    let rule = |key: &str| {
        rules
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no rule {key} in {rules:?}"))
            .clone()
    };
    let sub = rule("test-domain.key1_value1.subkey1_subvalue1");
    assert_eq!(sub["action"], "bucket");
    assert_eq!(sub["requests_per_unit"], 10);
    assert_eq!(sub["unit"], "second");
    assert_eq!(sub["limits"][0]["burst"], 10);
    assert_eq!(sub["shadow_mode"], false);
    assert_eq!(sub["quota_mode"], false);
    assert_eq!(sub["charge"], false);
    assert_eq!(rule("test-domain.key2")["unit"], "minute");
    let replacing = domains
        .iter()
        .find(|d| d["name"] == "replaces-domain")
        .unwrap();
    let premium = &replacing["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "premium")
        .unwrap()
        .clone();
    assert_eq!(premium["replaces"], serde_json::json!(["per_path"]));
    assert_eq!(
        test_domain["rules"].as_array().unwrap().len(),
        10,
        "basic_config.yaml has 10 rate limits"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_gauges_follow_the_configuration_through_reloads() {
    let dir = TempDir::new("gauges");
    let server = server_with(
        &dir,
        &config("free = \"5/s burst 10; 1000/day\"\nold = \"1/m\""),
    )
    .await;
    let addr = server.http_addr();
    let metrics = get(addr, "/metrics").await.body;
    for line in [
        "floodgate_limit_burst{policy=\"free\",limit=\"0\"} 10",
        "floodgate_limit_burst{policy=\"free\",limit=\"1\"} 1000",
        "floodgate_limit_rate_per_second{policy=\"free\",limit=\"0\"} 5",
        "floodgate_limit_rate_per_second{policy=\"old\",limit=\"0\"} 0.016666666666666666",
        // Named Envoy rules have gauges too.
        "floodgate_limit_burst{policy=\"envoy:replaces-domain.client_premium\",limit=\"0\"} 100",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    // A bad file is refused and shown; a good one drops the removed policy's series.
    dir.write("floodgate.toml", "[policies]\nfree = \"5/fortnight\"\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.reloads().1 < 1 {
        assert!(Instant::now() < deadline, "the bad file was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let json = get_config(addr).await;
    let error = json["last_failed_reload"]["error"].as_str().unwrap();
    assert!(error.contains("unknown unit \"fortnight\""), "{json}");
    assert_eq!(json["version"], 1);
    dir.write("floodgate.toml", &config("free = \"50/s\""));
    while server.config_version() < 2 {
        assert!(Instant::now() < deadline, "the new file was not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = get(addr, "/metrics").await.body;
    assert!(
        metrics.contains("floodgate_limit_burst{policy=\"free\",limit=\"0\"} 50"),
        "{metrics}"
    );
    assert!(!metrics.contains("policy=\"old\""), "{metrics}");
    assert!(
        !metrics.contains("floodgate_limit_burst{policy=\"free\",limit=\"1\"}"),
        "{metrics}"
    );
    assert_eq!(get_config(addr).await["version"], 2);
    server.shutdown().await;
}

async fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let reply = request(
        addr,
        "GET",
        "/v1/stats",
        &[("authorization", "Bearer admin-token-do-not-print")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()
}

/// Polls `/v1/stats` until `policy`'s per-second series add up to `allowed` and `denied`.
async fn stats_once_sampled(
    addr: std::net::SocketAddr,
    policy: &str,
    allowed: u64,
    denied: u64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let json = stats(addr).await;
        let sum = |series: &serde_json::Value| -> u64 {
            series
                .as_array()
                .map_or(0, |s| s.iter().filter_map(|v| v.as_u64()).sum())
        };
        let found = json["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == policy)
            .map(|p| (sum(&p["allowed_per_second"]), sum(&p["denied_per_second"])));
        if found == Some((allowed, denied)) {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "not sampled: {found:?} in {json}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_live_rates_and_the_stores_health() {
    let dir = TempDir::new("stats");
    let server = server_with(&dir, &config("tight = \"1/hour burst 2\"")).await;
    let addr = server.http_addr();
    assert_problem(
        &get(addr, "/v1/stats").await,
        401,
        "GET /v1/stats needs the admin token",
    );
    // Wait for a first sample, so the decisions below fall between two.
    stats_once_sampled(addr, "tight", 0, 0).await;
    for _ in 0..5 {
        common::post(addr, "/v1/check", r#"{"policy":"tight","key":"k"}"#).await;
    }
    let json = stats_once_sampled(addr, "tight", 2, 3).await;
    assert_eq!(json["window_s"], 300);
    assert_eq!(json["resolution_s"], 1);
    assert_eq!(json["version"], 1);
    assert_eq!(json["reloads"]["applied"], 0);
    let store = &json["store"];
    assert_eq!(store["kind"], "memory");
    assert_eq!(store["errors"], 0);
    assert_eq!(store["breaker"], serde_json::Value::Null);
    assert!(
        store["latency_ms_p99_at_most"].as_f64().unwrap() > 0.0,
        "{store}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_each_concurrency_limits_permits() {
    let dir = TempDir::new("stats-permits");
    let server = server_with(
        &dir,
        &format!(
            "{}\n[concurrency]\nexports = {{ max = 2, lease = \"1m\" }}\ndb = 5\n",
            config("free = \"5/s\"")
        ),
    )
    .await;
    let addr = server.http_addr();
    let mut permits = Vec::new();
    for _ in 0..3 {
        let reply = common::post(addr, "/v1/acquire", r#"{"policy":"exports","key":"t"}"#).await;
        if let Some(permit) = reply.json()["permit"].as_str() {
            permits.push(permit.to_owned());
        }
    }
    assert_eq!(permits.len(), 2);
    let release = format!(
        r#"{{"policy":"exports","key":"t","permit":"{}"}}"#,
        permits[0]
    );
    assert_eq!(
        common::post(addr, "/v1/release", &release).await.status,
        204
    );
    let json = stats(addr).await;
    assert_eq!(
        json["concurrency"],
        serde_json::json!([
            { "name": "db", "max": 5, "lease_ms": 30_000, "in_flight": 0, "acquired": 0,
              "denied": 0, "released": 0, "renewed": 0, "expired": 0, "store_error": 0 },
            { "name": "exports", "max": 2, "lease_ms": 60_000, "in_flight": 1, "acquired": 2,
              "denied": 1, "released": 1, "renewed": 0, "expired": 0, "store_error": 0 },
        ])
    );
    assert_eq!(json["store"]["permits_reclaimed"], 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_stats_show_an_open_breaker_and_fallbacks() {
    let mut redis = floodgate_testkit::redis_server::RedisServer::start();
    let dir = TempDir::new("stats-redis");
    let config = format!(
        "[server]\nadmin_token = \"admin-token-do-not-print\"\n[store]\nurl = \"{}\"\ntimeout = \"200ms\"\non_error = \"allow\"\n[policies]\nfree = \"100/s\"\n[concurrency]\ndb = 3\n",
        redis.url()
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    common::post(addr, "/v1/check", r#"{"policy":"free","key":"k"}"#).await;
    let acquired = common::post(addr, "/v1/acquire", r#"{"policy":"db","key":"k"}"#).await;
    assert_eq!(acquired.json()["acquired"], true);
    let json = stats(addr).await;
    assert_eq!(json["store"]["permit_calls"], 1, "{json}");
    assert_eq!(json["store"]["permit_operations"], 1, "{json}");
    assert_eq!(json["concurrency"][0]["in_flight"], 1, "{json}");
    assert_eq!(json["store"]["kind"], "redis");
    assert_eq!(json["store"]["breaker"], "closed");
    assert!(
        json["store"]["script_calls"].as_u64().unwrap() >= 1,
        "{json}"
    );
    redis.kill();
    for _ in 0..5 {
        common::post(addr, "/v1/check", r#"{"policy":"free","key":"k"}"#).await;
    }
    let store = stats(addr).await["store"].clone();
    assert_eq!(store["breaker"], "open", "{store}");
    assert_eq!(store["fallback_decisions"]["fail_open"], 5, "{store}");
    server.shutdown().await;
}
