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
        key: String::new(), // sent by the client, not loaded
    })
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
        let fits = u32::try_from(hits)
            .ok()
            .filter(|&cost| cost >= 1 && cost <= policy.max_cost());
        let result = match fits {
            Some(cost) => served.limiter.check_n(policy, bucket, cost).await,
            // 0 hits: check without counting; more hits than the bucket holds: over the
            // limit whatever the state.
            None => served.limiter.peek(policy, bucket).await,
        };
        shared.metrics.store_latency(started.elapsed());
        let decision = result.map_err(|e| {
            shared.metrics.store_error();
            tracing::warn!(error = %e, "store call failed");
            Status::unavailable(format!("rate limit store unavailable: {e}"))
        })?;
        let allowed = match fits {
            Some(_) => decision.is_allowed(),
            None => hits == 0 && decision.is_allowed(),
        } && decision.source() != DecisionSource::FailClosed;
        if let Some(counters) = served.rule_counters.get(policy.name()) {
            counters.record(&decision, rule.shadow);
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

        let mut statuses = Vec::with_capacity(resolved.len());
        let mut over = false;
        // The bucket whose state the response headers report: a denial, else the fewest left.
        let mut shown: Option<(Policy, Decision)> = None;
        for item in &resolved {
            let Resolved::Rule { rule, bucket, hits } = item else {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            if rule.name.as_deref().is_some_and(|n| replaced.contains(n)) {
                statuses.push(DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            }
            let (status, decided) = Self::descriptor(shared, &served, rule, bucket, *hits).await?;
            if let Some((policy, decision, allowed)) = decided {
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
            over |= status.code == Code::OverLimit as i32;
            statuses.push(status);
        }

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
        Ok(Response::new(RateLimitResponse {
            overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
            statuses,
            response_headers_to_add: headers,
            request_headers_to_add: Vec::new(),
            raw_body: Vec::new(),
        }))
    }
}
