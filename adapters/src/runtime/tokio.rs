//! tokio: `tokio::net::TcpStream` and `tokio::time`, spawned with `tokio::spawn`.

use std::io;
use std::time::Instant;

use tokio_util::compat::TokioAsyncReadCompatExt;

use super::{BoxFuture, BoxedIo, Runtime};

/// The tokio runtime (needs a tokio reactor with time and net enabled).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxedIo>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream.compat()) as BoxedIo)
        })
    }
}
