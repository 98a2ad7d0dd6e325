//! Redis Cluster groundwork: hash slots, the room → slot policy, the topology read from
//! `CLUSTER SHARDS`, and the routing errors (`-MOVED`, `-CLUSTERDOWN`, `-CROSSSLOT`).
//!
//! Everything here is pure: values in, values out, no I/O, no clock, no panics on any input.
//!
//! # Sharded pub/sub in one paragraph
//!
//! In a cluster a room's channel is subscribed with `SSUBSCRIBE` and published with
//! `SPUBLISH` on the node serving the channel's hash slot ([`key_slot`]: CRC16/XMODEM of the
//! name's hash tag, modulo 16384). One `SSUBSCRIBE` may only name channels of one slot
//! (otherwise `-CROSSSLOT`); the wrong node answers `-MOVED slot host:port`
//! ([`ClusterError`]). When a slot moves to another shard, or a shard fails over by hand,
//! the old owner sends every subscriber of the slot's channels an unsolicited `sunsubscribe`;
//! the subscriber must then subscribe again on the new owner, found in a fresh
//! [`Topology`].
//!
//! # Unsolicited `sunsubscribe` versus the reply to one's own `SUNSUBSCRIBE`
//!
//! Both look alike (`sunsubscribe channel count`). What the server does (7.0.15, checked by
//! the `cluster_facts` integration test): a slot that moves away makes the old owner send
//! the unsolicited `sunsubscribe` at once; a `SUNSUBSCRIBE` of a channel the node no longer
//! serves is then answered `-MOVED`, not `sunsubscribe`. So when the two cross, the
//! command's answer is the `-MOVED` that follows the unsolicited `sunsubscribe`, and when
//! they do not, it is one `sunsubscribe`. The hub keeps the two apart with what it knows
//! and a fence: it knows which rooms it asked to leave (their state is `Unsubscribing`), so
//! a `sunsubscribe` of one of those means "left, as wanted" whoever sent it, and a
//! `sunsubscribe` of a room it still wants is the server dropping it (refresh the topology,
//! subscribe it on its new owner). `sunsubscribe` pushes answer no request; instead a `PING`
//! follows each `SUNSUBSCRIBE` batch, an error before its `pong` is the batch's answer
//! (`-MOVED`), and the `pong` ends the batch (see `hub/shards.rs`).
//!
//! # Rooms and slots: the policy
//!
//! A room's slot is the slot of its channel, `{prefix}:room:{escaped id}`, exactly as the
//! server computes it ([`room_slot`]); roomcast does not pick slots of its own. That has two
//! consequences, both deliberate:
//!
//! - **`{…}` in a room id is a hash tag.** Rooms whose ids have the same first non-empty
//!   `{…}` group share a slot, so `{game42}/chat` and `{game42}/lobby` live on one shard (one
//!   subscriber link, one `SSUBSCRIBE` batch).
//!   This is the rule every Redis Cluster user already knows for keys, it costs nothing, and
//!   it is the only way to co-locate rooms on purpose. It holds because the escaping of room
//!   ids leaves `{` and `}` alone and is injective: the first `{…}` of the channel is the
//!   escaped first `{…}` of the id (so `{a/b}` is hashed as `a:b`), and two ids have the
//!   same tag exactly when their own tags are equal. The other choice, escaping the braces
//!   away in cluster mode, would give rooms channel names that differ between single-node
//!   and cluster deployments (and from what `CLUSTER KEYSLOT` on the visible name says) to
//!   protect against a hot spot that only ids built around a shared `{…}` can make. The
//!   README must say: do not put a shared `{…}` in many room ids unless they should share a
//!   shard. Room ids without braces (the usual case) hash their whole channel and spread
//!   evenly over the slots.
//!   Presence keys do not follow rooms: all of one prefix share the prefix's slot
//!   ([`crate::presence::Keys::slot`]).
//! - **The prefix cannot contain a tag.** A prefix such as `{app}` would make every channel
//!   hash to one slot: one shard would carry all rooms, silently. [`check_cluster_prefix`]
//!   refuses a prefix with `{` or `}` in cluster mode with a message saying why and what to
//!   write instead. With no brace in the prefix (nor in `:room:`), only the room id can
//!   supply a tag. Single-node mode keeps accepting such prefixes: there they hash nothing.
//!
//! The control channel used to probe a subscriber link must hash to a slot of the shard it
//! probes; [`shard_control_channel`] builds one with a tag found for that slot.
//!
//! # How the pieces fit
//!
//! - [`crate::config::parse_redis_target`] chooses the mode from the URL's scheme;
//!   [`crate::config::ClusterServers::node`] gives the settings of a link to any node.
//! - [`check_server_mode`] reads the reply to `HELLO` (sent after `AUTH`) and refuses a
//!   `redis://` URL that reached a cluster node, a cluster URL that reached a single server,
//!   and a cluster older than 7.0.
//! - [`Topology::from_shards_reply`] turns the reply to `CLUSTER SHARDS` into shards and a
//!   16384-entry slot table; [`Topology::master_of`]`(`[`room_slot`]`(..))` says which
//!   master's links carry a room.
//! - [`batch_by_slot`] groups channels into `SSUBSCRIBE`/`SUNSUBSCRIBE` commands of one slot
//!   each.
//! - [`ClusterError::parse`] reads the error replies that force a refresh (`MOVED`) or a
//!   retry (`CLUSTERDOWN`, `TRYAGAIN`), or reveal a batching bug (`CROSSSLOT`).
//! - [`shard_control_channel`] names the probe channel of each shard's subscriber link.
//! - [`Placement`] turns each topology into stable places (one per master that owns
//!   slots): the links of a place survive refreshes that leave its master where it was.

mod placement;
mod redirect;
mod server;
mod slot;
mod topology;

pub use placement::{PlaceId, Placement, PlacementChange};
pub use redirect::{ClusterError, Redirect};
pub use server::{check_server_mode, ModeError, ServerHello, ServerMode, MIN_CLUSTER_VERSION};
pub use slot::{
    batch_by_slot, check_cluster_prefix, crc16, hash_tag, key_slot, room_slot,
    shard_control_channel, tag_for_slot, ClusterPrefixError, Slot, CONTROL_TAG_SEARCH, SLOT_COUNT,
};
pub use topology::{Health, Node, Role, Shard, ShardIndex, SlotRange, Topology, TopologyError};

#[cfg(test)]
mod tests;
