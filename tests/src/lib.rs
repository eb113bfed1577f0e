//! Helpers shared by the integration tests and the benchmark: crafted
//! packets for BPF_PROG_TEST_RUN, network-namespace topologies that clean
//! up after themselves, a reference classifier for differential fuzzing,
//! and real endpoints for the connection tests: nginx and wrk (`web`), a
//! counting TCP server and connection openers (`tcp`), and an `ss` sampler
//! of established connections (`ss`).

pub mod netns;
pub mod packet;
pub mod reference;
pub mod ss;
pub mod tcp;
pub mod web;
