//! The tower layer's tests in one binary, one module per area (`cargo test -p
//! floodgate-tower --test layer <module>::`): the layer itself, forwarded headers, gRPC,
//! and the examples.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod concurrency;
mod evidence;
mod forwarded_props;
mod job_throttle;
mod layer;
mod login_protection;
mod saas_tiers;
mod tonic;
