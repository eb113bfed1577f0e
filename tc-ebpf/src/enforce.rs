//! Verdicts: a classified packet is charged to its channel's buckets and
//! passed, dropped, delayed (EDT) or marked, and counted.

use tc_common::{
    BucketState, ChannelPolicy, GlobalCounters, ACTION_DELAY, ACTION_MARK, MODE_MONITOR, PACE_SLOTS,
};

use crate::{
    bucket::{conform, debit, over_rate, past_mark_depth, schedule, time_cost, Conformance},
    clock::{coarse_ns, fine_ns},
    maps::{TC_BUCKETS, TC_COUNTERS, TC_PACE, TC_POLICIES},
    parse::{Addrs, Parsed},
};

/// What the datapath decided for one packet. A plain struct rather than an
/// enum with payloads: LLVM may fill an unused payload with any register,
/// a packet pointer included, which the verifier then refuses.
pub struct Verdict {
    /// `PASS`, `DROP`, `DELAY` or `MARK`.
    pub action: u8,
    /// `DELAY`: the earliest departure time, the fine clock (fq compares
    /// it with `CLOCK_MONOTONIC`).
    pub tstamp: u64,
    /// `MARK`: offset of the IP header to set CE in.
    pub l3: u32,
    /// `MARK`: the header is IPv6.
    pub v6: bool,
}

pub const PASS: u8 = 0;
pub const DROP: u8 = 1;
pub const DELAY: u8 = 2;
pub const MARK: u8 = 3;
/// Answer the packet (a refused SYN) with a TCP RST.
pub const RESET: u8 = 4;

/// How [`enforce`] treats a packet: judge it on its own...
pub const JUDGE: u8 = 0;
/// ...pass it and charge it whatever the buckets hold (a later fragment of
/// a datagram whose first fragment passed: the debt refuses the next
/// datagrams instead, so the rate holds and no datagram is cut)...
pub const FOLLOW_PASS: u8 = 1;
/// ...or drop it (a later fragment of a dropped datagram).
pub const FOLLOW_DROP: u8 = 2;

impl Verdict {
    pub const PASS: Self = Self {
        action: PASS,
        tstamp: 0,
        l3: 0,
        v6: false,
    };
    pub const RESET: Self = Self {
        action: RESET,
        tstamp: 0,
        l3: 0,
        v6: false,
    };
    pub const DROP: Self = Self {
        action: DROP,
        tstamp: 0,
        l3: 0,
        v6: false,
    };
}

/// The packet as the hooks see it: linear header bytes plus accounting sizes.
#[derive(Clone, Copy)]
pub struct Frame {
    /// First byte of the Ethernet header.
    pub start: usize,
    /// One past the last byte readable without a helper.
    pub end: usize,
    /// Bytes charged to the byte bucket (`skb->len`, GSO super-packets whole).
    pub len: u64,
    /// Packets charged to the packet bucket (GSO segments, at least 1).
    pub segs: u64,
    /// The interface the hook runs on: the connection table tells a
    /// client's hook from the server's by it.
    pub ifindex: u32,
    /// At egress, the interface the packet came in through (0: generated
    /// on this node): a forwarded packet is accounted once, at ingress.
    pub in_ifindex: u32,
}

/// Departure for a packet of a `delay` channel given its place `t` in the
/// channel's schedule, and the flow's new finish time.
///
/// A flow is sparse when its previous packet has finished leaving at the
/// channel's rate (`finish <= now`): nothing of it waits in fq. Its packet
/// leaves now, ahead of the backlog, as fq_codel and fq serve new flows
/// first; the channel's schedule was charged all the same, so the rate over
/// any interval is unchanged, only the order within the backlog. Once the
/// backlog passes half the horizon (overload, many flows), every packet
/// takes its place in the schedule, so overload delays rather than drops.
///
/// # Safety
/// `finish` must point into a live map value.
#[inline(always)]
unsafe fn pace_flow(
    finish: *mut u64,
    policy: &ChannelPolicy,
    now: u64,
    t: u64,
    frame: &Frame,
) -> u64 {
    // SAFETY: caller guarantees `finish` is valid.
    let last = unsafe { core::ptr::read_volatile(finish) };
    let depart = if last <= now && t - now <= policy.horizon_ns / 2 {
        now
    } else {
        t
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(finish, depart + time_cost(policy, frame.len, frame.segs)) };
    depart
}

/// Charges the packet to its channel's buckets and counts the outcome.
#[inline(always)]
pub fn enforce(
    frame: &Frame,
    parsed: &Parsed,
    slot: u32,
    follow: u8,
    global: &mut GlobalCounters,
    flow_hash: impl Fn() -> u32,
) -> Verdict {
    let (Some(policy), Some(bucket), Some(counters)) = (
        TC_POLICIES.get(slot),
        TC_BUCKETS.get_ptr_mut(slot),
        TC_COUNTERS.get_ptr_mut(slot),
    ) else {
        global.fail_open_pkts += 1;
        return Verdict::PASS;
    };
    if policy.active == 0 {
        global.fail_open_pkts += 1;
        return Verdict::PASS;
    }
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let counters = unsafe { &mut *counters };
    counters.matched_pkts += frame.segs;
    counters.matched_bytes += frame.len;
    if follow == FOLLOW_DROP {
        counters.dropped_pkts += frame.segs;
        counters.dropped_bytes += frame.len;
        return Verdict::DROP;
    }
    if policy.byte_cost_q16 == 0 && policy.pkt_cost_q16 == 0 {
        counters.passed_pkts += frame.segs;
        counters.passed_bytes += frame.len;
        return Verdict::PASS;
    }
    // The clock the channel's buckets are judged on (see
    // `ChannelPolicy::coarse_clock`).
    let now = if policy.coarse_clock() {
        coarse_ns()
    } else {
        fine_ns()
    };
    let bucket = bucket as *mut BucketState;

    if policy.action == ACTION_DELAY && policy.mode != MODE_MONITOR {
        // SAFETY: the bucket pointer comes from an array lookup and stays
        // valid for this run; all writers use atomics.
        let mut scheduled = unsafe { schedule(bucket, policy, now, frame.len, frame.segs) };
        if scheduled.is_none() && follow == FOLLOW_PASS {
            // A later fragment of a datagram that is on its way: never cut
            // it at the horizon. It is charged and leaves at the horizon;
            // the debt holds the next datagrams back instead.
            // SAFETY: as above.
            unsafe { debit(bucket, policy, now, frame.len, frame.segs) };
            scheduled = Some(now + policy.horizon_ns);
        }
        return match scheduled {
            None => {
                counters.dropped_pkts += frame.segs;
                counters.dropped_bytes += frame.len;
                counters.horizon_drop_pkts += frame.segs;
                Verdict::DROP
            }
            Some(t) => {
                // Per-flow state, so that a sparse flow (a ping, a request, a
                // new connection) does not wait behind a bulk flow's reserved
                // departures. Looked up only for packets that will leave.
                let pace_idx = (flow_hash() ^ slot.wrapping_mul(0x9e37_79b1)) & (PACE_SLOTS - 1);
                let t = match TC_PACE.get_ptr_mut(pace_idx) {
                    // SAFETY: array slot, valid for this run. Racy on purpose:
                    // a flow runs on one CPU at a time, and a lost update only
                    // misjudges one packet's sparseness.
                    Some(finish) => unsafe { pace_flow(finish, policy, now, t, frame) },
                    None => t,
                };
                counters.passed_pkts += frame.segs;
                counters.passed_bytes += frame.len;
                if t > now {
                    counters.delayed_pkts += frame.segs;
                    counters.delay_ns += t - now;
                }
                Verdict {
                    action: if t > now { DELAY } else { PASS },
                    tstamp: t,
                    l3: 0,
                    v6: false,
                }
            }
        };
    }

    // ECN-capable packets of a `mark` channel are marked CE while the
    // channel runs over its rate with more than a quarter of its burst
    // used, and may use one more burst, marked, before the limit drops
    // them: a cooperating sender slows down without losing anything, an
    // uncooperative one still hits the wall.
    let marking = policy.action == ACTION_MARK && policy.mode != MODE_MONITOR;
    // CE (3) is ECN-capable too: marked upstream already, it keeps the
    // second burst but has nothing left to mark.
    let markable = marking && (parsed.ecn == 1 || parsed.ecn == 2);
    let bursts = if marking && parsed.ecn != 0 { 2 } else { 1 };
    // SAFETY: as above.
    let outcome = unsafe {
        if follow == FOLLOW_PASS {
            debit(bucket, policy, now, frame.len, frame.segs)
        } else {
            conform(bucket, policy, now, frame.len, frame.segs, bursts)
        }
    };
    let mut verdict = Verdict::PASS;
    // SAFETY: as above. Every passing packet of the channel charges the
    // rate signal, ECN-capable or not.
    if marking
        && !matches!(outcome, Conformance::Exceed)
        && unsafe { over_rate(bucket, policy, now, frame.len, frame.segs) }
        && markable
        && unsafe { past_mark_depth(bucket, policy, now) }
    {
        counters.marked_pkts += frame.segs;
        verdict = Verdict {
            action: MARK,
            tstamp: 0,
            // Masked: the verifier must see a small offset.
            l3: parsed.l3 & 0xff,
            v6: matches!(parsed.addrs, Addrs::V6 { .. }),
        };
    }
    match outcome {
        Conformance::Conform => {}
        Conformance::Contended => global.contended_pkts += 1,
        Conformance::Exceed if policy.mode == MODE_MONITOR => {
            counters.would_drop_pkts += frame.segs;
            counters.would_drop_bytes += frame.len;
        }
        Conformance::Exceed => {
            counters.dropped_pkts += frame.segs;
            counters.dropped_bytes += frame.len;
            return Verdict::DROP;
        }
    }
    counters.passed_pkts += frame.segs;
    counters.passed_bytes += frame.len;
    verdict
}
