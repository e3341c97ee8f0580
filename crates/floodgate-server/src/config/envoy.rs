//! envoyproxy/ratelimit's YAML descriptor configuration: one domain per file, nested
//! descriptors of `key`/`value` with a `rate_limit` each, loaded into the match tree of
//! [`crate::rules`].
//!
//! Each `rate_limit` decides like a token bucket holding `requests_per_unit` tokens (or
//! `burst`), refilled at `requests_per_unit` per `unit`: a client that spent its quota gets
//! tokens back continuously rather than all at once at the next window edge, and no client can
//! pass twice the quota across a window edge.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use floodgate::{Limit, Policy};
use serde::Deserialize;

use super::{ConfigError, RESERVED_PREFIX};
use crate::rules::{Action, Domain, Domains, Level, Node, Rule, Unit, push_part};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: Option<String>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: Option<String>,
    value: Option<String>,
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
    #[serde(default)]
    shadow_mode: bool,
    /// floodgate's own: hits are charged (usage reported after a response), not checked.
    #[serde(default)]
    charge: bool,
    #[serde(default)]
    share_threshold: bool,
    // Informational: accepted and ignored (metrics naming).
    #[serde(default)]
    #[allow(dead_code)]
    detailed_metric: bool,
    #[serde(default)]
    #[allow(dead_code)]
    value_to_metric: bool,
    #[serde(default)]
    quota_mode: bool,
    /// Returned (merged) in the answer's `dynamic_metadata` when the descriptor passes.
    metadata: Option<serde_json::Value>,
}

#[derive(Clone, Deserialize)]
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplace {
    name: Option<String>,
}

/// How the Envoy directory is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// `[envoy] merge_domains`: files naming the same domain merge (in file-name order)
    /// instead of being refused as duplicates.
    pub merge_domains: bool,
    /// `[envoy] max_file_bytes`: the largest file read.
    pub max_file_bytes: u64,
}

/// The default `envoy.max_file_bytes`: 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// The largest `envoy.max_file_bytes` accepted: 1 GiB.
pub const MAX_FILE_BYTES_LIMIT: u64 = 1024 * 1024 * 1024;
/// The most YAML nodes (scalars, lists and maps) one file may hold: room for about 220 000
/// block-list entries (`key`, `value` and a flow-style `rate_limit` each), with the memory
/// this takes measured in the guide.
pub const MAX_YAML_NODES: usize = 2_500_000;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            merge_domains: false,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Loads every `*.yaml` / `*.yml` file of `dir` (sorted by name): one domain each, or with
/// `merge_domains` every file naming a domain merged into it. Only regular files (or
/// symlinks to them) are read; other entries with such a name are skipped with a warning.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Domains, ConfigError> {
    let (files, skipped) = crate::files::yaml_files(dir)
        .map_err(|e| ConfigError::new(dir, "", format!("cannot read directory: {e}")))?;
    for path in skipped {
        tracing::warn!(file = %path.display(), "skipped: not a regular file");
    }
    let mut domains = Domains::default();
    // With `merge_domains`: each domain's files and their descriptors, to merge at the end.
    let mut sources: HashMap<String, Vec<(PathBuf, Vec<RawDescriptor>)>> = HashMap::new();
    for file in files {
        let text = crate::files::read_capped(&file, options.max_file_bytes).map_err(|e| {
            let reason = match e {
                crate::files::ReadError::TooLarge { .. } => format!("{e} (envoy.max_file_bytes)"),
                e => e.to_string(),
            };
            ConfigError::new(&file, "", reason)
        })?;
        let (name, descriptors) = parse_raw(&text, &file)?;
        if let Some(first) = domains.by_name.get(&name)
            && !options.merge_domains
        {
            return Err(ConfigError::new(
                &file,
                "domain",
                format!(
                    "duplicate domain '{name}' in config file (also in {}; set [envoy] \
                     merge_domains = true to merge files of one domain)",
                    first.files[0].display()
                ),
            ));
        }
        if options.merge_domains {
            sources
                .entry(name.clone())
                .or_default()
                .push((file.clone(), descriptors.clone()));
        }
        // Each file is checked on its own first, so errors come in file order.
        let domain = build_domain(name, vec![(file, descriptors)])?;
        if !domains.by_name.contains_key(&domain.name) {
            domains
                .by_name
                .insert(domain.name.clone(), Arc::new(domain));
        }
    }
    for (name, sources) in sources {
        if sources.len() > 1 {
            let merged = build_domain(name.clone(), sources)?;
            domains.by_name.insert(name, Arc::new(merged));
        }
    }
    Ok(domains)
}

/// Parses one domain file.
pub fn parse_domain(text: &str, file: &Path) -> Result<Domain, ConfigError> {
    let (name, descriptors) = parse_raw(text, file)?;
    build_domain(name, vec![(file.to_path_buf(), descriptors)])
}

/// A file's domain name and descriptors, as written.
fn parse_raw(text: &str, file: &Path) -> Result<(String, Vec<RawDescriptor>), ConfigError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = MAX_YAML_NODES;
    // Every node is one event; mapping and sequence ends are one more each.
    budget.max_events = MAX_YAML_NODES * 2;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let raw: RawDomain = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        ConfigError::new(file, "", format!("config error, {}", yaml_error(&e, text)))
    })?;
    let name = raw.domain.unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError::new(
            file,
            "domain",
            "config file cannot have empty domain",
        ));
    }
    Ok((name, raw.descriptors))
}

/// A YAML error in the configuration's own words: which field, what was wrong, where.
fn yaml_error(error: &serde_saphyr::Error, text: &str) -> String {
    use serde_saphyr::Error as E;
    let error = error.without_snippet();
    let at = error
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
        .unwrap_or_default();
    match error {
        E::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("duplicate key `{key}`{at}"),
            None => format!("duplicate key{at}"),
        },
        E::Budget { breach, .. } => match breach {
            serde_saphyr::budget::BudgetBreach::Nodes { .. }
            | serde_saphyr::budget::BudgetBreach::Events { .. } => format!(
                "the file holds more than {MAX_YAML_NODES} YAML nodes (values, lists and \
                 maps), the most one file may hold: split the domain across files and set \
                 [envoy] merge_domains = true"
            ),
            other => format!("the file exceeds a YAML parser limit ({other:?})"),
        },
        other => {
            let message = other.to_string();
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let field = other
                .location()
                .and_then(|l| field_at(text, l.line(), l.column()));
            match field {
                Some(field) if !message.contains(&format!("`{field}`")) => {
                    format!("`{field}`: {message}")
                }
                _ => message.to_owned(),
            }
        }
    }
}

/// The mapping key whose value sits at `line`/`column` (1-based), when the text shows one:
/// `requests_per_unit: -1` or `{ unit: second, requests_per_unit: -1 }`.
fn field_at(text: &str, line: u64, column: u64) -> Option<String> {
    let line = text
        .lines()
        .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let before: String = line
        .chars()
        .take(usize::try_from(column).ok()?.saturating_sub(1))
        .collect();
    let key = before.trim_end().strip_suffix(':')?;
    let start = key
        .rfind(|c: char| c.is_whitespace() || "{,-".contains(c))
        .map_or(0, |i| i + 1);
    let key = key[start..].trim_matches(['"', '\'']);
    (!key.is_empty()).then(|| key.to_owned())
}

/// Builds a domain from its files' descriptors, in order.
fn build_domain(
    name: String,
    sources: Vec<(PathBuf, Vec<RawDescriptor>)>,
) -> Result<Domain, ConfigError> {
    let colliding = colliding_composites(&name, sources.iter().flat_map(|(_, d)| d));
    let files: Vec<PathBuf> = sources.iter().map(|(file, _)| file.clone()).collect();
    let mut builder = Builder {
        files: &files,
        file: 0,
        domain: &name,
        rules: 0,
        colliding: &colliding,
    };
    let mut root = Level::default();
    for (i, (_, descriptors)) in sources.iter().enumerate() {
        builder.file = i;
        builder.level(&mut root, descriptors, &name, "")?;
    }
    let rules = builder.rules;
    Ok(Domain {
        rules,
        name,
        files,
        root,
    })
}

/// The composite keys (`domain.key_value.key…`) that two different descriptor paths share:
/// `a` = `b_c` and `a_b` = `c` both read `d.a_b_c`. They name buckets, metric series and
/// `RateLimit-Policy` members, so each colliding one gets a suffix that tells them apart.
fn colliding_composites<'a>(
    domain: &str,
    descriptors: impl Iterator<Item = &'a RawDescriptor>,
) -> HashSet<String> {
    fn walk(
        level: &[RawDescriptor],
        parent: &str,
        path: &str,
        first: &mut HashMap<String, String>,
        colliding: &mut HashSet<String>,
    ) {
        for descriptor in level {
            let key = descriptor.key.as_deref().unwrap_or_default();
            let composite = composite_key(parent, key, descriptor.value.as_deref());
            let mut here = path.to_owned();
            push_path(&mut here, key, descriptor.value.as_deref());
            walk(&descriptor.descriptors, &composite, &here, first, colliding);
            match first.get(&composite) {
                Some(seen) if *seen != here => {
                    tracing::warn!(
                        composite = %composite,
                        "descriptors with different keys and values share the composite key: \
                         each gets a suffix in its bucket, metric and RateLimit-Policy name"
                    );
                    colliding.insert(composite);
                }
                Some(_) => {}
                None => {
                    first.insert(composite, here);
                }
            }
        }
    }
    let mut first = HashMap::new();
    let mut colliding = HashSet::new();
    for descriptor in descriptors {
        walk(
            std::slice::from_ref(descriptor),
            domain,
            "",
            &mut first,
            &mut colliding,
        );
    }
    colliding
}

/// `parent.key_value`, or `parent.key` without a value (envoyproxy/ratelimit's spelling).
fn composite_key(parent: &str, key: &str, value: Option<&str>) -> String {
    match value {
        Some(value) => format!("{parent}.{key}_{value}"),
        None => format!("{parent}.{key}"),
    }
}

struct Builder<'a> {
    /// The files being merged, and the one being read (its index).
    files: &'a [PathBuf],
    file: usize,
    domain: &'a str,
    rules: usize,
    colliding: &'a HashSet<String>,
}

impl Builder<'_> {
    fn level(
        &mut self,
        level: &mut Level,
        raw: &[RawDescriptor],
        parent: &str,
        path: &str,
    ) -> Result<(), ConfigError> {
        let file = &self.files[self.file];
        for descriptor in raw {
            let key = descriptor.key.clone().unwrap_or_default();
            if key.is_empty() {
                return Err(ConfigError::new(file, parent, "descriptor has empty key"));
            }
            let composite = composite_key(parent, &key, descriptor.value.as_deref());
            let existing = match descriptor.value.as_deref() {
                None => level.any.get(&key),
                Some(value) if value.contains('*') => level
                    .wildcards
                    .get(&key)
                    .and_then(|list| list.iter().find(|(p, _)| p == value).map(|(_, n)| n)),
                Some(value) => level.exact.get(&key).and_then(|m| m.get(value)),
            };
            if let Some(existing) = existing {
                let reason = if existing.file == self.file {
                    format!("duplicate descriptor composite key '{composite}'")
                } else {
                    format!(
                        "duplicate descriptor composite key '{composite}': also defined in {}",
                        self.files[existing.file].display()
                    )
                };
                return Err(ConfigError::new(file, &composite, reason));
            }
            let mut here = path.to_owned();
            push_path(&mut here, &key, descriptor.value.as_deref());
            let node = self.node(descriptor, &composite, &here)?;
            match &descriptor.value {
                None => {
                    level.any.insert(key, node);
                }
                Some(value) if value.contains('*') => {
                    level
                        .wildcards
                        .entry(key)
                        .or_default()
                        .push((value.clone(), node));
                }
                Some(value) => {
                    level
                        .exact
                        .entry(key)
                        .or_default()
                        .insert(value.clone(), node);
                }
            }
        }
        Ok(())
    }

    fn node(
        &mut self,
        raw: &RawDescriptor,
        composite: &str,
        path: &str,
    ) -> Result<Node, ConfigError> {
        let rule = match &raw.rate_limit {
            None => None,
            Some(rate_limit) => {
                let mut rule = self.rule(rate_limit, raw.shadow_mode, composite, path)?;
                rule.quota = raw.quota_mode;
                rule.charge = raw.charge;
                rule.metadata = match &raw.metadata {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::Object(map)) => Some(map.clone()),
                    Some(_) => {
                        return Err(ConfigError::new(
                            &self.files[self.file],
                            composite,
                            "metadata must be a map".to_owned(),
                        ));
                    }
                };
                Some(Arc::new(rule))
            }
        };
        let mut children = Level::default();
        self.level(&mut children, &raw.descriptors, composite, path)?;
        Ok(Node {
            rule,
            share: raw.share_threshold,
            file: self.file,
            children,
        })
    }

    fn rule(
        &mut self,
        raw: &RawRateLimit,
        shadow: bool,
        composite: &str,
        path: &str,
    ) -> Result<Rule, ConfigError> {
        let err = |reason: String| ConfigError::new(&self.files[self.file], composite, reason);
        let mut replaces = Vec::new();
        for replace in &raw.replaces {
            let name = replace.name.clone().unwrap_or_default();
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
                name: raw.name.clone(),
                replaces,
                requests_per_unit: raw.requests_per_unit.unwrap_or(0),
                unit: None,
                shadow,
                quota: false,
                charge: false,
                metadata: None,
                key: composite.to_owned(),
            });
        }
        let unit_text = raw.unit.clone().unwrap_or_default();
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
            let distinct = self.colliding.contains(composite).then_some(path);
            let policy = Policy::new(policy_name(self.domain, composite, distinct), [limit])
                .map_err(|e| err(e.to_string()))?;
            Action::Bucket(policy)
        };
        Ok(Rule {
            action,
            name: raw.name.clone(),
            replaces,
            requests_per_unit: requests,
            unit: Some(unit),
            shadow,
            quota: false,
            charge: false,
            metadata: None,
            key: composite.to_owned(),
        })
    }
}

/// Appends one `(key, value)` step to a descriptor path spelled without ambiguity (lengths
/// prefix the parts; a key without value differs from every value).
fn push_path(path: &mut String, key: &str, value: Option<&str>) {
    push_part(path, key, value.unwrap_or("\u{0}"));
}

/// A rule's bucket policy name: `envoy:` and the composite key when it is a valid policy name,
/// else a readable prefix and a hash of it (names key the buckets, so they must be unique
/// and stable across reloads). `distinct`: the unambiguous path of a composite key that
/// another path shares; its hash is appended, so the two stay apart.
fn policy_name(domain: &str, composite: &str, distinct: Option<&str>) -> String {
    let fnv =
        |text: &str| floodgate::store::stable_hash(domain.bytes().chain([0]).chain(text.bytes()));
    let name = format!("{RESERVED_PREFIX}{composite}");
    // Room for the distinguishing suffix (`/` and 16 hex digits) when there is one.
    let room = floodgate::MAX_NAME_LEN - if distinct.is_some() { 17 } else { 0 };
    let valid = name.len() <= room && name.chars().all(floodgate::is_name_char);
    let base = if valid {
        name
    } else {
        let readable: String = name
            .chars()
            .take(if distinct.is_some() { 90 } else { 100 })
            .map(|c| if floodgate::is_name_char(c) { c } else { '_' })
            .collect();
        format!("{readable}/{:016x}", fnv(composite))
    };
    match distinct {
        None => base,
        Some(path) => format!("{base}/{:016x}", fnv(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_get_a_hashed_suffix() {
        let plain = policy_name("d", "d.key_value", None);
        assert_eq!(plain, "envoy:d.key_value");
        let odd = policy_name("d", "d.path_/a b", None);
        assert!(odd.starts_with("envoy:d.path_/a_b/"), "{odd}");
        assert_ne!(odd, policy_name("d", "d.path_/a_b", None));
        assert!(Policy::parse(odd, "1/s").is_ok());
    }

    #[test]
    fn generated_names_are_pinned() {
        // These names key buckets in Redis: they must never change between versions.
        for (domain, composite, distinct, name) in [
            (
                "d",
                "d.path_/a b",
                None,
                "envoy:d.path_/a_b/8908e4d7149a4deb",
            ),
            (
                "rl",
                "rl.remote_address_10.0.0.1 x",
                None,
                "envoy:rl.remote_address_10.0.0.1_x/b92a3e6c74820f13",
            ),
            (
                "d",
                "d.a_b_c",
                Some("\u{1}a\u{1}b_c"),
                "envoy:d.a_b_c/6192ea700b867726",
            ),
        ] {
            assert_eq!(policy_name(domain, composite, distinct), name);
        }
    }
}
