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
/// release it. It yields to the OS scheduler now and then, in case the holder was
/// preempted.
#[cfg(not(loom))]
pub(crate) type ShardLock<T> = spin::mutex::SpinMutex<T, SpinThenYield>;
#[cfg(loom)]
pub(crate) type ShardLock<T> = loom::sync::Mutex<T>;

/// Takes a shard lock.
#[cfg(not(loom))]
#[inline]
pub(crate) fn lock_shard<T>(lock: &ShardLock<T>) -> impl DerefMut<Target = T> + '_ {
    lock.lock()
}

/// Takes a shard lock.
#[cfg(loom)]
pub(crate) fn lock_shard<T>(lock: &ShardLock<T>) -> impl DerefMut<Target = T> + '_ {
    self::lock(lock)
}

/// Spins with the CPU's pause hint, yielding the thread every 64 spins.
#[cfg(not(loom))]
pub(crate) struct SpinThenYield;

#[cfg(not(loom))]
impl spin::RelaxStrategy for SpinThenYield {
    #[inline]
    fn relax() {
        thread_local!(static SPINS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let spins = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if spins % 64 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Locks ignoring poison: no critical section in floodgate leaves state half-written on a
/// panic, so a poisoned lock still guards consistent data.
pub(crate) fn lock<T>(m: &Mutex<T>) -> impl DerefMut<Target = T> + '_ {
    m.lock().unwrap_or_else(|poison| poison.into_inner())
}
