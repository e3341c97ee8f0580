//! Clocks: where "now" comes from, and how to wait.
//!
//! Decisions need a fast monotonic "now"; `until_ready` needs to sleep. Both belong to the
//! clock, so a test that drives [`ManualClock`] by hand also decides when waiters wake.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::sync::{AtomicU64, Mutex, Ordering, lock};

mod timer;

/// Latest time a clock reports: 2^62 ns (about 146 years). Keeps every TAT computed from it
/// far from `u64` overflow.
pub(crate) const MAX_NANOS: u64 = 1 << 62;

/// A source of monotonic time that can also sleep.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Nanoseconds since this clock's epoch.
    fn now_nanos(&self) -> u64;

    /// Time since this clock's epoch.
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    /// A future that completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static;
}

/// The default clock: the CPU's time-stamp counter where it is reliable (via `quanta`,
/// about 10 ns per read), the OS monotonic clock elsewhere.
///
/// It sleeps on tokio's timer when called inside a tokio runtime (feature `tokio`), and on
/// a shared background timer thread otherwise, so `until_ready` works on any executor.
#[derive(Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    start: u64,
}

impl MonotonicClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        MonotonicClock { clock, start }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MonotonicClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonotonicClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        self.clock
            .delta_as_nanos(self.start, self.clock.raw())
            .min(MAX_NANOS)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current().is_ok() {
            return RealSleep::Tokio(Box::pin(tokio::time::sleep(duration)));
        }
        RealSleep::Thread(timer::Sleep::new(duration))
    }
}

/// Real-time sleep: tokio's timer inside a tokio runtime, a timer thread elsewhere.
enum RealSleep {
    #[cfg(feature = "tokio")]
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Thread(timer::Sleep),
}

impl Future for RealSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut *self {
            #[cfg(feature = "tokio")]
            RealSleep::Tokio(sleep) => sleep.as_mut().poll(cx),
            RealSleep::Thread(sleep) => Pin::new(sleep).poll(cx),
        }
    }
}

/// tokio's clock (feature `tokio`): decisions and waits follow `tokio::time`, so tests using
/// tokio's paused time (`#[tokio::test(start_paused = true)]`) control floodgate too.
/// Construct it inside a tokio runtime.
#[cfg(feature = "tokio")]
#[derive(Clone, Debug)]
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

#[cfg(feature = "tokio")]
impl TokioClock {
    /// A clock whose epoch is tokio's now.
    pub fn new() -> Self {
        TokioClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

#[cfg(feature = "tokio")]
impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "tokio")]
impl Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        duration_nanos(tokio::time::Instant::now().saturating_duration_since(self.epoch))
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(duration)
    }
}

/// A clock that moves only when told to: for tests, of floodgate and of your own code.
///
/// It starts at zero. [`advance`](ManualClock::advance) and [`set`](ManualClock::set) move
/// it (`set` may move it backwards) and wake every sleeper whose time has come, so code
/// waiting in `until_ready` resumes exactly when capacity appears, without real sleeping.
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use floodgate::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1500));
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Default)]
struct ManualInner {
    nanos: AtomicU64,
    sleepers: Mutex<Vec<(u64, Waker)>>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `step` and wakes the sleepers that are due.
    pub fn advance(&self, step: Duration) {
        let step = duration_nanos(step);
        let mut now = self.inner.nanos.load(Ordering::Acquire);
        loop {
            let next = now.saturating_add(step).min(MAX_NANOS);
            match self
                .inner
                .nanos
                .compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        self.wake_due();
    }

    /// Sets the clock to `since_epoch`, forwards or backwards, and wakes the sleepers that
    /// are due.
    pub fn set(&self, since_epoch: Duration) {
        self.inner
            .nanos
            .store(duration_nanos(since_epoch), Ordering::Release);
        self.wake_due();
    }

    /// The current time since the epoch.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    fn now_nanos(&self) -> u64 {
        self.inner.nanos.load(Ordering::Acquire)
    }

    fn wake_due(&self) {
        let now = self.now_nanos();
        let due: Vec<Waker> = {
            let mut sleepers = lock(&self.inner.sleepers);
            let (due, waiting) = std::mem::take(&mut *sleepers)
                .into_iter()
                .partition(|(at, _)| *at <= now);
            *sleepers = waiting;
            due.into_iter().map(|(_, waker)| waker).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .min(MAX_NANOS)
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        ManualClock::now_nanos(self)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let deadline = self.now_nanos().saturating_add(duration_nanos(duration));
        ManualSleep {
            clock: self.clone(),
            deadline,
        }
    }
}

struct ManualSleep {
    clock: ManualClock,
    deadline: u64,
}

impl Future for ManualSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now_nanos() >= self.deadline {
            return Poll::Ready(());
        }
        let mut sleepers = lock(&self.clock.inner.sleepers);
        // Checked again under the lock: `advance` stores the time before taking it, so either
        // we see the new time here or `advance` sees our waker.
        if self.clock.now_nanos() >= self.deadline {
            return Poll::Ready(());
        }
        let waker = cx.waker();
        if !sleepers
            .iter()
            .any(|(at, w)| *at == self.deadline && w.will_wake(waker))
        {
            sleepers.push((self.deadline, waker.clone()));
        }
        Poll::Pending
    }
}
