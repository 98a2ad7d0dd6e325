//! Link life: opening, failure and backoff, readiness, subscriptions, keepalive and probes.

use super::*;
use crate::link::{Frame, Queued};

impl Hub {
    pub(super) fn open(&mut self, idx: usize, now: Instant) {
        if self.roles.topology() == Some(idx) {
            // The topology link tries the seeds and the nodes learnt in turn.
            if let Some(server) = self.next_topology_server() {
                self.roles.set_server(self.roles.place_of_link(idx), server);
            }
        }
        let l = &mut self.links[idx];
        l.state = LinkState::Connecting { since: now };
        let s = self.roles.server_of(idx);
        self.requests.push_back(LinkRequest::Open {
            link: l.id,
            host: s.host.clone(),
            port: s.port,
            tls: s.tls,
        });
    }

    pub(super) fn send_ping(&mut self, idx: usize, user: bool, now: Instant) {
        let l = &mut self.links[idx];
        encode_command(&mut l.out, &[b"PING"]);
        l.fifo.push_back((now, Request::Ping { user }));
    }

    /// Writes the subscription changes of this turn, stamped `now` (the latest `now` seen:
    /// that of the call that made them).
    pub(super) fn flush_subscriptions(&mut self, now: Instant) {
        if self.shards.is_some() {
            self.flush_shard_subscriptions(now);
            return;
        }
        // Single-server mode: one subscriber (link 0), which carries the control channel too.
        // The common case (every publish polls the links): nothing to subscribe or leave.
        let control_waits = self
            .controls
            .first()
            .is_some_and(|c| c.wants_subscribe(self.closed));
        if !self.rooms.has_commands() && !control_waits {
            return;
        }
        let Some(sub) = self.roles.subscriber_of(roles::Place(0)) else {
            return;
        };
        if !self.links[sub].is_ready() {
            return;
        }
        if self.controls[sub].subscribe_now(self.closed) {
            let l = &mut self.links[sub];
            encode_command(&mut l.out, &[b"SUBSCRIBE", &self.controls[sub].channel]);
            l.fifo
                .push_back((now, Request::Subscription { remaining: 1 }));
        }
        let (sub_rooms, unsub_rooms) = self
            .rooms
            .take_routed(self.config.max_subscriptions_in_flight, |_| {
                Some(sub as u16)
            });
        for (verb, rooms) in [
            (&b"SUBSCRIBE"[..], sub_rooms),
            (&b"UNSUBSCRIBE"[..], unsub_rooms),
        ] {
            for chunk in rooms.chunks(self.config.subscribe_batch) {
                let l = &mut self.links[sub];
                encode_array_header(&mut l.out, chunk.len() + 1);
                encode_bulk(&mut l.out, verb);
                for (room, _) in chunk {
                    self.scratch.clear();
                    self.namer.write_room_channel(room, &mut self.scratch);
                    encode_bulk(&mut l.out, &self.scratch);
                }
                l.fifo.push_back((
                    now,
                    Request::Subscription {
                        remaining: chunk.len(),
                    },
                ));
            }
        }
    }

    pub(super) fn link_failed(&mut self, idx: usize, cause: LinkError, close: bool, now: Instant) {
        self.metrics.link_failures += 1;
        let l = &mut self.links[idx];
        let id = l.id;
        let role = l.role;
        if close {
            self.requests.push_back(LinkRequest::Close { link: id });
        }
        let delay = self
            .rng
            .backoff(l.attempts, self.config.backoff_min, self.config.backoff_max);
        l.attempts = l.attempts.saturating_add(1);
        l.state = LinkState::Backoff { until: now + delay };
        if l.down_since.is_none() {
            l.down_since = Some(now);
        }
        l.last_error = Some(cause.clone());
        if l.unsent_frames > 0 {
            // Publishes written but never handed out keep their frames for the resend below
            // (those in sealed chunks already have theirs).
            let _ = l.take_output();
        }
        l.clear_output();
        l.held_input = 0;
        l.forget_inflight();
        let fifo = std::mem::take(&mut l.fifo);
        let mut resend = Vec::new();
        let mut presence_lost = Vec::new();
        for (_, req) in fifo {
            match req {
                Request::Publish(w) => match (self.config.unconfirmed, w.frame) {
                    (UnconfirmedPolicy::Resend, Frame::Sent(frame)) => resend.push(Outgoing {
                        id: w.id,
                        bytes: Queued::Frame(frame),
                    }),
                    // Every frame is `Sent` after `take_output`; one that was not kept could
                    // not be resent.
                    _ => self.fail_publish(w.id, PublishError::OutcomeUnknown),
                },
                Request::Probe { .. } => self.prober.abandon(),
                Request::Presence(p) => presence_lost.push(p),
                Request::Topology => {
                    if let Some(s) = &mut self.shards {
                        s.topology_lost();
                    }
                }
                _ => {}
            }
        }
        if Some(idx) == self.roles.presence() {
            self.presence_link_lost(presence_lost);
        }
        let l = &mut self.links[idx];
        self.queued_total += resend.len();
        self.queued_bytes += resend.iter().map(Outgoing::len).sum::<usize>();
        for o in resend.into_iter().rev() {
            l.queue.push_front(o);
        }
        if role == LinkRole::Subscriber {
            if self.probed == idx {
                self.prober.abandon();
            }
            self.controls[idx].link_lost();
            let live = self.rooms.on_link_lost(idx as u16);
            for room in &live {
                self.events.push_back(Event::RoomNotLive {
                    room: room.clone(),
                    reason: NotLiveReason::LinkLost,
                });
            }
            self.missed.extend(live);
            self.missed.sort_unstable();
            self.missed.dedup();
        }
        let retired = matches!(cause, LinkError::Retired);
        self.events.push_back(Event::LinkDown {
            link: id,
            role,
            cause,
        });
        if role != LinkRole::Topology && !retired {
            // Cluster mode: a lost node may have failed over.
            self.request_refresh(now);
        }
    }

    pub(super) fn link_ready(&mut self, idx: usize, now: Instant) {
        let l = &mut self.links[idx];
        l.state = LinkState::Ready;
        l.attempts = 0;
        l.last_error = None;
        let outage = l.down_since.take().filter(|_| l.ever_up).map(|s| now - s);
        if l.ever_up {
            self.metrics.reconnects += 1;
        }
        l.ever_up = true;
        let role = l.role;
        let id = l.id;
        let missed_rooms = if role == LinkRole::Subscriber {
            std::mem::take(&mut self.missed)
        } else {
            Vec::new()
        };
        self.events.push_back(Event::LinkUp {
            link: id,
            role,
            outage,
            missed_rooms,
        });
        if Some(idx) == self.roles.presence() {
            self.presence_link_ready(now);
        }
        if role == LinkRole::Publisher {
            self.pump(idx, now);
        }
        if role == LinkRole::Subscriber {
            // Rooms that waited for this link may go now.
            self.rooms.release_held();
        }
        if role == LinkRole::Topology {
            self.send_refresh(now);
        }
    }

    /// The subscriber link the next probe goes to: the first ready one after the last
    /// probed, so every subscriber takes a turn.
    fn next_probed(&self) -> Option<usize> {
        let ready = |&i: &usize| self.links[i].is_ready() && self.controls[i].is_live();
        let mut subs = self.roles.subscribers().filter(ready);
        let first = subs.next()?;
        let mut subs = self.roles.subscribers().filter(ready);
        Some(subs.find(|&i| i > self.probed).unwrap_or(first))
    }

    /// The publish links that can carry a probe to subscriber `sub` (those of its place).
    fn probe_publishers(&self, sub: usize) -> &[usize] {
        self.roles.publishers_of(self.roles.place_of_link(sub))
    }

    pub(super) fn probe_possible(&self) -> bool {
        !self.closed
            && self.next_probed().is_some_and(|sub| {
                self.probe_publishers(sub)
                    .iter()
                    .any(|&i| self.links[i].is_ready())
            })
    }

    /// The probed subscriber heard nothing (or Redis counted no subscriber): it is deaf.
    pub(super) fn probed_deaf(&mut self, now: Instant) {
        self.prober.abandon();
        self.metrics.deaf_detected += 1;
        let sub = self.probed;
        if self.links[sub].is_ready() {
            self.link_failed(sub, LinkError::Deaf, true, now);
        }
    }

    pub(super) fn probe_timers(&mut self, now: Instant) {
        if self.prober.timed_out(now, self.config.probe_timeout) {
            self.probed_deaf(now);
            return;
        }
        if !self.prober.due(now) || !self.probe_possible() {
            return;
        }
        let Some(sub) = self.next_probed() else {
            return;
        };
        // Prefer the link after the last one used, so every publish link takes a turn.
        let publishers = self.probe_publishers(sub).to_vec();
        let n = publishers.len();
        let start = (self.prober.next_token() as usize) % n;
        let Some(idx) = (0..n)
            .map(|k| publishers[(start + k) % n])
            .find(|&i| self.links[i].is_ready())
        else {
            return;
        };
        self.probed = sub;
        let token = self.prober.start(now, self.config.probe_interval);
        let mut payload = Vec::with_capacity(14);
        payload.extend_from_slice(PROBE_MAGIC);
        payload.extend_from_slice(&token.to_le_bytes());
        let verb: &[u8] = if self.shards.is_some() {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let channel = self.controls[sub].channel.clone();
        let l = &mut self.links[idx];
        encode_command(&mut l.out, &[verb, &channel, &payload]);
        l.fifo.push_back((now, Request::Probe { token }));
    }
}
