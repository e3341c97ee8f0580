//! Both listeners against hostile clients and careless operators: slow headers (slowloris),
//! slow bodies, huge or many headers, more connections than the bound, silent gRPC
//! connections (also out of file descriptors), shutdown with half-open connections, the exact
//! body cap, and a config directory holding a FIFO, a device and a huge file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use common::{Binary, TempDir, get, post, raw, signal, wait_exit_within};
use floodgate_server::{Config, Options, Running, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_with(dir: &TempDir, server_section: &str) -> Running {
    let config = format!("[server]\n{server_section}\n[policies]\nfree = \"1000/s\"\n");
    let path = dir.write("floodgate.toml", &config);
    start(Options::file_on_free_ports(path)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = TempDir::new("slowloris");
    let server = server_with(&dir, "header_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection must be closed by the server");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // An idle keep-alive connection is closed after the same deadline.
    let mut idle = TcpStream::connect(server.http_addr()).await.unwrap();
    let request = "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 27\r\n\r\n{\"policy\":\"free\",\"key\":\"k\"}";
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "an idle keep-alive connection must be closed");
    assert!(String::from_utf8_lossy(&buffer).starts_with("HTTP/1.1 200"));
    // So is a connection that never sends a byte.
    let mut silent = TcpStream::connect(server.http_addr()).await.unwrap();
    let mut nothing = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut nothing)).await;
    assert!(read.is_ok(), "a silent connection must be closed");
    // Service goes on.
    assert_eq!(
        post(
            server.http_addr(),
            "/v1/check",
            r#"{"policy":"free","key":"k"}"#
        )
        .await
        .status,
        200
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_gets_408() {
    let dir = TempDir::new("slow-body");
    let server = server_with(&dir, "body_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(server.http_addr()).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"policy\"")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 300ms"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_are_refused() {
    let dir = TempDir::new("headers");
    let server = server_with(&dir, "max_header_bytes = 4096").await;
    let addr = server.http_addr();
    let body = r#"{"policy":"free","key":"k"}"#;
    let big = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "a".repeat(5_000),
        body.len()
    );
    assert_eq!(raw(addr, &big).await.status, 431);
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{many}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(addr, &request).await.status, 431);
    // Within the limits: served.
    let fine = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-ok: {}\r\ncontent-length: {}\r\n\r\n{body}",
        "a".repeat(3_000),
        body.len()
    );
    assert_eq!(raw(addr, &fine).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_wait_for_a_free_slot() {
    let dir = TempDir::new("max-conn");
    let server = server_with(&dir, "max_connections = 2").await;
    let addr = server.http_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third =
        tokio::spawn(
            async move { post(addr, "/v1/check", r#"{"policy":"free","key":"k"}"#).await },
        );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection is not served yet");
    drop(first);
    let reply = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot frees")
        .unwrap();
    assert_eq!(reply.status, 200);
    drop(second);
    server.shutdown().await;
}

#[test]
fn listeners_default_to_loopback_and_limits_are_validated() {
    let config = Config::parse(
        "[policies]\nfree = \"1/s\"\n",
        std::path::Path::new("x.toml"),
        None,
    )
    .unwrap();
    assert!(config.server.http.ip().is_loopback());
    assert!(config.server.grpc.ip().is_loopback());
    for (section, message) in [
        (
            "max_connections = 0",
            "x.toml: server.max_connections: must be from 1 to 1000000, got 0",
        ),
        (
            "header_timeout = \"2h\"",
            "x.toml: server.header_timeout: must be above 0 and at most 1h, got '2h'",
        ),
        (
            "max_header_bytes = 10",
            "x.toml: server.max_header_bytes: must be from 1024 to 1048576, got 10",
        ),
    ] {
        let text = format!("[server]\n{section}\n[policies]\nfree = \"1/s\"\n");
        let error = Config::parse(&text, std::path::Path::new("x.toml"), None).unwrap_err();
        assert_eq!(error.to_string(), message);
    }
}

/// A metric's value in a Prometheus exposition (`name{labels}` as written), 0 when absent.
fn metric(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until the peer closes (EOF or reset); `false` if it is still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buffer = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_grpc_connections_are_closed_even_out_of_file_descriptors() {
    let dir = TempDir::new("silent-grpc");
    let path = dir.write(
        "floodgate.toml",
        "[server]\ngrpc_handshake_timeout = \"1s\"\n[policies]\nfree = \"1000/s\"\n",
    );
    let path = path.to_string_lossy().into_owned();
    // Soft and hard limit 256: 300 connections cannot all be accepted at once.
    let binary = Binary::spawn(
        &["serve", "--config", &path, "--watch-secs", "0"],
        Some(256),
    );
    let opened = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(binary.grpc).await.unwrap());
    }
    // Every one is closed: the first batch at the handshake deadline, those waiting in the
    // backlog once descriptors free up and their own deadline passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_by(stream, deadline).await,
            "connection {i} is still open after {:?}",
            opened.elapsed()
        );
    }
    let all_closed = opened.elapsed();
    assert!(
        all_closed >= Duration::from_millis(900),
        "closed before the deadline: {all_closed:?}"
    );
    drop(silent);
    // The HTTP listener serves again.
    let health = tokio::time::timeout(Duration::from_secs(10), get(binary.http, "/healthz"))
        .await
        .expect("/healthz answers");
    assert_eq!(health.status, 200);
    // Each close is counted when its task ends, just after its socket closes: look again
    // for a moment rather than race the last one.
    let series =
        "floodgate_connections_closed_total{listener=\"grpc\",reason=\"handshake_timeout\"}";
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut metrics = get(binary.http, "/metrics").await.body;
    while metric(&metrics, series) < 300 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = get(binary.http, "/metrics").await.body;
    }
    let timed_out = metric(&metrics, series);
    assert_eq!(timed_out, 300, "{metrics}");
    let accept_errors = metric(&metrics, "floodgate_accept_errors_total{listener=\"grpc\"}")
        + metric(&metrics, "floodgate_accept_errors_total{listener=\"http\"}");
    assert!(
        accept_errors > 0,
        "the descriptor limit was never reached:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_silent_and_half_open_connections_exits_0_within_the_grace() {
    let dir = TempDir::new("sigterm-half-open");
    // Long handshake deadlines: only shutdown may close these connections.
    let path = dir.write(
        "floodgate.toml",
        "[server]\nheader_timeout = \"60s\"\nshutdown_grace = \"2s\"\n[policies]\nfree = \"1000/s\"\n",
    );
    let path = path.to_string_lossy().into_owned();
    let mut binary = Binary::spawn(&["serve", "--config", &path, "--watch-secs", "0"], None);
    let _silent_grpc = TcpStream::connect(binary.grpc).await.unwrap();
    let mut half_grpc = TcpStream::connect(binary.grpc).await.unwrap();
    half_grpc.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let _silent_http = TcpStream::connect(binary.http).await.unwrap();
    let mut half_http = TcpStream::connect(binary.http).await.unwrap();
    half_http
        .write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = Instant::now();
    signal(&binary.child, "TERM");
    let exit = wait_exit_within(&mut binary.child, Duration::from_secs(6));
    assert_eq!(exit, Some(Some(0)), "exit after {:?}", sent.elapsed());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_shutdown_cuts_what_the_grace_does_not_drain() {
    let dir = TempDir::new("grace-zero");
    let server = server_with(&dir, "header_timeout = \"60s\"\nshutdown_grace = \"0s\"").await;
    let mut half = TcpStream::connect(server.http_addr()).await.unwrap();
    half.write_all(b"POST /v1/check HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut grpc = TcpStream::connect(server.grpc_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let metrics = {
        let exposition = server.metrics();
        tokio::time::timeout(Duration::from_secs(3), server.shutdown())
            .await
            .expect("shutdown is bounded");
        exposition
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    assert!(closed_by(&mut half, deadline).await);
    assert!(closed_by(&mut grpc, deadline).await);
    assert!(
        metrics
            .contains("floodgate_connections_closed_total{listener=\"http\",reason=\"shutdown\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_is_closed_with_a_goaway() {
    let dir = TempDir::new("grpc-idle");
    let server = server_with(&dir, "grpc_idle_timeout = \"500ms\"").await;
    let mut stream = TcpStream::connect(server.grpc_addr()).await.unwrap();
    // The preface and an empty SETTINGS frame, then silence.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    // Read frames as a client would, acknowledging PINGs (a graceful close waits for one),
    // until the server closes the connection.
    let mut types = Vec::new();
    let mut goaway_after = None;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut header = [0u8; 9];
        while stream.read_exact(&mut header).await.is_ok() {
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0; length];
            if stream.read_exact(&mut payload).await.is_err() {
                break;
            }
            types.push(header[3]);
            match (header[3], header[4] & 1) {
                (7, _) => {
                    goaway_after.get_or_insert(started.elapsed());
                }
                (6, 0) => {
                    let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&payload);
                    let _ = stream.write_all(&ack).await;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "an idle connection must be closed; frames {types:?}"
    );
    let goaway_after = goaway_after.unwrap_or_else(|| panic!("no GOAWAY: frames {types:?}"));
    assert!(
        goaway_after >= Duration::from_millis(400),
        "{goaway_after:?}"
    );
    // The close is counted when the connection's task ends, just after the socket closes:
    // look again for a moment rather than race it.
    let series = "floodgate_connections_closed_total{listener=\"grpc\",reason=\"idle\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while metric(&server.metrics(), series) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&server.metrics(), series), 1);
    server.shutdown().await;
}

/// A valid check request padded with spaces to exactly `size` bytes.
fn padded_body(size: usize) -> Vec<u8> {
    let mut body = br#"{"policy":"free","key":"k"}"#.to_vec();
    body.resize(size, b' ');
    body
}

/// Sends `body` in `pieces` writes (with a pause between them, so they arrive as separate
/// frames), with a content-length or chunked; returns the status.
async fn send_body(addr: std::net::SocketAddr, body: &[u8], pieces: usize, chunked: bool) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = if chunked {
        "POST /v1/check HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
    } else {
        format!(
            "POST /v1/check HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
    };
    stream.write_all(head.as_bytes()).await.unwrap();
    let size = body.len().div_ceil(pieces);
    for piece in body.chunks(size) {
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The server may answer 413 and close before reading everything.
        if chunked {
            let _ = stream
                .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await;
            let _ = stream.write_all(piece).await;
            let _ = stream.write_all(b"\r\n").await;
        } else {
            let _ = stream.write_all(piece).await;
        }
    }
    if chunked {
        let _ = stream.write_all(b"0\r\n\r\n").await;
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_cap_is_exact_in_any_framing() {
    let dir = TempDir::new("body-cap");
    let server = server_with(&dir, "").await;
    let addr = server.http_addr();
    let cap = floodgate_server::MAX_BODY;
    for (pieces, chunked) in [(1, false), (3, false), (1, true), (3, true)] {
        let framing = format!("{pieces} piece(s), chunked {chunked}");
        assert_eq!(
            send_body(addr, &padded_body(cap), pieces, chunked).await,
            200,
            "{framing}"
        );
        assert_eq!(
            send_body(addr, &padded_body(cap + 1), pieces, chunked).await,
            413,
            "{framing}"
        );
    }
    // The regression: 60 000 bytes in three pieces used to count the first piece twice.
    assert_eq!(send_body(addr, &padded_body(60_000), 3, false).await, 200);
    server.shutdown().await;
}

/// This process's resident set size, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

const DOMAIN_V1: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 1 }\n";
const DOMAIN_V2: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 2 }\n";

/// Waits for the served config version to pass `version`.
async fn reloaded_past(server: &Running, version: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.config_version() <= version {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_a_device_and_a_huge_file_in_the_config_dir_are_never_read() {
    let dir = TempDir::new("hostile-dir");
    dir.write("envoy/d.yaml", DOMAIN_V1);
    let envoy = dir.path().join("envoy");
    let fifo = std::process::Command::new("mkfifo")
        .arg(envoy.join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::os::unix::fs::symlink("/dev/zero", envoy.join("zero.yaml")).unwrap();
    let huge = std::fs::File::create(envoy.join("backup.tar")).unwrap();
    huge.set_len(300 * 1024 * 1024).unwrap();
    let path = dir.write(
        "floodgate.toml",
        "[envoy]\nconfig_dir = \"envoy\"\nmax_file_bytes = 4096\n",
    );
    let before = rss();
    let server = tokio::time::timeout(
        Duration::from_secs(10),
        start(Options::file_on_free_ports(path)),
    )
    .await
    .expect("the FIFO does not block loading")
    .unwrap();
    // Twenty watch intervals.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let health = tokio::time::timeout(Duration::from_secs(2), get(server.http_addr(), "/healthz"))
        .await
        .expect("/healthz answers");
    assert_eq!(health.status, 200);
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "RSS grew by {grown} bytes");
    assert_eq!(
        server.config_version(),
        1,
        "nothing changed, nothing reloaded"
    );

    // A normal edit still reloads within the watch interval.
    dir.write("envoy/d.yaml", DOMAIN_V2);
    assert!(
        reloaded_past(&server, 1).await,
        "the edit was not picked up"
    );
    // A YAML file over the cap fails the reload, naming the file, its size and the cap;
    // the old config keeps serving.
    let big = format!("# {}\n{DOMAIN_V1}", "x".repeat(5_000));
    dir.write("envoy/big.yaml", &big);
    let error = server.reload().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}: the file is {} bytes, over the cap of 4096 bytes (envoy.max_file_bytes)",
            envoy.join("big.yaml").display(),
            big.len()
        )
    );
    assert_eq!(server.config_version(), 2);
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("a clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_style_data_symlink_swap_reloads() {
    let dir = TempDir::new("configmap");
    // As Kubernetes mounts a ConfigMap: d.yaml -> ..data/d.yaml, ..data -> ..v1.
    dir.write("envoy/..v1/d.yaml", DOMAIN_V1);
    let envoy = dir.path().join("envoy");
    std::os::unix::fs::symlink("..v1", envoy.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/d.yaml", envoy.join("d.yaml")).unwrap();
    let path = dir.write("floodgate.toml", "[envoy]\nconfig_dir = \"envoy\"\n");
    let server = start(Options::file_on_free_ports(path)).await.unwrap();
    let rule = |server: &Running| {
        server.config().envoy.get("d").and_then(|d| {
            d.find([("k", "v")].into_iter())
                .map(|m| m.rule.requests_per_unit)
        })
    };
    assert_eq!(rule(&server), Some(1));
    // The update: a new directory, a new link, renamed over `..data` in one step.
    dir.write("envoy/..v2/d.yaml", DOMAIN_V2);
    std::os::unix::fs::symlink("..v2", envoy.join("..data_tmp")).unwrap();
    std::fs::rename(envoy.join("..data_tmp"), envoy.join("..data")).unwrap();
    assert!(
        reloaded_past(&server, 1).await,
        "the swap was not picked up"
    );
    assert_eq!(rule(&server), Some(2));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_that_rename_policies_leave_metrics_the_size_of_one_config() {
    let dir = TempDir::new("metric-series");
    let config = |generation: u32| {
        let mut text = String::from("[policies]\n");
        for i in 0..5_000 {
            text.push_str(&format!("g{generation}-p{i:04} = \"10/s\"\n"));
        }
        text
    };
    let path = dir.write("floodgate.toml", &config(0));
    let mut options = Options::file_on_free_ports(path);
    options.watch_interval = None;
    let server = start(options).await.unwrap();
    let one = server.metrics().len();
    for generation in 1..=3 {
        dir.write("floodgate.toml", &config(generation));
        server.reload().await.unwrap();
    }
    let metrics = server.metrics();
    assert!(
        !metrics.contains("g0-p0000"),
        "a removed policy's series stayed"
    );
    assert!(metrics.contains("g3-p4999"));
    let after = metrics.len();
    assert!(
        after <= one + 1_000,
        "/metrics grew from {one} to {after} bytes"
    );
    server.shutdown().await;
}
