//! Property version of the forwarded-header fuzz target: any `Forwarded` / `X-Forwarded-For`
//! text gives an answer without panicking, untrusted peers are never overridden by headers,
//! and an answer other than the peer is an address that appears in the headers.

use std::net::{IpAddr, SocketAddr};

use floodgate_tower::{KeyExtractor, PeerAddr, PeerIp, RequestInfo};
use proptest::prelude::*;

fn header_text() -> impl Strategy<Value = String> {
    let hop = prop_oneof![
        Just("198.51.100.7".to_owned()),
        Just("2001:db8::1".to_owned()),
        Just("[2001:db8::2]:443".to_owned()),
        Just("for=203.0.113.9".to_owned()),
        Just("for=\"[2001:db8::3]:80\";proto=https".to_owned()),
        Just("for=unknown".to_owned()),
        Just("_hidden".to_owned()),
        Just("10.0.0.2".to_owned()),
        Just("::ffff:192.0.2.1".to_owned()),
        "\\PC{0,16}",
    ];
    prop::collection::vec(hop, 0..6).prop_map(|hops| hops.join(", "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn forwarded_headers_never_panic_or_let_untrusted_peers_choose(
        forwarded in prop::option::of(header_text()),
        xff in prop::option::of(header_text()),
        peer_trusted in any::<bool>(),
    ) {
        let peer: SocketAddr = if peer_trusted { "10.0.0.1:5000" } else { "192.0.2.50:5000" }
            .parse()
            .unwrap();
        let mut builder = http::Request::builder().uri("/");
        if let Some(value) = &forwarded {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                builder = builder.header("forwarded", value);
            }
        }
        if let Some(value) = &xff {
            if let Ok(value) = http::HeaderValue::from_str(value) {
                builder = builder.header("x-forwarded-for", value);
            }
        }
        let mut request = builder.body(()).unwrap();
        request.extensions_mut().insert(PeerAddr(peer));
        let extractor = PeerIp::new()
            .trust_proxies(["10.0.0.0/8".parse().unwrap()])
            .ipv6_prefix(128);
        let info = RequestInfo::of(&request);
        let ip = extractor.client_ip(&info).expect("a peer is known");
        prop_assert!(extractor.extract(&info).is_some());
        if !peer_trusted {
            prop_assert_eq!(ip, peer.ip(), "an untrusted peer's headers are ignored");
        } else if ip != peer.ip() {
            let text = format!("{} {}", forwarded.unwrap_or_default(), xff.unwrap_or_default());
            let v4_mapped = match ip {
                IpAddr::V4(v4) => text.contains(&v4.to_ipv6_mapped().to_string()),
                IpAddr::V6(_) => false,
            };
            prop_assert!(
                text.contains(&ip.to_string()) || v4_mapped,
                "{ip} does not appear in {text:?}"
            );
        }
    }
}
