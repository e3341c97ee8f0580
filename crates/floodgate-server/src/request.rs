//! The HTTP API's request bodies, parsed and validated without touching any state (so they
//! can be fuzzed and property-tested on their own).

use std::borrow::Cow;

use serde::Deserialize;

/// The longest key accepted, in bytes.
pub const MAX_KEY: usize = 1024;

/// A `/v1/check` or `/v1/peek` body.
#[derive(Debug, PartialEq, Eq)]
pub struct Decide<'a> {
    /// The policy's name (not yet looked up).
    pub policy: Cow<'a, str>,
    /// The key: 1 to [`MAX_KEY`] bytes.
    pub key: Cow<'a, str>,
    /// The cost: 1 to 2³²−1 (1 when absent).
    pub cost: u32,
}

/// A `/v1/reset` body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reset<'a> {
    /// The policy's name (not yet looked up).
    pub policy: Cow<'a, str>,
    /// The key: 1 to [`MAX_KEY`] bytes.
    pub key: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDecide<'a> {
    #[serde(borrow)]
    policy: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    cost: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReset<'a> {
    #[serde(borrow)]
    policy: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!(
            "key must be 1 to {MAX_KEY} bytes, got {}",
            key.len()
        ));
    }
    Ok(())
}

/// A JSON object, or the reason it is not one: serde would also take a struct from an
/// array (`["free","k",3]`), which is not a request.
fn object<'a, T: Deserialize<'a>>(body: &'a [u8], example: &str) -> Result<T, String> {
    let first = body.iter().find(|b| !b" \t\r\n".contains(b));
    if first.is_some_and(|&b| b != b'{') {
        return Err(format!(
            "invalid request body: expected a JSON object such as {example}"
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// Parses a check/peek body; the error is the problem's detail (a `400`).
pub fn decide(body: &[u8]) -> Result<Decide<'_>, String> {
    let raw: RawDecide<'_> = object(body, r#"{"policy":"free","key":"user:42","cost":1}"#)?;
    check_key(&raw.key)?;
    let cost = match raw.cost {
        None => 1,
        Some(cost) => match u32::try_from(cost) {
            Ok(cost) if cost >= 1 => cost,
            _ => {
                return Err(format!(
                    "cost must be an integer from 1 to {}, got {cost}",
                    u32::MAX
                ));
            }
        },
    };
    Ok(Decide {
        policy: raw.policy,
        key: raw.key,
        cost,
    })
}

/// Parses a reset body; the error is the problem's detail (a `400`).
pub fn reset(body: &[u8]) -> Result<Reset<'_>, String> {
    let raw: RawReset<'_> = object(body, r#"{"policy":"free","key":"user:42"}"#)?;
    check_key(&raw.key)?;
    Ok(Reset {
        policy: raw.policy,
        key: raw.key,
    })
}

/// A `/v1/login/attempt` or `/v1/login/result` body.
#[derive(Debug, PartialEq, Eq)]
pub struct Login<'a> {
    /// The guard's name (not yet looked up).
    pub guard: Cow<'a, str>,
    /// The username as typed: 1 to [`MAX_KEY`] bytes, not only white space.
    pub username: Cow<'a, str>,
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// The device the known-device exemption is keyed by instead of the address.
    pub device: Option<Cow<'a, str>>,
    /// `/v1/login/result` only: whether the password was right.
    pub success: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogin<'a> {
    #[serde(borrow)]
    guard: Cow<'a, str>,
    #[serde(borrow)]
    username: Cow<'a, str>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
    success: Option<bool>,
}

/// Parses a login body: `result` says whether it is a `/v1/login/result` (which needs
/// `success`) or an attempt (which must not have it). The error is a `400`'s detail.
pub fn login(body: &[u8], result: bool) -> Result<Login<'_>, String> {
    let example = if result {
        r#"{"guard":"web","username":"alice","ip":"192.0.2.1","success":false}"#
    } else {
        r#"{"guard":"web","username":"alice","ip":"192.0.2.1"}"#
    };
    let raw: RawLogin<'_> = object(body, example)?;
    if raw.username.len() > MAX_KEY || raw.username.trim().is_empty() {
        return Err(format!(
            "username must be 1 to {MAX_KEY} bytes and not only white space, got {} bytes",
            raw.username.len()
        ));
    }
    let ip = raw.ip.trim().parse().map_err(|_| {
        format!(
            "ip '{}' is not an IPv4 or IPv6 address such as \"192.0.2.1\"",
            raw.ip.escape_debug()
        )
    })?;
    if let Some(device) = raw
        .device
        .as_ref()
        .filter(|d| d.is_empty() || d.len() > MAX_KEY)
    {
        return Err(format!(
            "device must be 1 to {MAX_KEY} bytes, got {}",
            device.len()
        ));
    }
    match (result, raw.success) {
        (true, None) => return Err(format!("missing field `success`: {example}")),
        (false, Some(_)) => {
            return Err(
                "`success` belongs in POST /v1/login/result, after the password check".into(),
            );
        }
        _ => {}
    }
    Ok(Login {
        guard: raw.guard,
        username: raw.username,
        ip,
        device: raw.device,
        success: raw.success,
    })
}

/// A `/v1/acquire`, `/v1/release` or `/v1/renew` body.
#[derive(Debug, PartialEq, Eq)]
pub struct PermitRequest<'a> {
    /// The concurrency limit's name (not yet looked up).
    pub policy: Cow<'a, str>,
    /// The key: 1 to [`MAX_KEY`] bytes.
    pub key: Cow<'a, str>,
    /// The permit id: required to release or renew; optional to acquire (a retry of a lost
    /// reply sends the same one).
    pub permit: Option<floodgate::PermitId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermit<'a> {
    #[serde(borrow)]
    policy: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow, default)]
    permit: Option<Cow<'a, str>>,
}

/// Parses a permit body; `needs_id` for a release or renew. The error is a `400`'s detail.
pub fn permit(body: &[u8], needs_id: bool) -> Result<PermitRequest<'_>, String> {
    let example = if needs_id {
        r#"{"policy":"legacy-db","key":"tenant:7","permit":"<32 hex digits>"}"#
    } else {
        r#"{"policy":"legacy-db","key":"tenant:7"}"#
    };
    let raw: RawPermit<'_> = object(body, example)?;
    check_key(&raw.key)?;
    let permit = raw
        .permit
        .map(|text| {
            text.parse::<floodgate::PermitId>()
                .map_err(|e| e.to_string())
        })
        .transpose()?;
    if needs_id && permit.is_none() {
        return Err(format!("missing field `permit`: {example}"));
    }
    Ok(PermitRequest {
        policy: raw.policy,
        key: raw.key,
        permit,
    })
}
