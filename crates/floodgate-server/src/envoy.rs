//! envoyproxy/ratelimit's YAML descriptor configuration: one domain per file, nested
//! descriptors of `key`/`value` with a `rate_limit` each, loaded into a match tree.
//!
//! Each `rate_limit` decides like a token bucket holding `requests_per_unit` tokens (or
//! `burst`), refilled at `requests_per_unit` per `unit`: a client that spent its quota gets
//! tokens back continuously rather than all at once at the next window edge, and no client can
//! pass twice the quota across a window edge.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use floodgate::{Limit, Policy};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::{ConfigError, RESERVED_PREFIX};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: Option<String>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Option<String>,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    share_threshold: bool,
    // Informational: accepted and ignored (metrics naming and quota hints).
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    #[allow(dead_code)]
    quota_mode: bool,
    #[allow(dead_code)]
    metadata: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    unit: Option<String>,
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<RawReplace>,
    unit_multiplier: Option<u32>,
    /// floodgate's extension: the bucket's capacity (default `requests_per_unit`).
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: Option<String>,
}

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
}

#[derive(Debug, Default)]
struct Level {
    /// key → value → node.
    exact: HashMap<String, HashMap<String, Node>>,
    /// key → `(pattern, node)` in file order.
    wildcards: HashMap<String, Vec<(String, Node)>>,
    /// key → node matching any value.
    any: HashMap<String, Node>,
}

#[derive(Debug)]
struct Node {
    rule: Option<Arc<Rule>>,
    /// Wildcard nodes with `share_threshold`: every matching value shares one bucket.
    share: bool,
    children: Level,
}

/// One domain (one file).
#[derive(Debug)]
pub struct Domain {
    name: String,
    file: PathBuf,
    root: Level,
    rules: usize,
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
    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
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
    by_name: HashMap<String, Arc<Domain>>,
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
        fn walk(level: &Level, out: &mut Vec<Policy>) {
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
                if let Some(rule) = &node.rule
                    && let Action::Bucket(policy) = &rule.action
                {
                    out.push(policy.clone());
                }
                walk(&node.children, out);
            }
        }
        let mut out = Vec::new();
        for domain in self.by_name.values() {
            walk(&domain.root, &mut out);
        }
        out
    }
}

/// Loads every `*.yaml` / `*.yml` file of `dir` (sorted by name), one domain each.
pub fn load_dir(dir: &Path) -> Result<Domains, ConfigError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ConfigError::new(dir, "", format!("cannot read directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut domains = Domains::default();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, "", format!("cannot read: {e}")))?;
        let domain = parse_domain(&text, &file)?;
        if domains.by_name.contains_key(&domain.name) {
            return Err(ConfigError::new(
                &file,
                "domain",
                format!("duplicate domain '{}' in config file", domain.name),
            ));
        }
        domains
            .by_name
            .insert(domain.name.clone(), Arc::new(domain));
    }
    Ok(domains)
}

/// Parses one domain file.
pub fn parse_domain(text: &str, file: &Path) -> Result<Domain, ConfigError> {
    let raw: RawDomain = serde_saphyr::from_str(text).map_err(|e| {
        let message = e.without_snippet().to_string();
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        ConfigError::new(file, "", format!("config error, {message}"))
    })?;
    let name = raw.domain.unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError::new(
            file,
            "domain",
            "config file cannot have empty domain",
        ));
    }
    let mut builder = Builder {
        file,
        domain: &name,
        rules: 0,
    };
    let root = builder.level(raw.descriptors, &name)?;
    Ok(Domain {
        rules: builder.rules,
        name,
        file: file.to_path_buf(),
        root,
    })
}

struct Builder<'a> {
    file: &'a Path,
    domain: &'a str,
    rules: usize,
}

impl Builder<'_> {
    fn level(&mut self, raw: Vec<RawDescriptor>, parent: &str) -> Result<Level, ConfigError> {
        let mut level = Level::default();
        for descriptor in raw {
            let key = descriptor.key.clone().unwrap_or_default();
            if key.is_empty() {
                return Err(ConfigError::new(
                    self.file,
                    parent,
                    "descriptor has empty key",
                ));
            }
            let composite = match &descriptor.value {
                Some(value) => format!("{parent}.{key}_{value}"),
                None => format!("{parent}.{key}"),
            };
            let duplicate = || {
                ConfigError::new(
                    self.file,
                    &composite,
                    format!("duplicate descriptor composite key '{composite}'"),
                )
            };
            let value = descriptor.value.clone();
            let node = self.node(descriptor, &composite)?;
            match value {
                None => {
                    if level.any.insert(key, node).is_some() {
                        return Err(duplicate());
                    }
                }
                Some(value) if value.contains('*') => {
                    let list = level.wildcards.entry(key).or_default();
                    if list.iter().any(|(p, _)| *p == value) {
                        return Err(duplicate());
                    }
                    list.push((value, node));
                }
                Some(value) => {
                    if level
                        .exact
                        .entry(key)
                        .or_default()
                        .insert(value, node)
                        .is_some()
                    {
                        return Err(duplicate());
                    }
                }
            }
        }
        Ok(level)
    }

    fn node(&mut self, raw: RawDescriptor, composite: &str) -> Result<Node, ConfigError> {
        let rule = match raw.rate_limit {
            None => None,
            Some(rate_limit) => Some(Arc::new(self.rule(
                rate_limit,
                raw.shadow_mode,
                composite,
            )?)),
        };
        let children = self.level(raw.descriptors, composite)?;
        Ok(Node {
            rule,
            share: raw.share_threshold,
            children,
        })
    }

    fn rule(
        &mut self,
        raw: RawRateLimit,
        shadow: bool,
        composite: &str,
    ) -> Result<Rule, ConfigError> {
        let err = |reason: String| ConfigError::new(self.file, composite, reason);
        let mut replaces = Vec::new();
        for replace in raw.replaces {
            let name = replace.name.unwrap_or_default();
            if name.is_empty() {
                return Err(err("should not have an empty replaces entry".into()));
            }
            if raw.name.as_deref() == Some(name.as_str()) {
                return Err(err(
                    "replaces should not contain name of same descriptor".into()
                ));
            }
            replaces.push(name);
        }
        self.rules += 1;
        if raw.unlimited {
            if raw.unit.is_some() {
                return Err(err(
                    "should not specify rate limit unit when unlimited".into()
                ));
            }
            return Ok(Rule {
                action: Action::Unlimited,
                name: raw.name,
                replaces,
                requests_per_unit: raw.requests_per_unit.unwrap_or(0),
                unit: None,
                shadow,
            });
        }
        let unit_text = raw.unit.unwrap_or_default();
        let unit = Unit::parse(&unit_text).ok_or_else(|| {
            err(format!(
                "invalid rate limit unit '{unit_text}' (use second, minute, hour, day or week)"
            ))
        })?;
        let multiplier = raw.unit_multiplier.unwrap_or(1);
        if multiplier == 0 {
            return Err(err("rate limit unit multiplier must be positive".into()));
        }
        let requests = raw.requests_per_unit.unwrap_or(0);
        let action = if requests == 0 {
            Action::Block
        } else {
            let period = unit.duration() * multiplier;
            let limit = Limit::per(requests, period).burst(raw.burst.unwrap_or(requests));
            let policy = Policy::new(policy_name(self.domain, composite), [limit])
                .map_err(|e| err(e.to_string()))?;
            Action::Bucket(policy)
        };
        Ok(Rule {
            action,
            name: raw.name,
            replaces,
            requests_per_unit: requests,
            unit: Some(unit),
            shadow,
        })
    }
}

/// A rule's bucket policy name: `envoy:` and the composite key when it is a valid policy name,
/// else a readable prefix and a hash of it (names key the buckets, so they must be unique
/// and stable across reloads).
fn policy_name(domain: &str, composite: &str) -> String {
    let name = format!("{RESERVED_PREFIX}{composite}");
    let valid = name.len() <= floodgate::MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    if valid {
        return name;
    }
    let readable: String = name
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes().chain([0]).chain(composite.bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{readable}/{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn invalid_names_get_a_hashed_suffix() {
        let plain = policy_name("d", "d.key_value");
        assert_eq!(plain, "envoy:d.key_value");
        let odd = policy_name("d", "d.path_/a b");
        assert!(odd.starts_with("envoy:d.path_/a_b/"), "{odd}");
        assert_ne!(odd, policy_name("d", "d.path_/a_b"));
        assert!(Policy::parse(odd, "1/s").is_ok());
    }
}
