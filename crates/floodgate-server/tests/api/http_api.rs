//! The HTTP JSON API's contract: every endpoint and every status, on the memory store and on a
//! spawned Redis.

use crate::common;

use common::{TempDir, assert_problem, get, post, request, server_with};
use floodgate_testkit::redis_server::RedisServer;

const CONFIG: &str = r#"
[server]
admin_token = "s3cret-token"

[policies]
tight = "1/hour burst 3"
multi = "1/hour burst 2; 100/day"
shadowed = { limits = "1/hour", shadow = true }
"#;

/// Allowed, allowed, allowed, denied on a 1/hour burst 3 bucket; the state and the IETF
/// fields after each.
async fn check_sequence(addr: std::net::SocketAddr, key: &str) {
    let body = format!(r#"{{"policy":"tight","key":"{key}"}}"#);
    for remaining in [2, 1, 0] {
        let reply = post(addr, "/v1/check", &body).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let json = reply.json();
        assert_eq!(json["allowed"], true);
        assert_eq!(json["limit"], 3);
        assert_eq!(json["remaining"], remaining);
        assert_eq!(json["retry_after_ms"], 0);
        assert_eq!(json["policy"], "tight");
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some("\"tight\";q=1;w=3600;fg-burst=3")
        );
        assert!(
            reply
                .header("ratelimit")
                .is_some_and(|v| v.starts_with(&format!("\"tight\";r={remaining};t="))),
            "{reply:?}"
        );
    }
    let reply = post(addr, "/v1/check", &body).await;
    assert_eq!(reply.status, 200, "a denial is still an answer: {reply:?}");
    let json = reply.json();
    assert_eq!(json["allowed"], false);
    assert_eq!(json["remaining"], 0);
    let retry = json["retry_after_ms"].as_u64().unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&retry),
        "one token per hour: {retry}"
    );
    let reset = json["reset_after_ms"].as_u64().unwrap();
    assert!((3 * 3_500_000..=3 * 3_600_000).contains(&reset), "{reset}");
    assert!(
        json.get("shadow").is_none(),
        "only shadow policies say shadow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_admits_the_burst_then_denies_with_state_and_headers() {
    let dir = TempDir::new("check");
    let server = server_with(&dir, CONFIG).await;
    check_sequence(server.http_addr(), "user:1").await;

    // Costs: explicit cost, default cost, and the multi-limit policy's deciding limit.
    let addr = server.http_addr();
    let reply = post(
        addr,
        "/v1/check",
        r#"{"policy":"multi","key":"k","cost":2}"#,
    )
    .await;
    let json = reply.json();
    assert_eq!(json["allowed"], true, "{reply:?}");
    assert_eq!(json["limit"], 2);
    assert_eq!(json["remaining"], 0);
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"multi.0\";q=1;w=3600;fg-burst=2, \"multi.1\";q=100;w=86400")
    );
    let reply = post(addr, "/v1/check", r#"{"policy":"multi","key":"k"}"#).await;
    assert_eq!(reply.json()["allowed"], false);
    assert!(
        reply
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("\"multi.0\";r=0;t=")),
        "{reply:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_reports_the_state_without_consuming() {
    let dir = TempDir::new("peek");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let body = r#"{"policy":"tight","key":"p"}"#;
    for _ in 0..3 {
        let json = post(addr, "/v1/peek", body).await.json();
        assert_eq!(json["allowed"], true);
        assert_eq!(json["remaining"], 3, "peek consumes nothing");
    }
    post(addr, "/v1/check", body).await;
    let json = post(addr, "/v1/peek", body).await.json();
    assert_eq!(json["remaining"], 2);
    // With a cost: would 3 tokens pass now?
    let json = post(addr, "/v1/peek", r#"{"policy":"tight","key":"p","cost":3}"#)
        .await
        .json();
    assert_eq!(json["allowed"], false);
    assert_eq!(json["remaining"], 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_answer_allowed_and_say_what_would_have_happened() {
    let dir = TempDir::new("shadow");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let body = r#"{"policy":"shadowed","key":"s"}"#;
    let json = post(addr, "/v1/check", body).await.json();
    assert_eq!(json["allowed"], true);
    assert_eq!(json["shadow"], true);
    assert_eq!(json["would_allow"], true);
    let json = post(addr, "/v1/check", body).await.json();
    assert_eq!(json["allowed"], true, "shadow mode never denies");
    assert_eq!(json["shadow"], true);
    assert_eq!(json["would_allow"], false);
    let metrics = get(addr, "/metrics").await.body;
    assert!(
        metrics
            .contains("floodgate_decisions_total{policy=\"shadowed\",outcome=\"shadow_denied\"} 1")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_needs_the_admin_token_and_refills_the_bucket() {
    let dir = TempDir::new("reset");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let check = r#"{"policy":"tight","key":"r"}"#;
    for _ in 0..4 {
        post(addr, "/v1/check", check).await;
    }
    assert_eq!(
        post(addr, "/v1/check", check).await.json()["allowed"],
        false
    );

    let body = br#"{"policy":"tight","key":"r"}"#;
    let reply = request(addr, "POST", "/v1/reset", &[], body).await;
    assert_problem(&reply, 401, "admin token");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"floodgate\"")
    );
    let wrong = [("authorization", "Bearer s3cret-tokem")];
    assert_problem(
        &request(addr, "POST", "/v1/reset", &wrong, body).await,
        401,
        "admin token",
    );
    assert_eq!(
        post(addr, "/v1/check", check).await.json()["allowed"],
        false
    );

    // The scheme is case-insensitive (RFC 9110 §11.1).
    let lowercase = [("authorization", "bearer s3cret-token")];
    let reply = request(addr, "POST", "/v1/reset", &lowercase, body).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    let right = [("authorization", "Bearer s3cret-token")];
    let reply = request(addr, "POST", "/v1/reset", &right, body).await;
    assert_eq!(reply.status, 204, "{reply:?}");
    assert!(reply.body.is_empty());
    let json = post(addr, "/v1/check", check).await.json();
    assert_eq!(json["allowed"], true);
    assert_eq!(json["remaining"], 2, "a reset bucket is full");

    let unknown = br#"{"policy":"nope","key":"r"}"#;
    assert_problem(
        &request(addr, "POST", "/v1/reset", &right, unknown).await,
        404,
        "no policy named 'nope'",
    );
    assert_problem(
        &request(addr, "POST", "/v1/reset", &right, br#"{"policy":"tight"}"#).await,
        400,
        "missing field `key`",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_reset_is_open() {
    let dir = TempDir::new("open-reset");
    let server = server_with(&dir, "[policies]\nfree = \"1/hour\"\n").await;
    let reply = post(
        server.http_addr(),
        "/v1/reset",
        r#"{"policy":"free","key":"x"}"#,
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_a_problem_body() {
    let dir = TempDir::new("errors");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"policy":"tight""#, 400, "invalid request body"),
        ("not json", 400, "invalid request body"),
        ("", 400, "invalid request body"),
        (r#"{"key":"k"}"#, 400, "missing field `policy`"),
        // An array is not a request, though serde would read a struct from one.
        (
            r#"["tight","k",1]"#,
            400,
            r#"expected a JSON object such as {"policy":"free","key":"user:42","cost":1}"#,
        ),
        (
            " \n[\"tight\",\"k\"]",
            400,
            "expected a JSON object such as",
        ),
        (
            "42",
            400,
            r#"expected a JSON object such as {"policy":"free""#,
        ),
        (r#"{"policy":"tight"}"#, 400, "missing field `key`"),
        (r#"{"policy":"tight","key":42}"#, 400, "invalid type"),
        (
            r#"{"policy":"tight","key":"k","cost":"1"}"#,
            400,
            "invalid type",
        ),
        (
            r#"{"policy":"tight","key":"k","cost":1.5}"#,
            400,
            "invalid type",
        ),
        (
            r#"{"policy":"tight","key":"k","cost":-1}"#,
            400,
            "invalid value",
        ),
        (
            r#"{"policy":"tight","key":"k","cost":0}"#,
            400,
            "cost must be an integer from 1 to 4294967295, got 0",
        ),
        (
            r#"{"policy":"tight","key":"k","cost":4294967296}"#,
            400,
            "got 4294967296",
        ),
        (
            r#"{"policy":"tight","key":""}"#,
            400,
            "key must be 1 to 1024 bytes, got 0",
        ),
        (
            r#"{"policy":"tight","key":"k","extra":1}"#,
            400,
            "unknown field `extra`",
        ),
        (
            r#"{"policy":"nope","key":"k"}"#,
            404,
            "no policy named 'nope'",
        ),
        (
            r#"{"policy":"tight","key":"k","cost":4}"#,
            422,
            "exceeds the burst 3",
        ),
    ];
    for path in ["/v1/check", "/v1/peek"] {
        for (body, status, detail) in cases {
            let reply = post(addr, path, body).await;
            assert_problem(&reply, *status, detail);
        }
    }
    let long_key = "k".repeat(1025);
    let reply = post(
        addr,
        "/v1/check",
        &format!(r#"{{"policy":"tight","key":"{long_key}"}}"#),
    )
    .await;
    assert_problem(&reply, 400, "got 1025");
    let max_key = "k".repeat(1024);
    let reply = post(
        addr,
        "/v1/check",
        &format!(r#"{{"policy":"tight","key":"{max_key}"}}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "1024 bytes is allowed");

    let huge = format!(
        r#"{{"policy":"tight","key":"k","pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    assert_problem(
        &post(addr, "/v1/check", &huge).await,
        413,
        "larger than 65536",
    );
    assert_problem(&get(addr, "/v1/nothing").await, 404, "no such endpoint");
    assert_problem(
        &get(addr, "/v1/check").await,
        405,
        "/v1/check, /v1/peek, /v1/charge, /v1/reset, /v1/login/attempt and /v1/login/result take POST",
    );
    assert_problem(&post(addr, "/metrics", "").await, 405, "take GET");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_health_readiness_and_metrics() {
    let dir = TempDir::new("meta");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let reply = get(addr, "/v1/policies").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        r#"[{"name":"multi","limits":"1/h burst 2; 100/d"},{"name":"shadowed","limits":"1/h"},{"name":"tight","limits":"1/h burst 3"}]"#
    );
    assert_eq!(get(addr, "/healthz").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");

    let secret_key = "user:very-secret-key-123";
    post(
        addr,
        "/v1/check",
        &format!(r#"{{"policy":"tight","key":"{secret_key}"}}"#),
    )
    .await;
    post(addr, "/v1/check", r#"{"policy":"nope","key":"k"}"#).await;
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4"))
    );
    let text = metrics.body;
    for line in [
        "floodgate_decisions_total{policy=\"tight\",outcome=\"allowed\"} 1",
        "floodgate_decisions_total{policy=\"tight\",outcome=\"denied\"} 0",
        "floodgate_http_bad_requests_total 1",
        "floodgate_config_version 1",
        "floodgate_config_reloads_total{result=\"failed\"} 0",
        "floodgate_store_errors_total 0",
        "# TYPE floodgate_store_latency_seconds histogram",
        "floodgate_deny_cache_hits_total{policy=\"tight\"} 0",
        "floodgate_fallback_decisions_total{policy=\"tight\",mode=\"fail_open\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains(secret_key), "a raw key is never a label");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_same_contract_holds_and_failure_policies_apply() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("redis");
    let config = format!(
        r#"
[store]
url = "{}"
timeout = "200ms"
on_error = "allow"
connections = 2

[policies]
tight = "1/hour burst 3"
strict = {{ limits = "1/hour burst 3", on_error = "deny" }}
"#,
        redis.url()
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    check_sequence(addr, "redis-user").await;
    let json = post(addr, "/v1/peek", r#"{"policy":"tight","key":"redis-user"}"#)
        .await
        .json();
    assert_eq!(json["remaining"], 0);
    assert_eq!(
        post(
            addr,
            "/v1/reset",
            r#"{"policy":"tight","key":"redis-user"}"#
        )
        .await
        .status,
        204
    );
    assert_eq!(
        post(addr, "/v1/peek", r#"{"policy":"tight","key":"redis-user"}"#)
            .await
            .json()["remaining"],
        3
    );
    assert_eq!(get(addr, "/readyz").await.status, 200);

    redis.kill();
    // Fail closed: 503 with Retry-After. Fail open: allowed, counted.
    let reply = post(addr, "/v1/check", r#"{"policy":"strict","key":"k"}"#).await;
    assert_problem(&reply, 503, "fails closed");
    let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let reply = post(addr, "/v1/check", r#"{"policy":"tight","key":"k"}"#).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["allowed"], true, "fail open");
    assert_problem(&get(addr, "/readyz").await, 503, "does not answer");
    let metrics = get(addr, "/metrics").await.body;
    assert!(
        metrics
            .contains("floodgate_fallback_decisions_total{policy=\"tight\",mode=\"fail_open\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "floodgate_fallback_decisions_total{policy=\"strict\",mode=\"fail_closed\"} 1"
        )
    );
    server.shutdown().await;
}

/// `rediss+cluster://` with `store.tls_ca_file`: the same contract over TLS to a Cluster.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_tls_redis_cluster_the_same_contract_holds() {
    use floodgate_testkit::redis_server::RedisCluster;
    use floodgate_testkit::tls::Certificates;

    let certificates = Certificates::generate("server-cluster");
    let cluster = RedisCluster::start_tls(3, &certificates);
    let dir = TempDir::new("tls-cluster");
    std::fs::write(dir.path().join("redis-ca.crt"), certificates.ca_pem()).unwrap();
    let config = format!(
        r#"
[store]
url = "{}"
tls_ca_file = "redis-ca.crt"
timeout = "500ms"
on_error = "deny"

[policies]
tight = "1/hour burst 3"
"#,
        cluster.tls_url()
    );
    let server = server_with(&dir, &config).await;
    for key in ["tls-a", "tls-b", "tls-c"] {
        check_sequence(server.http_addr(), key).await;
    }
    let stored: u32 = cluster
        .nodes()
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse::<u32>().unwrap())
        .sum();
    assert_eq!(stored, 3, "one bucket per key, in the Cluster");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leasing_policy_serves_a_hot_key_from_its_lease_and_counts_the_tokens() {
    let redis = RedisServer::start();
    let dir = TempDir::new("lease");
    let config = format!(
        r#"
[store]
url = "{}"
timeout = "500ms"

[policies]
hot = {{ limits = "1/h burst 400", lease = "10s" }}
plain = "1/h burst 400"
"#,
        redis.url()
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    for _ in 0..50 {
        let reply = post(addr, "/v1/check", r#"{"policy":"hot","key":"k"}"#).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        post(addr, "/v1/check", r#"{"policy":"plain","key":"k"}"#).await;
    }
    let metrics = get(addr, "/metrics").await.body;
    let count = |kind: &str| -> u64 {
        let prefix = format!("floodgate_lease_tokens_total{{policy=\"hot\",kind=\"{kind}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} series in\n{metrics}"))
    };
    // The first check is one call; from the second on, the key leases.
    assert_eq!(count("spent"), 49, "{metrics}");
    assert!(count("leased") >= 49, "{metrics}");
    assert_eq!(count("expired"), 0);
    assert!(
        !metrics.contains("policy=\"plain\",kind="),
        "a policy without a lease has no lease series"
    );
    // The shared bucket lost every leased token: a plain peek from Redis shows it.
    let peek = post(addr, "/v1/peek", r#"{"policy":"hot","key":"k"}"#)
        .await
        .json();
    assert_eq!(peek["remaining"], 400 - 1 - count("leased"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_consumes_without_checking_and_caps_the_debt() {
    let dir = TempDir::new("charge");
    let server = server_with(&dir, CONFIG).await;
    let addr = server.http_addr();
    let charge = |body: &'static str| post(addr, "/v1/charge", body);
    let json = charge(r#"{"policy":"tight","key":"u","cost":2}"#)
        .await
        .json();
    assert_eq!(
        (json["allowed"].clone(), json["remaining"].clone()),
        (true.into(), 1.into()),
        "{json}"
    );
    // Above the burst is charged, not refused: 1 + 5 tokens of debt, capped at one burst (3)
    // below empty, so a one-token request waits 3 + 3 − 2 = 4 hours.
    let reply = charge(r#"{"policy":"tight","key":"u","cost":5}"#).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json();
    assert_eq!(json["allowed"], false, "{json}");
    let wait = json["retry_after_ms"].as_u64().unwrap();
    assert!((14_399_000..=14_400_000).contains(&wait), "{json}");
    assert!(reply.header("ratelimit").is_some());
    let json = post(addr, "/v1/check", r#"{"policy":"tight","key":"u"}"#)
        .await
        .json();
    assert_eq!(json["allowed"], false, "the debt delays checks: {json}");
    // Cost defaults to 1; a shadow policy is charged and answers as /v1/check does.
    let json = charge(r#"{"policy":"shadowed","key":"s"}"#).await.json();
    assert_eq!(
        (json["allowed"].clone(), json["would_allow"].clone()),
        (true.into(), true.into())
    );
    let json = charge(r#"{"policy":"shadowed","key":"s"}"#).await.json();
    assert_eq!(json["allowed"], true, "{json}");
    assert_eq!(
        (json["shadow"].clone(), json["would_allow"].clone()),
        (true.into(), false.into())
    );
    // Bad input as for /v1/check.
    assert_problem(
        &charge(r#"{"policy":"tight","key":"u","cost":0}"#).await,
        400,
        "cost must be an integer from 1",
    );
    assert_problem(
        &charge(r#"{"policy":"nope","key":"u"}"#).await,
        404,
        "no policy named 'nope'",
    );
    assert_problem(
        &charge(r#"{"policy":"tight"}"#).await,
        400,
        "missing field `key`",
    );
    let metrics = get(addr, "/metrics").await.body;
    for line in [
        "floodgate_decisions_total{policy=\"tight\",outcome=\"charged\"} 2",
        "floodgate_decisions_total{policy=\"tight\",outcome=\"denied\"} 1",
        "floodgate_decisions_total{policy=\"shadowed\",outcome=\"charged\"} 2",
        "floodgate_decisions_total{policy=\"shadowed\",outcome=\"shadow_denied\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    server.shutdown().await;
}
