//! Both accept loops, hardened for the open network. One [`accept`] sets `TCP_NODELAY` on
//! every connection (Nagle's algorithm meeting delayed ACKs stalls small answers ~40 ms).
//! Each listener bounds its concurrent connections (accepting pauses at the bound, so new
//! connections wait in the kernel's backlog), backs off when `accept` fails (out of file
//! descriptors), closes connections that never finish their handshake or sit idle, and on
//! shutdown drains for at most a grace period before cutting what is left.
//!
//! - **HTTP/1.1**: hyper's header read timeout covers the first request head (a silent or
//!   slowloris client) and the wait between keep-alive requests.
//! - **gRPC (HTTP/2)**: the client preface and its first `SETTINGS` frame must arrive within
//!   the handshake timeout — HTTP/2 keepalive pings only cover connections past that point —
//!   and a connection with no open stream for the idle timeout is closed with a `GOAWAY`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower_service::Service;

use crate::metrics::{Closed, Listener, Metrics};

/// Limits of the HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; at the bound, new connections wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also between keep-alive requests).
    pub header_timeout: Duration,
    /// Time a client has to send a request's body.
    pub body_timeout: Duration,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// The most headers a request may have.
    pub max_headers: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// Limits of the gRPC listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Connections served at once; at the bound, new connections wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send the HTTP/2 preface and its first `SETTINGS` frame.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed (with a `GOAWAY`).
    pub idle_timeout: Duration,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_connections: 10_000,
            handshake_timeout: HttpLimits::default().header_timeout,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The default `server.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Accepts one connection and sets `TCP_NODELAY` on it: every listener accepts through here.
pub(crate) async fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok((stream, peer))
}

/// Why a connection's task ended, when the server ended it.
type Outcome = Option<Closed>;

/// One listener's accept loop: at most `max_connections` tasks of `serve`, accept errors
/// counted and backed off, and on `stopped` a drain of at most `grace` before the rest are
/// cut.
async fn run<F, Fut>(
    listener: TcpListener,
    which: Listener,
    max_connections: usize,
    grace: Duration,
    metrics: Arc<Metrics>,
    mut stopped: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let reap = |outcome: Result<Outcome, tokio::task::JoinError>| {
        if let Ok(Some(reason)) = outcome {
            metrics.closed(which, reason);
        }
    };
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            Some(done) = tasks.join_next() => { reap(done); continue; }
            () = crate::until_stopped(&mut stopped) => break,
        };
        let stream = loop {
            tokio::select! {
                accepted = accept(&listener) => match accepted {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        break Some(stream);
                    }
                    Err(e) if is_per_connection(&e) => {
                        tracing::debug!(listener = which.label(), error = %e, "connection lost while accepting");
                    }
                    Err(e) => {
                        metrics.accept_error(which);
                        let pause = backoff.failed(which, &e);
                        tokio::select! {
                            () = tokio::time::sleep(pause) => {}
                            () = crate::until_stopped(&mut stopped) => break None,
                        }
                    }
                },
                Some(done) = tasks.join_next() => reap(done),
                () = crate::until_stopped(&mut stopped) => break None,
            }
        };
        let Some(stream) = stream else {
            break;
        };
        let connection = serve(stream, stopped.clone());
        tasks.spawn(async move {
            let outcome = connection.await;
            drop(permit);
            outcome
        });
    }
    drop(listener);
    let open = tasks.len();
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            reap(done);
        }
    })
    .await;
    let cut = tasks.len();
    if drained.is_err() {
        tasks.shutdown().await;
        for _ in 0..cut {
            metrics.closed(which, Closed::Shutdown);
        }
    }
    if open > 0 {
        tracing::info!(
            listener = which.label(),
            open,
            cut,
            grace = %humantime::format_duration(grace),
            "listener stopped: {} connection(s) drained, {cut} cut at the end of the grace period",
            open - cut
        );
    }
}

/// Errors of one incoming connection (it was reset before we took it): retry at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::NotConnected
    )
}

/// Exponential backoff after failed accepts (10 ms doubling to 1 s), with one log line per
/// 10 s at most, so a server out of file descriptors neither spins nor floods its log.
#[derive(Default)]
struct AcceptBackoff {
    pause: Duration,
    logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);
    const LOG_EVERY: Duration = Duration::from_secs(10);

    fn failed(&mut self, which: Listener, error: &io::Error) -> Duration {
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::MAX);
        let now = Instant::now();
        if self.logged.is_none_or(|at| now - at >= Self::LOG_EVERY) {
            tracing::warn!(
                listener = which.label(),
                error = %error,
                suppressed = self.suppressed,
                "accept failed; backing off (more file descriptors: raise `ulimit -n`, or lower server.max_connections / server.grpc_max_connections)"
            );
            self.logged = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.pause
    }

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }
}

/// Per-connection bookkeeping: requests served and, where idle connections are closed
/// (gRPC), requests in flight and when the last one started or ended.
struct Activity {
    opened: Instant,
    /// Whether `in_flight` and `last_ms` are kept (they cost a clock read per request).
    tracks_idle: bool,
    in_flight: AtomicU32,
    served: AtomicU64,
    /// Milliseconds after `opened` of the last start or end of a request.
    last_ms: AtomicU64,
}

impl Activity {
    fn new(tracks_idle: bool) -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            tracks_idle,
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a request as started; the guard marks it ended.
    fn start(self: &Arc<Self>) -> Option<InFlight> {
        self.served.fetch_add(1, Ordering::Relaxed);
        if !self.tracks_idle {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Some(InFlight(self.clone()))
    }

    /// When the connection becomes idle for `idle` if nothing happens meanwhile; `None`
    /// while a request is in flight.
    fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened + last + idle)
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `service` as one connection's hyper service, each request counted in `activity` from its
/// start until its response is ready.
fn tracked<S, B>(
    activity: Arc<Activity>,
    service: S,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<B>,
    Error = S::Error,
    Future = impl Future<Output = Result<http::Response<B>, S::Error>> + Send + 'static,
>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body,
{
    hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let in_flight = activity.start();
        let mut service = service.clone();
        async move {
            let response = service.call(request).await;
            drop(in_flight);
            response
        }
    })
}

/// Serves the HTTP JSON API until `stopped`, then drains for at most `grace`.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    grace: Duration,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) + 64 * 1024)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let serve = move |stream: TcpStream, mut stopped: watch::Receiver<bool>| {
        let builder = builder.clone();
        let app = app.clone();
        async move {
            let activity = Activity::new(false);
            let service = tracked(activity.clone(), app);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            tokio::select! {
                result = connection.as_mut() => match result {
                    // hyper's header timeout: the first request head, or the next one.
                    Err(e) if e.is_timeout() => Some(if activity.served.load(Ordering::Relaxed) == 0 {
                        Closed::HandshakeTimeout
                    } else {
                        Closed::Idle
                    }),
                    _ => None,
                },
                () = crate::until_stopped(&mut stopped) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                    Some(Closed::Shutdown)
                }
            }
        }
    };
    run(
        listener,
        Listener::Http,
        limits.max_connections,
        grace,
        metrics,
        stopped,
        serve,
    )
    .await;
}

/// Serves the Envoy RLS gRPC API (`routes`) until `stopped`, then drains for at most `grace`.
pub(crate) async fn serve_grpc(
    listener: TcpListener,
    routes: tonic::service::Routes,
    limits: GrpcLimits,
    grace: Duration,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(1_024);
    let builder = Arc::new(builder);
    let serve = move |mut stream: TcpStream, mut stopped: watch::Receiver<bool>| {
        let builder = builder.clone();
        let routes = routes.clone();
        async move {
            let handshake = tokio::select! {
                read = tokio::time::timeout(limits.handshake_timeout, read_handshake(&mut stream)) => match read {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some(Closed::HandshakeTimeout),
                },
                () = crate::until_stopped(&mut stopped) => return Some(Closed::Shutdown),
            };
            let activity = Activity::new(true);
            let service = tracked(activity.clone(), routes);
            let io = TokioIo::new(Replay::new(handshake, stream));
            let connection = builder.serve_connection(io, service);
            let mut connection = pin!(connection);
            loop {
                let idle_at = activity.idle_at(limits.idle_timeout);
                // While a stream is open, look again after one idle period.
                let wake = idle_at.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
                tokio::select! {
                    _ = connection.as_mut() => return None,
                    () = tokio::time::sleep_until(wake) => {
                        if activity.idle_at(limits.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                            // GOAWAY, then a PING round trip before the close: bounded, for
                            // a peer that never answers.
                            connection.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(GOAWAY_GRACE, connection).await;
                            return Some(Closed::Idle);
                        }
                    }
                    () = crate::until_stopped(&mut stopped) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                        return Some(Closed::Shutdown);
                    }
                }
            }
        }
    };
    run(
        listener,
        Listener::Grpc,
        limits.max_connections,
        grace,
        metrics,
        stopped,
        serve,
    )
    .await;
}

/// How long an idle connection told to go away may take to close by itself.
const GOAWAY_GRACE: Duration = Duration::from_secs(10);

/// The HTTP/2 client preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest first `SETTINGS` payload waited for (a frame larger than the default maximum
/// frame size is passed on for hyper to refuse).
const MAX_SETTINGS: usize = 16 * 1024;
const SETTINGS: u8 = 0x4;

/// Reads the client preface and the first frame when it is `SETTINGS`; returns the bytes read,
/// to be replayed to hyper. Stops early (and returns what it read) at anything else, which
/// hyper then refuses as a protocol error.
async fn read_handshake(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; PREFACE.len() + 9];
    let mut got = 0;
    while got < PREFACE.len() {
        let n = stream.read(&mut bytes[got..PREFACE.len()]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if bytes[got..got + n] != PREFACE[got..got + n] {
            bytes.truncate(got + n);
            return Ok(bytes);
        }
        got += n;
    }
    stream.read_exact(&mut bytes[got..]).await?;
    let header = &bytes[got..];
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || length > MAX_SETTINGS {
        return Ok(bytes);
    }
    let start = bytes.len();
    bytes.resize(start + length, 0);
    stream.read_exact(&mut bytes[start..]).await?;
    Ok(bytes)
}

/// A stream that first replays bytes already read from it.
struct Replay {
    head: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl Replay {
    fn new(head: Vec<u8>, stream: TcpStream) -> Replay {
        Replay {
            head,
            at: 0,
            stream,
        }
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The file-descriptor budget: raises the soft `RLIMIT_NOFILE` to the hard limit and returns
/// the limit now in force (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = raised,
            Err(e) => tracing::warn!(error = %e, "cannot raise the file-descriptor limit"),
        }
    }
    limit.current
}

/// File descriptors kept aside for everything but client connections (store connections,
/// config files, the runtime).
const FD_RESERVE: u64 = 64;

/// Warns when both listeners' connection bounds together exceed what the file-descriptor
/// limit allows.
pub(crate) fn check_fd_budget(http: usize, grpc: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let wanted = http as u64 + grpc as u64 + FD_RESERVE;
    if let Some(limit) = limit
        && wanted > limit
    {
        tracing::warn!(
            limit,
            http_max_connections = http,
            grpc_max_connections = grpc,
            "server.max_connections + server.grpc_max_connections (+{FD_RESERVE} for the server itself) exceed the file-descriptor limit: \
             past it, accepting fails and backs off; raise `ulimit -n` or lower the bounds"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_set() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (stream, _) = accept(&listener).await.unwrap();
        assert!(stream.nodelay().unwrap());
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn the_handshake_is_replayed_byte_for_byte() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut sent = PREFACE.to_vec();
        // SETTINGS with one setting (6 bytes), then a PING frame.
        sent.extend_from_slice(&[0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        sent.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        let expected = sent.clone();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            // In pieces, as a slow client sends it.
            for piece in sent.chunks(5) {
                tokio::io::AsyncWriteExt::write_all(&mut stream, piece)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            stream
        });
        let (mut stream, _) = accept(&listener).await.unwrap();
        let head = read_handshake(&mut stream).await.unwrap();
        assert_eq!(head.len(), PREFACE.len() + 9 + 6);
        let mut replay = Replay::new(head, stream);
        let mut all = vec![0; expected.len()];
        replay.read_exact(&mut all).await.unwrap();
        assert_eq!(all, expected);
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn a_wrong_preface_is_handed_on_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\n")
                .await
                .unwrap();
            stream
        });
        let (mut stream, _) = accept(&listener).await.unwrap();
        let head = read_handshake(&mut stream).await.unwrap();
        assert!(head.len() <= 16 && !head.is_empty(), "{head:?}");
        drop(client.await.unwrap());
    }
}
