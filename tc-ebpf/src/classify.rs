//! Classification: the flow cache in front of the bit-vector search over
//! three prefix tables (hash probes per prefix length, LPM tries, or, for
//! a table of the zero-length prefix alone, its set in `GenInfo`), and
//! the fragment table's key.

use core::{
    intrinsics::{atomic_or, AtomicOrdering},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    maps::{lpm_trie::Key, LpmTrie},
};
use tc_common::{
    ChannelSet, FlowKey4, FlowKey6, FlowMeta, FlowValue, FragKey, GenInfo, GlobalCounters, Ip4Key,
    Ip6Key, PrefixKey4, PrefixKey6, Probes, CHANNEL_WORDS, FLAG_NO_DST_MEMO, FLAG_NO_FLOW_CACHE,
    FLOW_BITS_NEWER, FLOW_BITS_WORDS, GEN_BITS, IX_NONE, MAX_PROBES, NO_CHANNEL, PROBE_TRIE,
    TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6,
};

use crate::{
    account::hint,
    maps::{
        FLOW_SEEN_SLOTS, TC_DST_MEMO, TC_DST_V4, TC_DST_V6, TC_FLOWS4, TC_FLOWS6, TC_FLOW_BITS,
        TC_FLOW_SEEN, TC_GENS, TC_L4, TC_PREFIX4, TC_PREFIX6, TC_SCRATCH, TC_SRC_V4, TC_SRC_V6,
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
/// [`classify_cached`], or [`classify`] when `flags` (the config's) turn
/// the flow cache off; with the destination memo unless they turn it off.
#[inline(always)]
pub fn channel_slot(
    generation: u32,
    words: u32,
    dir: u8,
    p: &Parsed,
    flags: u32,
    global: &mut GlobalCounters,
) -> u32 {
    let memo = flags & FLAG_NO_DST_MEMO == 0;
    let channel = if flags & FLAG_NO_FLOW_CACHE == 0 {
        classify_cached(generation as u8, words, dir, p, memo, global)
    } else {
        classify(generation as u8, words, dir, p, memo).unwrap_or(NO_CHANNEL)
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
/// and evicts nothing (from a source space as small as a /15, a few in a
/// hundred of its flows recur while their slot still holds them, and get
/// in), while a real flow gets in on its next packet (or,
/// when a flood packet took its doorkeeper slot in between, on one of the
/// following ones). Flows in no channel are cached too: their entry carries
/// the interaction hint, which under admission is how an admitted client's
/// packets find their own counters (`account`).
///
/// A flow the cache took has its bit set in a filter ([`TC_FLOW_BITS`]),
/// and a flow whose bit is clear is not looked up: a flood's new flows
/// then cost a hash and two bit tests, not a miss in a large hash table.
/// The filter ages: of its two halves, a flow's bit is set in the newer
/// one on insert and on a hit that finds it clear there, and the agent
/// zeroes the older half and makes it the newer one every so many
/// inserts. So a flow that sends at least once between two of those
/// keeps its bit (barring a hit that races the aging, which costs one
/// fresh classification), and a flow idle through two agings loses it; it
/// is then classified afresh until the doorkeeper admits it again, whose
/// insert finds its entry and keeps it (not counted as an insert) and
/// only sets the bit. Meanwhile its packets carry no interaction hint
/// (under admission a small client's fold into the untracked entry);
/// never a wrong channel.
#[inline(always)]
pub fn classify_cached(
    generation: u8,
    words: u32,
    dir: u8,
    p: &Parsed,
    memo: bool,
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
    let h = flow_hash(&meta, p);
    // The filter's words are found again where a bit is set, rather than
    // kept across the classification: that keeps `tc_egress` within its
    // verifier headroom.
    // `stale`: the bit is set in the older half only, so a hit sets it in
    // the newer (once a flow an aging, not a write a packet).
    let (maybe, stale) = match filter_bit(h) {
        // SAFETY: words of the shared array, read at once.
        Some(FilterBit { newer, older, bit }) => unsafe {
            let newer = read_volatile(newer) & bit;
            let older = read_volatile(older) & bit;
            ((newer | older) != 0, newer == 0)
        },
        None => (true, false),
    };
    // SAFETY (both gets): the value is plain data copied out at once.
    let cached = match &p.addrs {
        _ if !maybe => None,
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
        if stale {
            if let Some(f) = filter_bit(h) {
                set_bit(f);
            }
        }
        // The interaction slot it names, for the accounting program.
        hint(v.ix, v.ix_gen, v.ix_port);
        return v.channel;
    }
    global.flow_misses += 1;
    let channel = join_channels(match classify(generation, words, dir, p, memo) {
        Some(c) => c,
        None => NO_CHANNEL,
    });
    if !second_sight(h) {
        return channel;
    }
    let value = FlowValue {
        channel,
        ix: IX_NONE,
        ix_gen: 0,
        ix_port: 0,
        _pad: 0,
    };
    // A full cache evicts its least recently used flow; failing to insert
    // only costs speed. Never over an entry: a flow whose bit aged out
    // keeps its entry and hint, and a CPU that raced this one keeps its.
    let inserted = match &p.addrs {
        Addrs::V4 { src, dst } => TC_FLOWS4.insert(
            &FlowKey4 {
                meta,
                src: *src,
                dst: *dst,
            },
            &value,
            BPF_NOEXIST as u64,
        ),
        Addrs::V6 { src, dst } => TC_FLOWS6.insert(
            &FlowKey6 {
                meta,
                src: *src,
                dst: *dst,
            },
            &value,
            BPF_NOEXIST as u64,
        ),
    };
    if inserted.is_ok() {
        global.flow_inserts += 1;
    }
    // Also when the entry was there: its bit goes back on.
    if let Some(f) = filter_bit(h) {
        set_bit(f);
    }
    channel
}

/// A flow's place in the cache's filter: its word in each half and its
/// bit there.
#[derive(Clone, Copy)]
struct FilterBit {
    /// The word in the half the agent made current last, where bits are
    /// set.
    newer: *mut u64,
    /// The word in the other half, which keeps the bits of the flows seen
    /// before that until the agent zeroes it.
    older: *mut u64,
    /// The flow's bit in either word.
    bit: u64,
}

/// The flow's place in the cache's filter: bits 12-29 of its hash, apart
/// from the doorkeeper's slot (bits 0-11) and tag (bits 32-63). The
/// filter's last word names its newer half (see [`TC_FLOW_BITS`]).
#[inline(always)]
fn filter_bit(h: u64) -> Option<FilterBit> {
    // SAFETY: a word of the shared array, read at once.
    let newer_half = unsafe { read_volatile(TC_FLOW_BITS.get_ptr(FLOW_BITS_NEWER)?) } & 1;
    let at = (h >> 18) as u32 & (FLOW_BITS_WORDS - 1);
    let half = |i: u64| TC_FLOW_BITS.get_ptr_mut(i as u32 * FLOW_BITS_WORDS + at);
    Some(FilterBit {
        newer: half(newer_half)?,
        older: half(newer_half ^ 1)?,
        bit: 1u64 << ((h >> 12) & 63),
    })
}

/// Sets the flow's bit in the filter's newer half.
#[inline(always)]
fn set_bit(f: FilterBit) {
    // SAFETY: a word of the shared array; an atomic OR, so that no CPU's
    // bit is lost to another's (BPF_ATOMIC_OR, Linux 5.12).
    unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(f.newer, f.bit) };
}

/// A hash of the flow's cache key: the doorkeeper's slot and tag, and its
/// bit in the cache's filter. IPv6 addresses are folded to a word each
/// first: two rounds of [`mix`] for either family, where a round per word
/// took `tc_egress` past its verifier headroom (621k instructions). The
/// hash is not keyed, and need not be: it spreads real flows, and a
/// spoofed flood that wants past the doorkeeper need only send each flow
/// twice (see [`classify_cached`]).
#[inline(always)]
fn flow_hash(meta: &FlowMeta, p: &Parsed) -> u64 {
    let m = u64::from(meta.generation)
        | u64::from(meta.dir) << 8
        | u64::from(meta.proto) << 16
        | u64::from(meta.l4_bits) << 24
        | u64::from(meta.dport) << 32;
    match &p.addrs {
        Addrs::V4 { src, dst } => mix(
            mix(m, 0),
            u64::from(u32::from_ne_bytes(*src)) << 32 | u64::from(u32::from_ne_bytes(*dst)),
        ),
        Addrs::V6 { src, dst } => mix(
            mix(m, word(src, 0) ^ word(src, 8).rotate_left(32)),
            word(dst, 0) ^ word(dst, 8).rotate_left(32),
        ),
    }
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

/// The doorkeeper: whether the flow (of hash `h`, [`flow_hash`])'s
/// previous uncached packet on this CPU was the last one to pass through
/// its slot. Records the flow in its slot otherwise. Collisions only delay
/// an admission (or, rarely, admit a flow one packet early); they never
/// change a classification.
#[inline(always)]
fn second_sight(h: u64) -> bool {
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
///
/// Each field's set is its longest matching prefix in its table: probed by
/// hash, one lookup per prefix length, or walked in the LPM trie, as the
/// generation's [`GenInfo::probes`] say; an address table of the
/// zero-length prefix alone is read from [`GenInfo::reach`] ([`zero_length`]).
///
/// The tables are read L4 first, then destination, then source, each
/// narrowing the channels still possible: when none is left the packet is
/// in no channel and the next table is not read, and a hash-probed table
/// skips each length that holds no prefix of a channel still possible
/// ([`GenInfo::reach`]). A flood from random sources against one service
/// so probes only the lengths the service's channels name, not the long
/// host prefixes other channels hold, each a cache miss in a large map.
///
/// What the L4 and destination tables leave possible is kept per CPU
/// ([`DstMemo`](crate::maps::DstMemo)), with the generation's epoch, the L4 query and the
/// destination: the next packet with the same ones (a flood from many
/// sources to one service, or a new client of a busy one) reads only the
/// source table. `memo` false (`FLAG_NO_DST_MEMO`), or a generation of
/// unknown epoch (0), reads all three.
#[inline(always)]
pub fn classify(generation: u8, words: u32, dir: u8, p: &Parsed, memo: bool) -> Option<u32> {
    let info = TC_GENS.get(generation as u32)?;
    let m = TC_DST_MEMO.get_ptr_mut(0)?;
    // SAFETY: per-CPU values. Runs on one CPU never interleave (the hooks
    // run in softirq or with bottom halves off), so the memo, which
    // outlives the run, is only ever read whole: its key is written before
    // its words, but no other run can look between.
    let possible = unsafe { &raw mut (*m).words };
    // Port-less protocols look up with a prefix that stops at the protocol,
    // so they can only hit protocol-wide entries, never a port range.
    // Packets whose ports or protocol are hidden look up under a flag in
    // the direction byte, whose entries hold every channel they could
    // belong to (see `L4_ANY_PORT`).
    let port = p.dport.to_be_bytes();
    let l4_data = [dir | p.l4_flags, p.proto, port[0], port[1]];
    let (family, dst) = match &p.addrs {
        Addrs::V4 { dst, .. } => (4, [u64::from(u32::from_ne_bytes(*dst)), 0]),
        Addrs::V6 { dst, .. } => (6, [word(dst, 0), word(dst, 8)]),
    };
    let head = u64::from(info.epoch)
        | u64::from(generation) << 32
        | u64::from(p.l4_bits & 0xff) << 40
        | family << 48;
    let l4 = u64::from(u32::from_ne_bytes(l4_data));
    // SAFETY (the memo's fields): as above; volatile, so that what a miss
    // stores is read back from memory and the verifier walks the source
    // lookup once for a hit and a miss alike.
    let differs = unsafe {
        (read_volatile(&raw const (*m).head) ^ head)
            | (read_volatile(&raw const (*m).l4) ^ l4)
            | (read_volatile(&raw const (*m).dst[0]) ^ dst[0])
            | (read_volatile(&raw const (*m).dst[1]) ^ dst[1])
    };
    if differs != 0 || !memo || info.epoch == 0 {
        // The key first: its values are then dead during the lookups,
        // which keeps the one stack frame within its 512 bytes on 6.1.
        // No other run on this CPU reads the memo before this one has
        // written `any` (nothing below returns early).
        // SAFETY: as above.
        unsafe {
            write_volatile(&raw mut (*m).head, head);
            write_volatile(&raw mut (*m).l4, l4);
            write_volatile(&raw mut (*m).dst[0], dst[0]);
            write_volatile(&raw mut (*m).dst[1], dst[1]);
        }
        let any = narrow(info, generation, l4_data, p, possible);
        // SAFETY: as above.
        unsafe { write_volatile(&raw mut (*m).any, any) };
    }
    // SAFETY: as above.
    if unsafe { read_volatile(&raw const (*m).any) } == 0 {
        return None;
    }
    let s = match &p.addrs {
        Addrs::V4 { src, .. } => addr4(&TC_SRC_V4, TABLE_SRC_V4, info, generation, src, possible)?,
        Addrs::V6 { src, .. } => addr6(&TC_SRC_V6, TABLE_SRC_V6, info, generation, src, possible)?,
    };
    let found = join_classify_paths(first_in(possible, s, words));
    if found == NO_CHANNEL {
        None
    } else {
        Some(found)
    }
}

/// The channels the L4 and destination tables leave possible for `p`,
/// into `acc`; returns the OR of their words, 0 when none is (also when a
/// table has no entry for the packet).
#[inline(always)]
fn narrow(
    info: &'static GenInfo,
    generation: u8,
    l4_data: [u8; 4],
    p: &Parsed,
    acc: *mut [u64; CHANNEL_WORDS],
) -> u64 {
    let l4 = if info.probes[TABLE_L4 as usize].count == PROBE_TRIE {
        let [a, b, c, d] = l4_data;
        TC_L4.get(Key::new(p.l4_bits, [generation, a, b, c, d]))
    } else {
        probe4::<false>(info, generation, TABLE_L4, l4_data, acc)
    };
    let Some(l4) = l4 else {
        return 0;
    };
    // Every word, without a branch: a bound here would let LLVM thread
    // each exit of this loop into its own copy of the next one.
    let mut i = 0;
    while i < CHANNEL_WORDS {
        // SAFETY: the per-CPU memo's words (see `classify`); volatile, so
        // that the words go through memory and what follows is walked once
        // whatever the lookups were.
        unsafe { write_volatile(&raw mut (*acc)[i], l4.words[i]) };
        i += 1;
    }
    let d = match &p.addrs {
        Addrs::V4 { dst, .. } => addr4(&TC_DST_V4, TABLE_DST_V4, info, generation, dst, acc),
        Addrs::V6 { dst, .. } => addr6(&TC_DST_V6, TABLE_DST_V6, info, generation, dst, acc),
    };
    match d {
        Some(d) => and_into(acc, d),
        None => 0,
    }
}

/// The first channel (in policy order) still possible (`acc`) that `set`
/// holds, among the first `words` words, or [`NO_CHANNEL`]: one pass that
/// stops at the first word with one. The verifier walks it once per map
/// `set` can come from (the generation's info, either family's trie and
/// hash map) before [`join_classify_paths`] merges the paths: `tc_ingress`
/// took 447k instructions on 6.18, 223k on 6.1 and 446k on 6.12, against
/// 437k, 273k and 425k when the set was first ANDed into a scratch copy
/// (`the_programs_leave_headroom_in_the_verifier_budget`).
#[inline(always)]
fn first_in(acc: *const [u64; CHANNEL_WORDS], set: &ChannelSet, words: u32) -> u32 {
    let mut i = 0;
    while i < CHANNEL_WORDS {
        if i as u32 >= words {
            break;
        }
        // SAFETY: the per-CPU memo's words (see `classify`).
        let x = unsafe { read_volatile(&raw const (*acc)[i]) } & set.words[i];
        if x != 0 {
            return i as u32 * 64 + trailing_zeros(x);
        }
        i += 1;
    }
    NO_CHANNEL
}

/// The channels still possible (`acc`, in the memo) narrowed to `set`;
/// returns the OR of the words left, 0 when no channel is.
#[inline(always)]
fn and_into(acc: *mut [u64; CHANNEL_WORDS], set: &ChannelSet) -> u64 {
    let mut any = 0;
    let mut i = 0;
    while i < CHANNEL_WORDS {
        // SAFETY: the per-CPU memo's words (see `classify`).
        unsafe {
            let x = read_volatile(&raw const (*acc)[i]) & set.words[i];
            write_volatile(&raw mut (*acc)[i], x);
            any |= x;
        }
        i += 1;
    }
    any
}

/// Whether a channel still possible (`acc`) names a prefix of the `i`th
/// probed length of `table` ([`GenInfo::reach`]): if none does, the
/// probe cannot change which of them match, and is skipped.
#[inline(always)]
fn reaches(info: &GenInfo, table: u8, i: usize, acc: *const [u64; CHANNEL_WORDS]) -> bool {
    let Some(reach) = info.reach.get(table as usize).and_then(|r| r.get(i)) else {
        return true;
    };
    let mut any = 0;
    let mut w = 0;
    while w < CHANNEL_WORDS {
        // SAFETY: the per-CPU memo's words (see `classify`).
        any |= reach.words[w] & unsafe { read_volatile(&raw const (*acc)[w]) };
        w += 1;
    }
    any != 0
}

/// Passes `channel` through the per-CPU scratch value, which the verifier
/// cannot see into: the three tables each come from a hash map, a trie or
/// the generation's `GenInfo`, and the channel from one of 16 words, and
/// without this the verifier walks the rest of the program once for every
/// combination (past 6.1's budget of one million instructions).
#[inline(always)]
fn join_classify_paths(channel: u32) -> u32 {
    let Some(s) = TC_SCRATCH.get_ptr_mut(0) else {
        return channel;
    };
    // SAFETY: per-CPU slot, only this CPU uses it while the program runs;
    // volatile so that LLVM cannot forward the store to the load.
    unsafe {
        write_volatile(&raw mut (*s).channel, channel);
        read_volatile(&raw const (*s).channel)
    }
}

/// The set of an IPv4 address's longest matching prefix in `table`
/// (probed lengths: those that [`reaches`] the channels in `acc`).
#[inline(always)]
fn addr4(
    trie: &'static LpmTrie<Ip4Key, ChannelSet>,
    table: u8,
    info: &'static GenInfo,
    generation: u8,
    addr: &[u8; 4],
    acc: *const [u64; CHANNEL_WORDS],
) -> Option<&'static ChannelSet> {
    let probes = &info.probes[table as usize];
    if let Some(all) = zero_length(info, probes, table) {
        return Some(all);
    }
    if probes.count == PROBE_TRIE {
        return trie.get(Key::new(
            GEN_BITS + 32,
            [generation, addr[0], addr[1], addr[2], addr[3]],
        ));
    }
    probe4::<true>(info, generation, table, *addr, acc)
}

/// The set of an IPv6 address's longest matching prefix in `table`
/// (probed lengths: those that [`reaches`] the channels in `acc`).
#[inline(always)]
fn addr6(
    trie: &'static LpmTrie<Ip6Key, ChannelSet>,
    table: u8,
    info: &'static GenInfo,
    generation: u8,
    addr: &[u8; 16],
    acc: *const [u64; CHANNEL_WORDS],
) -> Option<&'static ChannelSet> {
    let probes = &info.probes[table as usize];
    if let Some(all) = zero_length(info, probes, table) {
        return Some(all);
    }
    if probes.count == PROBE_TRIE {
        return trie.get(Key::new(GEN_BITS + 128, v6_key(generation, addr)));
    }
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let mut i = 0;
    while i < MAX_PROBES {
        if i >= probes.count as usize {
            break;
        }
        if reaches(info, table, i, acc) {
            // `i` is below MAX_PROBES; `get` keeps a panic path (which the
            // verifier refuses) out of the loop LLVM rotates.
            let len = probes.lens.get(i).copied().unwrap_or(0) as u32;
            // Bits in the low half: 1 when len > 64, without a branch.
            let over = (len.wrapping_sub(65) >> 31) ^ 1;
            let lo_len = over * len.wrapping_sub(64);
            let h = (hi & mask64(len - lo_len)).to_be_bytes();
            let l = (lo & mask64(lo_len)).to_be_bytes();
            // Built whole for each probe rather than zeroed once before
            // the loop: bpf-linker's `--bpf-expand-memcpy-in-order` leaves
            // every memset of more than a few bytes as a call to a loop
            // that stores a byte at a time.
            let key = PrefixKey6 {
                generation,
                table,
                len: len as u8,
                _pad: 0,
                data: [
                    h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4],
                    l[5], l[6], l[7],
                ],
            };
            if let Some(set) = TC_PREFIX6.get_ptr(&key) {
                // SAFETY: a value of the map, valid for this run; only read.
                return Some(unsafe { &*set });
            }
        }
        i += 1;
    }
    None
}

/// The set of `data`'s longest matching prefix in `table`, in the
/// IPv4/L4 hash map; with `SKIP`, among the lengths that [`reaches`]
/// the channels still possible (`acc`).
///
/// An L4 query may stop short of the port (`Parsed::l4_bits`), and the
/// trie then matches no longer entry; the probes need not check it: only
/// TCP and UDP entries under a flagless direction byte are longer than the
/// protocol (`policy::compile`), and a query stops short only for another
/// protocol or under a flag (`L4_ANY_PORT`, `L4_UNKNOWN`), whose masked
/// data no longer entry holds.
#[inline(always)]
fn probe4<const SKIP: bool>(
    info: &'static GenInfo,
    generation: u8,
    table: u8,
    data: [u8; 4],
    acc: *const [u64; CHANNEL_WORDS],
) -> Option<&'static ChannelSet> {
    let probes = &info.probes[table as usize];
    let value = u32::from_be_bytes(data);
    let mut key = PrefixKey4 {
        generation,
        table,
        len: 0,
        _pad: 0,
        data: [0; 4],
    };
    let mut i = 0;
    while i < MAX_PROBES {
        if i >= probes.count as usize {
            break;
        }
        if !SKIP || reaches(info, table, i, acc) {
            // As in `addr6`.
            let len = probes.lens.get(i).copied().unwrap_or(0) as u32;
            key.len = len as u8;
            key.data = (value & mask32(len)).to_be_bytes();
            if let Some(set) = TC_PREFIX4.get_ptr(&key) {
                // SAFETY: a value of the map, valid for this run; only read.
                return Some(unsafe { &*set });
            }
        }
        i += 1;
    }
    None
}

/// The set of an address table that holds only the zero-length prefix
/// (0.0.0.0/0 or ::/0), or `None` for any other table:
/// without a lookup, as it is that length's reach ([`GenInfo::reach`]:
/// the entry has no containing prefix to take away). The common case of a
/// side that every channel leaves open (`to:` unset), which
/// `prefixes::probes_of_lens` hashes for this. Checked once before the
/// probes rather than per length: a different kind of pointer per probe
/// would multiply the paths the verifier walks.
#[inline(always)]
fn zero_length(info: &'static GenInfo, probes: &Probes, table: u8) -> Option<&'static ChannelSet> {
    if probes.count != 1 || probes.lens[0] != 0 {
        return None;
    }
    info.reach.get(table as usize).map(|r| &r[0])
}

/// The low `n` of 64 bits set, `n` in 0..=64, without a branch (the
/// verifier walks each branch of the probe loops once per iteration).
#[inline(always)]
fn low64(n: u32) -> u64 {
    let half = n >> 1;
    ((1u64 << half) << (n - half)).wrapping_sub(1)
}

/// The top `len` of 32 bits set, `len` in 0..=32 (the agent writes no
/// other; another value only makes a probe miss).
#[inline(always)]
fn mask32(len: u32) -> u32 {
    !(low64(32u32.wrapping_sub(len)) as u32)
}

/// The top `len` of 64 bits set, `len` in 0..=64.
#[inline(always)]
fn mask64(len: u32) -> u64 {
    !low64(64u32.wrapping_sub(len))
}

#[inline(always)]
fn v6_key(generation: u8, addr: &[u8; 16]) -> Ip6Key {
    let mut key = [0u8; 17];
    key[0] = generation;
    key[1..].copy_from_slice(addr);
    key
}

/// Index of the lowest set bit of a non-zero word. BPF has no ctz
/// instruction, and LLVM's expansion reads a table in .rodata; this counts
/// the bits below the lowest set one (SWAR popcount), without branches:
/// branches would split the verifier's walk into one path per outcome, for
/// every word and every combination of the three tables' lookup kinds.
#[inline(always)]
fn trailing_zeros(x: u64) -> u32 {
    let mut v = (x & x.wrapping_neg()).wrapping_sub(1);
    v -= (v >> 1) & 0x5555_5555_5555_5555;
    v = (v & 0x3333_3333_3333_3333) + ((v >> 2) & 0x3333_3333_3333_3333);
    v = (v + (v >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (v.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}
