//! The layer end to end on a tower service: statuses, headers, bodies, keys and outcomes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodgate::{Decision, Error, ManualClock, MemoryStore, Policy, RateLimiter, Store};
use floodgate_tower::LimitBody;
use floodgate_tower::{
    HeaderMode, HeaderValue, MissingKey, OnStoreError, PeerAddr, PeerIp, RateLimitLayer,
};
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneService<Request<()>, Response<LimitBody<Full<Bytes>>>, Infallible>;

fn service<S: Store>(layer: RateLimitLayer<S>) -> Svc {
    let inner = service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

fn fresh() -> (Arc<RateLimiter<MemoryStore<ManualClock>>>, ManualClock) {
    let clock = ManualClock::new();
    (
        Arc::new(RateLimiter::in_memory_with_clock(clock.clone())),
        clock,
    )
}

fn from(ip: &str) -> Request<()> {
    let mut request = Request::builder().uri("/hello").body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 4242)));
    request
}

async fn send(service: &mut Svc, request: Request<()>) -> Response<LimitBody<Full<Bytes>>> {
    service.ready().await.unwrap().call(request).await.unwrap()
}

async fn status(svc: &mut Svc, request: Request<()>) -> StatusCode {
    send(svc, request).await.status()
}

#[tokio::test]
async fn a_denied_request_gets_429_with_honest_headers_and_a_problem_body() {
    let (limiter, clock) = fresh();
    let free = Policy::parse("free", "5/s burst 10; 1000/day").unwrap();
    let mut svc = service(RateLimitLayer::new(limiter, free));
    for remaining in (0..10).rev() {
        let response = send(&mut svc, from("192.0.2.1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["ratelimit"],
            format!("\"free.0\";r={remaining};t={}", u8::from(remaining == 0))
        );
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"free.0\";q=5;w=1;fg-burst=10, \"free.1\";q=1000;w=86400"
        );
    }
    let denied = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = denied.headers();
    assert_eq!(headers["retry-after"], "1"); // 200 ms, rounded up
    assert_eq!(headers["ratelimit"], "\"free.0\";r=0;t=1");
    assert_eq!(
        headers["ratelimit-policy"],
        "\"free.0\";q=5;w=1;fg-burst=10, \"free.1\";q=1000;w=86400"
    );
    assert_eq!(headers["content-type"], "application/problem+json");
    let body = denied.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["free.0"]));
    // Another client is not affected; the first one gets through when the token arrives.
    assert_eq!(status(&mut svc, from("192.0.2.2")).await, StatusCode::OK);
    clock.advance(Duration::from_millis(200));
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, StatusCode::OK);
}

#[tokio::test]
async fn retry_after_is_never_earlier_than_capacity() {
    let (limiter, clock) = fresh();
    let mut svc = service(RateLimitLayer::new(
        limiter,
        Policy::parse("slow", "1/90s").unwrap(),
    ));
    send(&mut svc, from("192.0.2.1")).await;
    clock.advance(Duration::from_millis(500));
    let denied = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(denied.headers()["retry-after"], "90"); // 89.5 s, rounded up
    assert_eq!(denied.headers()["ratelimit"], "\"slow\";r=0;t=90");
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let policy = Policy::parse("p", "1/h").unwrap();
    let behind = |peer: &str, xff: &str| {
        let mut request = from(peer);
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        request
    };
    // No trusted proxies: the header is ignored, the peer is the client.
    let (limiter, _) = fresh();
    let mut svc = service(RateLimitLayer::new(limiter, policy.clone()));
    assert_eq!(
        status(&mut svc, behind("203.0.113.9", "198.51.100.1")).await,
        200
    );
    assert_eq!(
        status(&mut svc, behind("203.0.113.9", "198.51.100.2")).await,
        429
    );

    // Behind a trusted proxy: the rightmost untrusted hop is the client, whatever was
    // prepended before it.
    let (limiter, _) = fresh();
    let peer_ip = PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let mut svc = service(RateLimitLayer::new(limiter, policy.clone()).key(peer_ip));
    assert_eq!(
        status(&mut svc, behind("10.0.0.5", "198.51.100.7, 10.0.0.9")).await,
        200
    );
    assert_eq!(
        send(
            &mut svc,
            behind("10.0.0.5", "1.2.3.4, 198.51.100.7, 10.0.0.9")
        )
        .await
        .status(),
        429
    );
    assert_eq!(
        status(&mut svc, behind("10.0.0.6", "6.6.6.6, 198.51.100.7")).await,
        429
    );
    // Forwarded (RFC 7239) works the same way.
    let mut forwarded = from("10.0.0.5");
    forwarded.headers_mut().insert(
        "forwarded",
        "for=6.6.6.6, for=\"198.51.100.7:4711\";proto=https"
            .parse()
            .unwrap(),
    );
    assert_eq!(status(&mut svc, forwarded).await, 429);
    // Garbage on the way falls back to the peer (the proxy), which has its own bucket.
    assert_eq!(status(&mut svc, behind("10.0.0.5", "not-an-ip")).await, 200);
    assert_eq!(
        status(&mut svc, behind("10.0.0.5", "still garbage")).await,
        429
    );
}

#[tokio::test]
async fn ipv6_clients_are_grouped_by_prefix_and_mapped_ipv4_is_ipv4() {
    let (limiter, _) = fresh();
    let mut svc = service(RateLimitLayer::new(
        limiter,
        Policy::parse("p", "1/h").unwrap(),
    ));
    assert_eq!(status(&mut svc, from("2001:db8:1:2::1")).await, 200);
    assert_eq!(
        status(&mut svc, from("2001:db8:1:2:ffff::99")).await,
        429,
        "same /64"
    );
    assert_eq!(
        status(&mut svc, from("2001:db8:1:3::1")).await,
        200,
        "another /64"
    );
    assert_eq!(status(&mut svc, from("192.0.2.77")).await, 200);
    assert_eq!(
        status(&mut svc, from("::ffff:192.0.2.77")).await,
        429,
        "IPv4-mapped"
    );
}

#[tokio::test]
async fn shadow_mode_counts_and_reports_but_never_rejects() {
    let (limiter, _) = fresh();
    let mut svc =
        service(RateLimitLayer::new(limiter, Policy::parse("p", "2/h").unwrap()).shadow(true));
    for _ in 0..5 {
        let response = send(&mut svc, from("192.0.2.1")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let response = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(response.headers()["ratelimit"], "\"p\";r=0;t=1800");
}

#[tokio::test]
async fn requests_without_a_key_follow_the_configured_outcome() {
    let api_key = || HeaderValue::new(HeaderName::from_static("x-api-key"));
    let bare = || Request::builder().uri("/hello").body(()).unwrap();
    let policy = Policy::parse("p", "1/h").unwrap();
    let (limiter, _) = fresh();
    let mut shared = service(RateLimitLayer::new(limiter, policy.clone()).key(api_key()));
    assert_eq!(status(&mut shared, bare()).await, 200);
    assert_eq!(
        status(&mut shared, bare()).await,
        429,
        "one bucket for all keyless requests"
    );
    let (limiter, _) = fresh();
    let mut reject = service(
        RateLimitLayer::new(limiter, policy.clone())
            .key(api_key())
            .on_missing_key(MissingKey::Reject),
    );
    assert_eq!(status(&mut reject, bare()).await, 401);
    let (limiter, _) = fresh();
    let mut allow = service(
        RateLimitLayer::new(limiter, policy)
            .key(api_key())
            .on_missing_key(MissingKey::Allow),
    );
    for _ in 0..3 {
        assert_eq!(status(&mut allow, bare()).await, 200);
    }
}

#[tokio::test]
async fn exemptions_routes_and_legacy_headers() {
    let (limiter, _) = fresh();
    let layer = RateLimitLayer::per_route(
        limiter,
        [("/login".to_owned(), Policy::parse("login", "1/m").unwrap())],
        None,
    )
    .headers(HeaderMode::IetfAndLegacy)
    .exempt(|request| request.headers.contains_key("x-internal"));
    let mut svc = service(layer);
    let to = |path: &str| {
        let mut request = Request::builder().uri(path).body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        request
    };
    let first = send(&mut svc, to("/login")).await;
    assert_eq!(
        (
            first.headers()["x-ratelimit-limit"].to_str().unwrap(),
            first.headers()["x-ratelimit-remaining"].to_str().unwrap()
        ),
        ("1", "0")
    );
    assert_eq!(status(&mut svc, to("/login")).await, 429);
    for _ in 0..3 {
        let open = send(&mut svc, to("/hello")).await;
        assert_eq!(open.status(), 200, "no policy for /hello");
        assert!(!open.headers().contains_key("ratelimit"));
    }
    let mut internal = to("/login");
    internal
        .headers_mut()
        .insert("x-internal", "1".parse().unwrap());
    assert_eq!(status(&mut svc, internal).await, 200);
}

/// A store that always fails, as Redis does when it is down.
struct Broken;

impl Store for Broken {
    type Clock = ManualClock;
    fn clock(&self) -> &ManualClock {
        static CLOCK: std::sync::OnceLock<ManualClock> = std::sync::OnceLock::new();
        CLOCK.get_or_init(ManualClock::new)
    }
    async fn apply(&self, _: &Policy, _: &str, _: floodgate::store::Op) -> Result<Decision, Error> {
        Err(Error::store("connection refused"))
    }
    async fn reset(&self, _: &Policy, _: &str) -> Result<(), Error> {
        Err(Error::store("connection refused"))
    }
}

#[tokio::test]
async fn a_failing_store_allows_by_default_or_answers_503() {
    let policy = Policy::parse("p", "1/h").unwrap();
    let broken = Arc::new(RateLimiter::new(Broken));
    let mut open = service(RateLimitLayer::new(Arc::clone(&broken), policy.clone()));
    for _ in 0..3 {
        assert_eq!(status(&mut open, from("192.0.2.1")).await, 200);
    }
    let mut closed =
        service(RateLimitLayer::new(broken, policy).on_store_error(OnStoreError::Deny));
    let response = send(&mut closed, from("192.0.2.1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
}

#[tokio::test]
async fn clones_of_the_service_share_one_limiter() {
    let (limiter, _) = fresh();
    let svc = service(RateLimitLayer::new(
        limiter,
        Policy::parse("p", "3/h").unwrap(),
    ));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            svc.clone()
                .oneshot(from("192.0.2.1"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_connect_info_is_the_peer_address() {
    let (limiter, _) = fresh();
    let mut svc = service(RateLimitLayer::new(
        limiter,
        Policy::parse("p", "1/h").unwrap(),
    ));
    let request = |ip: &str| {
        let mut request = Request::builder().uri("/").body(()).unwrap();
        let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        request
    };
    assert_eq!(status(&mut svc, request("192.0.2.10")).await, 200);
    assert_eq!(status(&mut svc, request("192.0.2.10")).await, 429);
    assert_eq!(status(&mut svc, request("192.0.2.11")).await, 200);
}

#[tokio::test]
async fn a_grpc_call_is_denied_with_resource_exhausted_and_pushback() {
    let (limiter, _) = fresh();
    let mut svc = service(RateLimitLayer::new(
        limiter,
        Policy::parse("rpc", "1/m").unwrap(),
    ));
    let call = || {
        let mut request = from("192.0.2.1");
        request
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        request
    };
    assert_eq!(status(&mut svc, call()).await, 200);
    let denied = send(&mut svc, call()).await;
    assert_eq!(
        denied.status(),
        StatusCode::OK,
        "gRPC errors travel in grpc-status"
    );
    assert_eq!(denied.headers()["grpc-status"], "8");
    assert_eq!(denied.headers()["grpc-retry-pushback-ms"], "60000");
    assert_eq!(denied.headers()["content-type"], "application/grpc");
}

#[tokio::test]
async fn an_async_lookup_chooses_the_policy_from_the_key() {
    let (limiter, _) = fresh();
    let free = Policy::parse("free", "1/h").unwrap();
    let pro = Policy::parse("pro", "3/h").unwrap();
    let layer = RateLimitLayer::resolve_by_key(limiter, move |key: String| {
        let (free, pro) = (free.clone(), pro.clone());
        async move {
            // A database lookup would go here.
            tokio::task::yield_now().await;
            match key.as_str() {
                "free-customer" => Some(free),
                "pro-customer" => Some(pro),
                _ => None,
            }
        }
    })
    .key(HeaderValue::new(HeaderName::from_static("x-api-key")));
    let mut svc = service(layer);
    let with_key = |key: &str| {
        Request::builder()
            .uri("/")
            .header("x-api-key", key)
            .body(())
            .unwrap()
    };
    let mut statuses = Vec::new();
    for key in [
        "free-customer",
        "free-customer",
        "pro-customer",
        "pro-customer",
        "pro-customer",
        "pro-customer",
        "nobody",
        "nobody",
    ] {
        statuses.push(status(&mut svc, with_key(key)).await.as_u16());
    }
    assert_eq!(statuses, [200, 429, 200, 200, 200, 429, 200, 200]);
}

#[tokio::test]
async fn a_cost_known_after_the_response_is_charged_then() {
    let (limiter, clock) = fresh();
    let policy = Policy::parse("bytes", "10/s burst 10").unwrap();
    let inner = service_fn(|_request: Request<()>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"payload")));
        response
            .headers_mut()
            .insert("x-units", "6".parse().unwrap());
        Ok::<_, Infallible>(response)
    });
    let layer = RateLimitLayer::new(limiter, policy).charge_after(|_, headers| {
        headers
            .get("x-units")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    });
    let mut svc: Svc = tower::util::BoxCloneService::new(layer.layer(inner));
    // 1 (check) + 6 (after) = 7 of 10; then 1 + 6 more puts the bucket in debt.
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, 200);
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, 200);
    let denied = send(&mut svc, from("192.0.2.1")).await;
    assert_eq!(denied.status(), 429);
    // 14 tokens used of 10: 4 in debt, plus the one this request needs: 500 ms.
    assert_eq!(denied.headers()["ratelimit"], "\"bytes\";r=0;t=1");
    clock.advance(Duration::from_millis(499));
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, 429);
    clock.advance(Duration::from_millis(1));
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, 200);
}

#[test]
fn outcomes_are_counted_by_policy_never_by_key() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (limiter, _) = fresh();
            let mut svc = service(RateLimitLayer::new(
                limiter,
                Policy::parse("api", "2/h").unwrap(),
            ));
            for _ in 0..3 {
                send(&mut svc, from("192.0.2.1")).await;
            }
            let mut broken = service(RateLimitLayer::new(
                Arc::new(RateLimiter::new(Broken)),
                Policy::parse("api", "2/h").unwrap(),
            ));
            send(&mut broken, from("192.0.2.1")).await;
        });
    });
    let mut counts = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        assert_eq!(key.name(), "floodgate_decisions_total", "the server's name");
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        assert!(
            !labels.iter().any(|l| l.contains("192.0.2.1")),
            "a key leaked into a label: {labels:?}"
        );
        if let DebugValue::Counter(n) = value {
            counts.insert(labels.join(","), n);
        }
    }
    assert_eq!(counts.get("policy=api,outcome=allowed"), Some(&2));
    assert_eq!(counts.get("policy=api,outcome=denied"), Some(&1));
    assert_eq!(
        counts.get("policy=api,outcome=store_error_allowed"),
        Some(&1)
    );
}

#[tokio::test]
async fn shadow_mode_can_be_set_per_policy() {
    let (limiter, _) = fresh();
    let layer = RateLimitLayer::per_route(
        limiter,
        [
            ("/new".to_owned(), Policy::parse("trial", "1/h").unwrap()),
            ("/old".to_owned(), Policy::parse("current", "1/h").unwrap()),
        ],
        None,
    )
    .shadow_policies(["trial"]);
    let mut svc = service(layer);
    let to = |path: &str| {
        let mut request = Request::builder().uri(path).body(()).unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        request
    };
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for path in ["/new", "/new", "/old", "/old"] {
            v.push(status(&mut svc, to(path)).await.as_u16());
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[tokio::test]
async fn configuring_a_clone_leaves_the_original_alone() {
    let (limiter, _) = fresh();
    let base = RateLimitLayer::new(limiter, Policy::parse("p", "1/h").unwrap());
    let shadowed = base.clone().shadow(true);
    let mut enforcing = service(base);
    let mut shadow = service(shadowed);
    assert_eq!(
        status(&mut enforcing, from("192.0.2.1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut enforcing, from("192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&mut shadow, from("192.0.2.1")).await,
        StatusCode::OK,
        "same limiter, shadow mode"
    );
}
