//! Helpers shared by the integration tests and the benchmark: crafted
//! packets for BPF_PROG_TEST_RUN, and network-namespace topologies that
//! clean up after themselves.

pub mod netns;
pub mod packet;
