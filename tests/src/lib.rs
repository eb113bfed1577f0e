//! Helpers shared by the integration tests and the benchmark: crafted
//! packets for BPF_PROG_TEST_RUN, network-namespace topologies that clean
//! up after themselves, and a reference classifier for differential fuzzing.

pub mod netns;
pub mod packet;
pub mod reference;
