//! The HTTP JSON API: `/v1/check`, `/v1/peek`, `/v1/charge`, `/v1/reset`, `/v1/policies`,
//! the login guards' `/v1/login/attempt` and `/v1/login/result` (in [`login`]), the
//! concurrency limits' `/v1/acquire`, `/v1/release` and `/v1/renew` (in [`permits`]), health
//! and metrics. Errors are `application/problem+json`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floodgate::{Clock, Decision, DecisionSource, Error, Store};
use floodgate_tower::headers::{self, ceil_secs};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::request;
use crate::state::{AnyStore, Served, ServedPolicy, Shared};

mod dashboard;
mod effective;
mod login;
mod permits;
mod top;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
pub use crate::request::MAX_KEY;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/peek", post(peek))
        .route("/v1/charge", post(charge))
        .route("/v1/reset", post(reset))
        .route("/v1/policies", get(policies))
        .route("/v1/config", get(effective::config))
        .route("/v1/top", get(top::top))
        .route("/v1/stats", get(effective::stats))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .route("/v1/login/attempt", post(login::attempt))
        .route("/v1/login/result", post(login::result))
        .route("/v1/acquire", post(permits::acquire))
        .route("/v1/release", post(permits::release))
        .route("/v1/renew", post(permits::renew))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// An `application/problem+json` response.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = headers::problem_json("about:blank", title, status.as_u16(), detail, "");
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

fn bad_request(shared: &Shared, detail: &str) -> Response {
    shared.metrics.bad_request();
    problem(StatusCode::BAD_REQUEST, detail)
}

fn body_timeout(shared: &Shared) -> Duration {
    shared.served.load().config.server.limits.body_timeout
}

/// Reads a request body of at most [`MAX_BODY`] bytes. A body that arrives in one frame (the
/// usual small JSON request) is used without copying.
async fn read_body(
    shared: &Shared,
    headers: &HeaderMap,
    body: Body,
    body_timeout: Duration,
) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let too_large = || {
        shared.metrics.bad_request();
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    // The deadline starts when the body first keeps us waiting: a body that came with the
    // headers (the usual small request) is read without arming a timer.
    let started = tokio::time::Instant::now();
    let deadline = started + body_timeout;
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest: Option<bytes::BytesMut> = None;
    loop {
        let mut next = body.frame();
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut next).poll(cx))
        })
        .await;
        let waited = match ready {
            std::task::Poll::Ready(frame) => Ok(frame),
            std::task::Poll::Pending => tokio::time::timeout_at(deadline, next).await,
        };
        let Ok(frame) = waited else {
            shared.metrics.bad_request();
            return Err(problem(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(body_timeout)
                ),
            ));
        };
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| {
            shared.metrics.bad_request();
            problem(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // `rest`, once started, holds `first` too: count each byte once.
        let size = match &rest {
            Some(joined) => joined.len(),
            None => first.as_ref().map_or(0, Bytes::len),
        } + data.len();
        if size > MAX_BODY {
            return Err(too_large());
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = bytes::BytesMut::with_capacity(size);
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match rest {
        Some(joined) => joined.freeze(),
        None => first.unwrap_or_default(),
    })
}

fn unavailable(retry_after: Duration, detail: &str) -> Response {
    let mut response = problem(StatusCode::SERVICE_UNAVAILABLE, detail);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(ceil_secs(retry_after).max(1)),
    );
    response
}

/// Milliseconds, rounded up.
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The policy named `name`, or the `404` to send.
#[allow(clippy::result_large_err)] // the error is the response itself, sent right away
fn served_policy<'a>(
    shared: &Shared,
    current: &'a Served,
    name: &str,
) -> Result<&'a ServedPolicy, Response> {
    current.policies.get(name).ok_or_else(|| {
        shared.metrics.bad_request();
        problem(
            StatusCode::NOT_FOUND,
            &format!("no policy named '{}'", name.escape_debug()),
        )
    })
}

/// Parses and validates a check/peek body; the error is the response to send.
// The error is the response itself, sent right away: boxing it would only add an allocation.
#[allow(clippy::result_large_err)]
fn parse_decide<'a>(
    shared: &Shared,
    current: &'a Served,
    body: &'a [u8],
) -> Result<(&'a ServedPolicy, request::Decide<'a>, u32), Response> {
    let request = request::decide(body).map_err(|detail| bad_request(shared, &detail))?;
    let cost = request.cost;
    let served = served_policy(shared, current, &request.policy)?;
    Ok((served, request, cost))
}

/// The `200` answer to a check or peek (hot path: no format machinery).
fn answer(served: &ServedPolicy, decision: &Decision, allowed: bool) -> Response {
    let mut numbers = itoa::Buffer::new();
    let mut json = String::with_capacity(160);
    json.push_str(if allowed || served.shadow {
        "{\"allowed\":true,\"limit\":"
    } else {
        "{\"allowed\":false,\"limit\":"
    });
    json.push_str(numbers.format(decision.limit()));
    json.push_str(",\"remaining\":");
    json.push_str(numbers.format(decision.remaining()));
    json.push_str(",\"retry_after_ms\":");
    json.push_str(numbers.format(if allowed {
        0
    } else {
        ceil_ms(decision.retry_after())
    }));
    json.push_str(",\"reset_after_ms\":");
    json.push_str(numbers.format(ceil_ms(decision.reset_after())));
    json.push_str(&served.json_tail);
    if served.shadow {
        json.push_str(if allowed {
            ",\"shadow\":true,\"would_allow\":true"
        } else {
            ",\"shadow\":true,\"would_allow\":false"
        });
    }
    json.push('}');
    let mut response = Response::new(Body::from(json));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_fields(headers, served, decision);
    response
}

/// `RateLimit-Policy` (computed once per policy) and `RateLimit`.
fn insert_fields(headers: &mut HeaderMap, served: &ServedPolicy, decision: &Decision) {
    if let Some(field) = &served.policy_field {
        headers.insert(HeaderName::from_static("ratelimit-policy"), field.clone());
    }
    let Some(prefix) = served.state_prefixes.get(decision.decided_by()) else {
        return;
    };
    let mut field = String::with_capacity(prefix.len() + 24);
    field.push_str(prefix);
    headers::push_state(&mut field, decision);
    if let Ok(value) = HeaderValue::try_from(field) {
        headers.insert(HeaderName::from_static("ratelimit"), value);
    }
}

fn store_failure(shared: &Shared, error: &Error) -> Response {
    match error {
        // The limiter validates costs: a cost no request may have is the client's error.
        Error::CostExceedsBurst { .. } | Error::InvalidCost { .. } => {
            shared.metrics.bad_request();
            problem(StatusCode::UNPROCESSABLE_ENTITY, &error.to_string())
        }
        _ => {
            shared.metrics.store_error();
            tracing::warn!(error = %error, "store call failed");
            unavailable(
                Duration::from_secs(1),
                "the rate limit store is unavailable",
            )
        }
    }
}

async fn check(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    decide(&shared, request, Endpoint::Check).await
}

async fn peek(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    decide(&shared, request, Endpoint::Peek).await
}

async fn charge(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    decide(&shared, request, Endpoint::Charge).await
}

/// What a decide request does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// Check and consume (`/v1/check`).
    Check,
    /// Report the state, consuming nothing (`/v1/peek`).
    Peek,
    /// Consume without checking, for usage known afterwards (`/v1/charge`): any cost is
    /// charged, the debt capped at one burst below empty.
    Charge,
}

async fn decide(shared: &Shared, request: axum::extract::Request, op: Endpoint) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_body(shared, &parts.headers, body, body_timeout(shared)).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let current = shared.served.load();
    let (served, request, cost) = match parse_decide(shared, &current, &body) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    // The store's clock (a TSC read) times the call: cheaper than `Instant`.
    let clock = current.limiter.store().clock();
    let started = clock.now_nanos();
    let result = match op {
        Endpoint::Check => {
            current
                .limiter
                .check_n(&served.policy, &request.key, cost)
                .await
        }
        // The limiter's `peek` asks about one token; the cost a peek asks about is held to
        // the rule the limiter applies to a check, so both answer `422` alike.
        Endpoint::Peek => match served.policy.check_cost(cost) {
            Ok(()) => current.limiter.peek(&served.policy, &request.key).await,
            Err(e) => Err(e),
        },
        Endpoint::Charge => {
            current
                .limiter
                .charge(&served.policy, &request.key, cost)
                .await
        }
    };
    shared.metrics.store_latency(Duration::from_nanos(
        clock.now_nanos().saturating_sub(started),
    ));
    let decision = match result {
        Ok(decision) => decision,
        Err(e) => return store_failure(shared, &e),
    };
    if op == Endpoint::Charge {
        served.counters.record_charge(&decision);
    }
    if op == Endpoint::Check {
        served.counters.record(&decision, served.shadow);
        shared
            .top
            .record(served.policy.name(), &request.key, !decision.is_allowed());
        // Escaped: a key with a newline or terminal codes cannot forge log lines.
        tracing::debug!(policy = %served.policy.name(), key = %request.key.escape_debug(), allowed = decision.is_allowed(), "check");
    }
    if decision.source() == DecisionSource::FailClosed {
        return unavailable(
            decision.retry_after(),
            "the rate limit store is unavailable and this policy fails closed",
        );
    }
    let allowed = match op {
        // After a charge: whether it fit without debt.
        Endpoint::Check | Endpoint::Charge => decision.is_allowed(),
        // Would `cost` pass now?
        Endpoint::Peek => decision.is_allowed() && decision.remaining() >= u64::from(cost),
    };
    answer(served, &decision, allowed)
}

async fn reset(State(shared): State<Arc<Shared>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let current = shared.served.load();
    if let Err(response) = authorize(&shared, &current, headers, "POST /v1/reset") {
        return response;
    }
    let body = match read_body(
        &shared,
        headers,
        body,
        current.config.server.limits.body_timeout,
    )
    .await
    {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = match request::reset(&body) {
        Ok(request) => request,
        Err(detail) => return bad_request(&shared, &detail),
    };
    let served = match served_policy(&shared, &current, &request.policy) {
        Ok(served) => served,
        Err(response) => return response,
    };
    let started = Instant::now();
    let result = current.limiter.reset(&served.policy, &request.key).await;
    shared.metrics.store_latency(started.elapsed());
    match result {
        Ok(()) => {
            tracing::info!(policy = %served.policy.name(), "bucket reset");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_failure(&shared, &e),
    }
}

/// Checks the admin token, when one is set; the error is the `401` to send for `what`.
#[allow(clippy::result_large_err)] // the error is the response itself, sent right away
pub(crate) fn authorize(
    shared: &Shared,
    current: &Served,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), Response> {
    let Some(token) = &current.config.server.admin_token else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        return Ok(());
    }
    shared.metrics.bad_request();
    let mut response = problem(
        StatusCode::UNAUTHORIZED,
        &format!("{what} needs the admin token: Authorization: Bearer <token>"),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"floodgate\""),
    );
    Err(response)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 §11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches(' '))
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn policies(State(shared): State<Arc<Shared>>) -> Response {
    let current = shared.served.load();
    (
        [(header::CONTENT_TYPE, "application/json")],
        current.policy_list.clone(),
    )
        .into_response()
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready().await {
        (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response()
    } else {
        unavailable(
            Duration::from_secs(1),
            "the rate limit store does not answer",
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut text = shared.metrics.render();
    let current = shared.served.load();
    lease_metrics(&current, &mut text);
    permit_metrics(&shared, &current, &mut text);
    effective::limit_gauges(&current, &mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The `[concurrency]` families: counters by limit and outcome, permits in flight, and the
/// leases the store reclaimed.
fn permit_metrics(shared: &Shared, served: &Served, out: &mut String) {
    let limits = shared.metrics.concurrency_counters();
    let reclaimed = served.limiter.store().permits_reclaimed();
    let now = served.limiter.store().clock().now_nanos();
    crate::permits::render(out, &limits, reclaimed, now);
}

/// `floodgate_lease_tokens_total` for the policies that lease (Redis stores only), read
/// from the store: it restarts from zero when a reload rebuilds the store.
fn lease_metrics(served: &Served, out: &mut String) {
    use std::fmt::Write as _;
    let AnyStore::Redis(store) = served.limiter.store() else {
        return;
    };
    let mut leasing = served
        .config
        .policies
        .iter()
        .filter(|(_, p)| p.lease.is_some())
        .peekable();
    if leasing.peek().is_none() {
        return;
    }
    out.push_str(
        "# HELP floodgate_lease_tokens_total Leased tokens by policy: taken from Redis \
         (leased), spent here without a round trip (spent), ended unspent (expired).\n\
         # TYPE floodgate_lease_tokens_total counter\n",
    );
    for (name, _) in leasing {
        let tokens = store.lease_tokens(name);
        for (kind, count) in [
            ("leased", tokens.leased),
            ("spent", tokens.spent),
            ("expired", tokens.expired),
        ] {
            let _ = writeln!(
                out,
                "floodgate_lease_tokens_total{{policy=\"{name}\",kind=\"{kind}\"}} {count}"
            );
        }
    }
}

async fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take this method: /v1/check, /v1/peek, /v1/charge, /v1/reset, \
         /v1/login/attempt and /v1/login/result take POST; /v1/policies, /v1/config, /v1/top, \
         /v1/stats, /dashboard, /healthz, /readyz and /metrics take GET",
    )
}

async fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "no such endpoint; see GET /v1/policies",
    )
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_matches_in_any_case() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "  bEaReR  s3cret",
        ] {
            assert_eq!(bearer_token(value), Some("s3cret"), "{value}");
        }
        assert_eq!(bearer_token("Basic s3cret"), None);
        assert_eq!(bearer_token("Bearers3cret"), None);
    }
}
