//! Link I/O: opening links (TCP, TLS), reading into the core, writing its output, the timer,
//! and draining the core's outputs after each step.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_io::AsyncWrite;
use roomcast_core::{BlockPool, Event, LinkId, LinkRequest};
use tracing::debug;

use crate::runtime::{BoxFuture, BoxedIo};
use crate::Options;

use super::{LinkIo, State, READ_BLOCKS_KEPT, READ_BUDGET, READ_CHUNK, WRITE_SLICES};

impl State {
    /// Polls link `i`: a connection under way, or the open link's reads into the core (each
    /// followed by a drain) until the socket is pending, a budget runs out or the link goes.
    pub(super) fn poll_link(&mut self, i: usize, cx: &mut Context<'_>) {
        let link = LinkId(i as u16);
        match &mut self.links[i] {
            LinkIo::Idle => {}
            LinkIo::Connecting(fut) => match fut.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready(result) => {
                    let now = self.now();
                    match result {
                        Ok(io) => {
                            let mut blocks = BlockPool::new(READ_BLOCKS_KEPT);
                            self.links[i] = LinkIo::Open {
                                io,
                                rbuf: blocks.next_block(READ_CHUNK),
                                blocks,
                                wq: VecDeque::new(),
                                wq_bytes: 0,
                            };
                            self.hub.handle_connected(link, now);
                        }
                        Err(e) => {
                            self.links[i] = LinkIo::Idle;
                            self.hub.handle_disconnected(link, &e.to_string(), now);
                        }
                    }
                    // The open link has not been read yet (no waker registered for it).
                    self.again = true;
                }
            },
            LinkIo::Open { .. } => {
                for _ in 0..READ_BUDGET {
                    let now = self.now();
                    let LinkIo::Open {
                        io, rbuf, blocks, ..
                    } = &mut self.links[i]
                    else {
                        // Closed by what the last read made the core do.
                        return;
                    };
                    Self::read_room(rbuf, blocks);
                    // Straight into `rbuf` where the runtime can, through `scratch` elsewhere.
                    let read = self.rt.poll_read_buf(io, cx, rbuf, &mut self.scratch);
                    match read {
                        Poll::Pending => return,
                        Poll::Ready(Ok(0)) => {
                            self.closed_by_peer(i, "connection closed by the server".into());
                            return;
                        }
                        Poll::Ready(Ok(_)) => {
                            self.hub.handle_input(link, rbuf, now);
                            // Events and link requests (a Close) are handled before reading on.
                            self.drain();
                        }
                        Poll::Ready(Err(e)) => {
                            self.closed_by_peer(i, e.to_string());
                            return;
                        }
                    }
                }
                // The budget ran out with input maybe left unread: no waker will say so.
                self.again = true;
            }
        }
    }

    /// Makes room in `rbuf` for a read: once less than a quarter of [`READ_CHUNK`] is left,
    /// the partial frame it holds moves to the front of a new block, a free one of the
    /// link's where there is one. The messages read before keep the old block until they are
    /// dropped; reusing it then keeps reads going to the same few warm blocks, where
    /// growing `rbuf` would allocate fresh memory every block (`BytesMut` can take its
    /// block back only while nothing else refers to it). A frame longer than a block
    /// grows the next one geometrically, so a large frame is copied a bounded number of
    /// times.
    fn read_room(rbuf: &mut BytesMut, blocks: &mut BlockPool) {
        if rbuf.capacity() - rbuf.len() >= READ_CHUNK / 4 {
            return;
        }
        let mut next = blocks.next_block(READ_CHUNK.max(rbuf.len().saturating_mul(2)));
        next.extend_from_slice(rbuf);
        *rbuf = next;
    }

    pub(super) fn closed_by_peer(&mut self, i: usize, cause: String) {
        self.links[i] = LinkIo::Idle;
        self.again = true;
        let now = self.now();
        self.hub.handle_disconnected(LinkId(i as u16), &cause, now);
    }

    /// Writes the link's queued output, as many chunks per call as [`WRITE_SLICES`] allows
    /// (one `writev` instead of a `send` per chunk where the stream supports it; a stream
    /// that does not writes the first chunk, as before).
    pub(super) fn poll_write(&mut self, i: usize, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let link = LinkId(i as u16);
        loop {
            let LinkIo::Open {
                io, wq, wq_bytes, ..
            } = &mut self.links[i]
            else {
                return progress;
            };
            if wq.is_empty() {
                if progress {
                    let _ = Pin::new(io).poll_flush(cx);
                }
                return progress;
            }
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut k = 0;
            for (slot, chunk) in slices.iter_mut().zip(wq.iter()) {
                *slot = IoSlice::new(chunk);
                k += 1;
            }
            match self.rt.poll_write_vectored(io, cx, &slices[..k]) {
                Poll::Pending => return progress,
                Poll::Ready(Ok(0)) => {
                    self.closed_by_peer(i, "connection closed while writing".into());
                    return true;
                }
                Poll::Ready(Ok(n)) => {
                    progress = true;
                    let n = n.min(*wq_bytes);
                    let mut left = n;
                    while let Some(front) = wq.front_mut() {
                        if left < front.len() {
                            let _ = front.split_to(left);
                            break;
                        }
                        left -= front.len();
                        wq.pop_front();
                    }
                    *wq_bytes -= n;
                    let now = self.now();
                    self.hub.handle_written(link, n, now);
                }
                Poll::Ready(Err(e)) => {
                    self.closed_by_peer(i, e.to_string());
                    return true;
                }
            }
        }
    }

    pub(super) fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        let mut deadline = self.hub.poll_timeout();
        for w in &self.health {
            deadline = Some(deadline.map_or(w.deadline, |d| d.min(w.deadline)));
        }
        if let Some(s) = &self.shutdown {
            deadline = Some(deadline.map_or(s.deadline, |d| d.min(s.deadline)));
        }
        let Some(deadline) = deadline else {
            self.timer = None;
            return false;
        };
        match &self.timer {
            Some((at, _)) if *at == deadline => {}
            _ => self.timer = Some((deadline, self.rt.sleep_until(deadline))),
        }
        let Some((_, fut)) = &mut self.timer else {
            return false;
        };
        if fut.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.timer = None;
        let now = self.rt.now().max(deadline);
        self.hub.handle_timeout(now);
        self.check_health(now);
        true
    }

    /// Takes everything the core has to say.
    pub(super) fn drain(&mut self) -> bool {
        let hub = &mut self.hub;
        let mut progress = false;
        while let Some(req) = hub.poll_link_request() {
            progress = true;
            match req {
                LinkRequest::Open {
                    link,
                    host,
                    port,
                    tls,
                } => {
                    debug!(%link, %host, port, tls, "opening link");
                    // A cluster hub adds links as it learns the cluster's masters.
                    let idx = link.0 as usize;
                    if self.links.len() <= idx {
                        self.links.resize_with(idx + 1, || LinkIo::Idle);
                    }
                    let connect = self.rt.connect(host.clone(), port);
                    let fut: BoxFuture<io::Result<BoxedIo>> = if tls {
                        tls_connect(&self.options, host, connect)
                    } else {
                        connect
                    };
                    self.links[link.0 as usize] = LinkIo::Connecting(fut);
                    // Polled first next round (its stage may have run already).
                    self.again = true;
                }
                LinkRequest::Close { link } => {
                    debug!(%link, "closing link");
                    if let Some(l) = self.links.get_mut(link.0 as usize) {
                        *l = LinkIo::Idle;
                    }
                }
            }
        }
        // Each link's output, only while its write queue is short: the rest waits in the core
        // (see the core's docs on backpressure).
        for (i, l) in self.links.iter_mut().enumerate() {
            let LinkIo::Open { wq, wq_bytes, .. } = l else {
                continue;
            };
            while *wq_bytes < self.write_queue_bytes {
                let Some(bytes) = hub.poll_transmit_link(LinkId(i as u16)) else {
                    break;
                };
                progress = true;
                *wq_bytes += bytes.len();
                wq.push_back(bytes);
            }
        }
        let mut any = false;
        let mut live_changed = false;
        while let Some(ev) = self.hub.poll_event() {
            any = true;
            live_changed |= matches!(ev, Event::RoomLive { .. });
            self.dispatch(ev);
        }
        if any {
            progress = true;
            let now = self.now();
            self.check_health(now);
            if live_changed {
                self.check_live_waiters();
            }
        }
        progress
    }
}

#[cfg(feature = "tls")]
fn tls_connect(
    options: &Options,
    host: String,
    connect: BoxFuture<io::Result<BoxedIo>>,
) -> BoxFuture<io::Result<BoxedIo>> {
    let config = options
        .tls
        .clone()
        .unwrap_or_else(crate::tls::default_client_config);
    Box::pin(async move { crate::tls::wrap(config, host, connect.await?).await })
}

#[cfg(not(feature = "tls"))]
fn tls_connect(
    _: &Options,
    _: String,
    _: BoxFuture<io::Result<BoxedIo>>,
) -> BoxFuture<io::Result<BoxedIo>> {
    Box::pin(async {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "rediss:// needs TLS: build roomcast with the `tls` feature",
        ))
    })
}
