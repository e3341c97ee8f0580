//! The decision script's wire format: the arguments an [`Op`] becomes, and the reply read
//! back into a [`Decision`]. The fuzz target `redis_reply` calls [`parse_reply`].

use floodgate::store::{self, Op, Rate, Verdict};
use floodgate::{Decision, Error};

use crate::store::{UNIT_NS, store_error};

/// The decision script's first two arguments for `op`: its code (1 acquire, 2 peek,
/// 3 charge) and its cost.
pub(crate) fn wire(op: Op) -> [i64; 2] {
    match op {
        Op::Acquire(cost) => [1, i64::from(cost)],
        Op::Peek => [2, 1],
        Op::Charge(cost) => [3, i64::from(cost)],
    }
}

/// The decision in a script reply: a bare integer is the single-limit admission
/// (`{1, 0, 0, ahead}`, no array to unpack), an array is read as is, anything else is an
/// invalid reply.
pub(crate) fn read_reply(
    reply: redis::Value,
    rates: &[Rate],
) -> Result<(Decision, Vec<u64>), Error> {
    match reply {
        redis::Value::Int(ahead) => parse_reply(&[1, 0, 0, ahead], rates),
        redis::Value::Array(items) => {
            let integers: Vec<i64> = items
                .into_iter()
                .map(|v| if let redis::Value::Int(i) = v { i } else { -1 })
                .collect();
            parse_reply(&integers, rates)
        }
        _ => parse_reply(&[], rates),
    }
}

/// The tokens of a granted lease (`{2, k, ahead_1..n}` from the batch script), or `None`
/// for any other reply (a refused lease is an ordinary denial).
pub(crate) fn lease_granted(reply: &redis::Value, limits: usize) -> Option<u64> {
    match reply {
        redis::Value::Array(items) if items.len() == 2 + limits => match items[..2] {
            [redis::Value::Int(2), redis::Value::Int(k)] if k >= 1 => u64::try_from(k).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The decision in a script reply (`{allowed, denied_by, retry_after, ahead_1..n}`), and
/// each limit's TAT ahead of the decision time (µs).
pub(crate) fn parse_reply(reply: &[i64], rates: &[Rate]) -> Result<(Decision, Vec<u64>), Error> {
    let bad = || {
        store_error(format!(
            "unexpected reply from the decision script: {reply:?}"
        ))
    };
    if reply.len() != 3 + rates.len() {
        return Err(bad());
    }
    if reply.iter().any(|&v| v < 0) {
        return Err(bad());
    }
    let value = |i: usize| reply[i].unsigned_abs();
    let allowed = value(0) == 1;
    // Each limit's TAT relative to the decision time: the state at `now = 0`.
    let ahead: Vec<u64> = reply[3..].iter().map(|v| v.unsigned_abs()).collect();
    let decided_by = if allowed {
        store::fewest_tokens(rates, &ahead, 0)
    } else {
        // The script names the denying limit (the conformance suite pins it to the rule).
        usize::try_from(value(1))
            .ok()
            .filter(|&i| i < rates.len())
            .ok_or_else(bad)?
    };
    let verdict = Verdict::of(rates, &ahead, 0, decided_by, allowed, value(2), false);
    Ok((store::decision(&verdict, UNIT_NS), ahead))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1024)
        ))]

        /// Property version of the `redis_reply` fuzz target: whatever Redis (or something
        /// pretending to be it) replies, parsing gives a decision or an error, never a panic,
        /// and every field of an accepted decision can be read.
        #[test]
        fn any_reply_is_a_decision_or_an_error(
            reply in proptest::collection::vec(
                proptest::prop_oneof![0i64..3, proptest::num::i64::ANY, 0i64..2_000_000],
                0..7,
            ),
            limits in proptest::collection::vec((1u64..1_000_000, 1u64..100), 1..4),
        ) {
            let rates: Vec<Rate> = limits.iter().map(|&(t, b)| Rate::new(t, b)).collect();
            if let Ok((decision, ahead)) = parse_reply(&reply, &rates) {
                proptest::prop_assert_eq!(ahead.len(), rates.len());
                proptest::prop_assert!(decision.decided_by() < rates.len());
                let _ = (
                    decision.remaining(),
                    decision.retry_after(),
                    decision.reset_after(),
                    decision.next_token_after(),
                    decision.limit(),
                );
                // The deny cache takes the same values: recording and consulting them stays
                // panic-free even at the end of the clock's range.
                let cache = crate::cache::DenyCache::new(16).unwrap();
                let policy = floodgate::Policy::parse("p", "1/s").unwrap();
                for now in [0, 1_000_000, u64::MAX - 5] {
                    cache.record(&policy, "k", &rates, now, &ahead);
                    let _ = cache.deny(&policy, "k", &rates, now.saturating_add(1), floodgate::store::Op::Acquire(1));
                }
            }
            let _ = read_reply(redis::Value::Array(reply.iter().map(|&v| redis::Value::Int(v)).collect()), &rates);
        }
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors() {
        let rates = [Rate::new(200_000, 10)];
        assert!(parse_reply(&[1, 0, 0], &rates).is_err());
        assert!(parse_reply(&[1, 0, 0, 1, 2], &rates).is_err());
        assert!(parse_reply(&[0, 3, 5, 0], &rates).is_err());
        assert!(parse_reply(&[1, 0, 0, -5], &rates).is_err());
        let (d, ahead) = parse_reply(&[1, 0, 0, 200_000], &rates).unwrap();
        assert_eq!(
            (d.remaining(), d.reset_after()),
            (9, Duration::from_millis(200))
        );
        assert_eq!(ahead, [200_000]);
    }
}
