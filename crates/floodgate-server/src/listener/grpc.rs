//! The gRPC listener: the HTTP/2 handshake read under a deadline before hyper sees the
//! connection (then replayed to it), and idle connections closed with a `GOAWAY`.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::activity::{Activity, tracked};
use super::{GrpcLimits, run};
use crate::metrics::{Closed, Listener, Metrics};

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

#[cfg(test)]
mod tests {
    use super::super::accept;
    use super::*;

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
