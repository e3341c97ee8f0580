//! Rate notation: parsing never panics, and whatever parses prints to text that parses back
//! to the same policy.
#![no_main]

use floodgate::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(policy) = Policy::parse("fuzz", text) {
        let printed = policy.to_string();
        let again = Policy::parse("fuzz", &printed).expect("canonical text parses");
        assert_eq!(policy.limits(), again.limits(), "{text:?} -> {printed:?}");
    }
});
