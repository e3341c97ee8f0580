//! `cargo bench -p floodgate-bench -- concurrency`: acquire + release pairs per second of a
//! concurrency limit — floodgate's memory store (through `RateLimiter::acquire` and the
//! permit's drop) beside tower's in-process `ConcurrencyLimit` (a semaphore: `ready` takes a
//! permit, the response releases it), on 1 and 2 threads; and floodgate's Redis store, 64
//! tasks on one client thread (each pair two permit operations), with batching on (the
//! default: operations waiting for the connection share one script call) and off (one call
//! each). Interleaved runs, medians.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodgate::{Concurrency, RateLimiter};
use floodgate_redis::RedisStore;
use floodgate_testkit::now_or_never;
use floodgate_testkit::redis_server::RedisServer;
use tower::{Service, ServiceExt};

use crate::{human, machine, median};

/// Never full: every acquire is granted, so the rows time the bookkeeping alone.
const MAX: u32 = 1_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Floodgate(usize),
    Tower(usize),
    /// Batching on or off.
    Redis(bool),
}

pub(crate) fn run(runs: usize, millis: u64) {
    println!(
        "concurrency limits: acquire + release pairs per second, {runs} interleaved runs of {millis} ms; medians"
    );
    println!("machine: {}\n", machine());
    let limiter = Arc::new(RateLimiter::in_memory());
    let limit = Concurrency::named("bench", MAX).unwrap();
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = |batching: bool| {
        Arc::new(RateLimiter::new(
            runtime
                .block_on(
                    RedisStore::builder(&server.url())
                        .timeout(Duration::from_secs(2))
                        .batching(batching)
                        .build(),
                )
                .unwrap(),
        ))
    };
    let (batched, single) = (redis(true), redis(false));
    let rows = [
        Row::Floodgate(1),
        Row::Tower(1),
        Row::Floodgate(2),
        Row::Tower(2),
        Row::Redis(true),
        Row::Redis(false),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut ratios: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let mut measured = [0.0; 6];
        for i in 0..rows.len() {
            let r = (i + run) % rows.len();
            measured[r] = match rows[r] {
                Row::Floodgate(threads) => memory(&limiter, &limit, threads, millis),
                Row::Tower(threads) => tower_limit(threads, millis),
                Row::Redis(true) => runtime.block_on(on_redis(&batched, &limit, millis)),
                Row::Redis(false) => runtime.block_on(on_redis(&single, &limit, millis)),
            };
        }
        for (result, value) in results.iter_mut().zip(measured) {
            result.push(value);
        }
        ratios[0].push(measured[0] / measured[1]);
        ratios[1].push(measured[2] / measured[3]);
        ratios[2].push(measured[4] / measured[5]);
    }
    println!("| limiter | threads | acquire + release pairs/s | floodgate / tower |");
    println!("|:---|---:|---:|---:|");
    let labels = [
        ("floodgate memory store", "1"),
        ("tower ConcurrencyLimit", "1"),
        ("floodgate memory store", "2"),
        ("tower ConcurrencyLimit", "2"),
        (
            "floodgate Redis store, batching on (default; 64 tasks)",
            "1",
        ),
        (
            "floodgate Redis store, batching off (64 tasks, 2 calls a pair)",
            "1",
        ),
    ];
    for (i, (label, threads)) in labels.iter().enumerate() {
        let ratio = match i {
            0 => format!("**{:.2}×**", median(&mut ratios[0])),
            2 => format!("**{:.2}×**", median(&mut ratios[1])),
            _ => String::new(),
        };
        println!(
            "| {label} | {threads} | {} | {ratio} |",
            human(median(&mut results[i]))
        );
    }
    let stats = batched.store().stats();
    println!(
        "\nRedis, batching on / off, pairs per second (median of per-run ratios): **{:.2}×**; \
         batching on, permit operations per script call: {:.1}",
        median(&mut ratios[2]),
        stats.permit_operations as f64 / stats.permit_calls.max(1) as f64
    );
    println!(
        "\ntower's limit is one in-process semaphore for the whole service (no keys, no lease, \
         no other process); floodgate's is per key, leased, and on Redis shared by every process."
    );
}

/// Pairs per second on `threads` threads, each on its own key.
fn memory(limiter: &Arc<RateLimiter>, limit: &Concurrency, threads: usize, millis: u64) -> f64 {
    timed(threads, millis, |thread, stop, count| {
        let key = format!("worker:{thread}");
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                let permit = now_or_never(limiter.acquire(limit, &key)).unwrap();
                drop(std::hint::black_box(permit));
            }
            n += 256;
        }
        count.fetch_add(n, Ordering::Relaxed);
    })
}

/// Pairs per second through tower's `ConcurrencyLimit` over a service that answers at once.
fn tower_limit(threads: usize, millis: u64) -> f64 {
    let inner = tower::service_fn(|()| async { Ok::<_, Infallible>(()) });
    let service = tower::limit::ConcurrencyLimit::new(inner, MAX as usize);
    timed(threads, millis, |_, stop, count| {
        let mut service = service.clone();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..256 {
                let ready = now_or_never(service.ready()).unwrap();
                let response = ready.call(());
                now_or_never(response).unwrap();
            }
            n += 256;
        }
        count.fetch_add(n, Ordering::Relaxed);
    })
}

fn timed(threads: usize, millis: u64, work: impl Fn(usize, &AtomicBool, &AtomicU64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..threads {
            let (stop, count, work) = (&stop, &count, &work);
            s.spawn(move || work(thread, stop, count));
        }
        std::thread::sleep(Duration::from_millis(millis));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Pairs per second on Redis: 64 tasks on this thread, each acquiring and releasing on its
/// own key.
async fn on_redis(limiter: &Arc<RateLimiter<RedisStore>>, limit: &Concurrency, millis: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let (limiter, limit) = (Arc::clone(limiter), limit.clone());
            let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
            tokio::spawn(async move {
                let key = format!("task:{task}");
                while !stop.load(Ordering::Relaxed) {
                    let permit = limiter
                        .acquire(&limit, &key)
                        .await
                        .unwrap()
                        .permit()
                        .unwrap();
                    permit.release().await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(millis)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}
