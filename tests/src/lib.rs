//! Helpers shared by the integration tests and the benchmark: crafted
//! packets for BPF_PROG_TEST_RUN, network-namespace topologies that clean
//! up after themselves, a reference classifier for differential fuzzing,
//! and real endpoints for the connection tests: nginx and wrk (`web`), a
//! counting TCP server and connection openers (`tcp`), and an `ss` sampler
//! of established connections (`ss`) and the agent's connection table
//! (`conn_table`); crowds of sources at scheduled rates
//! and per-source tallies (`sources`) and the agent's events as a test
//! reads them (`events`) for the detection tests, and the benchmark's
//! detection scenarios: rates changed while they run (`scenario`); one
//! loaded datapath that a suite's tests take in turn (`shared`).

pub mod conn_table;
pub mod events;
pub mod flood;
pub mod flow;
pub mod netns;
pub mod packet;
pub mod reference;
pub mod scenario;
pub mod shared;
pub mod sources;
pub mod ss;
pub mod tcp;
pub mod web;

/// Pins the calling thread to `cpu`: two threads then charge a map, or
/// send, from two CPUs at once.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    pin_to_cpus(&[cpu])
}

/// Gives the calling thread the lowest priority (nice 19), for load
/// generators: the threads that observe the load (the test's own readings,
/// the agent, the servers) then run first whenever they are ready.
pub fn lower_priority() -> anyhow::Result<()> {
    // SAFETY: no pointers; on Linux the nice value is per thread, and the
    // thread id names the calling thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if rc != 0 {
        anyhow::bail!("setpriority(nice 19): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Lets the calling thread run on `cpus` only.
pub fn pin_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it;
    // pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "sched_setaffinity({cpus:?}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}
