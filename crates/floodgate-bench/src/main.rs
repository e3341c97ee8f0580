//! Side-by-side benchmark: floodgate's `MemoryStore` (through the public `RateLimiter`
//! API), governor's keyed limiter (DashMap store) and a naive `Mutex<HashMap>` token
//! bucket, interleaved in one process, reported as medians and ratios.
//!
//! `cargo bench -p floodgate-bench` (options: `--runs N`, `--millis M` per cell,
//! `--keys K` for one key count only, `--quick` for a short smoke run).
//!
//! `cargo bench -p floodgate-bench -- redis` measures the Redis store instead,
//! against `redis-benchmark` on a `redis-server` it starts itself; `-- middleware` measures
//! the tower layer's overhead on an axum route with `wrk`; `-- server` measures the floodgate
//! server's HTTP and gRPC APIs beside bare routes (`wrk` too); `-- concurrency` measures
//! concurrency permits (memory and Redis) beside tower's `ConcurrencyLimit`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark stops at its first failure

mod concurrency;
mod middleware;
mod redis;
mod server;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::{Limit, MemoryStore, Policy, RateLimiter};
use floodgate_testkit::now_or_never;
use governor::{DefaultKeyedRateLimiter, Quota};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quota2 {
    /// 100 M/s, burst 1 M: every check is admitted.
    MostlyAllowed,
    /// 1 per hour: after the first check of a key, every check is denied.
    MostlyDenied,
}

impl Quota2 {
    fn name(self) -> &'static str {
        match self {
            Quota2::MostlyAllowed => "allowed",
            Quota2::MostlyDenied => "denied",
        }
    }
    fn floodgate(self) -> Limit {
        match self {
            Quota2::MostlyAllowed => Limit::per_second(100_000_000).burst(1_000_000),
            Quota2::MostlyDenied => Limit::per_hour(1),
        }
    }
    fn governor(self) -> Quota {
        let n = |v: u32| NonZeroU32::new(v).unwrap_or(NonZeroU32::MIN);
        match self {
            Quota2::MostlyAllowed => Quota::per_second(n(100_000_000)).allow_burst(n(1_000_000)),
            Quota2::MostlyDenied => Quota::per_hour(n(1)),
        }
    }
    /// (tokens per second, capacity) for the naive bucket.
    fn naive(self) -> (f64, f64) {
        match self {
            Quota2::MostlyAllowed => (1e8, 1e6),
            Quota2::MostlyDenied => (1.0 / 3600.0, 1.0),
        }
    }
}

/// The textbook implementation people write first.
struct Naive {
    rate: f64,
    capacity: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Naive {
    fn new((rate, capacity): (f64, f64)) -> Self {
        Naive {
            rate,
            capacity,
            buckets: Mutex::new(HashMap::new()),
        }
    }
    fn check(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => buckets
                .entry(key.to_owned())
                .or_insert((self.capacity, now)),
        };
        let elapsed = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + elapsed * self.rate).min(self.capacity);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Floodgate {
    limiter: RateLimiter<MemoryStore>,
    policy: Policy,
}

impl Floodgate {
    fn new(limit: Limit) -> Self {
        let policy = Policy::new("bench", [limit]).unwrap_or_else(|e| panic!("{e}"));
        Floodgate {
            limiter: RateLimiter::new(MemoryStore::builder().max_keys(4_000_000).build()),
            policy,
        }
    }
    #[inline]
    fn check(&self, key: &str) -> bool {
        now_or_never(self.limiter.check(&self.policy, key)).is_ok_and(|d| d.is_allowed())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Floodgate,
    Governor,
    Naive,
}

const PEERS: [Peer; 3] = [Peer::Floodgate, Peer::Governor, Peer::Naive];

struct Limiters {
    floodgate: Floodgate,
    governor: DefaultKeyedRateLimiter<String>,
    naive: Naive,
}

impl Limiters {
    fn new(quota: Quota2) -> Self {
        Limiters {
            floodgate: Floodgate::new(quota.floodgate()),
            governor: DefaultKeyedRateLimiter::keyed(quota.governor()),
            naive: Naive::new(quota.naive()),
        }
    }
    #[inline]
    fn check(&self, peer: Peer, key: &String) -> bool {
        match peer {
            Peer::Floodgate => self.floodgate.check(key),
            Peer::Governor => self.governor.check_key(key).is_ok(),
            Peer::Naive => self.naive.check(key),
        }
    }
}

/// Runs `threads` threads checking random keys for `millis`; returns checks per second.
fn measure(limiters: &Limiters, peer: Peer, keys: &[String], threads: usize, millis: u64) -> f64 {
    harness(keys, threads, millis, |key| limiters.check(peer, key))
}

/// The harness alone: the same loop and key fetch, each key's bytes read (as every limiter
/// hashes them), no limiter. The floor under every peer's row.
fn harness_only(keys: &[String], threads: usize, millis: u64) -> f64 {
    harness(keys, threads, millis, |key| {
        key.bytes().fold(0u8, |a, b| a ^ b) & 1 == 1
    })
}

/// Runs `threads` threads calling `check` on random keys for `millis`; returns calls per
/// second.
fn harness(
    keys: &[String],
    threads: usize,
    millis: u64,
    check: impl Fn(&String) -> bool + Sync,
) -> f64 {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, total, check) = (&stop, &total, &check);
            s.spawn(move || {
                let mut rng =
                    0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let n = keys.len() as u64;
                let mut ops = 0u64;
                let mut allowed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let i = ((u128::from(rng) * u128::from(n)) >> 64) as usize;
                        allowed += u64::from(check(std::hint::black_box(&keys[i])));
                    }
                    ops += 1024;
                }
                std::hint::black_box(allowed);
                total.fetch_add(ops, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_millis(millis));
        stop.store(true, Ordering::Relaxed);
    });
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn keys(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "user:{}",
                100_000 + (i as u64 * 7_919) % 900_000_000 + i as u64 / 900_000
            )
        })
        .collect()
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| {
            statm
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<f64>().ok())
        })
        .unwrap_or(f64::NAN);
    pages * 4096.0
}

/// Resident bytes per key of each peer after inserting `keys` into a fresh limiter. Each
/// limiter stays alive until all are measured, so none reuses another's freed memory.
fn bytes_per_key(keys: &[String]) -> Vec<(Peer, f64)> {
    let quota = Quota2::MostlyDenied;
    let limiters = Limiters::new(quota);
    PEERS
        .iter()
        .map(|&peer| {
            let before = resident_bytes();
            for key in keys {
                std::hint::black_box(limiters.check(peer, key));
            }
            (peer, (resident_bytes() - before) / keys.len() as f64)
        })
        .collect()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} logical CPUs ({}), {} {}",
        topology(),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// `lscpu`'s threads per core, cores per socket and sockets: whether two logical CPUs are
/// SMT siblings sharing one core or separate cores.
fn topology() -> String {
    let output = std::process::Command::new("lscpu").output();
    let text = output
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_owned())
    };
    match (
        field("Thread(s) per core"),
        field("Core(s) per socket"),
        field("Socket(s)"),
    ) {
        (Some(threads), Some(cores), Some(sockets)) => format!(
            "lscpu: {threads} thread(s) per core, {cores} core(s) per socket, {sockets} socket(s)"
        ),
        _ => "topology unknown: lscpu unavailable".into(),
    }
}

struct Cell {
    keys: usize,
    threads: usize,
    quota: Quota2,
    ops: [Vec<f64>; 3],
    harness: Vec<f64>,
    ratio_governor: Vec<f64>,
    ratio_naive: Vec<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    if args.get(1).is_some_and(|a| a == "middleware") {
        middleware::run(
            flag("--runs").map_or(3, |r| r.max(1) as usize),
            flag("--seconds").unwrap_or(3),
        );
        return;
    }
    if args.get(1).is_some_and(|a| a == "server") {
        server::run(
            flag("--runs").map_or(3, |r| r.max(1) as usize),
            flag("--seconds").unwrap_or(3),
        );
        return;
    }
    if args.get(1).is_some_and(|a| a == "concurrency") {
        concurrency::run(
            flag("--runs").map_or(if quick { 1 } else { 5 }, |r| r.max(1) as usize),
            flag("--millis").unwrap_or(if quick { 100 } else { 1_000 }),
        );
        return;
    }
    if args.get(1).is_some_and(|a| a == "redis-lease-worker") {
        redis::lease_worker(&args[2..]);
        return;
    }
    if args.get(1).is_some_and(|a| a == "redis") {
        let runs = flag("--runs").map_or(3, |r| r.max(1) as usize);
        let millis = flag("--millis").unwrap_or(if quick { 300 } else { 2_000 });
        redis::run(runs, millis);
        return;
    }
    let runs = flag("--runs").map_or(if quick { 1 } else { 5 }, |r| r.max(1) as usize);
    let millis = flag("--millis").unwrap_or(if quick { 30 } else { 200 });
    let key_counts: &[usize] = if quick {
        &[1, 10_000, 100_000]
    } else {
        &[1, 10_000, 1_000_000]
    };
    let largest = key_counts[key_counts.len() - 1];

    println!("floodgate benchmark: {runs} interleaved runs of {millis} ms per cell; medians");
    println!("machine: {}\n", machine());

    // Memory first, in a process that has not yet allocated and freed much.
    let memory = bytes_per_key(&keys(largest));

    let mut setups = Vec::new();
    for &count in key_counts {
        let keys = keys(count);
        for quota in [Quota2::MostlyAllowed, Quota2::MostlyDenied] {
            let limiters = Limiters::new(quota);
            // Every key exists in every limiter before timing: steady state, no inserts.
            for key in &keys {
                for peer in PEERS {
                    limiters.check(peer, key);
                }
            }
            setups.push((count, quota, limiters));
        }
    }
    let key_sets: HashMap<usize, Vec<String>> = key_counts.iter().map(|&c| (c, keys(c))).collect();
    let mut cells: Vec<Cell> = Vec::new();
    for (index, &(count, quota, _)) in setups.iter().enumerate() {
        for threads in [1, 2] {
            let empty = || Vec::with_capacity(runs);
            cells.push(Cell {
                keys: count,
                threads,
                quota,
                ops: [empty(), empty(), empty()],
                harness: empty(),
                ratio_governor: empty(),
                ratio_naive: empty(),
            });
            let _ = index;
        }
    }
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        for cell in &mut cells {
            let Some((_, _, limiters)) = setups
                .iter()
                .find(|(c, q, _)| *c == cell.keys && *q == cell.quota)
            else {
                continue;
            };
            let keys = &key_sets[&cell.keys];
            // Rotate the order each run so no peer always goes first.
            let mut measured = [0.0; 3];
            for i in 0..PEERS.len() {
                let p = (i + run) % PEERS.len();
                measured[p] = measure(limiters, PEERS[p], keys, cell.threads, millis);
            }
            for (ops, value) in cell.ops.iter_mut().zip(measured) {
                ops.push(value);
            }
            cell.harness.push(harness_only(keys, cell.threads, millis));
            cell.ratio_governor.push(measured[0] / measured[1]);
            cell.ratio_naive.push(measured[0] / measured[2]);
        }
    }

    println!(
        "| keys | threads | quota | floodgate checks/s | governor checks/s | naive checks/s | floodgate / governor | floodgate / naive | harness only, loops/s |"
    );
    println!("|---:|---:|:---|---:|---:|---:|---:|---:|---:|");
    for cell in &mut cells {
        let [f, g, n] = &mut cell.ops;
        println!(
            "| {} | {} | {} | {} | {} | {} | **{:.2}×** | {:.2}× | {} |",
            cell.keys,
            cell.threads,
            cell.quota.name(),
            human(median(f)),
            human(median(g)),
            human(median(n)),
            median(&mut cell.ratio_governor),
            median(&mut cell.ratio_naive),
            human(median(&mut cell.harness))
        );
    }

    println!("\nresident bytes per key after inserting {largest} keys into a fresh limiter:\n");
    println!("| limiter | bytes per key | vs governor |");
    println!("|:---|---:|---:|");
    let governor = memory
        .iter()
        .find(|(p, _)| *p == Peer::Governor)
        .map_or(f64::NAN, |m| m.1);
    for (peer, bytes) in &memory {
        println!(
            "| {} | {bytes:.1} | {:.2}× |",
            format!("{peer:?}").to_lowercase(),
            bytes / governor
        );
    }
}

pub(crate) fn human(ops: f64) -> String {
    if ops >= 1e6 {
        format!("{:.2} M", ops / 1e6)
    } else {
        format!("{:.0} k", ops / 1e3)
    }
}
