//! Envoy's newer behaviours: quota mode with envoyproxy/ratelimit's overall code (its
//! `shouldRateLimitWorker` cases and integration scripts, rewritten), the server-wide
//! switches, and usage charged after the response (`charge: true`, `hits_addend: 0` as a
//! zero-cost check).

use std::time::Duration;

use crate::common;
use crate::envoy::{ask, code, descriptor, fixtures, start_server_with};

use common::TempDir;
use floodgate_server::Running;
use floodgate_server::proto::envoy::service::ratelimit::v3::RateLimitResponse;
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use floodgate_server::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use floodgate_testkit::redis_server::RedisServer;
use tonic::transport::Channel;

type Client = RateLimitServiceClient<Channel>;

async fn start_server(store_url: Option<&str>, envoy_switches: &str) -> (TempDir, Running, Client) {
    start_server_with("quota", store_url, envoy_switches).await
}

/// One request of single-entry descriptors, each with a descriptor-level `hits_addend`
/// (Envoy's `hits_addend: {number: N}` on a `rate_limits` entry; 0 is a zero-cost check).
async fn request(c: &mut Client, entries: &[(&str, &str)], hits: u32) -> RateLimitResponse {
    let descriptors = entries
        .iter()
        .map(|e| {
            let mut d = descriptor(&[*e]);
            d.hits_addend = Some(u64::from(hits));
            d
        })
        .collect();
    ask(c, "rl", descriptors, 0).await
}

fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).unwrap()
}

fn statuses(response: &RateLimitResponse) -> Vec<Code> {
    response.statuses.iter().map(code).collect()
}

fn has_retry_after(response: &RateLimitResponse) -> bool {
    response
        .response_headers_to_add
        .iter()
        .any(|h| h.key == "retry-after")
}

const OK: Code = Code::Ok;
const OVER: Code = Code::OverLimit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_descriptors_refuse_a_request_only_all_together() {
    let (_dir, server, mut c) = start_server(None, "").await;
    let c = &mut c;
    // Use each bucket up (one request per minute each).
    for entry in [
        ("regular", "a"),
        ("quota", "b"),
        ("quota", "d"),
        ("quota", "e"),
        ("quota", "f"),
    ] {
        assert_eq!(overall(&request(c, &[entry], 1).await), OK, "{entry:?}");
    }
    // TestServicePerDescriptorQuotaMode: an ordinary descriptor over makes the answer over.
    let r = request(c, &[("regular", "a"), ("quota", "a")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OVER, vec![OVER, OK]));
    assert!(has_retry_after(&r));
    // TestServiceMixedPerDescriptorModes: the only quota descriptor over: all of them are.
    let r = request(c, &[("regular", "b"), ("quota", "b")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OVER, vec![OK, OVER]));
    // TestServiceMixedPerDescriptorModesUnderLimit.
    let r = request(c, &[("regular", "c"), ("quota", "c")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OK, OK]));
    // TestServiceQuotaModeOnlyAllOverTheLimit.
    let r = request(c, &[("quota", "d"), ("quota", "e")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OVER, vec![OVER, OVER]));
    // TestServiceQuotaModeOnlySomeOverTheLimit: its status says over, the answer is OK and
    // carries no Retry-After.
    let r = request(c, &[("quota", "f"), ("quota", "g")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OVER, OK]));
    assert!(!has_retry_after(&r));
    // `unlimited` counts in neither group; a shadow quota descriptor reports OK and passes.
    let r = request(c, &[("quota", "d"), ("free", "x")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OVER, vec![OVER, OK]));
    assert_eq!(overall(&request(c, &[("shadow_quota", "y")], 1).await), OK);
    let r = request(c, &[("quota", "d"), ("shadow_quota", "y")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OVER, OK]));
    // An unmatched descriptor is an ordinary passing one without the server-wide switch.
    let r = request(c, &[("quota", "d"), ("nothing", "z")], 1).await;
    assert_eq!(overall(&r), OVER);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_wide_switches_apply_and_change_at_reload() {
    // TestServiceGlobalQuotaMode: every descriptor counts as a quota descriptor.
    let (dir, server, mut c) = start_server(None, "quota_mode = true\n").await;
    let c = &mut c;
    for entry in [("regular", "a"), ("regular", "b")] {
        assert_eq!(overall(&request(c, &[entry], 1).await), OK);
    }
    let r = request(c, &[("regular", "a"), ("regular", "b")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OVER, vec![OVER, OVER]));
    let r = request(c, &[("regular", "a"), ("regular", "c")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OVER, OK]));
    // Unmatched descriptors count as passing quota descriptors: never OVER with one.
    let r = request(c, &[("regular", "a"), ("nothing", "z")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OVER, OK]));

    // TestServiceQuotaModeWithShadowMode: the final OVER_LIMIT is answered OK, statuses stay.
    let config = format!(
        "[envoy]\nconfig_dir = {:?}\nquota_mode = true\nshadow_mode = true\n",
        fixtures("quota").display().to_string()
    );
    dir.write("floodgate.toml", &config);
    server.reload().await.unwrap();
    let r = request(c, &[("regular", "a"), ("regular", "b")], 1).await;
    assert_eq!((overall(&r), statuses(&r)), (OK, vec![OVER, OVER]));
    assert!(!has_retry_after(&r));
    // And off again: the ordinary rule refuses alone.
    let config = format!(
        "[envoy]\nconfig_dir = {:?}\n",
        fixtures("quota").display().to_string()
    );
    dir.write("floodgate.toml", &config);
    server.reload().await.unwrap();
    let r = request(c, &[("regular", "a"), ("nothing", "z")], 1).await;
    assert_eq!(overall(&r), OVER);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoyproxy_ratelimits_quota_scripts_answer_as_there() {
    // quota.sh: service_1 (1/min) and service_2 (2/min) on every request.
    let (_dir, server, mut c) = start_server(None, "").await;
    let c = &mut c;
    let both = [("service", "service_1"), ("service", "service_2")];
    assert_eq!(overall(&request(c, &both, 1).await), OK);
    let second = request(c, &both, 1).await;
    assert_eq!((overall(&second), statuses(&second)), (OK, vec![OVER, OK]));
    assert_eq!(
        overall(&request(c, &both, 1).await),
        OVER,
        "the third is rejected"
    );
    server.shutdown().await;

    // token-quota.sh: a zero-cost check of service_2 at request time, one hit charged on
    // the response path: three requests pass, the fourth is rejected.
    let (_dir, server, mut c) = start_server(None, "").await;
    let c = &mut c;
    let service_2 = [("service", "service_2")];
    for n in 1..=3 {
        assert_eq!(overall(&request(c, &service_2, 0).await), OK, "request {n}");
        request(c, &service_2, 1).await; // apply_on_stream_done: Envoy ignores the answer
    }
    assert_eq!(overall(&request(c, &service_2, 0).await), OVER, "request 4");
    server.shutdown().await;
}

/// The merged `metadata` of the passing descriptors names the service to route to.
fn routed_to(response: &RateLimitResponse) -> Option<String> {
    use prost_types::value::Kind;
    let metadata = response.dynamic_metadata.as_ref()?.fields.get("metadata")?;
    let Some(Kind::StructValue(metadata)) = &metadata.kind else {
        return None;
    };
    let Some(Kind::StructValue(service)) = &metadata.fields.get("service_with_quota")?.kind else {
        return None;
    };
    match &service.fields.get("name")?.kind {
        Some(Kind::StringValue(name)) => Some(name.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiservice_token_quota_routes_by_the_metadata_of_passing_descriptors() {
    // multiservice-tokenquota.sh: zero-cost checks of both services at request time; the
    // metadata of those that pass says where to route; the serving one is charged one hit.
    let (_dir, server, mut c) = start_server(
        None,
        "response_dynamic_metadata = true
",
    )
    .await;
    let c = &mut c;
    let both = [("service", "service_1"), ("service", "service_2")];
    let mut routes = Vec::new();
    for _ in 0..5 {
        let r = request(c, &both, 0).await;
        assert_eq!(overall(&r), OK);
        let service = routed_to(&r).expect("a passing service");
        request(c, &[("service", service.as_str())], 1).await; // the response path
        routes.push(service);
    }
    assert_eq!(
        routes,
        [
            "service_1",
            "service_1",
            "service_2",
            "service_2",
            "service_2"
        ]
    );
    let sixth = request(c, &both, 0).await;
    assert_eq!(overall(&sixth), OVER, "both services out of quota");
    assert_eq!(routed_to(&sixth), None);
    // The rest of the metadata, as envoyproxy/ratelimit builds it.
    let metadata = sixth.dynamic_metadata.unwrap();
    let json = format!("{metadata:?}");
    for part in [
        "\"domain\"",
        "\"rl\"",
        "\"descriptors\"",
        "service=service_1",
        "\"hitsAddend\"",
    ] {
        assert!(json.contains(part), "{part} in {json}");
    }
    server.shutdown().await;

    // Without the switch, answers carry no dynamic metadata.
    let (_dir, server, mut c) = start_server(None, "").await;
    assert_eq!(request(&mut c, &both, 0).await.dynamic_metadata, None);
    server.shutdown().await;
}

/// A response-time report of 5 000 tokens against a `1000/minute` budget charges it: the
/// debt is capped at one burst (1 000 tokens at 60 ms each, 3 000 forgiven), so the bucket is
/// in debt — request-time checks refused — for the next 60 s, and full after 120 s.
async fn a_charged_budget_stays_over_for_a_minute(store_url: Option<&str>) {
    let (_dir, server, mut c) = start_server(store_url, "").await;
    let c = &mut c;
    let budget = [("budget", "tenant-1")];
    let check = request(c, &budget, 0).await;
    assert_eq!(overall(&check), OK);
    assert_eq!(
        check.statuses[0].limit_remaining, 1000,
        "a check charges nothing"
    );
    // The charge's own answer (which Envoy ignores) says the bucket is now in debt.
    let charged = request(c, &budget, 5000).await;
    assert_eq!(statuses(&charged), vec![OVER]);
    let check = request(c, &budget, 0).await;
    assert_eq!(overall(&check), OVER);
    let reset = check.statuses[0].duration_until_reset.unwrap();
    let reset = Duration::new(reset.seconds as u64, reset.nanos as u32);
    assert!(
        reset > Duration::from_secs(119) && reset <= Duration::from_secs(120),
        "full again in 2 × 60 s, in debt for the first 60 s: {reset:?}"
    );
    // At exact exhaustion a zero-cost check is not over (envoyproxy/ratelimit's "past the
    // limit"): 1 000 tokens charged from a fresh bucket leave it empty, not in debt.
    let other = [("budget", "tenant-2")];
    assert_eq!(statuses(&request(c, &other, 1000).await), vec![OK]);
    let r = request(c, &other, 0).await;
    assert_eq!((overall(&r), r.statuses[0].limit_remaining), (OK, 0));
    assert_eq!(
        statuses(&request(c, &other, 1).await),
        vec![OVER],
        "one more is debt"
    );
    assert_eq!(overall(&request(c, &other, 0).await), OVER);
    let metrics = server.metrics();
    assert!(
        metrics.contains(
            "floodgate_decisions_total{policy=\"envoy:rl.budget\",outcome=\"charged\"} 3"
        ),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charged_budget_stays_over_for_a_minute_on_the_memory_store() {
    a_charged_budget_stays_over_for_a_minute(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charged_budget_stays_over_for_a_minute_on_redis() {
    let redis = RedisServer::start();
    a_charged_budget_stays_over_for_a_minute(Some(&redis.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_sees_quota_mode_and_dynamic_metadata() {
    let python = crate::envoy::python_with_grpc().expect(
        "a Python with grpcio and grpc_tools is needed: apt-get install python3-grpcio \
         python3-grpc-tools (scripts/test installs them)",
    );
    let (_dir, server, _client) = start_server(None, "response_dynamic_metadata = true\n").await;
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(manifest.join("tests/python/rls_client.py"))
        .arg(manifest.join("proto"))
        .arg(server.grpc_addr().to_string())
        .arg("quota")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "ok",
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    server.shutdown().await;
}
