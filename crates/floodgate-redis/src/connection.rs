//! One connection to Redis: a standalone server or a Cluster, with the retry rules that keep
//! a request from ever being applied twice.
//!
//! Only errors that prove a request did *not* run are retried: NOSCRIPT (the script was not
//! in the cache: load it, run again), MOVED (the slot lives elsewhere: the slot map is
//! refreshed, run again), ASK (the slot is migrating: run once on the named node after
//! `ASKING`) and READONLY (the node became a replica in a failover and refused the first
//! write — a replica writes nothing: the slot map is refreshed, run again). Anything whose
//! outcome is unknown — a timeout, a connection lost after sending — is returned to the
//! caller, never replayed. The Cluster client's own retries are turned off for that reason.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{RedisError, RedisResult, Script, ServerErrorKind, Value};

use crate::sentinel::SentinelLink;
use crate::url::SentinelTarget;

/// Redirects followed for one request before giving up. Each proves the request did not
/// run, and the waits between them (5, 10, … 25 ms: 75 ms in all) give the client time to
/// rebuild its slot map while a failover settles; the store's timeout bounds the whole call
/// anyway.
const MAX_REDIRECTS: usize = 6;

#[derive(Clone)]
pub(crate) enum Connection {
    Standalone(Pipelines),
    Cluster(ClusterConnection),
    /// The master a set of Sentinels names, followed through failovers.
    Sentinel(Arc<SentinelLink>),
}

/// One or more multiplexed connections to one server; calls take turns.
#[derive(Clone)]
pub(crate) struct Pipelines {
    connections: Arc<[ConnectionManager]>,
    next: Arc<AtomicUsize>,
}

impl Pipelines {
    /// Opens `connections` multiplexed connections to the server at `url`.
    pub(crate) async fn open(
        url: &str,
        connect_timeout: Duration,
        root_certificate: Option<&[u8]>,
        connections: usize,
    ) -> RedisResult<Self> {
        let client = client(url, root_certificate)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            // Each call carries its own deadline (reconnecting and script reloads included).
            .set_response_timeout(None)
            .set_number_of_retries(1);
        let mut opened = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            opened.push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
        }
        Ok(Pipelines {
            connections: opened.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// No connection yet (a placeholder until the first master is found).
    pub(crate) fn empty() -> Self {
        Pipelines {
            connections: Arc::new([]),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many connections there are: the batcher's lanes.
    pub(crate) fn len(&self) -> usize {
        self.connections.len()
    }

    /// Connection `lane` (a batcher's own).
    pub(crate) fn lane(&self, lane: usize) -> ConnectionManager {
        self.connections[lane % self.connections.len()].clone()
    }

    /// The connection for the next call (a clone is a handle to the same connection).
    pub(crate) fn next(&self) -> ConnectionManager {
        let turn = if self.connections.len() == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len()
        };
        self.connections[turn].clone()
    }
}

impl Connection {
    /// Connects to a standalone server (`redis://…`, or `rediss://…` with the `tls` feature,
    /// verified against `root_certificate` (PEM) when given, the system's roots otherwise).
    /// `connections` multiplexed connections are opened; calls take turns on them.
    pub(crate) async fn standalone(
        url: &str,
        connect_timeout: Duration,
        root_certificate: Option<&[u8]>,
        connections: usize,
    ) -> RedisResult<Self> {
        let pipelines =
            Pipelines::open(url, connect_timeout, root_certificate, connections).await?;
        Ok(Connection::Standalone(pipelines))
    }

    /// Finds the master through the Sentinels of `target` and connects to it
    /// (`connections` multiplexed connections, like a standalone server).
    pub(crate) async fn through_sentinels(
        target: SentinelTarget,
        sentinel_password: Option<String>,
        connect_timeout: Duration,
        root_certificate: Option<&[u8]>,
        connections: usize,
    ) -> RedisResult<Self> {
        let link = SentinelLink::connect(
            target,
            sentinel_password,
            connect_timeout,
            root_certificate.map(<[u8]>::to_vec),
            connections,
        )
        .await?;
        let link = Arc::new(link);
        SentinelLink::watch(&link);
        Ok(Connection::Sentinel(link))
    }

    /// Behind Sentinel, how many times the store moved to a new master.
    pub(crate) fn master_switches(&self) -> u64 {
        match self {
            Connection::Sentinel(link) => link.switches(),
            _ => 0,
        }
    }

    /// How many lanes a batcher has on this connection: one per multiplexed connection;
    /// none on a Cluster, whose lanes are its slots.
    pub(crate) fn lanes(&self) -> usize {
        match self {
            Connection::Standalone(pipelines) => pipelines.len(),
            Connection::Sentinel(link) => link.master().pipelines.len(),
            Connection::Cluster(_) => 0,
        }
    }

    /// Runs a batch on connection `lane` (a Cluster routes it by `first_key`, one of the
    /// batch's keys, which all share a slot): `EVALSHA` of `script`, NOSCRIPT handled, a
    /// Sentinel's failover and a Cluster's redirects followed.
    pub(crate) async fn run_batch(
        &self,
        lane: usize,
        command: &redis::Cmd,
        script: &LuaScript,
        first_key: &str,
    ) -> RedisResult<Value> {
        match self {
            Connection::Standalone(pipelines) => {
                evalsha(command, script, &mut pipelines.lane(lane)).await
            }
            Connection::Sentinel(link) => link.run(Some(lane), command, Some(script)).await,
            Connection::Cluster(connection) => {
                cluster_script(connection, command, script, first_key).await
            }
        }
    }

    /// Connects to a Cluster through any of `nodes` (`redis://host:port` each, or
    /// `rediss://host:port` with the `tls` feature, verified like a standalone server's).
    pub(crate) async fn cluster(
        nodes: Vec<String>,
        connect_timeout: Duration,
        root_certificate: Option<&[u8]>,
    ) -> RedisResult<Self> {
        let client = cluster_client(nodes, connect_timeout, root_certificate)?;
        Ok(Connection::Cluster(client.get_async_connection().await?))
    }

    /// Parses a standalone URL and TLS settings as [`standalone`](Self::standalone) does,
    /// without connecting.
    pub(crate) fn check_standalone(url: &str, root_certificate: Option<&[u8]>) -> RedisResult<()> {
        client(url, root_certificate).map(drop)
    }

    /// Parses Cluster node URLs and TLS settings as [`cluster`](Self::cluster) does, without
    /// connecting.
    pub(crate) fn check_cluster(
        nodes: Vec<String>,
        connect_timeout: Duration,
        root_certificate: Option<&[u8]>,
    ) -> RedisResult<()> {
        cluster_client(nodes, connect_timeout, root_certificate).map(drop)
    }

    /// Runs the decision script with `keys` (one slot) and `args`: `EVALSHA`, and on
    /// NOSCRIPT (the script never ran) `SCRIPT LOAD` and once more.
    pub(crate) async fn eval(&self, keys: &[String], args: &[i64]) -> RedisResult<Value> {
        // Built once, straight into the command's buffer: no per-argument allocation.
        let mut command = redis::Cmd::with_capacity(
            3 + keys.len() + args.len(),
            64 + keys.iter().map(|k| k.len() + 16).sum::<usize>() + 24 * args.len(),
        );
        command.arg("EVALSHA").arg(DECIDE.sha()).arg(keys.len());
        for key in keys {
            command.arg(key.as_str());
        }
        for &arg in args {
            command.arg(arg);
        }
        match self {
            Connection::Standalone(pipelines) => {
                evalsha(&command, &DECIDE, &mut pipelines.next()).await
            }
            Connection::Sentinel(link) => link.run(None, &command, Some(&DECIDE)).await,
            Connection::Cluster(connection) => {
                let first_key = keys.first().map_or("", String::as_str);
                cluster_script(connection, &command, &DECIDE, first_key).await
            }
        }
    }

    /// Runs `command`, an `EVALSHA` of `script` on keys of one slot (`first_key` among
    /// them), as [`eval`](Self::eval) runs the decision script.
    pub(crate) async fn script(
        &self,
        script: &LuaScript,
        command: &redis::Cmd,
        first_key: &str,
    ) -> RedisResult<Value> {
        match self {
            Connection::Standalone(pipelines) => {
                evalsha(command, script, &mut pipelines.next()).await
            }
            Connection::Sentinel(link) => link.run(None, command, Some(script)).await,
            Connection::Cluster(connection) => {
                cluster_script(connection, command, script, first_key).await
            }
        }
    }

    /// Runs one command routed by its keys, following redirects like [`eval`](Self::eval).
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Standalone(pipelines) => command.query_async(&mut pipelines.next()).await,
            Connection::Sentinel(link) => {
                let reply = link.run(None, command, None).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            Connection::Cluster(connection) => {
                let mut connection = connection.clone();
                let mut redirects = 0;
                loop {
                    let error = match command.query_async(&mut connection).await {
                        Err(error) if redirects < MAX_REDIRECTS => error,
                        result => return result,
                    };
                    redirects += 1;
                    if let Some(node) = redirect(error)? {
                        let mut pipe = redis::pipe();
                        pipe.cmd("ASKING").add_command(command.clone());
                        let reply = connection
                            .route_pipeline(pipe, 1, 1, node)
                            .await
                            .and_then(first)?;
                        return Ok(redis::from_redis_value(reply)?);
                    }
                }
            }
        }
    }
}

/// Runs `command` (`EVALSHA` of `script` on keys of one slot, `first_key` among them) on a
/// Cluster, following MOVED, ASK and READONLY as the module docs say.
async fn cluster_script(
    connection: &ClusterConnection,
    command: &redis::Cmd,
    script: &LuaScript,
    first_key: &str,
) -> RedisResult<Value> {
    let mut connection = connection.clone();
    let mut redirects = 0;
    // The node the last ASK named: the next attempt goes there, once.
    let mut target: Option<SingleNodeRoutingInfo> = None;
    loop {
        let result = match &target {
            None => evalsha(command, script, &mut connection).await,
            Some(node) => ask(&mut connection, node.clone(), command, script).await,
        };
        let error = match result {
            Err(error) if redirects < MAX_REDIRECTS => error,
            result => return result,
        };
        redirects += 1;
        // READONLY (probed into a MOVED) and MOVED: not run; the client rebuilds its slot
        // map in the background, then the request goes again. ASK: run once on the named
        // node after ASKING.
        target = match stale_replica(error, &mut connection, first_key).await {
            Ok(()) => None,
            Err(error) => redirect(error)?,
        };
        if target.is_none() {
            // Give the rebuild a moment: while a migration or a failover settles, nodes
            // may disagree.
            tokio::time::sleep(Duration::from_millis(5 * redirects as u64)).await;
        }
    }
}

fn cluster_client(
    nodes: Vec<String>,
    connect_timeout: Duration,
    root_certificate: Option<&[u8]>,
) -> RedisResult<redis::cluster::ClusterClient> {
    let builder = redis::cluster::ClusterClient::builder(nodes)
        .retries(0)
        .connection_timeout(connect_timeout);
    with_root_certificate(builder, root_certificate).build()
}

#[cfg(feature = "tls")]
pub(crate) fn client(url: &str, root_certificate: Option<&[u8]>) -> RedisResult<redis::Client> {
    match root_certificate {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

#[cfg(feature = "tls")]
fn with_root_certificate(
    builder: redis::cluster::ClusterClientBuilder,
    root_certificate: Option<&[u8]>,
) -> redis::cluster::ClusterClientBuilder {
    match root_certificate {
        Some(pem) => builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        }),
        None => builder,
    }
}

#[cfg(not(feature = "tls"))]
fn with_root_certificate(
    builder: redis::cluster::ClusterClientBuilder,
    _root_certificate: Option<&[u8]>,
) -> redis::cluster::ClusterClientBuilder {
    builder
}

#[cfg(not(feature = "tls"))]
pub(crate) fn client(url: &str, _root_certificate: Option<&[u8]>) -> RedisResult<redis::Client> {
    redis::Client::open(url)
}

/// What to do after a Cluster error: `Ok(None)` for MOVED without a usable node (send
/// again: the client has refreshed its slot map), `Ok(Some(node))` for ASK (send once to
/// that node, after `ASKING`), the error itself for anything else.
fn redirect(error: RedisError) -> RedisResult<Option<SingleNodeRoutingInfo>> {
    match error.kind() {
        redis::ErrorKind::Server(ServerErrorKind::Moved) => Ok(None),
        redis::ErrorKind::Server(ServerErrorKind::Ask) => match node_of(&error) {
            Some(node) => Ok(Some(node)),
            None => Err(error),
        },
        _ => Err(error),
    }
}

/// After a failover the client may still send a slot's writes to its former master, now a
/// replica, which runs the script but refuses its first write with READONLY (a replica
/// writes nothing). A plain write command routed the same way draws a MOVED instead, which
/// makes the client rebuild its slot map; then the request can go again. The probe deletes
/// a key of the same slot that floodgate never creates (`…:probe`), so even on a master it
/// changes nothing. Any other error is returned as is.
async fn stale_replica(
    error: RedisError,
    connection: &mut ClusterConnection,
    key: &str,
) -> Result<(), RedisError> {
    if error.kind() != redis::ErrorKind::Server(ServerErrorKind::ReadOnly) || key.is_empty() {
        return Err(error);
    }
    let _ = redis::cmd("DEL")
        .arg(format!("{key}:probe"))
        .query_async::<Value>(connection)
        .await;
    Ok(())
}

/// `host:port` of the node an ASK or MOVED error names.
fn node_of(error: &RedisError) -> Option<SingleNodeRoutingInfo> {
    let (address, _slot) = error.redirect_node()?;
    let (host, port) = address.rsplit_once(':')?;
    Some(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// A Lua script this store runs by its SHA-1.
pub(crate) struct LuaScript {
    source: &'static str,
    sha: LazyLock<String>,
}

impl LuaScript {
    /// The SHA-1 `EVALSHA` calls it by.
    pub(crate) fn sha(&self) -> &str {
        &self.sha
    }

    /// `SCRIPT LOAD` of this script.
    fn load(&self) -> redis::Cmd {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(self.source);
        load
    }
}

/// The single-decision script.
pub(crate) static DECIDE: LuaScript = LuaScript {
    source: include_str!("scripts/decide.lua"),
    sha: LazyLock::new(|| {
        Script::new(include_str!("scripts/decide.lua"))
            .get_hash()
            .to_owned()
    }),
};

/// The batch script: many decisions in one call.
pub(crate) static BATCH: LuaScript = LuaScript {
    source: include_str!("scripts/batch.lua"),
    sha: LazyLock::new(|| {
        Script::new(include_str!("scripts/batch.lua"))
            .get_hash()
            .to_owned()
    }),
};

/// The concurrency-permit script: acquire, release and renew.
pub(crate) static PERMIT: LuaScript = LuaScript {
    source: include_str!("scripts/permit.lua"),
    sha: LazyLock::new(|| {
        Script::new(include_str!("scripts/permit.lua"))
            .get_hash()
            .to_owned()
    }),
};

/// Runs `command` (`EVALSHA` of `script` …) and, should the server not have the script
/// cached (NOSCRIPT: nothing ran), loads it and runs the command once more. A Cluster
/// routes `SCRIPT LOAD` to every master. An error reply *inside* the reply (the batch
/// script's failed items) stays in the value.
pub(crate) async fn evalsha(
    command: &redis::Cmd,
    script: &LuaScript,
    connection: &mut impl redis::aio::ConnectionLike,
) -> RedisResult<Value> {
    match call(command, connection).await {
        Err(error) if error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load().query_async::<Value>(connection).await?;
            call(command, connection).await
        }
        reply => reply,
    }
}

/// Sends `command`; an error reply is an error, an error nested in an array is not.
async fn call(
    command: &redis::Cmd,
    connection: &mut impl redis::aio::ConnectionLike,
) -> RedisResult<Value> {
    match connection.req_packed_command(command).await? {
        Value::ServerError(error) => Err(error.into()),
        value => Ok(value),
    }
}

/// Runs `command` once on `node`, which is importing the slot, after `ASKING` (loading the
/// script there first if that node's cache lacks it).
async fn ask(
    connection: &mut ClusterConnection,
    node: SingleNodeRoutingInfo,
    command: &redis::Cmd,
    script: &LuaScript,
) -> RedisResult<Value> {
    let asking = || {
        let mut pipe = redis::pipe();
        pipe.cmd("ASKING").add_command(command.clone());
        pipe
    };
    // The reply to EVALSHA only: skip the one to ASKING.
    let reply = connection
        .route_pipeline(asking(), 1, 1, node.clone())
        .await
        .and_then(first);
    match reply {
        Err(error) if error.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
            connection
                .route_command(
                    script.load(),
                    redis::cluster_routing::RoutingInfo::SingleNode(node.clone()),
                )
                .await?;
            connection
                .route_pipeline(asking(), 1, 1, node)
                .await
                .and_then(first)
        }
        reply => reply,
    }
}

/// The one reply of a pipeline, with an error reply turned into an error (an error nested
/// in an array — a batch item's — stays in the value).
fn first(mut values: Vec<Value>) -> RedisResult<Value> {
    match values.pop() {
        Some(Value::ServerError(error)) => Err(error.into()),
        Some(value) => Ok(value),
        None => Err(RedisError::from((
            redis::ErrorKind::Client,
            "empty pipeline reply",
        ))),
    }
}
