//! Test harness for roomcast integration tests.
