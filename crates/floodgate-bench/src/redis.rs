//! The Redis store against `redis-benchmark` driving a minimal single-key GCRA script, in
//! one run, on a `redis-server` this benchmark starts itself.

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use floodgate::{Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::RedisServer;

/// The smallest GCRA one would write: one key, Redis `TIME`, a TTL.
const MINIMAL_GCRA: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
if tat < now then tat = now end
local new = tat + interval
if new - now > tolerance then return 0 end
redis.call('SET', KEYS[1], new, 'PX', math.ceil((new - now) / 1000))
return 1
";

const KEYS: u64 = 10_000;
const DEPTH: usize = 64;

struct Sample {
    ops: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub(crate) fn run(runs: usize, millis: u64) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let sha = server.cli(&["SCRIPT", "LOAD", MINIMAL_GCRA]);
    println!(
        "redis-server {} on 127.0.0.1, client and server on this machine\n",
        server
            .cli(&["INFO", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
    );

    let mut one = Vec::new();
    let mut four = Vec::new();
    let mut same_depth = Vec::new();
    let mut ceiling = Vec::new();
    let mut cached = Vec::new();
    let mut uncached = Vec::new();
    for run in 0..runs {
        eprintln!("redis run {}/{runs}", run + 1);
        same_depth.push(redis_benchmark(&server, &sha, 4, millis));
        one.push(runtime.block_on(floodgate_checks(&server.url(), 1, millis)));
        four.push(runtime.block_on(floodgate_checks(&server.url(), 4, millis)));
        ceiling.push(redis_benchmark(&server, &sha, 50, millis));
        let (with, without) = runtime.block_on(deny_cache(&server.url(), millis));
        cached.push(with);
        uncached.push(without);
    }
    let med = |samples: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        crate::median(&mut v)
    };
    println!("| client | in flight | decisions/s | p50 | p99 | vs same depth |");
    println!("|:---|---:|---:|---:|---:|---:|");
    let base = med(&same_depth, |s| s.ops);
    for (name, depth, samples) in [
        (
            "floodgate `RedisStore` via `RateLimiter`, one thread, 1 connection (default)",
            "64",
            &one,
        ),
        (
            "floodgate `RedisStore` via `RateLimiter`, one thread, `connections(4)`",
            "64",
            &four,
        ),
        (
            "redis-benchmark, minimal GCRA `EVALSHA` (-c 4 -P 16)",
            "64",
            &same_depth,
        ),
        (
            "redis-benchmark, minimal GCRA `EVALSHA` (-c 50 -P 16)",
            "800",
            &ceiling,
        ),
    ] {
        let ops = med(samples, |s| s.ops);
        println!(
            "| {name} | {depth} | {} | {:.3} ms | {:.3} ms | **{:.2}×** |",
            crate::human(ops),
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            ops / base
        );
    }
    let ratio = |ours: &[Sample]| {
        let mut ratios: Vec<f64> = ours
            .iter()
            .zip(&same_depth)
            .map(|(f, r)| f.ops / r.ops)
            .collect();
        crate::median(&mut ratios)
    };
    println!(
        "\nfloodgate / same-depth redis-benchmark, median of per-run ratios: **{:.2}×** with 1 \
         connection, **{:.2}×** with 4",
        ratio(&one),
        ratio(&four)
    );

    let mut gains: Vec<f64> = cached.iter().zip(&uncached).map(|(c, u)| c / u).collect();
    println!(
        "\ndeny cache, 90% of checks from over-limit keys: {} decisions/s with the cache, {} without: **{:.1}×** (median of per-run ratios)",
        crate::human(crate::median(&mut cached.clone())),
        crate::human(crate::median(&mut uncached.clone())),
        crate::median(&mut gains)
    );

    let (ours, minimal) = runtime.block_on(memory_per_key(&server, &sha));
    println!("\nRedis memory per key (used_memory delta over 50 000 keys, each with a TTL):\n");
    println!("| keys written by | bytes per key |");
    println!("|:---|---:|");
    println!("| floodgate, `fg1{{tag}}0` (20 bytes for any user key) | {ours:.1} |");
    for ((names, _), bytes) in MINIMAL_NAMES.iter().zip(minimal) {
        println!("| minimal GCRA script, {names} | {bytes:.1} |");
    }
}

/// 64 checks in flight from one thread over `connections`, random keys, a mostly-allowed
/// limit.
async fn floodgate_checks(url: &str, connections: usize, millis: u64) -> Sample {
    let store = RedisStore::builder(url)
        .connections(connections)
        .deny_cache(0)
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = Rc::new(RateLimiter::new(store));
    let policy = Rc::new(
        Policy::parse("bench", "1000000/s burst 1000000").unwrap_or_else(|e| panic!("{e}")),
    );
    let deadline = Instant::now() + Duration::from_millis(millis);
    let started = Instant::now();
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for task in 0..DEPTH {
        let (limiter, policy) = (limiter.clone(), policy.clone());
        tasks.push(local.spawn_local(async move {
            let mut latencies = Vec::new();
            let mut rng = 0x2545_f491_4f6c_dd1du64 ^ task as u64;
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = format!("user:{}", rng % KEYS);
                let sent = Instant::now();
                let _ = limiter.check(&policy, &key).await;
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    local
        .run_until(async {
            for task in tasks {
                latencies.extend(task.await.unwrap_or_default());
            }
        })
        .await;
    let ops = latencies.len() as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Sample {
        ops,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// `redis-benchmark` running the minimal script with EVALSHA, 16-deep pipelines.
fn redis_benchmark(server: &RedisServer, sha: &str, clients: usize, millis: u64) -> Sample {
    // Sized to run about as long as the floodgate cell at ~150k/s (-c 4) or ~250k/s (-c 50).
    let requests = (millis * if clients > 4 { 250 } else { 150 }).max(10_000);
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-c",
            &clients.to_string(),
            "-P",
            "16",
        ])
        .args([
            "-n",
            &requests.to_string(),
            "-r",
            &KEYS.to_string(),
            "--csv",
        ])
        .args(["EVALSHA", sha, "1", "user:__rand_int__", "1", "1000000"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-benchmark: {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text.lines().nth(1).unwrap_or_default();
    let fields: Vec<f64> = row
        .split("\",\"")
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    // "rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
    Sample {
        ops: fields.first().copied().unwrap_or(f64::NAN),
        p50_ms: fields.get(3).copied().unwrap_or(f64::NAN),
        p99_ms: fields.get(5).copied().unwrap_or(f64::NAN),
    }
}

/// Decisions per second when 90% of checks come from 1 000 keys over their limit, with and
/// without the deny cache, 64 in flight from one thread.
async fn deny_cache(url: &str, millis: u64) -> (f64, f64) {
    let mut results = [0.0; 2];
    for (i, capacity) in [100_000, 0].into_iter().enumerate() {
        let store = RedisStore::builder(url)
            .deny_cache(capacity)
            .timeout(Duration::from_secs(2))
            .build()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let limiter = Rc::new(RateLimiter::new(store));
        let abusive = Rc::new(Policy::parse("abuse", "1/h").unwrap_or_else(|e| panic!("{e}")));
        let normal = Rc::new(
            Policy::parse("normal", "1000000/s burst 1000000").unwrap_or_else(|e| panic!("{e}")),
        );
        for k in 0..1_000 {
            let _ = limiter.check(&abusive, &format!("abuser:{k}")).await;
        }
        let deadline = Instant::now() + Duration::from_millis(millis);
        let started = Instant::now();
        let local = tokio::task::LocalSet::new();
        let mut tasks = Vec::new();
        for task in 0..DEPTH {
            let (limiter, abusive, normal) = (limiter.clone(), abusive.clone(), normal.clone());
            tasks.push(local.spawn_local(async move {
                let mut done = 0u64;
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (task as u64 + 1);
                while Instant::now() < deadline {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let _ = if rng % 10 < 9 {
                        limiter
                            .check(&abusive, &format!("abuser:{}", (rng >> 8) % 1_000))
                            .await
                    } else {
                        limiter
                            .check(&normal, &format!("user:{}", (rng >> 8) % KEYS))
                            .await
                    };
                    done += 1;
                }
                done
            }));
        }
        let mut done = 0;
        local
            .run_until(async {
                for task in tasks {
                    done += task.await.unwrap_or_default();
                }
            })
            .await;
        results[i] = done as f64 / started.elapsed().as_secs_f64();
    }
    (results[0], results[1])
}

/// Redis `used_memory` per key: 50 000 keys written by floodgate, then by the minimal script
/// under names of each length in [`MINIMAL_NAMES`].
async fn memory_per_key(server: &RedisServer, sha: &str) -> (f64, Vec<f64>) {
    const N: u64 = 50_000;
    let used = || -> f64 {
        server
            .cli(&["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    server.cli(&["FLUSHALL"]);
    let store = RedisStore::builder(&server.url())
        .timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = RateLimiter::new(store);
    let hourly = Policy::parse("hourly", "1/h").unwrap_or_else(|e| panic!("{e}"));
    let before = used();
    for k in 0..N {
        let _ = limiter
            .check(&hourly, &format!("user:{}", 100_000 + k))
            .await;
    }
    let ours = (used() - before) / N as f64;
    server.cli(&["FLUSHALL"]);
    let client = redis::Client::open(server.url()).unwrap_or_else(|e| panic!("{e}"));
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut minimal = Vec::new();
    for (_, name) in MINIMAL_NAMES {
        let before = used();
        for k in 0..N {
            let _: Result<i64, _> = redis::cmd("EVALSHA")
                .arg(sha)
                .arg(1)
                .arg(name(100_000 + k))
                .arg(3_600_000_000u64)
                .arg(3_600_000_000u64)
                .query_async(&mut connection)
                .await;
        }
        minimal.push((used() - before) / N as f64);
        server.cli(&["FLUSHALL"]);
    }
    (ours, minimal)
}

/// A key name for the n-th key.
type KeyName = fn(u64) -> String;

/// Key names for the minimal script's memory figure: short ones, redis-benchmark's (`-r`
/// pads the number to 12 digits), and as long as floodgate's.
const MINIMAL_NAMES: [(&str, KeyName); 3] = [
    ("`user:123456`, 11 bytes", |k| format!("user:{k}")),
    ("`user:000000123456` (redis-benchmark's), 17 bytes", |k| {
        format!("user:{k:012}")
    }),
    ("`rl:user:0000123456`, 20 bytes", |k| {
        format!("rl:user:{k:010}")
    }),
];
