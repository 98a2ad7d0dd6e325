//! Test harness for roomcast integration tests.
//!
//! [`RedisServer`] starts a private `redis-server` on a free loopback port for one test (and
//! kills it when dropped); [`RespClient`] is a tiny blocking RESP client for setting things
//! up and injecting faults (`CLIENT KILL`, `DEBUG SLEEP`, `ACL SETUSER`, ...) from the side.
//! [`RedisCluster`] starts a private six-node Redis Cluster (three masters, three replicas)
//! and moves slots, fails shards over and kills masters on request.
//! No runtime and no client crate is used here, so the harness works under any runtime.
//!
//! `redis-server` must be installed: `bash scripts/test.sh` installs it when missing.

pub mod redis_cluster;
/// The private `redis-server` launcher and RESP client, from `roomcast` (feature `cli`): one
/// for the whole workspace.
pub mod redis_server {
    pub use roomcast::redis_server::*;
}

pub use redis_cluster::{Failover, Promotion, RedisCluster};
pub use redis_server::{wait_until, HarnessError, RedisServer, RespClient, RespReply};
