//! The `job_throttle` example on tokio's paused clock: the upstream never sees more than its
//! limit, and when it is stricter than the workers believed, they back off as it says.

#[path = "../../examples/job_throttle.rs"]
#[allow(dead_code)]
mod example;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floodgate::{Policy, RateLimiter, TokioClock};

#[tokio::test(start_paused = true)]
async fn workers_never_exceed_the_upstreams_limit() {
    let clock = TokioClock::new();
    let upstream = example::Fragile::new(clock.clone(), "10/s burst 2").unwrap();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let started = tokio::time::Instant::now();
    let report = example::run_jobs(
        limiter,
        Policy::parse("upstream", "10/s burst 2").unwrap(),
        upstream.clone(),
        40,
        8,
    )
    .await;
    assert_eq!(report.done, 40);
    assert_eq!(
        upstream.refused.load(Ordering::Relaxed),
        0,
        "the upstream had to refuse calls"
    );
    assert_eq!(upstream.served.load(Ordering::Relaxed), 40);
    // Two at once, then one every 100 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(3_800));
}

#[tokio::test(start_paused = true)]
async fn workers_back_off_when_the_upstream_is_stricter_than_promised() {
    let clock = TokioClock::new();
    let upstream = example::Fragile::new(clock.clone(), "2/s burst 1").unwrap();
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(clock));
    let started = tokio::time::Instant::now();
    let report = example::run_jobs(
        limiter,
        Policy::parse("upstream", "10/s burst 2").unwrap(),
        upstream.clone(),
        20,
        4,
    )
    .await;
    assert_eq!(report.done, 20);
    assert_eq!(upstream.served.load(Ordering::Relaxed), 20);
    // The upstream did refuse (the workers were promised 10/s), and after each refusal no
    // worker called again before the Retry-After it gave.
    assert!(upstream.refused.load(Ordering::Relaxed) > 0);
    assert_eq!(
        upstream.impatient.load(Ordering::Relaxed),
        0,
        "a worker ignored Retry-After"
    );
    // The upstream's own pace bounds the run: 20 calls at 2/s take at least 9.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(9_500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn the_legacy_database_never_sees_more_writes_in_flight_than_its_limit() {
    let db = example::Legacy::new(Duration::from_millis(50));
    let limiter = Arc::new(RateLimiter::in_memory_with_clock(TokioClock::new()));
    let started = tokio::time::Instant::now();
    let done =
        example::write_results(limiter, example::legacy_db(3).unwrap(), db.clone(), 40, 8).await;
    assert_eq!(done, 40);
    assert_eq!(db.writes.load(Ordering::Relaxed), 40);
    // Eight workers want more than three slots: all three are used, never a fourth.
    assert_eq!(db.most.load(Ordering::SeqCst), 3);
    // 40 writes of 50 ms, three at a time.
    assert!(
        started.elapsed() >= Duration::from_millis(14 * 50),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn worker_processes_on_redis_share_the_legacy_databases_limit() {
    use floodgate_testkit::redis_server::RedisServer;
    let server = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = example::Legacy::new(Duration::from_millis(20));
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(db.clone().serve(listener));
        addr
    });
    let exe = std::env::current_exe().unwrap();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "job_throttle::legacy_db_worker",
                    "--ignored",
                    "--nocapture",
                ])
                .env("FLOODGATE_LEGACY_DB", format!("{} {addr}", server.url()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "worker failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("WRITES 15"),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert_eq!(db.writes.load(Ordering::Relaxed), 45);
    let most = db.most.load(Ordering::SeqCst);
    assert!(
        most <= 3,
        "{most} writes in flight at once across the processes, limit 3"
    );
    assert!(
        most >= 2,
        "twelve workers never used the limit: {most} at most"
    );
    drop(runtime);
}

/// One worker process of the test above: four workers, fifteen writes, on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process of worker_processes_on_redis_share_the_legacy_databases_limit"]
async fn legacy_db_worker() {
    let Ok(spec) = std::env::var("FLOODGATE_LEGACY_DB") else {
        return;
    };
    let (url, addr) = spec.split_once(' ').unwrap();
    let store = floodgate_redis::RedisStore::connect(url).await.unwrap();
    let limiter = Arc::new(RateLimiter::new(store));
    let db = example::Remote {
        addr: addr.parse().unwrap(),
    };
    let done = example::write_results(limiter, example::legacy_db(3).unwrap(), db, 15, 4).await;
    println!("WRITES {done}");
}
