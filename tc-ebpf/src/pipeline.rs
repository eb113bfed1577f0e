//! The per-packet pipeline every hook runs: count, parse, follow or
//! classify, enforce, and remember a first fragment's verdict.

use core::ptr::{read_volatile, write_volatile};

use tc_common::{FragEntry, FLAG_NO_FLOW_CACHE, FRAG_BUDGET, MAX_CHANNELS, NO_CHANNEL};

use crate::{
    classify::{classify, classify_cached, frag_key},
    conn::{observe, TCP_FIN, TCP_RST, TCP_SYN},
    enforce::{enforce, Frame, Verdict, DROP, FOLLOW_DROP, FOLLOW_PASS, JUDGE, RESET},
    maps::{ParseScratch, TC_CONFIG, TC_FRAGS, TC_GENS, TC_GLOBAL, TC_SCRATCH},
    parse::{parse, Load, Parsed, Skip, FRAG_FIRST, FRAG_LATER, IPPROTO_TCP},
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
    // SAFETY: a per-CPU map value, valid for this run.
    let walk = unsafe { &raw mut (*scratch).walk };
    let mut parsed = match parse(frame.start, frame.end, ld, walk) {
        Ok(p) => p,
        Err(Skip::NonIp) => {
            global.non_ip_pkts += 1;
            return Verdict::PASS;
        }
        Err(Skip::Malformed) => {
            global.malformed_pkts += 1;
            return Verdict::PASS;
        }
    };
    join_parse_paths(scratch, &mut parsed);
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
    // A GSO super-packet carries its headers once; on the wire each segment
    // does. Charge and count what the wire will carry.
    let mut wire = *frame;
    if frame.segs > 1 && parsed.hdr_len != 0 {
        wire.len += (frame.segs - 1) * parsed.hdr_len as u64;
    }
    // A later fragment follows its datagram's first fragment: same
    // channel, same verdict.
    let mut first = None;
    if parsed.frag == FRAG_LATER {
        global.fragment_pkts += 1;
        first = TC_FRAGS.get_ptr_mut(&frag_key(&parsed, dir));
        if first.is_none() {
            // Its first fragment was not seen: classified on addresses and
            // protocol, into the first channel that could hold the datagram.
            global.fragment_orphan_pkts += 1;
        }
    }
    let (slot, follow) = match first {
        // SAFETY: a value of the LRU map, valid for this run. Racy on
        // purpose: two CPUs following one datagram at once may each pass
        // one fragment more than the budget, never more.
        Some(f) => unsafe {
            let slot = read_volatile(&raw const (*f).slot);
            let budget = read_volatile(&raw const (*f).budget) as u64;
            if read_volatile(&raw const (*f).dropped) != 0 || budget < wire.len {
                (slot, FOLLOW_DROP)
            } else {
                write_volatile(&raw mut (*f).budget, (budget - wire.len) as u32);
                (slot, FOLLOW_PASS)
            }
        },
        None => {
            let channel = if config.flags & FLAG_NO_FLOW_CACHE != 0 {
                classify(generation as u8, gen_info.words, dir, &parsed)
            } else {
                classify_cached(generation as u8, gen_info.words, dir, &parsed)
            };
            let slot = match channel {
                Some(c) => generation * MAX_CHANNELS + c,
                None => NO_CHANNEL,
            };
            (slot, JUDGE)
        }
    };
    let (slot, follow) = join_enforce_paths(scratch, slot, follow);
    let mut verdict = if slot == NO_CHANNEL {
        global.unclassified_pkts += 1;
        global.unclassified_bytes += frame.len;
        Verdict::PASS
    } else {
        enforce(&wire, &parsed, slot, follow, dir, global, flow_hash)
    };
    // The server's side of a tracked connection is in no limited channel:
    // its SYN-ACK, FINs and RSTs still move the connection's state.
    if !verdict.tracked
        && verdict.action != DROP
        && parsed.proto == IPPROTO_TCP
        && parsed.l4_flags == 0
        && parsed.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0
    {
        observe(&parsed);
    }
    if verdict.action == RESET {
        verdict.tstamp = reset(&parsed) as u64;
    }
    if parsed.frag == FRAG_FIRST {
        let first = FragEntry {
            slot,
            budget: FRAG_BUDGET.saturating_sub(wire.len as u32),
            dropped: (verdict.action == DROP) as u8,
            _pad: [0; 7],
        };
        // A full table pushes out its oldest datagram, whose remaining
        // fragments become orphans (counted).
        let _ = TC_FRAGS.insert(&frag_key(&parsed, dir), &first, 0);
    }
    verdict
}



/// Passes the parse results that differ only in small constants between
/// the parser's exits (fragment kind, port flags, header offsets) through a
/// map value, which the verifier cannot see into. Every parse outcome then
/// reaches classification and enforcement as the same abstract state, and
/// the verifier walks those once instead of once per outcome (without this,
/// the fragment and extension-header outcomes exhaust its budget of one
/// million instructions). Costs a store and a load on a per-CPU line.
#[inline(always)]
fn join_parse_paths(s: *mut ParseScratch, p: &mut Parsed) {
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs;
    // volatile so that LLVM cannot forward the stores to the loads.
    unsafe {
        write_volatile(&raw mut (*s).l3, p.l3);
        write_volatile(&raw mut (*s).hdr_len, p.hdr_len);
        write_volatile(&raw mut (*s).frag, p.frag);
        write_volatile(&raw mut (*s).l4_flags, p.l4_flags);
        // Masks keep the values provably small for the verifier (an
        // offset into the packet must be bounded); they change nothing.
        p.l3 = read_volatile(&raw const (*s).l3) & 0xff;
        p.hdr_len = read_volatile(&raw const (*s).hdr_len) & 0xffff;
        p.frag = read_volatile(&raw const (*s).frag);
        p.l4_flags = read_volatile(&raw const (*s).l4_flags);
    }
}

/// The same for the two ways to a channel (classified, or following a
/// first fragment): enforcement is verified once for both.
#[inline(always)]
fn join_enforce_paths(s: *mut ParseScratch, slot: u32, follow: u8) -> (u32, u8) {
    // SAFETY: as in `join_parse_paths`.
    unsafe {
        write_volatile(&raw mut (*s).slot, slot);
        write_volatile(&raw mut (*s).follow, follow);
        (
            read_volatile(&raw const (*s).slot),
            read_volatile(&raw const (*s).follow),
        )
    }
}
