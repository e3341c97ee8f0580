//! A plain token-bucket model: tokens and a last-update time per limit, in exact signed
//! integers. Written independently of floodgate's GCRA code, as the oracle stores are
//! compared against.

use std::collections::HashMap;

use floodgate::Policy;

/// What the model decided; compare with a `Decision`'s fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Admitted (for `charge`: fit without debt).
    pub allowed: bool,
    /// Index of the deciding limit.
    pub decided_by: usize,
    /// Burst of the deciding limit.
    pub limit: u64,
    /// Whole tokens left in the deciding limit.
    pub remaining: u64,
    /// Wait until the same request passes, in time units.
    pub retry_after: u64,
    /// Time until every limit is full, in time units.
    pub reset_after: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Capacity available at `at`, in time units (tokens × interval); negative is debt.
    level: i128,
    at: i128,
}

#[derive(Clone, Copy, Debug)]
struct ModelLimit {
    interval: i128,
    capacity: i128,
    burst: u64,
}

/// The model of one policy, in a time unit of `unit_ns` nanoseconds.
#[derive(Debug)]
pub struct Model {
    limits: Vec<ModelLimit>,
    buckets: HashMap<String, Vec<Bucket>>,
}

impl Model {
    /// A model of `policy` with time counted in units of `unit_ns` nanoseconds (1 for the
    /// memory store, 1000 for Redis). The interval is rounded up to the unit, as stores do.
    pub fn new(policy: &Policy, unit_ns: u64) -> Self {
        let limits = policy
            .limits()
            .iter()
            .map(|limit| {
                let period = limit.period().as_nanos() / u128::from(unit_ns);
                let interval = period.div_ceil(u128::from(limit.count())) as i128;
                let burst = u64::from(limit.capacity());
                ModelLimit {
                    interval,
                    capacity: interval * i128::from(burst),
                    burst,
                }
            })
            .collect();
        Model {
            limits,
            buckets: HashMap::new(),
        }
    }

    fn available(&self, key: &str, now: i128) -> Vec<i128> {
        match self.buckets.get(key) {
            None => self.limits.iter().map(|l| l.capacity).collect(),
            Some(buckets) => buckets
                .iter()
                .zip(&self.limits)
                .map(|(b, l)| (b.level + (now - b.at)).min(l.capacity))
                .collect(),
        }
    }

    /// A check of `cost` at `now`: consumes from every limit or from none.
    pub fn acquire(&mut self, key: &str, cost: u32, now: u64) -> Expected {
        self.decide(key, cost, now, true)
    }

    /// The current state; `allowed` says whether a cost-1 check would pass.
    pub fn peek(&mut self, key: &str, now: u64) -> Expected {
        self.decide(key, 1, now, false)
    }

    fn decide(&mut self, key: &str, cost: u32, now: u64, consume: bool) -> Expected {
        let now = i128::from(now);
        let available = self.available(key, now);
        let needed: Vec<i128> = self
            .limits
            .iter()
            .map(|l| l.interval * i128::from(cost))
            .collect();
        let mut denial: Option<(usize, i128)> = None;
        for i in 0..self.limits.len() {
            let wait = needed[i] - available[i];
            if wait > 0 && denial.is_none_or(|(_, w)| wait > w) {
                denial = Some((i, wait));
            }
        }
        if let Some((i, wait)) = denial {
            return Expected {
                allowed: false,
                decided_by: i,
                limit: self.limits[i].burst,
                remaining: self.tokens(i, available[i]),
                retry_after: wait as u64,
                reset_after: self.until_full(&available),
            };
        }
        let after: Vec<i128> = if consume {
            let after: Vec<i128> = available.iter().zip(&needed).map(|(a, n)| a - n).collect();
            self.store(key, &after, now);
            after
        } else {
            available
        };
        self.allowed(&after)
    }

    /// A charge of `cost` at `now`, without checking; debt floors at minus one burst.
    pub fn charge(&mut self, key: &str, cost: u32, now: u64) -> Expected {
        let now = i128::from(now);
        let available = self.available(key, now);
        let mut fits = true;
        let after: Vec<i128> = available
            .iter()
            .zip(&self.limits)
            .map(|(a, l)| {
                let level = a - l.interval * i128::from(cost);
                fits &= level >= 0;
                level.max(-l.capacity)
            })
            .collect();
        self.store(key, &after, now);
        if fits {
            return self.allowed(&after);
        }
        let mut longest = (0, 0);
        for (i, (level, l)) in after.iter().zip(&self.limits).enumerate() {
            let wait = l.interval - level;
            if wait > longest.1 {
                longest = (i, wait);
            }
        }
        let (i, wait) = longest;
        Expected {
            allowed: false,
            decided_by: i,
            limit: self.limits[i].burst,
            remaining: self.tokens(i, after[i]),
            retry_after: wait as u64,
            reset_after: self.until_full(&after),
        }
    }

    /// Forgets `key`.
    pub fn reset(&mut self, key: &str) {
        self.buckets.remove(key);
    }

    fn store(&mut self, key: &str, levels: &[i128], now: i128) {
        let buckets = levels
            .iter()
            .map(|&level| Bucket { level, at: now })
            .collect();
        self.buckets.insert(key.to_owned(), buckets);
    }

    fn allowed(&self, levels: &[i128]) -> Expected {
        let mut fewest = (0, u64::MAX);
        for (i, &level) in levels.iter().enumerate() {
            let tokens = self.tokens(i, level);
            if tokens < fewest.1 {
                fewest = (i, tokens);
            }
        }
        Expected {
            allowed: true,
            decided_by: fewest.0,
            limit: self.limits[fewest.0].burst,
            remaining: fewest.1,
            retry_after: 0,
            reset_after: self.until_full(levels),
        }
    }

    fn tokens(&self, limit: usize, level: i128) -> u64 {
        (level.max(0) / self.limits[limit].interval) as u64
    }

    fn until_full(&self, levels: &[i128]) -> u64 {
        levels
            .iter()
            .zip(&self.limits)
            .map(|(level, l)| (l.capacity - level).max(0))
            .max()
            .unwrap_or(0) as u64
    }
}
