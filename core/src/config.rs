//! Configuration: every limit is a named field with a documented default.
//!
//! A [`Config`] is built from [`Config::default`], from a Redis URL
//! ([`Config::from_url`]) or from environment variables ([`Config::from_env_with`], which takes
//! a lookup function so that the core itself never reads the process environment).
//! [`Config::validate`] checks that the values fit together; [`crate::Hub::new`] calls it.

use std::fmt;
use std::time::Duration;

use crate::envelope::DEFAULT_MAX_ENVELOPE_BYTES;
use crate::naming::{
    ChannelNamer, DEFAULT_CHANNEL_PREFIX, DEFAULT_MAX_CONN_ID_BYTES, DEFAULT_MAX_ROOM_ID_BYTES,
    MAX_ID_BYTES,
};

/// The environment variable holding the Redis URL.
pub const ENV_REDIS_URL: &str = "REDIS_URL";
/// The environment variable holding the channel prefix.
pub const ENV_CHANNEL_PREFIX: &str = "REDIS_CHANNEL_PREFIX";
/// The environment variable holding the number of publish links.
pub const ENV_POOL_SIZE: &str = "REDIS_POOL_SIZE";
/// The Redis URL used when none is given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The number of publish links when none is given (the GraphWiz design's pool size).
pub const DEFAULT_POOL_SIZE: usize = 10;
/// The most publish links one instance may open.
pub const MAX_POOL_SIZE: usize = 256;

/// Which RESP version the links speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// RESP2: works with every Redis; subscribed links accept only pub/sub commands and PING.
    #[default]
    Resp2,
    /// RESP3 (`HELLO 3`, Redis 6 and later): pub/sub messages arrive as push frames.
    Resp3,
}

/// How a room's messages reach the members on the publishing instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeliveryMode {
    /// Every member, local or remote, receives a room's messages from the room's channel, so
    /// every instance sees them in the one order Redis received them.
    #[default]
    Ordered,
    /// Local members receive a message at publish time and the echo from Redis is dropped by
    /// origin: lower latency, but order then holds per (origin instance, room) only.
    LocalFirst,
}

/// What happens to publishes that were written to a link but not confirmed when it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UnconfirmedPolicy {
    /// Write them again after the reconnect, with their original sequence numbers; receivers
    /// drop the copies they already had.
    #[default]
    Resend,
    /// Fail them with [`crate::PublishError::OutcomeUnknown`]: Redis may or may not have
    /// delivered them.
    FailUnknown,
}

/// A password that never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The password itself, for the handshake.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Where the Redis server is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Use TLS (`rediss://`).
    pub tls: bool,
    /// ACL user name (`AUTH user password`); `None` logs in as the default user.
    pub username: Option<String>,
    /// Password; `None` sends no AUTH.
    pub password: Option<Secret>,
    /// Database for keys (presence). Pub/sub ignores it: channels are shared by all databases,
    /// so the channel prefix, not the database, separates applications.
    pub db: u32,
    /// RESP version.
    pub protocol: Protocol,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 6379,
            tls: false,
            username: None,
            password: None,
            db: 0,
            protocol: Protocol::Resp2,
        }
    }
}

/// Everything a [`crate::Hub`] can be told. Every limit has a name and a default.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The Redis server (in cluster mode: the settings of the first seed node).
    pub server: ServerConfig,
    /// Cluster mode (`redis+cluster://` or `rediss+cluster://`): the seed nodes and the login
    /// every node shares; `None` for one server. In cluster mode the channel prefix may not
    /// contain `{` or `}` (it would put every room in one slot), and every presence key lives
    /// in one hash slot, on one shard (see [`crate::presence`]).
    pub cluster: Option<ClusterServers>,
    /// Prefix of every channel and key (`REDIS_CHANNEL_PREFIX`, default `graphwiz`).
    pub channel_prefix: String,
    /// Number of publish links (`REDIS_POOL_SIZE`, default 10). A room always publishes on
    /// the same link (chosen by hash), so one instance's messages to one room keep their order.
    pub pool_size: usize,
    /// Name given to every link with `CLIENT SETNAME` (shows in `CLIENT LIST`); the link
    /// number is appended.
    pub client_name: String,
    /// How local members receive messages published on this instance.
    pub delivery: DeliveryMode,
    /// What happens to written-but-unconfirmed publishes when their link breaks.
    pub unconfirmed: UnconfirmedPolicy,
    /// Longest room id in bytes (default 256).
    pub max_room_id_bytes: usize,
    /// Longest connection id in bytes (default 256).
    pub max_conn_id_bytes: usize,
    /// Largest encoded message (envelope) accepted for publishing or delivery (default 1 MiB).
    pub max_envelope_bytes: usize,
    /// Largest RESP frame buffered from Redis (default: envelope limit + 64 KiB). A pub/sub
    /// message over it is skipped unread and reported as [`crate::DropCause::TooLarge`]; any
    /// other frame over it (a reply) breaks the link.
    pub max_frame_bytes: usize,
    /// Deepest nesting of RESP aggregates accepted from Redis (default 32).
    pub max_frame_depth: usize,
    /// Most elements in one RESP aggregate accepted from Redis (default 1,048,576).
    pub max_frame_elements: usize,
    /// Most channels in one SUBSCRIBE or UNSUBSCRIBE command (default 512).
    pub subscribe_batch: usize,
    /// Most channels whose (un)subscription is sent but not yet confirmed (default 8,192);
    /// pacing for the resubscription after a reconnect.
    pub max_subscriptions_in_flight: usize,
    /// Most publishes waiting for a link (down, or at its in-flight bound) across all links
    /// (default 10,000); beyond it `publish` is refused with `QueueFull`.
    pub max_queued_publishes: usize,
    /// Most publishes written to one link and not yet confirmed (default 4,096).
    pub max_inflight_publishes: usize,
    /// Most bytes of PUBLISH frames written to one link and not yet confirmed (default
    /// 64 MiB; one frame may go over it): each is kept until Redis answers, for a resend if
    /// the link breaks. Beyond it publishes wait in the link's queue, as beyond
    /// `max_inflight_publishes`.
    pub max_inflight_bytes: usize,
    /// Most publishing origins tracked per room for duplicate and gap detection (default 256);
    /// the least recently seen is forgotten first (its next message is a new baseline).
    pub max_origins_per_room: usize,
    /// Most delivered messages whose allocation the hub keeps, to reuse it once every
    /// recipient has dropped the message (default 1,024; 0: a new allocation per message).
    /// The hub holds a reference to each such message meanwhile, so a recipient is never the
    /// only holder of an `Arc<Message>` it was handed (`Arc::try_unwrap` fails; clone the
    /// message instead). A message every recipient has dropped is emptied (its payload, and
    /// the read buffer under it, released) at the hub's next input or timer, so within the
    /// keepalive interval on an idle instance. See also `message_reuse_bytes`.
    pub message_reuse: usize,
    /// Most payload bytes of the messages the hub keeps for reuse (default 1 MiB): beyond it
    /// the oldest are let go, and a message larger than this is never kept.
    pub message_reuse_bytes: usize,
    /// Most rooms with a publish sequence kept (default 100,000); beyond it an idle one is
    /// forgotten and restarts under a new epoch (receivers see a new baseline, not a gap).
    pub max_publish_streams: usize,
    /// Most bytes held for one link on their way to Redis, in the hub and in the adapter's
    /// write queue together (default 64 MiB): a publish to a link that holds this many is
    /// refused with `PublishError::Backpressure` (one frame may go over it). See the `Hub`
    /// docs on backpressure.
    pub max_output_bytes: usize,
    /// Most bytes of publishes waiting for a link (down, or at its in-flight bound) across all
    /// links (default 64 MiB); beyond it `publish` is refused with `QueueBytesFull`.
    pub max_queued_bytes: usize,
    /// How long opening a link and its handshake may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long any request may wait for its reply before the link is declared dead and
    /// reopened (default 5 s).
    pub reply_timeout: Duration,
    /// A link with no traffic for this long is sent a PING (default 2 s).
    pub keepalive_interval: Duration,
    /// How often the subscriber link is probed end to end through the instance's own control
    /// channel (default 3 s).
    pub probe_interval: Duration,
    /// How long after Redis confirmed a probe it must arrive on the subscriber link; if it
    /// does not, the subscriber is connected but deaf and is reopened (default 2 s).
    pub probe_timeout: Duration,
    /// First reconnect delay (default 25 ms); doubles per failed attempt, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay (default 2 s).
    pub backoff_max: Duration,
    /// Cluster mode: how often the topology (`CLUSTER SHARDS`) is read again when nothing
    /// prompted it (default 10 s). A `-MOVED` reply, a `sunsubscribe` the hub did not ask
    /// for and a lost link each prompt a refresh at once.
    pub topology_refresh: Duration,
    /// Cluster mode: how many times one publish may be answered `-MOVED` (or
    /// `-CLUSTERDOWN`/`-TRYAGAIN`) and sent again to the slot's new owner before it fails
    /// with [`crate::PublishError::Redirected`] (default 5).
    pub max_redirects: u32,
    /// Keep presence (who is in which room, across instances) in Redis (default true).
    pub presence: bool,
    /// The instance's lease: a crashed instance's members vanish within this long
    /// (default 5 s; the heartbeat runs every third of it).
    pub lease: Duration,
    /// Also publish a `PresenceEvent` message to the room on every join and leave, so other
    /// instances can tell their clients (default false). Its data is a
    /// [`crate::presence::PresenceChange`].
    pub presence_events: bool,
    /// What presence queries do while this instance is not registered (default: error).
    pub presence_when_down: crate::presence::PresenceWhenDown,
    /// Seed for reconnect jitter. Give each instance a different one (the adapters derive it
    /// from the instance id) so that instances do not reconnect in lockstep.
    pub rng_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            cluster: None,
            channel_prefix: DEFAULT_CHANNEL_PREFIX.into(),
            pool_size: DEFAULT_POOL_SIZE,
            client_name: "roomcast".into(),
            delivery: DeliveryMode::Ordered,
            unconfirmed: UnconfirmedPolicy::Resend,
            max_room_id_bytes: DEFAULT_MAX_ROOM_ID_BYTES,
            max_conn_id_bytes: DEFAULT_MAX_CONN_ID_BYTES,
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            max_frame_bytes: DEFAULT_MAX_ENVELOPE_BYTES + (64 << 10),
            max_frame_depth: 32,
            max_frame_elements: 1 << 20,
            subscribe_batch: 512,
            max_subscriptions_in_flight: 8192,
            max_queued_publishes: 10_000,
            max_inflight_publishes: 4096,
            max_inflight_bytes: 64 << 20,
            max_origins_per_room: 256,
            max_publish_streams: 100_000,
            message_reuse: 1024,
            message_reuse_bytes: 1 << 20,
            max_output_bytes: 64 << 20,
            max_queued_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            probe_interval: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(25),
            backoff_max: Duration::from_secs(2),
            topology_refresh: Duration::from_secs(10),
            max_redirects: 5,
            presence: true,
            lease: Duration::from_secs(5),
            presence_events: false,
            presence_when_down: crate::presence::PresenceWhenDown::Error,
            rng_seed: 0x5eed,
        }
    }
}

/// A configuration value that is wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The Redis URL could not be understood.
    BadUrl {
        /// The URL with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Redis Cluster URL (`redis+cluster://`) could not be understood.
    BadClusterUrl {
        /// The URL with any password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A numeric or named setting is out of range.
    BadValue {
        /// The field or variable.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::BadUrl { url, reason } => write!(
                f,
                "invalid Redis URL {url:?}: {reason}; expected redis://[user[:password]@]host[:port][/db][?protocol=resp2|resp3] (rediss:// for TLS)"
            ),
            ConfigError::BadClusterUrl { url, reason } => write!(
                f,
                "invalid Redis Cluster URL {url:?}: {reason}; expected redis+cluster://[user[:password]@]host:port[,host:port...][?protocol=resp2|resp3] (rediss+cluster:// for TLS)"
            ),
            ConfigError::BadValue { field, reason } => write!(f, "invalid {field}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::BadValue {
        field,
        reason: reason.into(),
    }
}

impl Config {
    /// A default configuration for the server at `url`: `redis://` or `rediss://` for one
    /// server, `redis+cluster://` or `rediss+cluster://` with seed nodes for a cluster (see
    /// [`parse_redis_target`]).
    pub fn from_url(url: &str) -> Result<Config, ConfigError> {
        Ok(match parse_redis_target(url)? {
            RedisTarget::Single(server) => Config {
                server,
                ..Config::default()
            },
            RedisTarget::Cluster(cluster) => Config {
                server: cluster
                    .seeds
                    .first()
                    .map(|seed| cluster.node(&seed.host, seed.port))
                    .unwrap_or_default(),
                cluster: Some(cluster),
                ..Config::default()
            },
        })
    }

    /// Builds a configuration from `REDIS_URL`, `REDIS_CHANNEL_PREFIX` and `REDIS_POOL_SIZE`,
    /// looked up through `lookup` (pass `|k| std::env::var(k).ok()` for the process
    /// environment). A missing variable takes its default. As in the GraphWiz design an
    /// unparsable pool size falls back to the default (reported in the second value, so the
    /// caller can log it); a bad URL or prefix is an error.
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let url = lookup(ENV_REDIS_URL).unwrap_or_else(|| DEFAULT_REDIS_URL.to_string());
        let mut config = Config::from_url(url.trim())?;
        if let Some(prefix) = lookup(ENV_CHANNEL_PREFIX) {
            config.channel_prefix = prefix;
        }
        if let Some(pool) = lookup(ENV_POOL_SIZE) {
            match pool.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_POOL_SIZE).contains(&n) => config.pool_size = n,
                _ => warnings.push(format!(
                    "{ENV_POOL_SIZE}={pool:?} is not a number from 1 to {MAX_POOL_SIZE}; using {DEFAULT_POOL_SIZE}"
                )),
            }
        }
        config.validate()?;
        Ok((config, warnings))
    }

    /// Checks that the values fit together; `Hub::new` calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        ChannelNamer::new(&self.channel_prefix)
            .map_err(|e| bad("channel_prefix", e.to_string()))?;
        if self.cluster.is_some() {
            crate::cluster::check_cluster_prefix(&self.channel_prefix)
                .map_err(|e| bad("channel_prefix", e.to_string()))?;
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(bad(
                "pool_size",
                format!(
                    "{} is not from 1 to {MAX_POOL_SIZE}; set it to the number of publish links wanted",
                    self.pool_size
                ),
            ));
        }
        for (field, v) in [
            ("max_room_id_bytes", self.max_room_id_bytes),
            ("max_conn_id_bytes", self.max_conn_id_bytes),
        ] {
            if v == 0 || v > MAX_ID_BYTES {
                return Err(bad(field, format!("{v} is not from 1 to {MAX_ID_BYTES}")));
            }
        }
        if self.max_envelope_bytes < 64
            || self.max_envelope_bytes > crate::envelope::HARD_MAX_ENVELOPE_BYTES
        {
            return Err(bad(
                "max_envelope_bytes",
                format!(
                    "{} is not from 64 to {}",
                    self.max_envelope_bytes,
                    crate::envelope::HARD_MAX_ENVELOPE_BYTES
                ),
            ));
        }
        if self.max_frame_bytes < self.max_envelope_bytes + 1024 {
            return Err(bad(
                "max_frame_bytes",
                "must be at least max_envelope_bytes + 1024 so that every accepted message fits in a frame",
            ));
        }
        for (field, v) in [
            ("max_frame_depth", self.max_frame_depth),
            ("max_frame_elements", self.max_frame_elements),
            ("subscribe_batch", self.subscribe_batch),
            (
                "max_subscriptions_in_flight",
                self.max_subscriptions_in_flight,
            ),
            ("max_inflight_publishes", self.max_inflight_publishes),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_origins_per_room", self.max_origins_per_room),
            ("max_publish_streams", self.max_publish_streams),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if self.max_frame_depth > 256 {
            return Err(bad(
                "max_frame_depth",
                "must be at most 256 (deeper nesting risks the stack)",
            ));
        }
        if self.max_output_bytes < self.max_frame_bytes {
            return Err(bad("max_output_bytes", "must be at least max_frame_bytes"));
        }
        if self.max_queued_bytes < self.max_envelope_bytes {
            return Err(bad(
                "max_queued_bytes",
                "must be at least max_envelope_bytes so that one message of the largest size can wait for its link",
            ));
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("reply_timeout", self.reply_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("backoff_max", self.backoff_max),
            ("topology_refresh", self.topology_refresh),
        ] {
            if d.is_zero() {
                return Err(bad(field, "must be longer than zero"));
            }
        }
        if self.lease < Duration::from_millis(300) {
            return Err(bad(
                "lease",
                "must be at least 300 ms (the heartbeat runs every third of it)",
            ));
        }
        if self.backoff_min > self.backoff_max {
            return Err(bad("backoff_min", "must not exceed backoff_max"));
        }
        if self.client_name.is_empty()
            || self
                .client_name
                .bytes()
                .any(|b| b <= b' ' || b == 0x7f || b >= 0x80)
        {
            return Err(bad(
                "client_name",
                "must be non-empty printable ASCII without spaces (Redis refuses others in CLIENT SETNAME)",
            ));
        }
        Ok(())
    }
}

/// Parses `redis://[user[:password]@]host[:port][/db][?protocol=resp2|resp3]`
/// (`rediss://` for TLS). User and password may be percent-encoded.
pub fn parse_redis_url(url: &str) -> Result<ServerConfig, ConfigError> {
    let masked = mask_url(url);
    let err = |reason: &str| ConfigError::BadUrl {
        url: masked.clone(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
        return Err(err(
            "a redis+cluster:// URL names the seed nodes of a Redis Cluster; read it with parse_redis_target or parse_cluster_url",
        ));
    } else {
        return Err(err("the scheme must be redis:// or rediss://"));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut server = ServerConfig {
        tls,
        ..ServerConfig::default()
    };
    if let Some(info) = userinfo {
        (server.username, server.password) = parse_userinfo(info).map_err(|r| err(&r))?;
    }
    if hostport.contains(',') {
        return Err(err(
            "it lists several hosts; for Redis Cluster write redis+cluster://host:port,host:port (cluster mode)",
        ));
    }
    (server.host, server.port) = parse_host_port(hostport, server.port).map_err(|r| err(&r))?;
    let path = path.trim_end_matches('/');
    if !path.is_empty() {
        server.db = path
            .parse::<u32>()
            .map_err(|_| err("the path must be a database number, like /0"))?;
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (k, v) {
                ("protocol", "resp2" | "2") => server.protocol = Protocol::Resp2,
                ("protocol", "resp3" | "3") => server.protocol = Protocol::Resp3,
                ("protocol", _) => return Err(err("protocol must be resp2 or resp3")),
                ("db", v) => {
                    server.db = v.parse().map_err(|_| err("db must be a database number"))?
                }
                _ => {
                    return Err(err(&format!(
                        "unknown query parameter {k:?} (known: protocol, db)"
                    )))
                }
            }
        }
    }
    Ok(server)
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let after = &url[scheme_end + 3..];
    let authority_end = after.find(['/', '?']).unwrap_or(after.len());
    let authority = &after[..authority_end];
    match authority.rsplit_once('@') {
        Some((info, host)) => {
            let masked_info = match info.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!(
                "{}{masked_info}@{host}{}",
                &url[..scheme_end + 3],
                &after[authority_end..]
            )
        }
        None => url.to_string(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `user[:password]` of a URL, percent-decoded: `(user, password)`. A lone word is a
/// password (`redis://secret@host` is commonly meant for the default user).
fn parse_userinfo(info: &str) -> Result<(Option<String>, Option<Secret>), String> {
    let (user, pass) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    let user = percent_decode(user).ok_or("bad percent-encoding in the user")?;
    let user = (!user.is_empty()).then_some(user);
    match pass {
        Some(p) => {
            let p = percent_decode(p).ok_or("bad percent-encoding in the password")?;
            Ok((user, Some(Secret(p))))
        }
        None => Ok((None, user.map(Secret))),
    }
}

/// `host[:port]` or `[ipv6][:port]`; `default_port` when no port is given.
fn parse_host_port(hostport: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("an IPv6 host needs a closing ]")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("unexpected text after the IPv6 host".into()),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("the port must be a number from 1 to 65535")?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

impl Config {
    /// What a publish can be refused for by these limits alone, before it is queued
    /// anywhere: an invalid room or exclude id, or an envelope over `max_envelope_bytes`.
    /// Returns the envelope's encoded length (with trailer). [`crate::Hub::publish`] checks
    /// this first; an adapter can check it in the caller's task to refuse at once.
    #[inline]
    pub fn check_publish(
        &self,
        room: &str,
        data_len: usize,
        exclude: Option<&str>,
    ) -> Result<usize, crate::PublishError> {
        use crate::PublishError;
        crate::RoomId::check(room, self.max_room_id_bytes).map_err(PublishError::InvalidRoom)?;
        if let Some(c) = exclude {
            crate::ConnId::check(c, self.max_conn_id_bytes)
                .map_err(PublishError::InvalidExclude)?;
        }
        let len = crate::envelope::encoded_len(room, data_len, exclude, true);
        if len > self.max_envelope_bytes {
            return Err(PublishError::TooLarge {
                len,
                max: self.max_envelope_bytes,
            });
        }
        Ok(len)
    }

    /// [`Config::validate`] for cluster mode: also refuses a channel prefix with `{` or `}`,
    /// whose hash tag would put every room in one slot (see [`crate::cluster`]).
    pub fn validate_for_cluster(&self) -> Result<(), ConfigError> {
        self.validate()?;
        crate::cluster::check_cluster_prefix(&self.channel_prefix)
            .map_err(|e| bad("channel_prefix", e.to_string()))
    }
}

/// Most seed nodes a `redis+cluster://` URL may list.
pub const MAX_CLUSTER_SEEDS: usize = 64;

/// One seed node of a cluster URL: where the first `CLUSTER SHARDS` is asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeedNode {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// The servers of cluster mode (`redis+cluster://`): seed nodes, and the login and protocol
/// every node of the cluster shares. The cluster's nodes themselves are learnt from
/// `CLUSTER SHARDS` (see [`crate::cluster::Topology`]). There is no database: Redis Cluster
/// has only database 0, and pub/sub ignores databases anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterServers {
    /// The seed nodes, in the URL's order, each once.
    pub seeds: Vec<SeedNode>,
    /// Use TLS (`rediss+cluster://`) on every node.
    pub tls: bool,
    /// ACL user name; `None` logs in as the default user.
    pub username: Option<String>,
    /// Password; `None` sends no AUTH.
    pub password: Option<Secret>,
    /// RESP version.
    pub protocol: Protocol,
}

impl ClusterServers {
    /// The settings for a link to the node at `host:port` (a seed, or a node named by
    /// `CLUSTER SHARDS` or `-MOVED`): this cluster's login, TLS and protocol, database 0.
    pub fn node(&self, host: &str, port: u16) -> ServerConfig {
        ServerConfig {
            host: host.to_string(),
            port,
            tls: self.tls,
            username: self.username.clone(),
            password: self.password.clone(),
            db: 0,
            protocol: self.protocol,
        }
    }
}

/// What a Redis URL names: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://`: one server (classic pub/sub).
    Single(ServerConfig),
    /// `redis+cluster://` or `rediss+cluster://`: a Redis Cluster (sharded pub/sub).
    Cluster(ClusterServers),
}

/// Parses any Redis URL roomcast accepts: `redis://` and `rediss://` exactly as
/// [`parse_redis_url`] does, `redis+cluster://` and `rediss+cluster://` as
/// [`parse_cluster_url`] does. Cluster mode is chosen by the scheme only.
pub fn parse_redis_target(url: &str) -> Result<RedisTarget, ConfigError> {
    if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
        parse_cluster_url(url).map(RedisTarget::Cluster)
    } else {
        parse_redis_url(url).map(RedisTarget::Single)
    }
}

/// Parses `redis+cluster://[user[:password]@]host[:port][,host[:port]…][/0][?protocol=resp2|resp3]`
/// (`rediss+cluster://` for TLS). Each seed's port defaults to 6379; IPv6 hosts are written
/// in brackets. A database other than 0 is refused: a cluster has only database 0.
pub fn parse_cluster_url(url: &str) -> Result<ClusterServers, ConfigError> {
    let err = |reason: &str| ConfigError::BadClusterUrl {
        url: mask_url(url),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis+cluster://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss+cluster://") {
        (true, r)
    } else {
        return Err(err(
            "the scheme must be redis+cluster:// or rediss+cluster://",
        ));
    };
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(info) => parse_userinfo(info).map_err(|r| err(&r))?,
        None => (None, None),
    };
    let mut seeds: Vec<SeedNode> = Vec::new();
    for (i, hostport) in hosts.split(',').enumerate() {
        if hostport.is_empty() {
            return Err(err(&format!(
                "seed {} is empty; separate seeds with one comma, like host1:7000,host2:7000",
                i + 1
            )));
        }
        let (host, port) = parse_host_port(hostport, 6379)
            .map_err(|r| err(&format!("seed {} ({hostport:?}): {r}", i + 1)))?;
        let seed = SeedNode { host, port };
        if seeds.contains(&seed) {
            return Err(err(&format!(
                "seed {hostport:?} is listed twice; list each node once"
            )));
        }
        seeds.push(seed);
    }
    if seeds.len() > MAX_CLUSTER_SEEDS {
        return Err(err(&format!(
            "{} seeds is more than {MAX_CLUSTER_SEEDS}; a few nodes are enough, the others are found with CLUSTER SHARDS",
            seeds.len()
        )));
    }
    let no_db = |db: &str| {
        err(&format!(
            "database {db} was asked for, but Redis Cluster has only database 0 (and pub/sub \
             ignores databases); remove the database from the URL and separate \
             applications with the channel prefix (REDIS_CHANNEL_PREFIX)"
        ))
    };
    let path = path.trim_end_matches('/');
    if !path.is_empty() && path != "0" {
        return Err(no_db(path));
    }
    let mut protocol = Protocol::Resp2;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("protocol", "resp2" | "2") => protocol = Protocol::Resp2,
            ("protocol", "resp3" | "3") => protocol = Protocol::Resp3,
            ("protocol", _) => return Err(err("protocol must be resp2 or resp3")),
            ("db", "0") => {}
            ("db", v) => return Err(no_db(v)),
            (k, _) => {
                return Err(err(&format!(
                    "unknown query parameter {k:?} (known: protocol)"
                )))
            }
        }
    }
    Ok(ClusterServers {
        seeds,
        tls,
        username,
        password,
        protocol,
    })
}

#[cfg(test)]
mod cluster_url_tests {
    use super::*;

    fn seeds(c: &ClusterServers) -> Vec<(&str, u16)> {
        c.seeds.iter().map(|s| (s.host.as_str(), s.port)).collect()
    }

    #[test]
    fn parses_cluster_urls() {
        let c = parse_cluster_url("redis+cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002").unwrap();
        assert_eq!(
            seeds(&c),
            vec![("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)]
        );
        assert_eq!((c.tls, c.protocol), (false, Protocol::Resp2));
        assert_eq!((c.username.as_deref(), c.password.as_ref()), (None, None));
        let c =
            parse_cluster_url("rediss+cluster://al%40ice:p%2Cw@h1:7000,h2:7001/0?protocol=resp3")
                .unwrap();
        assert!(c.tls);
        assert_eq!(c.protocol, Protocol::Resp3);
        assert_eq!(c.username.as_deref(), Some("al@ice"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p,w"));
        assert_eq!(seeds(&c), vec![("h1", 7000), ("h2", 7001)]);
        let node = c.node("10.1.1.1", 7005);
        assert_eq!(
            (node.host.as_str(), node.port, node.db),
            ("10.1.1.1", 7005, 0)
        );
        assert!(node.tls);
        assert_eq!(node.username.as_deref(), Some("al@ice"));
        assert_eq!(node.protocol, Protocol::Resp3);
        let c = parse_cluster_url("redis+cluster://secret@h?db=0").unwrap();
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("secret"));
        assert_eq!(c.username, None);
    }

    #[test]
    fn the_scheme_chooses_the_mode() {
        assert!(matches!(
            parse_redis_target("redis+cluster://h:7000").unwrap(),
            RedisTarget::Cluster(c) if seeds(&c) == vec![("h", 7000)]
        ));
        assert_eq!(
            parse_redis_target("rediss://u:p@h:6380/3?protocol=resp3").unwrap(),
            RedisTarget::Single(parse_redis_url("rediss://u:p@h:6380/3?protocol=resp3").unwrap())
        );
        // The single-server parser says where a cluster URL goes.
        let e = parse_redis_url("redis+cluster://h:7000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("parse_redis_target"), "{e}");
        let e = parse_redis_url("redis://h1:7000,h2:7001")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis+cluster://"), "{e}");
    }

    #[test]
    fn refuses_bad_cluster_urls_saying_what_to_write() {
        for (url, needle) in [
            ("redis+cluster://h:7000/1", "only database 0"),
            ("redis+cluster://h:7000/", ""),
            ("redis+cluster://h:7000?db=2", "only database 0"),
            ("redis+cluster://h:7000/x", "only database 0"),
            ("redis+cluster://", "seed 1 is empty"),
            ("redis+cluster://h1:7000,,h2", "seed 2 is empty"),
            ("redis+cluster://h1:7000,", "seed 2 is empty"),
            (
                "redis+cluster://h1:7000,h2:0",
                "seed 2 (\"h2:0\"): the port",
            ),
            ("redis+cluster://h1:7000,[::1", "closing ]"),
            ("redis+cluster://h:1,h:1", "listed twice"),
            ("redis+cluster://h?protocol=resp4", "resp2 or resp3"),
            ("redis+cluster://h?timeout=3", "unknown query parameter"),
            ("redis://h", "redis+cluster://"),
            ("rediss+cluster://u:hunter2@h:0", "port"),
        ] {
            match parse_cluster_url(url) {
                Ok(_) if needle.is_empty() => {}
                Ok(c) => panic!("{url} was accepted: {c:?}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!needle.is_empty() && e.contains(needle), "{url}: {e}");
                    assert!(e.contains("expected redis+cluster://"), "{e}");
                    assert!(!e.contains("hunter2"), "password leaked: {e}");
                }
            }
        }
        let braces = Config {
            channel_prefix: "{app}".into(),
            ..Config::default()
        };
        braces.validate().expect("fine for one server");
        let e = braces.validate_for_cluster().unwrap_err().to_string();
        assert!(
            e.starts_with("invalid channel_prefix") && e.contains("one hash slot"),
            "{e}"
        );
        Config::default().validate_for_cluster().unwrap();
        let many: Vec<String> = (1..=MAX_CLUSTER_SEEDS + 1)
            .map(|p| format!("h:{p}"))
            .collect();
        let e = parse_cluster_url(&format!("redis+cluster://{}", many.join(",")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a few nodes are enough"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_makes_a_cluster_config_with_its_own_rules() {
        let c = Config::from_url("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap();
        let cluster = c.cluster.as_ref().expect("cluster mode");
        assert_eq!(cluster.seeds.len(), 2);
        // `server` holds the first seed's settings; presence is on, as with one server.
        assert_eq!(
            (c.server.host.as_str(), c.server.port, c.server.db),
            ("10.0.0.1", 7000, 0)
        );
        assert_eq!(c.server.password.as_ref().map(Secret::expose), Some("pw"));
        assert!(c.presence);
        c.validate().unwrap();
        // The environment accepts it too.
        let (env, _) = Config::from_env_with(|k| {
            (k == ENV_REDIS_URL).then(|| "rediss+cluster://h:7000".to_string())
        })
        .unwrap();
        assert!(env.cluster.as_ref().is_some_and(|c| c.tls));
        // Presence is accepted, on or off: its keys share one hash slot.
        Config {
            presence: false,
            ..c.clone()
        }
        .validate()
        .unwrap();
        // A prefix with a hash tag would put every room in one slot.
        let e = Config {
            channel_prefix: "{app}".into(),
            ..c.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("channel_prefix"), "{e}");
        // Neither rule applies to one server.
        let single = Config {
            channel_prefix: "{app}".into(),
            ..Config::from_url("redis://h:6379").unwrap()
        };
        assert!(single.cluster.is_none() && single.presence);
        single.validate().unwrap();
        // A database other than 0 stays refused in the URL.
        assert!(Config::from_url("redis+cluster://h:7000/1").is_err());
    }

    #[test]
    fn parses_full_url() {
        let s =
            parse_redis_url("rediss://alice:p%40ss@redis.example:6380/5?protocol=resp3").unwrap();
        assert!(s.tls);
        assert_eq!(s.host, "redis.example");
        assert_eq!(s.port, 6380);
        assert_eq!(s.username.as_deref(), Some("alice"));
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(s.db, 5);
        assert_eq!(s.protocol, Protocol::Resp3);
    }

    #[test]
    fn parses_defaults_and_ipv6() {
        let s = parse_redis_url("redis://127.0.0.1").unwrap();
        assert_eq!((s.port, s.db, s.tls), (6379, 0, false));
        assert_eq!(s.protocol, Protocol::Resp2);
        let s = parse_redis_url("redis://[::1]:7000/").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 7000));
        let s = parse_redis_url("redis://:onlypass@h").unwrap();
        assert_eq!(s.username, None);
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("onlypass"));
        let s = parse_redis_url("redis://onlypass@h").unwrap();
        assert_eq!(s.username, None);
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("onlypass"));
    }

    #[test]
    fn rejects_bad_urls_with_reasons_and_no_password() {
        for (url, needle) in [
            ("http://h", "scheme"),
            ("redis://", "host is empty"),
            ("redis://h:99999", "port"),
            ("redis://h/x", "database number"),
            ("redis://h?protocol=resp9", "resp2 or resp3"),
            ("redis://u:hunter2@h:0", "port"),
        ] {
            let e = parse_redis_url(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains("hunter2"), "password leaked: {e}");
        }
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = Config::from_url("redis://bob:hunter2@localhost/1").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"));
        assert!(dbg.contains("***"));
        assert_eq!(mask_url("redis://bob:hunter2@h/1"), "redis://bob:***@h/1");
        assert_eq!(mask_url("redis://hunter2@h"), "redis://***@h");
    }

    #[test]
    fn env_lookup_with_fallback_pool_size() {
        let env = |k: &str| match k {
            ENV_REDIS_URL => Some("redis://10.0.0.1:7001".to_string()),
            ENV_CHANNEL_PREFIX => Some("app".to_string()),
            ENV_POOL_SIZE => Some("lots".to_string()),
            _ => None,
        };
        let (c, warnings) = Config::from_env_with(env).unwrap();
        assert_eq!(c.server.port, 7001);
        assert_eq!(c.channel_prefix, "app");
        assert_eq!(c.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(warnings.len(), 1);
        let (c, warnings) =
            Config::from_env_with(|k| (k == ENV_POOL_SIZE).then(|| "3".to_string())).unwrap();
        assert_eq!((c.pool_size, c.server.port), (3, 6379));
        assert!(warnings.is_empty());
        assert_eq!(c.channel_prefix, "graphwiz");
    }

    #[test]
    fn validate_names_the_field() {
        let c = Config {
            subscribe_batch: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("subscribe_batch"));
        let c = Config {
            channel_prefix: String::new(),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("channel_prefix"));
        Config::default().validate().unwrap();
    }
}
