//! The sliding-window bound: over any interval of length Δ, admitted cost ≤ B + ⌊r·Δ⌋.

use floodgate::Limit;

/// The worst window found in a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Time of the window's first admission, in nanoseconds.
    pub start: u64,
    /// Time of its last admission, in nanoseconds.
    pub end: u64,
    /// Cost admitted within it.
    pub admitted: u64,
    /// The bound `B + ⌊r·Δ⌋` for it.
    pub bound: u64,
}

/// `B + ⌊count·Δ/period⌋` for a window of `span_ns` nanoseconds.
pub fn bound(limit: &Limit, span_ns: u64) -> u64 {
    let refill = u128::from(limit.count()) * u128::from(span_ns) / limit.period().as_nanos();
    u64::from(limit.capacity()) + u64::try_from(refill).unwrap_or(u64::MAX)
}

/// Checks every window between two admissions of `admitted` (pairs of time in ns and cost,
/// sorted by time). Returns the first violating window, or `Ok` with the window whose
/// admitted cost came closest to its bound.
pub fn check(limit: &Limit, admitted: &[(u64, u64)]) -> Result<Option<Window>, Window> {
    let mut tightest: Option<Window> = None;
    for (a, &(start, _)) in admitted.iter().enumerate() {
        let mut total = 0;
        for &(end, cost) in &admitted[a..] {
            total += cost;
            let window = Window {
                start,
                end,
                admitted: total,
                bound: bound(limit, end - start),
            };
            if total > window.bound {
                return Err(window);
            }
            if tightest.is_none_or(|t| window.bound - window.admitted < t.bound - t.admitted) {
                tightest = Some(window);
            }
        }
    }
    Ok(tightest)
}
