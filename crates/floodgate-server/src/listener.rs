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
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::{Closed, Listener, Metrics};

mod activity;
mod fd;
mod grpc;

use activity::{Activity, tracked};
pub(crate) use fd::check_fd_budget;
pub use fd::raise_fd_limit;
pub(crate) use grpc::serve_grpc;

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
pub(super) type Outcome = Option<Closed>;

/// One listener's accept loop: at most `max_connections` tasks of `serve`, accept errors
/// counted and backed off, and on `stopped` a drain of at most `grace` before the rest are
/// cut.
pub(super) async fn run<F, Fut>(
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
                    Err(e) if e.is_timeout() => Some(if activity.served() == 0 {
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
}
