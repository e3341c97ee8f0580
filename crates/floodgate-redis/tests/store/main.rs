//! The Redis store against a standalone `redis-server` of each test's own: the conformance
//! suite, the deny cache, the store's own behaviour and TLS (`cargo test -p floodgate-redis
//! --test store <module>::`). Tests that time failures, faults, failovers or load have
//! binaries of their own, so a crowd of parallel tests cannot skew their clocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod batching;
mod conformance;
mod deny_cache;
mod leasing;
mod login;
mod permit_batching;
mod tls;
