//! The HTTP listener against hostile clients: slow headers (slowloris), slow bodies, huge or
//! many headers, and more connections than the bound.

mod common;

use std::time::{Duration, Instant};

use common::{TempDir, post, raw};
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
