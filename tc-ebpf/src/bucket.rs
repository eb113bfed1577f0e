//! Shared token buckets, as GCRA (the virtual-scheduling form of a token
//! bucket): one `u64` theoretical arrival time (TAT) per bucket, advanced with
//! compare-and-swap so both CPUs can charge the same channel without a lock
//! and without splitting the rate per CPU.
//!
//! A packet of cost `c` conforms when `max(tat, now) + c - now <= tau`, where
//! `tau` is the burst expressed as time; that is exactly a token bucket of
//! depth `tau` refilled from elapsed time: continuously on the fine clock,
//! a tick at a time on the coarse one (`ChannelPolicy::coarse_clock`).

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use tc_common::{BucketState, ChannelPolicy};

/// CAS attempts before falling back to fetch-and-add. With two CPUs a
/// second attempt almost always wins; every attempt is code the verifier
/// walks, at each call site, so keep this small.
const CAS_TRIES: usize = 4;

pub enum Conformance {
    /// Within the limits; the buckets were charged.
    Conform,
    /// Over a limit; nothing was charged.
    Exceed,
    /// Within the limits, but charged by the fetch-and-add fallback after
    /// losing the CAS race `CAS_TRIES` times (counted).
    Contended,
}

/// Takes back a charge of `cost` from a bucket: a packet that a later
/// check refused must cost nothing. An add, not a store, so it cannot undo
/// what the other CPU charged meanwhile.
///
/// # Safety
/// `tat` must point into a live map value.
#[inline(always)]
unsafe fn refund(tat: *mut u64, cost: u64) {
    // SAFETY: caller guarantees `tat` is valid; the result is unused, so
    // this lowers to BPF_ATOMIC_ADD.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(tat, cost.wrapping_neg()) };
}

/// Charges one GCRA bucket. Returns `Conform`, `Exceed` or `Contended`.
///
/// # Safety
/// `tat` must point into a live map value.
#[inline(always)]
unsafe fn charge(tat: *mut u64, now: u64, cost: u64, tau: u64) -> Conformance {
    // SAFETY: caller guarantees `tat` is valid; a racy read is fine because
    // the CAS below only succeeds against the value we read.
    let mut old = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_TRIES {
        let base = if old > now { old } else { now };
        let new = base + cost;
        if new - now > tau {
            return Conformance::Exceed;
        }
        // SAFETY: as above; lowers to BPF_ATOMIC_CMPXCHG (needs -mcpu=v3).
        let (seen, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, old, new,
            )
        };
        if ok {
            return Conformance::Conform;
        }
        old = seen;
    }
    // The bucket is that busy, so its TAT is at or past now: charge with
    // fetch-and-add, which cannot lose a race, and take the charge back if
    // it overflows the bucket. (Were the TAT behind now, this would grant
    // at most that lag in extra credit, once.)
    // SAFETY: as above; lowers to BPF_ATOMIC_FETCH_ADD.
    let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(tat, cost) };
    // `(before + cost).saturating_sub(now) > tau`, without the saturation:
    // its zero would meet `tau` in a branch the verifier decides from
    // known values, which marks `tau` and the charge precise and keeps the
    // states of every path before apart. `now + tau` does not wrap: `tau`
    // is at most 2e17 ns (the policy's largest, 1e17, doubled by `mark`'s
    // second burst) or `UNBOUNDED_NS`, and the clock counts from boot.
    if before + cost > now + tau {
        // SAFETY: as above.
        unsafe { refund(tat, cost) };
        return Conformance::Exceed;
    }
    Conformance::Contended
}

/// Charges `cost` to one GCRA bucket (a channel's new-connection rate);
/// true when it conforms.
///
/// # Safety
/// `tat` must point into a live map value.
#[inline(always)]
pub unsafe fn charge_once(tat: *mut u64, now: u64, cost: u64, tau: u64) -> bool {
    // SAFETY: caller guarantees `tat` is valid.
    !matches!(unsafe { charge(tat, now, cost, tau) }, Conformance::Exceed)
}

/// Charges a packet of `len` bytes and `segs` segments to the channel's
/// packet bucket, then its byte bucket, with buckets `bursts` times as deep
/// as configured (`mark` lets ECN-capable packets use a second burst). If
/// the byte bucket refuses, the packet-bucket charge is refunded so a
/// dropped packet costs nothing.
///
/// # Safety
/// `bucket` must point into a live map value.
#[inline(always)]
pub unsafe fn conform(
    bucket: *mut BucketState,
    policy: &ChannelPolicy,
    now: u64,
    len: u64,
    segs: u64,
    bursts: u64,
) -> Conformance {
    let mut pkt_charged = 0u64;
    let mut contended = false;
    if policy.pkt_cost_q16 != 0 {
        let cost = (segs * policy.pkt_cost_q16) >> 16;
        // SAFETY: caller guarantees `bucket` is valid.
        match unsafe {
            charge(
                &raw mut (*bucket).pkt_tat,
                now,
                cost,
                policy.pkt_tau_ns * bursts,
            )
        } {
            Conformance::Conform => pkt_charged = cost,
            Conformance::Contended => {
                pkt_charged = cost;
                contended = true;
            }
            Conformance::Exceed => return Conformance::Exceed,
        }
    }
    if policy.byte_cost_q16 != 0 {
        let cost = (len * policy.byte_cost_q16) >> 16;
        // SAFETY: caller guarantees `bucket` is valid.
        match unsafe {
            charge(
                &raw mut (*bucket).byte_tat,
                now,
                cost,
                policy.byte_tau_ns * bursts,
            )
        } {
            Conformance::Conform => {}
            Conformance::Exceed => {
                if pkt_charged != 0 {
                    // SAFETY: as above.
                    unsafe { refund(&raw mut (*bucket).pkt_tat, pkt_charged) };
                }
                return Conformance::Exceed;
            }
            Conformance::Contended => contended = true,
        }
    }
    if contended {
        Conformance::Contended
    } else {
        Conformance::Conform
    }
}

/// The depth [`debit`] charges with: one that never refuses (2^62 ns,
/// 146 years of debt), yet small enough that `charge`'s `now + tau` cannot
/// wrap, as `u64::MAX` would.
const UNBOUNDED_NS: u64 = 1 << 62;

/// Charges a packet that passes whatever the buckets hold: a later
/// fragment of a datagram whose first fragment passed. The buckets go into
/// debt, so the channel refuses the next datagrams instead of cutting this
/// one, and the rate holds over time.
///
/// # Safety
/// `bucket` must point into a live map value.
#[inline(always)]
pub unsafe fn debit(
    bucket: *mut BucketState,
    policy: &ChannelPolicy,
    now: u64,
    len: u64,
    segs: u64,
) -> Conformance {
    let mut contended = false;
    if policy.pkt_cost_q16 != 0 {
        let cost = (segs * policy.pkt_cost_q16) >> 16;
        // SAFETY: caller guarantees `bucket` is valid.
        contended |= matches!(
            unsafe { charge(&raw mut (*bucket).pkt_tat, now, cost, UNBOUNDED_NS) },
            Conformance::Contended
        );
    }
    if policy.byte_cost_q16 != 0 {
        let cost = (len * policy.byte_cost_q16) >> 16;
        // SAFETY: as above.
        contended |= matches!(
            unsafe { charge(&raw mut (*bucket).byte_tat, now, cost, UNBOUNDED_NS) },
            Conformance::Contended
        );
    }
    if contended {
        Conformance::Contended
    } else {
        Conformance::Conform
    }
}

/// Reserves a packet's transmission in one bucket for earliest-departure-time
/// pacing: returns when it may leave (now, while the bucket holds enough
/// tokens), or `None`, charging nothing, if that is more than `horizon` away.
///
/// # Safety
/// `tat` must point into a live map value.
#[inline(always)]
unsafe fn schedule_one(tat: *mut u64, now: u64, cost: u64, tau: u64, horizon: u64) -> Option<u64> {
    // SAFETY: as in `charge`.
    let mut old = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_TRIES {
        let base = if old > now { old } else { now };
        let new = base + cost;
        let depart = if new - now > tau { new - tau } else { now };
        if depart - now > horizon {
            return None;
        }
        // SAFETY: as in `charge`.
        let (seen, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, old, new,
            )
        };
        if ok {
            return Some(depart);
        }
        old = seen;
    }
    // As in `charge`: fetch-and-add cannot lose the race.
    // SAFETY: as in `charge`.
    let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(tat, cost) };
    // max((before + cost).saturating_sub(tau), now), without the
    // saturation (see `charge`).
    let depart = if before + cost > now + tau {
        before + cost - tau
    } else {
        now
    };
    if depart - now > horizon {
        // SAFETY: as in `charge`.
        unsafe { refund(tat, cost) };
        return None;
    }
    Some(depart)
}

/// EDT for a packet: its departure time from both buckets (the later of
/// the two), or `None` if it would leave beyond the channel's horizon, in
/// which case nothing stays charged.
///
/// # Safety
/// `bucket` must point into a live map value.
#[inline(always)]
pub unsafe fn schedule(
    bucket: *mut BucketState,
    policy: &ChannelPolicy,
    now: u64,
    len: u64,
    segs: u64,
) -> Option<u64> {
    let mut depart = now;
    let mut pkt_charged = 0u64;
    if policy.pkt_cost_q16 != 0 {
        let cost = (segs * policy.pkt_cost_q16) >> 16;
        // SAFETY: caller guarantees `bucket` is valid.
        let t = unsafe {
            schedule_one(
                &raw mut (*bucket).pkt_tat,
                now,
                cost,
                policy.pkt_tau_ns,
                policy.horizon_ns,
            )
        }?;
        depart = t;
        pkt_charged = cost;
    }
    if policy.byte_cost_q16 != 0 {
        let cost = (len * policy.byte_cost_q16) >> 16;
        // SAFETY: caller guarantees `bucket` is valid.
        match unsafe {
            schedule_one(
                &raw mut (*bucket).byte_tat,
                now,
                cost,
                policy.byte_tau_ns,
                policy.horizon_ns,
            )
        } {
            Some(t) => {
                if t > depart {
                    depart = t;
                }
            }
            None => {
                if pkt_charged != 0 {
                    // SAFETY: as above.
                    unsafe { refund(&raw mut (*bucket).pkt_tat, pkt_charged) };
                }
                return None;
            }
        }
    }
    Some(depart)
}

/// Whether either bucket is more than a quarter used: past that depth,
/// `mark` tells a sender that runs over the rate to slow down. Deep enough
/// that a classic-ECN sender's sawtooth below the rate is paid from the
/// burst rather than lost to a full bucket, shallow enough that slow start
/// is told before it overshoots past the burst (measured: a half-used
/// threshold let slow start run into the second burst and drop).
///
/// # Safety
/// `bucket` must point into a live map value.
#[inline(always)]
pub unsafe fn past_mark_depth(
    bucket: *const BucketState,
    policy: &ChannelPolicy,
    now: u64,
) -> bool {
    // SAFETY: caller guarantees `bucket` is valid; a racy read only shifts
    // the marking threshold by one packet.
    let (byte_tat, pkt_tat) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*bucket).byte_tat),
            core::ptr::read_volatile(&raw const (*bucket).pkt_tat),
        )
    };
    // `tat.saturating_sub(now) * 4 > tau`, without the saturation (see
    // `charge`): 4x > tau exactly when x > tau / 4 (integer division).
    (policy.byte_cost_q16 != 0 && byte_tat > now + policy.byte_tau_ns / 4)
        || (policy.pkt_cost_q16 != 0 && pkt_tat > now + policy.pkt_tau_ns / 4)
}

/// Whether the channel runs over its rate right now, from a shallow GCRA at
/// the channel's rate (`rate_tat`) that every passing packet of a `mark`
/// channel charges.
///
/// Its depth is two 64 KiB GSO packets' worth at the byte rate (or 90
/// segments at the packet rate), at most half the burst: enough that a
/// sender at the rate with TSO bursts conforms, short enough that the
/// answer changes within a round trip of the sender slowing down. This is
/// the signal `mark` needs: the deep bucket's level is an integral, and
/// marking on it alone keeps marking for as long as a debt takes to repay,
/// so a classic-ECN sender halves again every round trip until it starves.
///
/// A signal, not a limit: a plain load and store, and a packet over the
/// shallow bucket is not charged to it.
///
/// # Safety
/// `bucket` must point into a live map value.
#[inline(always)]
pub unsafe fn over_rate(
    bucket: *mut BucketState,
    policy: &ChannelPolicy,
    now: u64,
    len: u64,
    segs: u64,
) -> bool {
    let cost = time_cost(policy, len, segs);
    // 128 KiB at the byte rate: (131072 * cost_q16) >> 16.
    let window = (policy.byte_cost_q16 * 2)
        .max((90 * policy.pkt_cost_q16) >> 16)
        .min(policy.byte_tau_ns.max(policy.pkt_tau_ns) / 2);
    // SAFETY: caller guarantees `bucket` is valid.
    let tat = unsafe { core::ptr::read_volatile(&raw const (*bucket).rate_tat) };
    let next = if tat > now { tat } else { now } + cost;
    if next - now > window {
        return true;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut (*bucket).rate_tat, next) };
    false
}

/// A packet's cost in time at the channel's rates: the larger of its byte
/// and packet costs, for the per-channel and per-flow clocks that follow
/// the channel's rate without being one of its buckets.
#[inline(always)]
pub fn time_cost(policy: &ChannelPolicy, len: u64, segs: u64) -> u64 {
    ((len * policy.byte_cost_q16) >> 16).max((segs * policy.pkt_cost_q16) >> 16)
}
