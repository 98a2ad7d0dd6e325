//! Naming (being written).
