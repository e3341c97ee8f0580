//! `ConcurrencyLimitLayer` on a tower service: a permit held from the call through the
//! response body's end, `503` with `Retry-After` when full, the IETF fields with
//! `qu="concurrent-requests"`, gRPC's `RESOURCE_EXHAUSTED`, and keys.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use floodgate::{Concurrency, RateLimiter};
use floodgate_tower::{ConcurrencyLimitLayer, LimitBody, PeerAddr};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneService<Request<()>, Response<LimitBody<Full<Bytes>>>, Infallible>;

fn service(max: u32) -> Svc {
    let limiter = Arc::new(RateLimiter::in_memory());
    let layer = ConcurrencyLimitLayer::new(limiter, Concurrency::named("exports", max).unwrap());
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"report"))))
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

fn from(ip: &str) -> Request<()> {
    let mut request = Request::builder().uri("/export").body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 4242)));
    request
}

async fn send(service: &mut Svc, request: Request<()>) -> Response<LimitBody<Full<Bytes>>> {
    service.ready().await.unwrap().call(request).await.unwrap()
}

#[tokio::test]
async fn a_request_holds_its_permit_until_its_body_has_ended() {
    let mut svc = service(1);
    let first = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.headers()["ratelimit-policy"],
        "\"exports\";q=1;qu=\"concurrent-requests\""
    );
    assert_eq!(first.headers()["ratelimit"], "\"exports\";r=0");

    // The body is not read yet: the request is still in flight.
    let full = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        full.headers()["retry-after"],
        "30",
        "the default 30 s lease"
    );
    assert_eq!(full.headers()["content-type"], "application/problem+json");
    assert_eq!(
        full.headers()["ratelimit-policy"],
        "\"exports\";q=1;qu=\"concurrent-requests\""
    );
    assert!(full.headers().get("ratelimit").is_none());
    let problem: serde_json::Value =
        serde_json::from_slice(&full.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(problem["status"], 503);
    assert_eq!(problem["violated-policies"], serde_json::json!(["exports"]));
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("1 of 1 in flight"),
        "{problem}"
    );
    // Another client has a slot of its own.
    assert_eq!(
        send(&mut svc, from("192.0.2.2")).await.status(),
        StatusCode::OK
    );

    // Reading the last frame ends the request, while the body itself is still alive.
    let mut body = first.into_body();
    let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(data, "report");
    assert_eq!(
        send(&mut svc, from("192.0.2.1")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "released before the body ended"
    );
    assert!(body.frame().await.is_none());
    let next = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(
        next.status(),
        StatusCode::OK,
        "not released at the body's end"
    );
    drop(body);
}

#[tokio::test]
async fn dropping_an_unread_response_releases_its_permit() {
    let mut svc = service(2);
    let a = send(&mut svc, from("192.0.2.1")).await;
    let b = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(b.headers()["ratelimit"], "\"exports\";r=0");
    assert_eq!(
        send(&mut svc, from("192.0.2.1")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(a);
    let c = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(c.status(), StatusCode::OK);
    drop((b, c));
}

#[tokio::test]
async fn a_grpc_call_that_finds_the_limit_full_is_resource_exhausted() {
    let mut svc = service(1);
    let grpc = || {
        let mut request = from("192.0.2.1");
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        request
    };
    let held = send(&mut svc, grpc()).await;
    let full = send(&mut svc, grpc()).await;
    assert_eq!(
        full.status(),
        StatusCode::OK,
        "gRPC errors travel in grpc-status"
    );
    assert_eq!(full.headers()["grpc-status"], "8");
    assert_eq!(full.headers()["retry-after"], "30");
    let pushback: u64 = full.headers()["grpc-retry-pushback-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    drop(held);
}

#[tokio::test]
async fn the_fields_sent_are_structured_field_lists_with_the_quota_unit() {
    let mut svc = service(5);
    let response = send(&mut svc, from("192.0.2.1")).await;
    let state = response.headers()["ratelimit"].to_str().unwrap();
    let state: sfv::List = sfv::Parser::new(state).parse().unwrap();
    let sfv::ListEntry::Item(item) = &state[0] else {
        panic!("an inner list");
    };
    assert_eq!(
        item.params
            .get("r")
            .and_then(|v| v.as_integer())
            .map(i64::from),
        Some(4)
    );
    let field = response.headers()["ratelimit-policy"].to_str().unwrap();
    let list: sfv::List = sfv::Parser::new(field).parse().unwrap();
    let sfv::ListEntry::Item(item) = &list[0] else {
        panic!("an inner list");
    };
    assert_eq!(
        item.bare_item.as_string().map(|s| s.as_str()),
        Some("exports")
    );
    let unit = item
        .params
        .get("qu")
        .and_then(|v| v.as_string())
        .map(|s| s.as_str());
    assert_eq!(unit, Some("concurrent-requests"));
    let quota = item
        .params
        .get("q")
        .and_then(|v| v.as_integer())
        .map(i64::from);
    assert_eq!(quota, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_follows_on_store_error() {
    use floodgate_redis::{FailurePolicy, RedisStore};
    use floodgate_tower::OnStoreError;
    let mut server = floodgate_testkit::redis_server::RedisServer::start();
    let store = RedisStore::builder(&server.url())
        .timeout(std::time::Duration::from_millis(300))
        .on_failure(FailurePolicy::Error)
        .build()
        .await
        .unwrap();
    let limiter = Arc::new(RateLimiter::new(store));
    let limit = Concurrency::named("exports", 1).unwrap();
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"report"))))
    });
    let layer = |outcome| {
        ConcurrencyLimitLayer::new(limiter.clone(), limit.clone()).on_store_error(outcome)
    };
    let mut open = tower::util::BoxCloneService::new(layer(OnStoreError::Allow).layer(inner));
    let mut closed = tower::util::BoxCloneService::new(layer(OnStoreError::Deny).layer(inner));
    assert_eq!(
        send(&mut closed, from("192.0.2.1")).await.status(),
        StatusCode::OK
    );
    server.kill();
    let refused = send(&mut closed, from("192.0.2.1")).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Let through unlimited: nothing is held, so nothing is released later.
    assert_eq!(
        send(&mut open, from("192.0.2.1")).await.status(),
        StatusCode::OK
    );
}
