//! The response body of [`RateLimit`](crate::RateLimit): the inner service's body, or the
//! few bytes of a rejection floodgate writes itself. Any inner body with `Bytes` data works
//! (axum's, hyper's, tonic's), so the layer needs nothing from it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pin_project_lite::pin_project! {
    /// The inner service's body, or floodgate's own; it may hold a concurrency permit,
    /// released when the body ends (or is dropped).
    #[derive(Debug)]
    pub struct LimitBody<B> {
        #[pin]
        kind: Kind<B>,
        hold: Option<Hold>,
    }
}

/// What a body keeps alive until it ends: a [`ConcurrencyLimit`](crate::ConcurrencyLimit)'s
/// permit.
pub(crate) struct Hold(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Hold {
    pub(crate) fn new(held: impl Send + Sync + 'static) -> Self {
        Hold(Box::new(held))
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Own { bytes: Option<Bytes> },
    }
}

impl<B> LimitBody<B> {
    /// The inner service's body, passed through.
    pub fn inner(body: B) -> Self {
        LimitBody {
            kind: Kind::Inner { body },
            hold: None,
        }
    }

    /// The same body, keeping `hold` until its last frame has been read or it is dropped.
    pub(crate) fn holding(mut self, hold: Hold) -> Self {
        self.hold = Some(hold);
        self
    }

    /// A body floodgate writes (a rejection).
    pub fn own(bytes: Bytes) -> Self {
        LimitBody {
            kind: Kind::Own {
                bytes: Some(bytes).filter(|b| !b.is_empty()),
            },
            hold: None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for LimitBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = match this.kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Own { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        // The body has ended (or failed): what it held is released now, not when the
        // server gets round to dropping it.
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.hold.take();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
