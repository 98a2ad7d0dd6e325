//! The one error type of the async API.

use std::fmt;

use roomcast_core::{ConfigError, LinkError, MemberError, PresenceError, PublishError};

/// Why a roomcast call failed. Every message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A join, leave or disconnect was refused (nothing changed).
    Member(MemberError),
    /// A publish was refused or failed.
    Publish(PublishError),
    /// Connecting to Redis failed.
    Connect(LinkError),
    /// A presence query could not be answered across instances.
    Presence(PresenceError),
    /// The health check failed.
    Unhealthy(String),
    /// One room of a [`crate::Connection::join_many`] batch was refused; nothing was joined.
    Batch {
        /// The position of the refused room in the batch (from 0).
        index: usize,
        /// Why it was refused.
        error: MemberError,
    },
    /// A connection id is already in use by another API or another [`crate::Connection`].
    ConnectionInUse {
        /// The connection id.
        conn: String,
        /// What holds it.
        held_by: &'static str,
    },
    /// A connection id in the namespace of the room observers
    /// ([`crate::Roomcast::subscribe_room`]): ids starting with U+FFFF are theirs.
    ReservedConnection {
        /// The connection id.
        conn: String,
    },
    /// The instance is shut down (or its driver is no longer polled).
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Member(e) => e.fmt(f),
            Error::Publish(e) => e.fmt(f),
            Error::Connect(e) => write!(f, "cannot connect to Redis: {e}"),
            Error::Presence(e) => e.fmt(f),
            Error::Unhealthy(why) => write!(f, "unhealthy: {why}"),
            Error::Batch { index, error } => write!(
                f,
                "room {index} of the batch (counting from 0): {error}; nothing in the batch was \
                 joined"
            ),
            Error::ConnectionInUse { conn, held_by } => write!(
                f,
                "connection id {conn:?} is already held by {held_by}; drop that first, or use \
                 one API (Roomcast::connection or Roomcast::join) per connection id"
            ),
            Error::ReservedConnection { conn } => write!(
                f,
                "connection id {conn:?} starts with U+FFFF, which is reserved for room observers \
                 (Roomcast::subscribe_room); choose an id that does not start with it"
            ),
            Error::Closed => write!(
                f,
                "roomcast is shut down (or its driver is not being polled); create a new instance"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
impl From<MemberError> for Error {
    fn from(e: MemberError) -> Self {
        Error::Member(e)
    }
}
impl From<PublishError> for Error {
    fn from(e: PublishError) -> Self {
        Error::Publish(e)
    }
}
impl From<PresenceError> for Error {
    fn from(e: PresenceError) -> Self {
        Error::Presence(e)
    }
}
