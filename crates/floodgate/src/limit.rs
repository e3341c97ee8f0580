//! `Limit` (one token bucket) and `Policy` (a named set of limits checked together).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::gcra::Rate;
use crate::{Error, notation};

const NANOS_PER_MILLI: u128 = 1_000_000;
/// Largest `burst × interval` a limit may have: 2^50 µs, about 35.7 years. Keeps every time
/// value exact in a double (Redis) and far from `u64` overflow in nanoseconds (memory).
const MAX_WINDOW_MICROS: u128 = 1 << 50;
/// Most limits one policy may hold (keeps per-decision state on the stack).
pub const MAX_LIMITS: usize = 16;
/// Longest policy name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// One token bucket: `count` tokens per `period`, holding at most `burst` tokens.
///
/// The constructors are plain builders and never fail; a limit is validated once, when it
/// goes into a [`Policy`] (or is parsed with [`str::parse`]).
///
/// ```
/// use floodgate::Limit;
/// let limit = Limit::per_second(5).burst(10);      // 5 per second, bursts of up to 10
/// assert_eq!(limit.to_string(), "5/s burst 10");
/// assert_eq!("5 per second burst 10".parse::<Limit>()?, limit);
/// # Ok::<(), floodgate::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Limit {
    /// `n` tokens per `period`, burst `n`. The period must be whole milliseconds.
    pub const fn per(n: u32, period: Duration) -> Self {
        Limit {
            count: n,
            period,
            burst: n,
        }
    }
    /// `n` per second, burst `n`.
    pub const fn per_second(n: u32) -> Self {
        Self::per(n, Duration::from_secs(1))
    }
    /// `n` per minute, burst `n`.
    pub const fn per_minute(n: u32) -> Self {
        Self::per(n, Duration::from_secs(60))
    }
    /// `n` per hour, burst `n`.
    pub const fn per_hour(n: u32) -> Self {
        Self::per(n, Duration::from_secs(3_600))
    }
    /// `n` per day, burst `n`.
    pub const fn per_day(n: u32) -> Self {
        Self::per(n, Duration::from_secs(86_400))
    }
    /// Sets the bucket's capacity: how many tokens a full bucket holds.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Tokens added per period.
    pub const fn count(&self) -> u32 {
        self.count
    }
    /// The period over which `count` tokens are added.
    pub const fn period(&self) -> Duration {
        self.period
    }
    /// The bucket's capacity (the value set with [`Limit::burst`], `count` by default).
    pub const fn capacity(&self) -> u32 {
        self.burst
    }

    /// Checks that this limit can be enforced exactly (see [`Error::InvalidLimit`]).
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: String| Error::InvalidLimit {
            limit: self.to_string(),
            reason,
        };
        if self.count == 0 {
            return Err(invalid(
                "count must be at least 1 (use a policy that denies instead)".into(),
            ));
        }
        if self.burst == 0 {
            return Err(invalid("burst must be at least 1".into()));
        }
        let period_ns = self.period.as_nanos();
        if period_ns == 0 {
            return Err(invalid("period must be at least 1ms".into()));
        }
        if period_ns % NANOS_PER_MILLI != 0 {
            return Err(invalid(format!(
                "period {:?} is not a whole number of milliseconds",
                self.period
            )));
        }
        // burst × (period / count) in µs, exactly: B·P_µs / c ≤ 2^50.
        let period_us = period_ns / 1_000;
        if u128::from(self.burst) * period_us > MAX_WINDOW_MICROS * u128::from(self.count) {
            return Err(invalid(
                "burst × period / count exceeds 2^50 µs (about 35 years): the bucket would take too long to fill".into(),
            ));
        }
        // The memory store counts in nanoseconds with the interval rounded up; refuse rates
        // where that rounding would admit more than 1% less than stated.
        let interval = period_ns.div_ceil(u128::from(self.count));
        if interval * u128::from(self.count) * 100 > period_ns * 101 {
            return Err(invalid(format!(
                "rate too fast: {} per {:?} needs an interval below one nanosecond",
                self.count, self.period
            )));
        }
        Ok(())
    }

    /// The limit in a store's unit of `unit_ns` nanoseconds (1 for ns, 1000 for µs): the
    /// emission interval rounded up, so a store never admits more than the stated rate.
    /// Call only on a validated limit.
    pub(crate) fn rate_in(&self, unit_ns: u64) -> Rate {
        let period = self.period.as_nanos() / u128::from(unit_ns);
        let interval = period.div_ceil(u128::from(self.count)).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        Rate::new(interval, u64::from(self.burst))
    }

    /// The limit's emission interval and capacity in a unit of `unit_ns` nanoseconds, or
    /// `None` when rounding to that unit would lose more than 1% of the rate. Stores with a
    /// coarser clock than nanoseconds use this to reject limits they cannot represent.
    pub(crate) fn rate_in_unit(&self, unit_ns: u64) -> Option<Rate> {
        let period = self.period.as_nanos();
        let unit = u128::from(unit_ns.max(1));
        if period % unit != 0 {
            return None;
        }
        let units = period / unit;
        let interval = units.div_ceil(u128::from(self.count.max(1)));
        if interval * u128::from(self.count) * 100 > units * 101 {
            return None;
        }
        Some(self.rate_in(unit_ns))
    }
}

impl fmt::Display for Limit {
    /// Canonical notation: `count/[multiplier]unit[ burst B]`, with the largest unit of
    /// `ms|s|m|h|d` that divides the period exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.period.as_nanos();
        write!(f, "{}/", self.count)?;
        if nanos % NANOS_PER_MILLI != 0 || nanos == 0 {
            // Not representable in notation; only seen in error messages.
            write!(f, "{:?}", self.period)?;
        } else {
            let millis = nanos / NANOS_PER_MILLI;
            let (unit, size) = notation::UNITS
                .iter()
                .rev()
                .copied()
                .find(|&(_, size)| millis % u128::from(size) == 0)
                .unwrap_or(("ms", 1));
            let multiplier = millis / u128::from(size);
            if multiplier != 1 {
                write!(f, "{multiplier}")?;
            }
            f.write_str(unit)?;
        }
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

impl FromStr for Limit {
    type Err = Error;

    /// Parses one limit in rate notation (`"5/s"`, `"5 per second burst 10"`, `"100/2h"`)
    /// and validates it.
    fn from_str(text: &str) -> Result<Self, Error> {
        let limits = notation::parse(text)?;
        match limits.as_slice() {
            [limit] => {
                limit.validate()?;
                Ok(*limit)
            }
            _ => Err(Error::Parse {
                input: text.to_owned(),
                position: notation::first_separator(text).unwrap_or(0),
                reason: "expected exactly one limit".into(),
            }),
        }
    }
}

/// A named set of limits checked together, all or nothing: a request passes only if every
/// limit has room, and when one limit denies, no limit is charged.
///
/// ```
/// use floodgate::{Limit, Policy};
/// let free = Policy::new("free", [Limit::per_second(5).burst(10), Limit::per_day(1_000)])?;
/// assert_eq!(free, Policy::parse("free", "5/s burst 10; 1000/day")?);
/// assert_eq!(free.to_string(), "5/s burst 10; 1000/d");
/// # Ok::<(), floodgate::Error>(())
/// ```
///
/// Cloning is cheap (the limits are shared). Stores key their state by the policy's name,
/// the limit's position and the caller's key.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<PolicyInner>,
}

struct PolicyInner {
    name: Box<str>,
    limits: Box<[Limit]>,
    /// Per-limit rates in nanoseconds, precomputed for the memory store.
    rates_ns: Box<[Rate]>,
    /// Per-limit rates in microseconds, precomputed for stores that count them (Redis);
    /// `None` when a limit cannot be represented in whole microseconds within 1%.
    rates_us: Option<Box<[Rate]>>,
    /// A stable (unkeyed) hash of the name; stores mix it into their own keyed hash.
    name_hash: u64,
}

impl Policy {
    /// Builds a policy from one or more limits, validating each.
    ///
    /// The name is 1 to 128 bytes of ASCII letters, digits and `-_.:/`; it names the policy
    /// in stores, headers and metrics.
    pub fn new(
        name: impl Into<String>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Result<Self, Error> {
        let name = name.into();
        let limits: Vec<Limit> = limits.into_iter().collect();
        let invalid = |reason: String| Error::InvalidPolicy {
            name: name.clone(),
            reason,
        };
        validate_name(&name).map_err(invalid)?;
        if limits.is_empty() {
            return Err(invalid("a policy needs at least one limit".into()));
        }
        if limits.len() > MAX_LIMITS {
            return Err(invalid(format!(
                "{} limits given; a policy holds at most {MAX_LIMITS}",
                limits.len()
            )));
        }
        for limit in &limits {
            limit.validate()?;
        }
        let rates_ns = limits.iter().map(|l| l.rate_in(1)).collect();
        let rates_us = limits.iter().map(|l| l.rate_in_unit(1_000)).collect();
        let name_hash = crate::store::stable_hash(name.bytes());
        Ok(Policy {
            inner: Arc::new(PolicyInner {
                name: name.into_boxed_str(),
                limits: limits.into_boxed_slice(),
                rates_ns,
                rates_us,
                name_hash,
            }),
        })
    }

    /// Builds a policy from rate notation: limits separated by `;`, `,` or `|`, for example
    /// `"5/s burst 10; 1000/day"`.
    pub fn parse(name: impl Into<String>, text: &str) -> Result<Self, Error> {
        let name = name.into();
        validate_name(&name).map_err(|reason| Error::InvalidPolicy {
            name: name.clone(),
            reason,
        })?;
        Self::new(name, notation::parse(text)?)
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The policy's limits, in order (a decision's `decided_by` indexes this slice).
    pub fn limits(&self) -> &[Limit] {
        &self.inner.limits
    }
    /// The smallest burst of the policy: the largest cost a request may have.
    pub fn max_cost(&self) -> u32 {
        self.inner.limits.iter().map(|l| l.burst).min().unwrap_or(0)
    }
    /// Checks a request's cost: not zero and no larger than any limit's burst.
    pub fn check_cost(&self, cost: u32) -> Result<(), Error> {
        check_nonzero(cost)?;
        match self.inner.limits.iter().find(|l| l.burst < cost) {
            Some(limit) => Err(Error::CostExceedsBurst {
                cost,
                burst: u64::from(limit.burst),
            }),
            None => Ok(()),
        }
    }
    pub(crate) fn rates_ns(&self) -> &[Rate] {
        &self.inner.rates_ns
    }
    /// Each limit's rate in microseconds ([`Limit::rate_in_unit`]`(1_000)`), computed once,
    /// for stores that count microseconds; `None` when some limit cannot be represented that
    /// way (see `rate_in_unit`).
    pub(crate) fn rates_us(&self) -> Option<&[Rate]> {
        self.inner.rates_us.as_deref()
    }
    /// A stable, unkeyed 64-bit hash of the name, for stores to mix into their keyed hashes.
    pub(crate) fn name_hash(&self) -> u64 {
        self.inner.name_hash
    }
}

/// A cost of zero is no request: [`Error::InvalidCost`].
pub(crate) fn check_nonzero(cost: u32) -> Result<(), Error> {
    if cost == 0 {
        return Err(Error::InvalidCost {
            cost,
            reason: "a request costs at least 1",
        });
    }
    Ok(())
}

pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "a policy name is 1 to {MAX_NAME_LEN} bytes, this one is {}",
            name.len()
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(format!(
            "character {bad:?} is not allowed in a policy name (use ASCII letters, digits and -_.:/)"
        ));
    }
    Ok(())
}

/// Whether `c` may appear in a policy name: ASCII letters, digits and `-_.:/`.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:/".contains(c)
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.name == other.inner.name && self.inner.limits == other.inner.limits)
    }
}
impl Eq for Policy {}

impl Hash for Policy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name.hash(state);
        self.inner.limits.hash(state);
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .field("limits", &format_args!("{self}"))
            .finish()
    }
}

impl fmt::Display for Policy {
    /// The canonical notation of the limits, joined by `; ` (the name is not included).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.limits().iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::{Limit, Policy};
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for Limit {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }
    impl<'de> Deserialize<'de> for Limit {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            text.parse().map_err(D::Error::custom)
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PolicyRepr {
        name: String,
        limits: String,
    }

    /// A policy (de)serializes as `{"name": "free", "limits": "5/s burst 10; 1000/d"}`.
    impl Serialize for Policy {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            PolicyRepr {
                name: self.name().to_owned(),
                limits: self.to_string(),
            }
            .serialize(s)
        }
    }
    impl<'de> Deserialize<'de> for Policy {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let repr = PolicyRepr::deserialize(d)?;
            Policy::parse(repr.name, &repr.limits).map_err(D::Error::custom)
        }
    }
}
