//! Soak: two threads keep 200 000 keys at saturation on the memory store; once every key
//! exists, resident memory stays flat and decisions per CPU second do not decay. 6 s by default;
//! `FLOODGATE_SOAK_SECS=600 cargo test --release -p floodgate --test soak` for ten minutes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodgate::{MemoryStore, Policy, Store};
use floodgate_testkit::now_or_never;
use floodgate_testkit::soak::{self, Sample};

const KEYS: u64 = 200_000;

#[test]
fn the_memory_store_stays_flat_under_a_long_saturating_load() {
    let Some(_) = soak::resident_bytes() else {
        eprintln!("no /proc/self/statm: resident memory cannot be sampled here");
        return;
    };
    let run = soak::duration(Duration::from_secs(6));
    let interval = run / 12;
    // 10 per second per key, burst 2: each key is visited far more often than it refills.
    let policy = Policy::parse("soak", "10/s burst 2").unwrap();
    let store = MemoryStore::builder().max_keys(1_000_000).build();
    let decisions = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let samples = std::thread::scope(|scope| {
        for thread in 0..2u64 {
            let (store, policy, decisions, stop) = (&store, &policy, &decisions, &stop);
            scope.spawn(move || {
                let mut i = thread;
                let mut key = String::new();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1_000 {
                        i = (i + 7_919) % KEYS;
                        key.clear();
                        key.push_str("user:");
                        key.push_str(itoa(i).as_str());
                        now_or_never(store.acquire(policy, &key, 1)).unwrap();
                    }
                    decisions.fetch_add(1_000, Ordering::Relaxed);
                }
            });
        }
        let mut samples = Vec::new();
        let mut cpu = soak::CpuClock::new(&[]);
        for _ in 0..12 {
            std::thread::sleep(interval);
            samples.push(Sample {
                rate: cpu.rate(decisions.load(Ordering::Relaxed)),
                memory: soak::resident_bytes().unwrap_or(0),
            });
        }
        stop.store(true, Ordering::Relaxed);
        samples
    });
    let verdict = soak::judge(&samples, 0.10, soak::MIN_RATE_RATIO)
        .unwrap_or_else(|e| panic!("{e}\n{samples:?}"));
    eprintln!(
        "memory store soak ({run:?}, {} keys live): {verdict}",
        store.len()
    );
}

fn itoa(n: u64) -> String {
    n.to_string()
}
