//! The core's integration tests in one binary, one module per area (`cargo test -p
//! floodgate --test core <module>::`). The loom models and the soak, which measures this
//! process's memory, have binaries of their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod concurrency;
mod conformance;
mod history;
mod memory_bounds;
mod model;
mod notation;
mod permits;
mod real_clock;
