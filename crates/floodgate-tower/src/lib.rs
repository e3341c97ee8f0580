//! Tower middleware for [`floodgate`]: rate limiting for axum, hyper and other tower-based
//! HTTP services, with the standard headers.
//!
//! [`RateLimitLayer`] checks each request against a policy under a key taken from the
//! request — by default the client IP, believing forwarding headers only from proxies you
//! list. Denied requests get `429 Too Many Requests` with `Retry-After` (whole seconds,
//! rounded up), the IETF `RateLimit-Policy` / `RateLimit` fields and an
//! `application/problem+json` body; allowed responses carry the fields too. gRPC calls are
//! denied with `grpc-status: 8` (RESOURCE_EXHAUSTED). Responses carry a [`LimitBody`]: the
//! inner service's body, or floodgate's own rejection — any inner body whose data is
//! `Bytes` works (axum's, hyper's, tonic's).
//!
//! [`ConcurrencyLimitLayer`] caps the requests in flight per key instead (a fragile
//! database behind an endpoint, exports per tenant): each request holds a permit of a
//! [`floodgate::Concurrency`] limit until its response body ends; one that finds the limit
//! full gets `503 Service Unavailable` with `Retry-After` (gRPC: `RESOURCE_EXHAUSTED`) and
//! `RateLimit-Policy: "name";q=max;qu="concurrent-requests"`. On the Redis store the cap
//! holds across every process.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use floodgate::{Policy, RateLimiter};
//! use floodgate_tower::{HeaderValue, RateLimitLayer};
//! use http::{Request, Response};
//! use tower::{Layer, Service, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), floodgate::Error> {
//! let limiter = Arc::new(RateLimiter::in_memory());
//! let layer = RateLimitLayer::new(limiter, Policy::parse("api", "2/m")?)
//!     .key(HeaderValue::new(http::HeaderName::from_static("x-api-key")));
//! let mut service = layer.layer(service_fn(|_request: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! }));
//! let request = || Request::builder().header("x-api-key", "demo").body(()).unwrap();
//! assert_eq!(service.call(request()).await.unwrap().status(), 200);
//! assert_eq!(service.call(request()).await.unwrap().status(), 200);
//! let denied = service.call(request()).await.unwrap();
//! assert_eq!(denied.status(), 429);
//! assert_eq!(denied.headers()["retry-after"], "30");
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

//! Every checked request increments the `metrics` counter `floodgate_decisions_total` (the
//! name floodgate's server uses for the same count), labelled `policy` and `outcome`
//! (`allowed`, `denied`, `shadow_denied`, and the layer's own `store_error_allowed`,
//! `store_error_denied`); keys never appear in metrics. Install any
//! `metrics` recorder (a Prometheus exporter, say) to collect them.

mod body;
mod concurrency;
mod future;
pub mod headers;
mod key;
mod layer;
mod response;
mod service;

pub use body::LimitBody;
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use future::ResponseFuture;
pub use headers::HeaderMode;
pub use key::{Composite, HeaderValue, KeyExtractor, PeerAddr, PeerIp, RequestInfo, Route};
pub use layer::{MissingKey, OnStoreError, RateLimitLayer};
pub use service::RateLimit;
