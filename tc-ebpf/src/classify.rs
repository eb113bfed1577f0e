//! Classification: the flow cache in front of the bit-vector search over
//! three LPM tries, and the fragment table's key.

use aya_ebpf::maps::lpm_trie::Key;
use tc_common::{
    FlowKey4, FlowKey6, FlowMeta, FlowValue, FragKey, Ip6Key, CHANNEL_WORDS, GEN_BITS, IX_NONE,
    NO_CHANNEL,
};

use crate::{
    account::hint,
    maps::{TC_DST_V4, TC_DST_V6, TC_FLOWS4, TC_FLOWS6, TC_L4, TC_SRC_V4, TC_SRC_V6},
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
pub fn channel_slot(generation: u32, words: u32, dir: u8, p: &Parsed, cache: bool) -> u32 {
    let channel = if cache {
        classify_cached(generation as u8, words, dir, p)
    } else {
        classify(generation as u8, words, dir, p)
    };
    match channel {
        Some(c) => generation * tc_common::MAX_CHANNELS + c,
        None => NO_CHANNEL,
    }
}

/// [`classify`] behind the flow cache: one hash lookup for a known flow
/// instead of three trie walks.
#[inline(always)]
pub fn classify_cached(generation: u8, words: u32, dir: u8, p: &Parsed) -> Option<u32> {
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
        // The interaction slot it names, for the accounting program.
        hint(v.ix, v.ix_gen, v.ix_port);
        let channel = v.channel;
        return if channel == NO_CHANNEL {
            None
        } else {
            Some(channel)
        };
    }
    let channel = classify(generation, words, dir, p);
    let value = FlowValue {
        channel: channel.unwrap_or(NO_CHANNEL),
        ix: IX_NONE,
        ix_gen: 0,
        ix_port: 0,
        _pad: 0,
    };
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
