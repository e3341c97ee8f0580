//! `POST /v1/acquire`, `/v1/release` and `/v1/renew`: the contract on the memory store, a
//! retried acquire, every bad request, the metrics, and each `on_error` with Redis down.

use crate::common;

use common::{TempDir, assert_problem, get, post, server_with};
use floodgate_testkit::redis_server::RedisServer;
use std::net::SocketAddr;

fn body(policy: &str, key: &str, permit: Option<&str>) -> String {
    let mut json = serde_json::json!({ "policy": policy, "key": key });
    if let Some(permit) = permit {
        json["permit"] = permit.into();
    }
    json.to_string()
}

async fn acquire(addr: SocketAddr, policy: &str, key: &str) -> serde_json::Value {
    let reply = post(addr, "/v1/acquire", &body(policy, key, None)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

fn assert_metrics(metrics: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            metrics.lines().any(|l| l == *line),
            "missing {line} in\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_are_acquired_up_to_max_released_and_renewed() {
    let dir = TempDir::new("permits");
    let server = server_with(
        &dir,
        "[concurrency]\nexports = { max = 2, lease = \"30s\" }\n",
    )
    .await;
    let addr = server.http_addr();
    let first = acquire(addr, "exports", "tenant:7").await;
    let id = first["permit"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        first,
        serde_json::json!({
            "acquired": true, "permit": id, "in_flight": 1, "limit": 2, "lease_ms": 30_000
        })
    );
    let second = acquire(addr, "exports", "tenant:7").await;
    assert_eq!(second["in_flight"], 2);
    let full = acquire(addr, "exports", "tenant:7").await;
    assert_eq!(
        (&full["acquired"], &full["in_flight"], &full["limit"]),
        (&false.into(), &2.into(), &2.into()),
        "{full}"
    );
    let wait = full["retry_after_ms"].as_u64().unwrap();
    assert!((29_000..=30_000).contains(&wait), "{full}");
    assert!(full.get("permit").is_none(), "{full}");
    // Another key has slots of its own.
    assert_eq!(acquire(addr, "exports", "tenant:8").await["acquired"], true);

    // Release is idempotent: 204 both times, one slot freed.
    for _ in 0..2 {
        let reply = post(addr, "/v1/release", &body("exports", "tenant:7", Some(&id))).await;
        assert_eq!(reply.status, 204, "{reply:?}");
        assert!(reply.body.is_empty());
    }
    let third = acquire(addr, "exports", "tenant:7").await;
    assert_eq!(third["acquired"], true, "{third}");
    assert!(
        !acquire(addr, "exports", "tenant:7").await["acquired"]
            .as_bool()
            .unwrap()
    );

    let held = second["permit"].as_str().unwrap();
    let reply = post(addr, "/v1/renew", &body("exports", "tenant:7", Some(held))).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), serde_json::json!({ "lease_ms": 30_000 }));
    // The released permit is gone: a renew is a 404, as for an expired one.
    let reply = post(addr, "/v1/renew", &body("exports", "tenant:7", Some(&id))).await;
    assert_problem(&reply, 404, "is not in flight for this key");
    // Named with another key, a permit is not found there either (and a release of it is
    // the idempotent 204, changing nothing).
    let reply = post(addr, "/v1/renew", &body("exports", "tenant:8", Some(held))).await;
    assert_problem(&reply, 404, "is not in flight");
    let reply = post(
        addr,
        "/v1/release",
        &body("exports", "tenant:8", Some(held)),
    )
    .await;
    assert_eq!(reply.status, 204);
    assert!(
        !acquire(addr, "exports", "tenant:7").await["acquired"]
            .as_bool()
            .unwrap()
    );

    let config = get(addr, "/v1/config").await.json();
    assert_eq!(
        config["concurrency"],
        serde_json::json!([{ "name": "exports", "max": 2, "lease_ms": 30_000, "on_error": "allow" }])
    );
    let metrics = get(addr, "/metrics").await.body;
    assert_metrics(
        &metrics,
        &[
            "floodgate_permits_total{limit=\"exports\",outcome=\"acquired\"} 4",
            "floodgate_permits_total{limit=\"exports\",outcome=\"denied\"} 3",
            "floodgate_permits_total{limit=\"exports\",outcome=\"released\"} 3",
            "floodgate_permits_total{limit=\"exports\",outcome=\"renewed\"} 1",
            "floodgate_permits_total{limit=\"exports\",outcome=\"expired\"} 2",
            "floodgate_permits_total{limit=\"exports\",outcome=\"store_error\"} 0",
            // tenant:7 holds two (second, third), tenant:8 one.
            "floodgate_permits_in_flight{limit=\"exports\"} 3",
            "floodgate_permits_reclaimed_total 0",
        ],
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_retried_with_its_permit_id_holds_one_permit() {
    let dir = TempDir::new("permits-retry");
    let server = server_with(&dir, "[concurrency]\ndb = 1\n").await;
    let addr = server.http_addr();
    let id = "0123456789abcdef0123456789ABCDEF";
    for _ in 0..2 {
        let reply = post(addr, "/v1/acquire", &body("db", "k", Some(id))).await;
        let json = reply.json();
        assert_eq!(json["acquired"], true, "{json}");
        assert_eq!(json["in_flight"], 1, "{json}");
        assert_eq!(json["permit"], id.to_lowercase());
        assert_eq!(json["lease_ms"], 30_000, "the default lease");
    }
    assert_eq!(acquire(addr, "db", "k").await["acquired"], false);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_permit_requests_are_clear_errors() {
    let dir = TempDir::new("permits-bad");
    let server = server_with(
        &dir,
        "[policies]\nfree = \"5/s\"\n\n[concurrency]\ndb = 3\n",
    )
    .await;
    let addr = server.http_addr();
    let reply = post(addr, "/v1/acquire", &body("nope", "k", None)).await;
    assert_problem(&reply, 404, "no concurrency limit named 'nope'");
    // A rate-limit policy is not a concurrency limit.
    let reply = post(addr, "/v1/acquire", &body("free", "k", None)).await;
    assert_problem(&reply, 404, "no concurrency limit named 'free'");
    let reply = post(addr, "/v1/release", &body("db", "k", None)).await;
    assert_problem(&reply, 400, "missing field `permit`");
    let reply = post(addr, "/v1/renew", &body("db", "k", None)).await;
    assert_problem(&reply, 400, "missing field `permit`");
    for forged in [
        "xyz",
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef0",
    ] {
        let reply = post(addr, "/v1/release", &body("db", "k", Some(forged))).await;
        assert_problem(&reply, 400, "a permit id is 32 hexadecimal digits");
    }
    let reply = post(addr, "/v1/acquire", &body("db", "", None)).await;
    assert_problem(&reply, 400, "key must be 1 to 1024 bytes");
    let reply = post(addr, "/v1/acquire", r#"{"policy":"db","key":"k","cost":2}"#).await;
    assert_problem(&reply, 400, "unknown field `cost`");
    let reply = post(addr, "/v1/acquire", r#"["db","k"]"#).await;
    assert_problem(&reply, 400, "expected a JSON object");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_limit_follows_its_on_error() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("permits-redis-down");
    let config = format!(
        "[store]\nurl = \"{}\"\ntimeout = \"200ms\"\non_error = \"deny\"\nlocal_share = 0.5\n\n\
         [concurrency]\nclosed = 2\nopen = {{ max = 2, on_error = \"allow\" }}\n\
         local = {{ max = 4, on_error = \"local\" }}\n",
        redis.url()
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    let held = acquire(addr, "closed", "k").await;
    assert_eq!(held["acquired"], true);
    assert_eq!(held["in_flight"], 1);
    redis.kill();
    let closed = acquire(addr, "closed", "k").await;
    assert_eq!(closed["acquired"], false, "{closed}");
    assert_eq!(acquire(addr, "open", "k").await["acquired"], true);
    // Local: 4 × 0.5 = 2 on this node.
    assert_eq!(acquire(addr, "local", "k").await["acquired"], true);
    assert_eq!(acquire(addr, "local", "k").await["acquired"], true);
    assert_eq!(acquire(addr, "local", "k").await["acquired"], false);
    // A release needs Redis: 503, and the permit ends with its lease.
    let reply = post(
        addr,
        "/v1/release",
        &body("closed", "k", held["permit"].as_str()),
    )
    .await;
    assert_problem(&reply, 503, "the rate limit store is unavailable");
    let metrics = get(addr, "/metrics").await.body;
    assert_metrics(
        &metrics,
        &[
            "floodgate_permits_total{limit=\"closed\",outcome=\"denied\"} 1",
            "floodgate_permits_total{limit=\"closed\",outcome=\"store_error\"} 1",
            "floodgate_permits_total{limit=\"open\",outcome=\"acquired\"} 1",
            "floodgate_permits_total{limit=\"local\",outcome=\"acquired\"} 2",
        ],
    );
    server.shutdown().await;
}
