//! The Envoy rules a request is matched against: each domain's tree of descriptor levels,
//! the rule a descriptor selects, and the bucket key built from its values. Built by the
//! YAML loader ([`crate::config::envoy`]), read by the RLS service.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use floodgate::Policy;

/// The time unit of a `rate_limit` (the RLS protocol's `RateLimit.Unit` numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// One second.
    Second = 1,
    /// One minute.
    Minute = 2,
    /// One hour.
    Hour = 3,
    /// One day.
    Day = 4,
    /// Seven days.
    Week = 7,
}

impl Unit {
    /// Parses a YAML `unit`.
    pub fn parse(text: &str) -> Option<Unit> {
        Some(match text.to_ascii_lowercase().as_str() {
            "second" => Unit::Second,
            "minute" => Unit::Minute,
            "hour" => Unit::Hour,
            "day" => Unit::Day,
            "week" => Unit::Week,
            _ => return None,
        })
    }

    /// From the protocol's enum number (`MONTH`, `YEAR` and `UNKNOWN` have no fixed length).
    pub fn from_proto(n: i32) -> Option<Unit> {
        Some(match n {
            1 => Unit::Second,
            2 => Unit::Minute,
            3 => Unit::Hour,
            4 => Unit::Day,
            7 => Unit::Week,
            _ => return None,
        })
    }

    /// The unit's length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 604_800,
        })
    }
}

/// What a matched `rate_limit` does.
#[derive(Clone, Debug)]
pub enum Action {
    /// `unlimited: true`: always OK.
    Unlimited,
    /// `requests_per_unit: 0`: always over the limit (a block list).
    Block,
    /// A token bucket.
    Bucket(Policy),
}

/// One `rate_limit` of the configuration.
#[derive(Clone, Debug)]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// `name`, reported in `current_limit` and matched by other rules' `replaces`.
    pub name: Option<String>,
    /// Names of rules this one replaces when both match one request.
    pub replaces: Vec<String>,
    /// `requests_per_unit`, as reported.
    pub requests_per_unit: u32,
    /// `unit`, as reported.
    pub unit: Option<Unit>,
    /// `shadow_mode`: count, but always answer OK.
    pub shadow: bool,
    /// `quota_mode`: over the limit, it makes the answer `OVER_LIMIT` only together with
    /// every other quota descriptor of the request.
    pub quota: bool,
    /// floodgate's `charge: true`: hits above zero are charged (debt capped at one burst),
    /// and the status is `OVER_LIMIT` iff the bucket is then in debt.
    pub charge: bool,
    /// `metadata`: merged into the answer's `dynamic_metadata` when this rule passes.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// The descriptor path that defines it, `domain.key_value.key…` (envoyproxy/ratelimit's
    /// composite key).
    pub key: String,
}

impl Unit {
    /// The protocol's enum name (`MINUTE`).
    pub fn proto_name(self) -> &'static str {
        match self {
            Unit::Second => "SECOND",
            Unit::Minute => "MINUTE",
            Unit::Hour => "HOUR",
            Unit::Day => "DAY",
            Unit::Week => "WEEK",
        }
    }

    /// The YAML spelling.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Level {
    /// key → value → node.
    pub(crate) exact: HashMap<String, HashMap<String, Node>>,
    /// key → `(pattern, node)` in file order.
    pub(crate) wildcards: HashMap<String, Vec<(String, Node)>>,
    /// key → node matching any value.
    pub(crate) any: HashMap<String, Node>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) rule: Option<Arc<Rule>>,
    /// Wildcard nodes with `share_threshold`: every matching value shares one bucket.
    pub(crate) share: bool,
    /// The index of the file that defined it (errors name both files of a duplicate).
    pub(crate) file: usize,
    pub(crate) children: Level,
}

/// One domain: one file, or several with `[envoy] merge_domains`.
#[derive(Debug)]
pub struct Domain {
    pub(crate) name: String,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) root: Level,
    pub(crate) rules: usize,
}

/// A descriptor's match: the rule and the bucket key built from the request's values.
#[derive(Debug)]
pub struct Match<'a> {
    /// The matched rule.
    pub rule: &'a Arc<Rule>,
    /// The bucket key within the rule.
    pub bucket: String,
}

impl Domain {
    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The files it was loaded from, in load order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    /// How many `rate_limit`s it holds.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// The rule a descriptor's entries select: walk one level per entry, preferring an exact
    /// `key`/`value` node, then a wildcard, then a key-only node; the rule of the node the
    /// last entry reaches applies (none when the walk stops early or that node has none).
    pub fn find<'a, 'e>(
        &'a self,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e str)>,
    ) -> Option<Match<'a>> {
        let last = entries.len().checked_sub(1)?;
        let mut level = &self.root;
        let mut bucket = String::new();
        for (i, (key, value)) in entries.enumerate() {
            let (node, shown) = if let Some(node) = level.exact.get(key).and_then(|m| m.get(value))
            {
                (node, value)
            } else if let Some((pattern, node)) = level
                .wildcards
                .get(key)
                .and_then(|list| list.iter().find(|(p, _)| glob(p, value)))
            {
                (node, if node.share { pattern.as_str() } else { value })
            } else if let Some(node) = level.any.get(key) {
                (node, value)
            } else {
                return None;
            };
            push_part(&mut bucket, key, shown);
            if i == last {
                return node.rule.as_ref().map(|rule| Match { rule, bucket });
            }
            level = &node.children;
        }
        None
    }
}

/// The bucket key: entries joined unambiguously (lengths prefix the parts).
pub(crate) fn push_part(out: &mut String, key: &str, value: &str) {
    use std::fmt::Write;
    let _ = write!(out, "{}:{key}={}:{value};", key.len(), value.len());
}

/// A bucket key of an Envoy rule (`domain\n` then the length-prefixed parts of its entries) as
/// a person reads it: `k=v, k2=v2`. Anything else is returned as it is.
pub fn display_bucket(bucket: &str) -> String {
    fn parts(mut rest: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (len, tail) = rest.split_once(':')?;
            let key = tail.get(..len.parse::<usize>().ok()?)?;
            let tail = tail.get(key.len()..)?.strip_prefix('=')?;
            let (len, tail) = tail.split_once(':')?;
            let value = tail.get(..len.parse::<usize>().ok()?)?;
            rest = tail.get(value.len()..)?.strip_prefix(';')?;
            out.push(format!("{key}={value}"));
        }
        Some(out)
    }
    bucket
        .split_once('\n')
        .and_then(|(_, rest)| parts(rest))
        .map_or_else(|| bucket.to_owned(), |p| p.join(", "))
}

/// `*` matches any run of characters (possibly empty); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// All loaded domains, by name.
#[derive(Debug, Default, Clone)]
pub struct Domains {
    pub(crate) by_name: HashMap<String, Arc<Domain>>,
}

impl Domains {
    /// No domains loaded.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
    /// The domain named `name`.
    pub fn get(&self, name: &str) -> Option<&Domain> {
        self.by_name.get(name).map(|d| &**d)
    }
    /// Every domain, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Domain> {
        let mut all: Vec<&Domain> = self.by_name.values().map(|d| &**d).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }
    /// Every bucket policy of every domain (for metrics and reload bookkeeping).
    pub fn policies(&self) -> Vec<Policy> {
        self.by_name
            .values()
            .flat_map(|domain| domain.rules())
            .filter_map(|rule| match &rule.action {
                Action::Bucket(policy) => Some(policy.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Domain {
    /// Every rule of the domain, sorted by key.
    pub fn rules(&self) -> Vec<Arc<Rule>> {
        fn walk(level: &Level, out: &mut Vec<Arc<Rule>>) {
            let nodes = level
                .exact
                .values()
                .flat_map(|m| m.values())
                .chain(
                    level
                        .wildcards
                        .values()
                        .flat_map(|v| v.iter().map(|(_, n)| n)),
                )
                .chain(level.any.values());
            for node in nodes {
                out.extend(node.rule.clone());
                walk(&node.children, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_buckets_read_as_their_entries() {
        let mut bucket = String::from("edge\n");
        push_part(&mut bucket, "remote_address", "10.0.0.1");
        push_part(&mut bucket, "path", "a=b;c:d");
        assert_eq!(
            display_bucket(&bucket),
            "remote_address=10.0.0.1, path=a=b;c:d"
        );
        assert_eq!(display_bucket("user:42"), "user:42");
        assert_eq!(display_bucket("d\n3:ab"), "d\n3:ab");
    }

    #[test]
    fn glob_matches_like_a_shell_star() {
        assert!(glob("files/*", "files/a.txt"));
        assert!(glob("files/*", "files/"));
        assert!(!glob("files/*", "file"));
        assert!(glob("/api*v1", "/api/users/v1"));
        assert!(!glob("/api*v1", "/api/users/v2"));
        assert!(glob("svc*ep*rpc", "svc-a-ep-b-rpc"));
        assert!(!glob("svc*ep*rpc", "svc-a-rpc"));
        assert!(glob("a*a", "aa"));
        assert!(!glob("a*a", "a"));
    }
}
