//! `ConcurrencyLimitLayer`: at most `max` requests in flight per key, across every process
//! that shares the store. A request holds a permit from before the inner service is called
//! until its response body has ended (or is dropped); a request that finds the limit full
//! gets `503 Service Unavailable` with `Retry-After` (gRPC: `RESOURCE_EXHAUSTED`), and never
//! reaches the inner service.
//!
//! Responses carry `RateLimit-Policy: "name";q=max;qu="concurrent-requests"`, and allowed
//! ones `RateLimit: "name";r=slots left` (the IETF fields' quota unit for in-flight
//! requests).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use floodgate::{
    Acquisition, Concurrency, ConcurrencyStore, Error, Full, MemoryStore, RateLimiter,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::{Hold, LimitBody};
use crate::future::ResponseFuture;
use crate::headers::{self, HeaderMode, ceil_secs, problem_json};
use crate::key::{KeyExtractor, PeerIp, RequestInfo};
use crate::layer::{MissingKey, OnStoreError};
use crate::response::{grpc_exhausted, plain};

struct Shared<S: ConcurrencyStore> {
    limiter: Arc<RateLimiter<S>>,
    limit: Concurrency,
    key: Arc<dyn KeyExtractor>,
    missing_key: MissingKey,
    on_store_error: OnStoreError,
    headers: HeaderMode,
}

impl<S: ConcurrencyStore> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared {
            limiter: Arc::clone(&self.limiter),
            limit: self.limit.clone(),
            key: Arc::clone(&self.key),
            missing_key: self.missing_key.clone(),
            on_store_error: self.on_store_error,
            headers: self.headers,
        }
    }
}

/// A tower [`Layer`] that caps the requests in flight per key with a [`Concurrency`] limit:
/// each request holds a permit until its response body ends, and one that finds `max` in
/// flight gets `503` with `Retry-After` without reaching the inner service. On a shared
/// store (Redis) the cap holds across every process; a process that dies frees its permits
/// when their leases end.
///
/// ```
/// use std::sync::Arc;
/// use floodgate::{Concurrency, RateLimiter};
/// use floodgate_tower::{ConcurrencyLimitLayer, HeaderValue};
///
/// # fn main() -> Result<(), floodgate::Error> {
/// let limiter = Arc::new(RateLimiter::in_memory());
/// // At most 5 exports in flight per API key.
/// let layer = ConcurrencyLimitLayer::new(limiter, Concurrency::named("exports", 5)?)
///     .key(HeaderValue::new(http::HeaderName::from_static("x-api-key")));
/// # let _ = layer; Ok(()) }
/// ```
pub struct ConcurrencyLimitLayer<S: ConcurrencyStore = MemoryStore> {
    shared: Arc<Shared<S>>,
}

impl<S: ConcurrencyStore> Clone for ConcurrencyLimitLayer<S> {
    fn clone(&self) -> Self {
        ConcurrencyLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: ConcurrencyStore> fmt::Debug for ConcurrencyLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("limit", &self.shared.limit)
            .field("headers", &self.shared.headers)
            .finish_non_exhaustive()
    }
}

impl<S: ConcurrencyStore> ConcurrencyLimitLayer<S> {
    /// Every request counted against `limit`, keyed by the client's IP ([`PeerIp`]).
    pub fn new(limiter: Arc<RateLimiter<S>>, limit: Concurrency) -> Self {
        ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                limit,
                key: Arc::new(PeerIp::new()),
                missing_key: MissingKey::default(),
                on_store_error: OnStoreError::default(),
                headers: HeaderMode::default(),
            }),
        }
    }

    fn map(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        change(&mut shared);
        ConcurrencyLimitLayer {
            shared: Arc::new(shared),
        }
    }

    /// Where the key comes from (default: the client IP, [`PeerIp::new`]); any
    /// [`KeyExtractor`] of [`RateLimitLayer`](crate::RateLimitLayer) works (an API key, the
    /// route, a closure).
    #[must_use]
    pub fn key(self, key: impl KeyExtractor) -> Self {
        self.map(|s| s.key = Arc::new(key))
    }

    /// What to do with requests that have no key (default: one shared key).
    #[must_use]
    pub fn on_missing_key(self, outcome: MissingKey) -> Self {
        self.map(|s| s.missing_key = outcome)
    }

    /// What to do when the store fails (default: let the request through unlimited).
    #[must_use]
    pub fn on_store_error(self, outcome: OnStoreError) -> Self {
        self.map(|s| s.on_store_error = outcome)
    }

    /// Which headers responses carry (default: the IETF fields; the legacy trio has no
    /// meaning for a concurrency limit and is not sent).
    #[must_use]
    pub fn headers(self, mode: HeaderMode) -> Self {
        self.map(|s| s.headers = mode)
    }
}

impl<Inner, S: ConcurrencyStore> Layer<Inner> for ConcurrencyLimitLayer<S> {
    type Service = ConcurrencyLimit<Inner, S>;

    fn layer(&self, inner: Inner) -> Self::Service {
        ConcurrencyLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
pub struct ConcurrencyLimit<Inner, S: ConcurrencyStore = MemoryStore> {
    inner: Inner,
    shared: Arc<Shared<S>>,
}

impl<Inner: Clone, S: ConcurrencyStore> Clone for ConcurrencyLimit<Inner, S> {
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Inner: fmt::Debug, S: ConcurrencyStore> fmt::Debug for ConcurrencyLimit<Inner, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limit", &self.shared.limit)
            .finish_non_exhaustive()
    }
}

impl<Inner, S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<Inner, S>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: 'static,
    S: ConcurrencyStore,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<LimitBody<ResBody>>;
    type Error = Inner::Error;
    type Future = ResponseFuture<ResBody, Inner::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let info = RequestInfo::of(&request);
        let grpc = crate::response::is_grpc(info.headers);
        let key = shared.key.extract(&info);
        let future = async move {
            let key = match (key, &shared.missing_key) {
                (Some(key), _) => key,
                (None, MissingKey::Shared(shared)) => shared.clone(),
                (None, MissingKey::Allow) => {
                    return Ok(inner.call(request).await?.map(LimitBody::inner));
                }
                (None, MissingKey::Reject) => {
                    return Ok(plain(StatusCode::UNAUTHORIZED, "missing credentials"));
                }
            };
            let count = |outcome: &'static str| {
                metrics::counter!("floodgate_permits_total", "limit" => shared.limit.name().to_owned(), "outcome" => outcome)
                    .increment(1);
            };
            match shared.limiter.acquire(&shared.limit, &key).await {
                Ok(Acquisition::Acquired(permit)) => {
                    count("acquired");
                    let left = shared.limit.max().saturating_sub(permit.in_flight());
                    let mut response = inner.call(request).await?;
                    insert(response.headers_mut(), &shared, Some(left));
                    // Held through the body's end; dropped with the response otherwise.
                    Ok(response.map(|body| LimitBody::inner(body).holding(Hold::new(permit))))
                }
                Ok(Acquisition::Full(full)) => {
                    count("denied");
                    Ok(full_response(&shared, &full, grpc))
                }
                Err(Error::Store(_)) if shared.on_store_error == OnStoreError::Allow => {
                    count("store_error_allowed");
                    Ok(inner.call(request).await?.map(LimitBody::inner))
                }
                Err(_) => {
                    count("store_error_denied");
                    let mut response = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "concurrency limiter unavailable",
                    );
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    Ok(response)
                }
            }
        };
        ResponseFuture::new(future)
    }
}

/// The limit's name in the header fields (`concurrency` for an unnamed one).
fn member(limit: &Concurrency) -> &str {
    if limit.name().is_empty() {
        "concurrency"
    } else {
        limit.name()
    }
}

/// `RateLimit-Policy: "name";q=max;qu="concurrent-requests"`, and with `left` the
/// `RateLimit: "name";r=left` of an admitted request.
fn insert<S: ConcurrencyStore>(headers: &mut HeaderMap, shared: &Shared<S>, left: Option<u32>) {
    if shared.headers == HeaderMode::None {
        return;
    }
    let name = member(&shared.limit);
    let policy = format!(
        "\"{name}\";q={};qu=\"concurrent-requests\"",
        shared.limit.max()
    );
    if let Ok(value) = HeaderValue::try_from(policy) {
        headers.insert(HeaderName::from_static("ratelimit-policy"), value);
    }
    if let Some(left) = left {
        if let Ok(value) = HeaderValue::try_from(format!("\"{name}\";r={left}")) {
            headers.insert(HeaderName::from_static("ratelimit"), value);
        }
    }
}

/// The answer to a request that found the limit full: `503` with `Retry-After` and a
/// problem body, or gRPC `RESOURCE_EXHAUSTED`.
fn full_response<S: ConcurrencyStore, B>(
    shared: &Shared<S>,
    full: &Full,
    grpc: bool,
) -> Response<LimitBody<B>> {
    let retry = ceil_secs(full.retry_after).max(1);
    let mut response = if grpc {
        grpc_exhausted("concurrency%20limit%20reached", full.retry_after)
    } else {
        let name = member(&shared.limit);
        let mut violated = String::from("\"violated-policies\":[");
        headers::push_json_string(&mut violated, name);
        violated.push(']');
        let body = problem_json(
            "about:blank",
            "Service Unavailable",
            503,
            &format!(
                "Concurrency limit \"{name}\" is full ({} of {} in flight); retry in {retry} s or \
                 sooner.",
                full.in_flight, full.limit
            ),
            &violated,
        );
        let mut response = Response::new(LimitBody::own(Bytes::from(body)));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    };
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    insert(response.headers_mut(), shared, None);
    response
}
