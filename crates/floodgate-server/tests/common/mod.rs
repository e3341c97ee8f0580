//! Helpers shared by the server tests: a minimal HTTP/1.1 client (one connection per
//! request) and config files in temporary directories.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends one request and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse(&raw)
}

/// Sends raw request bytes (the caller writes every header) and reads the whole response.
pub async fn raw(addr: SocketAddr, request: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(addr, "POST", path, &[], body.as_bytes()).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"").await
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "floodgate-server-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` atomically (write then rename), so a watcher never reads half a file.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        let tmp = self.0.join(format!(".{}.tmp", name.replace('/', "_")));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `floodgate` binary running on free ports.
pub struct Binary {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

impl Binary {
    /// Runs the binary with `args` on free ports; `nofile` sets its soft and hard
    /// `RLIMIT_NOFILE` first (through `sh -c 'ulimit -n N; exec …'`).
    pub fn spawn(args: &[&str], nofile: Option<u32>) -> Binary {
        let binary = env!("CARGO_BIN_EXE_floodgate");
        let mut command = match nofile {
            None => Command::new(binary),
            Some(n) => {
                let mut command = Command::new("sh");
                command.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                command
            }
        };
        let mut child = command
            .args(args)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .env("FLOODGATE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        // Keep draining: the server's stdout stays open for as long as it runs.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        // "floodgate listening: HTTP on http://A, Envoy RLS gRPC on B"
        let parse = |text: Option<&str>| -> SocketAddr {
            text.and_then(|t| t.trim().parse().ok())
                .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        };
        let http = parse(
            first
                .split("http://")
                .nth(1)
                .and_then(|rest| rest.split(',').next()),
        );
        let grpc = parse(first.split("gRPC on ").nth(1));
        Binary { child, http, grpc }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Ours: stopped by its pid.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a signal (by name, such as `TERM`) to a child process we started, by its pid.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits up to 10 s for `child` to exit; its exit code.
pub fn wait_exit(child: &mut Child) -> Option<i32> {
    wait_exit_within(child, Duration::from_secs(10)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the server did not exit in time");
    })
}

/// Waits up to `limit` for `child` to exit: `Some(exit code)`, or `None` if it still runs.
pub fn wait_exit_within(child: &mut Child, limit: Duration) -> Option<Option<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server started in-process on free ports from `config`, written to `floodgate.toml` in
/// `dir`.
pub async fn server_with(dir: &TempDir, config: &str) -> floodgate_server::Running {
    let path = dir.write("floodgate.toml", config);
    floodgate_server::start(floodgate_server::Options::file_on_free_ports(path))
        .await
        .expect("server starts")
}

/// Asserts `reply` is an `application/problem+json` with `status` whose detail contains
/// `detail_part`.
pub fn assert_problem(reply: &Reply, status: u16, detail_part: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["status"], status, "{reply:?}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(detail_part),
        "detail {detail:?} should contain {detail_part:?}"
    );
}
