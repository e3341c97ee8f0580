//! Redis Sentinel: the master is whatever the Sentinels name for the URL's master name, and
//! the store follows it through a failover.
//!
//! The master's address is asked of each Sentinel in turn (`SENTINEL
//! get-master-addr-by-name`); the first answer wins, and the store opens its connections to
//! that server. It asks again when the master may have changed:
//!
//! - a `READONLY` error: the server the store writes to has become a replica. A replica
//!   writes nothing, so the request did not run: once the store reaches the new master the
//!   request goes again there (at most [`MAX_FOLLOWS`] times);
//! - a connection error (refused, reset, closed): the server may be down. The request's
//!   outcome is unknown, so it is not sent again (the caller gets the error and its failure
//!   policy); the store asks the Sentinels in the background, at most every
//!   [`REDISCOVER_EVERY`], until they name another master.
//!
//! Writes the old master accepted after the promotion and before it was demoted (or before
//! the store left it) are lost with it: each such window is worth at most a burst per key
//! plus what the limit refills during it.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::{RedisError, RedisResult, ServerErrorKind, Value};

use crate::connection::{LuaScript, Pipelines, evalsha};
use crate::url::SentinelTarget;

/// Requests sent again after a `READONLY`, each after the store found a new master.
pub(crate) const MAX_FOLLOWS: usize = 3;

/// The shortest time between two rounds of questions to the Sentinels.
pub(crate) const REDISCOVER_EVERY: Duration = Duration::from_millis(20);

/// How often the store asks the Sentinels for the master while no `+switch-master`
/// announcement arrives.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The master of a Sentinel-managed group, followed through failovers.
pub(crate) struct SentinelLink {
    target: SentinelTarget,
    sentinel_password: Option<String>,
    connect_timeout: Duration,
    root_certificate: Option<Vec<u8>>,
    connections: usize,
    current: RwLock<Arc<Master>>,
    /// One round of questions at a time, and when the last one started.
    asking: tokio::sync::Mutex<Option<Instant>>,
    /// How many times the store moved to another master.
    switches: Mutex<u64>,
}

/// The master the store writes to now.
pub(crate) struct Master {
    /// `host:port`, as the Sentinels named it.
    pub(crate) address: String,
    pub(crate) pipelines: Pipelines,
}

impl SentinelLink {
    /// Finds the master through the Sentinels and connects to it.
    pub(crate) async fn connect(
        target: SentinelTarget,
        sentinel_password: Option<String>,
        connect_timeout: Duration,
        root_certificate: Option<Vec<u8>>,
        connections: usize,
    ) -> RedisResult<Self> {
        let probe = SentinelLink {
            target,
            sentinel_password,
            connect_timeout,
            root_certificate,
            connections,
            current: RwLock::new(Arc::new(Master {
                address: String::new(),
                pipelines: Pipelines::empty(),
            })),
            asking: tokio::sync::Mutex::new(None),
            switches: Mutex::new(0),
        };
        let address = probe.discover().await?;
        let master = probe.open(&address).await?;
        *probe
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(master);
        Ok(probe)
    }

    /// The master now.
    pub(crate) fn master(&self) -> Arc<Master> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Times the store has moved to another master.
    pub(crate) fn switches(&self) -> u64 {
        *self.switches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the Sentinels for the master, in turn; the first answer wins.
    async fn discover(&self) -> RedisResult<String> {
        let mut last_error = None;
        for sentinel in &self.target.sentinels {
            let url = self
                .target
                .sentinel_url(sentinel, self.sentinel_password.as_deref());
            let asked = tokio::time::timeout(self.connect_timeout, self.ask(&url)).await;
            match asked {
                Ok(Ok(Some(address))) => return Ok(address),
                Ok(Ok(None)) => {
                    last_error = Some(RedisError::from((
                        redis::ErrorKind::Client,
                        "Sentinel does not know the master",
                        format!("{sentinel} knows no master named {:?}", self.target.master),
                    )));
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => {
                    last_error = Some(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("Sentinel {sentinel} did not answer"),
                    )));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| RedisError::from((redis::ErrorKind::Client, "no Sentinel given"))))
    }

    /// One Sentinel's answer: the master's `host:port`, or `None` if it knows no such master.
    async fn ask(&self, url: &str) -> RedisResult<Option<String>> {
        let client = crate::connection::client(url, self.root_certificate.as_deref())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.target.master)
            .query_async(&mut connection)
            .await?;
        Ok(reply.map(|(host, port)| format!("{host}:{port}")))
    }

    async fn open(&self, address: &str) -> RedisResult<Master> {
        let url = self.target.master_url(address);
        let pipelines = Pipelines::open(
            &url,
            self.connect_timeout,
            self.root_certificate.as_deref(),
            self.connections,
        )
        .await?;
        Ok(Master {
            address: address.to_owned(),
            pipelines,
        })
    }

    /// After `failed` (the master a request just failed on) refused or lost a request: asks
    /// the Sentinels again, unless another caller already moved on or asked a moment ago,
    /// and moves to the master they name if it is another. Whether the store now writes to
    /// another master than `failed`.
    pub(crate) async fn follow(&self, failed: &str) -> bool {
        let mut asked = self.asking.lock().await;
        if self.master().address != failed {
            return true;
        }
        if asked.is_some_and(|at| at.elapsed() < REDISCOVER_EVERY) {
            return false;
        }
        *asked = Some(Instant::now());
        match self.discover().await {
            Ok(address) if address != failed => self.switch_to(failed, &address).await,
            _ => false,
        }
    }

    /// Moves from `from` to the master at `address`, once it says it is one (`ROLE`): a
    /// Sentinel that has not heard of the failover yet may still name the old master.
    async fn switch_to(&self, from: &str, address: &str) -> bool {
        let Ok(master) = self.open(address).await else {
            return false;
        };
        let role: RedisResult<Vec<Value>> = redis::cmd("ROLE")
            .query_async(&mut master.pipelines.next())
            .await;
        let is_master = matches!(
            role.as_deref(),
            Ok([Value::BulkString(role), ..]) if role.as_slice() == b"master"
        );
        if !is_master {
            return false;
        }
        tracing::warn!(from, to = %address, master = %self.target.master,
            "Sentinel named a new master; decisions go there now");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(master);
        *self.switches.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        true
    }

    /// Follows `+switch-master` announcements, and checks with the Sentinels every
    /// [`CHECK_EVERY`] in case one was missed, for as long as the store lives.
    pub(crate) fn watch(link: &Arc<Self>) {
        let weak = Arc::downgrade(link);
        tokio::spawn(async move {
            let mut turn = 0usize;
            loop {
                let Some(link) = weak.upgrade() else { return };
                let sentinel = link.target.sentinels[turn % link.target.sentinels.len()].clone();
                turn += 1;
                let url = link
                    .target
                    .sentinel_url(&sentinel, link.sentinel_password.as_deref());
                let root = link.root_certificate.clone();
                drop(link);
                let subscribed = async {
                    let client = crate::connection::client(&url, root.as_deref())?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe("+switch-master").await?;
                    RedisResult::Ok(pubsub)
                };
                let pubsub = tokio::time::timeout(Duration::from_secs(2), subscribed).await;
                let Ok(Ok(mut pubsub)) = pubsub else {
                    tokio::time::sleep(CHECK_EVERY).await;
                    continue;
                };
                let mut messages = pubsub.on_message();
                loop {
                    let next = tokio::time::timeout(CHECK_EVERY, messages.next()).await;
                    let Some(link) = weak.upgrade() else { return };
                    let current = link.master().address.clone();
                    match next {
                        // "<name> <old-ip> <old-port> <new-ip> <new-port>"
                        Ok(Some(message)) => {
                            let payload: String = message.get_payload().unwrap_or_default();
                            let words: Vec<&str> = payload.split(' ').collect();
                            if let [name, _, _, ip, port] = words[..] {
                                let address = format!("{ip}:{port}");
                                if name == link.target.master && address != current {
                                    let _guard = link.asking.lock().await;
                                    if link.master().address == current {
                                        link.switch_to(&current, &address).await;
                                    }
                                }
                            }
                        }
                        // The subscription broke: the next Sentinel.
                        Ok(None) => break,
                        // Quiet: check anyway.
                        Err(_) => {
                            link.follow(&current).await;
                        }
                    }
                }
            }
        });
    }

    /// Runs `command` on the master — `EVALSHA` of `script` (NOSCRIPT handled) when given,
    /// else as is — on its pipeline `lane`, or the next in turn, following a failover as the
    /// module docs say.
    pub(crate) async fn run(
        self: &Arc<Self>,
        lane: Option<usize>,
        command: &redis::Cmd,
        script: Option<&LuaScript>,
    ) -> RedisResult<Value> {
        let mut follows = 0;
        loop {
            let master = self.master();
            let mut connection = match lane {
                Some(lane) => master.pipelines.lane(lane),
                None => master.pipelines.next(),
            };
            let result = match script {
                Some(script) => evalsha(command, script, &mut connection).await,
                None => command.query_async::<Value>(&mut connection).await,
            };
            match result {
                Err(error) if is_read_only(&error) && follows < MAX_FOLLOWS => {
                    follows += 1;
                    if !self.follow(&master.address).await {
                        tokio::time::sleep(REDISCOVER_EVERY).await;
                    }
                }
                Err(error) if lost_connection(&error) => {
                    let link = self.clone();
                    tokio::spawn(async move { link.follow(&master.address).await });
                    return Err(error);
                }
                result => return result,
            }
        }
    }
}

/// A write refused by a replica: the request did not run.
fn is_read_only(error: &RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(ServerErrorKind::ReadOnly)
}

/// The server may be gone.
fn lost_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}
