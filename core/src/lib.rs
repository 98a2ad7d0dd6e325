//! roomcast-core (crate docs are written with the hub).
#![forbid(unsafe_code)]

pub mod envelope;
pub mod naming;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
