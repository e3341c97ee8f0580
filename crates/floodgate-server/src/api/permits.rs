//! `POST /v1/acquire`, `/v1/release` and `/v1/renew`: the `[concurrency]` limits over HTTP.
//!
//! The server hands a client the permit's id and holds nothing itself: the client releases
//! it, renews it, or lets its lease end (a client that dies frees its slot then).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use floodgate::{Acquisition, Clock, Error, PermitId, Store};
use http::{HeaderValue, StatusCode, header};

use super::{bad_request, body_timeout, ceil_ms, problem, read_body, store_failure};
use crate::permits::Outcome;
use crate::request;
use crate::state::{Served, ServedConcurrency, Shared};

/// Which permit call a body is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Acquire,
    Release,
    Renew,
}

pub(super) async fn acquire(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response {
    handle(&shared, request, Call::Acquire).await
}

pub(super) async fn release(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response {
    handle(&shared, request, Call::Release).await
}

pub(super) async fn renew(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response {
    handle(&shared, request, Call::Renew).await
}

async fn handle(shared: &Shared, request: axum::extract::Request, call: Call) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, &parts.headers, body, body_timeout(shared)).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let parsed = match request::permit(&body, call != Call::Acquire) {
        Ok(parsed) => parsed,
        Err(detail) => return bad_request(shared, &detail),
    };
    let current: Arc<Served> = shared.served.load_full();
    let Some(served) = current.concurrency.get(parsed.policy.as_ref()) else {
        shared.metrics.bad_request();
        return problem(
            StatusCode::NOT_FOUND,
            &format!(
                "no concurrency limit named '{}'",
                parsed.policy.escape_debug()
            ),
        );
    };
    let limiter = &current.limiter;
    let key = parsed.key.as_ref();
    let clock = limiter.store().clock();
    let started = std::time::Instant::now();
    let sent = clock.now_nanos();
    let lease_ns = u64::try_from(served.limit.lease_time().as_nanos()).unwrap_or(u64::MAX);
    let response = match call {
        Call::Acquire => {
            let id = parsed.permit.unwrap_or_else(PermitId::random);
            match limiter.acquire_with_id(&served.limit, key, id).await {
                Ok(Acquisition::Acquired(permit)) => {
                    served.counters.count(Outcome::Acquired);
                    let in_flight = permit.in_flight();
                    // The client holds it now: nothing is released here.
                    let id = permit.detach();
                    served
                        .counters
                        .hold(id, key, sent.saturating_add(lease_ns), sent);
                    json(serde_json::json!({
                        "acquired": true,
                        "permit": id.to_string(),
                        "in_flight": in_flight,
                        "limit": served.limit.max(),
                        "lease_ms": ceil_ms(served.limit.lease_time()),
                    }))
                }
                Ok(Acquisition::Full(full)) => {
                    served.counters.count(Outcome::Denied);
                    json(serde_json::json!({
                        "acquired": false,
                        "in_flight": full.in_flight,
                        "limit": full.limit,
                        "retry_after_ms": ceil_ms(full.retry_after),
                    }))
                }
                Err(e) => failed(shared, served, &e),
            }
        }
        Call::Release => {
            let id = parsed.permit.unwrap_or(PermitId::from_u128(0));
            match limiter.release_by_id(&served.limit, key, id).await {
                Ok(()) => {
                    served.counters.count(Outcome::Released);
                    served.counters.forget(id, key);
                    StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => failed(shared, served, &e),
            }
        }
        Call::Renew => {
            let id = parsed.permit.unwrap_or(PermitId::from_u128(0));
            match limiter.renew_by_id(&served.limit, key, id).await {
                Ok(()) => {
                    served.counters.count(Outcome::Renewed);
                    served
                        .counters
                        .hold(id, key, sent.saturating_add(lease_ns), sent);
                    json(serde_json::json!({
                        "lease_ms": ceil_ms(served.limit.lease_time()),
                    }))
                }
                Err(Error::PermitExpired { permit }) => {
                    served.counters.count(Outcome::Expired);
                    served.counters.forget(permit, key);
                    problem(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "permit {permit} is not in flight for this key: its lease ended \
                             (or it was released); acquire a new one"
                        ),
                    )
                }
                Err(e) => failed(shared, served, &e),
            }
        }
    };
    shared.metrics.store_latency(started.elapsed());
    response
}

fn json(body: serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The store failed and the limit's failure policy surfaced the error: `503`.
fn failed(shared: &Shared, served: &ServedConcurrency, error: &Error) -> Response {
    served.counters.count(Outcome::StoreError);
    store_failure(shared, error)
}
