//! `GET /v1/top?policy=P&by=denied|decisions&n=N`: the keys a policy decides most, from
//! the Space-Saving summaries of [`crate::top`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri, header};

use super::{authorize, bad_request, problem};
use crate::state::Shared;
use crate::top::By;

/// The most rows one call returns.
const MAX_ROWS: usize = 1_000;

pub(super) async fn top(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let current = shared.served.load();
    if let Err(response) = authorize(&shared, &current, &headers, "GET /v1/top") {
        return response;
    }
    let query = match Query::parse(uri.query().unwrap_or("")) {
        Ok(query) => query,
        Err(detail) => return bad_request(&shared, &detail),
    };
    let known = current.policies.contains_key(&query.policy)
        || current.rule_counters.contains_key(&query.policy);
    if !known {
        shared.metrics.bad_request();
        return problem(
            StatusCode::NOT_FOUND,
            &format!(
                "no policy named '{}' (Envoy rules: their bucket policy, envoy:domain.key…)",
                query.policy.escape_debug()
            ),
        );
    }
    if !shared.top.enabled() {
        return problem(
            StatusCode::NOT_FOUND,
            "top keys are off (server.top_keys = 0)",
        );
    }
    let envoy = query.policy.starts_with(crate::config::RESERVED_PREFIX);
    let rows: Vec<serde_json::Value> = shared
        .top
        .top(&query.policy, query.by, query.n)
        .into_iter()
        .map(|row| {
            let key = if envoy {
                crate::rules::display_bucket(&row.key)
            } else {
                row.key
            };
            serde_json::json!({
                "key": key,
                "denied": row.denied,
                "decisions": row.decisions,
                "error": row.error,
            })
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(rows).to_string(),
    )
        .into_response()
}

struct Query {
    policy: String,
    by: By,
    n: usize,
}

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut policy = None;
        let mut by = By::Denied;
        let mut n = 10;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| {
                format!("query parameter `{name}` is not valid percent-encoded UTF-8")
            })?;
            match name {
                "policy" => policy = Some(value),
                "by" => {
                    by = match value.as_str() {
                        "denied" => By::Denied,
                        "decisions" => By::Decisions,
                        other => {
                            return Err(format!(
                                "by must be \"denied\" or \"decisions\", got '{}'",
                                other.escape_debug()
                            ));
                        }
                    }
                }
                "n" => {
                    n = match value.parse::<usize>() {
                        Ok(n) if (1..=MAX_ROWS).contains(&n) => n,
                        _ => {
                            return Err(format!(
                                "n must be an integer from 1 to {MAX_ROWS}, got '{}'",
                                value.escape_debug()
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unknown query parameter `{}` (use policy, by, n)",
                        other.escape_debug()
                    ));
                }
            }
        }
        let policy = policy.ok_or("missing query parameter `policy`: /v1/top?policy=free")?;
        Ok(Query { policy, by, n })
    }
}

/// `%XX` escapes and `+` (a space) decoded; `None` for a bad escape or bytes that are not
/// UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let q = Query::parse("policy=envoy%3Aedge.path&by=decisions&n=5").unwrap();
        assert_eq!(
            (q.policy.as_str(), q.by, q.n),
            ("envoy:edge.path", By::Decisions, 5)
        );
        let q = Query::parse("policy=free").unwrap();
        assert_eq!((q.by, q.n), (By::Denied, 10));
        for (query, error) in [
            ("", "missing query parameter `policy`"),
            ("policy=free&by=rate", "by must be"),
            ("policy=free&n=0", "n must be an integer from 1 to 1000"),
            ("policy=free&n=1001", "n must be an integer"),
            ("policy=free&x=1", "unknown query parameter `x`"),
            ("policy=%zz", "not valid percent-encoded"),
            ("policy=%ff", "not valid percent-encoded"),
        ] {
            let got = Query::parse(query).err().unwrap_or_default();
            assert!(got.contains(error), "{query}: {got}");
        }
    }
}
