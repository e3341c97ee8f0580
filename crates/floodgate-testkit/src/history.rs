//! The history checker: given every decision of a run, each with a lower and an upper bound
//! on when it was decided (read from the decision clock around the call), it checks the
//! sliding-window promise per key over every window of the history:
//!
//! - **no over-admission**: for any two admissions `a` and `b`, the admissions whose whole
//!   interval lies in `[lo_a, hi_b]` — certainly decided within a span of at most
//!   `hi_b − lo_a` — cost at most `B + ⌊r·(hi_b − lo_a)⌋`. This is sound under uncertainty:
//!   a failure is a real violation whatever the true decision times were;
//! - **saturation**: under demand that never lets up, the run admits at least a share of
//!   `B + ⌊r·(lo_last − hi_first)⌋` (the shortest span the run certainly covered).
//!
//! It prints nothing itself: [`Report`] and [`Violation`] say what was found.

use std::collections::HashMap;
use std::fmt;

use floodgate::Limit;

use crate::window::bound;

/// One decision of a recorded history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The key it was for.
    pub key: String,
    /// Its cost.
    pub cost: u64,
    /// Whether it was admitted (by the store itself: fallback decisions are not recorded as
    /// admissions of the store).
    pub admitted: bool,
    /// The decision clock before the call, in nanoseconds.
    pub lo: u64,
    /// The decision clock after the call, in nanoseconds.
    pub hi: u64,
}

impl Event {
    /// One line `key cost admitted lo hi` (keys must not contain spaces): how worker
    /// processes send their history to the checking process.
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.key, self.cost, self.admitted as u8, self.lo, self.hi
        )
    }

    /// Parses [`to_line`](Self::to_line)'s output.
    pub fn from_line(line: &str) -> Option<Event> {
        let mut parts = line.split(' ');
        let event = Event {
            key: parts.next()?.to_owned(),
            cost: parts.next()?.parse().ok()?,
            admitted: parts.next()? == "1",
            lo: parts.next()?.parse().ok()?,
            hi: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && event.lo <= event.hi).then_some(event)
    }
}

/// A window of one key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyWindow {
    /// The key.
    pub key: String,
    /// Earliest possible start (ns).
    pub from: u64,
    /// Latest possible end (ns).
    pub to: u64,
    /// Admissions certainly inside.
    pub admissions: usize,
    /// Their cost.
    pub admitted: u64,
    /// `B + ⌊r·(to − from)⌋`.
    pub bound: u64,
}

impl fmt::Display for KeyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {:?}: {} admissions costing {} within {:.3} ms, bound {}",
            self.key,
            self.admissions,
            self.admitted,
            (self.to - self.from) as f64 / 1e6,
            self.bound
        )
    }
}

/// A history that broke the promise: the shortest violating window found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub KeyWindow);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "over-admission: {}", self.0)
    }
}

/// What a clean history looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Keys seen.
    pub keys: usize,
    /// Decisions checked.
    pub decisions: usize,
    /// Admitted cost in total.
    pub admitted: u64,
    /// Windows checked.
    pub windows: u64,
    /// The window that came closest to its bound.
    pub worst: Option<KeyWindow>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} decisions on {} keys, {} admitted, {} windows checked",
            self.decisions, self.keys, self.admitted, self.windows
        )?;
        if let Some(worst) = &self.worst {
            write!(f, "; closest to the bound: {worst}")?;
        }
        Ok(())
    }
}

/// Checks every window of every key's history against `limit`. On failure, returns the
/// violating window with the shortest span.
pub fn check(limit: &Limit, events: &[Event]) -> Result<Report, Violation> {
    let mut by_key: HashMap<&str, Vec<&Event>> = HashMap::new();
    for event in events {
        by_key.entry(&event.key).or_default().push(event);
    }
    let mut report = Report {
        keys: by_key.len(),
        decisions: events.len(),
        admitted: 0,
        windows: 0,
        worst: None,
    };
    let mut shortest: Option<KeyWindow> = None;
    let mut keys: Vec<_> = by_key.into_iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (key, events) in keys {
        let mut admitted: Vec<&Event> = events.into_iter().filter(|e| e.admitted).collect();
        admitted.sort_by_key(|e| (e.lo, e.hi));
        report.admitted += admitted.iter().map(|e| e.cost).sum::<u64>();
        for a in 0..admitted.len() {
            let from = admitted[a].lo;
            // Admissions from `a` on start no earlier than `from`; ordered by their end,
            // a running sum gives the cost certainly inside `[from, hi_b]` for each `b`.
            let mut later: Vec<&Event> = admitted[a..].to_vec();
            later.sort_by_key(|e| e.hi);
            let mut cost = 0;
            for (count, event) in later.iter().enumerate() {
                cost += event.cost;
                let to = event.hi;
                let window = KeyWindow {
                    key: key.to_owned(),
                    from,
                    to,
                    admissions: count + 1,
                    admitted: cost,
                    bound: bound(limit, to - from),
                };
                report.windows += 1;
                if window.admitted > window.bound {
                    if shortest
                        .as_ref()
                        .is_none_or(|s| window.to - window.from < s.to - s.from)
                    {
                        shortest = Some(window);
                    }
                } else if report.worst.as_ref().is_none_or(|w| {
                    window.bound - window.admitted < w.bound - w.admitted
                        || (window.bound - window.admitted == w.bound - w.admitted
                            && window.admissions > w.admissions)
                }) {
                    report.worst = Some(window);
                }
            }
        }
    }
    match shortest {
        Some(window) => Err(Violation(window)),
        None => Ok(report),
    }
}

/// For a key under saturating demand: its admitted cost and the least a correct limiter
/// must have admitted over the span the history certainly covers (`hi` of the first decision
/// to `lo` of the last): `B + ⌊r·span⌋`, minus what a full bucket legitimately wastes while
/// no request arrives — for each pause between consecutive decisions longer than it takes to
/// refill the whole burst, the refill beyond the burst (a descheduled client on a busy
/// machine is such a pause).
pub fn saturation(limit: &Limit, events: &[Event], key: &str) -> (u64, u64) {
    let mut mine: Vec<&Event> = events.iter().filter(|e| e.key == key).collect();
    mine.sort_by_key(|e| (e.lo, e.hi));
    let admitted = mine.iter().filter(|e| e.admitted).map(|e| e.cost).sum();
    let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
        return (0, 0);
    };
    let full = bound(limit, last.lo.saturating_sub(first.hi));
    let burst = u64::from(limit.capacity());
    let mut reach = first.hi;
    let mut wasted = 0;
    for event in &mine[1..] {
        if event.lo > reach {
            let refill = bound(limit, event.lo - reach) - burst;
            wasted += refill.saturating_sub(burst);
        }
        reach = reach.max(event.hi);
    }
    (admitted, full.saturating_sub(wasted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(key: &str, lo: u64, hi: u64) -> Event {
        Event {
            key: key.into(),
            cost: 1,
            admitted: true,
            lo,
            hi,
        }
    }

    #[test]
    fn exact_times_reduce_to_the_sliding_window() {
        let limit = Limit::per_second(10).burst(2);
        // 2 at once, then one every 100 ms: right at the bound.
        let mut events = vec![admit("k", 0, 0), admit("k", 0, 0)];
        for i in 1..=10 {
            events.push(admit("k", i * 100_000_000, i * 100_000_000));
        }
        let report = check(&limit, &events).unwrap();
        assert_eq!(report.admitted, 12);
        let worst = report.worst.unwrap();
        assert_eq!(worst.admitted, worst.bound);
        // One more, 50 ms after the last: 13 in 1.05 s, bound 12.
        events.push(admit("k", 1_050_000_000, 1_050_000_000));
        let violation = check(&limit, &events).unwrap_err();
        assert_eq!(
            (violation.0.admitted, violation.0.bound),
            (13, 12),
            "{violation}"
        );
        assert_eq!(violation.0.to - violation.0.from, 1_050_000_000);
        // A third token in the first instant as well: the shortest window is that instant.
        events.push(admit("k", 0, 0));
        let violation = check(&limit, &events).unwrap_err();
        assert_eq!((violation.0.from, violation.0.to), (0, 0), "{violation}");
        assert_eq!((violation.0.admitted, violation.0.bound), (3, 2));
    }

    #[test]
    fn uncertainty_never_makes_a_false_alarm() {
        let limit = Limit::per_second(10).burst(1);
        // Two admissions 100 ms apart, each known only within ±60 ms: overlapping
        // intervals, but nothing proves they were closer than allowed.
        let events = [
            admit("k", 40_000_000, 160_000_000),
            admit("k", 140_000_000, 260_000_000),
        ];
        assert!(check(&limit, &events).is_ok());
        // Two admissions whose intervals prove they were within 20 ms: caught.
        let events = [admit("k", 0, 10_000_000), admit("k", 5_000_000, 20_000_000)];
        assert!(check(&limit, &events).is_err());
    }

    #[test]
    fn lines_round_trip() {
        let event = admit("user:7", 5, 9);
        assert_eq!(Event::from_line(&event.to_line()), Some(event));
        assert_eq!(Event::from_line("k 1 1 9 5"), None, "lo after hi");
        assert_eq!(Event::from_line("k 1 1 5"), None);
    }
}
