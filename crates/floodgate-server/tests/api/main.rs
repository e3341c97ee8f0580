//! The server's configuration, HTTP JSON API and Envoy RLS tests in one binary (`cargo test
//! -p floodgate-server --test api <module>::`). Hardening (file-descriptor limits, signals)
//! and reload (signals to a child server) have binaries of their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

#[path = "../common/mod.rs"]
mod common;

mod config;
mod dashboard;
mod envoy;
mod envoy_quota;
mod grafana;
mod http_api;
mod inspect;
mod login;
mod parsers;
mod permits;
mod top;
