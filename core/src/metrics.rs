//! Counters and gauges, as a plain snapshot.

/// A snapshot of a hub's counters (monotonic since start) and gauges (current values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Gauge: local rooms (with members, or with a subscription change in flight).
    pub rooms: usize,
    /// Gauge: rooms whose subscription Redis confirmed.
    pub rooms_live: usize,
    /// Gauge: (room, connection) memberships.
    pub members: usize,
    /// Gauge: connections in at least one room.
    pub connections: usize,
    /// Gauge: publishes waiting for a link.
    pub queued_publishes: usize,
    /// Gauge: publishes written and not yet confirmed.
    pub inflight_publishes: usize,
    /// Gauge: rooms whose (UN)SUBSCRIBE is sent and not yet confirmed.
    pub subscriptions_in_flight: usize,
    /// Gauge: links ready for traffic.
    pub links_ready: usize,
    /// Gauge: bytes of partial frames from Redis that the adapter holds for the hub (its read
    /// buffers, as of the last `handle_input`): at most `max_frame_bytes + 2` per link, since
    /// a frame over the limit is refused, or for a message skipped unread, as soon as its
    /// size is known.
    pub buffered_input: usize,
    /// Gauge: bytes for Redis in the hub, not handed out yet ([`crate::Hub::buffered_output`]).
    pub buffered_output: usize,
    /// Gauge: bytes handed out by `Hub::poll_transmit_link` and not yet reported written
    /// (`Hub::handle_written`): the adapter's socket write queues, as the hub counts them.
    pub unwritten_output: usize,
    /// Gauge: the most bytes held for any one link on their way to Redis, in the hub and the
    /// adapter together: at most `max_output_bytes` plus one frame.
    pub max_link_output: usize,
    /// Gauge: bytes in the async adapter's socket write queues, as the adapter counts them
    /// (0 in snapshots taken from the hub itself).
    pub adapter_output: usize,
    /// Gauge: bytes of the publishes waiting for a link (at most `max_queued_bytes`).
    pub queued_bytes: usize,
    /// Publishes accepted by `publish`.
    pub published: u64,
    /// Publishes Redis confirmed.
    pub publish_confirmed: u64,
    /// Publishes refused by `publish` (invalid, too large, backpressure, queue full, shut
    /// down).
    pub publish_refused: u64,
    /// Accepted publishes that failed later (server error, outcome unknown, shutdown).
    pub publish_failed: u64,
    /// Publishes written again after a reconnect.
    pub publish_resent: u64,
    /// Messages delivered to local rooms (one per message, whatever the member count).
    pub delivered: u64,
    /// Member deliveries (one per recipient).
    pub member_deliveries: u64,
    /// Messages dropped as duplicates by (origin, room, seq).
    pub dropped_duplicate: u64,
    /// Own messages dropped in `LocalFirst` mode (already delivered locally).
    pub dropped_echo: u64,
    /// Messages whose envelope could not be decoded.
    pub dropped_malformed: u64,
    /// Messages whose envelope named another room than their channel.
    pub dropped_room_mismatch: u64,
    /// Messages on channels this instance does not want.
    pub dropped_unknown_channel: u64,
    /// Messages whose frame was over `max_frame_bytes`, skipped unread (the link stayed up).
    pub dropped_too_large: u64,
    /// Gaps reported.
    pub gaps: u64,
    /// Links that came up again after being down.
    pub reconnects: u64,
    /// Link failures of any cause.
    pub link_failures: u64,
    /// Subscriber links found deaf by the probe.
    pub deaf_detected: u64,
    /// Confirmations that matched nothing outstanding.
    pub stray_confirmations: u64,
    /// Channels Redis unsubscribed on its own.
    pub server_unsubscribes: u64,
    /// Cluster mode: topologies read (`CLUSTER SHARDS` replies taken).
    pub topology_refreshes: u64,
    /// Cluster mode: commands answered with a redirect (`-MOVED`, `-CLUSTERDOWN`,
    /// `-TRYAGAIN`) and sent again where the new topology says.
    pub redirects: u64,
    /// Presence commands Redis refused.
    pub presence_errors: u64,
    /// Leases found expired by the heartbeat (a long stall) and registered again.
    pub leases_lost: u64,
    /// Bytes read from Redis (each byte counted once, however many calls a frame takes).
    pub bytes_in: u64,
    /// Bytes handed to the adapter for Redis.
    pub bytes_out: u64,
}
