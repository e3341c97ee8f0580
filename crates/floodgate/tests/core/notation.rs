//! Rate notation, canonical text and validation: every bad input gets its exact message.

use std::time::Duration;

use floodgate::{Error, Limit, Policy};
use proptest::prelude::*;

#[test]
fn the_contract_example_parses_and_prints_canonically() {
    let free = Policy::new(
        "free",
        [Limit::per_second(5).burst(10), Limit::per_day(1_000)],
    )
    .unwrap();
    let same = Policy::parse("free", "5/s burst 10; 1000/day").unwrap();
    assert_eq!(free, same);
    assert_eq!(same.to_string(), "5/s burst 10; 1000/d");
}

#[test]
fn accepted_spellings() {
    let cases: &[(&str, &str)] = &[
        ("5/s", "5/s"),
        ("5 per second", "5/s"),
        ("5 PER SECOND", "5/s"),
        ("10/second", "10/s"),
        ("10/seconds", "10/s"),
        ("10 / sec", "10/s"),
        ("100/2 hours", "100/2h"),
        ("100/2h", "100/2h"),
        ("100 per 2 hours", "100/2h"),
        ("1/120s", "1/2m"),
        ("1/90s", "1/90s"),
        ("1/1500ms", "1/1500ms"),
        ("1/1000 milliseconds", "1/s"),
        ("7/m", "7/m"),
        ("7/min", "7/m"),
        ("7/Minutes", "7/m"),
        ("3/hr", "3/h"),
        ("3/hour", "3/h"),
        ("2/d", "2/d"),
        ("2/days", "2/d"),
        ("1/24h", "1/d"),
        ("1/48h", "1/2d"),
        ("5/s burst 10", "5/s burst 10"),
        ("5/s BURST=10", "5/s burst 10"),
        ("5/s burst 5", "5/s"),
        ("1_000/d", "1000/d"),
        ("  5/s  ", "5/s"),
    ];
    for (text, canonical) in cases {
        let limit: Limit = text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(limit.to_string(), *canonical, "{text:?}");
        assert_eq!(
            canonical.parse::<Limit>().unwrap(),
            limit,
            "{canonical:?} parses back"
        );
    }
}

#[test]
fn policies_take_any_of_the_three_separators() {
    let expected = "10/s; 5/m; 1000/d";
    for text in [
        "10/s;5/m;1000/d",
        "10/second, 5/minute, 1000/day",
        "10/s | 5/m | 1000/d",
        "10/s; 5/m,1000/d",
    ] {
        assert_eq!(
            Policy::parse("p", text).unwrap().to_string(),
            expected,
            "{text:?}"
        );
    }
}

#[test]
fn bad_notation_is_a_parse_error_pointing_at_the_text() {
    let cases: &[(&str, usize, &str)] = &[
        ("5/x", 2, "unknown unit \"x\""),
        (
            "5/month",
            2,
            "unknown unit \"month\" (months, years and weeks are not supported: use d)",
        ),
        (
            "5/years",
            2,
            "unknown unit \"years\" (months, years and weeks are not supported: use d)",
        ),
        ("", 0, "expected a limit such as \"5/s\", found the end"),
        ("   ", 3, "expected a limit such as \"5/s\", found the end"),
        ("5/s;", 4, "expected a limit such as \"5/s\", found the end"),
        ("5/s;;1/m", 4, "expected a limit such as \"5/s\", found ';'"),
        ("five/s", 0, "expected a count (a whole number)"),
        ("-5/s", 0, "expected a count, found a negative number"),
        (
            "0.5/s",
            0,
            "expected a count as a whole number, found a fraction",
        ),
        (
            "5",
            1,
            "expected `/` or `per` after the count, found the end",
        ),
        ("5 s", 2, "expected `/` or `per` after the count, found 's'"),
        ("5/", 2, "expected a unit (ms, s, m, h or d), found the end"),
        ("5/0s", 2, "the period multiplier must be at least 1"),
        ("5/s burst", 9, "expected a burst size (a whole number)"),
        (
            "5/s burst -1",
            10,
            "expected a burst size, found a negative number",
        ),
        (
            "5/s bursts 10",
            4,
            "expected `;`, `,`, `|` or the end after a limit, found 'b'",
        ),
        (
            "5/s 10",
            4,
            "expected `;`, `,`, `|` or the end after a limit, found '1'",
        ),
        (
            "4294967296/s",
            0,
            "count 4294967296 is larger than 4294967295",
        ),
        (
            "5/s burst 4294967296",
            10,
            "burst 4294967296 is larger than 4294967295",
        ),
        (
            "99999999999999999999/s",
            0,
            "a count \"99999999999999999999\" is too large",
        ),
        (
            "1/18446744073709551615d",
            2,
            "the period is too long to represent",
        ),
    ];
    for (text, position, reason) in cases {
        match text.parse::<Limit>() {
            Err(Error::Parse {
                input,
                position: p,
                reason: r,
            }) => {
                assert_eq!(
                    (input.as_str(), p, r.as_str()),
                    (*text, *position, *reason),
                    "{text:?}"
                );
            }
            other => panic!("{text:?}: expected a parse error, got {other:?}"),
        }
    }
    let error = "5/x".parse::<Limit>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "rate \"5/x\": unknown unit \"x\" at position 2"
    );
}

#[test]
fn one_limit_means_one() {
    let error = "5/s; 1/m".parse::<Limit>().unwrap_err();
    assert!(
        matches!(error, Error::Parse { position: 3, ref reason, .. } if reason == "expected exactly one limit"),
        "{error:?}"
    );
}

#[test]
fn values_that_cannot_be_enforced_are_invalid_limits_naming_the_value() {
    let cases: &[(Limit, &str)] = &[
        (
            Limit::per_second(0),
            "invalid limit \"0/s\": count must be at least 1 (use a policy that denies instead)",
        ),
        (
            Limit::per_second(5).burst(0),
            "invalid limit \"5/s burst 0\": burst must be at least 1",
        ),
        (
            Limit::per(5, Duration::ZERO),
            "invalid limit \"5/0ns\": period must be at least 1ms",
        ),
        (
            Limit::per(5, Duration::from_micros(1_500)),
            "invalid limit \"5/1.5ms\": period 1.5ms is not a whole number of milliseconds",
        ),
        (
            Limit::per(1, Duration::from_secs(86_400 * 365 * 36)),
            "invalid limit \"1/13140d\": burst × period / count exceeds 2^50 µs (about 35 years): the bucket would take too long to fill",
        ),
        (
            Limit::per_second(1).burst(u32::MAX),
            "invalid limit \"1/s burst 4294967295\": burst × period / count exceeds 2^50 µs (about 35 years): the bucket would take too long to fill",
        ),
        (
            Limit::per(990_000, Duration::from_millis(1)),
            "invalid limit \"990000/ms\": rate too fast: 990000 per 1ms needs an interval below one nanosecond",
        ),
        (
            Limit::per_second(u32::MAX),
            "invalid limit \"4294967295/s\": rate too fast: 4294967295 per 1s needs an interval below one nanosecond",
        ),
    ];
    for (limit, message) in cases {
        let error = Policy::new("p", [*limit]).unwrap_err();
        assert!(
            matches!(error, Error::InvalidLimit { .. }),
            "{limit:?}: {error:?}"
        );
        assert_eq!(error.to_string(), *message);
        assert_eq!(limit.validate().unwrap_err().to_string(), *message);
    }
    assert!(matches!(
        "0/s".parse::<Limit>(),
        Err(Error::InvalidLimit { .. })
    ));
    assert!(matches!(
        Policy::parse("p", "5/s; 0/m"),
        Err(Error::InvalidLimit { .. })
    ));
    // The fastest rate that still rounds within 1%, and the longest window, are fine.
    assert!(
        Limit::per(1_000_000, Duration::from_millis(1))
            .validate()
            .is_ok()
    );
    assert!(
        Limit::per(9_900, Duration::from_millis(1))
            .validate()
            .is_ok()
    );
    assert!(
        Limit::per(1, Duration::from_secs(86_400 * 365 * 35))
            .validate()
            .is_ok()
    );
}

#[test]
fn bad_policies_are_invalid_policies() {
    let cases: Vec<(Result<Policy, Error>, &str)> = vec![
        (
            Policy::new("p", []),
            "invalid policy \"p\": a policy needs at least one limit",
        ),
        (
            Policy::new("", [Limit::per_second(1)]),
            "invalid policy \"\": a policy name is 1 to 128 bytes, this one is 0",
        ),
        (
            Policy::new("a b", [Limit::per_second(1)]),
            "invalid policy \"a b\": character ' ' is not allowed in a policy name (use ASCII letters, digits and -_.:/)",
        ),
        (
            Policy::new("x".repeat(129), [Limit::per_second(1)]),
            &*Box::leak(
                format!(
                    "invalid policy \"{}\": a policy name is 1 to 128 bytes, this one is 129",
                    "x".repeat(129)
                )
                .into_boxed_str(),
            ),
        ),
        (
            Policy::new("p", vec![Limit::per_second(1); 17]),
            "invalid policy \"p\": 17 limits given; a policy holds at most 16",
        ),
        (
            Policy::parse("{tag}", "5/s"),
            "invalid policy \"{tag}\": character '{' is not allowed in a policy name (use ASCII letters, digits and -_.:/)",
        ),
    ];
    for (result, message) in cases {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::InvalidPolicy { .. }), "{error:?}");
        assert_eq!(error.to_string(), message);
    }
    assert!(Policy::new("api.v1/free-tier_2:eu", vec![Limit::per_second(1); 16]).is_ok());
}

fn any_limit() -> impl Strategy<Value = Limit> {
    (1u32..=u32::MAX, 1u64..=1_000_000_000, 1u32..=u32::MAX).prop_map(
        |(count, period_ms, burst)| {
            Limit::per(count, Duration::from_millis(period_ms)).burst(burst)
        },
    )
}

proptest! {
    /// `Display` output always parses back to an equal value.
    #[test]
    fn canonical_text_parses_back(limits in prop::collection::vec(any_limit(), 1..=4)) {
        for limit in &limits {
            let text = limit.to_string();
            match text.parse::<Limit>() {
                Ok(parsed) => prop_assert_eq!(parsed, *limit),
                Err(Error::InvalidLimit { limit: shown, .. }) => {
                    prop_assert!(limit.validate().is_err());
                    prop_assert_eq!(shown, text);
                }
                Err(other) => prop_assert!(false, "{text:?}: {other}"),
            }
        }
        if let Ok(policy) = Policy::new("p", limits) {
            prop_assert_eq!(Policy::parse("p", &policy.to_string()).unwrap(), policy);
        }
    }

    /// Arbitrary text never panics the parser and errors point inside the input.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,40}|[0-9 /a-zA-Z;,|_=.-]{0,40}") {
        match Policy::parse("p", &text) {
            Err(Error::Parse { position, input, .. }) => {
                prop_assert!(position <= input.len());
                prop_assert_eq!(input, text);
            }
            Ok(policy) => prop_assert_eq!(Policy::parse("p", &policy.to_string()).unwrap(), policy),
            Err(_) => {}
        }
    }
}

#[cfg(feature = "serde")]
#[test]
fn serde_uses_the_canonical_text() {
    let policy = Policy::parse("free", "5/s burst 10; 1000/day").unwrap();
    let json = serde_json::to_string(&policy).unwrap();
    assert_eq!(json, r#"{"name":"free","limits":"5/s burst 10; 1000/d"}"#);
    assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
    let limit: Limit = serde_json::from_str("\"100 per 2 hours\"").unwrap();
    assert_eq!(limit, Limit::per(100, Duration::from_secs(7_200)));
    assert!(
        serde_json::from_str::<Limit>("\"5/x\"")
            .unwrap_err()
            .to_string()
            .contains("unknown unit")
    );
}
