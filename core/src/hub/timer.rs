//! Every deadline of the hub, by name (as quinn-proto's `Timer`): [`Hub::timer`] is the one
//! place each is computed, [`Hub::poll_timeout`] is the minimum over all of them and
//! [`Hub::handle_timeout`] fires those that are due, by name.
//!
//! The deadlines are derived from the state of the part that owns them (a link's state and
//! request FIFO, the probe, the presence heartbeat) rather than stored apart from it, so none
//! can be left armed after the state that needed it is gone.

use super::*;
use crate::link::LinkTimer;

/// A timer of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// A link's armed timer (its state decides which: [`LinkTimer`]).
    Link(usize),
    /// The probe: the next one due (while a probe is possible), or the timeout of the one
    /// under way once Redis confirmed it.
    Probe,
    /// The presence lease's heartbeat (while the presence link is ready).
    Heartbeat,
    /// Cluster mode: the next `CLUSTER SHARDS` (periodic, or soon after an incomplete
    /// topology), while the topology link is ready and none is on its way.
    Topology,
}

impl Hub {
    /// Every timer, in the order `handle_timeout` fires them (a cluster hub adds links as it
    /// learns masters; links are never removed). A standalone hub has none: no link, no
    /// probe, no lease.
    pub(super) fn timers(&self) -> impl Iterator<Item = Timer> + use<> {
        let hub_timers: &'static [Timer] = if self.roles.is_standalone() {
            &[]
        } else if self.shards.is_some() {
            &[Timer::Probe, Timer::Heartbeat, Timer::Topology]
        } else {
            &[Timer::Probe, Timer::Heartbeat]
        };
        (0..self.links.len())
            .map(Timer::Link)
            .chain(hub_timers.iter().copied())
    }

    /// When `timer` fires, if it is armed.
    pub(super) fn timer(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::Link(idx) => self.links[idx].timer(&self.config).map(|(_, at)| at),
            Timer::Probe => self
                .prober
                .deadline(|| self.probe_possible(), self.config.probe_timeout),
            Timer::Heartbeat => {
                if self.presence_link_up() {
                    self.presence.deadline()
                } else {
                    None
                }
            }
            Timer::Topology => self.refresh_deadline(),
        }
    }

    /// Does what `timer` is for (it is due).
    pub(super) fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Link(idx) => {
                let Some((which, _)) = self.links[idx].timer(&self.config) else {
                    return;
                };
                match which {
                    LinkTimer::Reconnect if !self.closed => self.open(idx, now),
                    LinkTimer::Reconnect => {}
                    LinkTimer::Connect => {
                        self.link_failed(idx, LinkError::ConnectTimeout, true, now)
                    }
                    LinkTimer::Reply => {
                        // The oldest request is the one Redis did not answer in time.
                        let step = self.links[idx]
                            .fifo
                            .front()
                            .map_or(crate::event::LinkStep::Ping, |(_, req)| req.step());
                        self.link_failed(idx, LinkError::ReplyTimeout { step }, true, now)
                    }
                    LinkTimer::Keepalive => self.send_ping(idx, false, now),
                }
            }
            Timer::Probe => self.probe_timers(now),
            Timer::Heartbeat => self.presence_timers(now),
            Timer::Topology => self.send_refresh(now),
        }
    }
}
