//! Forwarded / X-Forwarded-For parsing: never panics, and an untrusted peer's headers never
//! choose the client address.
#![no_main]

use std::net::SocketAddr;

use floodgate_tower::{PeerAddr, PeerIp, RequestInfo};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &str, &str)| {
    let (trusted, forwarded, xff) = input;
    let peer: SocketAddr = if trusted { "10.0.0.1:1" } else { "192.0.2.1:1" }
        .parse()
        .unwrap();
    let mut builder = http::Request::builder().uri("/");
    for (name, value) in [("forwarded", forwarded), ("x-forwarded-for", xff)] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            builder = builder.header(name, value);
        }
    }
    let Ok(mut request) = builder.body(()) else {
        return;
    };
    request.extensions_mut().insert(PeerAddr(peer));
    let extractor = PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let ip = extractor.client_ip(&RequestInfo::of(&request));
    assert!(ip.is_some());
    if !trusted {
        assert_eq!(ip, Some(peer.ip()));
    }
});
