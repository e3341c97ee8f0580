//! `POST /v1/login/attempt` and `POST /v1/login/result`: the contract on the memory store,
//! every bad request, the device field, the failure policy on Redis, and one lockout seen
//! by two server processes on one Redis.

use crate::common;

use common::{Binary, TempDir, assert_problem, get, post, server_with};
use floodgate_testkit::redis_server::RedisServer;

fn attempt_body(username: &str, ip: &str) -> String {
    serde_json::json!({ "guard": "web", "username": username, "ip": ip }).to_string()
}

fn result_body(username: &str, ip: &str, success: bool) -> String {
    serde_json::json!({ "guard": "web", "username": username, "ip": ip, "success": success })
        .to_string()
}

async fn attempt(addr: std::net::SocketAddr, username: &str, ip: &str) -> serde_json::Value {
    let reply = post(addr, "/v1/login/attempt", &attempt_body(username, ip)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

async fn fail(addr: std::net::SocketAddr, username: &str, ip: &str) {
    assert_eq!(attempt(addr, username, ip).await["allowed"], true);
    let reply = post(addr, "/v1/login/result", &result_body(username, ip, false)).await;
    assert_eq!(reply.status, 204, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_lock_the_pair_and_the_answer_names_the_rule() {
    let dir = TempDir::new("login");
    let server = server_with(&dir, "[login]\nweb = {}\n").await;
    let addr = server.http_addr();
    let json = attempt(addr, "alice", "192.0.2.1").await;
    assert_eq!(
        json,
        serde_json::json!({ "allowed": true, "rule": null, "retry_after_ms": 0 })
    );
    let reply = post(
        addr,
        "/v1/login/result",
        &result_body("alice", "192.0.2.1", false),
    )
    .await;
    assert_eq!(reply.status, 204, "{reply:?}");
    fail(addr, "Alice", "192.0.2.1").await;
    fail(addr, "ALICE ", "192.0.2.1").await;
    let locked = attempt(addr, "alice", "192.0.2.1").await;
    assert_eq!(locked["allowed"], false, "{locked}");
    assert_eq!(locked["rule"], "lockout");
    let wait = locked["retry_after_ms"].as_u64().unwrap();
    assert!((59_000..=60_000).contains(&wait), "{locked}");
    // Another address for the same user is its own pair.
    assert_eq!(attempt(addr, "alice", "192.0.2.2").await["allowed"], true);
    // A success from the locked pair is not possible; from another pair it resets that one.
    let reply = post(
        addr,
        "/v1/login/result",
        &result_body("alice", "192.0.2.2", true),
    )
    .await;
    assert_eq!(reply.status, 204);

    let metrics = get(addr, "/metrics").await.body;
    for line in [
        "floodgate_login_attempts_total{guard=\"web\",answer=\"allowed\"} 4",
        "floodgate_login_attempts_total{guard=\"web\",answer=\"lockout\"} 1",
        "floodgate_login_attempts_total{guard=\"web\",answer=\"ip\"} 0",
        "floodgate_login_results_total{guard=\"web\",outcome=\"failure\"} 3",
        "floodgate_login_results_total{guard=\"web\",outcome=\"success\"} 1",
        "floodgate_login_store_errors_total{guard=\"web\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("alice") && !metrics.contains("192.0.2"),
        "no user data as labels"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_limit_refuses_a_spray_with_its_wait() {
    let dir = TempDir::new("login-spray");
    let server = server_with(&dir, "[login]\nweb = { per_ip = \"3/m\" }\n").await;
    let addr = server.http_addr();
    for user in ["a", "b", "c"] {
        assert_eq!(attempt(addr, user, "2001:db8::1").await["allowed"], true);
    }
    // Another address of the same /64 is the same client.
    let refused = attempt(addr, "d", "2001:db8::ffff").await;
    assert_eq!(refused["rule"], "ip", "{refused}");
    // One token per 20 s, less the few milliseconds the three attempts took.
    let wait = refused["retry_after_ms"].as_u64().unwrap();
    assert!((19_000..=20_000).contains(&wait), "{refused}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_field_keys_the_known_device_exemption() {
    let dir = TempDir::new("login-device");
    let server = server_with(&dir, "[login]\nweb = { per_user = \"2/m\" }\n").await;
    let addr = server.http_addr();
    let with_device = |ip: &str, device: &str, success: Option<bool>| {
        let mut body = serde_json::json!({
            "guard": "web", "username": "bob", "ip": ip, "device": device
        });
        if let Some(success) = success {
            body["success"] = success.into();
        }
        body.to_string()
    };
    let reply = post(
        addr,
        "/v1/login/attempt",
        &with_device("192.0.2.9", "phone", None),
    )
    .await;
    assert_eq!(reply.json()["allowed"], true);
    let reply = post(
        addr,
        "/v1/login/result",
        &with_device("192.0.2.9", "phone", Some(true)),
    )
    .await;
    assert_eq!(reply.status, 204);
    // One more attempt empties the per-username bucket (2/m) from an unknown address.
    fail(addr, "bob", "198.51.100.1").await;
    assert_eq!(
        attempt(addr, "bob", "198.51.100.2").await["rule"],
        "username"
    );
    // The phone logs in from anywhere; the address it used is not known without it.
    let reply = post(
        addr,
        "/v1/login/attempt",
        &with_device("203.0.113.5", "phone", None),
    )
    .await;
    assert_eq!(reply.json()["allowed"], true, "{reply:?}");
    assert_eq!(attempt(addr, "bob", "192.0.2.9").await["rule"], "username");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_login_requests_are_refused_with_the_reason() {
    let dir = TempDir::new("login-bad");
    let server = server_with(&dir, "[login]\nweb = {}\n").await;
    let addr = server.http_addr();
    let long = "x".repeat(1025);
    let attempts: &[(&str, u16, &str)] = &[
        (
            r#"{"guard":"web","ip":"192.0.2.1"}"#,
            400,
            "missing field `username`",
        ),
        (
            r#"{"guard":"web","username":"a"}"#,
            400,
            "missing field `ip`",
        ),
        (
            r#"{"username":"a","ip":"192.0.2.1"}"#,
            400,
            "missing field `guard`",
        ),
        (
            r#"{"guard":"web","username":"a","ip":"300.1.1.1"}"#,
            400,
            "ip '300.1.1.1' is not an IPv4 or IPv6 address",
        ),
        (
            r#"{"guard":"web","username":"a","ip":"alice.example"}"#,
            400,
            "is not an IPv4 or IPv6 address",
        ),
        (
            r#"{"guard":"web","username":"   ","ip":"192.0.2.1"}"#,
            400,
            "not only white space",
        ),
        (
            r#"{"guard":"web","username":"a","ip":"192.0.2.1","device":""}"#,
            400,
            "device must be 1 to 1024 bytes",
        ),
        (
            r#"{"guard":"web","username":"a","ip":"192.0.2.1","success":true}"#,
            400,
            "`success` belongs in POST /v1/login/result",
        ),
        (
            r#"{"guard":"web","username":"a","ip":"192.0.2.1","pasword":"x"}"#,
            400,
            "unknown field `pasword`",
        ),
        (r#"["web","a","192.0.2.1"]"#, 400, "expected a JSON object"),
        (
            r#"{"guard":"mobile","username":"a","ip":"192.0.2.1"}"#,
            404,
            "no login guard named 'mobile'",
        ),
    ];
    for (body, status, detail) in attempts {
        assert_problem(
            &post(addr, "/v1/login/attempt", body).await,
            *status,
            detail,
        );
    }
    let body = format!(r#"{{"guard":"web","username":"{long}","ip":"192.0.2.1"}}"#);
    assert_problem(
        &post(addr, "/v1/login/attempt", &body).await,
        400,
        "username must be 1 to 1024 bytes",
    );
    assert_problem(
        &post(
            addr,
            "/v1/login/result",
            r#"{"guard":"web","username":"a","ip":"192.0.2.1"}"#,
        )
        .await,
        400,
        "missing field `success`",
    );
    assert_problem(
        &post(
            addr,
            "/v1/login/result",
            r#"{"guard":"web","username":"a","ip":"::1","success":"yes"}"#,
        )
        .await,
        400,
        "invalid type",
    );
    assert_problem(
        &get(addr, "/v1/login/attempt").await,
        405,
        "/v1/login/attempt",
    );
    // None of these reached the guard.
    let metrics = get(addr, "/metrics").await.body;
    assert!(
        metrics.contains("floodgate_login_attempts_total{guard=\"web\",answer=\"allowed\"} 0"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_attempts_follow_the_guards_on_error() {
    let mut redis = RedisServer::start();
    let dir = TempDir::new("login-redis-down");
    let config = format!(
        "[store]\nurl = \"{}\"\ntimeout = \"200ms\"\non_error = \"allow\"\n\n[login]\nweb = {{}}\nlenient = {{ on_error = \"allow\" }}\n",
        redis.url()
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    fail(addr, "carol", "192.0.2.7").await;
    redis.kill();
    // The store's own on_error ("allow") does not apply to guards: `web` fails closed.
    let refused = attempt(addr, "carol", "192.0.2.7").await;
    assert_eq!(
        refused,
        serde_json::json!({ "allowed": false, "rule": "unavailable", "retry_after_ms": 1000 })
    );
    let lenient = serde_json::json!({ "guard": "lenient", "username": "carol", "ip": "192.0.2.7" });
    let reply = post(addr, "/v1/login/attempt", &lenient.to_string()).await;
    assert_eq!(reply.json()["allowed"], true, "{reply:?}");
    let reply = post(
        addr,
        "/v1/login/result",
        &result_body("carol", "192.0.2.7", false),
    )
    .await;
    assert_problem(&reply, 503, "the result was not recorded");
    let metrics = get(addr, "/metrics").await.body;
    for line in [
        "floodgate_login_attempts_total{guard=\"web\",answer=\"unavailable\"} 1",
        "floodgate_login_store_errors_total{guard=\"web\"} 2",
        "floodgate_login_store_errors_total{guard=\"lenient\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_on_one_redis_share_the_lockout() {
    let redis = RedisServer::start();
    let dir = TempDir::new("login-fleet");
    let config = format!(
        "[store]\nurl = \"{}\"\n\n[login]\nweb = {{ secret = \"shared-by-the-whole-fleet\" }}\n",
        redis.url()
    );
    let path = dir.write("floodgate.toml", &config);
    let path = path.to_string_lossy().into_owned();
    let args = ["serve", "--config", path.as_str(), "--watch-secs", "0"];
    let (a, b) = (Binary::spawn(&args, None), Binary::spawn(&args, None));
    fail(a.http, "dave", "192.0.2.30").await;
    fail(b.http, "dave", "192.0.2.30").await;
    fail(a.http, "dave", "192.0.2.30").await;
    for node in [a.http, b.http] {
        let locked = attempt(node, "Dave", "192.0.2.30").await;
        assert_eq!(locked["rule"], "lockout", "{locked}");
    }
    drop((a, b));
}
