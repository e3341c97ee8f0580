//! SaaS API tiering: the `x-api-key` header names a customer, the customer's plan decides
//! the limits. free: `5/s burst 10; 1000/day`, pro: `50/s burst 100`, enterprise:
//! `100/s burst 200`. Demo keys: `demo-free`, `demo-pro`, `demo-enterprise`; any other key
//! gets 401. `GET /hello` is the limited route.
//!
//! On the in-memory store by default; set `REDIS_URL` (for example `redis://127.0.0.1:6379`)
//! to share the limits between several instances. Listens on `BIND` (default
//! `127.0.0.1:3000`).
//!
//! ```text
//! cargo run -p floodgate-tower --example saas_tiers
//! curl -i -H 'x-api-key: demo-free' http://127.0.0.1:3000/hello
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use floodgate::{Policy, RateLimiter, Store};
use floodgate_tower::{HeaderValue, RateLimitLayer};

/// The demo customers and their plans.
fn customers() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("demo-free", "free"),
        ("demo-pro", "pro"),
        ("demo-enterprise", "enterprise"),
    ])
}

/// The plans.
fn plans() -> Result<HashMap<&'static str, Policy>, floodgate::Error> {
    Ok(HashMap::from([
        ("free", Policy::parse("free", "5/s burst 10; 1000/day")?),
        ("pro", Policy::parse("pro", "50/s burst 100")?),
        (
            "enterprise",
            Policy::parse("enterprise", "100/s burst 200")?,
        ),
    ]))
}

/// The API, rate-limited by plan on `limiter`'s store.
pub(crate) fn app<S: Store>(limiter: Arc<RateLimiter<S>>) -> Result<Router, floodgate::Error> {
    let plans = plans()?;
    let customers = customers();
    // API key → customer → plan → policy. Unknown keys get no policy here: the handler
    // refuses them.
    let layer = RateLimitLayer::resolve(limiter, move |request| {
        let key = request.headers.get("x-api-key")?.to_str().ok()?;
        plans.get(customers.get(key)?).cloned()
    })
    .key(HeaderValue::new(axum::http::HeaderName::from_static(
        "x-api-key",
    )));
    Ok(Router::new().route("/hello", get(hello)).layer(layer))
}

async fn hello(headers: HeaderMap) -> (StatusCode, String) {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match customers().get(key) {
        Some(plan) => (StatusCode::OK, format!("hello, {plan} customer\n")),
        None => (
            StatusCode::UNAUTHORIZED,
            "unknown API key: try x-api-key: demo-free\n".to_owned(),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let router = match std::env::var("REDIS_URL") {
        Ok(url) => app(Arc::new(RateLimiter::new(
            floodgate_redis::RedisStore::connect(&url).await?,
        )))?,
        Err(_) => app(Arc::new(RateLimiter::in_memory()))?,
    };
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("saas_tiers listening on http://{}", listener.local_addr()?);
    println!(
        "try: curl -i -H 'x-api-key: demo-free' http://{}/hello",
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}
