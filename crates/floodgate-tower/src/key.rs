//! Which bucket a request counts against: its key.

use std::net::{IpAddr, SocketAddr};

use floodgate::ip::canonical;
use http::{Extensions, HeaderMap, Method, Uri};
use ipnet::IpNet;

/// The parts of a request a key can be taken from.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (where servers put the peer address, authentication puts the
    /// user, and so on).
    pub extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// The parts of `request`.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        RequestInfo {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// Takes the rate-limit key from a request; `None` when the request has none (see
/// [`MissingKey`](crate::MissingKey)). Closures `Fn(&RequestInfo) -> Option<String>` are
/// extractors too.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of `request`.
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String>;
}

impl<F> KeyExtractor for F
where
    F: Fn(&RequestInfo<'_>) -> Option<String> + Send + Sync + 'static,
{
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String> {
        self(request)
    }
}

/// The address of the connection's peer, for servers to put in request extensions (a
/// `std::net::SocketAddr` extension is read too, and with the `axum` feature axum's
/// `ConnectInfo<SocketAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The client's IP address: the connection's peer, or — only behind proxies you list — the
/// address those proxies report in `Forwarded` or `X-Forwarded-For`, read from the right up
/// to the first hop you do not trust. A client that prepends fake entries gains nothing;
/// with no trusted proxies the headers are ignored; a malformed entry on the way falls back
/// to the peer address. IPv6 addresses are grouped by prefix (a /64 by default: one
/// subscriber's whole block), and IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Clone, Debug)]
pub struct PeerIp {
    trusted: Vec<IpNet>,
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerIp {
    /// The peer address, no trusted proxies, IPv6 grouped by /64.
    pub fn new() -> Self {
        PeerIp {
            trusted: Vec::new(),
            ipv6_prefix: floodgate::ip::DEFAULT_IPV6_PREFIX,
        }
    }

    /// Proxies whose forwarding headers are believed (for example `10.0.0.0/8`).
    #[must_use]
    pub fn trust_proxies(mut self, proxies: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(proxies);
        self
    }

    /// How many leading bits of an IPv6 address identify a client (default 64, at most 128).
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of `request`, before grouping.
    pub fn client_ip(&self, request: &RequestInfo<'_>) -> Option<IpAddr> {
        let peer = peer_addr(request.extensions).map(|addr| canonical(addr.ip()))?;
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for hop in forwarded_hops(request.headers).into_iter().rev() {
            if !self.trusts(client) {
                break;
            }
            match parse_hop(&hop) {
                Some(ip) => client = canonical(ip),
                None => return Some(peer),
            }
        }
        Some(client)
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String> {
        Some(floodgate::ip::client_key(
            self.client_ip(request)?,
            self.ipv6_prefix,
        ))
    }
}

/// The connection's peer: a [`PeerAddr`] or `SocketAddr` extension, or (feature `axum`)
/// axum's `ConnectInfo<SocketAddr>`.
fn peer_addr(extensions: &Extensions) -> Option<SocketAddr> {
    let found = extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| extensions.get::<SocketAddr>().copied());
    #[cfg(feature = "axum")]
    let found = found.or_else(|| {
        extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
    });
    found
}

/// Forwarding hops, nearest last: from `Forwarded` (`for=`) if present, else from
/// `X-Forwarded-For`. Every header line counts, in order.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let forwarded: Vec<String> = headers
        .get_all(http::header::FORWARDED)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("\u{0}")
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|element| {
            element
                .split(';')
                .find_map(|pair| {
                    let (name, value) = pair.trim().split_once('=')?;
                    name.eq_ignore_ascii_case("for")
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default()
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("\u{0}")
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One hop's address: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `"[2001:db8::1]:4711"`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

/// The value of a request header (for example an API key), or `None` when absent or not
/// text.
#[derive(Clone, Debug)]
pub struct HeaderValue {
    name: http::HeaderName,
}

impl HeaderValue {
    /// The value of header `name`.
    pub fn new(name: http::HeaderName) -> Self {
        HeaderValue { name }
    }
}

impl KeyExtractor for HeaderValue {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String> {
        let value = request.headers.get(&self.name)?.to_str().ok()?;
        (!value.is_empty()).then(|| value.to_owned())
    }
}

/// The route: method and path (`GET /hello`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Route;

impl KeyExtractor for Route {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String> {
        Some(format!("{} {}", request.method, request.uri.path()))
    }
}

/// Several keys joined (`route + user`): present only if every part is.
pub struct Composite(pub Vec<Box<dyn KeyExtractor>>);

impl KeyExtractor for Composite {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<String> {
        let parts: Option<Vec<String>> = self.0.iter().map(|k| k.extract(request)).collect();
        Some(parts?.join("|"))
    }
}
