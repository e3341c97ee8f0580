//! Test kit for floodgate stores: a reference model, a sliding-window checker, and the
//! conformance suite every [`Store`](floodgate::Store) must pass.
//!
//! The conformance suite drives a store with a [`ManualClock`](floodgate::ManualClock) and
//! checks exact decisions, so the store must decide on that clock (the memory store does;
//! the Redis store has a test-only clock override).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test kit fails the test it serves by panicking

pub mod concurrency;
pub mod conformance;
pub mod history;
pub mod login;
pub mod model;
pub mod proxy;
pub mod redis_server;
pub mod soak;
pub mod tls;
pub mod window;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls a future once and returns its output, for futures that never wait (the memory
/// store's). Panics if the future is pending: a test helper, not for production use.
pub fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("now_or_never: the future is pending"),
    }
}
