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
    let mut field = state_prefix(policy, decision.decided_by());
    push_state(&mut field, decision);
    field
}

/// The start of limit `i`'s `RateLimit` field, up to its remaining count (`"name.i";r=`):
/// the part a server can compute once per policy.
pub fn state_prefix(policy: &Policy, i: usize) -> String {
    format!("\"{}\";r=", member(policy, i))
}

/// Completes a `RateLimit` field started by [`state_prefix`] for the deciding limit: the
/// remaining tokens and `;t=` the seconds until one more.
pub fn push_state(field: &mut String, decision: &Decision) {
    let _ = write!(
        field,
        "{};t={}",
        decision.remaining(),
        ceil_secs(decision.next_token_after())
    );
}

/// An `application/problem+json` body (RFC 9457): `type`, `title`, `status` and `detail`
/// (escaped as JSON strings), then `extensions` as given — JSON members without the
/// leading comma (`"violated-policies":["free"]`), or empty.
pub fn problem_json(
    problem_type: &str,
    title: &str,
    status: u16,
    detail: &str,
    extensions: &str,
) -> String {
    let mut out = String::with_capacity(64 + problem_type.len() + title.len() + detail.len());
    out.push_str("{\"type\":");
    push_json_string(&mut out, problem_type);
    out.push_str(",\"title\":");
    push_json_string(&mut out, title);
    let _ = write!(out, ",\"status\":{status},\"detail\":");
    push_json_string(&mut out, detail);
    if !extensions.is_empty() {
        out.push(',');
        out.push_str(extensions);
    }
    out.push('}');
    out
}

/// Appends `text` as a JSON string (quotes, backslashes and control characters escaped).
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
    let mut violated = String::from("\"violated-policies\":[");
    push_json_string(&mut violated, &member);
    violated.push(']');
    problem_json(
        "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "Too Many Requests",
        429,
        &format!(
            "Rate limit \"{member}\" exceeded; retry in {} s.",
            ceil_secs(decision.retry_after())
        ),
        &violated,
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

    #[test]
    fn the_429_body_and_json_escaping_are_exact() {
        let free = Policy::parse("free", "1/s").unwrap();
        let limiter = floodgate::RateLimiter::in_memory_with_clock(floodgate::ManualClock::new());
        let decision = floodgate_testkit::now_or_never(limiter.check(&free, "k")).unwrap();
        let denied = floodgate_testkit::now_or_never(limiter.check(&free, "k")).unwrap();
        assert!(decision.is_allowed() && !denied.is_allowed());
        assert_eq!(
            problem(&free, &denied),
            "{\"type\":\"https://iana.org/assignments/http-problem-types#quota-exceeded\",\
             \"title\":\"Too Many Requests\",\"status\":429,\
             \"detail\":\"Rate limit \\\"free\\\" exceeded; retry in 1 s.\",\
             \"violated-policies\":[\"free\"]}"
        );
        assert_eq!(state_field(&free, &denied), "\"free\";r=0;t=1");
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1b}e\u{7f}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u001be\u{7f}é\"");
    }
}
