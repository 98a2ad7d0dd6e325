//! Envelope (being written).
