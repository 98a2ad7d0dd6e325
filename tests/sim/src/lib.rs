//! The simulation of roomcast, for its tests and fuzz targets only (never published).
//!
//! - [`model`]: a model Redis over byte queues, checked against transcripts captured from
//!   redis-server (`tests/transcripts/`), with the faults tests inject, and a model Redis
//!   Cluster of such nodes ([`ModelCluster`]: slots, `MOVED`, migrations, failovers);
//! - [`harness`]: [`Sim`], several hubs driven against the model as an adapter drives them,
//!   with a virtual clock, deterministic iteration and seeded input splitting, so every run
//!   replays from its seed;
//! - [`oracle`]: an independent model of membership and the delivery checks (safety and
//!   liveness) that property tests and the `operations` fuzz target share;
//! - [`fuzz`]: the fuzz target bodies that `fuzz/` wraps and `tests/fuzz_corpus_replay.rs`
//!   replays.
#![forbid(unsafe_code)]

pub mod fuzz;
pub mod harness;
pub mod model;
pub mod oracle;
pub mod scripts;

pub use harness::{Node, Sim, Split, TimerMode};
pub use model::{ClientId, ClusterLayout, ModelCluster, ModelConfig, ModelRedis};
