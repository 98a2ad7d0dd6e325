//! Health checks (a PING round on every link) and graceful shutdown.

use std::time::{Duration, Instant};

use roomcast_core::PublishError;

use crate::error::Error;
use crate::handle::{HealthReport, Reply};

use super::{HealthWaiter, LinkIo, ShutdownState, State};

impl State {
    /// Every link through its handshake and, with presence on, this instance registered (so
    /// that a presence query right after `connect` is answered, not refused).
    pub(super) fn all_ready(&self) -> bool {
        let h = &self.hub;
        h.health().all_ready() && (!h.config().presence || h.presence_ready())
    }

    pub(super) fn start_health(
        &mut self,
        timeout: Duration,
        reply: Reply<HealthReport>,
        now: Instant,
    ) {
        let hub = &mut self.hub;
        if hub.is_standalone() {
            // No link to ping and no subscriber to probe: healthy by construction.
            let m = hub.metrics();
            let _ = reply.send(Ok(HealthReport {
                link_rtts: Vec::new(),
                rooms: m.rooms,
                rooms_live: m.rooms_live,
                links: Vec::new(),
                topology: None,
            }));
            return;
        }
        let health = hub.health();
        let down: Vec<String> = health
            .links
            .iter()
            .filter(|l| l.state != roomcast_core::LinkState::Ready)
            .map(|l| match &l.last_error {
                Some(e) => format!("{} ({:?}, {}) is down: {e}", l.link, l.role, l.address),
                None => format!(
                    "{} ({:?}, {}) is not connected yet",
                    l.link, l.role, l.address
                ),
            })
            .collect();
        if !down.is_empty() {
            let _ = reply.send(Err(Error::Unhealthy(down.join("; "))));
            return;
        }
        hub.ping(now);
        self.health.push(HealthWaiter {
            started: now,
            deadline: now + timeout,
            pending: health.links.iter().map(|l| l.link).collect(),
            rtts: Vec::new(),
            reply,
        });
    }

    pub(super) fn check_health(&mut self, now: Instant) {
        // Called after every batch of events: with no check waiting it must cost nothing
        // (`Hub::metrics` counts the live rooms one by one, `Hub::health` allocates).
        if self.health.is_empty() {
            return;
        }
        let hub = &self.hub;
        let probe_ok = hub.health().last_probe_ok;
        let metrics = hub.metrics();
        let mut i = 0;
        while i < self.health.len() {
            let w = &self.health[i];
            let verified = probe_ok.is_some_and(|t| t >= w.started);
            if w.pending.is_empty() && verified {
                let w = self.health.swap_remove(i);
                let _ = w.reply.send(Ok(HealthReport {
                    link_rtts: w.rtts,
                    rooms: metrics.rooms,
                    rooms_live: metrics.rooms_live,
                    links: hub.health().links,
                    topology: hub.topology().cloned(),
                }));
            } else if now >= w.deadline {
                let w = self.health.swap_remove(i);
                let why = if !w.pending.is_empty() {
                    format!(
                        "no PONG within the timeout from {}",
                        w.pending
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    "the subscriber did not receive its probe through Redis within the timeout"
                        .to_string()
                };
                let _ = w.reply.send(Err(Error::Unhealthy(why)));
            } else {
                i += 1;
            }
        }
    }

    pub(super) fn begin_shutdown(&mut self, timeout: Duration, reply: Option<Reply<()>>) {
        let now = self.now();
        let s = self.shutdown.get_or_insert_with(|| ShutdownState {
            deadline: now + timeout,
            replies: Vec::new(),
        });
        if let Some(r) = reply {
            s.replies.push(r);
        }
        for (_, entry) in self.rooms.drain() {
            entry.live.set(false);
            for (_, m) in entry.members {
                m.queue.close();
            }
        }
        self.slots.clear();
        for (_, a) in self.conns.drain() {
            a.queue.close();
        }
        for w in self.live_waiters.drain(..) {
            let _ = w
                .reply
                .send(Err(Error::Member(roomcast_core::MemberError::Shutdown)));
        }
        self.hub.begin_shutdown(now);
    }

    pub(super) fn check_shutdown(&mut self) {
        let Some(deadline) = self.shutdown.as_ref().map(|s| s.deadline) else {
            return;
        };
        let now = self.now();
        let drained = self.hub.is_drained();
        if !(drained || now >= deadline) {
            return;
        }
        self.hub.close(now);
        self.drain();
        // Give queued bytes (the last UNSUBSCRIBEs) no further wait: links close now.
        for l in &mut self.links {
            *l = LinkIo::Idle;
        }
        for (_, r) in self.publishes.drain() {
            let _ = r.send(Err(Error::Publish(PublishError::Shutdown)));
        }
        for (_, r) in self.queries.drain() {
            let _ = r.send(Err(Error::Closed));
        }
        for q in self.event_subs.drain(..) {
            q.close();
        }
        if let Some(s) = self.shutdown.take() {
            for r in s.replies {
                let _ = r.send(Ok(()));
            }
        }
        self.done = true;
    }
}
