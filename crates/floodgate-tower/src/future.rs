//! `ResponseFuture`: the future of a [`RateLimit`](crate::RateLimit) service's response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::body::LimitBody;

/// The boxed future inside [`ResponseFuture`].
type BoxedResponse<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<Response<LimitBody<ResBody>>, E>> + Send>>;

/// The future of [`RateLimit`](crate::RateLimit)'s response.
pub struct ResponseFuture<ResBody, E> {
    future: BoxedResponse<ResBody, E>,
}

impl<ResBody, E> ResponseFuture<ResBody, E> {
    pub(crate) fn new(
        future: impl Future<Output = Result<Response<LimitBody<ResBody>>, E>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            future: Box::pin(future),
        }
    }
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
