//! Publishing: the fire-and-forget [`Publisher`] and the gate it waits at under backpressure.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_channel::mpsc;

use crate::error::Error;

use super::{Command, PubSubMessage};

/// Holds [`Publisher`]s back: while the driver holds fire-and-forget publishes the core
/// refused for backpressure (their link's output is full), and while the bytes publishers
/// handed to the driver and the core has not taken yet reach a bound.
#[derive(Debug)]
pub(crate) struct PublishGate {
    /// Bytes handed to the driver by publishers, not yet accepted or refused by the core.
    pending: AtomicUsize,
    /// The bound on `pending` (one batch may go over it).
    limit: usize,
    /// The driver holds publishes refused for backpressure.
    blocked: AtomicBool,
    /// The driver is gone: nothing waits any more.
    closed: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl PublishGate {
    pub(crate) fn new(limit: usize) -> Self {
        PublishGate {
            pending: AtomicUsize::new(0),
            limit: limit.max(1),
            blocked: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wakers: Mutex::new(Vec::new()),
        }
    }

    fn is_open(&self) -> bool {
        self.closed.load(Ordering::Acquire)
            || (!self.blocked.load(Ordering::Acquire)
                && self.pending.load(Ordering::Acquire) < self.limit)
    }

    /// Ready when publishers may hand over more.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_open() {
            return Poll::Ready(());
        }
        {
            let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            if !w.iter().any(|k| k.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        }
        // Opened between the check and the registration: its wake-up may have been missed.
        if self.is_open() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Publishers handed `n` bytes to the driver.
    pub(crate) fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::AcqRel);
    }

    /// The core took (or refused) `n` bytes of what publishers handed over.
    pub(crate) fn release(&self, n: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(n))
            });
        self.wake_if_open();
    }

    /// The driver holds (or no longer holds) publishes refused for backpressure.
    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Release);
        self.wake_if_open();
    }

    /// The driver is gone: wake every publisher (their sends then fail with `Closed`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_if_open();
    }

    fn wake_if_open(&self) {
        if !self.is_open() {
            return;
        }
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }
}

/// The bytes a publish holds in flight to the driver (what the gate counts).
pub(crate) fn publish_bytes(msg: &PubSubMessage) -> usize {
    msg.data.len() + msg.room_id.len()
}

/// Publishes without waiting for Redis; one per task (it is `Clone`, and clones are
/// independent). It is also a `futures::Sink<PubSubMessage>` (the GraphWiz design's
/// publishing queue), so a stream of messages can be forwarded into it.
///
/// Messages fed into the `Sink` are handed to the driver in batches of up to
/// `Options::publish_batch` — one command and one wake-up per batch instead of per message —
/// when a batch is full and whenever the sink is flushed (`SinkExt::send`, `send_all` and
/// `forward` flush for you). [`Publisher::send`] and [`Publisher::send_batch`] flush at once.
/// Dropping a `Publisher` hands over what it still holds.
///
/// Backpressure: while a link's output is full (`Config::max_output_bytes`), the driver holds
/// the publishes that would go over it and every `Publisher` waits (`send` does not complete,
/// `poll_ready` stays pending) until that link drains; nothing is refused for it. What
/// publishers hand to the driver ahead of the core is bounded by `max_output_bytes` too (one
/// batch may go over).
#[derive(Debug)]
pub struct Publisher {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) buf: Vec<PubSubMessage>,
    pub(super) batch: usize,
    pub(super) gate: Arc<PublishGate>,
    pub(super) limits: Arc<roomcast_core::Config>,
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            tx: self.tx.clone(),
            buf: Vec::new(),
            batch: self.batch,
            gate: self.gate.clone(),
            limits: self.limits.clone(),
        }
    }
}

impl Publisher {
    /// Queues a message, after any messages fed into the sink before. Waits while the
    /// driver's command queue is full and while the driver holds publishes whose link's
    /// output is full (backpressure: nothing is refused for it, the publisher slows down).
    ///
    /// What the configured limits refuse (an invalid room or exclude id, a message over
    /// `max_envelope_bytes`) is returned at once as [`Error::Publish`] and nothing is queued.
    /// Refusals found by the driver later (its publish queue full) are reported on
    /// [`Roomcast::events`](crate::Roomcast::events) as [`Event::PublishRefused`](roomcast_core::Event::PublishRefused),
    /// failures after acceptance as [`Event::PublishFailed`](roomcast_core::Event::PublishFailed).
    pub async fn send(&mut self, msg: PubSubMessage) -> Result<(), Error> {
        self.check(&msg)?;
        self.buf.push(msg);
        std::future::poll_fn(|cx| self.poll_hand_over(cx)).await
    }

    /// Queues many messages as one command to the driver (the explicit pipeline): they are
    /// published in order, with the same reporting as [`Publisher::send`]. If the limits
    /// refuse any of them, none is queued and the first refusal is returned.
    pub async fn send_batch(
        &mut self,
        msgs: impl IntoIterator<Item = PubSubMessage>,
    ) -> Result<(), Error> {
        let start = self.buf.len();
        self.buf.extend(msgs);
        if let Some(e) = self.buf[start..].iter().find_map(|m| self.check(m).err()) {
            self.buf.truncate(start);
            return Err(e);
        }
        std::future::poll_fn(|cx| self.poll_hand_over(cx)).await
    }

    /// What the limits refuse before anything is queued. (Messages fed into the `Sink` are
    /// checked by the driver, which reports a refusal as `Event::PublishRefused`.)
    fn check(&self, msg: &PubSubMessage) -> Result<(), Error> {
        self.limits.check_publish(
            &msg.room_id,
            msg.data.len(),
            msg.exclude_connection.as_deref(),
        )?;
        Ok(())
    }

    /// Hands what is buffered to the driver as one command, once the gate is open.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.gate.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        match self.tx.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                // The next batch starts with room for one like this one (capped at a full
                // batch): a `Sink` fed message by message would otherwise grow an empty `Vec`
                // several times per batch.
                let room = self.buf.len().min(self.batch);
                let msgs = std::mem::replace(&mut self.buf, Vec::with_capacity(room));
                self.gate.add(msgs.iter().map(publish_bytes).sum());
                Poll::Ready(
                    self.tx
                        .start_send(Command::PublishBatch { msgs })
                        .map_err(|_| Error::Closed),
                )
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_sink::Sink<PubSubMessage> for Publisher {
    type Error = Error;

    /// Pending while a batch is full and cannot be handed over, and while the gate is
    /// closed (the driver holds publishes refused for backpressure).
    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.buf.len() < this.batch {
            return this.gate.poll_open(cx).map(Ok);
        }
        this.poll_hand_over(cx)
    }

    fn start_send(self: Pin<&mut Self>, msg: PubSubMessage) -> Result<(), Error> {
        let this = self.get_mut();
        if this.tx.is_closed() {
            return Err(Error::Closed);
        }
        this.buf.push(msg);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().poll_hand_over(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        match this.poll_hand_over(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tx)
                .poll_close(cx)
                .map_err(|_| Error::Closed),
            other => other,
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let msgs = std::mem::take(&mut self.buf);
            let n = msgs.len();
            let bytes: usize = msgs.iter().map(publish_bytes).sum();
            // A sender that is not waiting always has a slot of its own in the channel.
            // Counted before the driver can see them (it releases what it takes).
            self.gate.add(bytes);
            if self.tx.try_send(Command::PublishBatch { msgs }).is_err() {
                self.gate.release(bytes);
                tracing::warn!(
                    messages = n,
                    "a Publisher dropped with unflushed messages while the driver's queue was \
                     full or closed; they are lost (flush the sink before dropping it)"
                );
            }
        }
    }
}
