//! The per-packet pipeline every hook runs: count, parse, follow or
//! classify, connection limits, enforce, and remember a first fragment's
//! verdict.
//!
//! Everything is inlined into the hook, on purpose: before Linux 6.4 the
//! verifier cannot track precision across BPF-to-BPF calls and marks every
//! scalar precise at a call, so its state pruning fails and the same code
//! as subprograms costs 6.1 more than its one million instructions. Large
//! values (the parse results, the connection key and entry, a reset's
//! headers) live in the per-CPU scratch value instead of the stack, so the
//! one frame stays within 512 bytes.

use core::ptr::{read_volatile, write_volatile};

use tc_common::{FragEntry, FRAG_BUDGET, NO_CHANNEL};

use crate::{
    account::stage,
    classify::{channel_slot, frag_key},
    conn::{connections, CONN_LATE, CONN_REFUSE, CONN_REFUSE_RESET, CONN_STALE},
    enforce::{enforce, Frame, Verdict, DROP, FOLLOW_DROP, FOLLOW_PASS, JUDGE, RESET},
    maps::{ParseScratch, TC_CONFIG, TC_FRAGS, TC_GENS, TC_GLOBAL, TC_SCRATCH},
    parse::{parse, Load, Parsed, Skip, FRAG_FIRST, FRAG_LATER},
};

/// Counts the packet node-wide, classifies it and applies its channel's policy.
///
/// `flow_hash` gives the kernel's flow hash (`skb->hash`), asked for only
/// by `delay` channels (tc egress), which pace per flow. `reset` turns a
/// refused SYN into its RST and returns the hook's verdict for it, which
/// the returned [`Verdict`] carries in `tstamp` (action [`RESET`]).
#[inline(always)]
pub fn handle(
    frame: &Frame,
    ld: &impl Load,
    dir: u8,
    flow_hash: impl Fn() -> u32,
    reset: impl FnOnce(&Parsed) -> u32,
) -> Verdict {
    let Some(global) = TC_GLOBAL.get_ptr_mut(0) else {
        return Verdict::PASS;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let global = unsafe { &mut *global };
    global.seen_pkts += frame.segs;
    global.seen_bytes += frame.len;

    let Some(scratch) = TC_SCRATCH.get_ptr_mut(0) else {
        global.fail_open_pkts += 1;
        return Verdict::PASS;
    };
    stage(scratch, false, 0, 0);
    match parse_into(frame.start, frame.end, ld, scratch) {
        PARSED => {}
        NON_IP => {
            global.non_ip_pkts += 1;
            return Verdict::PASS;
        }
        _ => {
            global.malformed_pkts += 1;
            return Verdict::PASS;
        }
    }
    // SAFETY: a per-CPU map value that only this program run uses, which
    // `parse_into` just filled.
    let parsed: &Parsed = unsafe { &*(&raw const (*scratch).parsed) };
    // A GSO super-packet carries its headers once; on the wire each segment
    // does. Charge and count what the wire will carry.
    let mut wire = *frame;
    if frame.segs > 1 && parsed.hdr_len != 0 {
        wire.len += (frame.segs - 1) * (parsed.hdr_len & 0xffff) as u64;
    }
    // Interactions count every packet, whatever its verdict (demand, not
    // what passed): the hook's accounting program, tail-called last.
    stage(scratch, true, wire.len, wire.segs);
    let wire = join_wire(scratch, &wire);
    if parsed.l4_flags != 0 && parsed.frag != FRAG_LATER {
        global.no_ports_pkts += 1;
    }
    let Some(config) = TC_CONFIG.get(0) else {
        global.fail_open_pkts += 1;
        return Verdict::PASS;
    };
    let generation = config.generation & 1;
    let Some(gen_info) = TC_GENS.get(generation) else {
        global.fail_open_pkts += 1;
        return Verdict::PASS;
    };
    // A later fragment follows its datagram's first fragment: same
    // channel, same verdict.
    let mut first = NOT_FOUND;
    if parsed.frag == FRAG_LATER {
        global.fragment_pkts += 1;
        first = follow_fragment(parsed, dir, wire.len);
        if first == NOT_FOUND {
            // Its first fragment was not seen: classified on addresses and
            // protocol, into the first channel that could hold the datagram.
            global.fragment_orphan_pkts += 1;
        }
    }
    let (slot, follow) = match first {
        NOT_FOUND => {
            let slot = channel_slot(
                generation,
                gen_info.words,
                dir,
                parsed,
                config.flags,
                global,
            );
            (slot, JUDGE)
        }
        f => ((f >> 8) as u32, f as u8),
    };
    let (slot, follow) = join_enforce_paths(scratch, slot, follow);
    // Connection limits judge a TCP packet before the buckets do.
    let judged = if follow == JUDGE { slot } else { NO_CHANNEL };
    let conn = connections(parsed, judged, dir, &wire, global);
    let conn = join_conn_paths(scratch, conn);
    let mut verdict = if conn == CONN_REFUSE_RESET {
        Verdict::RESET
    } else if conn == CONN_REFUSE || conn == CONN_LATE || conn == CONN_STALE {
        Verdict::DROP
    } else if slot == NO_CHANNEL {
        global.unclassified_pkts += 1;
        global.unclassified_bytes += frame.len;
        Verdict::PASS
    } else {
        enforce(&wire, parsed, slot, follow, global, flow_hash)
    };
    if verdict.action == RESET {
        verdict.tstamp = reset(parsed) as u64;
    }
    if parsed.frag == FRAG_FIRST {
        remember_first(parsed, dir, slot, wire.len, verdict.action == DROP);
    }
    verdict
}

/// [`follow_fragment`]: the datagram's first fragment was not seen.
const NOT_FOUND: u64 = u64::MAX;

/// A later fragment of a datagram whose first fragment was seen follows
/// it: its slot, and `FOLLOW_DROP` (the first was dropped, or the
/// datagram's budget is spent) or `FOLLOW_PASS` (charged against the
/// budget), packed as `slot << 8 | follow`. [`NOT_FOUND`] otherwise.
#[inline(always)]
fn follow_fragment(parsed: &Parsed, dir: u8, len: u64) -> u64 {
    let Some(f) = TC_FRAGS.get_ptr_mut(&frag_key(parsed, dir)) else {
        return NOT_FOUND;
    };
    // SAFETY: a value of the LRU map, valid for this run. Racy on
    // purpose: two CPUs following one datagram at once may each pass
    // one fragment more than the budget, never more.
    unsafe {
        let slot = read_volatile(&raw const (*f).slot) as u64;
        let budget = read_volatile(&raw const (*f).budget) as u64;
        if read_volatile(&raw const (*f).dropped) != 0 || budget < len {
            slot << 8 | FOLLOW_DROP as u64
        } else {
            write_volatile(&raw mut (*f).budget, (budget - len) as u32);
            slot << 8 | FOLLOW_PASS as u64
        }
    }
}

/// Records a first fragment's channel and verdict for the datagram's later
/// fragments. A full table pushes out its oldest datagram, whose remaining
/// fragments become orphans (counted).
#[inline(always)]
fn remember_first(parsed: &Parsed, dir: u8, slot: u32, len: u64, dropped: bool) {
    let first = FragEntry {
        slot,
        budget: FRAG_BUDGET.saturating_sub(len as u32),
        dropped: dropped as u8,
        _pad: [0; 7],
    };
    let _ = TC_FRAGS.insert(&frag_key(parsed, dir), &first, 0);
}

/// [`parse_into`]: the frame was parsed.
const PARSED: u8 = 0;
/// [`parse_into`]: not IP.
const NON_IP: u8 = 1;
/// [`parse_into`]: truncated or inconsistent headers.
const MALFORMED: u8 = 2;

/// Parses the frame into the scratch map value, and says whether it could.
///
/// The results differ in small constants between the parser's exits
/// (family, fragment kind, port flags, header offsets, prefix lengths);
/// in a map value, which the verifier cannot see into, they reach
/// classification and enforcement as one abstract state, and the verifier
/// walks those once instead of once per parse outcome (without this, the
/// fragment and extension-header outcomes exhaust 6.1's budget of one
/// million instructions).
#[inline(always)]
fn parse_into(start: usize, end: usize, ld: &impl Load, s: *mut ParseScratch) -> u8 {
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs.
    let walk = unsafe { &raw mut (*s).walk };
    match parse(start, end, ld, walk) {
        Ok(p) => {
            // SAFETY: as above; volatile, so that LLVM cannot forward the
            // stored values to the caller's loads.
            unsafe { write_volatile(&raw mut (*s).parsed, p) };
            PARSED
        }
        Err(Skip::NonIp) => NON_IP,
        Err(Skip::Malformed) => MALFORMED,
    }
}

/// The same for the two ways to a channel (classified, or following a
/// first fragment): enforcement is verified once for both.
#[inline(always)]
fn join_enforce_paths(s: *mut ParseScratch, slot: u32, follow: u8) -> (u32, u8) {
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs;
    // volatile so that LLVM cannot forward the stores to the loads.
    unsafe {
        write_volatile(&raw mut (*s).slot, slot);
        write_volatile(&raw mut (*s).follow, follow);
        (
            read_volatile(&raw const (*s).slot),
            read_volatile(&raw const (*s).follow),
        )
    }
}

/// `wire` with its size read back from the scratch value, where [`stage`]
/// has just written it for the accounting program (so the two must be
/// called with the same frame, one after the other). Its bounds differ
/// between paths (one segment or a GSO super-packet, and the length the
/// hook's pull leaves), and a branch whose outcome the verifier knows from
/// them marks them precise: every state after it then stays apart from
/// the other paths' and is walked again. Read back from the map value,
/// the size is one unknown on every path.
#[inline(always)]
fn join_wire(s: *mut ParseScratch, wire: &Frame) -> Frame {
    // SAFETY: as in `join_enforce_paths`.
    unsafe {
        Frame {
            len: read_volatile(&raw const (*s).ix_bytes),
            segs: read_volatile(&raw const (*s).ix_pkts),
            ..*wire
        }
    }
}

/// The same for the connection table's outcomes: enforcement is verified
/// once for all of them, not once per outcome.
#[inline(always)]
fn join_conn_paths(s: *mut ParseScratch, conn: u8) -> u8 {
    // SAFETY: as in `join_enforce_paths`.
    unsafe {
        write_volatile(&raw mut (*s).conn, conn);
        read_volatile(&raw const (*s).conn)
    }
}
