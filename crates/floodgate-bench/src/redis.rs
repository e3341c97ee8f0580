//! The Redis store against `redis-benchmark` driving a minimal single-key GCRA script, in
//! one run, on a `redis-server` this benchmark starts itself.

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use floodgate::{Policy, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::redis_server::{RedisCluster, RedisServer};

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
    /// Redis's `used_cpu_user + used_cpu_sys` per decision, µs.
    cpu_us: f64,
    /// `INFO commandstats` EVALSHA time per decision, µs.
    evalsha_us: f64,
    /// Decisions per script call.
    batch: f64,
}

/// Redis's CPU seconds so far and its EVALSHA time (µs) and calls since the last
/// `CONFIG RESETSTAT`.
fn redis_cpu(server: &RedisServer) -> (f64, f64, f64) {
    let cpu = server.cli(&["INFO", "cpu"]);
    let field = |name: &str| -> f64 {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let seconds = field("used_cpu_user:") + field("used_cpu_sys:");
    let stats = server.cli(&["INFO", "commandstats"]);
    let evalsha = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or_default();
    let value = |name: &str| -> f64 {
        evalsha
            .split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (seconds, value("usec="), value("calls="))
}

/// Runs `cell` with Redis's CPU accounted: the sample, with its per-decision Redis CPU
/// figures filled in from `decisions(sample, evalsha calls)`.
fn measured(server: &RedisServer, cell: impl FnOnce() -> (Sample, Option<u64>)) -> Sample {
    server.cli(&["CONFIG", "RESETSTAT"]);
    let (cpu_before, _, _) = redis_cpu(server);
    let (mut sample, decisions) = cell();
    let (cpu_after, evalsha_us, calls) = redis_cpu(server);
    // redis-benchmark: one decision per EVALSHA; floodgate: what its store counted.
    let decisions = decisions.map_or(calls, |d| d as f64);
    sample.cpu_us = (cpu_after - cpu_before) * 1e6 / decisions;
    sample.evalsha_us = evalsha_us / decisions;
    sample.batch = decisions / calls;
    sample
}

/// One floodgate configuration of the table.
#[derive(Clone, Copy)]
struct Setup {
    depth: usize,
    batching: bool,
    connections: usize,
    /// Random keys drawn from this many.
    keys: u64,
}

pub(crate) fn run(runs: usize, millis: u64) {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let sha = server.cli(&["SCRIPT", "LOAD", MINIMAL_GCRA]);
    println!(
        "redis-server {} on 127.0.0.1, client and server on this machine ({})\n",
        server
            .cli(&["INFO", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?"),
        crate::machine()
    );

    let setups = [
        Setup {
            depth: DEPTH,
            batching: true,
            connections: 1,
            keys: KEYS,
        },
        Setup {
            depth: DEPTH,
            batching: false,
            connections: 1,
            keys: KEYS,
        },
        Setup {
            depth: 256,
            batching: true,
            connections: 1,
            keys: KEYS,
        },
        Setup {
            depth: 256,
            batching: false,
            connections: 1,
            keys: KEYS,
        },
        Setup {
            depth: DEPTH,
            batching: false,
            connections: 4,
            keys: KEYS,
        },
        Setup {
            depth: DEPTH,
            batching: true,
            connections: 1,
            keys: 1,
        },
        Setup {
            depth: DEPTH,
            batching: false,
            connections: 1,
            keys: 1,
        },
    ];
    let mut ours: Vec<Vec<Sample>> = setups.iter().map(|_| Vec::new()).collect();
    let mut same_depth = Vec::new();
    let mut ceiling = Vec::new();
    let mut cached = Vec::new();
    let mut uncached = Vec::new();
    let mut leased: Vec<HotKey> = Vec::new();
    let mut unleased: Vec<HotKey> = Vec::new();
    let cluster = RedisCluster::start(3);
    let cluster_setups = [(true, KEYS), (false, KEYS), (true, 1), (false, 1)];
    let mut on_cluster: Vec<Vec<Sample>> = cluster_setups.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        eprintln!("redis run {}/{runs}", run + 1);
        same_depth.push(measured(&server, || {
            (redis_benchmark(&server, &sha, 4, millis), None)
        }));
        for (setup, samples) in setups.iter().zip(&mut ours) {
            samples.push(measured(&server, || {
                runtime.block_on(floodgate_checks(&server.url(), *setup, millis))
            }));
            if setup.depth == DEPTH && setup.batching {
                // Interleaved: the ceiling between our cells.
                ceiling.push(measured(&server, || {
                    (redis_benchmark(&server, &sha, 50, millis), None)
                }));
            }
        }
        let (with, without) = runtime.block_on(deny_cache(&server.url(), millis));
        cached.push(with);
        uncached.push(without);
        leased.push(hot_key_processes(&server, millis, true));
        unleased.push(hot_key_processes(&server, millis, false));
        for (&(batching, keys), samples) in cluster_setups.iter().zip(&mut on_cluster) {
            let setup = Setup {
                depth: DEPTH,
                batching,
                connections: 1,
                keys,
            };
            samples.push(
                runtime
                    .block_on(floodgate_checks(&cluster.url(), setup, millis))
                    .0,
            );
        }
    }
    let med = |samples: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        crate::median(&mut v)
    };
    println!(
        "| client | in flight | decisions/s | p50 | p99 | decisions / call | Redis CPU / decision | EVALSHA µs / decision | vs same depth |"
    );
    println!("|:---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = med(&same_depth, |s| s.ops);
    let names: Vec<String> = setups
        .iter()
        .map(|s| {
            format!(
                "floodgate `RedisStore` via `RateLimiter`, one thread, {}, batching {}{}",
                if s.connections == 1 {
                    "1 connection".to_owned()
                } else {
                    format!("`connections({})`", s.connections)
                },
                if s.batching { "on (default)" } else { "off" },
                if s.keys == 1 { ", **one hot key**" } else { "" }
            )
        })
        .collect();
    let mut rows: Vec<(&str, String, &[Sample])> = setups
        .iter()
        .zip(&names)
        .zip(&ours)
        .map(|((setup, name), samples)| (name.as_str(), setup.depth.to_string(), &samples[..]))
        .collect();
    rows.push((
        "redis-benchmark, minimal GCRA `EVALSHA` (-c 4 -P 16)",
        "64".into(),
        &same_depth,
    ));
    rows.push((
        "redis-benchmark, minimal GCRA `EVALSHA` (-c 50 -P 16)",
        "800".into(),
        &ceiling,
    ));
    for (name, depth, samples) in rows {
        let ops = med(samples, |s| s.ops);
        println!(
            "| {name} | {depth} | {} | {:.3} ms | {:.3} ms | {:.1} | {:.2} µs | {:.2} µs | **{:.2}×** |",
            crate::human(ops),
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            med(samples, |s| s.batch),
            med(samples, |s| s.cpu_us),
            med(samples, |s| s.evalsha_us),
            ops / base
        );
    }
    let ratio = |ours: &[Sample], peer: &[Sample], f: fn(&Sample) -> f64| {
        let mut ratios: Vec<f64> = ours.iter().zip(peer).map(|(a, b)| f(a) / f(b)).collect();
        crate::median(&mut ratios)
    };
    println!("\nMedians of per-run ratios:");
    println!(
        "- batching on, 64 in flight / redis-benchmark at the same depth: **{:.2}×** decisions/s; p99 against batching off: {:.2}×",
        ratio(&ours[0], &same_depth, |s| s.ops),
        ratio(&ours[0], &ours[1], |s| s.p99_ms)
    );
    println!(
        "- batching on, 256 in flight / redis-benchmark's ceiling (-c 50 -P 16): **{:.2}×**",
        ratio(&ours[2], &ceiling, |s| s.ops)
    );
    println!(
        "- batching off, 64 in flight / same depth: {:.2}×; 256 in flight / ceiling: {:.2}×",
        ratio(&ours[1], &same_depth, |s| s.ops),
        ratio(&ours[3], &ceiling, |s| s.ops)
    );
    println!(
        "- Redis CPU per decision, batching on (64) / the minimal script's per call: **{:.2}×** (used_cpu), **{:.2}×** (EVALSHA µs); batching off: {:.2}×, {:.2}×",
        ratio(&ours[0], &same_depth, |s| s.cpu_us),
        ratio(&ours[0], &same_depth, |s| s.evalsha_us),
        ratio(&ours[1], &same_depth, |s| s.cpu_us),
        ratio(&ours[1], &same_depth, |s| s.evalsha_us)
    );

    let mut gains: Vec<f64> = cached.iter().zip(&uncached).map(|(c, u)| c / u).collect();
    println!(
        "\ndeny cache, 90% of checks from over-limit keys: {} decisions/s with the cache, {} without: **{:.1}×** (median of per-run ratios)",
        crate::human(crate::median(&mut cached.clone())),
        crate::human(crate::median(&mut uncached.clone())),
        crate::median(&mut gains)
    );

    println!(
        "\nA hot key from {LEASE_PROCESSES} processes (each one thread, 64 checks in flight, batching on), \
         limit 1000000/s burst 1000000000 so every check is allowed:\n"
    );
    println!("| leasing | admitted/s | denied/s | Redis calls/s | decisions per Redis call |");
    println!("|:---|---:|---:|---:|---:|");
    for (name, samples) in [("on, `lease(50 ms)`", &leased), ("off", &unleased)] {
        let med = |f: fn(&HotKey) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            crate::median(&mut v)
        };
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} |",
            crate::human(med(|h| h.admitted)),
            crate::human(med(|h| h.denied)),
            med(|h| h.calls),
            med(|h| h.admitted / h.calls.max(1e-9)),
        );
    }
    println!(
        "\nA local Redis Cluster (3 masters on this machine), one client thread, 64 in flight: \
         per-slot batching against one call per decision (pipelined per node):\n"
    );
    println!("| keys | batching | decisions/s | p50 | p99 | decisions / call |");
    println!("|:---|:---|---:|---:|---:|---:|");
    for (&(batching, keys), samples) in cluster_setups.iter().zip(&on_cluster) {
        println!(
            "| {} | {} | {} | {:.3} ms | {:.3} ms | {:.1} |",
            if keys == 1 {
                "one hot key".to_owned()
            } else {
                format!("random over {keys}")
            },
            if batching {
                "per slot, `batching(true)`"
            } else {
                "off (the Cluster default)"
            },
            crate::human(med(samples, |s| s.ops)),
            med(samples, |s| s.p50_ms),
            med(samples, |s| s.p99_ms),
            med(samples, |s| s.batch),
        );
    }
    for (i, what) in [(0, "random keys"), (2, "a hot key")] {
        println!(
            "- Cluster, per-slot batching / off, {what}: **{:.2}×** (median of per-run ratios)",
            ratio(&on_cluster[i], &on_cluster[i + 1], |s| s.ops)
        );
    }

    let mut gains: Vec<f64> = leased
        .iter()
        .zip(&unleased)
        .map(|(on, off)| on.admitted / off.admitted)
        .collect();
    println!(
        "\nleasing on / off, admitted decisions per second (median of per-run ratios): **{:.1}×**",
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

/// `setup.depth` checks in flight from one thread, random keys, a mostly-allowed limit;
/// the sample and the decisions the store sent to Redis.
async fn floodgate_checks(url: &str, setup: Setup, millis: u64) -> (Sample, Option<u64>) {
    let store = RedisStore::builder(url)
        .connections(setup.connections)
        .batching(setup.batching)
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
    let before = limiter.store().stats();
    for task in 0..setup.depth {
        let (limiter, policy) = (limiter.clone(), policy.clone());
        tasks.push(local.spawn_local(async move {
            let mut latencies = Vec::new();
            let mut rng = 0x2545_f491_4f6c_dd1du64 ^ task as u64;
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let key = format!("user:{}", rng % setup.keys);
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
    let after = limiter.store().stats();
    let decisions = after.decisions - before.decisions;
    let sample = Sample {
        ops,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        cpu_us: f64::NAN,
        evalsha_us: f64::NAN,
        batch: decisions as f64 / (after.script_calls - before.script_calls).max(1) as f64,
    };
    (sample, Some(decisions))
}

/// Worker processes in the hot-key leasing cells.
const LEASE_PROCESSES: usize = 4;

/// One hot-key cell: per second, over all worker processes.
struct HotKey {
    admitted: f64,
    denied: f64,
    calls: f64,
}

/// Runs [`LEASE_PROCESSES`] copies of this benchmark as `redis-lease-worker`s on one hot
/// key, started together, leasing or not; sums what they report.
fn hot_key_processes(server: &RedisServer, millis: u64, lease: bool) -> HotKey {
    server.cli(&["FLUSHALL"]);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let start = unix_ms() + 500;
    let workers: Vec<_> = (0..LEASE_PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "redis-lease-worker",
                    &server.url(),
                    &start.to_string(),
                    &millis.to_string(),
                    if lease { "50" } else { "0" },
                ])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start a worker: {e}"))
        })
        .collect();
    let mut total = HotKey {
        admitted: 0.0,
        denied: 0.0,
        calls: 0.0,
    };
    for worker in workers {
        let output = worker.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "a hot-key worker failed");
        let fields: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [admitted, denied, calls] = fields[..] {
            let seconds = millis as f64 / 1e3;
            total.admitted += admitted / seconds;
            total.denied += denied / seconds;
            total.calls += calls / seconds;
        }
    }
    total
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A worker of [`hot_key_processes`]: `<url> <start, Unix ms> <millis> <lease ms, 0 for none>`;
/// prints `admitted denied script-calls`.
pub(crate) fn lease_worker(args: &[String]) {
    let [url, start, millis, lease] = args else {
        panic!("usage: redis-lease-worker <url> <start-ms> <millis> <lease-ms>");
    };
    let parse = |v: &str| -> u64 { v.parse().unwrap_or_else(|e| panic!("{v}: {e}")) };
    let (start, millis, lease) = (parse(start), parse(millis), parse(lease));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async move {
        let mut builder = RedisStore::builder(url)
            .deny_cache(0)
            .timeout(Duration::from_secs(2));
        if lease > 0 {
            builder = builder.lease(Duration::from_millis(lease));
        }
        let store = builder.build().await.unwrap_or_else(|e| panic!("{e}"));
        let limiter = Rc::new(RateLimiter::new(store));
        // As fast as the Redis store's microsecond resolution takes, with a burst no run can
        // drain: every check is allowed, whatever the rate.
        let policy = Rc::new(
            Policy::parse("hot", "1000000/s burst 1000000000").unwrap_or_else(|e| panic!("{e}")),
        );
        while unix_ms() < start {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let calls = limiter.store().stats().script_calls;
        let deadline = Instant::now() + Duration::from_millis(millis);
        let local = tokio::task::LocalSet::new();
        let mut tasks = Vec::new();
        for _ in 0..DEPTH {
            let (limiter, policy) = (limiter.clone(), policy.clone());
            tasks.push(local.spawn_local(async move {
                let (mut admitted, mut denied) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match limiter.check(&policy, "hot").await {
                        Ok(d) if d.is_allowed() => admitted += 1,
                        Ok(_) => denied += 1,
                        Err(e) => panic!("a hot-key check failed: {e}"),
                    }
                    // Lease spends need no I/O: give the other tasks their turn.
                    tokio::task::yield_now().await;
                }
                (admitted, denied)
            }));
        }
        let (mut admitted, mut denied) = (0, 0);
        local
            .run_until(async {
                for task in tasks {
                    let (a, d) = task.await.unwrap_or_default();
                    admitted += a;
                    denied += d;
                }
            })
            .await;
        let calls = limiter.store().stats().script_calls - calls;
        println!("{admitted} {denied} {calls}");
    });
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
        cpu_us: f64::NAN,
        evalsha_us: f64::NAN,
        batch: f64::NAN,
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
