//! `GET /metrics`: the instance's counters and gauges and the server's own, in the Prometheus
//! (OpenMetrics) text format, encoded by `prometheus-client`.
//!
//! The instance's [`Metrics`] are read once per scrape (one query to the driver) and exposed
//! through a collector; the server's counters are updated as sockets come and go, and the
//! probe's round trip is observed from the instance's `SubscriberVerified` events, so nothing
//! on the message path takes a timestamp.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::core::LinkId;
use crate::{Event, Metrics};

/// Label set of the refusal counter: why an upgrade was refused.
pub(crate) type Reason = Vec<(&'static str, &'static str)>;

/// The server's own metrics, and the registry that exposes them with the instance's.
pub(crate) struct ServerMetrics {
    registry: Registry,
    core: Arc<CoreCollector>,
    /// WebSocket clients connected now.
    pub clients: Gauge,
    /// Sockets that joined their room.
    pub accepted: Counter,
    /// Upgrades refused, by reason (origin, token, room, shutting_down).
    pub refused: Family<Reason, Counter>,
    /// Text frames received from clients and published.
    pub frames_in: Counter,
    /// Frames sent to clients.
    pub frames_out: Counter,
    /// Messages a client's queue dropped (the client read too slowly).
    pub member_queue_dropped: Counter,
    /// Sockets closed with 1008 because the client read too slowly.
    pub closed_slow: Counter,
    /// Sockets closed with 1009 because a frame was over the limit.
    pub closed_too_large: Counter,
    /// Errors (join, publish) on sockets.
    pub errors: Counter,
    /// The last of them.
    pub last_error: Mutex<Option<String>>,
    /// Round trip of the probe through Redis back to the subscriber.
    pub probe_rtt: Histogram,
}

impl ServerMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("roomcast");
        let core = Arc::new(CoreCollector::default());
        registry.register_collector(Box::new(core.clone()));
        let m = ServerMetrics {
            registry,
            core,
            clients: Gauge::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            member_queue_dropped: Counter::default(),
            closed_slow: Counter::default(),
            closed_too_large: Counter::default(),
            errors: Counter::default(),
            last_error: Mutex::new(None),
            // 100 µs to about 3.3 s.
            probe_rtt: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "ws_clients",
            "WebSocket clients connected now",
            m.clients.clone(),
        );
        r.register(
            "ws_accepted",
            "WebSocket clients that joined their room",
            m.accepted.clone(),
        );
        r.register(
            "ws_refused",
            "WebSocket upgrades refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "ws_frames_received",
            "Text frames received from clients (each published to its room)",
            m.frames_in.clone(),
        );
        r.register(
            "ws_frames_sent",
            "Frames sent to clients",
            m.frames_out.clone(),
        );
        r.register(
            "member_queue_dropped",
            "Messages dropped from a client's queue because it read too slowly",
            m.member_queue_dropped.clone(),
        );
        r.register(
            "ws_closed_slow",
            "Clients disconnected with 1008 because they read too slowly",
            m.closed_slow.clone(),
        );
        r.register(
            "ws_closed_too_large",
            "Clients disconnected with 1009 because a frame was over the limit",
            m.closed_too_large.clone(),
        );
        r.register(
            "ws_errors",
            "Errors on WebSocket sessions (join, publish)",
            m.errors.clone(),
        );
        r.register(
            "probe_round_trip_seconds",
            "Round trip of the probe from a publish link through Redis to the subscriber",
            m.probe_rtt.clone(),
        );
        m
    }

    /// Counts an error on a session and keeps it as the last one.
    pub(crate) fn error(&self, e: impl std::fmt::Display) {
        self.errors.inc();
        *lock(&self.last_error) = Some(e.to_string());
    }

    /// The server's counters now.
    pub(crate) fn stats(&self) -> super::Stats {
        super::Stats {
            clients: u64::try_from(self.clients.get()).unwrap_or(0),
            accepted: self.accepted.get(),
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            member_queue_dropped: self.member_queue_dropped.get(),
            closed_slow: self.closed_slow.get(),
            closed_too_large: self.closed_too_large.get(),
            errors: self.errors.get(),
            last_error: lock(&self.last_error).clone(),
        }
    }

    /// Takes note of an instance event (probe round trips, links going down and up).
    pub(crate) fn event(&self, ev: &Event) {
        match ev {
            Event::SubscriberVerified { rtt } => self.probe_rtt.observe(rtt.as_secs_f64()),
            Event::LinkDown { link, .. } => {
                lock(&self.core.links_down).insert(*link);
            }
            Event::LinkUp { link, .. } => {
                lock(&self.core.links_down).remove(link);
            }
            _ => {}
        }
    }

    /// The text exposition, with the instance's metrics as of `core` (`None` when the
    /// instance did not answer: its metrics are left out, the server's are still there).
    pub(crate) fn encode(&self, core: Option<Metrics>) -> Result<String, std::fmt::Error> {
        *lock(&self.core.snapshot) = core;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Exposes the instance's [`Metrics`] snapshot taken for the scrape.
#[derive(Debug, Default)]
struct CoreCollector {
    snapshot: Mutex<Option<Metrics>>,
    links_down: Mutex<HashSet<LinkId>>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for CoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = lock(&self.snapshot).clone() else {
            return Ok(());
        };
        let e = &mut e;
        counter(e, "published", "Publishes accepted", m.published)?;
        counter(
            e,
            "publish_confirmed",
            "Publishes Redis confirmed",
            m.publish_confirmed,
        )?;
        counter(
            e,
            "publish_refused",
            "Publishes refused (invalid, too large, queue full, shut down)",
            m.publish_refused,
        )?;
        counter(
            e,
            "publish_failed",
            "Accepted publishes that failed later",
            m.publish_failed,
        )?;
        counter(
            e,
            "delivered",
            "Messages delivered to local rooms (one per message)",
            m.delivered,
        )?;
        counter(
            e,
            "member_deliveries",
            "Messages delivered to members (one per recipient)",
            m.member_deliveries,
        )?;
        // Drops of incoming messages, by cause (a client's queue drops are
        // roomcast_member_queue_dropped_total).
        let drops = ConstCounter::new(0u64);
        let mut family = e.encode_descriptor(
            "dropped",
            "Incoming messages dropped by the instance, by cause",
            None,
            drops.metric_type(),
        )?;
        for (cause, v) in [
            ("duplicate", m.dropped_duplicate),
            ("echo", m.dropped_echo),
            ("malformed", m.dropped_malformed),
            ("room_mismatch", m.dropped_room_mismatch),
            ("unknown_channel", m.dropped_unknown_channel),
        ] {
            let labels = vec![("cause", cause)];
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
        counter(
            e,
            "gaps",
            "Gaps reported (messages that never arrived)",
            m.gaps,
        )?;
        counter(
            e,
            "reconnects",
            "Links that came up again after being down",
            m.reconnects,
        )?;
        counter(
            e,
            "link_failures",
            "Link failures of any cause",
            m.link_failures,
        )?;
        gauge(e, "links_up", "Links ready for traffic", m.links_ready)?;
        gauge(
            e,
            "links_down",
            "Links down and reconnecting",
            lock(&self.links_down).len(),
        )?;
        gauge(e, "rooms", "Rooms with local members", m.rooms)?;
        gauge(
            e,
            "rooms_live",
            "Rooms whose subscription Redis confirmed",
            m.rooms_live,
        )?;
        gauge(
            e,
            "members",
            "Local (room, connection) memberships",
            m.members,
        )?;
        gauge(
            e,
            "connections",
            "Local connections in at least one room",
            m.connections,
        )?;
        gauge(
            e,
            "queued_publishes",
            "Publishes waiting for a link",
            m.queued_publishes,
        )?;
        Ok(())
    }
}
