//! Types shared by the eBPF datapath (`tc-ebpf`) and the agent (`tc-agent`).
//!
//! Everything here is `#[repr(C)]`, free of implicit padding (checked by the
//! size asserts at the bottom) and plain old data, so that the kernel and the
//! agent agree on every byte of every map key and value.
//!
//! # How a packet is classified
//!
//! Classification is a linear bit-vector search (as in bpf-iptables): the
//! agent compiles the policy into three per-field lookup tables whose values
//! are bit vectors of channel indices, and the datapath ANDs the three vectors
//! and takes the lowest set bit, which is the first channel in file order that
//! matches every field. Per-packet work is three map lookups plus an AND over
//! at most [`CHANNEL_WORDS`] words; it never loops over channels.
//!
//! - source address: LPM trie ([`SRC_V4`]/[`SRC_V6`] maps), key [`Ip4Key`]/[`Ip6Key`];
//! - destination address: LPM trie ([`DST_V4`]/[`DST_V6`]), same keys;
//! - direction, protocol and destination port: LPM trie ([`L4`]), key [`L4Key`].
//!
//! A table whose prefixes come in few lengths lives instead in a prefix
//! hash map ([`PREFIX4`]/[`PREFIX6`]) that the datapath probes once per
//! length, longest first ([`Probes`], in the generation's [`GenInfo`]).
//!
//! Every key starts with a generation byte: the agent writes a whole new
//! policy under the inactive generation, then flips [`Config::generation`].
//! The datapath reads the generation once per packet, so a packet is never
//! classified against a mix of two policies.
#![no_std]

/// Channels per generation. A channel index is a bit position in [`ChannelSet`].
pub const MAX_CHANNELS: u32 = 1024;
/// 64-bit words in a [`ChannelSet`].
pub const CHANNEL_WORDS: usize = (MAX_CHANNELS as usize) / 64;
/// Generations held at once: the live one and the one being written.
pub const GENERATIONS: u32 = 2;
/// Per-channel array maps hold `GENERATIONS * MAX_CHANNELS` slots.
pub const CHANNEL_SLOTS: u32 = GENERATIONS * MAX_CHANNELS;
/// Entries an address trie may hold, over both generations.
pub const MAX_PREFIXES: u32 = 2 * 65_536 + 1_024;
/// Entries the L4 trie may hold, over both generations.
pub const MAX_L4_ENTRIES: u32 = 65_536;

/// Map names, shared so that the agent cannot misspell them.
pub const CONFIG: &str = "TC_CONFIG";
pub const SRC_V4: &str = "TC_SRC_V4";
pub const DST_V4: &str = "TC_DST_V4";
pub const SRC_V6: &str = "TC_SRC_V6";
pub const DST_V6: &str = "TC_DST_V6";
pub const L4: &str = "TC_L4";
/// The prefix hash maps (see [`Probes`]): IPv4 and L4, and IPv6.
pub const PREFIX4: &str = "TC_PREFIX4";
pub const PREFIX6: &str = "TC_PREFIX6";
pub const POLICIES: &str = "TC_POLICIES";
pub const BUCKETS: &str = "TC_BUCKETS";
pub const COUNTERS: &str = "TC_COUNTERS";
pub const GLOBAL: &str = "TC_GLOBAL";
pub const GENS: &str = "TC_GENS";
pub const FLOWS4: &str = "TC_FLOWS4";
pub const FLOWS6: &str = "TC_FLOWS6";
pub const FLOW_BITS: &str = "TC_FLOW_BITS";
pub const PACE: &str = "TC_PACE";
pub const FRAGS: &str = "TC_FRAGS";
pub const CONNS: &str = "TC_CONNS";
pub const CONN_POOLS: &str = "TC_CONN_POOLS";
pub const CONN_GC: &str = "TC_CONN_GC";
pub const CONN_CONF: &str = "TC_CONN_CONF";
pub const IX: &str = "TC_IX";
pub const IX_CONF: &str = "TC_IX_CONF";
pub const IX_IFACES: &str = "TC_IX_IFACES";
pub const IX_SLOTS: &str = "TC_IX_SLOTS";
pub const IX_FREE: &str = "TC_IX_FREE";
pub const IX_ALLOC: &str = "TC_IX_ALLOC";
pub const IX_GEN: &str = "TC_IX_GEN";
pub const ACCOUNT: &str = "TC_ACCOUNT";
pub const ACCOUNT_XDP_PROGS: &str = "TC_ACCOUNT_XDP";

/// All pinned maps, in the order the agent pins and reports them.
///
/// The accounting program arrays ([`ACCOUNT`], [`ACCOUNT_XDP_PROGS`]) are
/// not among them: each loaded object's hooks must tail-call that object's
/// own accounting programs (they share its unpinned scratch value), so a
/// new agent never reuses an earlier one's. Each object's arrays are pinned
/// apart, until no program uses them (see the agent's
/// `datapath::accounting`).
pub const MAP_NAMES: [&str; 29] = [
    CONFIG, GENS, SRC_V4, DST_V4, SRC_V6, DST_V6, L4, PREFIX4, PREFIX6, POLICIES, BUCKETS,
    COUNTERS, GLOBAL, FLOWS4, FLOWS6, FLOW_BITS, PACE, FRAGS, CONNS, CONN_POOLS, CONN_GC,
    CONN_CONF, IX, IX_CONF, IX_IFACES, IX_SLOTS, IX_FREE, IX_ALLOC, IX_GEN,
];

/// Slots of the [`ACCOUNT`] program array (tc) and the
/// [`ACCOUNT_XDP_PROGS`] one: the accounting program each hook
/// tail-calls after its verdict.
pub const ACCOUNT_TC_INGRESS: u32 = 0;
pub const ACCOUNT_TC_EGRESS: u32 = 1;
pub const ACCOUNT_XDP: u32 = 0;

/// Default entries of the interaction table ([`IX`], and as many counter
/// slots, [`IX_SLOTS`]); the agent's `--interaction-table-size` sets it
/// when the table is created.
pub const DEFAULT_MAX_INTERACTIONS: u32 = 16_384;
/// Interfaces with an ingress hook at most ([`IX_IFACES`]).
pub const MAX_IX_IFACES: u32 = 256;
/// Rows of the heavy-hitter sketch (a count-min sketch).
pub const IX_SKETCH_ROWS: usize = 4;
/// Counters per row (a power of two).
pub const IX_SKETCH_WIDTH: usize = 1024;
/// A sketch counter counts bytes in units of this many (its low 24 bits;
/// the high 8 bits tag the window it counts in).
pub const IX_SKETCH_UNIT: u64 = 64;
/// The lowest admission threshold, in sketch units: where the agent's
/// starts, and the one the datapath weighs clients by while the table has
/// no slot left for a client (beyond those kept for untracked-clients
/// entries) and the agent has set none (see `account::admission` in
/// the eBPF crate).
pub const IX_MIN_ADMIT_UNITS: u32 = 16;
/// Sketch windows are `2^IX_WINDOW_SHIFT` ns (about 1.07 s) of the coarse clock.
pub const IX_WINDOW_SHIFT: u32 = 30;

/// One interaction: a client address talking to a server address's port
/// over a protocol. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
/// An all-zero `client` holds the traffic of clients that are not tracked
/// one by one (below the admission threshold, or the table full).
///
/// Which side is the client: for a TCP SYN its sender, for a SYN-ACK its
/// receiver; otherwise the side with the higher port (the lower one is the
/// well-known, listening one; equal ports: the receiver is the server),
/// except that a TCP server seen answering a SYN on a port above its
/// client's stays the server (a per-node table of such servers); protocols
/// without ports: the receiver is the server.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IxKey {
    /// The client's address.
    pub client: [u8; 16],
    /// The server's address.
    pub server: [u8; 16],
    /// The server's port (host order; 0 without ports).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Explicit padding, always zero (it is hashed with the key).
    pub _pad: [u8; 5],
}

/// Per-CPU counters of one interaction ([`IX_SLOTS`] values, at the slot
/// its [`IX`] entry names).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IxCounters {
    /// Client to server: packets and wire bytes.
    pub req_pkts: u64,
    pub req_bytes: u64,
    /// Server to client: packets and wire bytes.
    pub resp_pkts: u64,
    pub resp_bytes: u64,
    /// TCP SYNs from the client (connection attempts, retransmissions included).
    pub syns: u64,
    /// TCP SYN-ACKs from the server (attempts answered).
    pub synacks: u64,
    /// TCP RSTs, either side.
    pub rsts: u64,
    /// TCP FINs, either side.
    pub fins: u64,
    /// Time from a SYN to its SYN-ACK as this node saw them: sum and count.
    pub rtt_sum_ns: u64,
    pub rtt_count: u64,
}

impl IxCounters {
    /// Adds `o` into `self` (summing CPUs, or carrying totals).
    pub fn add(&mut self, o: &Self) {
        self.req_pkts += o.req_pkts;
        self.req_bytes += o.req_bytes;
        self.resp_pkts += o.resp_pkts;
        self.resp_bytes += o.resp_bytes;
        self.syns += o.syns;
        self.synacks += o.synacks;
        self.rsts += o.rsts;
        self.fins += o.fins;
        self.rtt_sum_ns += o.rtt_sum_ns;
        self.rtt_count += o.rtt_count;
    }
}

/// How the datapath admits new interactions, index 0 of [`IX_CONF`];
/// written by the agent every sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IxConfig {
    /// A new client gets its own entry once the sketch estimates its bytes
    /// in the current window at this many [`IX_SKETCH_UNIT`]s or more; 0:
    /// at once (the table has room; while no slot is left for a client the
    /// datapath takes [`IX_MIN_ADMIT_UNITS`] instead). Below it, its
    /// packets count in the interaction's all-zero-client entry.
    pub admit_units: u32,
    /// Slots of [`IX_SLOTS`] and of the free ring [`IX_FREE`] (the table's
    /// size as created); 0 until the agent has filled the ring.
    pub slots: u32,
}

/// [`IX_ALLOC`] index of the next free-ring position to take (only the
/// datapath moves it, by compare-and-swap).
pub const IX_ALLOC_HEAD: u32 = 0;
/// [`IX_ALLOC`] index of the free-ring position after the last free slot
/// (only the agent moves it). Free slots: `FREE[head % N .. tail % N]`.
pub const IX_ALLOC_TAIL: u32 = 1;

/// A flow-cache value: the flow's channel, and a hint to its interaction's
/// counter slot so that a cached packet counts without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Channel slot, or [`NO_CHANNEL`].
    pub channel: u32,
    /// [`IX_SLOTS`] slot of the flow's interaction, with [`IX_REQUEST`]
    /// set when the flow is the client's direction; [`IX_NONE`]: not known
    /// yet (the accounting program looks it up and fills it in).
    pub ix: u32,
    /// The slot's generation ([`IX_GEN`]) when `ix` was filled in: the
    /// agent bumps it when it frees the slot, so a stale hint is not
    /// followed into a recycled slot.
    pub ix_gen: u32,
    /// The interaction's server port: the flow key has no source port, so
    /// a server's responses from two ports to one client port share an
    /// entry; the hint is followed only for its own port.
    pub ix_port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// [`FlowValue::ix`]: no hint.
pub const IX_NONE: u32 = u32::MAX;
/// [`FlowValue::ix`]: the flow is the client's direction (request).
pub const IX_REQUEST: u32 = 1 << 31;

/// Connection pools: the per-channel connection counters
/// ([`ConnPool`]), indexed by a pool id the agent gives each channel with
/// connection limits. A pool outlives generations: a channel keeps its pool
/// (and so its open connections) across applies while it keeps its name
/// and some connection limit. Twice the channels, so the pools of a policy
/// being replaced can drain while the new one's are in use.
pub const MAX_POOLS: u32 = CHANNEL_SLOTS;
/// [`ChannelPolicy::conn_pool`] of a channel without connection limits.
pub const NO_POOL: u32 = u32::MAX;
/// Default entries of the connection table; the agent's
/// `--conn-table-size` sets it when the maps are created. A closed
/// connection's entry stays until the collector takes it (the closing
/// timeout, 10 s, plus up to a collector interval), so this default holds
/// about 80,000 new connections per second. Not preallocated: memory
/// follows the entries in use.
pub const DEFAULT_MAX_CONNS: u32 = 1_048_576;

/// `ChannelPolicy::conn_action`: a refused SYN is dropped (the client's
/// SYN retransmission, 1 s, 3 s, ... later, is the backpressure).
pub const CONN_DROP: u8 = 0;
/// `ChannelPolicy::conn_action`: a refused SYN is answered with a TCP RST
/// at once, so the client fails fast (the kernel-level 503).
pub const CONN_RESET: u8 = 1;

/// [`ConnEntry::state`]: the client's SYN was seen.
pub const CONN_SYN_SENT: u8 = 1;
/// The server's SYN-ACK was seen (or its SYN, in a simultaneous open).
pub const CONN_SYN_RECV: u8 = 2;
/// The handshake completed.
pub const CONN_ESTABLISHED: u8 = 3;
/// One side sent a FIN.
pub const CONN_CLOSING: u8 = 4;
/// Both FINs or an RST: the connection no longer counts.
pub const CONN_CLOSED: u8 = 5;

/// Datagrams whose fragments the datapath follows at once (LRU). A
/// datagram's fragments arrive within milliseconds; an entry pushed out
/// early turns its later fragments into orphans, which are classified
/// conservatively and counted (`fragment_orphan_pkts`).
pub const MAX_FRAGS: u32 = 16_384;

/// Slots of the per-flow pacing table (`delay` channels): a power of two,
/// indexed by the packet's flow hash mixed with its channel slot. Flows
/// that collide share a slot, which only makes them look less sparse.
pub const PACE_SLOTS: u32 = 16_384;

/// Flows the classification cache remembers (LRU).
pub const MAX_FLOWS: u32 = 65_536;
/// Words of each half of the flow cache's filter ([`FLOW_BITS`]):
/// 262,144 bits, four for each flow a family's cache can hold, two for
/// each of both families' (a power of two).
pub const FLOW_BITS_WORDS: u32 = 4096;
/// The filter's word that names its newer half (0 or 1), after both
/// halves.
pub const FLOW_BITS_NEWER: u32 = 2 * FLOW_BITS_WORDS;
/// Entries of the filter's array: both halves and [`FLOW_BITS_NEWER`].
pub const FLOW_BITS_ENTRIES: u32 = FLOW_BITS_NEWER + 1;
/// Inserts into the flow cache after which the agent ages the filter
/// (zeroes its older half and makes it the newer) at its next sample: a
/// sixteenth of a half's bits, so that the bits of flows the cache has
/// since evicted cover about an eighth of the positions a frame tests (in
/// both halves) at most. The live flows' bits come on top; a flow idle
/// through two agings is found uncached, classified afresh and admitted
/// again.
pub const FLOW_BITS_AGE_AFTER: u64 = FLOW_BITS_WORDS as u64 * 64 / 16;
/// Flow-cache value meaning "this flow matches no channel".
pub const NO_CHANNEL: u32 = u32::MAX;
/// `Config::flags`: bypass the flow cache (benchmarks measure the slow path with it).
pub const FLAG_NO_FLOW_CACHE: u32 = 1;
/// `Config::flags`: bypass the per-CPU destination memo, so that every
/// uncached packet walks all three tables (benchmarks measure both).
pub const FLAG_NO_DST_MEMO: u32 = 2;

/// Direction byte of an [`L4Key`].
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// `ChannelPolicy::action`: what happens to a packet over the limit.
pub const ACTION_DROP: u8 = 0;
/// Pace: hold the packet until its earliest departure time (EDT, fq releases it).
pub const ACTION_DELAY: u8 = 1;
/// Set ECN CE on ECN-capable packets within one more burst; drop the rest.
pub const ACTION_MARK: u8 = 2;
/// `ChannelPolicy::mode`: enforce the action.
pub const MODE_ENFORCE: u8 = 0;
/// `ChannelPolicy::mode`: only count what would have been dropped.
pub const MODE_MONITOR: u8 = 1;

/// Prefix length of an LPM key that covers only the generation byte.
pub const GEN_BITS: u32 = 8;

/// A set of channel indices; bit `i` of word `i / 64` is channel `i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChannelSet {
    /// Bit vector over [`MAX_CHANNELS`] channels, lowest index first.
    pub words: [u64; CHANNEL_WORDS],
}

impl ChannelSet {
    pub const EMPTY: Self = Self {
        words: [0; CHANNEL_WORDS],
    };

    pub fn insert(&mut self, channel: usize) {
        self.words[channel / 64] |= 1 << (channel % 64);
    }

    pub fn remove(&mut self, channel: usize) {
        self.words[channel / 64] &= !(1 << (channel % 64));
    }

    pub fn contains(&self, channel: usize) -> bool {
        self.words[channel / 64] & (1 << (channel % 64)) != 0
    }

    /// Whether no channel is in the set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }
}

/// LPM data of an IPv4 address trie: generation byte, then the address in
/// network order. The prefix length counts [`GEN_BITS`] plus address bits.
pub type Ip4Key = [u8; 5];
/// LPM data of an IPv6 address trie: generation byte, then the address.
pub type Ip6Key = [u8; 17];
/// LPM data of the L4 trie: generation, direction (with [`L4_ANY_PORT`] or
/// [`L4_UNKNOWN`] for packets without readable ports), IP protocol,
/// destination port (big-endian). Prefix length 24 stops after the
/// protocol, 40 includes the port, so a port range is stored as a handful
/// of prefixes.
pub type L4Key = [u8; 5];
/// Prefix length of an [`L4Key`] that stops after the direction byte.
pub const L4_DIR_BITS: u32 = 16;
/// Prefix length of an [`L4Key`] that stops after the protocol byte.
pub const L4_PROTO_BITS: u32 = 24;
/// Flag in the direction byte of an [`L4Key`]: the packet's protocol is
/// known but its ports are not (a later fragment whose first was not seen,
/// a transport header cut short). Entries under it hold, per protocol,
/// every channel that accepts the protocol on any port, so such a packet
/// can fall into a port-specific channel but never out of one.
pub const L4_ANY_PORT: u8 = 0x80;
/// Flag in the direction byte of an [`L4Key`]: not even the protocol is
/// known (an IPv6 extension chain longer than the datapath walks). The one
/// entry under it holds every channel of the direction.
pub const L4_UNKNOWN: u8 = 0x40;
/// Prefix length of an [`L4Key`] that includes the whole port.
pub const L4_PORT_BITS: u32 = 40;

/// Node-wide datapath settings, index 0 of the [`CONFIG`] array.
///
/// The agent writes it with a map update, which copies bytes: a reader may
/// see a mix of old and new bytes. So a policy switch changes exactly one
/// byte, the generation's, and everything else about a generation lives in
/// [`GenInfo`], written before the switch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Generation (0 or 1) the datapath classifies against; the agent flips it last.
    pub generation: u32,
    /// `FLAG_*` bits; never changed together with `generation`.
    pub flags: u32,
    /// Policy version the live generation holds: it only grows, one per
    /// apply, so operators and the agent's saved state can name a policy.
    /// Not read by the datapath.
    pub version: u64,
}

/// Per-generation facts, index `generation` of the [`GENS`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenInfo {
    /// Words of [`ChannelSet`] in use (channels / 64, rounded up), so the AND
    /// loop stops early for small policies.
    pub words: u32,
    /// Which write of the tables this generation holds: the low 32 bits
    /// of the policy version the write made live ([`Config::version`],
    /// which only grows), so that what the datapath derived from an
    /// earlier content (its per-CPU destination memo, `tc-ebpf`'s
    /// `classify`) is never taken for this one. 0: unknown (agents before
    /// it wrote 0 here, as padding), and the datapath keeps no memo.
    pub epoch: u32,
    /// Per table (`TABLE_*`): where its longest-prefix lookups go, the
    /// prefix hash maps ([`PREFIX4`]/[`PREFIX6`]) or its LPM trie.
    pub probes: [Probes; TABLES],
    /// Per table and probed length (`probes[t].lens[i]`): the channels a
    /// hit at that length can add to the ones its shorter prefixes
    /// already hold (each entry's set less its longest containing
    /// prefix's). A probe whose length reaches none of the channels the
    /// other tables left possible cannot change the result, and is
    /// skipped: the first hit among the lengths kept gives the same
    /// channels, of those possible, as the longest match. Empty for
    /// tables in their trie. Exact, not a hint: the datapath skips on it,
    /// and for an address table of the zero-length prefix alone (one
    /// probed length, 0) takes `reach[t][0]`, that entry's whole set (it
    /// has no containing prefix), as the table's answer without a lookup.
    pub reach: [[ChannelSet; MAX_PROBES]; TABLES],
}

/// How one table of a generation finds a field's longest matching prefix.
///
/// An LPM trie walks about log2(entries) nodes, a cache miss each: 65,536
/// host prefixes cost some 60 ns more than one. A policy's prefixes mostly
/// come in a few lengths, though, so when a table has at most
/// [`MAX_PROBES`] distinct lengths the agent writes its entries (the same
/// merged sets the trie would hold) into a hash map keyed by length and
/// masked field, and the datapath probes those lengths longest first: the
/// first hit is the longest match, at one hash lookup per length tried.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probes {
    /// How many of `lens` to probe, or [`PROBE_TRIE`]: the table's entries
    /// are in its LPM trie. 0: the table is empty, nothing matches.
    pub count: u8,
    /// The table's distinct prefix lengths, longest first, in bits after
    /// the generation byte (an [`L4Key`]'s `bits`, an address's length).
    pub lens: [u8; MAX_PROBES],
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// [`Probes::count`]: look up in the table's LPM trie.
pub const PROBE_TRIE: u8 = u8::MAX;
/// Prefix lengths a table may have and still be probed by hash: each is
/// one more exit from the probe loop for the verifier to walk.
pub const MAX_PROBES: usize = 4;
/// Tables of a generation, the index into [`GenInfo::probes`] and the
/// `table` byte of a [`PrefixKey4`]/[`PrefixKey6`].
pub const TABLE_SRC_V4: u8 = 0;
pub const TABLE_DST_V4: u8 = 1;
pub const TABLE_SRC_V6: u8 = 2;
pub const TABLE_DST_V6: u8 = 3;
/// The direction/protocol/port table (its data is an [`L4Key`] less the
/// generation byte, 4 bytes, so it shares [`PREFIX4`] with IPv4).
pub const TABLE_L4: u8 = 4;
/// Number of tables.
pub const TABLES: usize = 5;

/// Key of [`PREFIX4`]: one prefix of an IPv4 address table or of the L4
/// table. 8 bytes, a multiple of 4, so the kernel hashes it by words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey4 {
    /// Generation the entry belongs to.
    pub generation: u8,
    /// `TABLE_SRC_V4`, `TABLE_DST_V4` or `TABLE_L4`.
    pub table: u8,
    /// Prefix length in bits of `data`.
    pub len: u8,
    /// Explicit padding, always zero (it is hashed with the key).
    pub _pad: u8,
    /// The prefix, bits past `len` zero: an address in network order, or
    /// direction, protocol and port (big-endian) as in an [`L4Key`].
    pub data: [u8; 4],
}

/// Key of [`PREFIX6`]: one prefix of an IPv6 address table (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey6 {
    /// Generation the entry belongs to.
    pub generation: u8,
    /// `TABLE_SRC_V6` or `TABLE_DST_V6`.
    pub table: u8,
    /// Prefix length in bits of `data`.
    pub len: u8,
    /// Explicit padding, always zero (it is hashed with the key).
    pub _pad: u8,
    /// The address, bits past `len` zero.
    pub data: [u8; 16],
}

/// Entries [`PREFIX4`] may hold over both generations: two IPv4 address
/// tables and the L4 table.
pub const MAX_PREFIX4_ENTRIES: u32 = 2 * MAX_PREFIXES + MAX_L4_ENTRIES;
/// Entries [`PREFIX6`] may hold over both generations.
pub const MAX_PREFIX6_ENTRIES: u32 = 2 * MAX_PREFIXES;

/// The part of a flow-cache key that is not an address: everything else
/// classification reads from a packet, plus the generation it was
/// classified in. The agent removes a generation's entries before it writes
/// that generation again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMeta {
    pub generation: u8,
    pub dir: u8,
    pub proto: u8,
    /// L4 lookup prefix: with or without the port.
    pub l4_bits: u8,
    pub dport: u16,
    /// Explicit padding, always zero.
    pub _pad: u16,
}

/// Flow-cache key for IPv4 (16 bytes: hashing is per byte, so IPv4 gets
/// its own, smaller cache).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey4 {
    pub meta: FlowMeta,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Flow-cache key for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey6 {
    pub meta: FlowMeta,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Key of the fragment table: one fragmented datagram as seen by one hook
/// direction. IPv4 addresses take the first 4 bytes of `src`/`dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragKey {
    /// 4 or 6: keeps the two families' identifications apart.
    pub family: u8,
    /// `DIR_*`: a forwarding node sees the datagram once each way.
    pub dir: u8,
    /// IP protocol of the datagram.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// IPv4 identification (16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Source address of the datagram.
    pub src: [u8; 16],
    /// Destination address of the datagram.
    pub dst: [u8; 16],
}

/// What the first fragment of a datagram got, applied to all the others so
/// that a datagram passes or drops whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    /// Channel slot (generation-qualified) the first fragment matched;
    /// [`NO_CHANNEL`] when it matched none.
    pub slot: u32,
    /// Wire bytes the datagram's later fragments may still pass: one
    /// datagram's worth ([`FRAG_BUDGET`] less the first fragment), so a
    /// passed first fragment cannot open the channel to unlimited
    /// "fragments" of the same id. Beyond it they drop.
    pub budget: u32,
    /// Non-zero when the first fragment was dropped: the rest follow it.
    pub dropped: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 7],
}

/// Key of the connection table: the two endpoints of a TCP connection in a
/// fixed order (the lower address, then port, first), so that both
/// directions of a connection find the same entry with one lookup. IPv4
/// addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so one table holds
/// both families without collisions.
///
/// Aligned to 8 bytes so that the datapath builds it with word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Address of the lower endpoint.
    pub a: [u8; 16],
    /// Address of the higher endpoint.
    pub b: [u8; 16],
    /// Port of the lower endpoint (network order).
    pub a_port: u16,
    /// Port of the higher endpoint (network order).
    pub b_port: u16,
    /// Explicit padding, always zero (it is hashed with the key).
    pub _pad: u32,
}

/// One TCP connection of a channel with connection limits.
///
/// The count of open connections is kept exact by one rule: a connection
/// is counted open from its admitted SYN until `counted` goes from 1 to 0,
/// which happens exactly once, either in the datapath (both FINs, an RST:
/// compare-and-swap, then [`ConnPool::closed`] += 1) or in the agent's
/// garbage collector (an entry idle past its state's timeout:
/// [`CONN_GC`] += 1). The datapath never writes to an entry idle past its
/// timeout, and the collector removes only entries idle past the timeout
/// plus a margin, so the two never race for the same entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    /// When the client's first SYN was seen: the handshake RTT starts here.
    pub syn_ns: u64,
    /// When the connection last showed a packet: the idle timeouts count from here.
    pub last_ns: u64,
    /// Pool (channel) the connection counts in.
    pub pool: u32,
    /// 1 while the connection counts as open in its pool; taken to 0 once
    /// (a `u32`: BPF has no compare-and-swap on bytes).
    pub counted: u32,
    /// The hook that saw the client's SYN: interface index << 1 | `DIR_*`.
    /// A packet claiming to be the server's that shows up there is forged
    /// by the client's side and moves nothing.
    pub client_hook: u32,
    /// Sequence number of the client's latest segment: its FIN or RST must
    /// lie at or ahead of it, within [`SEQ_WINDOW`] (its FIN may also lie
    /// up to 1 MiB behind: the datapath's `FIN_LAG`).
    pub client_seq: u32,
    /// The server's next sequence number as this node knows it: from the
    /// first SYN-ACK that acknowledges the client's SYN (or, if none did,
    /// from the client's first acknowledgment in its window after the
    /// server's SYN),
    /// then from the client's acknowledgments. 0 while unknown, and then
    /// no FIN or RST of the server's moves anything (but the RST that
    /// answers the SYN, which must acknowledge it). The server's FIN or
    /// RST must lie at or ahead of it, within [`SEQ_WINDOW`].
    pub client_ack: u32,
    /// Bit 0: the client's FIN was seen; bit 1: the server's; bit 2: the
    /// connection was reset (the client's later data is dropped). Set with
    /// atomic OR (a `u32`: BPF has no atomics on bytes): the two FINs of a
    /// close often arrive on two CPUs at once, and a lost bit would keep a
    /// closed connection counted until its timeout.
    pub fins: u32,
    /// `CONN_*` state.
    pub state: u8,
    /// Non-zero when the client is the key's `a` endpoint.
    pub client_is_a: u8,
    /// `DIR_*` of the hook that saw the SYN: a SYN seen leaving means this
    /// node is on the client's side, and the handshake completes for it
    /// with the SYN-ACK; seen arriving, with the client's final ACK.
    pub syn_dir: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 5],
}

/// How far ahead (in sequence space) of what the connection's packets last
/// showed of its sender a FIN or RST may lie, to move the connection's
/// state: a blind forger must guess the sequence number to within this
/// (one chance in 256 per guess). A segment behind it, which TCP ignores as
/// old, moves nothing, except a client's FIN within 1 MiB behind (the
/// datapath's `FIN_LAG`: the client's next ACK can overtake its FIN).
pub const SEQ_WINDOW: u32 = 1 << 24;

/// Connection counters of one pool (a channel with connection limits),
/// shared by all CPUs and updated atomically. Open connections =
/// `opened - closed - gc_closed` ([`CONN_GC`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ConnPool {
    /// Connections admitted (their first SYN).
    pub opened: u64,
    /// Connections the datapath saw close (both FINs, an RST).
    pub closed: u64,
    /// GCRA theoretical arrival time of the new-connection rate.
    pub rate_tat: u64,
    /// New connections refused (their SYN dropped or reset).
    pub refused: u64,
    /// Monitor mode: new connections that would have been refused.
    pub would_refuse: u64,
    /// New connections refused because the connection table was full.
    pub table_full: u64,
    /// Handshakes timed (see [`ConnEntry::syn_dir`]).
    pub rtt_count: u64,
    /// Sum of the handshake times, ns.
    pub rtt_sum_ns: u64,
    /// Longest handshake time, ns.
    pub rtt_max_ns: u64,
}

/// Connection-tracking settings, index 0 of [`CONN_CONF`]: idle timeouts
/// per state, in ns, like the kernel's conntrack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnConfig {
    /// `SYN_SENT`/`SYN_RECV`: a handshake that does not complete.
    pub syn_ns: u64,
    /// `ESTABLISHED`/`CLOSING`: an idle connection (also a half-closed one).
    pub established_ns: u64,
    /// `CLOSED`: after both FINs or an RST.
    pub closing_ns: u64,
}

impl ConnConfig {
    /// The idle timeout of an entry in `state`; 0 before the agent set one
    /// (entries never expire in the datapath's eyes then). A connection
    /// with one FIN seen is half open, and may stay so for long: it keeps
    /// the established timeout until it is closed.
    pub fn timeout(&self, state: u8) -> u64 {
        match state {
            CONN_ESTABLISHED | CONN_CLOSING => self.established_ns,
            CONN_CLOSED => self.closing_ns,
            _ => self.syn_ns,
        }
    }
}

/// Wire bytes one datagram's fragments may carry: the largest IP datagram
/// (65,535 bytes, plus IPv6's 40-byte header) and, per fragment of at most
/// 45 at a 1,500-byte MTU, Ethernet, VLAN and fragment headers.
pub const FRAG_BUDGET: u32 = 65_575 + 45 * 64;

/// A channel's limits, compiled for the datapath. Slot
/// `generation * MAX_CHANNELS + channel` of the [`POLICIES`] array.
///
/// Limits are GCRA (virtual scheduling) parameters: a packet costs
/// `len * byte_cost_q16 >> 16` nanoseconds of the byte budget and
/// `segs * pkt_cost_q16 >> 16` of the packet budget, and conforms while the
/// theoretical arrival time stays within `*_tau_ns` of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Nanoseconds per byte at the channel's bandwidth, Q48.16; 0 = no byte limit.
    pub byte_cost_q16: u64,
    /// Byte burst expressed as time at the channel's bandwidth, ns.
    pub byte_tau_ns: u64,
    /// Nanoseconds per packet at the channel's packet rate, Q48.16; 0 = no packet limit.
    pub pkt_cost_q16: u64,
    /// Packet burst expressed as time at the channel's packet rate, ns.
    pub pkt_tau_ns: u64,
    /// `ACTION_DELAY`: a packet that would leave later than now + horizon is dropped.
    pub horizon_ns: u64,
    /// Nanoseconds per new connection at the channel's `new_connections`
    /// rate; 0 = no new-connection limit.
    pub conn_cost_ns: u64,
    /// New-connection burst expressed as time at that rate, ns.
    pub conn_tau_ns: u64,
    /// Open TCP connections allowed at once; 0 = no concurrency limit.
    pub conn_limit: u32,
    /// Pool counting the channel's connections ([`MAX_POOLS`]), given by
    /// the agent; [`NO_POOL`] when the channel has no connection limits,
    /// and then the datapath tracks none of its connections.
    pub conn_pool: u32,
    /// `ACTION_*`: what to do with a packet over the limit.
    pub action: u8,
    /// `MODE_*`: enforce, or only count (monitor / dry run).
    pub mode: u8,
    /// Non-zero when this slot holds a channel; an empty slot fails open.
    pub active: u8,
    /// `CONN_*`: what happens to a refused SYN.
    pub conn_action: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 4],
}

/// The shallowest bucket, as time at its rate, that may be judged on the
/// coarse clock ([`ChannelPolicy::coarse_clock`]): a tick (1-10 ms,
/// `CONFIG_HZ`) is then at most a fifth of it.
pub const COARSE_MIN_TAU_NS: u64 = 50_000_000;

impl ChannelPolicy {
    /// Whether the channel has a connection limit (`connections` or
    /// `new_connections`), so its TCP connections are tracked.
    pub fn limits_connections(&self) -> bool {
        self.conn_limit != 0 || self.conn_cost_ns != 0
    }

    /// Whether the datapath judges the channel's buckets on the coarse
    /// clock (`bpf_ktime_get_coarse_ns`, Linux 5.11, which reads no TSC)
    /// rather than the fine one: a `drop` channel whose buckets are each
    /// at least [`COARSE_MIN_TAU_NS`] deep.
    ///
    /// The coarse clock lags the fine one by less than a tick (more when
    /// the timekeeping update is late, as on a preempted vCPU) and stands
    /// still within one. A GCRA bucket judged on it admits the same rate
    /// over time: in any window `w`, at most `rate * (w + lag) + burst`.
    /// What changes is how: a bucket that overload keeps empty hands out a
    /// tick's worth of the rate when the clock moves and refuses
    /// everything until it moves again, so passes and drops come in runs
    /// of up to a tick rather than interleaved. Against a bucket of 50 ms
    /// or more a tick is at most a fifth of it at 100 Hz, a twelfth at 250
    /// and a fiftieth at 1000 (the README's "Two clocks" has TCP through
    /// such a limit, paired against the fine clock). A `delay` channel's
    /// departure times go to fq; a `mark` channel's rate signal is a bucket
    /// of 128 KiB at the rate; and a bucket shallower than a few ticks
    /// would pass most of itself at once: they take the fine clock.
    pub fn coarse_clock(&self) -> bool {
        let deep = |cost: u64, tau: u64| cost == 0 || tau >= COARSE_MIN_TAU_NS;
        self.action == ACTION_DROP
            && deep(self.pkt_cost_q16, self.pkt_tau_ns)
            && deep(self.byte_cost_q16, self.byte_tau_ns)
    }
}

/// Token-bucket state of one channel, shared by all CPUs (not per-CPU:
/// splitting a bucket per CPU loses accuracy). Updated with compare-and-swap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// Theoretical arrival time of the byte bucket, on the monotonic clock
    /// (read fine or coarse, [`ChannelPolicy::coarse_clock`]).
    pub byte_tat: u64,
    /// Theoretical arrival time of the packet bucket.
    pub pkt_tat: u64,
    /// `mark` channels: TAT of a shallow bucket at the channel's rate, which
    /// tells whether the channel runs over its rate right now (the deep
    /// buckets only say how much of the burst is used).
    pub rate_tat: u64,
}

/// Per-channel, per-CPU counters; the agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct ChannelCounters {
    /// Packets classified into the channel (GSO segments count one each).
    pub matched_pkts: u64,
    /// Bytes classified into the channel (`skb->len` / XDP frame length).
    pub matched_bytes: u64,
    /// Packets let through (within the limit, or over it in monitor mode).
    pub passed_pkts: u64,
    pub passed_bytes: u64,
    /// Packets dropped for exceeding the limit (enforce mode).
    pub dropped_pkts: u64,
    pub dropped_bytes: u64,
    /// Packets over the limit that monitor mode let through.
    pub would_drop_pkts: u64,
    pub would_drop_bytes: u64,
    /// `delay`: packets given a departure time in the future.
    pub delayed_pkts: u64,
    /// `delay`: sum over delayed packets of (departure - now), ns; divided
    /// by `delayed_pkts` between two samples it is the current pacing delay.
    pub delay_ns: u64,
    /// `delay`: packets dropped because they would leave beyond the horizon
    /// (also counted in `dropped_*`).
    pub horizon_drop_pkts: u64,
    /// `mark`: packets over the limit that left with ECN CE set.
    pub marked_pkts: u64,
}

/// Node-wide, per-CPU counters, index 0 of the [`GLOBAL`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct GlobalCounters {
    /// Every packet the programs saw.
    pub seen_pkts: u64,
    pub seen_bytes: u64,
    /// IP packets that matched no channel (passed).
    pub unclassified_pkts: u64,
    pub unclassified_bytes: u64,
    /// Non-IP frames (ARP, LLDP, ...), passed.
    pub non_ip_pkts: u64,
    /// Truncated or malformed IP packets, passed.
    pub malformed_pkts: u64,
    /// Non-first IP fragments (they follow their datagram's first fragment).
    pub fragment_pkts: u64,
    /// Non-first fragments whose first fragment was not seen (out of order,
    /// or pushed out of a full fragment table): classified conservatively,
    /// into the first channel their addresses and protocol allow.
    pub fragment_orphan_pkts: u64,
    /// Packets whose ports could not be read (a TCP/UDP header cut short, an
    /// IPv6 extension chain longer than the walk): classified conservatively.
    pub no_ports_pkts: u64,
    /// Packets passed because a map lookup failed (fail open).
    pub fail_open_pkts: u64,
    /// Bucket charges that lost the compare-and-swap race too often and fell
    /// back to fetch-and-add (still metered; a sign of heavy contention).
    pub contended_pkts: u64,
    /// Packets of a limited channel's TCP connection whose SYN was never
    /// seen (opened before the limit, or idle past its timeout): passed,
    /// not counted as connections. Counting them would let spoofed
    /// mid-stream packets fill the connection count.
    pub conn_untracked_pkts: u64,
    /// Data packets of a connection already closed by an RST, dropped: a
    /// spoofed RST cannot open room under the limit and keep its connection.
    pub conn_after_close_pkts: u64,
    /// Packets counted in an interaction's untracked-clients entry (their
    /// client below the admission threshold, or the table full).
    pub ix_folded_pkts: u64,
    /// Packets no interaction entry could count (the table full even for
    /// the untracked-clients entry).
    pub ix_lost_pkts: u64,
    /// Classifications the flow cache answered: with `flow_misses`, the
    /// cache's hit rate, which should stay high for established flows
    /// even while a random-source flood misses on every packet.
    pub flow_hits: u64,
    /// Classifications the flow cache could not answer (the tries walked);
    /// with the cache switched off (`FLAG_NO_FLOW_CACHE`) nothing counts.
    pub flow_misses: u64,
    /// Flows inserted into the cache: seen twice in a row on their CPU
    /// (see `tc-ebpf`'s `classify_cached`; two CPUs may each insert one
    /// flow). Misses that were not admitted cost the cache nothing.
    pub flow_inserts: u64,
}

impl ChannelCounters {
    /// Adds `o` field by field (summing CPUs, or generations).
    pub fn add(&mut self, o: &Self) {
        self.matched_pkts += o.matched_pkts;
        self.matched_bytes += o.matched_bytes;
        self.passed_pkts += o.passed_pkts;
        self.passed_bytes += o.passed_bytes;
        self.dropped_pkts += o.dropped_pkts;
        self.dropped_bytes += o.dropped_bytes;
        self.would_drop_pkts += o.would_drop_pkts;
        self.would_drop_bytes += o.would_drop_bytes;
        self.delayed_pkts += o.delayed_pkts;
        self.delay_ns += o.delay_ns;
        self.horizon_drop_pkts += o.horizon_drop_pkts;
        self.marked_pkts += o.marked_pkts;
    }
}

impl GlobalCounters {
    /// Adds `o` field by field (summing CPUs).
    pub fn add(&mut self, o: &Self) {
        self.seen_pkts += o.seen_pkts;
        self.seen_bytes += o.seen_bytes;
        self.unclassified_pkts += o.unclassified_pkts;
        self.unclassified_bytes += o.unclassified_bytes;
        self.non_ip_pkts += o.non_ip_pkts;
        self.malformed_pkts += o.malformed_pkts;
        self.fragment_pkts += o.fragment_pkts;
        self.fragment_orphan_pkts += o.fragment_orphan_pkts;
        self.no_ports_pkts += o.no_ports_pkts;
        self.fail_open_pkts += o.fail_open_pkts;
        self.contended_pkts += o.contended_pkts;
        self.conn_untracked_pkts += o.conn_untracked_pkts;
        self.conn_after_close_pkts += o.conn_after_close_pkts;
        self.ix_folded_pkts += o.ix_folded_pkts;
        self.ix_lost_pkts += o.ix_lost_pkts;
        self.flow_hits += o.flow_hits;
        self.flow_misses += o.flow_misses;
        self.flow_inserts += o.flow_inserts;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, and have no padding (see the asserts below).
    unsafe impl aya::Pod for ChannelSet {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for GenInfo {}
    unsafe impl aya::Pod for PrefixKey4 {}
    unsafe impl aya::Pod for PrefixKey6 {}
    unsafe impl aya::Pod for FlowMeta {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragEntry {}
    unsafe impl aya::Pod for ChannelPolicy {}
    unsafe impl aya::Pod for BucketState {}
    unsafe impl aya::Pod for ChannelCounters {}
    unsafe impl aya::Pod for GlobalCounters {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for ConnPool {}
    unsafe impl aya::Pod for ConnConfig {}
    unsafe impl aya::Pod for IxKey {}
    unsafe impl aya::Pod for IxCounters {}
    unsafe impl aya::Pod for IxConfig {}
    unsafe impl aya::Pod for FlowValue {}
}

const _: () = assert!(core::mem::size_of::<ChannelSet>() == 8 * CHANNEL_WORDS);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);
const _: () = assert!(core::mem::size_of::<FragEntry>() == 16);
const _: () = assert!(
    core::mem::size_of::<GenInfo>()
        == 8 + 8 * TABLES + TABLES * MAX_PROBES * core::mem::size_of::<ChannelSet>()
);
const _: () = assert!(core::mem::size_of::<Probes>() == 8);
const _: () = assert!(core::mem::size_of::<PrefixKey4>() == 8);
const _: () = assert!(core::mem::size_of::<PrefixKey6>() == 20);
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);
const _: () = assert!(core::mem::size_of::<ChannelPolicy>() == 72);
const _: () = assert!(core::mem::size_of::<ConnKey>() == 40);
const _: () = assert!(core::mem::size_of::<IxKey>() == 40);
const _: () = assert!(core::mem::size_of::<IxCounters>() == 80);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 48);
const _: () = assert!(core::mem::size_of::<ConnPool>() == 72);
const _: () = assert!(core::mem::size_of::<ConnConfig>() == 24);
const _: () = assert!(core::mem::size_of::<BucketState>() == 24);
const _: () = assert!(core::mem::size_of::<ChannelCounters>() == 96);
const _: () = assert!(core::mem::size_of::<GlobalCounters>() == 144);
const _: () = assert!(MAX_CHANNELS.is_multiple_of(64));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deep_drop_buckets_take_the_coarse_clock() {
        let deep = ChannelPolicy {
            action: ACTION_DROP,
            pkt_cost_q16: 1 << 16,
            pkt_tau_ns: COARSE_MIN_TAU_NS,
            byte_cost_q16: 1 << 16,
            byte_tau_ns: 250_000_000,
            ..Default::default()
        };
        assert!(deep.coarse_clock());
        // Either bucket under the bound: the fine clock.
        let shallow_pkt = ChannelPolicy {
            pkt_tau_ns: COARSE_MIN_TAU_NS - 1,
            ..deep
        };
        assert!(!shallow_pkt.coarse_clock());
        let shallow_byte = ChannelPolicy {
            byte_tau_ns: 20_000_000,
            ..deep
        };
        assert!(!shallow_byte.coarse_clock());
        // A bucket the channel does not have (cost 0) does not count,
        // whatever its depth.
        let bytes_only = ChannelPolicy {
            pkt_cost_q16: 0,
            pkt_tau_ns: 0,
            ..deep
        };
        assert!(bytes_only.coarse_clock());
        // Delay and mark stay on the fine clock, however deep.
        for action in [ACTION_DELAY, ACTION_MARK] {
            assert!(!ChannelPolicy { action, ..deep }.coarse_clock());
        }
    }
}
