//! Entry points for the fuzz targets (feature `fuzzing`); not a stable API.

use floodgate::Policy;
use floodgate::store::{Op, Rate};

/// Parses a decision-script reply for limits given as `(interval µs, burst)` pairs (zeros
/// and empty lists are skipped, as no policy has them), then feeds the result to the deny
/// cache at the edges of the clock's range. Panics only if parsing itself is unsound.
pub fn parse_reply(reply: &[i64], limits: &[(u64, u64)]) {
    let rates: Vec<Rate> = limits
        .iter()
        .take(floodgate::MAX_LIMITS)
        .filter(|&&(interval, burst)| interval > 0 && burst > 0 && burst <= u64::from(u32::MAX))
        .filter(|&&(interval, burst)| interval.checked_mul(burst).is_some())
        .map(|&(interval, burst)| Rate::new(interval, burst))
        .collect();
    if rates.is_empty() {
        return;
    }
    if let Ok((decision, ahead)) = crate::reply::parse_reply(reply, &rates) {
        assert!(decision.decided_by() < rates.len());
        assert_eq!(ahead.len(), rates.len());
        let _ = (
            decision.remaining(),
            decision.retry_after(),
            decision.reset_after(),
            decision.next_token_after(),
        );
        if let Some(cache) = crate::cache::DenyCache::new(16) {
            #[allow(clippy::panic)] // a constant policy: it always parses
            let policy = Policy::parse("fuzz", "1/s").unwrap_or_else(|e| panic!("{e}"));
            for now in [0, 1_000_000, u64::MAX - 5] {
                cache.record(&policy, "k", &rates, now, &ahead);
                let _ = cache.deny(&policy, "k", &rates, now.saturating_add(1), Op::Acquire(1));
            }
        }
    }
}
