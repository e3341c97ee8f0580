//! Exact batching: the decisions waiting for one connection go to Redis as one call of the
//! batch script, which decides them in order, each exactly as the single-decision script
//! would decide it alone at the batch's time; the concurrency-permit operations waiting for
//! it go as one call of the permit script, which applies them the same way. Each kind of
//! work ([`Work`]: [`Decide`] here, `permits::PermitCall`) has lanes of its own.
//!
//! No timer: each connection has a queue and at most [`MAX_IN_FLIGHT`] batches awaiting
//! their replies. A decision that finds no flush task, or every one awaiting a reply with
//! room for another batch, starts one, which sends whatever is queued (up to
//! [`MAX_ITEMS`] decisions, [`MAX_ARGS`] arguments and [`MAX_BYTES`] bytes), awaits the
//! reply, hands each decision its own reply, and sends what queued meanwhile; it ends when
//! the queue is empty. At low load a batch holds one decision, so latency is that of a
//! single call; under load a batch holds what arrived during a round trip. A long queue
//! (twice [`SPLIT_FROM`] or more) found with no batch in flight goes as two halves at once,
//! so that Redis decides one while this node reads the other's replies: with one batch at a
//! time each side would wait for the other (measured on acquire + release pairs of 64 tasks:
//! 69 k pairs/s against 47 k).
//!
//! Two batches in flight on one connection keep their order: Redis runs them one after
//! the other as they arrive, each atomically.
//!
//! A batch is sent once. When its reply is lost (a timeout, a dropped connection) each of
//! its callers gets the error — and its failure policy — once, and the circuit breaker
//! counts one failure for the batch, not one per decision. A decision whose caller gave up
//! before its batch left is not sent at all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{RedisError, RedisResult, Value};
use tokio::sync::oneshot;

use crate::connection::{BATCH, Connection, LuaScript};
use crate::failure::Breaker;
use crate::store::{timed_out, unavailable};

/// The most decisions in one batch (fewer than the script's 1023 limit sets). Larger
/// batches gain little (the call's fixed cost is already spread thin) and hold Redis's
/// only thread longer.
pub(crate) const MAX_ITEMS: usize = 256;

/// The most arguments in one batch call, well below what Redis and Lua take (a policy of
/// many limits makes long items).
pub(crate) const MAX_ARGS: usize = 8_192;

/// The most bytes of keys and arguments in one batch call.
pub(crate) const MAX_BYTES: usize = 256 * 1024;

/// The reply to one item: its own reply in the script's, or why there is none.
pub(crate) type Reply = RedisResult<Value>;

/// What a batch carries: one kind of work, sent as one call of its script.
pub(crate) trait Work: Send + Sync + Sized + 'static {
    /// The script a batch of this work calls.
    fn script() -> &'static LuaScript;
    /// Arguments this item adds to a call at most.
    fn args(&self) -> usize;
    /// Bytes this item adds to a call, counted generously.
    fn bytes(&self) -> usize;
    /// One of this item's keys: a Cluster routes the batch by it.
    fn first_key(&self) -> &str;
    /// `EVALSHA` of the script for `batch`, in order.
    fn command(batch: &[&Self]) -> redis::Cmd;
    /// Counts one call carrying `items` items.
    fn count(counters: &Counters, items: usize);
}

/// One item waiting to be sent, and where its reply goes.
pub(crate) struct Item<W> {
    pub(crate) work: W,
    pub(crate) reply: oneshot::Sender<Reply>,
}

/// One decision, for the batch script.
pub(crate) struct Decide {
    /// The Redis keys of its limits (one slot).
    pub(crate) keys: Vec<String>,
    /// Operation code and cost (see `reply::wire`); for a lease, 0 and the tokens wanted.
    pub(crate) op: [i64; 2],
    /// For a lease: the fewest tokens worth taking.
    pub(crate) least: Option<i64>,
    /// Each limit's emission interval and burst, in the keys' order.
    pub(crate) limits: Vec<(i64, i64)>,
    /// The decision time sent to the script: -1 for Redis's clock.
    pub(crate) now: i64,
}

impl Work for Decide {
    fn script() -> &'static LuaScript {
        &BATCH
    }

    fn args(&self) -> usize {
        4 + 3 * self.limits.len()
    }

    /// An integer argument counted as 24 bytes.
    fn bytes(&self) -> usize {
        self.keys.iter().map(|k| k.len() + 16).sum::<usize>() + 24 * self.args()
    }

    fn first_key(&self) -> &str {
        self.keys.first().map_or("", String::as_str)
    }

    fn command(batch: &[&Self]) -> redis::Cmd {
        command(batch)
    }

    fn count(counters: &Counters, items: usize) {
        counters.count(items);
    }
}

/// Script calls and the decisions they carried, batched or not; permit calls and the
/// operations they carried.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) decisions: AtomicU64,
    /// Concurrency-permit script calls, the operations they carried, and the ended leases
    /// they reclaimed.
    pub(crate) permit_calls: AtomicU64,
    pub(crate) permit_operations: AtomicU64,
    pub(crate) reclaimed_permits: AtomicU64,
}

impl Counters {
    pub(crate) fn count(&self, decisions: usize) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.decisions
            .fetch_add(decisions as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_permits(&self, operations: usize) {
        self.permit_calls.fetch_add(1, Ordering::Relaxed);
        self.permit_operations
            .fetch_add(operations as u64, Ordering::Relaxed);
    }
}

/// A store's batcher of one kind of work: on a standalone server (or behind Sentinel) one
/// lane per connection, which items take turns on; on a Cluster one lane per hash slot,
/// made when first used, since the keys of one script call must share a slot.
pub(crate) struct Batcher<W> {
    lanes: Box<[Arc<Lane<W>>]>,
    next: AtomicUsize,
    /// A Cluster's lanes, by slot.
    slots: Option<Mutex<HashMap<u16, Arc<Lane<W>>>>>,
    /// What a new slot lane needs.
    connection: Connection,
    timeout: Duration,
    breaker: Arc<Breaker>,
    counters: Arc<Counters>,
}

struct Lane<W> {
    connection: Connection,
    /// Which of the connection's multiplexed connections this lane sends on.
    index: usize,
    queue: Mutex<Queue<W>>,
    timeout: Duration,
    breaker: Arc<Breaker>,
    counters: Arc<Counters>,
}

struct Queue<W> {
    items: Vec<Item<W>>,
    /// Flush tasks running for this lane.
    flushers: usize,
    /// How many of them await a reply.
    sending: usize,
}

impl<W> Default for Queue<W> {
    fn default() -> Self {
        Queue {
            items: Vec::new(),
            flushers: 0,
            sending: 0,
        }
    }
}

/// A queue this long or longer (twice this), with no batch in flight, goes as two batches.
const SPLIT_FROM: usize = 8;

/// The most batches awaiting their replies on one connection: two, so Redis works on one
/// while this node reads the other's replies and its callers queue the next decisions.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

impl<W: Work> Batcher<W> {
    /// A batcher with one lane per multiplexed connection of `connection`.
    pub(crate) fn new(
        connection: &Connection,
        timeout: Duration,
        breaker: Arc<Breaker>,
        counters: Arc<Counters>,
    ) -> Self {
        let cluster = matches!(connection, Connection::Cluster(_));
        let lane = |index| {
            Arc::new(Lane {
                connection: connection.clone(),
                index,
                queue: Mutex::default(),
                timeout,
                breaker: breaker.clone(),
                counters: counters.clone(),
            })
        };
        Batcher {
            lanes: if cluster {
                Box::new([])
            } else {
                (0..connection.lanes().max(1)).map(lane).collect()
            },
            next: AtomicUsize::new(0),
            slots: cluster.then(|| Mutex::new(HashMap::new())),
            connection: connection.clone(),
            timeout,
            breaker,
            counters,
        }
    }

    /// Queues an item; its reply arrives on the returned channel, once the circuit breaker
    /// has been told how its batch went.
    fn submit(&self, work: W) -> oneshot::Receiver<Reply> {
        let (reply, receiver) = oneshot::channel();
        let lane = match &self.slots {
            Some(slots) => {
                let slot = slot(work.first_key());
                let mut slots = slots.lock().unwrap_or_else(PoisonError::into_inner);
                slots
                    .entry(slot)
                    .or_insert_with(|| {
                        Arc::new(Lane {
                            connection: self.connection.clone(),
                            index: usize::from(slot),
                            queue: Mutex::default(),
                            timeout: self.timeout,
                            breaker: self.breaker.clone(),
                            counters: self.counters.clone(),
                        })
                    })
                    .clone()
            }
            None if self.lanes.len() == 1 => self.lanes[0].clone(),
            None => {
                self.lanes[self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len()].clone()
            }
        };
        lane.submit(Item { work, reply });
        receiver
    }

    /// Queues `work` and waits for its reply, at most the store's timeout. The batch tells
    /// the circuit breaker how it went, once for all of its items; a caller that stops
    /// waiting leaves the count to its batch.
    pub(crate) async fn call(&self, work: W) -> Reply {
        let receiver = self.submit(work);
        match tokio::time::timeout(self.timeout, receiver).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(dropped()),
            Err(_) => Err(timed_out()),
        }
    }
}

impl<W: Work> Lane<W> {
    fn submit(self: &Arc<Self>, item: Item<W>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.items.push(item);
        // A flusher starts when none runs, or when every one awaits a reply and there is
        // room for one more batch in flight; otherwise a running one takes this decision.
        if queue.flushers == 0
            || (queue.flushers == queue.sending && queue.flushers < MAX_IN_FLIGHT)
        {
            queue.flushers += 1;
            drop(queue);
            self.clone().start();
        }
    }

    /// Spawns a flush task (counted in `flushers` by the caller).
    fn start(self: Arc<Self>) {
        tokio::spawn(self.flush());
    }

    /// Sends batches until the queue is empty.
    async fn flush(self: Arc<Self>) {
        loop {
            // Let the tasks already woken queue their items first: without a timer, this
            // is what fills a batch under load (and costs nothing when idle).
            tokio::task::yield_now().await;
            let (batch, another) = self.take();
            if batch.is_empty() {
                return;
            }
            if another {
                self.clone().start();
            }
            self.send(batch).await;
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.sending -= 1;
        }
    }

    /// The next batch, oldest first, within the caps; empty (and the flush over) when
    /// nothing waits. Items whose callers gave up are dropped unsent. When no other batch
    /// is in flight and many items wait, the batch takes the older half and a second flush
    /// (`true`) sends the rest at once: Redis then works on one batch while this node
    /// reads the replies of the other, instead of each side waiting for the other.
    fn take(&self) -> (Vec<Item<W>>, bool) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.items.retain(|item| !item.reply.is_closed());
        let split = queue.sending == 0
            && queue.flushers < MAX_IN_FLIGHT
            && queue.items.len() >= 2 * SPLIT_FROM;
        let most = if split {
            queue.items.len().div_ceil(2)
        } else {
            MAX_ITEMS
        };
        let (mut count, mut args, mut bytes) = (0, 0, 0);
        for item in &queue.items {
            let (a, b) = (item.work.args(), item.work.bytes());
            if count > 0
                && (count == most.min(MAX_ITEMS) || args + a > MAX_ARGS || bytes + b > MAX_BYTES)
            {
                break;
            }
            count += 1;
            args += a;
            bytes += b;
        }
        if count == 0 {
            queue.flushers -= 1;
            return (Vec::new(), false);
        }
        queue.sending += 1;
        let rest = queue.items.split_off(count);
        let another = split && !rest.is_empty();
        if another {
            queue.flushers += 1;
        }
        (std::mem::replace(&mut queue.items, rest), another)
    }

    async fn send(&self, batch: Vec<Item<W>>) {
        let command = W::command(&batch.iter().map(|item| &item.work).collect::<Vec<_>>());
        let first_key = batch.first().map_or("", |item| item.work.first_key());
        W::count(&self.counters, batch.len());
        let call = tokio::time::timeout(
            self.timeout,
            self.connection
                .run_batch(self.index, &command, W::script(), first_key),
        );
        match call.await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(Value::Array(replies)) if replies.len() == batch.len() => {
                self.breaker.success();
                for (item, reply) in batch.into_iter().zip(replies) {
                    // An item's error reply is that decision's error, as if sent alone.
                    let reply = match reply {
                        Value::ServerError(error) => Err(error.into()),
                        reply => Ok(reply),
                    };
                    let _ = item.reply.send(reply);
                }
            }
            Ok(_) => {
                // Not the batch script's reply: every item reads it as an invalid reply.
                self.breaker.success();
                for item in batch {
                    let _ = item.reply.send(Ok(Value::Nil));
                }
            }
            Err(error) => {
                if unavailable(&error) {
                    self.breaker.failure();
                } else {
                    self.breaker.success();
                }
                for item in batch {
                    let _ = item.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// `EVALSHA` of the batch script for `batch`: the keys of each (policy, key) once, each
/// distinct limit set once, then two integers per decision, in order.
fn command(batch: &[&Decide]) -> redis::Cmd {
    // (first key, limits) → 1-based index of its first key in KEYS.
    let mut key_index: HashMap<(&str, usize), usize> = HashMap::with_capacity(batch.len());
    let mut keys: Vec<&str> = Vec::with_capacity(batch.len());
    let mut set_index: HashMap<&[(i64, i64)], usize> = HashMap::new();
    let mut sets: Vec<&[(i64, i64)]> = Vec::new();
    let mut words: Vec<(i64, i64, Option<i64>)> = Vec::with_capacity(batch.len());
    for item in batch {
        let first = item.keys.first().map_or("", String::as_str);
        let k = *key_index
            .entry((first, item.keys.len()))
            .or_insert_with(|| {
                keys.extend(item.keys.iter().map(String::as_str));
                keys.len() + 1 - item.keys.len()
            });
        let s = *set_index.entry(&item.limits[..]).or_insert_with(|| {
            sets.push(&item.limits[..]);
            sets.len()
        });
        // op is 1 to 3 and cost below 2^32: exact in a Lua number.
        words.push((
            item.op[0] + 4 * item.op[1],
            1024 * i64::try_from(k).unwrap_or(i64::MAX) + i64::try_from(s).unwrap_or(0),
            item.least,
        ));
    }
    let args =
        4 + keys.len() + sets.iter().map(|set| 1 + 2 * set.len()).sum::<usize>() + 2 * words.len();
    let bytes = 64 + keys.iter().map(|k| k.len() + 16).sum::<usize>() + 24 * args;
    let mut command = redis::Cmd::with_capacity(args, bytes);
    command
        .arg("EVALSHA")
        .arg(BATCH.sha())
        .arg(keys.len())
        .arg(&keys[..]);
    // One batch, one time: the latest any decision in it asked for (all the same, -1, on
    // Redis's clock).
    let now = batch.iter().map(|item| item.now).max().unwrap_or(-1);
    command.arg(now).arg(sets.len());
    for set in &sets {
        command.arg(set.len());
        for &(interval, burst) in *set {
            command.arg(interval).arg(burst);
        }
    }
    for (op, at, least) in words {
        command.arg(op).arg(at);
        if let Some(least) = least {
            command.arg(least);
        }
    }
    command
}

/// Sends `work` alone as a batch of one on `connection` (with batching off), and returns
/// its reply.
pub(crate) async fn send_alone<W: Work>(connection: &Connection, work: &W) -> Reply {
    let command = W::command(&[work]);
    match connection
        .script(W::script(), &command, work.first_key())
        .await?
    {
        Value::Array(mut replies) if replies.len() == 1 => match replies.remove(0) {
            Value::ServerError(error) => Err(error.into()),
            reply => Ok(reply),
        },
        _ => Ok(Value::Nil),
    }
}

/// The Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag — the text between the
/// first `{` and the next `}`, when not empty — or of the whole key, modulo 16 384.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16_384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Why an item's reply never came: its batch was dropped with the runtime.
pub(crate) fn dropped() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the batch carrying this request was dropped before its reply arrived",
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_are_redis_clusters() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(super::slot("foo"), 12182);
        assert_eq!(super::slot("123456789"), 12739);
        assert_eq!(super::slot("{user1000}.following"), super::slot("user1000"));
        assert_eq!(
            super::slot("fg1{Qk3v0F9aZx2mT1}0"),
            super::slot("Qk3v0F9aZx2mT1")
        );
    }
}
