//! `RateLimit<S>`: the service a [`RateLimitLayer`](crate::RateLimitLayer) makes — it picks
//! a request's policy and key, checks them, and answers a denial itself.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use floodgate::{Decision, Error, MemoryStore, Policy, Store};
use http::{HeaderValue, Request, Response, StatusCode};
use tower::Service;

use crate::body::LimitBody;
use crate::future::ResponseFuture;
use crate::headers;
use crate::key::RequestInfo;
use crate::layer::{KeyResolver, MissingKey, OnStoreError, Policies, Shared};
use crate::response::{plain, resource_exhausted, too_many_requests};

/// The rate-limiting service made by [`RateLimitLayer`](crate::RateLimitLayer).
pub struct RateLimit<Inner, S: Store = MemoryStore> {
    inner: Inner,
    shared: Arc<Shared<S>>,
}

impl<Inner, S: Store> RateLimit<Inner, S> {
    pub(crate) fn new(inner: Inner, shared: Arc<Shared<S>>) -> Self {
        RateLimit { inner, shared }
    }
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

/// A request's policy: known now, or to be looked up from its key.
enum Chosen {
    Now(Option<Policy>),
    ByKey(KeyResolver),
}

/// The outcome of checking one request.
enum Checked {
    Pass(Option<(Policy, String, Decision)>),
    Reject(Policy, Decision),
    Unauthorized,
    Unavailable,
}

impl<S: Store> Shared<S> {
    async fn check(&self, policy: Option<Policy>, key: Option<String>) -> Checked {
        let Some(policy) = policy else {
            return Checked::Pass(None);
        };
        let key = match (key, &self.missing_key) {
            (Some(key), _) => key,
            (None, MissingKey::Shared(shared)) => shared.clone(),
            (None, MissingKey::Allow) => return Checked::Pass(None),
            (None, MissingKey::Reject) => return Checked::Unauthorized,
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
                Checked::Pass(Some((policy, key, decision)))
            }
            Ok(decision) if self.shadow || self.shadow_policies.contains(policy.name()) => {
                count("shadow_denied");
                Checked::Pass(Some((policy, key, decision)))
            }
            Ok(decision) => {
                count("denied");
                Checked::Reject(policy, decision)
            }
            Err(Error::Store(_)) if self.on_store_error == OnStoreError::Allow => {
                count("store_error_allowed");
                Checked::Pass(None)
            }
            Err(_) => {
                count("store_error_denied");
                Checked::Unavailable
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
        let grpc = crate::response::is_grpc(info.headers);
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
                Checked::Pass(checked) => {
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
                Checked::Reject(policy, decision) if grpc => {
                    Ok(resource_exhausted(shared.headers, &policy, &decision))
                }
                Checked::Reject(policy, decision) => {
                    Ok(too_many_requests(shared.headers, &policy, &decision))
                }
                Checked::Unauthorized => Ok(plain(StatusCode::UNAUTHORIZED, "missing credentials")),
                Checked::Unavailable => {
                    let mut response =
                        plain(StatusCode::SERVICE_UNAVAILABLE, "rate limiter unavailable");
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
