//! Redis Cluster: the conformance suite and slot migrations on three local masters, and the
//! history of decisions through topology changes (`cargo test -p floodgate-redis --test
//! cluster <module>::`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod cluster_history;
