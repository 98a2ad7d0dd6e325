//! The little a runtime must provide: a clock, a timer and TCP connections.
//!
//! The driver loop, the handle and the fan-out are written once against [`Runtime`]; each
//! runtime module implements it in a few dozen lines. To run roomcast on an executor of your
//! own, pass any `Runtime` to [`crate::Builder::build`] and poll the returned
//! [`crate::Driver`] yourself.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

#[cfg(feature = "async-io-runtime")]
pub mod async_io;
#[cfg(feature = "tokio")]
pub mod tokio;

/// A byte stream to Redis (TCP, or TLS over TCP). It is `Any`, so that a runtime can find
/// its own socket type behind a [`BoxedIo`] (see [`Runtime::poll_read_buf`]).
pub trait Io: AsyncRead + AsyncWrite + Any + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed [`Io`].
pub type BoxedIo = Box<dyn Io>;

/// A boxed `Send` future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Clock, timer and connect for one async runtime.
pub trait Runtime: Send + Sync + fmt::Debug + 'static {
    /// The runtime's idea of now (so that paused-time tests work).
    fn now(&self) -> Instant;
    /// A future that completes at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;
    /// Opens a TCP connection (with `TCP_NODELAY`) to `host:port`.
    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxedIo>>;

    /// Reads what `io` has into `buf`, appending, as [`AsyncRead::poll_read`] does (`Ok(0)`
    /// is the end of the stream). The default reads into `scratch` through `AsyncRead`
    /// (which needs an initialised slice) and copies that into `buf`; a runtime whose
    /// sockets can read into a `BytesMut`'s spare capacity directly, safely, overrides it
    /// for its own socket type and calls [`read_through_scratch`] for the others (TLS).
    fn poll_read_buf(
        &self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        scratch: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        read_through_scratch(io, cx, buf, scratch)
    }

    /// Writes from `bufs`, in order, as [`AsyncWrite::poll_write_vectored`] does (the driver
    /// hands a link's queued chunks over at once). The default is `io`'s own
    /// `poll_write_vectored`; a runtime whose socket type writes vectored where `io`'s
    /// `AsyncWrite` would not (a compatibility wrapper that forwards only `poll_write`)
    /// overrides it for that type.
    fn poll_write_vectored(
        &self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **io).poll_write_vectored(cx, bufs)
    }
}

/// [`Runtime::poll_read_buf`]'s default: a read into `scratch`, copied into `buf`. It reads
/// no more than `buf` has room for (so the copy never moves `buf` to a new allocation), or
/// all of `scratch` if `buf` has no room at all.
pub fn read_through_scratch(
    io: &mut BoxedIo,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    scratch: &mut [u8],
) -> Poll<io::Result<usize>> {
    let room = match buf.capacity() - buf.len() {
        0 => scratch.len(),
        n => n.min(scratch.len()),
    };
    let r = Pin::new(&mut **io).poll_read(cx, &mut scratch[..room]);
    if let Poll::Ready(Ok(n)) = r {
        buf.extend_from_slice(&scratch[..n]);
    }
    r
}
