//! The tower layer's overhead: the same axum route with and without `RateLimitLayer`
//! (memory store, a random API key per request from 10 000), driven by `wrk` on loopback.

use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use floodgate::{Policy, RateLimiter};
use floodgate_tower::{HeaderValue, RateLimitLayer};

/// A wrk script that sends a random `x-api-key` of 10 000 with each request.
const RANDOM_KEYS: &str = r#"
request = function()
  return wrk.format(nil, nil, { ["x-api-key"] = "key-" .. math.random(10000) })
end
"#;

fn wrk(addr: std::net::SocketAddr, script: &std::path::Path, seconds: u64) -> f64 {
    let output = Command::new("wrk")
        .args(["-t", "1", "-c", "32", "-d", &format!("{seconds}s"), "-s"])
        .arg(script)
        .arg(format!("http://{addr}/hello"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (Debian: apt-get install wrk): {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

pub(crate) fn run(runs: usize, seconds: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let script = std::env::temp_dir().join(format!("floodgate-wrk-{}.lua", std::process::id()));
    std::fs::write(&script, RANDOM_KEYS).unwrap_or_else(|e| panic!("{e}"));
    let (bare, limited) = runtime.block_on(async {
        let serve = |app: Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        };
        let route = || Router::new().route("/hello", get(|| async { "hello" }));
        let limiter = Arc::new(RateLimiter::in_memory());
        let policy =
            Policy::parse("api", "1000000/s burst 1000000").unwrap_or_else(|e| panic!("{e}"));
        let layer = RateLimitLayer::new(limiter, policy).key(HeaderValue::new(
            axum::http::HeaderName::from_static("x-api-key"),
        ));
        (serve(route()).await, serve(route().layer(layer)).await)
    });
    println!("axum route with and without RateLimitLayer (memory store, 10 000 random API keys),");
    println!(
        "wrk -t1 -c32 on loopback, server on one tokio worker; medians of {runs} runs of {seconds} s:\n"
    );
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut ratios = Vec::new();
    for run in 0..runs {
        eprintln!("middleware run {}/{runs}", run + 1);
        let b = wrk(bare, &script, seconds);
        let l = wrk(limited, &script, seconds);
        without.push(b);
        with.push(l);
        ratios.push(l / b);
    }
    let _ = std::fs::remove_file(&script);
    println!("| route | requests/s |");
    println!("|:---|---:|");
    println!(
        "| bare axum route | {} |",
        crate::human(crate::median(&mut without))
    );
    println!(
        "| with `RateLimitLayer` | {} |",
        crate::human(crate::median(&mut with))
    );
    println!(
        "\nwith / without, median of per-run ratios: **{:.2}×**",
        crate::median(&mut ratios)
    );
}
