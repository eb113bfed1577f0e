//! The IPv4 and the IPv6 halves of a large job at once: an apply compiles,
//! records and writes the two families' address tables, which share
//! nothing, on two threads.

/// Stack of the second thread. Its buffers are on the heap; glibc keeps a
/// finished thread's stack for the next, with the pages it touched.
const STACK: usize = 512 << 10;

/// Runs `v4` on this thread and `v6` on a second one, named `name`, at
/// once; `v6` runs after `v4` on this thread when the system has no second
/// thread to give. `Err`: `v6` panicked on its thread (the panic's
/// payload, for the caller to report or resume).
pub(crate) fn both<R4, R6: Send>(
    name: &str,
    v4: impl FnOnce() -> R4,
    v6: impl FnOnce() -> R6 + Send + Copy,
) -> (R4, std::thread::Result<R6>) {
    std::thread::scope(|s| {
        let ipv6 = std::thread::Builder::new()
            .name(name.into())
            .stack_size(STACK)
            .spawn_scoped(s, v6);
        let r4 = v4();
        let r6 = match ipv6 {
            Ok(thread) => thread.join(),
            Err(_) => Ok(v6()),
        };
        (r4, r6)
    })
}
