//! The `saas_tiers` example: plans by API key, 401 for strangers, 429 with headers.

#[path = "../../examples/saas_tiers.rs"]
#[allow(dead_code)]
mod example;

use std::sync::Arc;

use axum::body::Body;
use floodgate::{ManualClock, RateLimiter};
use http::{Request, StatusCode};
use tower::ServiceExt;

fn get(key: &str) -> Request<Body> {
    Request::builder()
        .uri("/hello")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn each_plan_gets_its_burst_and_strangers_get_401() {
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(ManualClock::new()));
    let app = example::app(limiter).unwrap();
    for (key, burst) in [
        ("demo-free", 10),
        ("demo-pro", 100),
        ("demo-enterprise", 200),
    ] {
        for _ in 0..burst {
            assert_eq!(
                app.clone().oneshot(get(key)).await.unwrap().status(),
                StatusCode::OK,
                "{key}"
            );
        }
        let denied = app.clone().oneshot(get(key)).await.unwrap();
        assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS, "{key}");
        assert!(denied.headers().contains_key("retry-after"));
    }
    let free = app.clone().oneshot(get("demo-free")).await.unwrap();
    assert_eq!(
        free.headers()["ratelimit-policy"],
        "\"free.0\";q=5;w=1;fg-burst=10, \"free.1\";q=1000;w=86400"
    );
    assert_eq!(free.headers()["ratelimit"], "\"free.0\";r=0;t=1");
    assert_eq!(
        app.clone()
            .oneshot(get("stolen-key"))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

/// One request over a fresh TCP connection; the status code.
async fn get_over_tcp(addr: std::net::SocketAddr, key: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /hello HTTP/1.1\r\nHost: test\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn over_real_tcp_the_free_key_hits_429_and_the_enterprise_key_does_not() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(Arc::new(RateLimiter::in_memory())).unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut free = Vec::new();
    let mut enterprise = Vec::new();
    for _ in 0..20 {
        free.push(get_over_tcp(addr, "demo-free").await);
        enterprise.push(get_over_tcp(addr, "demo-enterprise").await);
    }
    // Burst 10 at 5/s: of 20 requests sent within a second or two, some are refused.
    assert!(free[..10].iter().all(|&s| s == 200), "{free:?}");
    assert!(free.contains(&429), "{free:?}");
    assert!(enterprise.iter().all(|&s| s == 200), "{enterprise:?}");
    server.abort();
}
