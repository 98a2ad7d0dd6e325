//! The probe: a message published on a publish link to this instance's own control channel,
//! which must come back on the subscriber. It proves the subscriber really receives (a
//! connection can be up and deaf).
//!
//! [`Prober`] holds the probe's state and its two deadlines; the hub decides when a probe is
//! possible and writes it.
//!
//! Invariants: at most one probe is under way; tokens only grow, so a late reply or arrival
//! of an earlier probe never matches the one under way; the next probe is due `interval`
//! after the last one was started or came back, and a probe under way has no such due time,
//! only its timeout once Redis confirmed it.

use std::time::{Duration, Instant};

/// Magic prefix of a probe's payload on the control channel (then its token, 8 bytes LE).
pub(super) const PROBE_MAGIC: &[u8; 6] = b"\0probe";

#[derive(Debug)]
struct UnderWay {
    token: u64,
    sent: Instant,
    /// When Redis confirmed the PUBLISH (with at least one receiver): the timeout runs from
    /// here, so a slow publish link is not taken for a deaf subscriber.
    confirmed: Option<Instant>,
}

/// The probe's state.
#[derive(Debug)]
pub(super) struct Prober {
    under_way: Option<UnderWay>,
    next_due: Instant,
    next_token: u64,
    last_ok: Option<Instant>,
}

impl Prober {
    /// No probe under way; the first is due `interval` after `now`.
    pub(super) fn new(now: Instant, interval: Duration) -> Self {
        Prober {
            under_way: None,
            next_due: now + interval,
            next_token: 1,
            last_ok: None,
        }
    }

    /// When the probe needs the hub next: its timeout while under way and confirmed, else
    /// (if a probe is possible now) when the next one is due.
    pub(super) fn deadline(
        &self,
        possible: impl FnOnce() -> bool,
        timeout: Duration,
    ) -> Option<Instant> {
        match &self.under_way {
            Some(p) => p.confirmed.map(|c| c + timeout),
            None => possible().then_some(self.next_due),
        }
    }

    /// Whether a probe is under way.
    pub(super) fn under_way(&self) -> bool {
        self.under_way.is_some()
    }

    /// The next probe is due at once (if none is under way).
    pub(super) fn due_now(&mut self, now: Instant) {
        if self.under_way.is_none() {
            self.next_due = now;
        }
    }

    /// Whether the probe under way was confirmed by Redis `timeout` ago or more and never
    /// came back: the subscriber is deaf.
    pub(super) fn timed_out(&self, now: Instant, timeout: Duration) -> bool {
        // Not possible: only the timeout of a probe under way counts.
        matches!(self.deadline(|| false, timeout), Some(t) if now >= t)
    }

    /// Whether a new probe is due (none under way and its time has come).
    pub(super) fn due(&self, now: Instant) -> bool {
        self.under_way.is_none() && now >= self.next_due
    }

    /// The token the next probe will carry (the hub picks its link from it).
    pub(super) fn next_token(&self) -> u64 {
        self.next_token
    }

    /// A probe is written now; returns its token. The next is due `interval` later.
    pub(super) fn start(&mut self, now: Instant, interval: Duration) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.under_way = Some(UnderWay {
            token,
            sent: now,
            confirmed: None,
        });
        self.next_due = now + interval;
        token
    }

    /// Whether `token` is the probe under way.
    pub(super) fn is(&self, token: u64) -> bool {
        self.under_way.as_ref().is_some_and(|p| p.token == token)
    }

    /// Redis confirmed the probe under way with at least one receiver.
    pub(super) fn confirmed(&mut self, now: Instant) {
        if let Some(p) = &mut self.under_way {
            p.confirmed = Some(now);
        }
    }

    /// The probe under way ends without an answer (its link broke, the hub closed, or it
    /// timed out); the next is due as scheduled when it started.
    pub(super) fn abandon(&mut self) {
        self.under_way = None;
    }

    /// A probe came back on the subscriber. If it is the one under way, it ends: returns
    /// its round trip, and the next is due `interval` from now.
    pub(super) fn arrived(
        &mut self,
        token: u64,
        now: Instant,
        interval: Duration,
    ) -> Option<Duration> {
        let p = self.under_way.as_ref().filter(|p| p.token == token)?;
        let rtt = now.saturating_duration_since(p.sent);
        self.under_way = None;
        self.last_ok = Some(now);
        self.next_due = now + interval;
        Some(rtt)
    }

    /// When a probe last came back.
    pub(super) fn last_ok(&self) -> Option<Instant> {
        self.last_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(3);
    const TIMEOUT: Duration = Duration::from_secs(2);

    #[test]
    fn one_probe_at_a_time_with_growing_tokens() {
        let t0 = Instant::now();
        let mut p = Prober::new(t0, INTERVAL);
        assert_eq!(
            p.deadline(|| false, TIMEOUT),
            None,
            "not possible: no deadline"
        );
        assert_eq!(p.deadline(|| true, TIMEOUT), Some(t0 + INTERVAL));
        assert!(!p.due(t0) && p.due(t0 + INTERVAL));
        let a = p.start(t0 + INTERVAL, INTERVAL);
        // Under way and not confirmed: no deadline at all, and nothing due.
        assert_eq!(p.deadline(|| true, TIMEOUT), None);
        assert!(!p.due(t0 + 10 * INTERVAL));
        p.due_now(t0);
        assert!(
            !p.due(t0 + 10 * INTERVAL),
            "due_now waits for the probe under way"
        );
        // Confirmed: the timeout runs from the confirmation.
        let c = t0 + INTERVAL + Duration::from_millis(5);
        p.confirmed(c);
        assert_eq!(p.deadline(|| true, TIMEOUT), Some(c + TIMEOUT));
        assert!(!p.timed_out(c + TIMEOUT - Duration::from_millis(1), TIMEOUT));
        assert!(p.timed_out(c + TIMEOUT, TIMEOUT));
        // A stale token never matches; the right one ends the probe with its round trip.
        assert_eq!(p.arrived(a + 1, c, INTERVAL), None);
        assert!(p.is(a));
        let back = c + Duration::from_millis(1);
        assert_eq!(p.arrived(a, back, INTERVAL), Some(back - (t0 + INTERVAL)));
        assert_eq!(p.last_ok(), Some(back));
        assert!(!p.is(a) && !p.under_way());
        assert_eq!(p.deadline(|| true, TIMEOUT), Some(back + INTERVAL));
        let b = p.start(back + INTERVAL, INTERVAL);
        assert!(b > a);
        p.abandon();
        assert!(!p.is(b) && !p.timed_out(back + 100 * INTERVAL, TIMEOUT));
        assert_eq!(p.arrived(b, back + INTERVAL, INTERVAL), None, "abandoned");
        assert_eq!(p.next_token(), b + 1);
    }
}
