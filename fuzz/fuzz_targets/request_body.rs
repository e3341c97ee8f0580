//! HTTP API bodies: parsed or refused; whatever is accepted meets the key, cost and login
//! field rules.
#![no_main]

use floodgate_server::request::{self, MAX_KEY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(decide) = request::decide(body) {
        assert!(!decide.key.is_empty() && decide.key.len() <= MAX_KEY);
        assert!(decide.cost >= 1);
    }
    if let Ok(reset) = request::reset(body) {
        assert!(!reset.key.is_empty() && reset.key.len() <= MAX_KEY);
    }
    for result in [false, true] {
        if let Ok(login) = request::login(body, result) {
            assert!(!login.username.trim().is_empty() && login.username.len() <= MAX_KEY);
            assert!(login.device.as_ref().is_none_or(|d| !d.is_empty() && d.len() <= MAX_KEY));
            assert_eq!(login.success.is_some(), result);
        }
    }
});
