//! The GraphWiz-XR presence module's API on roomcast: code written against that design
//! changes one `use` (to `roomcast::graphwiz::...`) and keeps its calls.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use roomcast::graphwiz::{PubSubMessage, PubSubMessageType, RedisConfig, RedisPubSub};
//!
//! let (tx, rx) = tokio::sync::mpsc::channel(1024);
//! let pubsub = RedisPubSub::new(RedisConfig::default(), rx).await?;
//! let mut lobby = pubsub.subscribe_room("hub/lobby".into()).await?;
//! pubsub.register_connection("hub/lobby".into(), "ws-1".into()).await?;
//! tx.send(PubSubMessage::new("hub/lobby", PubSubMessageType::Broadcast, b"hi".to_vec()))
//!     .await?;
//! let msg = lobby.recv().await.expect("the room's messages");
//! assert_eq!(msg.data, b"hi");
//! assert_eq!(pubsub.get_room_connections("hub/lobby").await, vec!["ws-1".to_string()]);
//! pubsub.unregister_connection("hub/lobby".into(), "ws-1".into()).await?;
//! # Ok(()) }
//! ```
//!
//! What the design promised and roomcast does: one subscriber connection serves every room
//! (refcounted, unsubscribed when the last local member leaves), reconnection with
//! resubscription, a publish pool, presence across instances (`get_room_connections` and
//! `connection_exists` ask Redis, so they see every instance's connections), and a health
//! check that sends a probe through Redis. The methods are `async` (they talk to Redis).
//! Added: [`RedisPubSub::unregister_connection`] (the design had no way to leave a room).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::{Config, MessageType, Roomcast};

/// Messages queued for a [`RedisPubSub::subscribe_room`] receiver before the room's stream
/// waits for it (the instance's own queue then drops the oldest, counted).
pub const ROOM_CHANNEL_CAPACITY: usize = 1024;

/// How long [`RedisPubSub::health_check`] may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`RedisPubSub::subscribe_room`] waits for Redis to confirm the subscription.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Redis is and how to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]` (`rediss://` with feature `tls`).
    pub url: String,
    /// Prefix of every channel and key.
    pub channel_prefix: String,
    /// Publish connections.
    pub connection_pool_size: usize,
}

impl Default for RedisConfig {
    /// From `REDIS_URL` (default `redis://127.0.0.1:6379`), `REDIS_CHANNEL_PREFIX` (default
    /// `graphwiz`) and `REDIS_POOL_SIZE` (default 10; an unparsable value falls back to it).
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let core = Config::default();
        RedisConfig {
            url: env("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            channel_prefix: env("REDIS_CHANNEL_PREFIX").unwrap_or(core.channel_prefix),
            connection_pool_size: env("REDIS_POOL_SIZE")
                .and_then(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(core.pool_size),
        }
    }
}

impl RedisConfig {
    /// The roomcast configuration for these settings.
    pub fn to_config(&self) -> Result<Config> {
        let pool = self.connection_pool_size.to_string();
        let lookup = |key: &str| match key {
            "REDIS_URL" => Some(self.url.clone()),
            "REDIS_CHANNEL_PREFIX" => Some(self.channel_prefix.clone()),
            "REDIS_POOL_SIZE" => Some(pool.clone()),
            _ => None,
        };
        let (config, _) = Config::from_env_with(lookup)
            .with_context(|| format!("invalid Redis settings {self:?}"))?;
        Ok(config)
    }
}

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PubSubMessageType {
    /// A message for the room's members.
    Broadcast,
    /// A join, leave or other presence change.
    PresenceEvent,
    /// A notice from the system.
    SystemNotification,
}

impl From<PubSubMessageType> for MessageType {
    fn from(t: PubSubMessageType) -> Self {
        match t {
            PubSubMessageType::Broadcast => MessageType::Broadcast,
            PubSubMessageType::PresenceEvent => MessageType::PresenceEvent,
            PubSubMessageType::SystemNotification => MessageType::SystemNotification,
        }
    }
}

impl From<MessageType> for PubSubMessageType {
    fn from(t: MessageType) -> Self {
        match t {
            MessageType::Broadcast => PubSubMessageType::Broadcast,
            MessageType::PresenceEvent => PubSubMessageType::PresenceEvent,
            MessageType::SystemNotification => PubSubMessageType::SystemNotification,
        }
    }
}

/// A room message, as published and as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubMessage {
    /// The room.
    pub room_id: String,
    /// What it is.
    pub message_type: PubSubMessageType,
    /// The payload.
    pub data: Vec<u8>,
    /// The sender's own connection, which must not receive it (a receiver of
    /// [`RedisPubSub::subscribe_room`] gets every message of the room and skips it there).
    pub exclude_connection: Option<String>,
    /// Unix seconds.
    pub timestamp: i64,
}

impl PubSubMessage {
    /// A message to `room_id` stamped with the current Unix time.
    pub fn new(room_id: impl Into<String>, message_type: PubSubMessageType, data: Vec<u8>) -> Self {
        PubSubMessage {
            room_id: room_id.into(),
            message_type,
            data,
            exclude_connection: None,
            timestamp: crate::handle::unix_now(),
        }
    }
}

impl From<PubSubMessage> for crate::PubSubMessage {
    fn from(m: PubSubMessage) -> Self {
        crate::PubSubMessage {
            room_id: m.room_id.into(),
            message_type: m.message_type.into(),
            data: m.data.into(),
            exclude_connection: m.exclude_connection,
            timestamp: m.timestamp,
        }
    }
}

impl From<&crate::Message> for PubSubMessage {
    fn from(m: &crate::Message) -> Self {
        PubSubMessage {
            room_id: m.room.as_str().to_string(),
            message_type: m.message_type.into(),
            data: m.data.to_vec(),
            exclude_connection: m.exclude_connection.as_deref().map(String::from),
            timestamp: m.timestamp,
        }
    }
}

/// Rooms shared with every other instance on the same Redis: publishing from a queue,
/// room streams, and presence.
pub struct RedisPubSub {
    rc: Roomcast,
    publisher: tokio::task::JoinHandle<()>,
    config: Arc<RedisConfig>,
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("config", &self.config)
            .field("instance", &self.rc.instance())
            .finish()
    }
}

impl RedisPubSub {
    /// Connects (every link, within the configured connect timeout) and publishes every
    /// message that arrives on `message_receiver` until it closes. A publish that fails is
    /// logged and counted in the instance's metrics; the queue goes on.
    pub async fn new(
        config: RedisConfig,
        mut message_receiver: mpsc::Receiver<PubSubMessage>,
    ) -> Result<Self> {
        let rc = crate::Builder::new(config.to_config()?)
            .connect_tokio()
            .await
            .with_context(|| format!("cannot connect to Redis at {}", redact(&config.url)))?;
        let mut publisher = rc.publisher();
        let task = tokio::spawn(async move {
            while let Some(msg) = message_receiver.recv().await {
                if let Err(e) = publisher.send(msg.into()).await {
                    tracing::warn!("graphwiz: publish failed: {e}");
                    if matches!(e, crate::Error::Closed) {
                        break;
                    }
                }
            }
        });
        Ok(RedisPubSub {
            rc,
            publisher: task,
            config: Arc::new(config),
        })
    }

    /// The roomcast instance underneath (metrics, events, the rest of roomcast's API).
    pub fn roomcast(&self) -> &Roomcast {
        &self.rc
    }

    /// Every message of the room (on every instance) from now on, once Redis confirmed the
    /// subscription (waits up to [`SUBSCRIBE_TIMEOUT`]). Dropping the receiver unsubscribes
    /// (when no local member is left).
    pub async fn subscribe_room(&self, room_id: String) -> Result<mpsc::Receiver<PubSubMessage>> {
        let mut stream = self
            .rc
            .subscribe_room(&room_id)
            .await
            .with_context(|| format!("cannot subscribe to room {room_id:?}"))?;
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, stream.wait_live())
            .await
            .map_err(|_| {
                anyhow!("Redis did not confirm the subscription to room {room_id:?} within {SUBSCRIBE_TIMEOUT:?}")
            })?;
        let (tx, rx) = mpsc::channel(ROOM_CHANNEL_CAPACITY);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            if tx.send(PubSubMessage::from(&*msg)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(rx)
    }

    /// Registers a local connection in a room: it is listed by
    /// [`get_room_connections`](Self::get_room_connections) and
    /// [`connection_exists`](Self::connection_exists) on every instance (once the
    /// registration, written to Redis as this returns, is there), and the room is subscribed
    /// while it has local members. Messages reach the application through
    /// [`subscribe_room`](Self::subscribe_room), not through the registration.
    pub async fn register_connection(&self, room_id: String, connection_id: String) -> Result<()> {
        let mut member = self
            .rc
            .join(&room_id, &connection_id)
            .await
            .with_context(|| format!("cannot register {connection_id:?} in room {room_id:?}"))?;
        // The membership's messages are not this API's way of receiving: drain them. The
        // stream ends when the connection is unregistered (or the instance shuts down).
        tokio::spawn(async move { while member.next().await.is_some() {} });
        Ok(())
    }

    /// Removes a connection from a room on every instance's view (not in the design, which
    /// could not unregister). Unregistering one that is not registered is not an error.
    pub async fn unregister_connection(
        &self,
        room_id: String,
        connection_id: String,
    ) -> Result<()> {
        self.rc
            .leave(&room_id, &connection_id)
            .await
            .with_context(|| {
                format!("cannot unregister {connection_id:?} from room {room_id:?}")
            })?;
        Ok(())
    }

    /// The connections in the room on every instance (ids are unique per instance only: the
    /// same id on two instances is listed twice). Empty when Redis cannot be asked (the
    /// cause is logged).
    pub async fn get_room_connections(&self, room_id: &str) -> Vec<String> {
        match self.rc.room_connections(room_id).await {
            Ok(members) => members
                .into_iter()
                .map(|m| m.conn.as_str().to_string())
                .collect(),
            Err(e) => {
                tracing::warn!("graphwiz: members of {room_id:?} unknown: {e}");
                Vec::new()
            }
        }
    }

    /// Whether the connection is registered in some room on any instance. False when Redis
    /// cannot be asked (the cause is logged).
    pub async fn connection_exists(&self, connection_id: &str) -> bool {
        match self.rc.connection_exists(connection_id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("graphwiz: cannot tell whether {connection_id:?} exists: {e}");
                false
            }
        }
    }

    /// PINGs every link and sends a probe through Redis back to the subscriber, within
    /// [`HEALTH_TIMEOUT`].
    pub async fn health_check(&self) -> Result<()> {
        self.rc
            .health_check(HEALTH_TIMEOUT)
            .await
            .map(|_| ())
            .with_context(|| format!("Redis at {} is unhealthy", redact(&self.config.url)))
    }

    /// How many rooms this instance has subscribed (rooms with local members or streams), as
    /// the design defined it.
    pub async fn get_connection_count(&self) -> usize {
        self.rc.room_count().await.unwrap_or(0)
    }

    /// Stops publishing, waits up to `timeout` for queued publishes, and closes the links.
    pub async fn shutdown(&self, timeout: Duration) -> Result<()> {
        self.publisher.abort();
        self.rc.shutdown(timeout).await?;
        Ok(())
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn settings_become_a_roomcast_config() {
        let c = RedisConfig {
            url: "redis://10.0.0.1:7000".into(),
            channel_prefix: "gw".into(),
            connection_pool_size: 3,
        }
        .to_config()
        .expect("valid");
        assert_eq!(
            (c.server.port, c.channel_prefix.as_str(), c.pool_size),
            (7000, "gw", 3)
        );
        let bad = RedisConfig {
            url: "http://nope".into(),
            ..RedisConfig::default()
        };
        assert!(bad.to_config().is_err());
    }
}
