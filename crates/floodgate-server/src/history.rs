//! Live rates for `/v1/stats`: once a second a task samples every policy's cumulative
//! counters into a ring of the last five minutes; per-second rates are the differences of
//! consecutive samples. Nothing is added to the decision path.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;

/// Seconds of history kept.
pub const WINDOW_SECS: usize = 300;

/// The last [`WINDOW_SECS`] + 1 samples of each policy's (allowed, denied, shadow-denied)
/// totals.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<HashMap<String, VecDeque<[u64; 3]>>>,
}

/// One policy's per-second rates, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rates {
    /// Allowed decisions per second.
    pub allowed: Vec<u64>,
    /// Denied decisions per second.
    pub denied: Vec<u64>,
    /// Decisions denied by a shadow policy (answered allowed) per second.
    pub shadow_denied: Vec<u64>,
}

impl History {
    /// Takes one sample of every policy's counters; drops the rings of policies no longer
    /// counted (removed by a reload).
    pub fn sample(&self, metrics: &Metrics) {
        let now = metrics.policy_totals();
        let mut rings = self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rings.retain(|name, _| now.iter().any(|(n, _)| n == name));
        for (name, totals) in now {
            let ring = rings.entry(name).or_default();
            if ring.len() > WINDOW_SECS {
                ring.pop_front();
            }
            ring.push_back(totals);
        }
    }

    /// Every sampled policy's rates, by name.
    pub fn rates(&self) -> Vec<(String, Rates)> {
        let rings = self
            .rings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<(String, Rates)> = rings
            .iter()
            .map(|(name, ring)| {
                let mut rates = Rates::default();
                for (a, b) in ring.iter().zip(ring.iter().skip(1)) {
                    rates.allowed.push(b[0].saturating_sub(a[0]));
                    rates.denied.push(b[1].saturating_sub(a[1]));
                    rates.shadow_denied.push(b[2].saturating_sub(a[2]));
                }
                (name.clone(), rates)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Samples `metrics` into `history` every second until `stopped`.
pub(crate) async fn sample_every_second(
    history: Arc<History>,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => history.sample(&metrics),
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_differences_of_consecutive_samples_over_five_minutes() {
        let metrics = Metrics::default();
        let history = History::default();
        let counters = metrics.policy("free");
        let allowed = floodgate::Decision::allow(10, 9);
        let denied = floodgate::Decision::deny(10, Duration::from_secs(1));
        history.sample(&metrics);
        for second in 0..400u64 {
            for _ in 0..second % 7 {
                counters.record(&allowed, false);
            }
            counters.record(&denied, false);
            history.sample(&metrics);
        }
        let rates = history.rates();
        assert_eq!(rates.len(), 1);
        let (name, rates) = &rates[0];
        assert_eq!(name, "free");
        assert_eq!(rates.allowed.len(), WINDOW_SECS);
        let expected: Vec<u64> = (100..400u64).map(|s| s % 7).collect();
        assert_eq!(rates.allowed, expected);
        assert!(rates.denied.iter().all(|&d| d == 1));
        // A policy removed by a reload leaves the history at the next sample.
        metrics.retain_policies(&std::collections::HashSet::new());
        history.sample(&metrics);
        assert!(history.rates().is_empty());
    }
}
