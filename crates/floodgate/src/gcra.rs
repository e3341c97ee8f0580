//! The token-bucket arithmetic, stored the GCRA way: one "theoretical arrival time" per limit.
//!
//! Pure functions of `(state, now, limit, cost)` over integers in a store's time unit
//! (nanoseconds for the memory store, microseconds for Redis). With emission interval `T`
//! and capacity `B`, the tolerance is `τ = B·T` and:
//!
//! ```text
//! tat'      = max(tat, now) + c·T
//! allowed   = tat' − now ≤ τ            (else denied, state unchanged)
//! after     = tat' if allowed, else max(tat, now)
//! remaining = ⌊(τ − (after − now)) / T⌋,  reset_after = after − now
//! retry     = tat' − now − τ            (denied)
//! ```
//!
//! A stored `tat ≤ now` is a full bucket, the same as no state at all, so such state may be
//! dropped at any time without changing a decision. Every input is accepted: arithmetic
//! saturates instead of overflowing, and a `now` earlier than a previous one (a clock that
//! stepped back) only lengthens waits.

/// One limit in a store's time unit: emission interval `T` and capacity `B`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    interval: u64,
    burst: u64,
    tolerance: u64,
}

impl Rate {
    /// A rate of one token per `interval` units, holding at most `burst` tokens. Both are
    /// raised to at least 1.
    pub const fn new(interval: u64, burst: u64) -> Self {
        let interval = if interval == 0 { 1 } else { interval };
        let burst = if burst == 0 { 1 } else { burst };
        Rate {
            interval,
            burst,
            tolerance: interval.saturating_mul(burst),
        }
    }
    /// Emission interval `T`: time units per token.
    pub const fn interval(&self) -> u64 {
        self.interval
    }
    /// Capacity `B` in tokens.
    pub const fn burst(&self) -> u64 {
        self.burst
    }
    /// `B·T`: how far ahead of `now` the TAT may run while a request is still admitted.
    pub const fn tolerance(&self) -> u64 {
        self.tolerance
    }

    /// Tokens left in a bucket whose TAT is `tat` at time `now`.
    pub const fn remaining(&self, tat: u64, now: u64) -> u64 {
        self.left(tat, now) / self.interval
    }

    /// Capacity left, in time units, in a bucket whose TAT is `tat` at time `now`.
    pub const fn left(&self, tat: u64, now: u64) -> u64 {
        self.tolerance.saturating_sub(tat.saturating_sub(now))
    }

    /// The TAT after admitting `cost` tokens, or `Err(wait)` with the exact wait until the
    /// request would be admitted.
    pub const fn admit(&self, tat: u64, now: u64, cost: u64) -> Result<u64, u64> {
        let base = if tat > now { tat } else { now };
        let new_tat = base.saturating_add(cost.saturating_mul(self.interval));
        let ahead = new_tat - now;
        if ahead <= self.tolerance {
            Ok(new_tat)
        } else {
            Err(ahead - self.tolerance)
        }
    }

    /// The TAT after consuming `cost` tokens unconditionally, with the debt capped at one
    /// burst below empty (the TAT never runs more than `2·τ` ahead of `now`).
    pub const fn charge(&self, tat: u64, now: u64, cost: u64) -> u64 {
        let base = if tat > now { tat } else { now };
        let new_tat = base.saturating_add(cost.saturating_mul(self.interval));
        let cap = now.saturating_add(self.tolerance.saturating_mul(2));
        if new_tat < cap { new_tat } else { cap }
    }
}

/// What is asked of a policy's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Check and consume `cost` tokens from every limit, or none.
    Acquire(u32),
    /// Report the current state; `allowed` tells whether a cost-1 acquire would pass.
    Peek,
    /// Consume `cost` tokens from every limit without checking (debt capped).
    Charge(u32),
}

/// The outcome of an [`Op`] on all limits of a policy, in the store's time unit. Built by
/// [`evaluate`], or by [`Verdict::of`] from state a store read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdict {
    /// Whether the request was admitted (for `Charge`: whether it fit without debt).
    pub allowed: bool,
    /// Index of the deciding limit.
    pub decided_by: usize,
    /// Capacity of the deciding limit.
    pub burst: u64,
    /// Capacity left in the deciding limit, in time units (after the op when it was
    /// written): `remaining = left / interval`, computed only when asked for.
    pub left: u64,
    /// Emission interval of the deciding limit.
    pub interval: u64,
    /// Wait until the same request would pass; 0 when allowed.
    pub retry_after: u64,
    /// Time until every limit is full again.
    pub reset_after: u64,
    /// Whether the new TATs must be stored.
    pub write: bool,
}

impl Verdict {
    /// The verdict decided by limit `decided_by` of `rates`, whose TATs are `tats` at `now`
    /// (the state to report: after the op when it was written). `reset_after` is the time
    /// until every limit is full again. For a store that reads the state back from
    /// elsewhere, TATs relative to the decision time with `now = 0` work as well.
    #[inline]
    pub fn of(
        rates: &[Rate],
        tats: &[u64],
        now: u64,
        decided_by: usize,
        allowed: bool,
        retry_after: u64,
        write: bool,
    ) -> Verdict {
        let rate = rates[decided_by];
        Verdict {
            allowed,
            decided_by,
            burst: rate.burst,
            left: rate.left(tats[decided_by], now),
            interval: rate.interval,
            retry_after: if allowed { 0 } else { retry_after },
            reset_after: reset_after(tats, now),
            write,
        }
    }

    /// Whole tokens left in the deciding limit.
    pub const fn remaining(&self) -> u64 {
        self.left / self.interval
    }
}

/// Applies `op` at `now` to limits `rates` whose stored TATs are `tats` (0 for absent
/// state). When the verdict says `write`, `tats` holds the new TATs on return; otherwise it
/// is unchanged. Limits are all-or-nothing; `rates` and `tats` have the same length ≥ 1.
#[inline]
pub fn evaluate(rates: &[Rate], tats: &mut [u64], now: u64, op: Op) -> Verdict {
    debug_assert_eq!(rates.len(), tats.len());
    match op {
        Op::Acquire(cost) => acquire(rates, tats, now, u64::from(cost), true),
        Op::Peek => acquire(rates, tats, now, 1, false),
        Op::Charge(cost) => charge(rates, tats, now, u64::from(cost)),
    }
}

#[inline]
fn acquire(rates: &[Rate], tats: &mut [u64], now: u64, cost: u64, consume: bool) -> Verdict {
    // Longest wait among denying limits; ties go to the lowest index.
    let mut denied: Option<(usize, u64)> = None;
    for (i, (rate, &tat)) in rates.iter().zip(tats.iter()).enumerate() {
        if let Err(wait) = rate.admit(tat, now, cost) {
            if denied.is_none_or(|(_, longest)| wait > longest) {
                denied = Some((i, wait));
            }
        }
    }
    if let Some((i, wait)) = denied {
        return Verdict::of(rates, tats, now, i, false, wait, false);
    }
    if consume {
        for (rate, tat) in rates.iter().zip(tats.iter_mut()) {
            *tat = rate.admit(*tat, now, cost).unwrap_or(*tat);
        }
    }
    allowed(rates, tats, now, consume)
}

fn charge(rates: &[Rate], tats: &mut [u64], now: u64, cost: u64) -> Verdict {
    let mut fits = true;
    for (rate, tat) in rates.iter().zip(tats.iter_mut()) {
        fits &= rate.admit(*tat, now, cost).is_ok();
        *tat = rate.charge(*tat, now, cost);
    }
    if fits {
        return allowed(rates, tats, now, true);
    }
    // In debt: report the wait until a cost-1 request would pass.
    let mut longest = (0, 0);
    for (i, (rate, &tat)) in rates.iter().zip(tats.iter()).enumerate() {
        if let Err(wait) = rate.admit(tat, now, 1) {
            if wait > longest.1 {
                longest = (i, wait);
            }
        }
    }
    let (i, wait) = longest;
    Verdict::of(rates, tats, now, i, false, wait, true)
}

/// An allowed verdict, decided by [`fewest_tokens`].
#[inline]
fn allowed(rates: &[Rate], tats: &[u64], now: u64, write: bool) -> Verdict {
    Verdict::of(
        rates,
        tats,
        now,
        fewest_tokens(rates, tats, now),
        true,
        0,
        write,
    )
}

/// The limit that decides an allowed request: the one with the fewest whole tokens left,
/// ties to the lowest index. (A denial is decided by the longest wait, ties to the lowest
/// index too.)
#[inline]
pub fn fewest_tokens(rates: &[Rate], tats: &[u64], now: u64) -> usize {
    let mut i = 0;
    if rates.len() > 1 {
        let mut fewest = u64::MAX;
        for (index, (rate, &tat)) in rates.iter().zip(tats.iter()).enumerate() {
            let tokens = rate.remaining(tat, now);
            if tokens < fewest {
                (i, fewest) = (index, tokens);
            }
        }
    }
    i
}

#[inline]
fn reset_after(tats: &[u64], now: u64) -> u64 {
    tats.iter()
        .map(|tat| tat.saturating_sub(now))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_PER_SEC_BURST_10: Rate = Rate::new(200_000_000, 10);

    #[test]
    fn a_fresh_bucket_admits_and_reports_the_state_after_the_charge() {
        let mut tats = [0];
        let v = evaluate(&[FIVE_PER_SEC_BURST_10], &mut tats, 1_000, Op::Acquire(1));
        assert!(v.allowed && v.write);
        assert_eq!(
            (v.remaining(), v.reset_after, v.burst),
            (9, 200_000_000, 10)
        );
        assert_eq!(tats, [1_000 + 200_000_000]);
    }

    #[test]
    fn retry_after_is_exact_to_the_unit() {
        let rate = Rate::new(7, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = rate.admit(tat, 100, 1).expect("burst of 3 admits 3");
        }
        let wait = rate.admit(tat, 100, 2).expect_err("bucket is empty");
        assert!(rate.admit(tat, 100 + wait - 1, 2).is_err());
        assert!(rate.admit(tat, 100 + wait, 2).is_ok());
    }

    #[test]
    fn charge_caps_debt_at_one_burst_below_empty() {
        let rate = Rate::new(10, 5);
        let tat = rate.charge(0, 1_000, u64::from(u32::MAX));
        assert_eq!(tat, 1_000 + 2 * 50);
    }

    #[test]
    fn extreme_values_saturate_instead_of_overflowing() {
        let rate = Rate::new(u64::MAX, u64::MAX);
        assert_eq!(rate.tolerance(), u64::MAX);
        assert!(rate.admit(u64::MAX, u64::MAX, u64::MAX).is_ok());
        assert_eq!(Rate::new(0, 0), Rate::new(1, 1));
    }
}
