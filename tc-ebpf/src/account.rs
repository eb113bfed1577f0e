//! Interaction accounting: every packet a hook sees counts in its
//! interaction (client address, server address, protocol, server port),
//! request or response side, with TCP's SYNs, SYN-ACKs, RSTs and FINs and
//! the time from a SYN to its SYN-ACK.
//!
//! Memory is bounded and honest under floods: the table has a fixed size,
//! and once the agent sees it filling it switches on admission (a
//! threshold in [`TC_IX_CONF`]): a client without an entry then gets one
//! only when a per-CPU count-min sketch estimates its bytes in the current
//! window (about a second) at the threshold or more. Smaller clients count
//! in the interaction's untracked-clients entry (client `::`), so rates
//! stay whole, and a flood of 100,000 small sources cannot push out the
//! few heavy ones an operator must see.
//!
//! A forwarded packet is counted once, at the first of our hooks it
//! passes: its egress hook skips it when it came in through an interface
//! with one of our ingress hooks ([`TC_IX_IFACES`]).

use core::ptr::write_volatile;

use aya_ebpf::bindings::BPF_NOEXIST;
use tc_common::{
    IxCounters, IxKey, DIR_EGRESS, IX_SKETCH_ROWS, IX_SKETCH_UNIT,
    IX_SKETCH_WIDTH, IX_WINDOW_SHIFT,
};

use crate::{
    conn::{coarse_ns, fine_ns},
    maps::{
        HighServer, ParseScratch, SYN_SLOTS, TC_IX, TC_IX_CONF, TC_IX_HIGH, TC_IX_HIGH_ON,
        TC_IX_IFACES, TC_IX_SKETCH, TC_IX_SYNS, TC_GLOBAL, TC_SCRATCH,
    },
    parse::{Addrs, Parsed, FRAG_LATER},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// What one packet adds to its interaction.
#[derive(Clone, Copy)]
struct Delta {
    /// Client to server (else server to client).
    request: bool,
    /// Wire bytes and packets (GSO segments).
    bytes: u64,
    pkts: u64,
    /// TCP flags counted (0 or 1 each): a client SYN, a server SYN-ACK,
    /// an RST, a FIN.
    syn: u64,
    synack: u64,
    rst: u64,
    fin: u64,
    /// Handshake time this SYN-ACK closes, ns; 0 if none.
    rtt_ns: u64,
}

/// Counts the packet the pipeline just judged in its interaction, from
/// the parse results and wire size it left in the scratch value (see
/// [`stage`]). Runs in its own program, tail-called by the hook after its
/// verdict: the verifier walks it once, apart from the pipeline's many
/// paths. `in_ifindex` is the interface a packet at egress came in through
/// (0: generated on this node).
#[inline(always)]
pub fn account(dir: u8, in_ifindex: u32) {
    let Some(s) = TC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program run (and the pipeline's,
    // which tail-called it on this CPU) uses it.
    let (want, bytes, pkts) = unsafe { ((*s).ix_want, (*s).ix_bytes, (*s).ix_pkts) };
    if want == 0 {
        return;
    }
    // SAFETY: a plain u32 map value, read at once.
    if dir == DIR_EGRESS && in_ifindex != 0 && unsafe { TC_IX_IFACES.get(&in_ifindex) }.is_some()
    {
        return;
    }
    // SAFETY: the parse results the pipeline wrote for this packet.
    let p: &Parsed = unsafe { &*(&raw const (*s).parsed) };
    let has_ports =
        (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP) && p.l4_flags == 0 && p.frag != FRAG_LATER;
    let tcp = has_ports && p.proto == IPPROTO_TCP;
    let flags = if tcp { p.tcp_flags } else { 0 };
    let syn = flags & (SYN | ACK) == SYN;
    let synack = flags & (SYN | ACK) == SYN | ACK;
    // The client: a SYN's sender, a SYN-ACK's receiver, else the side with
    // the higher port, else the sender.
    let mut request = if flags & SYN != 0 {
        syn
    } else if has_ports {
        p.dport <= p.sport
    } else {
        true
    };
    if tcp && flags & SYN == 0 && high_servers_seen() {
        // Is the higher-port side a server seen answering a SYN?
        let high = if request {
            endpoint(p, true, p.sport)
        } else {
            endpoint(p, false, p.dport)
        };
        // SAFETY: a plain u8 map value, read at once.
        if unsafe { TC_IX_HIGH.get(&high) }.is_some() {
            request = !request;
        }
    }
    if synack && p.sport > p.dport {
        // A server above its client's port: remember it, so that the
        // connection's other packets take it for the server too.
        let _ = TC_IX_HIGH.insert(&endpoint(p, true, p.sport), &1, 0);
        if let Some(on) = TC_IX_HIGH_ON.get_ptr_mut(0) {
            // SAFETY: a u32 map value; racing writers all write 1.
            unsafe { *on = 1 };
        }
    }
    let port = match (has_ports, request) {
        (false, _) => 0,
        (true, true) => p.dport,
        (true, false) => p.sport,
    };
    let mut k = key(p, request, port);
    let mut d = Delta {
        request,
        bytes,
        pkts,
        syn: syn as u64,
        synack: synack as u64,
        rst: (flags & RST != 0) as u64,
        fin: (flags & FIN != 0) as u64,
        rtt_ns: 0,
    };
    if syn || synack {
        let client_port = if request { p.sport } else { p.dport };
        d.rtt_ns = handshake(hash_key(&k) ^ (client_port as u64) << 48, syn);
    }
    if let Some(c) = TC_IX.get_ptr_mut(&k) {
        // SAFETY: this CPU's value of the entry, valid for this run.
        unsafe { bump(c, &d) };
        return;
    }
    // A client without an entry: admitted at once while the table has
    // room, else once the sketch says it is heavy.
    let admit = match TC_IX_CONF.get(0) {
        Some(conf) if conf.admit_units != 0 => sketch(&k, bytes) >= conf.admit_units,
        _ => true,
    };
    if admit && TC_IX.insert(&k, &fresh(&d), BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Not admitted, or the table full (or another CPU inserted it this
    // instant: then it counts as untracked once).
    let Some(global) = TC_GLOBAL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let global = unsafe { &mut *global };
    global.ix_folded_pkts += pkts;
    k.client = [0; 16];
    if let Some(c) = TC_IX.get_ptr_mut(&k) {
        // SAFETY: as above.
        unsafe { bump(c, &d) };
        return;
    }
    if TC_IX.insert(&k, &fresh(&d), BPF_NOEXIST as u64).is_err() {
        global.ix_lost_pkts += pkts;
    }
}

/// Leaves what [`account`] needs in the scratch value: whether the packet
/// was parsed (`want`), and its wire bytes and packets.
#[inline(always)]
pub fn stage(s: *mut ParseScratch, want: bool, bytes: u64, pkts: u64) {
    // SAFETY: per-CPU scratch, only this program run uses it.
    unsafe {
        write_volatile(&raw mut (*s).ix_want, want as u64);
        write_volatile(&raw mut (*s).ix_bytes, bytes);
        write_volatile(&raw mut (*s).ix_pkts, pkts);
    }
}

/// Adds a packet's delta to this CPU's counters of an entry.
#[inline(always)]
unsafe fn bump(c: *mut IxCounters, d: &Delta) {
    // SAFETY: the caller passes this CPU's value of a live entry.
    unsafe {
        if d.request {
            (*c).req_pkts += d.pkts;
            (*c).req_bytes += d.bytes;
        } else {
            (*c).resp_pkts += d.pkts;
            (*c).resp_bytes += d.bytes;
        }
        if d.syn | d.synack | d.rst | d.fin != 0 {
            (*c).syns += d.syn;
            (*c).synacks += d.synack;
            (*c).rsts += d.rst;
            (*c).fins += d.fin;
        }
        if d.rtt_ns != 0 {
            (*c).rtt_sum_ns += d.rtt_ns;
            (*c).rtt_count += 1;
        }
    }
}

/// A new entry's counters: the packet's delta alone.
#[inline(always)]
fn fresh(d: &Delta) -> IxCounters {
    let mut c = IxCounters::default();
    // SAFETY: `c` is a valid, exclusive value.
    unsafe { bump(&mut c, d) };
    c
}

/// An address as the two words of its IPv4-mapped (IPv4) or plain
/// (IPv6) form, in memory order: built with word stores, not byte by byte.
#[inline(always)]
fn words(p: &Parsed, src: bool) -> [u64; 2] {
    match &p.addrs {
        Addrs::V4 { src: s, dst: d } => {
            let a = if src { s } else { d };
            // ::ffff:a.b.c.d: bytes 10 and 11 are 0xff.
            [0, 0xffff_0000 | (u32::from_ne_bytes(*a) as u64) << 32]
        }
        Addrs::V6 { src: s, dst: d } => {
            let a = if src { s } else { d };
            let w = |i: usize| {
                u64::from_ne_bytes([
                    a[i],
                    a[i + 1],
                    a[i + 2],
                    a[i + 3],
                    a[i + 4],
                    a[i + 5],
                    a[i + 6],
                    a[i + 7],
                ])
            };
            [w(0), w(8)]
        }
    }
}

/// The interaction key: client and server addresses (IPv4-mapped), the
/// server's port, the protocol.
#[inline(always)]
fn key(p: &Parsed, request: bool, port: u16) -> IxKey {
    let (c, s) = (words(p, request), words(p, !request));
    let w: [u64; 5] = [c[0], c[1], s[0], s[1], port as u64 | (p.proto as u64) << 16];
    // SAFETY: IxKey is five u64 words (40 bytes, align 8): two addresses,
    // then port, protocol and zero padding, in that order (little endian).
    unsafe { core::mem::transmute::<[u64; 5], IxKey>(w) }
}

/// The key of the packet's source (`src`) or destination endpoint in the
/// high-port server table.
#[inline(always)]
fn endpoint(p: &Parsed, src: bool, port: u16) -> HighServer {
    let a = words(p, src);
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&a[0].to_ne_bytes());
    addr[8..].copy_from_slice(&a[1].to_ne_bytes());
    HighServer {
        addr,
        port,
        _pad: [0; 6],
    }
}

/// Whether any high-port server was seen: until then no TCP packet pays
/// for the lookup.
#[inline(always)]
fn high_servers_seen() -> bool {
    // SAFETY: a plain u32 map value, read at once.
    matches!(TC_IX_HIGH_ON.get(0), Some(&on) if on != 0)
}

/// A SYN stamps its time under its connection's `tag` (the interaction
/// key's hash and the client's port: a SYN and its SYN-ACK agree on it);
/// its SYN-ACK returns the time since (0 when the SYN was not seen, or its
/// slot was taken by another).
#[inline(always)]
fn handshake(tag: u64, syn: bool) -> u64 {
    let tag = tag | 1;
    let Some(slot) = TC_IX_SYNS.get_ptr_mut((tag >> 20) as u32 & (SYN_SLOTS - 1)) else {
        return 0;
    };
    let now = fine_ns();
    // SAFETY: a value of the shared array; racing writers can only make a
    // handshake time go missing (the tag no longer matches), never wrong
    // by more than a concurrent SYN's few nanoseconds.
    unsafe {
        if syn {
            (*slot).at_ns = now;
            (*slot).tag = tag;
            0
        } else if (*slot).tag == tag && now > (*slot).at_ns {
            (*slot).tag = 0;
            now - (*slot).at_ns
        } else {
            0
        }
    }
}

/// Adds the packet to this CPU's count-min sketch and returns the
/// estimate of its interaction's bytes in the current window, in
/// `IX_SKETCH_UNIT`s. Windows are told apart by an 8-bit tag in each
/// counter, so nothing ever has to clear the sketch.
#[inline(always)]
fn sketch(k: &IxKey, bytes: u64) -> u32 {
    let Some(sk) = TC_IX_SKETCH.get_ptr_mut(0) else {
        return u32::MAX;
    };
    let h = hash_key(k);
    let step = (h >> 32) | 1;
    let window = ((coarse_ns() >> IX_WINDOW_SHIFT) & 0xff) as u32;
    let units = (bytes.div_ceil(IX_SKETCH_UNIT)).min(0xff_ffff) as u32;
    let mut estimate = u32::MAX;
    let mut row = 0;
    while row < IX_SKETCH_ROWS {
        let col = (h.wrapping_add(step.wrapping_mul(row as u64)) as usize) & (IX_SKETCH_WIDTH - 1);
        let i = row * IX_SKETCH_WIDTH + col;
        // SAFETY: this CPU's sketch, only this run uses it; `i` is in bounds.
        let cell = unsafe { &mut (*sk).cells[i] };
        let held = if *cell >> 24 == window { *cell & 0xff_ffff } else { 0 };
        let n = (held + units).min(0xff_ffff);
        *cell = window << 24 | n;
        if n < estimate {
            estimate = n;
        }
        row += 1;
    }
    estimate
}

/// A 64-bit hash of the key's five words.
#[inline(always)]
fn hash_key(k: &IxKey) -> u64 {
    let w = k as *const IxKey as *const u64;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut i = 0;
    while i < 5 {
        // SAFETY: IxKey is 40 bytes, aligned to 8: five u64 words.
        let x = unsafe { w.add(i).read() };
        h = (h ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        i += 1;
    }
    h
}
