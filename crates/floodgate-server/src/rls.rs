//! Envoy's rate limit service (RLS v3): `ShouldRateLimit` over the domains loaded from
//! envoyproxy/ratelimit YAML files.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::{Decision, DecisionSource, Limit, Policy};
use floodgate_tower::headers::{ceil_secs, policy_field, state_field};
use tonic::{Request, Response, Status};

use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, RateLimit, rate_limit::Unit as ProtoUnit,
};
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitService;
use crate::proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use crate::rules::{Action, Rule, Unit};
use crate::state::{Served, Shared};

/// The gRPC service.
pub(crate) struct Rls {
    pub(crate) shared: Arc<Shared>,
}

/// What one request descriptor resolved to.
enum Resolved {
    /// No rule applies: OK, no limit.
    Unmatched,
    /// A rule from the configuration.
    Rule {
        rule: Arc<Rule>,
        bucket: String,
        hits: u64,
    },
}

fn proto_unit(unit: Option<Unit>) -> i32 {
    match unit {
        None => ProtoUnit::Unknown as i32,
        Some(unit) => unit as i32,
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn current_limit(rule: &Rule) -> RateLimit {
    RateLimit {
        name: rule.name.clone().unwrap_or_default(),
        requests_per_unit: rule.requests_per_unit,
        unit: proto_unit(rule.unit),
    }
}

/// A limit the client sent with the descriptor (`RateLimitOverride`), as a rule.
fn override_rule(requests: u32, unit: i32) -> Result<Rule, Status> {
    let unit = Unit::from_proto(unit).ok_or_else(|| {
        Status::invalid_argument(format!(
            "descriptor limit override: unit {unit} is not supported (use SECOND, MINUTE, HOUR, DAY or WEEK)"
        ))
    })?;
    let action = if requests == 0 {
        Action::Block
    } else {
        let policy = Policy::new(
            format!("envoy:override/{requests}/{}", unit.duration().as_secs()),
            [Limit::per(requests, unit.duration())],
        )
        .map_err(|e| Status::invalid_argument(format!("descriptor limit override: {e}")))?;
        Action::Bucket(policy)
    };
    Ok(Rule {
        action,
        name: None,
        replaces: Vec::new(),
        requests_per_unit: requests,
        unit: Some(unit),
        shadow: false,
        quota: false,
        charge: false,
        metadata: None,
        key: String::new(), // sent by the client, not loaded
    })
}

/// Merges `src` into `dest` as envoyproxy/ratelimit's `mergeMetadata` does: maps merge
/// recursively, and a key already present keeps its first value otherwise.
fn merge_metadata(
    dest: &mut serde_json::Map<String, serde_json::Value>,
    src: &serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in src {
        match (dest.get_mut(key), value) {
            (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(more)) => {
                merge_metadata(inner, more);
            }
            (Some(_), _) => {}
            (None, _) => {
                dest.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The answer's `dynamic_metadata`, built as envoyproxy/ratelimit's `ratelimitToMetadata`
/// builds it: `domain`, `descriptors` (`entries` as `key=value`, the `limit` override and
/// the descriptor's `hitsAddend` when given), the request's `hitsAddend` when not 0, and
/// the merged `metadata` of the descriptors that passed, when any.
fn dynamic_metadata(
    request: &RateLimitRequest,
    passed: serde_json::Map<String, serde_json::Value>,
) -> prost_types::Struct {
    use prost_types::value::Kind;
    let text = |s: String| prost_types::Value {
        kind: Some(Kind::StringValue(s)),
    };
    let number = |n: f64| prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    };
    let descriptors = request
        .descriptors
        .iter()
        .map(|d| {
            let mut fields = std::collections::BTreeMap::new();
            let entries = d
                .entries
                .iter()
                .map(|e| text(format!("{}={}", e.key, e.value)))
                .collect();
            fields.insert(
                "entries".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::ListValue(prost_types::ListValue { values: entries })),
                },
            );
            if let Some(limit) = &d.limit {
                let unit = Unit::from_proto(limit.unit).map_or("UNKNOWN", |u| u.proto_name());
                fields.insert(
                    "limit".to_owned(),
                    text(format!(
                        "requests_per_unit:{} unit:{unit}",
                        limit.requests_per_unit
                    )),
                );
            }
            if let Some(hits) = d.hits_addend {
                fields.insert("hitsAddend".to_owned(), number(hits as f64));
            }
            prost_types::Value {
                kind: Some(Kind::StructValue(prost_types::Struct { fields })),
            }
        })
        .collect();
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("domain".to_owned(), text(request.domain.clone()));
    fields.insert(
        "descriptors".to_owned(),
        prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: descriptors,
            })),
        },
    );
    if request.hits_addend != 0 {
        fields.insert(
            "hitsAddend".to_owned(),
            number(f64::from(request.hits_addend)),
        );
    }
    if !passed.is_empty() {
        fields.insert(
            "metadata".to_owned(),
            json_to_proto(serde_json::Value::Object(passed)),
        );
    }
    prost_types::Struct { fields }
}

/// A YAML/JSON value as a protobuf `Value`.
fn json_to_proto(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_proto).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// What a matched bucket descriptor does with its hits.
#[derive(Clone, Copy)]
enum How {
    /// Check and consume the hits.
    Check(u32),
    /// `charge: true`: consume without checking (usage reported after a response).
    Charge(u32),
    /// Zero hits: consume nothing; over iff the bucket is in debt.
    Debt,
    /// More hits than the burst: over, consuming nothing.
    Never,
}

/// Whether a peek shows the bucket in debt (TAT − now > B·T, envoyproxy/ratelimit's "the
/// count is past the limit"): the wait for one token exceeds one emission interval. Envoy
/// rules have one limit; 1 µs of slack absorbs the Redis store's microsecond rounding.
fn in_debt(policy: &Policy, decision: &Decision) -> bool {
    let Some(limit) = policy.limits().get(decision.decided_by()) else {
        return false;
    };
    let period = limit.period().as_nanos();
    let interval = period.div_ceil(u128::from(limit.count().max(1)));
    decision.retry_after().as_nanos() > interval + 1_000
}

/// How a request's descriptors add up to its overall code, as envoyproxy/ratelimit's
/// `shouldRateLimitWorker` counts them: `OVER_LIMIT` iff an ordinary descriptor is over,
/// or every quota descriptor is (and there is one). `unlimited` descriptors count in
/// neither group; shadow descriptors report OK and count as passing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    failed_ordinary: usize,
    failed_quota: usize,
    quota: usize,
}

impl Tally {
    /// Counts one descriptor: a quota one or not, over the limit or not.
    pub(crate) fn count(&mut self, quota: bool, over: bool) {
        match (quota, over) {
            (true, true) => self.failed_quota += 1,
            (false, true) => self.failed_ordinary += 1,
            _ => {}
        }
        self.quota += usize::from(quota);
    }

    /// Whether the overall code is `OVER_LIMIT`.
    pub(crate) fn over(&self) -> bool {
        self.failed_ordinary > 0 || (self.quota > 0 && self.quota == self.failed_quota)
    }
}

fn bucket_key(domain: &str, entries: &[(&str, &str)]) -> String {
    let mut key = String::with_capacity(domain.len() + 32);
    key.push_str(domain);
    key.push('\n');
    for (k, v) in entries {
        crate::rules::push_part(&mut key, k, v);
    }
    key
}

impl Rls {
    fn resolve(served: &Served, request: &RateLimitRequest) -> Result<Vec<Resolved>, Status> {
        let domain = served.config.envoy.get(&request.domain);
        let request_hits = if request.hits_addend == 0 {
            1
        } else {
            u64::from(request.hits_addend)
        };
        let mut resolved = Vec::with_capacity(request.descriptors.len());
        for descriptor in &request.descriptors {
            let hits = descriptor.hits_addend.unwrap_or(request_hits);
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            if let Some(limit) = &descriptor.limit {
                let rule = override_rule(limit.requests_per_unit, limit.unit)?;
                resolved.push(Resolved::Rule {
                    rule: Arc::new(rule),
                    bucket: bucket_key(&request.domain, &entries),
                    hits,
                });
                continue;
            }
            let found = domain.and_then(|d| d.find(entries.iter().copied()));
            resolved.push(match found {
                Some(found) => Resolved::Rule {
                    rule: found.rule.clone(),
                    bucket: format!("{}\n{}", request.domain, found.bucket),
                    hits,
                },
                None => Resolved::Unmatched,
            });
        }
        Ok(resolved)
    }

    /// One matched descriptor's status, and for a bucket the decision it made and whether
    /// it passed (the response headers report one of them).
    async fn descriptor<'r>(
        shared: &Shared,
        served: &Served,
        rule: &'r Rule,
        bucket: &str,
        hits: u64,
    ) -> Result<(DescriptorStatus, Option<(&'r Policy, Decision, bool)>), Status> {
        let policy = match &rule.action {
            Action::Unlimited => {
                let status = DescriptorStatus {
                    code: Code::Ok as i32,
                    current_limit: None,
                    limit_remaining: u32::MAX,
                    duration_until_reset: None,
                };
                return Ok((status, None));
            }
            Action::Block => {
                let status = DescriptorStatus {
                    code: if rule.shadow {
                        Code::Ok
                    } else {
                        Code::OverLimit
                    } as i32,
                    current_limit: Some(current_limit(rule)),
                    limit_remaining: 0,
                    duration_until_reset: None,
                };
                return Ok((status, None));
            }
            Action::Bucket(policy) => policy,
        };
        let started = Instant::now();
        // Hits are at most 2³²−1 (the protocol's fields are 32-bit).
        let cost = u32::try_from(hits).unwrap_or(u32::MAX);
        let how = if hits == 0 {
            // A zero-cost check: over iff the bucket is in debt.
            How::Debt
        } else if rule.charge {
            How::Charge(cost)
        } else if cost <= policy.max_cost() {
            How::Check(cost)
        } else {
            // More hits than the bucket holds: over the limit whatever the state.
            How::Never
        };
        let result = match how {
            How::Check(cost) => served.limiter.check_n(policy, bucket, cost).await,
            How::Charge(cost) => served.limiter.charge(policy, bucket, cost).await,
            How::Debt | How::Never => served.limiter.peek(policy, bucket).await,
        };
        shared.metrics.store_latency(started.elapsed());
        let decision = result.map_err(|e| {
            shared.metrics.store_error();
            tracing::warn!(error = %e, "store call failed");
            Status::unavailable(format!("rate limit store unavailable: {e}"))
        })?;
        let allowed = match how {
            // After a charge, allowed means it fit without debt.
            How::Check(_) | How::Charge(_) => decision.is_allowed(),
            How::Debt => !in_debt(policy, &decision),
            How::Never => false,
        } && decision.source() != DecisionSource::FailClosed;
        if !matches!(how, How::Charge(_) | How::Debt) {
            shared.top.record(policy.name(), bucket, !allowed);
        }
        if let Some(counters) = served.rule_counters.get(policy.name()) {
            match how {
                How::Charge(_) => counters.record_charge(&decision),
                _ => counters.record(&decision, rule.shadow),
            }
        }
        let status = DescriptorStatus {
            code: if allowed || rule.shadow {
                Code::Ok
            } else {
                Code::OverLimit
            } as i32,
            current_limit: Some(current_limit(rule)),
            limit_remaining: u32::try_from(decision.remaining()).unwrap_or(u32::MAX),
            duration_until_reset: Some(proto_duration(decision.reset_after())),
        };
        Ok((status, Some((policy, decision, allowed))))
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let request = request.into_inner();
        let shared = &self.shared;
        shared.metrics.grpc_request();
        if request.domain.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit domain must not be empty",
            ));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit descriptor list must not be empty",
            ));
        }
        let served = shared.served.load_full();
        let resolved = Self::resolve(&served, &request)?;
        // A matched rule naming others in `replaces` switches those off for this request.
        let replaced: HashSet<&str> = resolved
            .iter()
            .filter_map(|r| match r {
                Resolved::Rule { rule, .. } => Some(rule.replaces.iter().map(String::as_str)),
                Resolved::Unmatched => None,
            })
            .flatten()
            .collect();

        let modes = served.config.envoy_modes;
        let mut passed_metadata = serde_json::Map::new();
        let mut statuses = Vec::with_capacity(resolved.len());
        let mut tally = Tally::default();
        // The bucket whose state the response headers report: a denial, else the fewest left.
        let mut shown: Option<(Policy, Decision)> = None;
        for item in &resolved {
            let Resolved::Rule { rule, bucket, hits } = item else {
                tally.count(modes.quota_mode, false);
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            if rule.name.as_deref().is_some_and(|n| replaced.contains(n)) {
                // A replaced rule counts as no rule at all.
                tally.count(modes.quota_mode, false);
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            }
            let (status, decided) = Self::descriptor(shared, &served, rule, bucket, *hits).await?;
            let quota = modes.quota_mode || rule.quota;
            let is_over = status.code == Code::OverLimit as i32;
            if !matches!(rule.action, Action::Unlimited) {
                tally.count(quota, is_over);
                if !is_over && let Some(metadata) = &rule.metadata {
                    merge_metadata(&mut passed_metadata, metadata);
                }
            }
            if let Some((policy, decision, allowed)) = decided {
                // An over-limit quota descriptor does not by itself refuse the request: its
                // denial is not preferred for the headers.
                let allowed = allowed || quota;
                let replace = match &shown {
                    None => true,
                    Some((_, shown_decision)) => {
                        (!allowed && shown_decision.is_allowed())
                            || (allowed == shown_decision.is_allowed()
                                && decision.remaining() < shown_decision.remaining())
                    }
                };
                if replace && !rule.shadow {
                    shown = Some((policy.clone(), decision));
                }
            }
            statuses.push(status);
        }
        // The server-wide shadow switch answers OK whatever the descriptors say.
        let over = tally.over() && !modes.shadow_mode;

        let mut headers = Vec::new();
        if let Some((policy, decision)) = &shown {
            headers.push(HeaderValue {
                key: "ratelimit-policy".into(),
                value: policy_field(policy),
                raw_value: Vec::new(),
            });
            headers.push(HeaderValue {
                key: "ratelimit".into(),
                value: state_field(policy, decision),
                raw_value: Vec::new(),
            });
            if over && !decision.is_allowed() {
                headers.push(HeaderValue {
                    key: "retry-after".into(),
                    value: ceil_secs(decision.retry_after()).max(1).to_string(),
                    raw_value: Vec::new(),
                });
            }
        }
        tracing::debug!(domain = %request.domain, over, "ShouldRateLimit");
        let dynamic_metadata = modes
            .response_dynamic_metadata
            .then(|| dynamic_metadata(&request, passed_metadata));
        Ok(Response::new(RateLimitResponse {
            dynamic_metadata,
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: headers,
            request_headers_to_add: Vec::new(),
            raw_body: Vec::new(),
        }))
    }
}
