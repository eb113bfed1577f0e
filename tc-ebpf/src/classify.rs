//! Classification: the flow cache in front of the bit-vector search over
//! three LPM tries, and the fragment table's key.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::maps::lpm_trie::Key;
use tc_common::{
    FlowKey4, FlowKey6, FlowMeta, FlowValue, FragKey, GlobalCounters, Ip6Key, CHANNEL_WORDS,
    GEN_BITS, IX_NONE, NO_CHANNEL,
};

use crate::{
    account::hint,
    maps::{
        FLOW_SEEN_SLOTS, TC_DST_V4, TC_DST_V6, TC_FLOWS4, TC_FLOWS6, TC_FLOW_SEEN, TC_L4, TC_SCRATCH,
        TC_SRC_V4, TC_SRC_V6,
    },
    parse::{Addrs, Parsed},
};

/// The fragment-table key of a fragmented packet seen in direction `dir`.
#[inline(always)]
pub fn frag_key(p: &Parsed, dir: u8) -> FragKey {
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
            // As Linux reassembles: on addresses and id, not on the
            // next-header a later fragment claims.
            key.family = 6;
            key.proto = 0;
            key.src = *src;
            key.dst = *dst;
        }
    }
    key
}

/// The channel slot of a packet in `generation`, or [`NO_CHANNEL`]:
/// [`classify_cached`], or [`classify`] when `cache` is false.
#[inline(always)]
pub fn channel_slot(
    generation: u32,
    words: u32,
    dir: u8,
    p: &Parsed,
    cache: bool,
    global: &mut GlobalCounters,
) -> u32 {
    let channel = if cache {
        classify_cached(generation as u8, words, dir, p, global)
    } else {
        classify(generation as u8, words, dir, p).unwrap_or(NO_CHANNEL)
    };
    if channel == NO_CHANNEL {
        NO_CHANNEL
    } else {
        generation * tc_common::MAX_CHANNELS + channel
    }
}

/// [`classify`] behind the flow cache: one hash lookup for a known flow
/// instead of three trie walks. The channel, or [`NO_CHANNEL`] (a plain
/// value rather than an `Option`: LLVM may compute with an `Option`'s
/// undefined payload on the `None` path, which the verifier rejects as a
/// read of an uninitialised register).
///
/// The cache only takes flows that profit from it, so that a flood cannot
/// push out the flows it exists for: a flow is cached on its second
/// packet in a row on this CPU (a "doorkeeper", as in TinyLFU). A
/// random-source flood, whose every packet is a new flow, inserts nothing
/// and evicts nothing, while a real flow gets in on its next packet (or,
/// when a flood packet took its doorkeeper slot in between, on one of the
/// following ones). Flows in no channel are cached too: their entry carries
/// the interaction hint, which under admission is how an admitted client's
/// packets find their own counters (`account`).
#[inline(always)]
pub fn classify_cached(
    generation: u8,
    words: u32,
    dir: u8,
    p: &Parsed,
    global: &mut GlobalCounters,
) -> u32 {
    let meta = FlowMeta {
        generation,
        dir: dir | p.l4_flags,
        proto: p.proto,
        l4_bits: p.l4_bits as u8,
        dport: p.dport,
        _pad: 0,
    };
    // SAFETY (both gets): the value is plain data copied out at once.
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
    if let Some(&v) = cached {
        global.flow_hits += 1;
        // The interaction slot it names, for the accounting program.
        hint(v.ix, v.ix_gen, v.ix_port);
        return v.channel;
    }
    global.flow_misses += 1;
    let channel = join_channels(match classify(generation, words, dir, p) {
        Some(c) => c,
        None => NO_CHANNEL,
    });
    if !second_sight(&meta, p) {
        return channel;
    }
    let value = FlowValue {
        channel,
        ix: IX_NONE,
        ix_gen: 0,
        ix_port: 0,
        _pad: 0,
    };
    // A full cache evicts its least recently used flow; failing to insert only costs speed.
    let inserted = match &p.addrs {
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
    if inserted.is_ok() {
        global.flow_inserts += 1;
    }
    channel
}

/// Passes a classification through the per-CPU scratch value, which the
/// verifier cannot see into: the admission and insertion that follow are
/// verified once, not once per word of the bit-vector search that found
/// the channel (as `pipeline::join_enforce_paths` does for enforcement).
#[inline(always)]
fn join_channels(channel: u32) -> u32 {
    let Some(s) = TC_SCRATCH.get_ptr_mut(0) else {
        return channel;
    };
    // SAFETY: per-CPU scratch, only this program run uses it; volatile so
    // that LLVM cannot forward the store to the load. The pipeline writes
    // the enforced slot over it later.
    unsafe {
        write_volatile(&raw mut (*s).slot, channel);
        read_volatile(&raw const (*s).slot)
    }
}

/// The doorkeeper: whether the flow's previous uncached packet on this CPU
/// was the last one to pass through its slot. Records the flow in its slot
/// otherwise. Collisions only delay an admission (or, rarely, admit a flow
/// one packet early); they never change a classification.
#[inline(always)]
fn second_sight(meta: &FlowMeta, p: &Parsed) -> bool {
    let m = u64::from(meta.generation)
        | u64::from(meta.dir) << 8
        | u64::from(meta.proto) << 16
        | u64::from(meta.l4_bits) << 24
        | u64::from(meta.dport) << 32;
    let h = match &p.addrs {
        Addrs::V4 { src, dst } => mix(
            mix(m, 0),
            u64::from(u32::from_ne_bytes(*src)) << 32 | u64::from(u32::from_ne_bytes(*dst)),
        ),
        Addrs::V6 { src, dst } => {
            let mut h = mix(m, 0);
            h = mix(h, word(src, 0));
            h = mix(h, word(src, 8));
            h = mix(h, word(dst, 0));
            mix(h, word(dst, 8))
        }
    };
    let tag = (h >> 32) as u32 | 1;
    let Some(seen) = TC_FLOW_SEEN.get_ptr_mut((h as u32) & (FLOW_SEEN_SLOTS - 1)) else {
        return false;
    };
    // SAFETY: a per-CPU slot, only this program run uses it.
    unsafe {
        if *seen == tag {
            *seen = 0;
            return true;
        }
        *seen = tag;
    }
    false
}

/// One round of a multiply-xorshift hash (the 64-bit finaliser of
/// MurmurHash3's constants): cheap in BPF, and good enough to spread flows
/// over the doorkeeper's slots.
#[inline(always)]
fn mix(h: u64, w: u64) -> u64 {
    let mut x = (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.wrapping_mul(0xc4ce_b9fe_1a85_ec53)
}

/// Bytes `at..at + 8` of an address, as a word.
#[inline(always)]
fn word(a: &[u8; 16], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&a[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// Index of the first channel (in policy order) whose source set, destination
/// set and protocol/port all match, or `None`.
#[inline(always)]
pub fn classify(generation: u8, words: u32, dir: u8, p: &Parsed) -> Option<u32> {
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
