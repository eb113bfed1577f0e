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
//! few heavy ones an operator must see. Until the agent's next sample
//! (a flood can fill the table within milliseconds, and starve the agent
//! of CPU), a table with no slot left for a client weighs them by the sketch at
//! the lowest threshold by itself ([`admission`]).
//!
//! A forwarded packet is counted once, at the first of our hooks it
//! passes: its egress hook skips it when it came in through an interface
//! with one of our ingress hooks ([`TC_IX_IFACES`]).

use core::{
    intrinsics::{atomic_cxchg, AtomicOrdering},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use tc_common::{
    FlowKey4, FlowKey6, FlowMeta, IxConfig, IxCounters, IxKey, DIR_EGRESS, IX_ALLOC_HEAD,
    IX_ALLOC_TAIL, IX_MIN_ADMIT_UNITS, IX_NONE, IX_REQUEST, IX_SKETCH_ROWS, IX_SKETCH_UNIT,
    IX_SKETCH_WIDTH, IX_WINDOW_SHIFT,
};

use crate::{
    clock::{coarse_ns, fine_ns},
    maps::{
        HighServer, ParseScratch, UntrackedHint, SYN_SLOTS, TC_CONFIG, TC_FLOWS4, TC_FLOWS6,
        TC_GLOBAL, TC_IX, TC_IX_ALLOC, TC_IX_CONF, TC_IX_FREE, TC_IX_GEN, TC_IX_HIGH,
        TC_IX_HIGH_ON, TC_IX_IFACES, TC_IX_SKETCH, TC_IX_SLOTS, TC_IX_SYNS, TC_IX_UNTRACKED,
        TC_SCRATCH, UNTRACKED_HINTS,
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
///
/// A packet whose flow-cache entry names its interaction's slot (of the
/// slot's current generation, for the packet's server port) counts there
/// at once: no key, no hash lookup. Others
/// (a flow's first packets, SYNs and SYN-ACKs, whose handshake time needs
/// the key) find or create the interaction and leave the slot in the flow
/// cache for the next.
#[inline(always)]
pub fn account(dir: u8, in_ifindex: u32) {
    let Some(s) = TC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program run (and the pipeline's,
    // which tail-called it on this CPU) uses it.
    let (want, bytes, pkts, hint, hint_gen, hint_port, cached) = unsafe {
        (
            (*s).ix_want,
            (*s).ix_bytes,
            (*s).ix_pkts,
            (*s).ix_hint,
            (*s).ix_hint_gen,
            (*s).ix_hint_port,
            (*s).ix_hint_port != NOT_CACHED,
        )
    };
    if want == 0 {
        return;
    }
    // Once only: should a hook ever tail-call here without staging its
    // packet, the previous packet is not counted again.
    // SAFETY: as above.
    unsafe { (*s).ix_want = 0 };
    // SAFETY: a plain u32 map value, read at once.
    if dir == DIR_EGRESS && in_ifindex != 0 && unsafe { TC_IX_IFACES.get(&in_ifindex) }.is_some() {
        return;
    }
    let Some(conf) = TC_IX_CONF.get(0) else {
        return;
    };
    let admit_units = admission(conf);
    // SAFETY: the parse results the pipeline wrote for this packet.
    let p: &Parsed = unsafe { &*(&raw const (*s).parsed) };
    let has_ports = (p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP)
        && p.l4_flags == 0
        && p.frag != FRAG_LATER;
    let tcp = has_ports && p.proto == IPPROTO_TCP;
    let flags = if tcp { p.tcp_flags } else { 0 };
    let mut d = Delta {
        request: hint & IX_REQUEST != 0,
        bytes,
        pkts,
        syn: 0,
        synack: 0,
        rst: (flags & RST != 0) as u64,
        fin: (flags & FIN != 0) as u64,
        rtt_ns: 0,
    };
    if hint != IX_NONE && flags & SYN == 0 {
        let slot = hint & !IX_REQUEST;
        let port = if d.request { p.dport } else { p.sport };
        if port as u32 == hint_port && generation(slot) == Some(hint_gen) {
            count(slot, &d);
            return;
        }
    }

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
    d.request = request;
    d.syn = syn as u64;
    d.synack = synack as u64;
    if syn || synack {
        // One slot per connection, not per interaction: the client port
        // is multiplied into the bits the slot index reads (bits 20-31),
        // so concurrent handshakes of one interaction do not overwrite
        // each other's SYN time.
        let client_port = if request { p.sport } else { p.dport };
        let tag = (hash_key(&k) ^ client_port as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        d.rtt_ns = handshake(tag, syn);
    }
    let side = if request { IX_REQUEST } else { 0 };
    // Under admission (the table filling, a flood), the sketch weighs the
    // client first: one below the threshold counts as untracked without a
    // table lookup (an admitted client's flows find their slot in the
    // flow cache). SYNs and SYN-ACKs, which always come this way, look
    // their entry up first, so an admitted client's handshakes stay its
    // own; so do packets of a cached flow whose entry names no slot yet
    // (the flow cache takes a flow on its second packet, after its
    // handshake; a flood's new flows seldom get in): the lookup leaves the
    // slot in the entry, and the flow's next packets count there, however
    // small the client is next to the flood (`sketch`'s floor).
    let lookup_first = admit_units == 0 || syn || synack || cached;
    if lookup_first {
        // SAFETY: a plain u32 map value, copied out at once.
        if let Some(&slot) = unsafe { TC_IX.get(&k) } {
            count(slot, &d);
            remember(p, dir, slot | side, port);
            return;
        }
    }
    if admit_units == 0 || sketch(&k, bytes) >= admit_units {
        if !lookup_first {
            // SAFETY: as above.
            if let Some(&slot) = unsafe { TC_IX.get(&k) } {
                count(slot, &d);
                remember(p, dir, slot | side, port);
                return;
            }
        }
        if let Some(slot) = open(&k, &d, conf.slots, reserved(conf.slots)) {
            remember(p, dir, slot | side, port);
            return;
        }
    }
    // Not admitted, or no room: the interaction's untracked-clients entry
    // (never named in the flow cache: such a client is weighed again on
    // its next packet, and admitted once it is heavy). Its slot is
    // remembered per CPU by server, so a flood's packets find it without
    // a table lookup either.
    let Some(global) = TC_GLOBAL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let global = unsafe { &mut *global };
    global.ix_folded_pkts += pkts;
    // One untracked entry per server and protocol, all ports together: a
    // flood sprayed over ports cannot fill the table with them.
    // The client as two word stores, volatile so that LLVM does not merge
    // them into a memset: bpf-linker's `--bpf-expand-memcpy-in-order`
    // leaves a memset as a call to a loop that stores a byte at a time,
    // on every packet of a flood.
    const _: () = assert!(
        core::mem::offset_of!(IxKey, client) == 0 && align_of::<IxKey>() == 8,
        "the client is IxKey's first two words"
    );
    // SAFETY: IxKey is aligned to 8 and starts with the client's 16 bytes
    // (checked above).
    unsafe {
        let words = (&raw mut k).cast::<u64>();
        write_volatile(words, 0);
        write_volatile(words.add(1), 0);
    }
    k.port = 0;
    let hint = untracked_hint(&k);
    if let Some(h) = hint {
        // SAFETY: this CPU's hint slot, only this run uses it.
        unsafe {
            if same_key(&(*h).key, &k) && generation((*h).slot) == Some((*h).gen) {
                count((*h).slot, &d);
                return;
            }
        }
    }
    // SAFETY: a plain u32 map value, copied out at once.
    let slot = match unsafe { TC_IX.get(&k) } {
        Some(&slot) => {
            count(slot, &d);
            slot
        }
        None => match open(&k, &d, conf.slots, 0) {
            Some(slot) => slot,
            None => {
                global.ix_lost_pkts += pkts;
                return;
            }
        },
    };
    if let Some(h) = hint {
        // SAFETY: as above.
        unsafe {
            (*h).key = k;
            (*h).slot = slot;
            (*h).gen = generation(slot).unwrap_or(0);
        }
    }
}

/// Free slots that only untracked-clients entries may take, of a table of
/// `slots`: a client's entry cannot take the last one, so that a flood
/// that fills the table still finds room for its untracked entry (one per
/// server and protocol), and its packets are counted rather than lost.
#[inline(always)]
fn reserved(slots: u32) -> u32 {
    let keep = slots / 64;
    if keep == 0 {
        1
    } else {
        keep
    }
}

/// The admission threshold in force: the agent's, or, while the agent has
/// set none and no slot is left for a client (only the [`reserved`] ones:
/// no client without an entry can get one), [`IX_MIN_ADMIT_UNITS`]. A
/// client's packet then looks its entry up only when the sketch says it is
/// heavy (or it is a SYN, SYN-ACK or a cached flow's, as under any
/// threshold), instead of every packet of a flood missing in a full table:
/// a random-source flood's XDP frames at 1,024 channels cost 1,024-1,060
/// ns each that way on a slow host, and 422 ns with no accounting of
/// dropped frames at all (throwaway builds in paired `bench flood` runs;
/// README, "Accounting in a full table"). The agent's threshold follows
/// at its next sample, which a flood can delay by seconds.
#[inline(always)]
fn admission(conf: &IxConfig) -> u32 {
    if conf.admit_units != 0 {
        return conf.admit_units;
    }
    // SAFETY (both): a u64 of the shared array, read at once; a stale
    // value only delays the fallback by a packet, or lets one look up.
    let (Some(&head), Some(&tail)) = (unsafe { TC_IX_ALLOC.get(IX_ALLOC_HEAD) }, unsafe {
        TC_IX_ALLOC.get(IX_ALLOC_TAIL)
    }) else {
        return 0;
    };
    if head + reserved(conf.slots) as u64 >= tail {
        IX_MIN_ADMIT_UNITS
    } else {
        0
    }
}

/// Whether two keys are equal, word by word (BPF has no memcmp).
#[inline(always)]
fn same_key(a: &IxKey, b: &IxKey) -> bool {
    // SAFETY: IxKey is five u64 words (see `key`).
    let (a, b) = unsafe {
        (
            core::mem::transmute::<IxKey, [u64; 5]>(*a),
            core::mem::transmute::<IxKey, [u64; 5]>(*b),
        )
    };
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4]
}

/// This CPU's hint slot for an untracked-clients key (by its server,
/// port and protocol).
#[inline(always)]
fn untracked_hint(k: &IxKey) -> Option<*mut UntrackedHint> {
    // SAFETY: IxKey is five u64 words (see `key`).
    let w: [u64; 5] = unsafe { core::mem::transmute::<IxKey, [u64; 5]>(*k) };
    let mut h =
        (w[2] ^ w[3].rotate_left(17) ^ w[4].rotate_left(41)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 32;
    TC_IX_UNTRACKED.get_ptr_mut(h as u32 & (UNTRACKED_HINTS - 1))
}

/// Adds a packet to this CPU's counters in `slot`.
#[inline(always)]
fn count(slot: u32, d: &Delta) {
    if let Some(c) = TC_IX_SLOTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's value of the slot, valid for this run.
        unsafe { bump(c, d) };
    }
}

/// Takes a free slot for `k`, enters it and counts the packet there.
/// None without a free slot beyond the `keep` last ones, or when the
/// entry cannot be made (a full table, or another CPU entering the same
/// interaction this instant: then the slot is lost until the agent takes
/// it back, see `datapath::interactions`).
#[inline(always)]
fn open(k: &IxKey, d: &Delta, slots: u32, keep: u32) -> Option<u32> {
    let slot = take_slot(slots, keep)?;
    TC_IX.insert(k, &slot, BPF_NOEXIST as u64).ok()?;
    count(slot, d);
    Some(slot)
}

/// The next slot of the free ring, if more than `keep` are left
/// (compare-and-swap on the head: CPUs never take the same one).
#[inline(always)]
fn take_slot(slots: u32, keep: u32) -> Option<u32> {
    if slots == 0 {
        return None;
    }
    let head = TC_IX_ALLOC.get_ptr_mut(IX_ALLOC_HEAD)?;
    // SAFETY: a plain u64 map value, read at once.
    let tail = unsafe { *TC_IX_ALLOC.get(IX_ALLOC_TAIL)? };
    let mut tries = 0;
    while tries < 4 {
        // SAFETY: a u64 of the shared array; only compare-and-swap moves it.
        let h = unsafe { read_volatile(head) };
        if h + keep as u64 >= tail {
            return None;
        }
        // SAFETY: as above; lowers to BPF_ATOMIC_CMPXCHG (needs -mcpu=v3).
        let (_, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                head,
                h,
                h + 1,
            )
        };
        if ok {
            // SAFETY: a plain u32 map value, copied out at once.
            return unsafe { TC_IX_FREE.get((h % slots as u64) as u32) }.copied();
        }
        tries += 1;
    }
    None
}

/// A slot's generation (see `TC_IX_GEN`).
#[inline(always)]
fn generation(slot: u32) -> Option<u32> {
    // SAFETY: a plain u32 map value, copied out at once.
    unsafe { TC_IX_GEN.get(slot) }.copied()
}

/// Leaves `ix` (a slot and its side), with the slot's generation and the
/// interaction's server `port`, in the packet's flow-cache entry, if it
/// has one, for the flow's next packets.
#[inline(always)]
fn remember(p: &Parsed, dir: u8, ix: u32, port: u16) {
    let Some(gen) = generation(ix & !IX_REQUEST) else {
        return;
    };
    let Some(config) = TC_CONFIG.get(0) else {
        return;
    };
    let meta = FlowMeta {
        generation: (config.generation & 1) as u8,
        dir: dir | p.l4_flags,
        proto: p.proto,
        l4_bits: p.l4_bits as u8,
        dport: p.dport,
        _pad: 0,
    };
    let v = match &p.addrs {
        Addrs::V4 { src, dst } => TC_FLOWS4.get_ptr_mut(&FlowKey4 {
            meta,
            src: *src,
            dst: *dst,
        }),
        Addrs::V6 { src, dst } => TC_FLOWS6.get_ptr_mut(&FlowKey6 {
            meta,
            src: *src,
            dst: *dst,
        }),
    };
    if let Some(v) = v {
        // SAFETY: a value of the LRU map; racing writers write a hint that
        // is valid for the packet that wrote it, and a wrong one is never
        // followed (its port or generation does not match).
        unsafe {
            (*v).ix = ix;
            (*v).ix_gen = gen;
            (*v).ix_port = port;
        }
    }
}

/// [`ParseScratch::ix_hint_port`] of a packet whose flow was not in the
/// flow cache (a port is below 65,536): no store of its own on the
/// classification's many paths, which the verifier walks each.
const NOT_CACHED: u32 = u32::MAX;

/// The flow cache's hint for the accounting program (see
/// `classify::classify_cached`).
#[inline(always)]
pub fn hint(ix: u32, gen: u32, port: u16) {
    if let Some(s) = TC_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, only this program run uses it.
        unsafe {
            write_volatile(&raw mut (*s).ix_hint, ix);
            write_volatile(&raw mut (*s).ix_hint_gen, gen);
            write_volatile(&raw mut (*s).ix_hint_port, port as u32);
        }
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
        write_volatile(&raw mut (*s).ix_hint, IX_NONE);
        write_volatile(&raw mut (*s).ix_hint_port, NOT_CACHED);
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
/// `IX_SKETCH_UNIT`s; 0 when the estimate is no more than twice a row's
/// average cell. Windows are told apart by an 8-bit tag in each counter,
/// so nothing ever has to clear the sketch.
///
/// The average is the floor collisions put under every estimate: a flood
/// of many small sources raises every cell alike, and no source of it
/// stands out, while one that sends more than its share of a cell does.
/// Without it, a flood heavy enough to fill every cell past the threshold
/// would have each of its packets look up its client in the table until
/// the agent's threshold caught up, seconds later.
#[inline(always)]
fn sketch(k: &IxKey, bytes: u64) -> u32 {
    let Some(sk) = TC_IX_SKETCH.get_ptr_mut(0) else {
        return u32::MAX;
    };
    // Per destination over sources: the client and server addresses, not
    // the port, so a source spraying ports adds up.
    let h = hash_words(k, 4);
    let step = (h >> 32) | 1;
    let window = ((coarse_ns() >> IX_WINDOW_SHIFT) & 0xff) as u32;
    let units = (bytes.div_ceil(IX_SKETCH_UNIT)).min(0xff_ffff) as u32;
    // SAFETY: as below.
    let total = unsafe { &mut (*sk).total };
    let before = if *total >> 24 == window {
        *total & 0xff_ffff
    } else {
        0
    };
    let sum = (before + units).min(0xff_ffff);
    *total = window << 24 | sum;
    let floor = sum / IX_SKETCH_WIDTH as u32;
    let mut estimate = u32::MAX;
    let mut row = 0;
    while row < IX_SKETCH_ROWS {
        let col = (h.wrapping_add(step.wrapping_mul(row as u64)) as usize) & (IX_SKETCH_WIDTH - 1);
        let i = row * IX_SKETCH_WIDTH + col;
        // SAFETY: this CPU's sketch, only this run uses it; `i` is in bounds.
        let cell = unsafe { &mut (*sk).cells[i] };
        let held = if *cell >> 24 == window {
            *cell & 0xff_ffff
        } else {
            0
        };
        let n = (held + units).min(0xff_ffff);
        *cell = window << 24 | n;
        if n < estimate {
            estimate = n;
        }
        row += 1;
    }
    if estimate <= 2 * floor {
        0
    } else {
        estimate
    }
}

/// A 64-bit hash of the key's five words.
#[inline(always)]
fn hash_key(k: &IxKey) -> u64 {
    hash_words(k, 5)
}

/// A 64-bit hash of the key's first `n` words (at most five).
#[inline(always)]
fn hash_words(k: &IxKey, n: usize) -> u64 {
    let w = k as *const IxKey as *const u64;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut i = 0;
    while i < 5 && i < n {
        // SAFETY: IxKey is 40 bytes, aligned to 8: five u64 words.
        let x = unsafe { w.add(i).read() };
        h = (h ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        i += 1;
    }
    h
}
