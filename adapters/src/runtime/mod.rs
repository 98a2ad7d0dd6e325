//! The little a runtime must provide: a clock, a timer and TCP connections.
//!
//! The driver loop, the handle and the fan-out are written once against [`Runtime`]; each
//! runtime module implements it in a few dozen lines. To run roomcast on an executor of your
//! own, pass any `Runtime` to [`crate::Builder::build`] and poll the returned
//! [`crate::Driver`] yourself.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Instant;

use futures_io::{AsyncRead, AsyncWrite};

#[cfg(feature = "async-io-runtime")]
pub mod async_io;
#[cfg(feature = "tokio")]
pub mod tokio;

/// A byte stream to Redis (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
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
}
