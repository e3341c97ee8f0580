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

    /// The server's process id (for reading its CPU time; it is stopped through its handle).
    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// Whether the server answers `PING` (false once killed).
    pub fn ping(&self) -> bool {
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

/// A local Redis Cluster of masters (no replicas), each a [`RedisServer`] of ours, with all
/// 16 384 slots assigned. Stopped on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's TLS port, for a Cluster started with [`start_tls`](Self::start_tls).
    tls_ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts `masters` (≥ 3) cluster-enabled servers and joins them with
    /// `redis-cli --cluster create`; waits until the cluster reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::create(masters, 0, 5_000)
    }

    /// Starts `masters` masters with one replica each, and a node timeout of
    /// `node_timeout_ms` (how long a master may be silent before its replica takes over);
    /// waits until the cluster is `ok` and every replica is in sync.
    pub fn start_with_replicas(masters: usize, node_timeout_ms: u32) -> Self {
        Self::create(masters, 1, node_timeout_ms)
    }

    /// Starts `masters` (≥ 3) masters that serve clients over TLS with `certificates`
    /// (besides the plain port the kit manages them through) and talk to each other over
    /// TLS on the Cluster bus; [`tls_url`](Self::tls_url) names them.
    pub fn start_tls(masters: usize, certificates: &crate::tls::Certificates) -> Self {
        let ports: Vec<(u16, u16)> = (0..masters)
            .map(|_| {
                let port = || free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
                (port(), port())
            })
            .collect();
        let nodes = ports
            .iter()
            .map(|&(tls_port, bus_port)| {
                let mut args = certificates.redis_server_args(tls_port);
                args.extend(
                    [
                        "--tls-cluster",
                        "yes",
                        "--cluster-port",
                        &bus_port.to_string(),
                    ]
                    .map(String::from),
                );
                args
            })
            .collect();
        let tls_ports = ports.iter().map(|&(tls_port, _)| tls_port).collect();
        let tls = ["--tls", "--cacert", &certificates.path("ca.crt")].map(String::from);
        Self::create_with(nodes, 0, 5_000, tls_ports, &tls)
    }

    fn create(masters: usize, replicas: usize, node_timeout_ms: u32) -> Self {
        let nodes = vec![Vec::new(); masters * (1 + replicas)];
        Self::create_with(nodes, replicas, node_timeout_ms, Vec::new(), &[])
    }

    /// Starts one node per entry of `node_args` (its extra `redis-server` arguments) and
    /// joins them with `redis-cli` (given `cli_args`), through the TLS ports when there are.
    fn create_with(
        node_args: Vec<Vec<String>>,
        replicas: usize,
        node_timeout_ms: u32,
        tls_ports: Vec<u16>,
        cli_args: &[String],
    ) -> Self {
        let timeout = node_timeout_ms.to_string();
        let nodes: Vec<RedisServer> = node_args
            .iter()
            .map(|extra| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    &timeout,
                ];
                args.extend(extra.iter().map(String::as_str));
                RedisServer::start_with(&args)
            })
            .collect();
        let addresses: Vec<String> = if tls_ports.is_empty() {
            nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port()))
                .collect()
        } else {
            tls_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
        };
        let output = Command::new("redis-cli")
            .args(cli_args)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli --cluster create: {e}"));
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes, tls_ports };
        cluster.wait_until_ok(Duration::from_secs(30));
        if replicas > 0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cluster.nodes.iter().all(|n| {
                let info = n.cli(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            }) {
                assert!(Instant::now() < deadline, "the replicas did not sync");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`. Panics after `timeout`.
    pub fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .nodes
            .iter()
            .filter(|n| n.ping())
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`, to kill or restart.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The index of the live master serving `slot` now.
    pub fn master_for_slot(&self, slot: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.ping() && n.is_master() && n.owns(slot))
            .unwrap_or_else(|| panic!("no live master owns slot {slot}"))
    }

    /// The index of a live replica of node `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let id = self.nodes[master].node_id();
        self.nodes
            .iter()
            .position(|n| {
                n.ping()
                    && n.cli(&["INFO", "replication"]).contains("role:slave")
                    && n.cli(&["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&id))
            })
            .unwrap_or_else(|| panic!("node {master} has no live replica"))
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `rediss+cluster://127.0.0.1:t1,127.0.0.1:t2,…` for a Cluster started with
    /// [`start_tls`](Self::start_tls). Panics for a plain one.
    pub fn tls_url(&self) -> String {
        assert!(
            !self.tls_ports.is_empty(),
            "this Cluster does not serve TLS"
        );
        let hosts: Vec<String> = self
            .tls_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("rediss+cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node that serves `slot` now.
    pub fn node_for_slot(&self, slot: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.owns(slot))
            .unwrap_or_else(|| panic!("no node owns slot {slot}"))
    }
}

impl RedisServer {
    /// This node's Cluster id.
    pub fn node_id(&self) -> String {
        self.cli(&["CLUSTER", "MYID"])
    }

    /// Whether this node is a master.
    pub fn is_master(&self) -> bool {
        self.cli(&["INFO", "replication"]).contains("role:master")
    }

    /// The Cluster slot of `key`.
    pub fn key_slot(&self, key: &str) -> u16 {
        self.cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"))
    }

    /// Whether this Cluster node serves `slot`.
    pub fn owns(&self, slot: u16) -> bool {
        let me = self.node_id();
        self.cli(&["CLUSTER", "NODES"]).lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.first() == Some(&me.as_str())
                && fields
                    .iter()
                    .skip(8)
                    .any(|range| match range.split_once('-') {
                        Some((a, b)) => {
                            a.parse::<u16>().is_ok_and(|a| a <= slot)
                                && b.parse::<u16>().is_ok_and(|b| slot <= b)
                        }
                        None => range.parse::<u16>() == Ok(slot),
                    })
        })
    }
}

/// A master, one replica and `sentinels` `redis-sentinel` processes watching them (quorum
/// 1, a master is down after `down_after_ms` of silence), all of ours on loopback, stopped
/// on drop. The master set is named [`SentinelGroup::MASTER`].
#[derive(Debug)]
pub struct SentinelGroup {
    /// The servers: index 0 starts as the master, index 1 as its replica.
    servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

/// One `redis-sentinel` child process and its config directory.
#[derive(Debug)]
struct Sentinel {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl SentinelGroup {
    /// The name the Sentinels monitor the master by.
    pub const MASTER: &'static str = "floodgate";

    /// Starts the master, its replica (waiting until it is in sync) and the Sentinels
    /// (waiting until each knows the master and its replica). Panics if it cannot.
    pub fn start(sentinels: usize, down_after_ms: u32) -> Self {
        let master = RedisServer::start();
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut group = SentinelGroup {
            servers: vec![master, replica],
            sentinels: Vec::new(),
        };
        for _ in 0..sentinels.max(1) {
            let sentinel = group.start_sentinel(down_after_ms);
            group.sentinels.push(sentinel);
        }
        for sentinel in &group.sentinels {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let replicas = sentinel_cli(sentinel.port, &["SENTINEL", "REPLICAS", Self::MASTER]);
                if replicas.contains(&group.servers[1].port().to_string()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel never found the replica: {replicas}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        group
    }

    fn start_sentinel(&self, down_after_ms: u32) -> Sentinel {
        let port = free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
        let dir =
            std::env::temp_dir().join(format!("floodgate-sentinel-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let config = dir.join("sentinel.conf");
        let master = Self::MASTER;
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {master} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {master} {down_after_ms}\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                dir.display(),
                self.servers[0].port()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-sentinel: {e}. Install it (Debian: apt-get install \
                     redis-sentinel); scripts/setup does so when it is missing"
                )
            });
        let sentinel = Sentinel { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sentinel_cli(port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-sentinel did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sentinel
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2/floodgate`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), Self::MASTER)
    }

    /// The servers: index 0 started as the master, index 1 as its replica.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// A server, to kill or restart.
    pub fn server_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.servers[i]
    }

    /// The port of the master the first Sentinel names now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.sentinel(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER]);
        reply.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    /// Runs one command through `redis-cli` against the first Sentinel.
    pub fn sentinel(&self, args: &[&str]) -> String {
        sentinel_cli(self.sentinels[0].port, args)
    }
}

fn sentinel_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
