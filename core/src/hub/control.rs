//! This instance's own control channel: where its probes come back to the subscriber.
//!
//! Invariants: it is `Live` only after Redis confirmed a SUBSCRIBE sent on the current
//! subscriber connection; it goes back to `Pending` (to be subscribed again) when that
//! connection is lost or Redis drops the subscription, except while shutting down; it is
//! never subscribed after the hub closed.

use bytes::Bytes;

use crate::event::RoomState;

/// The control channel and its subscription state.
#[derive(Debug)]
pub(super) struct Control {
    /// The channel's name.
    pub(super) channel: Bytes,
    state: RoomState,
}

impl Control {
    /// Not subscribed yet.
    pub(super) fn new(channel: Bytes) -> Self {
        Control {
            channel,
            state: RoomState::Pending,
        }
    }

    /// Whether Redis confirmed the subscription.
    pub(super) fn is_live(&self) -> bool {
        self.state == RoomState::Live
    }

    /// Whether a SUBSCRIBE is to be written now (then it is under way); never once closed.
    /// Whether [`Control::subscribe_now`] would say yes (without changing anything).
    #[inline]
    pub(super) fn wants_subscribe(&self, closed: bool) -> bool {
        self.state == RoomState::Pending && !closed
    }

    pub(super) fn subscribe_now(&mut self, closed: bool) -> bool {
        if self.state != RoomState::Pending || closed {
            return false;
        }
        self.state = RoomState::Subscribing;
        true
    }

    /// Redis confirmed a SUBSCRIBE of the channel.
    pub(super) fn confirmed(&mut self) {
        if self.state == RoomState::Subscribing {
            self.state = RoomState::Live;
        }
    }

    /// Redis dropped the subscription on its own: subscribe again, unless shutting down.
    pub(super) fn dropped(&mut self, shutting_down: bool) {
        if self.state == RoomState::Live && !shutting_down {
            self.state = RoomState::Pending;
        }
    }

    /// The SUBSCRIBE was refused (cluster mode: `-MOVED`): subscribe again later.
    pub(super) fn refused(&mut self) {
        if self.state == RoomState::Subscribing {
            self.state = RoomState::Pending;
        }
    }

    /// The subscriber connection is gone, and its subscriptions with it.
    pub(super) fn link_lost(&mut self) {
        self.state = RoomState::Pending;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_only_after_a_confirmed_subscribe() {
        let mut c = Control::new(Bytes::from_static(b"ctl"));
        c.confirmed();
        assert!(!c.is_live(), "a confirmation of nothing sent");
        assert!(c.subscribe_now(false));
        assert!(!c.subscribe_now(false), "one SUBSCRIBE under way");
        c.confirmed();
        assert!(c.is_live());
        c.dropped(true);
        assert!(c.is_live(), "kept while shutting down");
        c.dropped(false);
        assert!(!c.is_live());
        assert!(!c.subscribe_now(true), "never after close");
        assert!(c.subscribe_now(false));
        c.link_lost();
        assert!(
            c.subscribe_now(false),
            "subscribed again on the new connection"
        );
    }
}
