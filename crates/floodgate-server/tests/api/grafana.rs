//! The Grafana dashboard (`grafana/floodgate.json`) queries only metrics the server exports.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common;

use common::{TempDir, get, post, server_with};

/// Every `floodgate_…` name in the dashboard's queries.
fn queried_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/floodgate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    let mut names = BTreeSet::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("floodgate_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    assert!(names.len() >= 10, "the dashboard queries {names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let dir = TempDir::new("grafana");
    let server = server_with(
        &dir,
        "[policies]\nfree = \"5/s\"\n\n[login]\nweb = {}\n\n[concurrency]\ndb = 2\n",
    )
    .await;
    let addr = server.http_addr();
    post(addr, "/v1/check", r#"{"policy":"free","key":"k"}"#).await;
    let text = get(addr, "/metrics").await.body;
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    let missing: Vec<_> = queried_metrics().difference(&exported).cloned().collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
    server.shutdown().await;
}
