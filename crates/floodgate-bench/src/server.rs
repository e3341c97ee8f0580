//! The server: `POST /v1/check` (wrk, 100 000 random keys) on the memory store (top keys on
//! and off) and on Redis beside a bare axum route returning a constant JSON body, and `ShouldRateLimit` (a tonic
//! load generator in this process) on both stores beside a bare tonic service answering a
//! constant response, served as tonic's documentation shows. Servers run on one tokio worker;
//! the load generator gets the other core.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use floodgate_server::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry,
};
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use floodgate_server::proto::envoy::service::ratelimit::v3::{
    RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
};
use floodgate_server::{Options, Running};
use floodgate_testkit::redis_server::RedisServer;

const CHECK_SCRIPT: &str = r#"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  return wrk.format(nil, nil, nil, '{"policy":"bench","key":"user:' .. math.random(100000) .. '"}')
end
"#;

const CONSTANT_JSON: &str = r#"{"allowed":true,"limit":1000000,"remaining":999999,"retry_after_ms":0,"reset_after_ms":1,"policy":"bench"}"#;

const ENVOY_DOMAIN: &str = "domain: bench\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: second\n      requests_per_unit: 1000000\n";

struct Wrk {
    rps: f64,
    p99_ms: f64,
}

fn wrk(addr: SocketAddr, script: &std::path::Path, seconds: u64) -> Wrk {
    let output = Command::new("wrk")
        .args([
            "-t",
            "1",
            "-c",
            "32",
            "--latency",
            "-d",
            &format!("{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{addr}/v1/check"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk (Debian: apt-get install wrk): {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or(f64::NAN, |v| parse_wrk_duration(v.trim()));
    if text.contains("Non-2xx") {
        eprintln!("warning: non-2xx responses from {addr}:\n{text}");
    }
    Wrk { rps, p99_ms }
}

/// `812.00us`, `1.23ms`, `1.01s` → milliseconds.
fn parse_wrk_duration(text: &str) -> f64 {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, f64::NAN)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

/// A constant `ShouldRateLimit` answer: the gRPC stack's own cost.
struct Bare;

#[tonic::async_trait]
impl RateLimitService for Bare {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        let n = request.into_inner().descriptors.len();
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![Default::default(); n],
            ..Default::default()
        }))
    }
}

/// Calls in flight on the one gRPC connection.
const GRPC_IN_FLIGHT: usize = 64;

struct Grpc {
    rps: f64,
    p99_ms: f64,
}

/// `concurrency` tasks on one HTTP/2 connection, each sending one call after another.
fn grpc_load(addr: SocketAddr, seconds: u64, concurrency: usize) -> Grpc {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..concurrency {
            let mut client = RateLimitServiceClient::new(channel.clone());
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n: u64 = task as u64 * 7_919;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let request = RateLimitRequest {
                        domain: "bench".into(),
                        descriptors: vec![RateLimitDescriptor {
                            entries: vec![Entry {
                                key: "user".into(),
                                value: format!("user:{}", (n >> 33) % 100_000),
                            }],
                            limit: None,
                            hits_addend: None,
                        }],
                        hits_addend: 0,
                    };
                    let sent = Instant::now();
                    let reply = client.should_rate_limit(request).await;
                    latencies.push(sent.elapsed());
                    if let Err(e) = reply {
                        panic!("ShouldRateLimit failed: {e}");
                    }
                }
                latencies
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap_or_else(|e| panic!("{e}")));
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        let p99 = all
            .get(all.len() * 99 / 100)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        Grpc {
            rps: all.len() as f64 / elapsed,
            p99_ms: p99,
        }
    })
}

async fn start_server(dir: &std::path::Path, store: &str, top_keys: usize) -> Running {
    let config = format!(
        "[server]\ntop_keys = {top_keys}\n[store]\nurl = \"{store}\"\n[policies]\nbench = \"1000000/s burst 1000000\"\n[envoy]\nconfig_dir = \"envoy\"\n"
    );
    let path = dir.join(format!(
        "{}-{top_keys}.toml",
        store.replace([':', '/', '.'], "_")
    ));
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
    let mut options = Options::file_on_free_ports(path);
    options.watch_interval = None;
    floodgate_server::start(options)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub(crate) fn run(runs: usize, seconds: u64) {
    let dir = std::env::temp_dir().join(format!("floodgate-bench-server-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("envoy")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("envoy/bench.yaml"), ENVOY_DOMAIN).unwrap_or_else(|e| panic!("{e}"));
    let script = dir.join("check.lua");
    std::fs::write(&script, CHECK_SCRIPT).unwrap_or_else(|e| panic!("{e}"));
    let redis = RedisServer::start();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (bare_http, bare_grpc, memory, on_redis, no_top) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let bare_http = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let app = Router::new().route(
            "/v1/check",
            post(|| async { ([("content-type", "application/json")], CONSTANT_JSON) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        // Served as tonic's documentation shows (`serve(addr)`: its own listener, with
        // TCP_NODELAY), not through our accept loop, so it cannot share a bug of ours.
        let bare_grpc = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(Bare))
                .serve(bare_grpc),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let memory = start_server(&dir, "memory://", 1_000).await;
        let on_redis = start_server(&dir, &redis.url(), 1_000).await;
        let no_top = start_server(&dir, "memory://", 0).await;
        (bare_http, bare_grpc, memory, on_redis, no_top)
    });

    println!("machine: {}", crate::machine());
    println!(
        "floodgate server vs a bare route (HTTP: wrk -t1 -c32 --latency, 100 000 random keys;"
    );
    println!(
        "gRPC: {GRPC_IN_FLIGHT} calls in flight on one HTTP/2 connection, as a small Envoy fleet sends them);"
    );
    println!("servers on one tokio worker;");
    println!("medians of {runs} interleaved runs of {seconds} s:\n");
    let mut http: [Vec<(f64, f64)>; 4] = Default::default();
    let mut top_ratio = Vec::new();
    let mut grpc: [Vec<(f64, f64)>; 3] = Default::default();
    let mut http_ratio = Vec::new();
    let mut grpc_ratio = Vec::new();
    let mut p99_ratio = Vec::new();
    for run in 0..runs {
        eprintln!("server run {}/{runs}", run + 1);
        let results: Vec<Wrk> = [
            bare_http,
            memory.http_addr(),
            on_redis.http_addr(),
            no_top.http_addr(),
        ]
        .into_iter()
        .map(|addr| wrk(addr, &script, seconds))
        .collect();
        http_ratio.push(results[1].rps / results[0].rps);
        top_ratio.push(results[1].rps / results[3].rps);
        for (i, r) in results.iter().enumerate() {
            http[i].push((r.rps, r.p99_ms));
        }
        let results: Vec<Grpc> = [bare_grpc, memory.grpc_addr(), on_redis.grpc_addr()]
            .into_iter()
            .map(|addr| grpc_load(addr, seconds, GRPC_IN_FLIGHT))
            .collect();
        grpc_ratio.push(results[1].rps / results[0].rps);
        p99_ratio.push(results[1].p99_ms / results[0].p99_ms);
        for (i, r) in results.iter().enumerate() {
            grpc[i].push((r.rps, r.p99_ms));
        }
    }
    let row = |label: &str, samples: &[(f64, f64)]| {
        let mut rps: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let mut p99: Vec<f64> = samples.iter().map(|s| s.1).collect();
        println!(
            "| {label} | {} | {:.2} ms |",
            crate::human(crate::median(&mut rps)),
            crate::median(&mut p99)
        );
    };
    println!("| endpoint | requests/s | p99 |");
    println!("|:---|---:|---:|");
    row("bare axum route (constant JSON)", &http[0]);
    row("`POST /v1/check`, memory store", &http[1]);
    row("`POST /v1/check`, Redis store", &http[2]);
    row("`POST /v1/check`, memory store, top keys off", &http[3]);
    row("bare tonic `ShouldRateLimit` (constant)", &grpc[0]);
    row("`ShouldRateLimit`, memory store", &grpc[1]);
    row("`ShouldRateLimit`, Redis store", &grpc[2]);
    println!(
        "\n`/v1/check` on the memory store / bare route, median of per-run ratios: **{:.2}×**",
        crate::median(&mut http_ratio)
    );
    println!(
        "`ShouldRateLimit` on the memory store / bare tonic service: **{:.2}×** requests/s, \
         **{:.2}×** p99 (one connection, {GRPC_IN_FLIGHT} in flight)",
        crate::median(&mut grpc_ratio),
        crate::median(&mut p99_ratio)
    );
    println!(
        "`/v1/check` with top keys on (1 000 counters) / off, median of per-run ratios: **{:.2}×**",
        crate::median(&mut top_ratio)
    );
    runtime.block_on(async {
        memory.shutdown().await;
        on_redis.shutdown().await;
        no_top.shutdown().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
