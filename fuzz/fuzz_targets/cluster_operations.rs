//! `roomcast_sim::fuzz::cluster_operations` under libFuzzer; the body and its checks live in
//! the simulation crate.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_sim::fuzz::cluster_operations(data));
