//! Background job throttling: workers call a fragile upstream no faster than it can take,
//! then write to a legacy database no more than a few at a time.
//!
//! Stage 1, a rate: a simulated upstream listens on `BIND` (default `127.0.0.1:3000`) and
//! takes 10 calls a second, answering `429` with `Retry-After` past that. Eight workers work
//! through 60 jobs, each waiting for capacity with `until_ready` before calling it, so the
//! upstream never sees more than its limit; if it answers 429 anyway (its limit is lower than
//! we were told, or another fleet shares it), every worker backs off for the `Retry-After` it
//! sent.
//!
//! Stage 2, a concurrency limit: a simulated legacy database (a TCP server next to the
//! upstream) is overwhelmed by calls *in flight*, so every write holds a permit of the
//! `legacy-db` limit (3 at once) from `acquire_wait`. With `REDIS_URL` set both limits live in
//! Redis, and `PROCESSES=N` runs stage 2 in N worker processes (this example started again):
//! the database still never sees more than 3 writes at once, across all of them.
//!
//! ```text
//! cargo run -p floodgate-tower --example job_throttle
//! REDIS_URL=redis://127.0.0.1:6379 PROCESSES=3 cargo run -p floodgate-tower --example job_throttle
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodgate::{Clock, Concurrency, ConcurrencyStore, MemoryStore, Policy, RateLimiter, Store};

/// What the upstream answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Done,
    TooMany { retry_after: Duration },
}

/// Something the workers call.
pub(crate) trait Upstream: Clone + Send + Sync + 'static {
    fn call(&self) -> impl Future<Output = Reply> + Send;
}

/// The simulated fragile upstream: admits its own limit, refuses the excess with 429.
#[derive(Clone)]
pub(crate) struct Fragile<C: Clock> {
    limiter: Arc<RateLimiter<MemoryStore<C>>>,
    policy: Policy,
    pub(crate) served: Arc<AtomicU64>,
    pub(crate) refused: Arc<AtomicU64>,
    /// Calls that came after a refusal but before the `Retry-After` it gave.
    pub(crate) impatient: Arc<AtomicU64>,
    /// The last refusal: when, and until when it asked callers to wait.
    refusal: Arc<Mutex<Option<(Duration, Duration)>>>,
}

impl<C: Clock> Fragile<C> {
    pub(crate) fn new(clock: C, limit: &str) -> Result<Self, floodgate::Error> {
        Ok(Fragile {
            limiter: Arc::new(RateLimiter::in_memory_with_clock(clock)),
            policy: Policy::parse("upstream", limit)?,
            served: Arc::default(),
            refused: Arc::default(),
            impatient: Arc::default(),
            refusal: Arc::default(),
        })
    }
}

impl<C: Clock> Upstream for Fragile<C> {
    async fn call(&self) -> Reply {
        let now = self.limiter.store().clock().now();
        if let Some((at, until)) = *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) {
            if now > at && now < until {
                self.impatient.fetch_add(1, Ordering::Relaxed);
            }
        }
        match self.limiter.check(&self.policy, "all").await {
            Ok(d) if d.is_allowed() => {
                self.served.fetch_add(1, Ordering::Relaxed);
                Reply::Done
            }
            Ok(d) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((now, now + d.retry_after()));
                Reply::TooMany {
                    retry_after: d.retry_after(),
                }
            }
            Err(_) => Reply::TooMany {
                retry_after: Duration::from_secs(1),
            },
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) done: u64,
    pub(crate) backoffs: u64,
}

/// `workers` tasks work through `jobs` jobs: wait for a token of `policy` (the upstream's
/// published limit) on `limiter`, call `upstream`; on 429 every worker waits out its
/// `Retry-After` and the job is tried again.
pub(crate) async fn run_jobs<S: Store, U: Upstream>(
    limiter: Arc<RateLimiter<S>>,
    policy: Policy,
    upstream: U,
    jobs: u64,
    workers: usize,
) -> Report {
    let next_job = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let backoffs = Arc::new(AtomicU64::new(0));
    // Shared back-off: no worker calls before this time (on the limiter's clock).
    let paused_until = Arc::new(Mutex::new(Duration::ZERO));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (limiter, policy, upstream) =
                (Arc::clone(&limiter), policy.clone(), upstream.clone());
            let (next_job, done, backoffs, paused_until) = (
                Arc::clone(&next_job),
                Arc::clone(&done),
                Arc::clone(&backoffs),
                Arc::clone(&paused_until),
            );
            tokio::spawn(async move {
                while next_job.fetch_add(1, Ordering::Relaxed) < jobs {
                    loop {
                        let clock = limiter.store().clock();
                        if limiter.until_ready(&policy, "upstream", 1).await.is_err() {
                            clock.sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        // Checked after the wait for a token: another worker may have been
                        // told to back off meanwhile. Then the token is dropped, not used.
                        let until = *paused_until.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(wait) = until.checked_sub(clock.now()).filter(|w| !w.is_zero())
                        {
                            clock.sleep(wait).await;
                            continue;
                        }
                        match upstream.call().await {
                            Reply::Done => break,
                            Reply::TooMany { retry_after } => {
                                backoffs.fetch_add(1, Ordering::Relaxed);
                                let until = clock.now() + retry_after;
                                let mut paused =
                                    paused_until.lock().unwrap_or_else(|p| p.into_inner());
                                *paused = (*paused).max(until);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    Report {
        done: done.load(Ordering::Relaxed),
        backoffs: backoffs.load(Ordering::Relaxed),
    }
}

/// The legacy database: at most `max` writes in flight, which it cannot enforce itself.
pub(crate) fn legacy_db(max: u32) -> Result<Concurrency, floodgate::Error> {
    // A worker that dies mid-write frees its slot within 10 s.
    Concurrency::named("legacy-db", max)?.lease(Duration::from_secs(10))
}

/// Something that takes writes (the simulated legacy database, in-process or over TCP).
pub(crate) trait Database: Clone + Send + Sync + 'static {
    fn write(&self) -> impl Future<Output = ()> + Send;
}

/// The simulated legacy database: each write takes `hold`; it counts the writes in flight
/// and the most it ever saw at once.
#[derive(Clone)]
pub(crate) struct Legacy {
    hold: Duration,
    in_flight: Arc<AtomicU64>,
    pub(crate) most: Arc<AtomicU64>,
    pub(crate) writes: Arc<AtomicU64>,
}

impl Legacy {
    pub(crate) fn new(hold: Duration) -> Self {
        Legacy {
            hold,
            in_flight: Arc::default(),
            most: Arc::default(),
            writes: Arc::default(),
        }
    }

    /// Serves writes over TCP on `listener`: one connection, one write, answered `ok`.
    pub(crate) async fn serve(self, listener: tokio::net::TcpListener) {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            let db = self.clone();
            tokio::spawn(async move {
                db.write().await;
                let _ = stream.write_all(b"ok").await;
            });
        }
    }
}

impl Database for Legacy {
    async fn write(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.hold).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The legacy database over TCP (from a worker process).
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) addr: std::net::SocketAddr,
}

impl Database for Remote {
    async fn write(&self) {
        use tokio::io::AsyncReadExt;
        if let Ok(mut stream) = tokio::net::TcpStream::connect(self.addr).await {
            let mut reply = [0u8; 2];
            let _ = stream.read_exact(&mut reply).await;
        }
    }
}

/// `workers` tasks write `jobs` results to `db`, each write under a permit of `limit`
/// (waiting for one with `acquire_wait`, released as soon as the write returns).
pub(crate) async fn write_results<S: ConcurrencyStore, D: Database>(
    limiter: Arc<RateLimiter<S>>,
    limit: Concurrency,
    db: D,
    jobs: u64,
    workers: usize,
) -> u64 {
    let next_job = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (limiter, limit, db) = (Arc::clone(&limiter), limit.clone(), db.clone());
            let (next_job, done) = (Arc::clone(&next_job), Arc::clone(&done));
            tokio::spawn(async move {
                while next_job.fetch_add(1, Ordering::Relaxed) < jobs {
                    let permit = loop {
                        match limiter
                            .acquire_wait(&limit, "legacy-db", Duration::from_secs(60))
                            .await
                        {
                            Ok(permit) => break permit,
                            // Timed out, or the store failed: try again shortly.
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    };
                    db.write().await;
                    // An unreleased permit would end with its lease anyway.
                    let _ = permit.release().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    done.load(Ordering::Relaxed)
}

/// The upstream over HTTP: `GET /call` on `addr`, a minimal HTTP/1.1 client.
#[derive(Clone)]
struct Http {
    addr: std::net::SocketAddr,
}

impl Upstream for Http {
    async fn call(&self) -> Reply {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream
                .write_all(b"GET /call HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n")
                .await?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let Ok(response) = exchange.await else {
            return Reply::TooMany {
                retry_after: Duration::from_secs(1),
            };
        };
        if response.starts_with("HTTP/1.1 200") {
            return Reply::Done;
        }
        let seconds = response
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after:")
                    .map(|v| v.trim().to_owned())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Reply::TooMany {
            retry_after: Duration::from_secs(seconds),
        }
    }
}

/// Stage 2 in a worker process started by `main` (`JOB_THROTTLE_DB` set): its share of the
/// writes, on the Redis store.
async fn worker_process(db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL")?;
    let jobs: u64 = std::env::var("JOB_THROTTLE_JOBS")?.parse()?;
    let store = floodgate_redis::RedisStore::connect(&url).await?;
    let limiter = Arc::new(RateLimiter::new(store));
    let db = Remote { addr: db.parse()? };
    let done = write_results(limiter, legacy_db(3)?, db, jobs, 4).await;
    println!("worker {}: {done} writes", std::process::id());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use axum::routing::get;
    if let Ok(db) = std::env::var("JOB_THROTTLE_DB") {
        return worker_process(&db).await;
    }
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let fragile = Fragile::new(floodgate::MonotonicClock::new(), "10/s burst 2")?;
    let handler = {
        let fragile = fragile.clone();
        move || async move {
            match fragile.call().await {
                Reply::Done => (
                    axum::http::StatusCode::OK,
                    [("retry-after", "0".to_owned())],
                ),
                Reply::TooMany { retry_after } => (
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after.as_secs().max(1).to_string())],
                ),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    let addr = listener.local_addr()?;
    println!("job_throttle: fragile upstream (10/s) listening on http://{addr}");
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().route("/call", get(handler))).await
    });

    let policy = Policy::parse("upstream", "10/s burst 2")?;
    let started = std::time::Instant::now();
    let report = match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = floodgate_redis::RedisStore::connect(&url).await?;
            run_jobs(
                Arc::new(RateLimiter::new(store)),
                policy,
                Http { addr },
                60,
                8,
            )
            .await
        }
        Err(_) => {
            run_jobs(
                Arc::new(RateLimiter::in_memory()),
                policy,
                Http { addr },
                60,
                8,
            )
            .await
        }
    };
    println!(
        "{} jobs in {:.1} s by 8 workers; the upstream served {} and refused {} ({} back-offs)",
        report.done,
        started.elapsed().as_secs_f64(),
        fragile.served.load(Ordering::Relaxed),
        fragile.refused.load(Ordering::Relaxed),
        report.backoffs
    );

    // Stage 2: 60 writes to the legacy database, at most 3 in flight.
    let db = Legacy::new(Duration::from_millis(50));
    let db_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let db_addr = db_listener.local_addr()?;
    tokio::spawn(db.clone().serve(db_listener));
    let started = std::time::Instant::now();
    let processes: u64 = std::env::var("PROCESSES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    match std::env::var("REDIS_URL") {
        Ok(_) if processes > 1 => {
            let exe = std::env::current_exe()?;
            let children: Vec<_> = (0..processes)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .env("JOB_THROTTLE_DB", db_addr.to_string())
                        .env("JOB_THROTTLE_JOBS", (60 / processes).to_string())
                        .spawn()
                })
                .collect::<Result<_, _>>()?;
            for mut child in children {
                child.wait()?;
            }
        }
        Ok(url) => {
            let store = floodgate_redis::RedisStore::connect(&url).await?;
            let limiter = Arc::new(RateLimiter::new(store));
            write_results(limiter, legacy_db(3)?, Remote { addr: db_addr }, 60, 8).await;
        }
        Err(_) => {
            let limiter = Arc::new(RateLimiter::in_memory());
            write_results(limiter, legacy_db(3)?, Remote { addr: db_addr }, 60, 8).await;
        }
    }
    println!(
        "{} writes to the legacy database in {:.1} s from {processes} process(es); at most {} \
         in flight at once (limit 3)",
        db.writes.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        db.most.load(Ordering::Relaxed)
    );
    Ok(())
}
