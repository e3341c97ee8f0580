//! `until_ready` on the real clock: tokio's timer inside a runtime, the timer thread on
//! any other executor.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use floodgate::{Policy, RateLimiter};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor with no timer of its own: parks the thread until woken.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn until_ready_waits_on_the_timer_thread_without_a_runtime() {
    let limiter = RateLimiter::in_memory();
    let policy = Policy::parse("jobs", "20/s burst 1").unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        assert!(
            block_on(limiter.until_ready(&policy, "worker", 1))
                .unwrap()
                .is_allowed()
        );
    }
    // Two waits of 50 ms each, at least.
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn until_ready_waits_on_tokio_inside_a_runtime() {
    let limiter = RateLimiter::in_memory();
    let policy = Policy::parse("jobs", "20/s burst 1").unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        assert!(
            limiter
                .until_ready(&policy, "worker", 1)
                .await
                .unwrap()
                .is_allowed()
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_facade_and_its_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let limiter = RateLimiter::in_memory();
    send_sync(&limiter);
    let policy = Policy::parse("p", "1/s").unwrap();
    send(&limiter.check(&policy, "k"));
    send(&limiter.until_ready(&policy, "k", 1));
    send(&limiter.until_ready_timeout(&policy, "k", 1, Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn tokio_clock_follows_paused_time() {
    use floodgate::TokioClock;
    let limiter = RateLimiter::in_memory_with_clock(TokioClock::new());
    let policy = Policy::parse("jobs", "1/h").unwrap();
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        limiter.until_ready(&policy, "worker", 1).await.unwrap();
    }
    // Two hours of waiting, in no real time.
    assert_eq!(start.elapsed(), Duration::from_secs(7_200));
}
