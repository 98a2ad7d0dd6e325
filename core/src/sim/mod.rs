//! Simulation: a model Redis and a harness that drives hubs against it over byte queues.
//!
//! Compiled for the crate's own tests and with the `sim` feature (property tests, fuzz
//! targets and benches use it).
pub mod harness;
pub mod model;
pub mod scripts;

pub use harness::{Node, Sim, Split};
pub use model::{ClientId, ModelConfig, ModelRedis};
