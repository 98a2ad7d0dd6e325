//! # roomcast-core
//!
//! The sans-IO heart of roomcast: one [`Hub`] per server instance manages rooms, their Redis
//! pub/sub subscriptions, the message envelope and RESP framing, and never touches a socket,
//! clock, thread or runtime. An adapter (the `roomcast` crate, or your own loop) moves bytes,
//! timers and connection openings between the network and the hub.
//!
//! ```
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use roomcast_core::{Config, Event, Hub, Identity, InstanceId, LinkRequest, Publish, MessageType};
//!
//! let now = Instant::now();
//! let id = Identity { instance: InstanceId(0x1234), epoch: 1 };
//! let mut hub = Hub::new(Config::default(), id, now).unwrap();
//! hub.join("hub/abc", "conn-1", now).unwrap();
//! hub.publish(&Publish {
//!     room: "hub/abc",
//!     message_type: MessageType::Broadcast,
//!     data: b"hello",
//!     exclude_connection: Some("conn-1"),
//!     timestamp: 1_700_000_000,
//! }, now).unwrap();
//!
//! // The run loop: after every command or input, drain the polls, then wait.
//! while let Some(req) = hub.poll_link_request() {
//!     match req {
//!         // Open a TCP connection, then call hub.handle_connected(link, now).
//!         LinkRequest::Open { link, .. } => hub.handle_connected(link, now),
//!         LinkRequest::Close { .. } => {}
//!     }
//! }
//! while let Some(tx) = hub.poll_transmit() {
//!     // Write tx.bytes to tx.link's socket.
//!     let _ = (tx.link, tx.bytes);
//! }
//! while let Some(event) = hub.poll_event() {
//!     if let Event::Delivery(d) = event {
//!         for _member in d.recipients() { /* send d.message.data to the member */ }
//!     }
//! }
//! // Bytes read from a link go in with hub.handle_input(link, &mut buf, now);
//! // at hub.poll_timeout() call hub.handle_timeout(now).
//! let _next_wakeup = hub.poll_timeout();
//! # let _ = BytesMut::new();
//! ```
//!
//! Each local connection has a [`ConnSlot`] while it is a member of some room
//! ([`Joined::conn`], [`Hub::conn_slot`]), and a delivery names its recipients by slot as well
//! as by id ([`Delivery::recipient_slots`], [`Recipients::slots`]): an adapter can keep its
//! per-connection state in a vector indexed by [`ConnSlot::index`], checked against
//! [`ConnSlot::generation`], instead of looking each recipient up by id.
//!
//! A delivered message's payload is a slice of the buffer its bytes were read into (no
//! copy), so that buffer stays allocated until the application drops the message. An
//! adapter can read each link into blocks from a [`BlockPool`], which takes a block again
//! once nothing refers to it (the `roomcast` crate does; the hub's own output blocks work
//! the same way).
//!
//! The `Arc<Message>` of a delivery is itself reused: the hub keeps a reference to each one
//! it hands out and, once every recipient has dropped it, empties it (releasing its payload
//! at once) and hands the same allocation out with a later message
//! ([`Config::message_reuse`], [`Config::message_reuse_bytes`]). A recipient is therefore
//! never the only holder of the `Arc` (`Arc::try_unwrap` fails; clone the message instead),
//! and a message it still holds is never changed.
//!
//! The delivery contract (ordering, duplicates, sequences, outages) is described on
//! [`Hub`] and in the repository's README; each line of it has a test.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod blocks;
pub mod cluster;
pub mod config;
pub mod envelope;
pub mod event;
mod hub;
mod link;
pub mod metrics;
pub mod naming;
pub mod presence;
mod resp;
mod reuse;
mod rooms;

pub use blocks::BlockPool;
pub use config::{
    Config, ConfigError, DeliveryMode, Protocol, Secret, ServerConfig, UnconfirmedPolicy,
};
pub use envelope::{InstanceId, MessageType, Trailer};
pub use event::{
    Delivery, DropCause, Event, LinkError, LinkId, LinkRole, LinkStep, MemberError, Message,
    NotLiveReason, PublishError, PublishId, Recipients, RoomState,
};
pub use hub::{
    Health, Hub, Identity, Joined, LinkHealth, LinkRequest, Publish, Transmit, SUBSCRIBER,
};
pub use link::LinkState;
pub use metrics::Metrics;
pub use naming::{ChannelNamer, ConnId, NameError, RoomId, INLINE_ID_BYTES};
pub use presence::{
    Member, PresenceAnswer, PresenceChange, PresenceError, PresenceQuery, PresenceWhenDown, QueryId,
};
pub use resp::{FrameError, Value};
pub use rooms::{ConnSlot, Members, Recipient, RoomsOf};
