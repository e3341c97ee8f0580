//! A `redis-server` of the test's own, on a free loopback port, stopped on drop.
//!
//! Tests never assume a server is running and never stop one they did not start: each
//! `RedisServer` owns its child process and kills it by that handle.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` (from `PATH`) on a free port of 127.0.0.1, with persistence off,
    /// and waits until it answers `PING`. Panics with instructions when it cannot.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments (`["--maxmemory",
    /// "10mb"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::try_start(extra) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!(
            "cannot start redis-server: {last_error}. Install it (Debian: apt-get install redis-server); \
             scripts/test does so when it is missing"
        );
    }

    fn try_start(extra: &[&str]) -> Result<Self, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        Self::start_on(port, extra)
    }

    /// Stops the server (as a crash would: no shutdown save) and starts a fresh one on the
    /// same port, empty. Panics if it cannot.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::start_on(port, &[]) {
                Ok(server) => {
                    *self = server;
                    return;
                }
                Err(error) if Instant::now() > deadline => {
                    panic!("cannot restart redis-server: {error}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Kills the server; `restart` brings it back.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn start_on(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("floodgate-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let mut server = RedisServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if server.ping() {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status} (port {port} taken?)"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.stop();
        Err("redis-server did not answer PING within 10 s".into())
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs one command through `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        // Our own child, by its handle: never a process we did not start.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
