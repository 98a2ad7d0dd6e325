//! roomcast
