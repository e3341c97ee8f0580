//! The IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers, -10 syntax), the
//! legacy `X-RateLimit-*` trio, `Retry-After` and the problem body of a 429.
//!
//! The field builders are public so other front ends (floodgate's server, a hand-written
//! handler) answer with exactly the fields the layer sends.

use std::fmt::Write;
use std::time::Duration;

use floodgate::{Decision, Policy};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Which rate-limit headers responses carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderMode {
    /// `RateLimit-Policy` and `RateLimit` on every response (the default).
    #[default]
    Ietf,
    /// The IETF fields and `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    IetfAndLegacy,
    /// Only what a 429 needs: `Retry-After`.
    None,
}

/// Whole seconds, rounded up: never earlier than the real time.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The name of limit `i` of `policy` in the header fields: the policy's name, or
/// `name.i` when it has several limits.
pub fn member(policy: &Policy, i: usize) -> String {
    if policy.limits().len() == 1 {
        policy.name().to_owned()
    } else {
        format!("{}.{i}", policy.name())
    }
}

/// `RateLimit-Policy`: every limit, as `"name";q=count;w=seconds[;fg-burst=B]`.
pub fn policy_field(policy: &Policy) -> String {
    let mut out = String::new();
    for (i, limit) in policy.limits().iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{}\";q={};w={}",
            member(policy, i),
            limit.count(),
            ceil_secs(limit.period())
        );
        if limit.capacity() != limit.count() {
            let _ = write!(out, ";fg-burst={}", limit.capacity());
        }
    }
    out
}

/// `RateLimit`: the deciding limit's remaining tokens and the seconds until one more.
pub fn state_field(policy: &Policy, decision: &Decision) -> String {
    format!(
        "\"{}\";r={};t={}",
        member(policy, decision.decided_by()),
        decision.remaining(),
        ceil_secs(decision.next_token_after())
    )
}

pub(crate) fn insert(
    headers: &mut HeaderMap,
    mode: HeaderMode,
    policy: &Policy,
    decision: &Decision,
) {
    if mode == HeaderMode::None {
        return;
    }
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    set("ratelimit-policy", policy_field(policy));
    set("ratelimit", state_field(policy, decision));
    if mode == HeaderMode::IetfAndLegacy {
        set("x-ratelimit-limit", decision.limit().to_string());
        set("x-ratelimit-remaining", decision.remaining().to_string());
        set(
            "x-ratelimit-reset",
            ceil_secs(decision.reset_after()).to_string(),
        );
    }
}

/// The `application/problem+json` body of a 429.
pub fn problem(policy: &Policy, decision: &Decision) -> String {
    let member = member(policy, decision.decided_by());
    format!(
        concat!(
            "{{\"type\":\"https://iana.org/assignments/http-problem-types#quota-exceeded\",",
            "\"title\":\"Too Many Requests\",\"status\":429,",
            "\"detail\":\"Rate limit \\\"{member}\\\" exceeded; retry in {secs} s.\",",
            "\"violated-policies\":[\"{member}\"]}}"
        ),
        member = member,
        secs = ceil_secs(decision.retry_after())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_mapping() {
        let free = Policy::parse("free", "5/s burst 10; 1000/day").unwrap();
        assert_eq!(
            policy_field(&free),
            "\"free.0\";q=5;w=1;fg-burst=10, \"free.1\";q=1000;w=86400"
        );
        let one = Policy::parse("pro", "50/1500ms").unwrap();
        assert_eq!(policy_field(&one), "\"pro\";q=50;w=2");
        assert_eq!(ceil_secs(Duration::from_millis(200)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
