//! The commands the model implements, with their arities as redis-server 7.0.15's
//! `COMMAND` reply lists them: what roomcast sends, what the tests use to look at the
//! server's state, and the containers of their subcommands. Any other name gets Redis's
//! `unknown command` (or `unknown subcommand`) error.

/// Every command and subcommand (`container|sub`) the model implements, with its Redis
/// 7.0.15 arity (negative: at least that many arguments, command name included). Sorted by
/// name.
pub const REDIS_7_0_COMMANDS: &[(&str, i32)] = &[
    ("auth", -2),
    ("client", -2),
    ("client|getname", 2),
    ("client|id", 2),
    ("client|setname", 3),
    ("dbsize", 1),
    ("del", -2),
    ("discard", 1),
    ("echo", 2),
    ("eval", -3),
    ("evalsha", -3),
    ("exec", 1),
    ("exists", -2),
    ("expire", -3),
    ("flushall", -1),
    ("flushdb", -1),
    ("get", 2),
    ("hdel", -3),
    ("hello", -1),
    ("hget", 3),
    ("hgetall", 2),
    ("hlen", 2),
    ("hset", -4),
    ("keys", 2),
    ("multi", 1),
    ("persist", 2),
    ("pexpire", -3),
    ("ping", -1),
    ("pttl", 2),
    ("publish", 3),
    ("pubsub", -2),
    ("pubsub|channels", -2),
    ("pubsub|numsub", -2),
    ("pubsub|shardchannels", -2),
    ("pubsub|shardnumsub", -2),
    ("quit", -1),
    ("reset", 1),
    ("sadd", -3),
    ("scard", 2),
    ("script", -2),
    ("script|exists", -3),
    ("script|flush", -2),
    ("script|load", 3),
    ("select", 2),
    ("set", -3),
    ("sismember", 3),
    ("smembers", 2),
    ("spublish", 3),
    ("srem", -3),
    ("ssubscribe", -2),
    ("subscribe", -2),
    ("sunsubscribe", -1),
    ("ttl", 2),
    ("type", 2),
    ("unsubscribe", -1),
];

/// Commands whose first argument names a subcommand.
pub const CONTAINERS: &[&str] = &["client", "pubsub", "script"];
