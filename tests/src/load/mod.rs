//! The load generator's parts (used by `src/bin/roomcast-load.rs`).

pub mod bench;
pub mod common;
#[cfg(feature = "peers")]
pub mod peers;
pub mod rc;
