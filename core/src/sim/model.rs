//! Model Redis (being written).
