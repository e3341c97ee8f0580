//! Synchronisation primitives, swapped for loom's under `--cfg loom` so the model checker
//! explores the real store code.

use std::ops::DerefMut;

#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

/// The lock of a memory-store shard. Its critical sections are a probe and a few integer
/// operations, so it spins: one atomic read-modify-write to take it, a plain store to
/// release it. Under contention it backs off exponentially and then yields to the OS
/// scheduler, in case the holder was preempted.
#[cfg(not(loom))]
pub(crate) type ShardLock<T> = spin::mutex::SpinMutex<T>;
#[cfg(loom)]
pub(crate) type ShardLock<T> = loom::sync::Mutex<T>;

/// Takes a shard lock.
#[cfg(not(loom))]
#[inline]
pub(crate) fn lock_shard<T>(lock: &ShardLock<T>) -> impl DerefMut<Target = T> + '_ {
    if let Some(guard) = lock.try_lock() {
        return guard;
    }
    lock_contended(lock)
}

/// Takes a contended shard lock with exponential backoff: waiting without touching the
/// lock's cache line lets the holder finish and release without interference.
#[cfg(not(loom))]
#[cold]
fn lock_contended<T>(lock: &ShardLock<T>) -> spin::mutex::SpinMutexGuard<'_, T> {
    let mut backoff = 1u32;
    loop {
        for _ in 0..backoff {
            std::hint::spin_loop();
        }
        if let Some(guard) = lock.try_lock() {
            return guard;
        }
        if backoff < 64 {
            backoff *= 2;
        } else {
            std::thread::yield_now();
        }
    }
}

/// Takes a shard lock.
#[cfg(loom)]
pub(crate) fn lock_shard<T>(lock: &ShardLock<T>) -> impl DerefMut<Target = T> + '_ {
    self::lock(lock)
}

/// Locks ignoring poison: no critical section in floodgate leaves state half-written on a
/// panic, so a poisoned lock still guards consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> impl DerefMut<Target = T> + '_ {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}
