//! `RateLimitLayer`: what a layer is configured with, shared by the services it makes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use floodgate::{MemoryStore, Policy, RateLimiter, Store};
use http::StatusCode;
use tower::Layer;

use crate::headers::HeaderMode;
use crate::key::{KeyExtractor, PeerIp, RequestInfo};
use crate::service::RateLimit;

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

/// What happens when the store fails ([`Error::Store`](floodgate::Error::Store)).
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
pub(crate) enum Policies {
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
pub(crate) type KeyResolver =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Policy>> + Send>> + Send + Sync>;

/// The extra cost of a request, known from its response (bytes sent, say).
type AfterCost = Arc<dyn Fn(StatusCode, &http::HeaderMap) -> u32 + Send + Sync>;

/// Chooses a request's policy.
type Resolver = Arc<dyn Fn(&RequestInfo<'_>) -> Option<Policy> + Send + Sync>;

/// Requests that are never limited.
type Exemption = Arc<dyn Fn(&RequestInfo<'_>) -> bool + Send + Sync>;

pub(crate) struct Shared<S: Store> {
    pub(crate) limiter: Arc<RateLimiter<S>>,
    pub(crate) policies: Policies,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) missing_key: MissingKey,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) headers: HeaderMode,
    pub(crate) shadow: bool,
    /// Policies in shadow mode even when the layer is not.
    pub(crate) shadow_policies: std::collections::HashSet<String>,
    pub(crate) cost: u32,
    pub(crate) exempt: Option<Exemption>,
    pub(crate) after: Option<AfterCost>,
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
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}
