//! The `PING` fence of a shard subscriber link: tells the reply to one's own `SUNSUBSCRIBE`
//! from the server's unsolicited `sunsubscribe` (a slot moved, or the shard failed over).
//!
//! The link writes every `SUNSUBSCRIBE` batch followed by a `PING` and tells the fence
//! ([`LeaveFence::sent`]). Until that batch's `pong` comes back, every `sunsubscribe` of one
//! of its channels means "no longer subscribed here", which is what leaving wanted, whether it
//! is the batch's own reply or the server's push that crossed it ([`Sunsubscribe::Left`]); an
//! error before the `pong` is the batch's answer (`-MOVED` when the server had already
//! dropped the slot, see the [module docs](super)). A `sunsubscribe` of any other channel is
//! the server dropping a channel still wanted ([`Sunsubscribe::Dropped`]): the room is not
//! live any more, the topology must be refreshed and the room subscribed on its new owner.
//!
//! Replies come in the order the commands were written, so batches complete in order, each
//! at its own `pong`.

use std::collections::VecDeque;

use bytes::Bytes;

use super::redirect::ClusterError;

/// What a `sunsubscribe` on a shard subscriber link means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sunsubscribe {
    /// The channel was being left: it is not subscribed here any more, as wanted.
    Left,
    /// The server dropped a channel nobody asked to leave (slot migrated, manual failover):
    /// report the room not live, refresh the topology, subscribe it on the new owner.
    Dropped,
}

/// How one `SUNSUBSCRIBE` batch ended, at its `pong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The batch's channels: none of them is subscribed on this link any more.
    pub channels: Vec<Bytes>,
    /// The error that answered the batch instead of `sunsubscribe`s, if any (`-MOVED`: the
    /// server had dropped the slot first; the topology is stale and should be refreshed).
    pub error: Option<ErrorAnswer>,
}

/// An error reply to a `SUNSUBSCRIBE` batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorAnswer {
    /// A cluster routing error (`-MOVED`, `-CLUSTERDOWN`, ...).
    Cluster(ClusterError),
    /// Any other error, as the server wrote it.
    Other(String),
}

#[derive(Debug)]
struct Batch {
    channels: Vec<Bytes>,
    error: Option<ErrorAnswer>,
}

/// The `SUNSUBSCRIBE` batches of one link whose `pong` has not come back yet.
#[derive(Debug, Default)]
pub struct LeaveFence {
    batches: VecDeque<Batch>,
}

impl LeaveFence {
    /// A fence with nothing outstanding.
    pub fn new() -> LeaveFence {
        LeaveFence::default()
    }

    /// A `SUNSUBSCRIBE` of `channels` (one slot's) and its `PING` were written, in that order.
    pub fn sent(&mut self, channels: Vec<Bytes>) {
        self.batches.push_back(Batch {
            channels,
            error: None,
        });
    }

    /// Batches written whose `pong` has not come back.
    pub fn outstanding(&self) -> usize {
        self.batches.len()
    }

    /// Whether `channel` is in a batch being left.
    pub fn is_leaving(&self, channel: &[u8]) -> bool {
        self.batches
            .iter()
            .any(|b| b.channels.iter().any(|c| c.as_ref() == channel))
    }

    /// A `sunsubscribe` of `channel` arrived.
    pub fn on_sunsubscribe(&self, channel: &[u8]) -> Sunsubscribe {
        if self.is_leaving(channel) {
            Sunsubscribe::Left
        } else {
            Sunsubscribe::Dropped
        }
    }

    /// An error reply arrived while batches are outstanding: it answers the oldest one (its
    /// `SUNSUBSCRIBE`; the `PING` after it cannot fail). Returns false if no batch is
    /// outstanding or the oldest already had its answer, so the error answers something
    /// else.
    pub fn on_error(&mut self, text: &[u8]) -> bool {
        let Some(batch) = self.batches.front_mut() else {
            return false;
        };
        if batch.error.is_some() {
            return false;
        }
        batch.error = Some(match ClusterError::parse(text) {
            Ok(Some(e)) => ErrorAnswer::Cluster(e),
            _ => ErrorAnswer::Other(String::from_utf8_lossy(text).into_owned()),
        });
        true
    }

    /// The `pong` of the oldest batch arrived: it is over. `None` if no batch was
    /// outstanding (the `pong` answers some other `PING`).
    pub fn on_pong(&mut self) -> Option<LeaveOutcome> {
        let batch = self.batches.pop_front()?;
        Some(LeaveOutcome {
            channels: batch.channels,
            error: batch.error,
        })
    }

    /// The link was lost: every batch is over (nothing is subscribed on a closed link).
    /// Returns the channels that were being left.
    pub fn clear(&mut self) -> Vec<Bytes> {
        self.batches.drain(..).flat_map(|b| b.channels).collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::cluster::key_slot;
    use crate::config::Protocol;
    use crate::resp::{FrameLimits, Incoming, Reader};

    const LIMITS: FrameLimits = FrameLimits {
        max_frame_bytes: 1 << 20,
        max_depth: 32,
        max_elements: 1 << 20,
    };

    /// The channels of the `sunsubscribe` pushes in a capture (see
    /// `core/tests/data/cluster/README.md`), in order.
    fn pushes(protocol: Protocol, bytes: &[u8]) -> Vec<Bytes> {
        let mut reader = Reader::new(protocol, LIMITS);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(Some(frame)) = reader.next(&mut buf) {
            match frame {
                Incoming::Unsubscribed {
                    channel: Some(channel),
                } => out.push(channel),
                other => panic!("not a sunsubscribe: {other:?}"),
            }
        }
        assert!(buf.is_empty(), "the capture is whole pushes");
        out
    }

    const MIGRATION: &[(Protocol, &[u8])] = &[
        (
            Protocol::Resp2,
            include_bytes!("../../tests/data/cluster/sunsubscribe_migration_resp2.resp"),
        ),
        (
            Protocol::Resp3,
            include_bytes!("../../tests/data/cluster/sunsubscribe_migration_resp3.resp"),
        ),
    ];

    /// The race: a link leaves `{mig}:a` while the slot migrates. The server's unsolicited
    /// pushes for both channels of the slot come first, then `-MOVED` answers the
    /// `SUNSUBSCRIBE`, then the fence's `pong`. `a` was being left (wanted), `b` was dropped
    /// (resubscribe on the new owner), and the batch ends with the redirect.
    #[test]
    fn our_sunsubscribe_crossing_a_migration_is_told_apart_by_the_fence() {
        for &(protocol, bytes) in MIGRATION {
            let channels = pushes(protocol, bytes);
            let (a, b) = (
                Bytes::from_static(b"facts:{mig}:a"),
                Bytes::from_static(b"facts:{mig}:b"),
            );
            assert_eq!(channels, [a.clone(), b.clone()]);
            let mut fence = LeaveFence::new();
            fence.sent(vec![a.clone()]);
            let meant: Vec<Sunsubscribe> =
                channels.iter().map(|c| fence.on_sunsubscribe(c)).collect();
            assert_eq!(meant, [Sunsubscribe::Left, Sunsubscribe::Dropped]);
            let slot = key_slot(b"facts:{mig}:a");
            assert!(fence.on_error(format!("MOVED {slot} 127.0.0.1:31002").as_bytes()));
            let outcome = fence.on_pong().expect("the batch is over at its pong");
            assert_eq!(outcome.channels, std::slice::from_ref(&a));
            let Some(ErrorAnswer::Cluster(ClusterError::Moved(r))) = &outcome.error else {
                panic!("expected the MOVED: {outcome:?}");
            };
            assert_eq!((r.slot, r.port), (slot, 31002));
            // After its pong the batch is over: a later push for `a` (joined again,
            // subscribed on the new owner, moved again) is the server dropping it.
            assert_eq!(fence.on_sunsubscribe(&a), Sunsubscribe::Dropped);
            assert_eq!(fence.outstanding(), 0);
        }
    }

    /// Without a migration the reply to our own `SUNSUBSCRIBE` is the `sunsubscribe` itself:
    /// `Left`, and the batch ends without an error. A push for a channel nobody left is
    /// `Dropped`, on manual failover too.
    #[test]
    fn our_own_reply_is_left_and_failover_pushes_are_dropped() {
        let failover: &[u8] =
            include_bytes!("../../tests/data/cluster/sunsubscribe_failover_resp2.resp");
        let channels = pushes(Protocol::Resp2, failover);
        let mut fence = LeaveFence::new();
        fence.sent(vec![channels[0].clone()]);
        assert_eq!(fence.on_sunsubscribe(&channels[0]), Sunsubscribe::Left);
        assert_eq!(fence.on_sunsubscribe(&channels[1]), Sunsubscribe::Dropped);
        let outcome = fence.on_pong().expect("outcome");
        assert_eq!(outcome.error, None);
        assert_eq!(outcome.channels, [channels[0].clone()]);
    }

    /// Batches end in order, each at its own pong; an error answers only the oldest batch
    /// and only once; a pong with no batch outstanding, an error with none, and a lost link
    /// are handled without panics.
    #[test]
    fn batches_end_in_order_and_stray_replies_are_not_theirs() {
        let mut fence = LeaveFence::new();
        assert_eq!(fence.on_pong(), None);
        assert!(!fence.on_error(b"ERR something"));
        fence.sent(vec![Bytes::from_static(b"x")]);
        fence.sent(vec![Bytes::from_static(b"y")]);
        assert!(fence.on_error(b"CLUSTERDOWN The cluster is down"));
        assert!(!fence.on_error(b"MOVED 1 h:1"), "one answer per batch");
        let first = fence.on_pong().unwrap();
        assert_eq!(first.channels, [Bytes::from_static(b"x")]);
        assert!(matches!(
            first.error,
            Some(ErrorAnswer::Cluster(ClusterError::ClusterDown { .. }))
        ));
        assert_eq!(fence.on_sunsubscribe(b"x"), Sunsubscribe::Dropped);
        assert_eq!(fence.on_sunsubscribe(b"y"), Sunsubscribe::Left);
        assert!(fence.on_error(b"NOPERM no"));
        assert!(matches!(
            fence.on_pong().unwrap().error,
            Some(ErrorAnswer::Other(ref t)) if t == "NOPERM no"
        ));
        fence.sent(vec![Bytes::from_static(b"z")]);
        assert_eq!(fence.clear(), [Bytes::from_static(b"z")]);
        assert_eq!(fence.on_sunsubscribe(b"z"), Sunsubscribe::Dropped);
    }
}
