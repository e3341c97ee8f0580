//! A runtime-agnostic real-time sleep: one background thread wakes sleepers at their
//! deadlines. Used when no tokio runtime is running (or the `tokio` feature is off).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub(super) struct Sleep {
    deadline: Option<Instant>,
}

impl Sleep {
    pub(super) fn new(duration: Duration) -> Self {
        // A duration too long for `Instant` never completes, as a sleep that long would not.
        Sleep {
            deadline: Instant::now().checked_add(duration),
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        match timer() {
            Some(timer) => {
                timer.register(deadline, cx.waker());
                Poll::Pending
            }
            None => {
                // No timer thread could be started (the process is out of threads): block
                // this thread rather than spin or never wake.
                std::thread::sleep(deadline - Instant::now());
                Poll::Ready(())
            }
        }
    }
}

struct Timer {
    sleepers: Mutex<Vec<(Instant, Waker)>>,
    changed: Condvar,
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            sleepers: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("floodgate-timer".into())
            .spawn(move || timer.run())
            .ok()?;
        Some(timer)
    })
}

impl Timer {
    fn register(&self, deadline: Instant, waker: &Waker) {
        let mut sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        if !sleepers
            .iter()
            .any(|(at, w)| *at == deadline && w.will_wake(waker))
        {
            sleepers.push((deadline, waker.clone()));
        }
        self.changed.notify_one();
    }

    fn run(&self) {
        let mut sleepers = self.sleepers.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let mut i = 0;
            while i < sleepers.len() {
                if sleepers[i].0 <= now {
                    sleepers.swap_remove(i).1.wake();
                } else {
                    i += 1;
                }
            }
            sleepers = match sleepers.iter().map(|(at, _)| *at).min() {
                Some(next) => {
                    self.changed
                        .wait_timeout(sleepers, next - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self
                    .changed
                    .wait(sleepers)
                    .unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}
