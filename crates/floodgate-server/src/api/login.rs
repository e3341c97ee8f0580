//! `POST /v1/login/attempt` and `POST /v1/login/result`: the `[login]` guards over HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use floodgate::FailurePolicy;
use floodgate::login::Outcome;
use http::{HeaderValue, StatusCode, header};

use super::{bad_request, body_timeout, ceil_ms, problem, read_body, unavailable};
use crate::request;
use crate::state::{Served, ServedLogin, Shared};

/// Whether the body is an attempt or a result.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Attempt,
    Result,
}

pub(super) async fn attempt(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response {
    handle(&shared, request, Call::Attempt).await
}

pub(super) async fn result(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
) -> Response {
    handle(&shared, request, Call::Result).await
}

async fn handle(shared: &Shared, request: axum::extract::Request, call: Call) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, &parts.headers, body, body_timeout(shared)).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let login = match request::login(&body, call == Call::Result) {
        Ok(login) => login,
        Err(detail) => return bad_request(shared, &detail),
    };
    let current: Arc<Served> = shared.served.load_full();
    let Some(served) = current.logins.get(login.guard.as_ref()) else {
        return not_found(shared, &login.guard);
    };
    let device = login.device.as_deref();
    let guard = &served.guard;
    let started = Instant::now();
    match call {
        Call::Attempt => {
            let decided = guard.attempt_from(&login.username, login.ip, device).await;
            shared.metrics.store_latency(started.elapsed());
            match decided {
                Ok(decision) => {
                    let rule = decision.rule().map(|rule| rule.as_str());
                    served.counters.attempt(rule.unwrap_or("allowed"));
                    attempt_answer(rule, decision.retry_after())
                }
                Err(e) => attempt_failed(shared, served, &e),
            }
        }
        Call::Result => {
            let success = login.success.unwrap_or(false);
            let outcome = if success {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            let recorded = guard
                .record_from(&login.username, login.ip, device, outcome)
                .await;
            shared.metrics.store_latency(started.elapsed());
            match recorded {
                Ok(()) => {
                    served.counters.result(success);
                    StatusCode::NO_CONTENT.into_response()
                }
                Err(e) => {
                    served.counters.store_error();
                    shared.metrics.store_error();
                    tracing::warn!(guard = %guard.name(), error = %e, "login result not recorded");
                    unavailable(
                        Duration::from_secs(1),
                        "the rate limit store is unavailable: the result was not recorded",
                    )
                }
            }
        }
    }
}

/// `{"allowed":…,"rule":…,"retry_after_ms":…}`: allowed when no rule refused it.
fn attempt_answer(rule: Option<&str>, retry_after: Duration) -> Response {
    let body = serde_json::json!({
        "allowed": rule.is_none(),
        "rule": rule,
        "retry_after_ms": ceil_ms(retry_after),
    });
    let mut response = Response::new(Body::from(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The store failed during an attempt: answered by the guard's `on_error` (`deny` by
/// default). `local` never gets here: the store decides locally instead of failing.
fn attempt_failed(shared: &Shared, served: &ServedLogin, error: &floodgate::Error) -> Response {
    served.counters.store_error();
    shared.metrics.store_error();
    tracing::warn!(guard = %served.guard.name(), error = %error, "login attempt not decided by the store");
    if served.on_error == FailurePolicy::Allow {
        served.counters.attempt("allowed");
        return attempt_answer(None, Duration::ZERO);
    }
    served.counters.attempt("unavailable");
    attempt_answer(Some("unavailable"), Duration::from_secs(1))
}

fn not_found(shared: &Shared, guard: &str) -> Response {
    shared.metrics.bad_request();
    problem(
        StatusCode::NOT_FOUND,
        &format!("no login guard named '{}'", guard.escape_debug()),
    )
}
