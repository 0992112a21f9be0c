//! The response and request bodies of a passthrough exchange: counted for the metrics, kept
//! in the open-exchange gauge while they stream, and cut when their lease ends.
//!
//! Owns: these body wrappers. Must not: know the host or the daemon.

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::leases::Lease;
use crate::metrics::{Metrics, OpenPassthrough};

/// A body wrapper that counts its data bytes in the passthrough metrics (`up`: from the
/// client to the daemon).
pub(super) struct Counted<B> {
    pub(super) inner: B,
    pub(super) metrics: Arc<Metrics>,
    pub(super) up: bool,
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                this.metrics.passthrough_bytes(this.up, d.len() as u64);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Completes when `lease` ends; never without one.
pub(super) async fn until_ended(lease: Option<&Lease>) -> String {
    match lease {
        Some(l) => l.ended().await,
        None => std::future::pending().await,
    }
}

/// `body`, cut when `lease` ends.
pub(super) fn leased(body: Body, lease: Option<Lease>) -> Body {
    match lease {
        Some(lease) => Body::new(LeasedBody {
            inner: body,
            ended: lease.ended_boxed(),
            _lease: lease,
            cut: false,
        }),
        None => body,
    }
}

/// A response body that fails (hyper then aborts the connection) once its lease ends: the
/// client of a followed stream sees its connection cut.
struct LeasedBody {
    inner: Body,
    ended: Pin<Box<dyn std::future::Future<Output = String> + Send>>,
    _lease: Lease,
    cut: bool,
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        if let Poll::Ready(reason) = self.ended.as_mut().poll(cx) {
            self.cut = true;
            tracing::info!(%reason, "streamed response cut: its lease ended");
            return Poll::Ready(Some(Err(axum::Error::new(std::io::Error::other(reason)))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps the open-exchange gauge up while a response body streams.
pub(super) struct OpenGuardBody<B> {
    pub(super) inner: B,
    pub(super) _open: OpenPassthrough,
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for OpenGuardBody<B> {
    type Data = Bytes;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
