//! Values read back from Redis (the decision script's reply): a decision or an error, never
//! a panic, whatever a corrupted or hostile server sends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<i64>, Vec<(u64, u64)>)| {
    let (reply, limits) = input;
    floodgate_redis::fuzzing::parse_reply(&reply, &limits);
});
