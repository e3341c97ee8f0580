//! `RateLimitLayer`, `RateLimit<S>` and `ResponseFuture`: tower's three types.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use floodgate::{Decision, Error, MemoryStore, Policy, RateLimiter, Store};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::LimitBody;
use crate::headers::{self, HeaderMode};
use crate::key::{KeyExtractor, PeerIp, RequestInfo};

/// What happens to a request whose key cannot be extracted (no peer address, no API key).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count it against one bucket shared by every such request, named by this key (the
    /// default, `"unidentified"`): limited, never unlimited.
    Shared(String),
    /// Let it through unlimited.
    Allow,
    /// Answer `401 Unauthorized` (for keys that identify a client, such as API keys).
    Reject,
}

impl Default for MissingKey {
    fn default() -> Self {
        MissingKey::Shared("unidentified".into())
    }
}

/// What happens when the store fails ([`Error::Store`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Let the request through (the default): the limiter must not take the service down.
    #[default]
    Allow,
    /// Answer `503 Service Unavailable` with `Retry-After: 1`.
    Deny,
}

/// Which policy a request is checked against.
#[derive(Clone)]
enum Policies {
    Fixed(Policy),
    /// By path, exact match, with a default (or none: unlimited).
    PerRoute {
        routes: HashMap<String, Policy>,
        default: Option<Policy>,
    },
    /// Chosen per request (an API key's plan, say); `None`: not limited.
    Resolver(Resolver),
    /// Chosen per request from its key, asynchronously (a database lookup, say).
    ByKey(KeyResolver),
}

/// Chooses a policy from a request's key, asynchronously.
type KeyResolver =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Policy>> + Send>> + Send + Sync>;

/// The extra cost of a request, known from its response (bytes sent, say).
type AfterCost = Arc<dyn Fn(StatusCode, &http::HeaderMap) -> u32 + Send + Sync>;

/// Chooses a request's policy.
type Resolver = Arc<dyn Fn(&RequestInfo<'_>) -> Option<Policy> + Send + Sync>;

/// Requests that are never limited.
type Exemption = Arc<dyn Fn(&RequestInfo<'_>) -> bool + Send + Sync>;

struct Shared<S: Store> {
    limiter: Arc<RateLimiter<S>>,
    policies: Policies,
    key: Arc<dyn KeyExtractor>,
    missing_key: MissingKey,
    on_store_error: OnStoreError,
    headers: HeaderMode,
    shadow: bool,
    /// Policies in shadow mode even when the layer is not.
    shadow_policies: std::collections::HashSet<String>,
    cost: u32,
    exempt: Option<Exemption>,
    after: Option<AfterCost>,
}

impl<S: Store> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared {
            limiter: Arc::clone(&self.limiter),
            policies: self.policies.clone(),
            key: Arc::clone(&self.key),
            missing_key: self.missing_key.clone(),
            on_store_error: self.on_store_error,
            headers: self.headers,
            shadow: self.shadow,
            shadow_policies: self.shadow_policies.clone(),
            cost: self.cost,
            exempt: self.exempt.clone(),
            after: self.after.clone(),
        }
    }
}

/// A tower [`Layer`] that rate-limits requests: each request is checked against a policy
/// under a key taken from it; a denied request gets `429 Too Many Requests` with
/// `Retry-After`, the IETF `RateLimit` fields and an `application/problem+json` body, and
/// never reaches the inner service. Clones of the service share one limiter.
///
/// ```
/// use std::sync::Arc;
/// use floodgate::{Policy, RateLimiter};
/// use floodgate_tower::{PeerIp, RateLimitLayer};
///
/// # fn main() -> Result<(), floodgate::Error> {
/// let limiter = Arc::new(RateLimiter::in_memory());
/// let layer = RateLimitLayer::new(limiter, Policy::parse("api", "10/s burst 20")?)
///     .key(PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]));
/// # let _ = layer; Ok(()) }
/// ```
pub struct RateLimitLayer<S: Store = MemoryStore> {
    shared: Arc<Shared<S>>,
}

impl<S: Store> Clone for RateLimitLayer<S> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: Store> fmt::Debug for RateLimitLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("headers", &self.shared.headers)
            .field("shadow", &self.shared.shadow)
            .field("cost", &self.shared.cost)
            .finish_non_exhaustive()
    }
}

impl<S: Store> RateLimitLayer<S> {
    /// Every request checked against `policy`, keyed by the client's IP ([`PeerIp`]).
    pub fn new(limiter: Arc<RateLimiter<S>>, policy: Policy) -> Self {
        Self::with(limiter, Policies::Fixed(policy))
    }

    /// A policy per path (exact match); other paths get `default`, or are not limited when
    /// it is `None`.
    pub fn per_route(
        limiter: Arc<RateLimiter<S>>,
        routes: impl IntoIterator<Item = (String, Policy)>,
        default: Option<Policy>,
    ) -> Self {
        Self::with(
            limiter,
            Policies::PerRoute {
                routes: routes.into_iter().collect(),
                default,
            },
        )
    }

    /// The policy chosen per request by `resolve` (for example the plan of the customer an
    /// API key belongs to: SaaS tiering); requests it returns `None` for are not limited.
    pub fn resolve(
        limiter: Arc<RateLimiter<S>>,
        resolve: impl Fn(&RequestInfo<'_>) -> Option<Policy> + Send + Sync + 'static,
    ) -> Self {
        Self::with(limiter, Policies::Resolver(Arc::new(resolve)))
    }

    /// The policy chosen from the request's key by an async lookup (API key → customer →
    /// plan in a database): `resolve` gets the extracted key; `None` means not limited.
    /// Requests without a key follow [`on_missing_key`](Self::on_missing_key) and are
    /// not limited when no policy can be chosen.
    pub fn resolve_by_key<F, Fut>(limiter: Arc<RateLimiter<S>>, resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Policy>> + Send + 'static,
    {
        Self::with(
            limiter,
            Policies::ByKey(Arc::new(move |key| Box::pin(resolve(key)))),
        )
    }

    fn with(limiter: Arc<RateLimiter<S>>, policies: Policies) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                policies,
                key: Arc::new(PeerIp::new()),
                missing_key: MissingKey::default(),
                on_store_error: OnStoreError::default(),
                headers: HeaderMode::default(),
                shadow: false,
                shadow_policies: std::collections::HashSet::new(),
                cost: 1,
                exempt: None,
                after: None,
            }),
        }
    }

    /// A configured copy: the settings are cloned if another handle to this layer exists
    /// (configuring a clone never changes the original).
    fn map(self, change: impl FnOnce(&mut Shared<S>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        change(&mut shared);
        RateLimitLayer {
            shared: Arc::new(shared),
        }
    }

    /// Where the key comes from (default: the client IP, [`PeerIp::new`]).
    #[must_use]
    pub fn key(self, key: impl KeyExtractor) -> Self {
        self.map(|s| s.key = Arc::new(key))
    }

    /// What to do with requests that have no key (default: one shared bucket).
    #[must_use]
    pub fn on_missing_key(self, outcome: MissingKey) -> Self {
        self.map(|s| s.missing_key = outcome)
    }

    /// What to do when the store fails (default: allow).
    #[must_use]
    pub fn on_store_error(self, outcome: OnStoreError) -> Self {
        self.map(|s| s.on_store_error = outcome)
    }

    /// Which headers responses carry (default: the IETF fields).
    #[must_use]
    pub fn headers(self, mode: HeaderMode) -> Self {
        self.map(|s| s.headers = mode)
    }

    /// Shadow mode: decide, count and set headers, but never reject (to try a policy on live
    /// traffic first).
    #[must_use]
    pub fn shadow(self, shadow: bool) -> Self {
        self.map(|s| s.shadow = shadow)
    }

    /// Shadow mode for the policies named here only (a new plan being tried out), whatever
    /// [`shadow`](Self::shadow) says for the rest.
    #[must_use]
    pub fn shadow_policies(self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.map(|s| s.shadow_policies.extend(names.into_iter().map(Into::into)))
    }

    /// Tokens each request costs (default 1; 0 is raised to 1).
    #[must_use]
    pub fn cost(self, cost: u32) -> Self {
        self.map(|s| s.cost = cost.max(1))
    }

    /// Charges more after the response, when the real cost is known: `cost` reads the
    /// status and headers (a `Content-Length`, say) and returns extra tokens to take, without
    /// checking (the debt delays later requests). 0 charges nothing.
    #[must_use]
    pub fn charge_after(
        self,
        cost: impl Fn(StatusCode, &http::HeaderMap) -> u32 + Send + Sync + 'static,
    ) -> Self {
        self.map(|s| s.after = Some(Arc::new(cost)))
    }

    /// Requests for which `exempt` is true are never limited (an allow-list).
    #[must_use]
    pub fn exempt(self, exempt: impl Fn(&RequestInfo<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.map(|s| s.exempt = Some(Arc::new(exempt)))
    }
}

impl<Inner, S: Store> Layer<Inner> for RateLimitLayer<S> {
    type Service = RateLimit<Inner, S>;

    fn layer(&self, inner: Inner) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The rate-limiting service made by [`RateLimitLayer`].
pub struct RateLimit<Inner, S: Store = MemoryStore> {
    inner: Inner,
    shared: Arc<Shared<S>>,
}

impl<Inner: Clone, S: Store> Clone for RateLimit<Inner, S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<Inner: fmt::Debug, S: Store> fmt::Debug for RateLimit<Inner, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The boxed future inside [`ResponseFuture`].
type BoxedResponse<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<LimitBody<ResBody>>, E>> + Send>>;

/// The future of [`RateLimit`]'s response.
pub struct ResponseFuture<ResBody, E> {
    future: BoxedResponse<ResBody, E>,
}

impl<ResBody, E> Future for ResponseFuture<ResBody, E> {
    type Output = Result<Response<LimitBody<ResBody>>, E>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl<ResBody, E> fmt::Debug for ResponseFuture<ResBody, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A request's policy: known now, or to be looked up from its key.
enum Chosen {
    Now(Option<Policy>),
    ByKey(KeyResolver),
}

/// The outcome of checking one request.
enum Verdict {
    Pass(Option<(Policy, String, Decision)>),
    Reject(Policy, Decision),
    Unauthorized,
    Unavailable,
}

impl<S: Store> Shared<S> {
    async fn check(&self, policy: Option<Policy>, key: Option<String>) -> Verdict {
        let Some(policy) = policy else {
            return Verdict::Pass(None);
        };
        let key = match (key, &self.missing_key) {
            (Some(key), _) => key,
            (None, MissingKey::Shared(shared)) => shared.clone(),
            (None, MissingKey::Allow) => return Verdict::Pass(None),
            (None, MissingKey::Reject) => return Verdict::Unauthorized,
        };
        let cost = self.cost.min(policy.max_cost()).max(1);
        // Metrics are labelled by policy and outcome, never by key: keys are user data and
        // unbounded.
        let count = |outcome: &'static str| {
            metrics::counter!("floodgate_decisions_total", "policy" => policy.name().to_owned(), "outcome" => outcome)
                .increment(1);
        };
        match self.limiter.check_n(&policy, &key, cost).await {
            Ok(decision) if decision.is_allowed() => {
                count("allowed");
                Verdict::Pass(Some((policy, key, decision)))
            }
            Ok(decision) if self.shadow || self.shadow_policies.contains(policy.name()) => {
                count("shadow_denied");
                Verdict::Pass(Some((policy, key, decision)))
            }
            Ok(decision) => {
                count("denied");
                Verdict::Reject(policy, decision)
            }
            Err(Error::Store(_)) if self.on_store_error == OnStoreError::Allow => {
                count("store_error_allowed");
                Verdict::Pass(None)
            }
            Err(_) => {
                count("store_error_denied");
                Verdict::Unavailable
            }
        }
    }
}

impl<Inner, S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<Inner, S>
where
    Inner: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
    Inner::Error: 'static,
    S: Store,
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
        // The service that was polled ready handles this request; a fresh clone waits for
        // the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        let info = RequestInfo::of(&request);
        let grpc = info
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let exempt = shared.exempt.as_ref().is_some_and(|exempt| exempt(&info));
        let (policy, key) = if exempt {
            (Chosen::Now(None), None)
        } else {
            let policy = match &shared.policies {
                Policies::Fixed(policy) => Chosen::Now(Some(policy.clone())),
                Policies::PerRoute { routes, default } => {
                    Chosen::Now(routes.get(info.uri.path()).or(default.as_ref()).cloned())
                }
                Policies::Resolver(resolve) => Chosen::Now(resolve(&info)),
                Policies::ByKey(resolve) => Chosen::ByKey(Arc::clone(resolve)),
            };
            (policy, shared.key.extract(&info))
        };
        let future = async move {
            let policy = match policy {
                Chosen::Now(policy) => policy,
                Chosen::ByKey(resolve) => match &key {
                    Some(key) => resolve(key.clone()).await,
                    None => None,
                },
            };
            match shared.check(policy, key).await {
                Verdict::Pass(checked) => {
                    let mut response = inner.call(request).await?.map(LimitBody::inner);
                    if let Some((policy, key, decision)) = checked {
                        headers::insert(response.headers_mut(), shared.headers, &policy, &decision);
                        if let Some(after) = &shared.after {
                            let extra = after(response.status(), response.headers());
                            if extra > 0 {
                                // Outcome ignored: the response is already decided.
                                let _ = shared.limiter.charge(&policy, &key, extra).await;
                            }
                        }
                    }
                    Ok(response)
                }
                Verdict::Reject(policy, decision) if grpc => {
                    Ok(resource_exhausted(shared.headers, &policy, &decision))
                }
                Verdict::Reject(policy, decision) => {
                    Ok(too_many_requests(shared.headers, &policy, &decision))
                }
                Verdict::Unauthorized => Ok(plain(StatusCode::UNAUTHORIZED, "missing credentials")),
                Verdict::Unavailable => {
                    let mut response =
                        plain(StatusCode::SERVICE_UNAVAILABLE, "rate limiter unavailable");
                    response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                    Ok(response)
                }
            }
        };
        ResponseFuture {
            future: Box::pin(future),
        }
    }
}

fn too_many_requests<B>(
    mode: HeaderMode,
    policy: &Policy,
    decision: &Decision,
) -> Response<LimitBody<B>> {
    let body = Bytes::from(headers::problem(policy, decision));
    let mut response = Response::new(LimitBody::own(body));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    // Whole seconds, rounded up: never earlier than capacity really appears.
    let retry = headers::ceil_secs(decision.retry_after()).max(1);
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry));
    headers::insert(headers, mode, policy, decision);
    response
}

/// A gRPC call's denial: HTTP 200 with `grpc-status: 8` (RESOURCE_EXHAUSTED) in a
/// trailers-only response, and the wait as `grpc-retry-pushback-ms` (gRPC's retry pushback)
/// and `retry-after`.
fn resource_exhausted<B>(
    mode: HeaderMode,
    policy: &Policy,
    decision: &Decision,
) -> Response<LimitBody<B>> {
    let mut response = Response::new(LimitBody::own(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    headers.insert(
        "grpc-message",
        HeaderValue::from_static("rate%20limit%20exceeded"),
    );
    let millis = decision.retry_after().as_nanos().div_ceil(1_000_000);
    headers.insert(
        "grpc-retry-pushback-ms",
        HeaderValue::from(u64::try_from(millis).unwrap_or(u64::MAX)),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(headers::ceil_secs(decision.retry_after()).max(1)),
    );
    headers::insert(headers, mode, policy, decision);
    response
}

fn plain<B>(status: StatusCode, text: &'static str) -> Response<LimitBody<B>> {
    let mut response = Response::new(LimitBody::own(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
