//! `GET /v1/top`: the keys a policy decides most, by denials or decisions, behind the admin
//! token, within the Space-Saving error against exact counts; Envoy keys as `k=v`.

use std::collections::HashMap;

use crate::common;
use crate::envoy::{ask, descriptor, start_server};

use common::{TempDir, assert_problem, get, post, request, server_with};

const TOKEN: &str = "top-token";

async fn top(addr: std::net::SocketAddr, query: &str) -> common::Reply {
    let auth = format!("Bearer {TOKEN}");
    request(
        addr,
        "GET",
        &format!("/v1/top?{query}"),
        &[("authorization", &auth)],
        b"",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_denied_keys_are_listed_within_their_error() {
    let dir = TempDir::new("top");
    let config = format!(
        "[server]\nadmin_token = \"{TOKEN}\"\ntop_keys = 20\n\n[policies]\ntight = \"1/hour burst 2\"\nother = \"1/hour\"\n"
    );
    let server = server_with(&dir, &config).await;
    let addr = server.http_addr();
    let hostile = "<img src=x onerror=window.__pwned=1>";
    // A skewed stream: two heavy keys, and 40 keys seen once, more than the 20 counters.
    let mut stream: Vec<String> = Vec::new();
    for i in 0..40 {
        stream.push("attacker".into());
        if i % 4 == 0 {
            stream.push(hostile.into());
        }
        stream.push(format!("user:{i}"));
    }
    let mut exact: HashMap<String, (u64, u64)> = HashMap::new();
    for key in &stream {
        let body = serde_json::json!({ "policy": "tight", "key": key }).to_string();
        let json = post(addr, "/v1/check", &body).await.json();
        let entry = exact.entry(key.clone()).or_default();
        entry.0 += 1;
        entry.1 += u64::from(json["allowed"] == false);
    }
    assert_problem(
        &get(addr, "/v1/top?policy=tight").await,
        401,
        "GET /v1/top needs the admin token",
    );
    let reply = top(addr, "policy=tight&by=denied&n=2").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let rows = reply.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["key"], "attacker");
    assert_eq!(
        rows[1]["key"], hostile,
        "keys are data, returned as they are"
    );
    let n = stream.len() as u64;
    for by in ["denied", "decisions"] {
        let rows = top(addr, &format!("policy=tight&by={by}&n=20"))
            .await
            .json();
        for row in rows.as_array().unwrap() {
            let key = row["key"].as_str().unwrap();
            let (decisions, denied) = exact[key];
            let (count, truth) = match by {
                "denied" => (row["denied"].as_u64().unwrap(), denied),
                _ => (row["decisions"].as_u64().unwrap(), decisions),
            };
            let error = row["error"].as_u64().unwrap();
            assert!(error <= n / 20, "{row}");
            assert!(
                count - error <= truth && truth <= count,
                "{by}: {row} against {truth}"
            );
        }
    }
    // A configured policy without traffic has no rows; bad queries say why.
    assert_eq!(
        top(addr, "policy=other").await.json(),
        serde_json::json!([])
    );
    assert_problem(
        &top(addr, "policy=nope").await,
        404,
        "no policy named 'nope'",
    );
    assert_problem(&top(addr, "policy=tight&by=rate").await, 400, "by must be");
    assert_problem(
        &top(addr, "by=denied").await,
        400,
        "missing query parameter `policy`",
    );
    assert_problem(
        &top(addr, "policy=tight&n=5000").await,
        400,
        "n must be an integer from 1 to 1000",
    );
    server.shutdown().await;

    // Off: no summaries at all.
    let dir = TempDir::new("top-off");
    let server = server_with(&dir, "[server]\ntop_keys = 0\n[policies]\nfree = \"5/s\"\n").await;
    post(
        server.http_addr(),
        "/v1/check",
        r#"{"policy":"free","key":"k"}"#,
    )
    .await;
    assert_problem(
        &get(server.http_addr(), "/v1/top?policy=free").await,
        404,
        "top keys are off",
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rule_keys_are_shown_as_their_entries() {
    let (_dir, server, mut client) = start_server(None).await;
    for _ in 0..3 {
        ask(
            &mut client,
            "test-domain",
            vec![descriptor(&[("key3", "py-top")])],
            1,
        )
        .await;
    }
    let reply = get(
        server.http_addr(),
        "/v1/top?policy=envoy%3Atest-domain.key3&by=denied",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let rows = reply.json();
    assert_eq!(rows[0]["key"], "key3=py-top", "{rows}");
    assert_eq!(
        (rows[0]["decisions"].clone(), rows[0]["denied"].clone()),
        (3.into(), 2.into())
    );
    server.shutdown().await;
}
