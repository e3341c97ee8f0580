//! envoyproxy/ratelimit YAML: parsed or refused with a message naming the file; matching
//! request descriptors against what parsed never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match floodgate_server::config::envoy::parse_domain(text, Path::new("fuzz.yaml")) {
        Ok(domain) => {
            for entries in [&[("key", "value")][..], &[("a", "b"), ("c", "d")], &[]] {
                let _ = domain.find(entries.iter().copied());
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.yaml: ")),
    }
});
