//! A real tonic service behind the layer: gRPC's health check, denied with
//! RESOURCE_EXHAUSTED once over its limit.

use std::sync::Arc;

use bytes::Bytes;
use floodgate::{ManualClock, Policy, RateLimiter};
use floodgate_tower::{HeaderValue, RateLimitLayer};
use http::{HeaderName, Request};
use http_body_util::Full;
use tower::{Layer, ServiceExt};

/// `grpc.health.v1.Health/Check` with an empty request message (a 5-byte gRPC frame).
fn check(client: &str) -> Request<tonic::body::Body> {
    Request::builder()
        .method("POST")
        .uri("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-client", client)
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ]))))
        .unwrap()
}

#[tokio::test]
async fn a_tonic_service_is_limited_with_grpc_statuses() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(ManualClock::new()));
    let layer = RateLimitLayer::new(limiter, Policy::parse("grpc", "2/h").unwrap())
        .key(HeaderValue::new(HeaderName::from_static("x-client")));
    let service = layer.layer(health);
    for _ in 0..2 {
        let response = service.clone().oneshot(check("a")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response
                .headers()
                .get("grpc-status")
                .is_none_or(|s| s == "0"),
            "{:?}",
            response.headers()
        );
        assert!(response.headers().contains_key("ratelimit"));
    }
    let denied = service.clone().oneshot(check("a")).await.unwrap();
    assert_eq!(denied.status(), 200);
    assert_eq!(denied.headers()["grpc-status"], "8");
    assert_eq!(denied.headers()["grpc-retry-pushback-ms"], "1800000");
    // Another client is unaffected.
    assert_eq!(
        service
            .oneshot(check("b"))
            .await
            .unwrap()
            .headers()
            .get("grpc-status")
            .map(|s| s.as_bytes()),
        None
    );
}
