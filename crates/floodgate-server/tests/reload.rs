//! Hot reload (programmatic, file watch, SIGHUP through the binary) and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Binary, TempDir, get, post, signal, wait_exit};
use floodgate_server::{Options, start};

fn valid(generation: u32) -> String {
    format!(
        "[policies]\nsteady = \"1000000/s\"\nkept = \"1/hour burst 2\"\n\"gen-{generation}\" = \"1/s\"\n"
    )
}

const INVALID: [&str; 4] = [
    "[policies]\nsteady = \"1000000/fortnight\"\n",
    "[policies\nsteady = \"1/s\"\n",
    "[policies]\nsteady = \"1/s\"\n[store]\nmax_keys = 0\n",
    "[server]\nhttps = \"x\"\n",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_alternating_reloads_under_load_fail_no_request() {
    let dir = TempDir::new("reload-load");
    let path = dir.write("floodgate.toml", &valid(0));
    let mut options = Options::file_on_free_ports(&path);
    options.watch_interval = None; // every reload below is explicit, so the counts are exact
    let server = Arc::new(start(options).await.unwrap());
    let addr = server.http_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for task in 0..4 {
        let (stop, served) = (stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"policy":"steady","key":"k{task}"}}"#);
                let reply = post(addr, "/v1/check", &body).await;
                if reply.status != 200 || reply.json()["allowed"] != true {
                    failures.push(format!("{reply:?}"));
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // Someone watching the policy list only ever sees valid generations, each at most once
    // and in increasing order.
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let list = get(addr, "/v1/policies").await.json();
                let names: Vec<String> = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect();
                let generation: Vec<u32> = names
                    .iter()
                    .filter_map(|n| n.strip_prefix("gen-").map(|g| g.parse().unwrap()))
                    .collect();
                assert_eq!(generation.len(), 1, "exactly one generation: {names:?}");
                assert!(names.contains(&"steady".to_owned()) && names.contains(&"kept".to_owned()));
                if seen.last() != Some(&generation[0]) {
                    seen.push(generation[0]);
                }
            }
            seen
        })
    };

    let mut applied = 0;
    for i in 1..=1000u32 {
        if i % 2 == 0 {
            dir.write("floodgate.toml", &valid(i));
            let version = server.reload().await.expect("a valid config applies");
            applied += 1;
            assert_eq!(version, 1 + applied);
        } else {
            dir.write("floodgate.toml", INVALID[(i as usize / 2) % INVALID.len()]);
            server
                .reload()
                .await
                .expect_err("an invalid config is refused");
            assert_eq!(
                server.config_version(),
                1 + applied,
                "the old config keeps serving"
            );
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let failures = task.await.unwrap();
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    let seen = watcher.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        seen.iter().all(|g| g % 2 == 0),
        "only valid generations: {seen:?}"
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(server.config_version(), 501);
    assert_eq!(server.reloads(), (500, 500));
    let metrics = server.metrics();
    assert!(metrics.contains("floodgate_config_reloads_total{result=\"failed\"} 500"));
    assert!(metrics.contains("floodgate_config_version 501"));
    Arc::try_unwrap(server).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_a_reload_and_a_changed_file_is_picked_up() {
    let dir = TempDir::new("reload-watch");
    let path = dir.write("floodgate.toml", &valid(0));
    let server = start(Options::file_on_free_ports(&path)).await.unwrap();
    let addr = server.http_addr();
    let body = r#"{"policy":"kept","key":"user"}"#;
    assert_eq!(post(addr, "/v1/check", body).await.json()["remaining"], 1);

    // The watcher (50 ms in tests) sees the new file; no explicit reload.
    dir.write("floodgate.toml", &valid(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.config_version() < 2 {
        assert!(
            Instant::now() < deadline,
            "the changed file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(get(addr, "/v1/policies").await.body.contains("gen-1"));
    let json = post(addr, "/v1/check", body).await.json();
    assert_eq!(
        json["remaining"], 0,
        "the unchanged policy kept its bucket: {json}"
    );
    assert_eq!(post(addr, "/v1/check", body).await.json()["allowed"], false);

    // A bad file is counted and ignored; the watcher keeps going.
    dir.write("floodgate.toml", INVALID[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.reloads().1 < 1 {
        assert!(Instant::now() < deadline, "the bad file was not noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.config_version(), 2);
    assert_eq!(post(addr, "/v1/check", body).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_exits_0_on_sigterm() {
    let dir = TempDir::new("sighup");
    let path = dir.write("floodgate.toml", &valid(0));
    let path = path.to_string_lossy().into_owned();
    let mut binary = Binary::spawn(&["serve", "--config", &path, "--watch-secs", "0"], None);
    let (child, addr) = (&mut binary.child, binary.http);
    assert!(get(addr, "/v1/policies").await.body.contains("gen-0"));

    dir.write("floodgate.toml", &valid(7));
    signal(child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(addr, "/v1/policies").await.body.contains("gen-7") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(child, "TERM");
    assert_eq!(wait_exit(child), Some(0));
}

/// The signal handlers are registered before the banner: signals sent the moment the
/// server announces itself reload it and stop it gracefully, never kill it.
#[test]
fn signals_sent_right_after_the_banner_are_handled() {
    let dir = TempDir::new("early-signals");
    let path = dir.write("floodgate.toml", &valid(0));
    let path = path.to_string_lossy().into_owned();
    for stop in ["INT", "TERM"] {
        let mut binary = Binary::spawn(&["serve", "--config", &path, "--watch-secs", "0"], None);
        signal(&binary.child, "HUP");
        signal(&binary.child, stop);
        assert_eq!(
            wait_exit(&mut binary.child),
            Some(0),
            "SIGHUP then SIG{stop}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_binary_serves_the_demo_tiers() {
    let mut binary = Binary::spawn(&[], None);
    let (child, addr) = (&mut binary.child, binary.http);
    let reply = post(addr, "/v1/check", r#"{"policy":"free","key":"user:42"}"#).await;
    let json = reply.json();
    assert_eq!(
        (json["allowed"].clone(), json["limit"].clone()),
        (true.into(), 10.into())
    );
    let list = get(addr, "/v1/policies").await.body;
    assert_eq!(
        list,
        r#"[{"name":"enterprise","limits":"100/s burst 200"},{"name":"free","limits":"5/s burst 10; 1000/d"},{"name":"pro","limits":"50/s burst 100"}]"#
    );
    signal(child, "INT");
    assert_eq!(wait_exit(child), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let redis = floodgate_testkit::redis_server::RedisServer::start();
    let dir = TempDir::new("drain");
    let config = format!(
        "[store]\nurl = \"{}\"\ntimeout = \"5s\"\n[policies]\nslow = \"1/hour\"\n",
        redis.url()
    );
    let path = dir.write("floodgate.toml", &config);
    let server = start(Options::file_on_free_ports(path)).await.unwrap();
    let addr = server.http_addr();
    // Warm the connection and the script cache, then make Redis slow.
    assert_eq!(
        post(addr, "/v1/peek", r#"{"policy":"slow","key":"k"}"#)
            .await
            .status,
        200
    );
    redis.cli(&["CLIENT", "PAUSE", "700", "ALL"]);
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let reply = post(addr, "/v1/check", r#"{"policy":"slow","key":"k"}"#).await;
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    server.shutdown().await;
    let (reply, took) = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json();
    assert_eq!(
        json["allowed"], true,
        "decided by Redis after the pause: {json}"
    );
    assert!(
        took >= Duration::from_millis(400),
        "the request waited for Redis: {took:?}"
    );
    assert!(
        stopping.elapsed() >= Duration::from_millis(300),
        "shutdown waited for the request"
    );
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
