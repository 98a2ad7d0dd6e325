//! The load generator's parts (used by `src/bin/roomcast-load.rs`).

pub mod bench;
pub mod cluster;
pub mod common;
pub mod migration;
#[cfg(feature = "peers")]
pub mod peers;
#[cfg(feature = "peers")]
pub mod raw;
pub mod rc;
