//! tokio: `tokio::net::TcpStream` and `tokio::time`, spawned with `tokio::spawn`.

use std::any::Any;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

use super::{read_through_scratch, BoxFuture, BoxedIo, Runtime};

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

    /// A plain TCP link (the `BoxedIo` that [`TokioRuntime::connect`] made) is read with
    /// tokio's `try_read_buf`, straight into `buf`'s spare capacity: no copy. Anything else
    /// (TLS over it) takes the default path.
    ///
    /// A read that leaves spare capacity unfilled has drained the socket (epoll reports
    /// edges), so the socket's readiness is cleared then, as tokio's own `poll_read` does:
    /// the caller's next read returns `Pending` without asking the kernel, instead of
    /// spending a `recv` on `EAGAIN` after every burst.
    fn poll_read_buf(
        &self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        scratch: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let any: &mut dyn Any = &mut **io;
        let Some(stream) = any.downcast_mut::<Compat<TcpStream>>() else {
            return read_through_scratch(io, cx, buf, scratch);
        };
        let stream = stream.get_mut();
        // The driver makes room before each read (in a block it reuses); a caller that did
        // not gets a scratch buffer's worth.
        if buf.capacity() == buf.len() {
            buf.reserve(scratch.len().max(1));
        }
        loop {
            let room = buf.capacity() - buf.len();
            let mut read = None;
            // `try_io` clears the readiness it saw when the closure says `WouldBlock`: a
            // short read says so after keeping its count in `read`.
            let r = stream.try_io(Interest::READABLE, || {
                let n = stream.try_read_buf(buf)?;
                read = Some(n);
                if n > 0 && n < room {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (r, read) {
                (_, Some(n)) => return Poll::Ready(Ok(n)),
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Not ready: wait for readiness (this registers the waker), then retry.
                    ready!(stream.poll_read_ready(cx))?;
                }
                (r, None) => return Poll::Ready(r),
            }
        }
    }

    /// A plain TCP link writes every slice with one `writev` (tokio-util's `Compat` forwards
    /// `poll_write` only, so `io`'s own vectored write would send the first slice alone).
    fn poll_write_vectored(
        &self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let any: &mut dyn Any = &mut **io;
        match any.downcast_mut::<Compat<TcpStream>>() {
            Some(stream) => {
                tokio::io::AsyncWrite::poll_write_vectored(Pin::new(stream.get_mut()), cx, bufs)
            }
            None => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A plain TCP link is read straight into the buffer: with no scratch space at all (the
    /// default path would read nothing and report the end of the stream), every byte written
    /// arrives, in order, and the end of the stream is `Ok(0)`.
    #[tokio::test]
    async fn tcp_links_are_read_into_the_buffer_directly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rt = TokioRuntime;
        let (io, accepted) = tokio::join!(rt.connect("127.0.0.1".into(), port), listener.accept());
        let (mut io, (mut peer, _)) = (io.unwrap(), accepted.unwrap());
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                peer.write_all(&sent).await.unwrap();
                peer.shutdown().await.unwrap();
            })
        };
        let mut buf = BytesMut::new();
        // Bounded: a lost wake-up would wait for good; 60 s is far beyond any loopback
        // delivery, so this only turns a hang into a failure.
        let read_all = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let n = std::future::poll_fn(|cx| rt.poll_read_buf(&mut io, cx, &mut buf, &mut []))
                    .await
                    .unwrap();
                if n == 0 {
                    break;
                }
                assert!(buf.len() <= sent.len());
            }
        })
        .await;
        assert!(
            read_all.is_ok(),
            "the stream never ended: a wake-up was lost"
        );
        writer.await.unwrap();
        assert_eq!(buf.len(), sent.len());
        assert!(buf[..] == sent[..], "the bytes in order");
    }

    /// A pair of connected links: ours (through the runtime) and the peer's plain stream.
    async fn pair(rt: &TokioRuntime) -> (BoxedIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (io, accepted) = tokio::join!(rt.connect("127.0.0.1".into(), port), listener.accept());
        (io.unwrap(), accepted.unwrap().0)
    }

    /// Short reads clear the socket's readiness: every later arrival must still wake the
    /// reader. Small pieces, each written only after the previous one was read whole (so
    /// that every read is short), all arrive in order.
    #[tokio::test]
    async fn every_piece_arrives_after_short_reads() {
        let rt = TokioRuntime;
        let (mut io, mut peer) = pair(&rt).await;
        let mut scratch = vec![0u8; 64 << 10];
        let mut buf = BytesMut::new();
        for k in 0..2_000u32 {
            let piece: Vec<u8> = (0..100u32).map(|i| (k * 7 + i) as u8).collect();
            peer.write_all(&piece).await.unwrap();
            // Bounded: a lost wake-up would wait here for good; 60 s is far beyond any
            // loopback delivery, so this only turns a hang into a failure.
            let read = tokio::time::timeout(Duration::from_secs(60), async {
                while buf.len() < piece.len() {
                    let n = std::future::poll_fn(|cx| {
                        rt.poll_read_buf(&mut io, cx, &mut buf, &mut scratch)
                    })
                    .await
                    .unwrap();
                    assert!(n > 0, "the peer did not close");
                }
            })
            .await;
            assert!(read.is_ok(), "piece {k} never arrived");
            assert_eq!(buf.split().as_ref(), &piece[..], "piece {k}");
        }
    }

    /// A plain TCP link writes all the slices at once (tokio-util's `Compat` alone would
    /// write the first one only), in order.
    #[tokio::test]
    async fn vectored_writes_send_every_slice() {
        let rt = TokioRuntime;
        let (mut io, mut peer) = pair(&rt).await;
        let parts: [&[u8]; 3] = [b"first,", b"second,", b"third"];
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let n = std::future::poll_fn(|cx| rt.poll_write_vectored(&mut io, cx, &slices))
            .await
            .unwrap();
        assert_eq!(n, parts.iter().map(|p| p.len()).sum::<usize>());
        let mut got = vec![0u8; n];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .unwrap();
        assert_eq!(&got[..], b"first,second,third");
    }
}
