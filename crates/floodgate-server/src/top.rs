//! Top keys: per policy, a bounded Space-Saving summary of keys by decisions and by
//! denials, so `/v1/top` can say who is being limited.
//!
//! **Space-Saving** (Metwally, Agrawal and El Abbadi) keeps `k` counters. A key already
//! counted adds to its counter; a new key takes over the smallest counter, keeping its
//! count and recording that count as the newcomer's `error`. After a stream of `N` events:
//! every key whose true count exceeds `N / k` holds a counter, and each counter's
//! `count − error ≤ true count ≤ count`, with `error ≤ N / k`. (The smallest counter is at
//! most `N / k`, since the counters sum to `N`; a key's true count since it took its
//! counter is at least `count − error`, and before that it was at most the counter it took.)
//!
//! Memory is fixed per summary (`k` entries and their keys), summaries exist only for
//! policies that see traffic, and [`TopKeys`] caps their total, dropping the least recently
//! active policy's summaries at the cap. The figures are per server process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The key as the store sees it.
    pub key: String,
    /// The counted events: an upper bound of the key's true count.
    pub count: u64,
    /// How much of `count` may belong to keys this counter held before.
    pub error: u64,
}

/// A Space-Saving summary of at most `capacity` keys: a min-heap of counters by count, and
/// the position of each key in it.
#[derive(Debug)]
pub struct Summary {
    capacity: usize,
    heap: Vec<Counted>,
    positions: HashMap<String, usize>,
    /// Bytes held by keys (twice: the heap's and the index's copy).
    key_bytes: usize,
    total: u64,
}

impl Summary {
    /// An empty summary of `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Summary {
        Summary {
            capacity: capacity.max(1),
            heap: Vec::new(),
            positions: HashMap::new(),
            key_bytes: 0,
            total: 0,
        }
    }

    /// Counts one event of `key`.
    pub fn add(&mut self, key: &str) {
        self.total += 1;
        if let Some(&at) = self.positions.get(key) {
            self.heap[at].count += 1;
            self.sift_down(at);
            return;
        }
        if self.heap.len() < self.capacity {
            self.heap.push(Counted {
                key: key.to_owned(),
                count: 1,
                error: 0,
            });
            self.positions.insert(key.to_owned(), self.heap.len() - 1);
            self.key_bytes += 2 * key.len();
            self.sift_up(self.heap.len() - 1);
            return;
        }
        // Take over the smallest counter (the heap's root).
        let root = &mut self.heap[0];
        let old = std::mem::replace(&mut root.key, key.to_owned());
        root.error = root.count;
        root.count += 1;
        self.positions.remove(&old);
        self.positions.insert(key.to_owned(), 0);
        self.key_bytes = self.key_bytes + 2 * key.len() - 2 * old.len();
        self.sift_down(0);
    }

    /// Events counted so far (`N`): every error is at most `N / capacity`.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The `n` largest counters, largest first (ties by key).
    pub fn top(&self, n: usize) -> Vec<Counted> {
        let mut all = self.heap.clone();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// The counter of `key`, if it holds one.
    pub fn get(&self, key: &str) -> Option<&Counted> {
        self.positions.get(key).map(|&at| &self.heap[at])
    }

    /// Bytes this summary holds, approximately (entries, index slots and keys).
    pub fn bytes(&self) -> usize {
        const PER_ENTRY: usize = std::mem::size_of::<Counted>() + 48; // heap entry + index slot
        std::mem::size_of::<Self>() + self.capacity * PER_ENTRY + self.key_bytes
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].count <= self.heap[at].count {
                break;
            }
            self.swap(parent, at);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut smallest = at;
            if left < self.heap.len() && self.heap[left].count < self.heap[smallest].count {
                smallest = left;
            }
            if right < self.heap.len() && self.heap[right].count < self.heap[smallest].count {
                smallest = right;
            }
            if smallest == at {
                return;
            }
            self.swap(at, smallest);
            at = smallest;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for at in [a, b] {
            if let Some(slot) = self.positions.get_mut(self.heap[at].key.as_str()) {
                *slot = at;
            }
        }
    }
}

/// One policy's summaries: by decisions and by denials.
#[derive(Debug)]
pub struct PolicyTop {
    /// Every decision.
    pub decisions: Summary,
    /// Denied decisions only.
    pub denied: Summary,
    /// The tick of the last event, for dropping the least recently active at the cap.
    last_active: u64,
}

/// Which count `/v1/top` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Denied decisions.
    Denied,
    /// All decisions.
    Decisions,
}

/// One row of `/v1/top`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRow {
    /// The key.
    pub key: String,
    /// Denied decisions counted for it (an upper bound).
    pub denied: u64,
    /// Decisions counted for it (an upper bound).
    pub decisions: u64,
    /// How much of the count ranked by may belong to other keys.
    pub error: u64,
}

/// Every policy's summaries, within a memory cap.
#[derive(Debug)]
pub struct TopKeys {
    capacity: usize,
    max_bytes: usize,
    policies: Mutex<HashMap<String, PolicyTop>>,
    tick: AtomicU64,
}

impl TopKeys {
    /// `capacity` counters per summary (0: top keys off), at most `max_bytes` in all.
    pub fn new(capacity: usize, max_bytes: usize) -> TopKeys {
        TopKeys {
            capacity,
            max_bytes,
            policies: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
        }
    }

    /// Whether top keys are kept at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PolicyTop>> {
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one decision of `policy` for `key`.
    pub fn record(&self, policy: &str, key: &str, denied: bool) {
        if !self.enabled() {
            return;
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut policies = self.lock();
        // The policy's name is allocated once, when its summaries are created.
        let created = !policies.contains_key(policy);
        if created {
            policies.insert(
                policy.to_owned(),
                PolicyTop {
                    decisions: Summary::new(self.capacity),
                    denied: Summary::new(self.capacity),
                    last_active: tick,
                },
            );
        }
        let Some(top) = policies.get_mut(policy) else {
            return;
        };
        top.last_active = tick;
        let before = top.decisions.key_bytes + top.denied.key_bytes;
        top.decisions.add(key);
        if denied {
            top.denied.add(key);
        }
        let grew = top.decisions.key_bytes + top.denied.key_bytes > before;
        if created || grew {
            Self::enforce_cap(&mut policies, policy, self.max_bytes);
        }
    }

    /// Drops the least recently active policies (never `keep`) until the total fits.
    fn enforce_cap(policies: &mut HashMap<String, PolicyTop>, keep: &str, max_bytes: usize) {
        let bytes = |p: &PolicyTop| p.decisions.bytes() + p.denied.bytes();
        let mut total: usize = policies.values().map(bytes).sum();
        while total > max_bytes && policies.len() > 1 {
            let Some(oldest) = policies
                .iter()
                .filter(|(name, _)| name.as_str() != keep)
                .min_by_key(|(_, p)| p.last_active)
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            if let Some(dropped) = policies.remove(&oldest) {
                total -= bytes(&dropped);
            }
        }
    }

    /// The top `n` keys of `policy` by `by`; empty for a policy without traffic.
    pub fn top(&self, policy: &str, by: By, n: usize) -> Vec<TopRow> {
        let policies = self.lock();
        let Some(top) = policies.get(policy) else {
            return Vec::new();
        };
        let (ranked, other) = match by {
            By::Denied => (&top.denied, &top.decisions),
            By::Decisions => (&top.decisions, &top.denied),
        };
        ranked
            .top(n)
            .into_iter()
            .map(|c| {
                let other_count = other.get(&c.key).map_or(0, |o| o.count);
                let (denied, decisions) = match by {
                    By::Denied => (c.count, other_count),
                    By::Decisions => (other_count, c.count),
                };
                TopRow {
                    key: c.key,
                    denied,
                    decisions,
                    error: c.error,
                }
            })
            .collect()
    }

    /// Keeps the summaries of the policies in `live` (called at reload).
    pub fn retain(&self, live: &std::collections::HashSet<&str>) {
        self.lock().retain(|name, _| live.contains(name.as_str()));
    }

    /// Bytes held by every summary, approximately.
    pub fn bytes(&self) -> usize {
        self.lock()
            .values()
            .map(|p| p.decisions.bytes() + p.denied.bytes())
            .sum()
    }

    /// Policies with a summary.
    pub fn policies(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_summary_hands_the_smallest_counter_to_a_newcomer() {
        let mut s = Summary::new(2);
        for key in ["a", "a", "a", "b", "c"] {
            s.add(key);
        }
        // "c" took over "b"'s counter (count 1): count 2, error 1.
        let top = s.top(2);
        assert_eq!(
            top[0],
            Counted {
                key: "a".into(),
                count: 3,
                error: 0
            }
        );
        assert_eq!(
            top[1],
            Counted {
                key: "c".into(),
                count: 2,
                error: 1
            }
        );
        assert!(s.get("b").is_none());
        assert_eq!(s.total(), 5);
    }

    /// A Zipf(1.1) stream over 5 000 keys, from a fixed seed.
    fn zipf_stream(events: usize) -> Vec<String> {
        let keys = 5_000;
        let weights: Vec<f64> = (1..=keys).map(|r| 1.0 / f64::from(r).powf(1.1)).collect();
        let total: f64 = weights.iter().sum();
        let mut cumulative = Vec::with_capacity(keys as usize);
        let mut sum = 0.0;
        for w in &weights {
            sum += w / total;
            cumulative.push(sum);
        }
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..events)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                let rank = cumulative.partition_point(|&c| c < u);
                format!("user:{rank}")
            })
            .collect()
    }

    #[test]
    fn on_a_zipf_stream_the_true_top_ten_are_listed_within_the_stated_error() {
        let stream = zipf_stream(200_000);
        let mut exact: HashMap<&str, u64> = HashMap::new();
        let top = TopKeys::new(100, 64 << 20);
        for (i, key) in stream.iter().enumerate() {
            *exact.entry(key).or_default() += 1;
            top.record("p", key, i % 3 == 0);
        }
        let mut truth: Vec<(&str, u64)> = exact.iter().map(|(k, v)| (*k, *v)).collect();
        truth.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let listed = top.top("p", By::Decisions, 10);
        let listed_keys: Vec<&str> = listed.iter().map(|r| r.key.as_str()).collect();
        for (key, _) in &truth[..10] {
            assert!(
                listed_keys.contains(key),
                "{key} missing from {listed_keys:?}"
            );
        }
        let bound = 200_000 / 100;
        for row in top.top("p", By::Decisions, 100) {
            let true_count = exact[row.key.as_str()];
            assert!(row.error <= bound, "{row:?}");
            assert!(
                row.decisions - row.error <= true_count && true_count <= row.decisions,
                "{row:?} against {true_count}"
            );
        }
    }

    #[test]
    fn a_flood_of_a_million_distinct_keys_keeps_the_memory_fixed() {
        let top = TopKeys::new(1_000, 64 << 20);
        for i in 0..1_000u32 {
            top.record("p", &format!("flood:{i:07}"), false);
        }
        let full = top.bytes();
        for i in 1_000..1_000_000u32 {
            top.record("p", &format!("flood:{i:07}"), false);
        }
        assert_eq!(top.bytes(), full, "same key sizes, same memory");
        assert!(
            full < 1 << 20,
            "{full} bytes for 1 000 counters of two summaries"
        );
    }

    #[test]
    fn the_cap_drops_the_least_recently_active_policy() {
        let one = Summary::new(4).bytes() * 2;
        let top = TopKeys::new(4, one * 2 + one / 2);
        top.record("a", "k", false);
        top.record("b", "k", true);
        assert_eq!(top.policies(), 2);
        top.record("a", "k2", false); // "a" is now the more recent
        top.record("c", "k", false); // over the cap: "b" goes
        assert_eq!(top.policies(), 2);
        assert!(top.top("b", By::Decisions, 10).is_empty());
        assert_eq!(top.top("a", By::Decisions, 10).len(), 2);
        assert!(top.bytes() <= one * 2 + one / 2);
    }
}
