//! Helpers shared by the integration tests and the benchmark: crafted
//! packets for BPF_PROG_TEST_RUN, network-namespace topologies that clean
//! up after themselves, and a reference classifier for differential fuzzing.

pub mod netns;
pub mod packet;
pub mod reference;

/// Pins the calling thread to `cpu`, so two threads charge a map from two
/// CPUs at once.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
