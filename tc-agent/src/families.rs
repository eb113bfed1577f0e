//! The IPv4 and the IPv6 halves of a large job at once: an apply compiles,
//! records and writes the two families' address tables, which share
//! nothing, on two threads.

/// Stack of the second thread. Its buffers are on the heap; glibc keeps a
/// finished thread's stack for the next, with the pages it touched.
const STACK: usize = 512 << 10;

/// Runs `v4` on this thread and `v6` on a second one, named `name`, at
/// once; `v6` runs after `v4` on this thread when the system has no second
/// thread to give. `Err`: `v6` panicked, on either thread (the panic's
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
            Err(_) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(v6)),
        };
        (r4, r6)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_and_a_panic_comes_back() {
        let (a, b) = both("test-ipv6", || 4, || 6);
        assert_eq!((a, b.unwrap()), (4, 6));
        let (a, b) = both("test-ipv6", || 4, || -> u8 { panic!("the IPv6 half") });
        assert_eq!(a, 4);
        let payload = b.unwrap_err();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"the IPv6 half"));
    }
}
