//! The datapath's two clocks, both `CLOCK_MONOTONIC`: the fine one where
//! nanoseconds matter, the coarse one where a tick's resolution does.

use aya_ebpf::helpers::bpf_ktime_get_ns;

/// The coarse clock (`bpf_ktime_get_coarse_ns`, Linux 5.11): the same
/// monotonic clock as `bpf_ktime_get_ns` at tick resolution (it lags it by
/// less than a tick), without reading the TSC: a fraction of the fine
/// clock's cost, which was 10-12% of a limited packet's `perf` samples
/// during `bench classify` on this machine kind (about 15-20 ns). All that idle timeouts of seconds, hints of 100 ms and the
/// deep buckets of `drop` channels need (`ChannelPolicy::coarse_clock`).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: helper 160 is bpf_ktime_get_coarse_ns (no arguments, no
    // preconditions); aya-ebpf 0.2 has no binding for it yet.
    unsafe {
        let f: unsafe extern "C" fn() -> u64 = core::mem::transmute(160usize);
        f()
    }
}

/// The fine clock, for what needs nanoseconds: a departure time for fq,
/// the buckets of `delay` and `mark` channels and buckets shallower than
/// a few ticks (`ChannelPolicy::coarse_clock`), a SYN's time (the handshake time
/// starts there) and the new-connection rate.
#[inline(always)]
pub fn fine_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}
