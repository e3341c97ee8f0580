//! Property versions of the fuzz targets (`fuzz/`), bounded so the default suite stays fast:
//! the TOML config, the Envoy YAML and the HTTP request bodies never panic on any input, and
//! whatever they accept satisfies their invariants. `PROPTEST_CASES` raises the case count.

use std::path::Path;

use floodgate_server::config::Config;
use floodgate_server::config::envoy::parse_domain;
use floodgate_server::request::{self, MAX_KEY};
use proptest::prelude::*;

/// Near-valid TOML: known sections and keys with plausible and implausible values.
fn toml_text() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[server]",
        "[store]",
        "[policies]",
        "[envoy]",
        "[nope]",
        "",
    ]);
    let key = prop::sample::select(vec![
        "http",
        "grpc",
        "admin_token",
        "url",
        "max_keys",
        "on_error",
        "local_share",
        "timeout",
        "free",
        "\"a b\"",
        "config_dir",
        "max_connections",
        "header_timeout",
        "limits",
    ]);
    let value = prop_oneof![
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"memory://\"".to_owned()),
        Just("\"5/s burst 10; 1000/day\"".to_owned()),
        Just("{ limits = \"1/s\", shadow = true }".to_owned()),
        Just("\"local\"".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        "\\PC{0,12}",
    ];
    prop::collection::vec((section, key, value), 0..8).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(section, key, value)| format!("{section}\n{key} = {value}\n"))
            .collect()
    })
}

/// Near-valid envoyproxy/ratelimit YAML.
fn yaml_text() -> impl Strategy<Value = String> {
    let line = prop::sample::select(vec![
        "domain: d",
        "domain: \"\"",
        "descriptors:",
        "  - key: k",
        "  - key: k2",
        "    value: v",
        "    value: \"a*b\"",
        "    rate_limit:",
        "      unit: second",
        "      unit: fortnight",
        "      requests_per_unit: 5",
        "      requests_per_unit: 0",
        "      unlimited: true",
        "      unit_multiplier: 0",
        "      burst: 3",
        "      name: n",
        "      replaces:",
        "        - name: n",
        "        - name: m",
        "    shadow_mode: true",
        "    share_threshold: true",
        "    descriptors:",
        "      - key: s",
        "    metadata: { a: 1 }",
        "- a",
        "0.25: x",
        ": :",
    ]);
    prop::collection::vec(line, 0..16).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn any_toml_config_is_parsed_or_refused_with_a_message(text in prop_oneof![toml_text(), "\\PC{0,200}"]) {
        match Config::parse(&text, Path::new("fuzz.toml"), None) {
            Ok(config) => {
                prop_assert!(!config.policies.is_empty() || !config.envoy.is_empty());
                prop_assert!(config.store.timeout > std::time::Duration::ZERO);
            }
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.toml: ")),
        }
    }

    #[test]
    fn any_envoy_yaml_is_parsed_or_refused_with_a_message(text in prop_oneof![yaml_text(), "\\PC{0,200}"]) {
        match parse_domain(&text, Path::new("fuzz.yaml")) {
            Ok(domain) => {
                prop_assert!(!domain.name().is_empty());
                // Matching anything against it never panics either.
                let _ = domain.find([("k", "v"), ("s", "x")].into_iter());
                let _ = domain.find([("k2", "ab")].into_iter());
            }
            Err(e) => prop_assert!(e.to_string().starts_with("fuzz.yaml: ")),
        }
    }

    #[test]
    fn any_request_body_is_parsed_or_refused(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (
                prop_oneof![Just("\"free\"".to_owned()), "\\PC{0,8}".prop_map(|s| format!("{s:?}")), Just("1".to_owned())],
                prop_oneof![Just("\"k\"".to_owned()), "\\PC{0,1100}".prop_map(|s| format!("{s:?}")), Just("null".to_owned())],
                prop_oneof![Just(String::new()), any::<i64>().prop_map(|c| format!(",\"cost\":{c}")), Just(",\"cost\":1.5".to_owned()), Just(",\"x\":1".to_owned())],
            ).prop_map(|(p, k, c)| format!("{{\"policy\":{p},\"key\":{k}{c}}}").into_bytes()),
        ]
    ) {
        if let Ok(decide) = request::decide(&body) {
            prop_assert!(!decide.key.is_empty() && decide.key.len() <= MAX_KEY);
            prop_assert!(decide.cost >= 1);
        }
        if let Ok(reset) = request::reset(&body) {
            prop_assert!(!reset.key.is_empty() && reset.key.len() <= MAX_KEY);
        }
    }

    #[test]
    fn any_login_body_is_parsed_or_refused(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            (
                prop_oneof![Just("\"alice\"".to_owned()), "\\PC{0,1100}".prop_map(|s| format!("{s:?}")), Just("7".to_owned())],
                prop_oneof![Just("\"192.0.2.1\"".to_owned()), Just("\"::ffff:10.0.0.1\"".to_owned()), "\\PC{0,40}".prop_map(|s| format!("{s:?}"))],
                prop_oneof![Just(String::new()), "\\PC{0,8}".prop_map(|s| format!(",\"device\":{s:?}")), Just(",\"success\":true".to_owned()), Just(",\"success\":1".to_owned())],
            ).prop_map(|(u, ip, extra)| format!("{{\"guard\":\"web\",\"username\":{u},\"ip\":{ip}{extra}}}").into_bytes()),
        ]
    ) {
        for result in [false, true] {
            if let Ok(login) = request::login(&body, result) {
                prop_assert!(!login.username.trim().is_empty() && login.username.len() <= MAX_KEY);
                prop_assert!(login.device.as_ref().is_none_or(|d| !d.is_empty() && d.len() <= MAX_KEY));
                prop_assert_eq!(login.success.is_some(), result);
            }
        }
    }
}
