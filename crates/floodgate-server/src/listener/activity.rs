//! Per-connection request bookkeeping, shared by both listeners: requests served, and where
//! idle connections are closed (gRPC), requests in flight and when the last one started or
//! ended.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::time::Instant;
use tower_service::Service;

/// Per-connection bookkeeping: requests served and, where idle connections are closed
/// (gRPC), requests in flight and when the last one started or ended.
pub(super) struct Activity {
    opened: Instant,
    /// Whether `in_flight` and `last_ms` are kept (they cost a clock read per request).
    tracks_idle: bool,
    in_flight: AtomicU32,
    served: AtomicU64,
    /// Milliseconds after `opened` of the last start or end of a request.
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new(tracks_idle: bool) -> Arc<Activity> {
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

    /// Requests served so far.
    pub(super) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// When the connection becomes idle for `idle` if nothing happens meanwhile; `None`
    /// while a request is in flight.
    pub(super) fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened + last + idle)
    }
}

pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `service` as one connection's hyper service, each request counted in `activity` from its
/// start until its response is ready.
pub(super) fn tracked<S, B>(
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
