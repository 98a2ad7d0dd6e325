//! `roomcast_sim::fuzz::link_input` under libFuzzer; the body and its checks live in the core.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_sim::fuzz::link_input(data));
