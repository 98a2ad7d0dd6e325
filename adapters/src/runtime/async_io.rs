//! async-io + async-net: runs under async-std, smol, or any executor (async-io drives its own
//! reactor), so the same code serves all of them.

use std::io;
use std::time::Instant;

use super::{BoxFuture, BoxedIo, Runtime};

/// The runtime built on `async-io` timers and `async-net` sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsyncIoRuntime;

impl Runtime for AsyncIoRuntime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            async_io::Timer::at(deadline).await;
        })
    }

    fn connect(&self, host: String, port: u16) -> BoxFuture<io::Result<BoxedIo>> {
        Box::pin(async move {
            let stream = async_net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedIo)
        })
    }
}
