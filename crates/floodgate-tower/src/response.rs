//! The answers the layer sends itself: a `429` (or gRPC `RESOURCE_EXHAUSTED`) denial, and
//! plain-text errors.

use bytes::Bytes;
use floodgate::{Decision, Policy};
use http::{HeaderValue, Response, StatusCode};

use crate::body::LimitBody;
use crate::headers::{self, HeaderMode};

pub(crate) fn too_many_requests<B>(
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
pub(crate) fn resource_exhausted<B>(
    mode: HeaderMode,
    policy: &Policy,
    decision: &Decision,
) -> Response<LimitBody<B>> {
    let mut response = grpc_exhausted("rate%20limit%20exceeded", decision.retry_after());
    headers::insert(response.headers_mut(), mode, policy, decision);
    response
}

/// A trailers-only gRPC `RESOURCE_EXHAUSTED` with `message` (percent-encoded) and the wait
/// as `grpc-retry-pushback-ms` and `retry-after`.
pub(crate) fn grpc_exhausted<B>(
    message: &'static str,
    retry_after: std::time::Duration,
) -> Response<LimitBody<B>> {
    let mut response = Response::new(LimitBody::own(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("8"));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    let millis = retry_after.as_nanos().div_ceil(1_000_000);
    headers.insert(
        "grpc-retry-pushback-ms",
        HeaderValue::from(u64::try_from(millis).unwrap_or(u64::MAX)),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(headers::ceil_secs(retry_after).max(1)),
    );
    response
}

pub(crate) fn plain<B>(status: StatusCode, text: &'static str) -> Response<LimitBody<B>> {
    let mut response = Response::new(LimitBody::own(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether a request is a gRPC call (its denials travel in `grpc-status`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
