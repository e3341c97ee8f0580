//! The header fields parse as RFC 9651 lists and say what the decision says; spoofed and
//! rotated client addresses cannot mint buckets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floodgate::{ManualClock, Policy, RateLimiter};
use floodgate_tower::LimitBody;
use floodgate_tower::{PeerAddr, PeerIp, RateLimitLayer};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc = tower::util::BoxCloneService<Request<()>, Response<LimitBody<Full<Bytes>>>, Infallible>;

fn service(layer: RateLimitLayer<floodgate::MemoryStore<ManualClock>>) -> Svc {
    let inner = service_fn(|_r: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

fn request(peer: &str, forwarded_for: Option<&str>) -> Request<()> {
    let mut request = Request::builder().uri("/").body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer.parse().unwrap(), 1)));
    if let Some(xff) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    request
}

async fn status(svc: &mut Svc, request: Request<()>) -> u16 {
    svc.ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `(member name, integer parameters)` of each member of a structured-field list.
fn parse_list(field: &str) -> Vec<(String, Vec<(String, i64)>)> {
    let list: sfv::List = sfv::Parser::new(field)
        .parse()
        .unwrap_or_else(|e| panic!("{field:?}: {e}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name = item
                    .bare_item
                    .as_string()
                    .expect("a string member")
                    .as_str()
                    .to_owned();
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            i64::from(v.as_integer().expect("integer")),
                        )
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("an inner list in {field:?}"),
        })
        .collect()
}

#[tokio::test]
async fn the_fields_are_structured_lists_that_say_what_the_decision_says() {
    let clock = ManualClock::new();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock.clone()));
    let free = Policy::parse("free", "5/s burst 10; 1000/day").unwrap();
    let mut svc = service(RateLimitLayer::new(Arc::clone(&limiter), free.clone()));
    for step in 0..14u32 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request("192.0.2.1", None))
            .await
            .unwrap();
        // What a peek says right after: the same state the headers describe.
        let now = limiter.peek(&free, "ip:192.0.2.1").await.unwrap();
        let policy = parse_list(response.headers()["ratelimit-policy"].to_str().unwrap());
        assert_eq!(
            policy,
            [
                (
                    "free.0".to_owned(),
                    vec![("q".into(), 5), ("w".into(), 1), ("fg-burst".into(), 10)]
                ),
                (
                    "free.1".to_owned(),
                    vec![("q".into(), 1000), ("w".into(), 86_400)]
                ),
            ]
        );
        let state = parse_list(response.headers()["ratelimit"].to_str().unwrap());
        assert_eq!(state.len(), 1);
        let (name, params) = &state[0];
        assert_eq!(name, &format!("free.{}", now.decided_by()));
        let r = params.iter().find(|(k, _)| k == "r").unwrap().1;
        let t = params.iter().find(|(k, _)| k == "t").unwrap().1;
        assert_eq!(r, i64::try_from(now.remaining()).unwrap(), "step {step}");
        assert_eq!(
            t,
            i64::try_from(now.next_token_after().as_secs_f64().ceil() as u64).unwrap()
        );
        if let Some(retry) = response.headers().get("retry-after") {
            assert!(
                retry.to_str().unwrap().parse::<i64>().unwrap() >= t,
                "Retry-After before t"
            );
        }
        clock.advance(Duration::from_millis(30));
    }
}

#[tokio::test]
async fn rotating_forwarded_addresses_share_one_bucket_without_trusted_proxies() {
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(ManualClock::new()));
    let mut svc = service(RateLimitLayer::new(
        Arc::clone(&limiter),
        Policy::parse("p", "5/h").unwrap(),
    ));
    let mut admitted = 0;
    for i in 0..10_000u32 {
        let fake = format!("198.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        admitted += u32::from(status(&mut svc, request("203.0.113.1", Some(&fake))).await == 200);
    }
    assert_eq!(admitted, 5);
    assert_eq!(limiter.store().len(), 1);
}

#[tokio::test]
async fn prepended_fake_entries_do_not_change_the_key_behind_a_trusted_proxy() {
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(ManualClock::new()));
    let key = PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let mut svc = service(
        RateLimitLayer::new(Arc::clone(&limiter), Policy::parse("p", "5/h").unwrap()).key(key),
    );
    let mut admitted = 0;
    for i in 0..10_000u32 {
        let xff = format!("{}.{}.{}.{}, 198.51.100.7", i & 255, (i >> 8) & 255, 7, 9);
        admitted += u32::from(status(&mut svc, request("10.1.2.3", Some(&xff))).await == 200);
    }
    assert_eq!(admitted, 5);
}

#[tokio::test]
async fn ten_thousand_addresses_in_one_ipv6_64_share_one_bucket() {
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(ManualClock::new()));
    let mut svc = service(RateLimitLayer::new(
        Arc::clone(&limiter),
        Policy::parse("p", "5/h").unwrap(),
    ));
    let mut admitted = 0;
    for i in 0..10_000u64 {
        let ip = format!(
            "2001:db8:aa:bb:{:x}:{:x}:{:x}:1",
            i >> 32 & 0xffff,
            i >> 16 & 0xffff,
            i & 0xffff
        );
        admitted += u32::from(status(&mut svc, request(&ip, None)).await == 200);
    }
    assert_eq!(admitted, 5);
    assert_eq!(limiter.store().len(), 1);
}
