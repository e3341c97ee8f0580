//! Envoy's rate limit service: envoyproxy/ratelimit's YAML fixtures (valid ones load, invalid
//! ones fail with a message naming the problem) and `ShouldRateLimit` round trips with a tonic
//! client, on the memory store and on Redis.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{TempDir, get};
use floodgate_server::config::envoy::{LoadOptions, load_dir, parse_domain};
use floodgate_server::proto::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor::Entry, rate_limit_descriptor::RateLimitOverride,
};
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, rate_limit::Unit,
};
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use floodgate_server::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use floodgate_server::{Options, Running, start};
use floodgate_testkit::redis_server::RedisServer;
use tonic::transport::Channel;

pub(crate) fn fixtures(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/envoy")
        .join(kind)
}

#[test]
fn every_valid_fixture_loads() {
    let domains =
        load_dir(&fixtures("valid"), &LoadOptions::default()).expect("the valid fixtures load");
    let summary: Vec<(String, usize)> = domains
        .iter()
        .map(|d| (d.name().to_owned(), d.rule_count()))
        .collect();
    assert_eq!(
        summary,
        [
            ("burst-domain", 1),
            ("edge_proxy_per_ip", 4),
            ("metadata-domain", 2),
            ("mongo_cps", 2),
            ("multiplier-domain", 2),
            ("replaces-domain", 2),
            ("shadow-domain", 2),
            ("share-domain", 8),
            ("test-domain", 10),
            ("wildcard-domain", 4),
        ]
        .map(|(n, c)| (n.to_owned(), c))
    );
}

#[test]
fn every_invalid_fixture_fails_naming_the_problem() {
    let expected = [
        (
            "bad_limit_unit.yaml",
            "test-domain.key1_value1: invalid rate limit unit 'foo' (use second, minute, hour, day or week)",
        ),
        (
            "bad_number.yaml",
            "config error, `requests_per_unit`: invalid u32 at line 4, column 52",
        ),
        (
            "bad_yaml.yaml",
            "config error, `value`: expected string scalar at line 4, column 12",
        ),
        (
            "duplicate_key.yaml",
            "test-domain.key1_value1: duplicate descriptor composite key 'test-domain.key1_value1'",
        ),
        (
            "duplicate_yaml_key.yaml",
            "config error, duplicate key `value` at line 5, column 5",
        ),
        (
            "empty_domain.yaml",
            "domain: config file cannot have empty domain",
        ),
        ("empty_key.yaml", "test-domain: descriptor has empty key"),
        (
            "misspelled_key.yaml",
            "config error, unknown field `ratelimit`, expected one of key, value, rate_limit, \
             descriptors, shadow_mode, charge, share_threshold, detailed_metric, value_to_metric, \
             quota_mode, metadata at line 5, column 5",
        ),
        (
            "misspelled_key2.yaml",
            "config error, unknown field `requestsperunit`, expected one of unit, \
             requests_per_unit, unlimited, name, replaces, unit_multiplier, burst at line 7, \
             column 7",
        ),
        (
            "month_unit.yaml",
            "test-domain.key1: invalid rate limit unit 'month' (use second, minute, hour, day or week)",
        ),
        (
            "non_map_list.yaml",
            "config error, expected mapping start at line 3, column 5",
        ),
        (
            "non_string_key.yaml",
            "config error, unknown field `0.25`, expected one of domain, descriptors at line 1, column 1",
        ),
        (
            "replaces_empty.yaml",
            "test-domain.key1_value1.subkey1: should not have an empty replaces entry",
        ),
        (
            "replaces_self.yaml",
            "test-domain.key1_value1.subkey1: replaces should not contain name of same descriptor",
        ),
        (
            "unlimited_with_unit.yaml",
            "test-domain.foo: should not specify rate limit unit when unlimited",
        ),
        (
            "zero_unit_multiplier.yaml",
            "test-domain.key1: rate limit unit multiplier must be positive",
        ),
    ];
    let dir = fixtures("invalid");
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        expected.map(|(f, _)| f.to_owned()),
        "every fixture has an expectation"
    );
    for (file, message) in expected {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let error = parse_domain(&text, Path::new(file)).expect_err(file);
        assert_eq!(error.to_string(), format!("{file}: {message}"));
    }
}

#[test]
fn two_files_may_not_claim_one_domain() {
    let dir = TempDir::new("dup-domain");
    let basic = std::fs::read_to_string(fixtures("valid").join("basic_config.yaml")).unwrap();
    dir.write("a.yaml", &basic);
    dir.write("b.yaml", "domain: test-domain\ndescriptors: []\n");
    let error = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    assert_eq!(error.key, "domain");
    assert_eq!(
        error.reason,
        format!(
            "duplicate domain 'test-domain' in config file (also in {}; set [envoy] \
             merge_domains = true to merge files of one domain)",
            dir.path().join("a.yaml").display()
        )
    );
    assert!(error.file.ends_with("b.yaml"), "{error}");
}

#[test]
fn with_merge_domains_files_of_one_domain_merge_in_name_order() {
    let dir = TempDir::new("merge-domain");
    dir.write(
        "a.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    value: one\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
    );
    dir.write(
        "b.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    value: two\n    rate_limit: { unit: second, requests_per_unit: 2 }\n",
    );
    let merged = LoadOptions {
        merge_domains: true,
        ..LoadOptions::default()
    };
    let domains = load_dir(dir.path(), &merged).unwrap();
    let domain = domains.get("d").unwrap();
    assert_eq!(domain.rule_count(), 2);
    assert_eq!(
        domain.files(),
        [dir.path().join("a.yaml"), dir.path().join("b.yaml")]
    );
    for (value, requests) in [("one", 1), ("two", 2)] {
        let found = domain.find([("k", value)].into_iter()).unwrap();
        assert_eq!(found.rule.requests_per_unit, requests);
    }
    // One composite key in two files: an error naming both.
    dir.write(
        "c.yaml",
        "domain: d\ndescriptors:\n  - key: k\n    value: one\n    rate_limit: { unit: minute, requests_per_unit: 9 }\n",
    );
    let error = load_dir(dir.path(), &merged).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: d.k_one: duplicate descriptor composite key 'd.k_one': also defined in {}",
            dir.path().join("c.yaml").display(),
            dir.path().join("a.yaml").display()
        )
    );
    // Without the switch the duplicate domain is refused, as before.
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    let error = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    assert!(error.reason.starts_with("duplicate domain 'd'"), "{error}");
}

/// The bucket policy names of a domain, sorted.
fn bucket_names(yaml: &str) -> Vec<String> {
    let domain = parse_domain(yaml, Path::new("names.yaml")).unwrap();
    let domains = TempDir::new("names");
    domains.write("names.yaml", yaml);
    let loaded = load_dir(domains.path(), &LoadOptions::default()).unwrap();
    assert_eq!(
        loaded.get(domain.name()).unwrap().rule_count(),
        domain.rule_count()
    );
    let mut names: Vec<String> = loaded
        .policies()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bucket_names_that_do_not_collide_stay_as_they_were() {
    // Pinned: these names key Redis buckets and metric series, so they survive upgrades.
    let names = bucket_names(
        "domain: d\ndescriptors:\n\
         \x20 - key: remote_address\n    rate_limit: { unit: minute, requests_per_unit: 10 }\n\
         \x20 - key: path\n    value: \"files/*\"\n    rate_limit: { unit: hour, requests_per_unit: 100 }\n\
         \x20 - key: path\n    value: \"/a b\"\n    rate_limit: { unit: hour, requests_per_unit: 100 }\n\
         \x20 - key: api_key\n    descriptors:\n      - key: plan\n        value: free\n        rate_limit: { unit: second, requests_per_unit: 5 }\n",
    );
    assert_eq!(
        names,
        [
            "envoy:d.api_key.plan_free",
            "envoy:d.path_/a_b/8908e4d7149a4deb",
            "envoy:d.path_files/_/9a346e560078c6f1",
            "envoy:d.remote_address",
        ]
        .map(String::from)
        .to_vec()
    );
}

#[test]
fn composite_keys_that_collide_get_distinct_bucket_names() {
    // `a` = `b_c` and `a_b` = `c` both spell `d.a_b_c`: they used to share one bucket.
    let names = bucket_names(
        "domain: d\ndescriptors:\n\
         \x20 - key: a\n    value: b_c\n    rate_limit: { unit: second, requests_per_unit: 1 }\n\
         \x20 - key: a_b\n    value: c\n    rate_limit: { unit: second, requests_per_unit: 1 }\n\
         \x20 - key: other\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
    );
    assert_eq!(names.len(), 3);
    assert_eq!(
        names[2], "envoy:d.other",
        "a name without a collision is unchanged"
    );
    for name in &names[..2] {
        assert!(name.starts_with("envoy:d.a_b_c/"), "{name}");
        assert_eq!(name.len(), "envoy:d.a_b_c/".len() + 16, "{name}");
    }
    assert_ne!(names[0], names[1]);
}

#[test]
fn a_block_list_of_100_000_entries_loads() {
    let mut yaml = String::from("domain: blocklist\ndescriptors:\n");
    for i in 0..100_000u32 {
        yaml.push_str(&format!(
            "  - key: remote_address\n    value: 10.{}.{}.{}\n    rate_limit: {{ unit: second, requests_per_unit: 0 }}\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let started = std::time::Instant::now();
    let domain = parse_domain(&yaml, Path::new("blocklist.yaml")).unwrap();
    assert_eq!(domain.rule_count(), 100_000);
    let found = domain
        .find([("remote_address", "10.1.134.159")].into_iter())
        .unwrap();
    assert_eq!(found.rule.requests_per_unit, 0);
    eprintln!(
        "100 000 block-list entries ({} bytes) loaded in {:?}",
        yaml.len(),
        started.elapsed()
    );
}

#[test]
fn a_file_over_the_node_budget_is_refused_in_words() {
    // Scalars in one flow list: the cheapest way to many nodes.
    let mut yaml = String::from("domain: huge\ndescriptors:\n  - key: k\n    metadata: [");
    yaml.push_str(&"1,".repeat(floodgate_server::config::envoy::MAX_YAML_NODES));
    yaml.push_str("1]\n");
    let error = parse_domain(&yaml, Path::new("huge.yaml")).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "huge.yaml: config error, the file holds more than {} YAML nodes (values, lists \
             and maps), the most one file may hold: split the domain across files and set \
             [envoy] merge_domains = true",
            floodgate_server::config::envoy::MAX_YAML_NODES
        )
    );
}

pub(crate) async fn start_server(
    store_url: Option<&str>,
) -> (TempDir, Running, RateLimitServiceClient<Channel>) {
    start_server_with("valid", store_url, "").await
}

/// A server on the Envoy fixtures of `kind`, on `store_url` (memory without one), with
/// `envoy_switches` added to its `[envoy]` table, and an RLS client of it.
pub(crate) async fn start_server_with(
    kind: &str,
    store_url: Option<&str>,
    envoy_switches: &str,
) -> (TempDir, Running, RateLimitServiceClient<Channel>) {
    let dir = TempDir::new("envoy");
    let store = store_url.map_or(String::new(), |url| format!("[store]\nurl = \"{url}\"\n"));
    let config = format!(
        "{store}[envoy]\nconfig_dir = {:?}\n{envoy_switches}",
        fixtures(kind).display().to_string()
    );
    let path = dir.write("floodgate.toml", &config);
    let server = start(Options::file_on_free_ports(path)).await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (dir, server, RateLimitServiceClient::new(channel))
}

pub(crate) fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

pub(crate) async fn ask(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptors: Vec<RateLimitDescriptor>,
    hits: u32,
) -> RateLimitResponse {
    client
        .should_rate_limit(RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: hits,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn one(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    entries: &[(&str, &str)],
    hits: u32,
) -> DescriptorStatus {
    let response = ask(client, domain, vec![descriptor(entries)], hits).await;
    assert_eq!(response.statuses.len(), 1);
    let status = response.statuses[0].clone();
    assert_eq!(response.overall_code, status.code, "one descriptor decides");
    status
}

pub(crate) fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).unwrap()
}

/// Per-value buckets, OK then OVER_LIMIT, statuses in request order, limits reported.
async fn per_value_buckets_and_status_order(client: &mut RateLimitServiceClient<Channel>) {
    // key3: 1 per hour, one bucket per distinct value.
    let first = one(client, "test-domain", &[("key3", "a")], 0).await;
    assert_eq!(code(&first), Code::Ok);
    assert_eq!(first.limit_remaining, 0);
    let limit = first.current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (1, Unit::Hour as i32)
    );
    let reset = first.duration_until_reset.unwrap();
    assert!((3_590..=3_600).contains(&reset.seconds), "{reset:?}");
    assert_eq!(
        code(&one(client, "test-domain", &[("key3", "a")], 0).await),
        Code::OverLimit
    );
    assert_eq!(
        code(&one(client, "test-domain", &[("key3", "b")], 0).await),
        Code::Ok,
        "another value, another bucket"
    );

    // Several descriptors: one status each, in request order.
    let response = ask(
        client,
        "test-domain",
        vec![
            descriptor(&[("key3", "c")]),
            descriptor(&[("key3", "a")]),
            descriptor(&[("nothing", "matches")]),
            descriptor(&[("key6", "any")]),
            descriptor(&[("key2", "value3")]),
            descriptor(&[("key1", "value1"), ("subkey1", "subvalue1")]),
        ],
        0,
    )
    .await;
    assert_eq!(response.overall_code, Code::OverLimit as i32);
    let codes: Vec<Code> = response.statuses.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::OverLimit,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::Ok
        ]
    );
    let limits: Vec<Option<u32>> = response
        .statuses
        .iter()
        .map(|s| s.current_limit.as_ref().map(|l| l.requests_per_unit))
        .collect();
    assert_eq!(limits, [Some(1), Some(1), None, None, None, Some(10)]);
    assert_eq!(response.statuses[3].limit_remaining, u32::MAX, "unlimited");
    assert_eq!(response.statuses[5].limit_remaining, 9);
    let headers: Vec<(&str, &str)> = response
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert!(
        headers
            .iter()
            .any(|(k, v)| *k == "ratelimit-policy" && v.contains(";q=1;w=3600")),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .any(|(k, v)| *k == "ratelimit" && v.contains(";r=0;t="))
    );
    assert!(headers.iter().any(|(k, _)| *k == "retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_rate_limit_on_the_memory_store() {
    let (_dir, server, mut client) = start_server(None).await;
    per_value_buckets_and_status_order(&mut client).await;
    let c = &mut client;

    // Most specific match: key/value beats key-only; a second level key-only default.
    let status = one(c, "test-domain", &[("key2", "value2")], 0).await;
    assert_eq!(status.current_limit.unwrap().requests_per_unit, 30);
    let status = one(c, "test-domain", &[("key2", "other")], 0).await;
    assert_eq!(status.current_limit.unwrap().requests_per_unit, 20);
    let status = one(c, "test-domain", &[("key1", "value1"), ("subkey1", "x")], 0).await;
    assert_eq!(status.current_limit.unwrap().requests_per_unit, 5);
    // A node without a rate_limit, or a walk that stops early: no limit.
    for entries in [
        &[("key1", "value1")][..],
        &[("key1", "other"), ("subkey1", "x")],
        &[("key5", "value5"), ("subkey5", "other")],
    ] {
        let status = one(c, "test-domain", entries, 0).await;
        assert_eq!((code(&status), status.current_limit), (Code::Ok, None));
    }

    // Request-level hits_addend; more hits than the bucket holds is over the limit.
    assert_eq!(
        code(&one(c, "wildcard-domain", &[("wild", "foo1")], 20).await),
        Code::Ok
    );
    assert_eq!(
        code(&one(c, "wildcard-domain", &[("wild", "foo1")], 1).await),
        Code::OverLimit
    );
    assert_eq!(
        code(&one(c, "wildcard-domain", &[("wild", "foo2")], 1).await),
        Code::Ok,
        "wildcards keep one bucket per value"
    );
    assert_eq!(
        one(c, "wildcard-domain", &[("wild", "bar")], 1)
            .await
            .current_limit,
        None
    );
    assert_eq!(
        one(c, "wildcard-domain", &[("noWild", "foo1")], 1)
            .await
            .current_limit,
        None,
        "no eager match without a star"
    );
    assert!(
        one(c, "wildcard-domain", &[("midWild", "barab")], 1)
            .await
            .current_limit
            .is_some()
    );
    assert_eq!(
        code(&one(c, "mongo_cps", &[("database", "users")], 501).await),
        Code::OverLimit
    );

    // share_threshold: every matching value shares one bucket.
    assert_eq!(
        code(&one(c, "share-domain", &[("files", "files/a")], 100).await),
        Code::Ok
    );
    assert_eq!(
        code(&one(c, "share-domain", &[("files", "files/b")], 1).await),
        Code::OverLimit
    );
    // An explicit value beats the shared wildcard.
    assert_eq!(
        one(c, "share-domain", &[("file", "test1")], 1)
            .await
            .current_limit
            .unwrap()
            .requests_per_unit,
        50
    );

    // Descriptor-level hits_addend 0 checks without counting.
    let mut peek = descriptor(&[("key4", "p")]);
    peek.hits_addend = Some(0);
    for _ in 0..3 {
        let response = ask(c, "test-domain", vec![peek.clone()], 0).await;
        assert_eq!(response.statuses[0].limit_remaining, 1);
        assert_eq!(response.overall_code, Code::Ok as i32);
    }
    let mut heavy = descriptor(&[("key4", "q")]);
    heavy.hits_addend = Some(5);
    assert_eq!(
        ask(c, "test-domain", vec![heavy], 1).await.overall_code,
        Code::OverLimit as i32,
        "descriptor hits override the request's"
    );

    // A block list entry and the per-IP default next to it.
    let blocked = one(c, "edge_proxy_per_ip", &[("remote_address", "50.0.0.5")], 0).await;
    assert_eq!(code(&blocked), Code::OverLimit);
    assert_eq!(blocked.current_limit.unwrap().requests_per_unit, 0);
    assert_eq!(
        code(&one(c, "edge_proxy_per_ip", &[("remote_address", "10.0.0.1")], 0).await),
        Code::Ok
    );
    let named = one(c, "edge_proxy_per_ip", &[("to_cluster", "path1")], 0).await;
    assert_eq!(named.current_limit.unwrap().name, "path1_limit");

    // Shadow mode counts but answers OK.
    for _ in 0..2 {
        assert_eq!(
            code(&one(c, "shadow-domain", &[("user", "u")], 0).await),
            Code::Ok
        );
    }
    assert_eq!(
        code(&one(c, "shadow-domain", &[("strict", "u")], 0).await),
        Code::Ok
    );
    assert_eq!(
        code(&one(c, "shadow-domain", &[("strict", "u")], 0).await),
        Code::OverLimit
    );
    let metrics = get(server.http_addr(), "/metrics").await.body;
    assert!(
        metrics.contains(
            "floodgate_decisions_total{policy=\"envoy:shadow-domain.user\",outcome=\"shadow_denied\"} 1"
        ),
        "{metrics}"
    );

    // replaces: the premium rule switches the per-path one off for that request.
    let both = || {
        vec![
            descriptor(&[("path", "/a")]),
            descriptor(&[("client", "premium")]),
        ]
    };
    for _ in 0..3 {
        let response = ask(c, "replaces-domain", both(), 0).await;
        assert_eq!(response.overall_code, Code::Ok as i32);
        assert_eq!(response.statuses[0].current_limit, None, "replaced");
        assert_eq!(
            response.statuses[1].current_limit.as_ref().unwrap().name,
            "premium"
        );
    }
    assert_eq!(
        code(&one(c, "replaces-domain", &[("path", "/a")], 0).await),
        Code::Ok
    );
    assert_eq!(
        code(&one(c, "replaces-domain", &[("path", "/a")], 0).await),
        Code::OverLimit
    );

    // floodgate's burst; unit_multiplier stretches the period.
    for remaining in [2, 1, 0] {
        let status = one(c, "burst-domain", &[("api_key", "k")], 0).await;
        assert_eq!(
            (code(&status), status.limit_remaining),
            (Code::Ok, remaining)
        );
    }
    assert_eq!(
        code(&one(c, "burst-domain", &[("api_key", "k")], 0).await),
        Code::OverLimit
    );
    let stretched = one(c, "multiplier-domain", &[("key1", "x")], 20).await;
    assert_eq!(code(&stretched), Code::Ok);
    let limit = stretched.current_limit.unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (20, Unit::Minute as i32)
    );
    let reset = stretched.duration_until_reset.unwrap().seconds;
    assert!((295..=300).contains(&reset), "20 per 5 minutes: {reset}");

    // A limit override sent by the client.
    let mut custom = descriptor(&[("anything", "x")]);
    custom.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: Unit::Minute as i32,
    });
    let codes: Vec<i32> = futures_codes(c, "test-domain", &custom, 3).await;
    assert_eq!(
        codes,
        [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32]
    );
    custom.limit = Some(RateLimitOverride {
        requests_per_unit: 2,
        unit: Unit::Year as i32,
    });
    let error = c
        .should_rate_limit(RateLimitRequest {
            domain: "test-domain".into(),
            descriptors: vec![custom],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);

    // A request over 64 KiB is refused before it is decoded; service goes on.
    let huge = "v".repeat(70_000);
    let error = c
        .should_rate_limit(RateLimitRequest {
            domain: "test-domain".into(),
            descriptors: vec![descriptor(&[("key3", huge.as_str())])],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error:?}");
    assert_eq!(
        code(&one(c, "test-domain", &[("key3", "after")], 0).await),
        Code::Ok
    );

    // Unknown domain: OK without limits. Bad requests: INVALID_ARGUMENT.
    let response = ask(c, "no-such-domain", vec![descriptor(&[("a", "b")])], 0).await;
    assert_eq!(response.overall_code, Code::Ok as i32);
    assert_eq!(response.statuses[0].current_limit, None);
    for (domain, descriptors, message) in [
        (
            "",
            vec![descriptor(&[("a", "b")])],
            "rate limit domain must not be empty",
        ),
        (
            "test-domain",
            vec![],
            "rate limit descriptor list must not be empty",
        ),
    ] {
        let error = c
            .should_rate_limit(RateLimitRequest {
                domain: domain.into(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(error.message(), message);
    }
    server.shutdown().await;
}

async fn futures_codes(
    client: &mut RateLimitServiceClient<Channel>,
    domain: &str,
    descriptor: &RateLimitDescriptor,
    n: usize,
) -> Vec<i32> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(
            ask(client, domain, vec![descriptor.clone()], 0)
                .await
                .overall_code,
        );
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn should_rate_limit_on_redis() {
    let redis = RedisServer::start();
    let (_dir, server, mut client) = start_server(Some(&redis.url())).await;
    per_value_buckets_and_status_order(&mut client).await;
    // State lives in Redis: a second server on the same Redis sees the same buckets.
    let (_dir2, second, mut other) = start_server(Some(&redis.url())).await;
    assert_eq!(
        code(&one(&mut other, "test-domain", &[("key3", "a")], 0).await),
        Code::OverLimit
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    second.shutdown().await;
    server.shutdown().await;
}

/// The Python interpreter with Debian's `python3-grpcio` and `python3-grpc-tools` (installed by
/// `scripts/test`), or the first `python3` that can import them.
pub(crate) fn python_with_grpc() -> Option<String> {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find_map(|python| {
            let status = std::process::Command::new(python)
                .args(["-c", "import grpc, grpc_tools"])
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            status.success().then(|| python.to_owned())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_gets_the_same_answers() {
    let python = python_with_grpc().expect(
        "a Python with grpcio and grpc_tools is needed: apt-get install python3-grpcio \
         python3-grpc-tools (scripts/test installs them)",
    );
    let (_dir, server, _client) = start_server(None).await;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(manifest.join("tests/python/rls_client.py"))
        .arg(manifest.join("proto"))
        .arg(server.grpc_addr().to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    server.shutdown().await;
}
