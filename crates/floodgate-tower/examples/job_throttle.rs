//! Background job throttling: workers call a fragile upstream no faster than it can take.
//!
//! A simulated upstream listens on `BIND` (default `127.0.0.1:3000`) and takes 10 calls a
//! second, answering `429` with `Retry-After` past that. Eight workers work through 60 jobs,
//! each waiting for capacity with `until_ready` before calling it, so the upstream never
//! sees more than its limit; if it answers 429 anyway (its limit is lower than we were told,
//! or another fleet shares it), every worker backs off for the `Retry-After` it sent. With
//! `REDIS_URL` set the workers' limiter lives in Redis, so worker processes on several
//! machines share the upstream's budget.
//!
//! ```text
//! cargo run -p floodgate-tower --example job_throttle
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodgate::{Clock, MemoryStore, Policy, RateLimiter, Store};

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use axum::routing::get;
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
    Ok(())
}
