//! The `saas_tiers` example: plans by API key, 401 for strangers, 429 with headers.

#[path = "../examples/saas_tiers.rs"]
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
