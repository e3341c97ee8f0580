//! The server's TOML config: parsed or refused with a message naming the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match floodgate_server::Config::parse(text, Path::new("fuzz.toml"), None) {
        Ok(config) => {
            let _ = config.describe();
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml: ")),
    }
});
