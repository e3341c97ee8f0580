//! Soak runs: a steady load over a stable key set for a bounded time, sampled every interval,
//! checked for the two ways a long-running limiter degrades — memory that keeps growing
//! once the key set is stable, and throughput that decays.
//!
//! Throughput is measured per CPU second ([`CpuClock`]), not per wall-clock second: on a
//! shared machine a neighbour can take the CPU away for seconds, which wall-clock rates
//! mistake for decay. The work a decision costs does not change when the machine gets
//! busy; it grows when the limiter degrades (longer probe chains, a growing sweep, a leak).
//!
//! The default test command runs short soaks; `FLOODGATE_SOAK_SECS` makes them long (for
//! example `FLOODGATE_SOAK_SECS=600` for ten minutes).

use std::time::Duration;

/// One sample of a soak run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Decisions per CPU second over the interval (see [`CpuClock`]).
    pub rate: f64,
    /// The memory being watched (process RSS, Redis `used_memory`, …), in bytes.
    pub memory: u64,
}

/// The length of a soak: `FLOODGATE_SOAK_SECS`, else `default`.
pub fn duration(default: Duration) -> Duration {
    std::env::var("FLOODGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// This process's resident memory in bytes (Linux; `None` elsewhere).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// CPU time used by a process so far (user + system), in seconds, from `/proc/<pid>/stat`
/// (Linux; `None` elsewhere or when the process is gone). `pid = None` is this process.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted from
    // the last `)`. What follows starts at field 3; utime and stime are fields 14 and 15.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // `/proc` counts in USER_HZ, 100 per second on Linux. A wrong value would scale every
    // rate alike, and soaks compare rates with each other only.
    Some((utime + stime) as f64 / 100.0)
}

/// The CPU time spent by the processes doing a soak's work (this one, plus any servers it
/// drives, such as a `redis-server`), for rates per CPU second. Where `/proc` is missing it
/// falls back to wall-clock time.
#[derive(Debug)]
pub struct CpuClock {
    pids: Vec<u32>,
    started: std::time::Instant,
    last: (f64, u64),
}

impl CpuClock {
    /// A clock summing this process's CPU time and that of `servers`.
    pub fn new(servers: &[u32]) -> Self {
        let mut clock = Self {
            pids: servers.to_vec(),
            started: std::time::Instant::now(),
            last: (0.0, 0),
        };
        clock.last = (clock.now(), 0);
        clock
    }

    /// Decisions per CPU second since the previous call (or since `new`), given the total
    /// count of decisions so far. NaN when no CPU time passed (the judge skips it).
    pub fn rate(&mut self, decisions: u64) -> f64 {
        let now = (self.now(), decisions);
        let (cpu, done) = (now.0 - self.last.0, now.1.saturating_sub(self.last.1));
        self.last = now;
        if cpu > 0.0 {
            done as f64 / cpu
        } else {
            f64::NAN
        }
    }

    /// Seconds of CPU used so far by the watched processes (or of wall-clock time since
    /// `new`, where `/proc` cannot be read).
    pub fn now(&self) -> f64 {
        let cpu = std::iter::once(None)
            .chain(self.pids.iter().copied().map(Some))
            .map(cpu_seconds)
            .sum::<Option<f64>>();
        cpu.unwrap_or_else(|| self.started.elapsed().as_secs_f64())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// What a soak run showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Memory at the end of the warm-up (the first third of the samples).
    pub memory_after_warmup: u64,
    /// The most memory seen after the warm-up.
    pub memory_peak: u64,
    /// Median decisions per CPU second in the second third of the samples.
    pub early_rate: f64,
    /// Median decisions per CPU second in the last third.
    pub late_rate: f64,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory {:.1} MB after warm-up, peak {:.1} MB; {:.0} decisions per CPU second early, {:.0} late",
            self.memory_after_warmup as f64 / 1e6,
            self.memory_peak as f64 / 1e6,
            self.early_rate,
            self.late_rate
        )
    }
}

/// How far the late rate may fall below the early one before a soak calls it decay. Even per
/// CPU second, a shared host's speed was measured to swing 2.5× between and within runs
/// (4.3 M against 12 M decisions per CPU second for the same memory-store soak): what a soak
/// catches is the decay of a limiter that degrades (longer probe chains, a growing sweep),
/// which keeps falling, not a step of that size.
pub const MIN_RATE_RATIO: f64 = 0.25;

/// Judges samples taken at equal intervals: after the first third (warm-up: the key set
/// fills), memory may grow by at most `memory_slack` of its warm-up level plus 4 MB, and the
/// late median rate must be at least `min_rate_ratio` of the early one. Returns the verdict,
/// or why the run failed.
pub fn judge(
    samples: &[Sample],
    memory_slack: f64,
    min_rate_ratio: f64,
) -> Result<Verdict, String> {
    if samples.len() < 6 {
        return Err(format!("{} samples: too short to judge", samples.len()));
    }
    let third = samples.len() / 3;
    let verdict = Verdict {
        memory_after_warmup: samples[third - 1].memory,
        memory_peak: samples[third..].iter().map(|s| s.memory).max().unwrap_or(0),
        early_rate: median(samples[third..2 * third].iter().map(|s| s.rate).collect()),
        late_rate: median(samples[2 * third..].iter().map(|s| s.rate).collect()),
    };
    let allowed = verdict.memory_after_warmup as f64 * (1.0 + memory_slack) + 4e6;
    if verdict.memory_peak as f64 > allowed {
        return Err(format!("memory kept growing: {verdict}"));
    }
    if verdict.late_rate < verdict.early_rate * min_rate_ratio {
        return Err(format!("throughput decayed: {verdict}"));
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(memory: impl Fn(usize) -> u64, rate: impl Fn(usize) -> f64) -> Vec<Sample> {
        (0..9)
            .map(|i| Sample {
                rate: rate(i),
                memory: memory(i),
            })
            .collect()
    }

    #[test]
    fn cpu_time_grows_with_work_done() {
        let clock = CpuClock::new(&[]);
        let before = clock.now();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(clock.now() > before, "100 ms of spinning used no CPU time");
        let mut clock = CpuClock::new(&[]);
        assert!(clock.rate(0).is_nan() || clock.rate(0) == 0.0);
        assert!(cpu_seconds(Some(std::process::id())).is_some_and(|s| s > 0.0));
        assert_eq!(cpu_seconds(Some(u32::MAX)), None, "no such process");
    }

    #[test]
    fn flat_runs_pass_and_leaks_or_decay_fail() {
        let flat = samples(
            |i| {
                if i < 3 {
                    10_000_000 * (i as u64 + 1)
                } else {
                    30_000_000
                }
            },
            |_| 1e6,
        );
        assert!(judge(&flat, 0.1, 0.5).is_ok());
        let leak = samples(|i| 10_000_000 * (i as u64 + 1), |_| 1e6);
        assert!(
            judge(&leak, 0.1, 0.5)
                .unwrap_err()
                .contains("memory kept growing")
        );
        let decay = samples(|_| 30_000_000, |i| 1e6 / f64::from(1u32 << i));
        assert!(
            judge(&decay, 0.1, 0.5)
                .unwrap_err()
                .contains("throughput decayed")
        );
        assert!(judge(&flat[..3], 0.1, 0.5).is_err());
    }
}
