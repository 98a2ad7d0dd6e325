//! Simulation: a model Redis and a harness that drives hubs against it over byte queues.
pub mod model;
