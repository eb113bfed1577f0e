//! The kernel datapath: classify every packet into a channel and hold the
//! channel to its limits.
//!
//! - `tc_ingress` / `tc_egress`: tc classifiers (TCX on 6.6+, clsact before),
//!   the default hooks.
//! - `xdp_ingress`: opt-in early-drop hook for floods, same classifier and maps.
//! - `tc_pass` / `xdp_pass`: bare programs, the floor the benchmark measures against.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_cxchg is the only CAS that lowers to BPF_CMPXCHG on bpfel"
)]

mod bucket;
mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_hash_recalc, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use tc_common::{
    BucketState, ChannelCounters, ChannelPolicy, ChannelSet, Config, FlowKey4, FlowKey6, FlowMeta,
    FragEntry, FragKey, GenInfo, GlobalCounters, Ip4Key, Ip6Key, L4Key, ACTION_DELAY, ACTION_MARK,
    CHANNEL_SLOTS, CHANNEL_WORDS, DIR_EGRESS, DIR_INGRESS, FLAG_NO_FLOW_CACHE, GEN_BITS,
    MAX_CHANNELS, MAX_FLOWS, MAX_FRAGS, MAX_L4_ENTRIES, MAX_PREFIXES, MODE_MONITOR, NO_CHANNEL,
    PACE_SLOTS,
};

use crate::{
    bucket::{conform, debit, over_rate, past_mark_depth, schedule, time_cost, Conformance},
    parse::{parse, Addrs, Load, Parsed, Skip, FRAG_FIRST, FRAG_LATER},
};

#[map]
static TC_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static TC_GENS: Array<GenInfo> = Array::with_max_entries(2, 0);
#[map]
static TC_FLOWS4: LruHashMap<FlowKey4, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static TC_FLOWS6: LruHashMap<FlowKey6, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static TC_SRC_V4: LpmTrie<Ip4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static TC_DST_V4: LpmTrie<Ip4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static TC_SRC_V6: LpmTrie<Ip6Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static TC_DST_V6: LpmTrie<Ip6Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static TC_L4: LpmTrie<L4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_L4_ENTRIES, 0);
#[map]
static TC_POLICIES: Array<ChannelPolicy> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
static TC_BUCKETS: Array<BucketState> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
static TC_COUNTERS: PerCpuArray<ChannelCounters> = PerCpuArray::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
static TC_GLOBAL: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);
/// `delay` channels: per flow (hash slot), when its last packet finishes
/// leaving at the channel's rate. A flow whose last packet has finished has
/// nothing waiting in fq: it is sparse, and may leave ahead of the backlog.
#[map]
static TC_PACE: Array<u64> = Array::with_max_entries(PACE_SLOTS, 0);
/// Fragmented datagrams: the channel and verdict of each one's first
/// fragment, which its later fragments (no ports of their own) follow.
#[map]
static TC_FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

/// What the datapath decided for one packet. A plain struct rather than an
/// enum with payloads: LLVM may fill an unused payload with any register,
/// a packet pointer included, which the verifier then refuses.
struct Verdict {
    /// `PASS`, `DROP`, `DELAY` or `MARK`.
    action: u8,
    /// `DELAY`: the earliest departure time, `bpf_ktime_get_ns` clock.
    tstamp: u64,
    /// `MARK`: offset of the IP header to set CE in.
    l3: u32,
    /// `MARK`: the header is IPv6.
    v6: bool,
}

const PASS: u8 = 0;
const DROP: u8 = 1;
const DELAY: u8 = 2;
const MARK: u8 = 3;

/// How [`enforce`] treats a packet: judge it on its own...
const JUDGE: u8 = 0;
/// ...pass it and charge it whatever the buckets hold (a later fragment of
/// a datagram whose first fragment passed: the debt refuses the next
/// datagrams instead, so the rate holds and no datagram is cut)...
const FOLLOW_PASS: u8 = 1;
/// ...or drop it (a later fragment of a dropped datagram).
const FOLLOW_DROP: u8 = 2;

impl Verdict {
    const PASS: Self = Self {
        action: PASS,
        tstamp: 0,
        l3: 0,
        v6: false,
    };
    const DROP: Self = Self {
        action: DROP,
        tstamp: 0,
        l3: 0,
        v6: false,
    };
}

/// The packet as the hooks see it: linear header bytes plus accounting sizes.
#[derive(Clone, Copy)]
struct Frame {
    /// First byte of the Ethernet header.
    start: usize,
    /// One past the last byte readable without a helper.
    end: usize,
    /// Bytes charged to the byte bucket (`skb->len`, GSO super-packets whole).
    len: u64,
    /// Packets charged to the packet bucket (GSO segments, at least 1).
    segs: u64,
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_INGRESS)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_EGRESS)
}

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len,
        segs: 1,
    };
    let v = handle(&frame, &XdpLoad(&ctx), DIR_INGRESS, || 0);
    match v.action {
        DROP => xdp_action::XDP_DROP,
        MARK => {
            mark_ce_xdp(&ctx, v.l3 as usize, v.v6);
            xdp_action::XDP_PASS
        }
        // Delay is refused for ingress channels at validation.
        _ => xdp_action::XDP_PASS,
    }
}

/// Packet bytes through `bpf_skb_load_bytes`, also outside the linear area.
struct TcLoad<'a>(&'a TcContext);

impl Load for TcLoad<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// Packet bytes through `bpf_xdp_load_bytes` (Linux 5.18+).
struct XdpLoad<'a>(&'a XdpContext);

impl Load for XdpLoad<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buf`.
        let r = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                buf.as_mut_ptr().cast(),
                N as u32,
            )
        };
        (r == 0).then_some(buf)
    }
}

/// Sets ECN CE in the IP header at `l3`, fixing the IPv4 checksum by
/// RFC 1624 incremental update.
#[inline(always)]
fn mark_ce_xdp(ctx: &XdpContext, l3: usize, v6: bool) {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + l3 + 20 > end {
        return;
    }
    let p = (start + l3) as *mut u8;
    // SAFETY: the 20 bytes at p were bounds-checked above.
    unsafe {
        let old = *p.add(1);
        if v6 {
            *p.add(1) = old | 0x30;
            return;
        }
        let new = old | 0x03;
        *p.add(1) = new;
        let word = |tos: u8| u16::from_be_bytes([*p, tos]) as u32;
        let hc = u16::from_be_bytes([*p.add(10), *p.add(11)]) as u32;
        let mut sum = (!hc & 0xffff) + (!word(old) & 0xffff) + word(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let hc = (!sum & 0xffff) as u16;
        let [a, b] = hc.to_be_bytes();
        *p.add(10) = a;
        *p.add(11) = b;
    }
}

/// Sets ECN CE through the skb helpers (the header may not be writable in place).
#[inline(always)]
fn mark_ce_tc(ctx: &TcContext, l3: usize, v6: bool) {
    let Ok(w) = ctx.load::<[u8; 2]>(l3) else {
        return;
    };
    if v6 {
        let _ = ctx.store(l3 + 1, &(w[1] | 0x30), 0);
        return;
    }
    let new = [w[0], w[1] | 0x03];
    let _ = ctx.l3_csum_replace(
        l3 + 10,
        u16::from_ne_bytes(w) as u64,
        u16::from_ne_bytes(new) as u64,
        2,
    );
    let _ = ctx.store(l3 + 1, &new[1], 0);
}

/// Floor for the per-packet cost benchmark: a tc program that only passes.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Floor for XDP: only passes.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bytes of headers the parser may need in the linear area: Ethernet, two
/// VLAN tags, IPv6 with eight short extension headers, and a TCP header.
const PULL_LEN: u32 = 256;

#[inline(always)]
fn tc_verdict(ctx: &TcContext, dir: u8) -> i32 {
    let len = ctx.len();
    // Headers of locally generated or GRO'd packets can sit outside the linear
    // area; pull them in once so direct packet access sees them.
    if ((ctx.data_end() - ctx.data()) as u32) < len
        && ((ctx.data_end() - ctx.data()) as u32) < PULL_LEN
    {
        let want = if len < PULL_LEN { len } else { PULL_LEN };
        let _ = ctx.pull_data(want);
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len: len as u64,
        segs: if gso_segs == 0 { 1 } else { gso_segs },
    };
    // SAFETY: the context pointer is valid for the whole program run.
    // Usually a read of the hash the stack already set (TCP's txhash, the
    // RX hash); computed once otherwise.
    let v = handle(&frame, &TcLoad(ctx), dir, || unsafe {
        bpf_get_hash_recalc(ctx.skb.skb)
    });
    match v.action {
        DROP => TC_ACT_SHOT,
        DELAY => {
            // fq releases the packet at skb->tstamp; keep a later departure
            // the sender (TCP's own EDT pacing) already chose.
            // SAFETY: the context pointer is valid for the whole program run.
            unsafe {
                if (*ctx.skb.skb).tstamp < v.tstamp {
                    (*ctx.skb.skb).tstamp = v.tstamp;
                }
            }
            TC_ACT_UNSPEC
        }
        MARK => {
            mark_ce_tc(ctx, v.l3 as usize, v.v6);
            TC_ACT_UNSPEC
        }
        _ => TC_ACT_UNSPEC,
    }
}

/// Counts the packet node-wide, classifies it and applies its channel's policy.
///
/// `flow_hash` gives the kernel's flow hash (`skb->hash`), asked for only
/// by `delay` channels (tc egress), which pace per flow.
#[inline(always)]
fn handle(frame: &Frame, ld: &impl Load, dir: u8, flow_hash: impl Fn() -> u32) -> Verdict {
    let Some(global) = TC_GLOBAL.get_ptr_mut(0) else {
        return Verdict::PASS;
    };
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    let global = unsafe { &mut *global };
    global.seen_pkts += frame.segs;
    global.seen_bytes += frame.len;

    let mut parsed = match parse(frame.start, frame.end, ld) {
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
    if parsed.l4_flags != 0 && parsed.frag != FRAG_LATER {
        global.no_ports_pkts += 1;
    }
    join_parse_paths(&mut parsed);
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
        // SAFETY: the value is copied out at once.
        first = unsafe { TC_FRAGS.get(&frag_key(&parsed, dir)) }.copied();
        if first.is_none() {
            // Its first fragment was not seen: classified on addresses and
            // protocol, into the first channel that could hold the datagram.
            global.fragment_orphan_pkts += 1;
        }
    }
    let (slot, follow) = match first {
        Some(f) if f.dropped != 0 => (f.slot, FOLLOW_DROP),
        Some(f) => (f.slot, FOLLOW_PASS),
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
    let verdict = if slot == NO_CHANNEL {
        global.unclassified_pkts += 1;
        global.unclassified_bytes += frame.len;
        Verdict::PASS
    } else {
        enforce(&wire, &parsed, slot, follow, global, flow_hash)
    };
    if parsed.frag == FRAG_FIRST {
        let first = FragEntry {
            slot,
            dropped: (verdict.action == DROP) as u8,
            _pad: [0; 3],
        };
        // A full table pushes out its oldest datagram, whose remaining
        // fragments become orphans (counted).
        let _ = TC_FRAGS.insert(&frag_key(&parsed, dir), &first, 0);
    }
    verdict
}

/// Per-CPU scratch that [`join_parse_paths`] passes parse results through.
#[repr(C)]
struct ParseScratch {
    l3: u32,
    hdr_len: u32,
    frag: u8,
    l4_flags: u8,
    _pad: [u8; 6],
}

/// Not pinned: nothing in it outlives one packet.
#[map]
static TC_SCRATCH: PerCpuArray<ParseScratch> = PerCpuArray::with_max_entries(1, 0);

/// Passes the parse results that differ only in small constants between
/// the parser's exits (fragment kind, port flags, header offsets) through a
/// map value, which the verifier cannot see into. Every parse outcome then
/// reaches classification and enforcement as the same abstract state, and
/// the verifier walks those once instead of once per outcome (without this,
/// the fragment and extension-header outcomes exhaust its budget of one
/// million instructions). Costs a store and a load on a per-CPU line.
#[inline(always)]
fn join_parse_paths(p: &mut Parsed) {
    let Some(s) = TC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs;
    // volatile so that LLVM cannot forward the stores to the loads.
    unsafe {
        core::ptr::write_volatile(&raw mut (*s).l3, p.l3);
        core::ptr::write_volatile(&raw mut (*s).hdr_len, p.hdr_len);
        core::ptr::write_volatile(&raw mut (*s).frag, p.frag);
        core::ptr::write_volatile(&raw mut (*s).l4_flags, p.l4_flags);
        // Masks keep the values provably small for the verifier (an
        // offset into the packet must be bounded); they change nothing.
        p.l3 = core::ptr::read_volatile(&raw const (*s).l3) & 0xff;
        p.hdr_len = core::ptr::read_volatile(&raw const (*s).hdr_len) & 0xffff;
        p.frag = core::ptr::read_volatile(&raw const (*s).frag);
        p.l4_flags = core::ptr::read_volatile(&raw const (*s).l4_flags);
    }
}

/// The fragment-table key of a fragmented packet seen in direction `dir`.
#[inline(always)]
fn frag_key(p: &Parsed, dir: u8) -> FragKey {
    let mut key = FragKey {
        family: 4,
        dir,
        proto: p.proto,
        _pad: 0,
        id: p.frag_id,
        src: [0; 16],
        dst: [0; 16],
    };
    match &p.addrs {
        Addrs::V4 { src, dst } => {
            key.src[..4].copy_from_slice(src);
            key.dst[..4].copy_from_slice(dst);
        }
        Addrs::V6 { src, dst } => {
            key.family = 6;
            key.src = *src;
            key.dst = *dst;
        }
    }
    key
}

/// [`classify`] behind the flow cache: one hash lookup for a known flow
/// instead of three trie walks.
#[inline(always)]
fn classify_cached(generation: u8, words: u32, dir: u8, p: &Parsed) -> Option<u32> {
    let meta = FlowMeta {
        generation,
        dir: dir | p.l4_flags,
        proto: p.proto,
        l4_bits: p.l4_bits as u8,
        dport: p.dport,
        _pad: 0,
    };
    // SAFETY (both gets): the value is a plain u32 copied out at once.
    let cached = match &p.addrs {
        Addrs::V4 { src, dst } => unsafe {
            TC_FLOWS4.get(&FlowKey4 {
                meta,
                src: *src,
                dst: *dst,
            })
        },
        Addrs::V6 { src, dst } => unsafe {
            TC_FLOWS6.get(&FlowKey6 {
                meta,
                src: *src,
                dst: *dst,
            })
        },
    };
    if let Some(&channel) = cached {
        return if channel == NO_CHANNEL {
            None
        } else {
            Some(channel)
        };
    }
    let channel = classify(generation, words, dir, p);
    let value = channel.unwrap_or(NO_CHANNEL);
    // A full cache evicts its least recently used flow; failing to insert only costs speed.
    let _ = match &p.addrs {
        Addrs::V4 { src, dst } => TC_FLOWS4.insert(
            &FlowKey4 {
                meta,
                src: *src,
                dst: *dst,
            },
            &value,
            0,
        ),
        Addrs::V6 { src, dst } => TC_FLOWS6.insert(
            &FlowKey6 {
                meta,
                src: *src,
                dst: *dst,
            },
            &value,
            0,
        ),
    };
    channel
}

/// Index of the first channel (in policy order) whose source set, destination
/// set and protocol/port all match, or `None`.
#[inline(always)]
fn classify(generation: u8, words: u32, dir: u8, p: &Parsed) -> Option<u32> {
    let (src, dst) = match &p.addrs {
        Addrs::V4 { src, dst } => {
            let s = TC_SRC_V4.get(Key::new(
                GEN_BITS + 32,
                [generation, src[0], src[1], src[2], src[3]],
            ))?;
            let d = TC_DST_V4.get(Key::new(
                GEN_BITS + 32,
                [generation, dst[0], dst[1], dst[2], dst[3]],
            ))?;
            (s, d)
        }
        Addrs::V6 { src, dst } => {
            let s = TC_SRC_V6.get(Key::new(GEN_BITS + 128, v6_key(generation, src)))?;
            let d = TC_DST_V6.get(Key::new(GEN_BITS + 128, v6_key(generation, dst)))?;
            (s, d)
        }
    };
    // Port-less protocols look up with a prefix that stops at the protocol,
    // so they can only hit protocol-wide entries, never a port range.
    // Packets whose ports or protocol are hidden look up under a flag in
    // the direction byte, whose entries hold every channel they could
    // belong to (see `L4_ANY_PORT`).
    let port = p.dport.to_be_bytes();
    let l4 = TC_L4.get(Key::new(
        p.l4_bits,
        [generation, dir | p.l4_flags, p.proto, port[0], port[1]],
    ))?;

    let mut i = 0;
    while i < CHANNEL_WORDS {
        if i as u32 >= words {
            break;
        }
        let x = src.words[i] & dst.words[i] & l4.words[i];
        if x != 0 {
            return Some(i as u32 * 64 + trailing_zeros(x));
        }
        i += 1;
    }
    None
}

#[inline(always)]
fn v6_key(generation: u8, addr: &[u8; 16]) -> Ip6Key {
    let mut key = [0u8; 17];
    key[0] = generation;
    key[1..].copy_from_slice(addr);
    key
}

/// Index of the lowest set bit of a non-zero word. BPF has no ctz
/// instruction; this is six branches instead of a table in .rodata.
#[inline(always)]
fn trailing_zeros(mut x: u64) -> u32 {
    let mut n = 0;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
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
fn enforce(
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
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let bucket = bucket as *mut BucketState;

    if policy.action == ACTION_DELAY && policy.mode != MODE_MONITOR {
        // SAFETY: the bucket pointer comes from an array lookup and stays
        // valid for this run; all writers use atomics.
        return match unsafe { schedule(bucket, policy, now, frame.len, frame.segs) } {
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
            l3: parsed.l3,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
