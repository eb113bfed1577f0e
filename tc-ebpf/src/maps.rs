//! Every map of the datapath, in one place. The names are the ones
//! `tc-common` exports, so the agent pins and reads the same maps.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use tc_common::{
    BucketState, ChannelCounters, ChannelPolicy, ChannelSet, Config, ConnConfig, ConnEntry,
    ConnKey, ConnPool, FlowKey4, FlowKey6, FlowValue, FragEntry, FragKey, GenInfo, GlobalCounters,
    Ip4Key, Ip6Key, IxConfig, IxCounters, IxKey, L4Key, PrefixKey4, PrefixKey6, CHANNEL_SLOTS,
    DEFAULT_MAX_CONNS, DEFAULT_MAX_INTERACTIONS, FLOW_BITS_ENTRIES, IX_SKETCH_ROWS,
    IX_SKETCH_WIDTH, MAX_FLOWS, MAX_FRAGS, MAX_IX_IFACES, MAX_L4_ENTRIES, MAX_POOLS,
    MAX_PREFIX4_ENTRIES, MAX_PREFIX6_ENTRIES, MAX_PREFIXES, PACE_SLOTS,
};

#[map]
pub static TC_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static TC_GENS: Array<GenInfo> = Array::with_max_entries(2, 0);
#[map]
pub static TC_FLOWS4: LruHashMap<FlowKey4, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub static TC_FLOWS6: LruHashMap<FlowKey6, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
/// The flow cache's filter: a bit for each flow the cache took or found
/// (by its hash, `classify::flow_hash`), so that a flow whose bit is
/// clear, as every frame of a random-source flood's is, skips the cache
/// lookup, a miss in a large hash table. Two halves of `FLOW_BITS_WORDS`
/// words, then a word that names the newer half (`FLOW_BITS_NEWER`): bits
/// are set in the newer half and tested in both. Shared by the CPUs (a flow's packets
/// may come on any), set with an atomic OR; bits are never cleared here:
/// after `FLOW_BITS_AGE_AFTER` inserts the agent zeroes the older half
/// and names it the newer.
#[map]
pub static TC_FLOW_BITS: Array<u64> = Array::with_max_entries(FLOW_BITS_ENTRIES, 0);
/// Slots of the flow cache's doorkeeper (a power of two).
pub const FLOW_SEEN_SLOTS: u32 = 4096;
/// The flow cache's doorkeeper, per CPU: a tag of the last uncached flow
/// whose hash fell in each slot (see `classify::classify_cached`). Not
/// pinned: a fresh agent starts with an empty one, which delays each
/// flow's admission by one packet.
#[map]
pub static TC_FLOW_SEEN: PerCpuArray<u32> = PerCpuArray::with_max_entries(FLOW_SEEN_SLOTS, 0);
/// What the L4 and destination tables left possible for the last packet
/// classified afresh on this CPU (see `classify::classify`): a flood from
/// many sources to one service walks only the source table.
#[repr(C)]
pub struct DstMemo {
    /// The generation's `GenInfo::epoch`, the generation, the L4 query's
    /// length and the family (4 or 6, so that the zeroed value of a new
    /// map matches no packet), packed by `classify::classify`.
    pub head: u64,
    /// The L4 query's data: direction byte with flags, protocol, port.
    pub l4: u64,
    /// The destination address (IPv4: the first four bytes, the rest 0).
    pub dst: [u64; 2],
    /// The OR of `words`; 0: no channel is possible.
    pub any: u64,
    /// The channels both tables left possible.
    pub words: [u64; tc_common::CHANNEL_WORDS],
}

/// The per-CPU destination memo. Not pinned: a fresh agent's programs
/// start with an empty one. Its entry names the generation's epoch, the
/// policy version that write made live, so it never serves another
/// content of the tables; a generation of epoch 0 (written by an agent
/// before epochs) is not memoised.
#[map]
pub static TC_DST_MEMO: PerCpuArray<DstMemo> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static TC_SRC_V4: LpmTrie<Ip4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
pub static TC_DST_V4: LpmTrie<Ip4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
pub static TC_SRC_V6: LpmTrie<Ip6Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
pub static TC_DST_V6: LpmTrie<Ip6Key, ChannelSet> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
pub static TC_L4: LpmTrie<L4Key, ChannelSet> = LpmTrie::with_max_entries(MAX_L4_ENTRIES, 0);
/// The address and L4 tables whose prefixes come in few lengths, as one
/// hash map per key size (see `tc_common::Probes`). Not preallocated
/// (`BPF_F_NO_PREALLOC`, Linux 4.6): memory follows the entries written,
/// as in the tries, and only the agent inserts.
#[map]
pub static TC_PREFIX4: HashMap<PrefixKey4, ChannelSet> =
    HashMap::with_max_entries(MAX_PREFIX4_ENTRIES, BPF_F_NO_PREALLOC as u32);
#[map]
pub static TC_PREFIX6: HashMap<PrefixKey6, ChannelSet> =
    HashMap::with_max_entries(MAX_PREFIX6_ENTRIES, BPF_F_NO_PREALLOC as u32);
#[map]
pub static TC_POLICIES: Array<ChannelPolicy> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
pub static TC_BUCKETS: Array<BucketState> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
pub static TC_COUNTERS: PerCpuArray<ChannelCounters> =
    PerCpuArray::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
pub static TC_GLOBAL: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);
/// `delay` channels: per flow (hash slot), when its last packet finishes
/// leaving at the channel's rate. A flow whose last packet has finished has
/// nothing waiting in fq: it is sparse, and may leave ahead of the backlog.
#[map]
pub static TC_PACE: Array<u64> = Array::with_max_entries(PACE_SLOTS, 0);
/// Fragmented datagrams: the channel and verdict of each one's first
/// fragment, which its later fragments (no ports of their own) follow.
#[map]
pub static TC_FRAGS: LruHashMap<FragKey, FragEntry> = LruHashMap::with_max_entries(MAX_FRAGS, 0);

/// TCP connections of channels with connection limits. A plain hash map,
/// not an LRU: an eviction would drop an open connection and leak its
/// slot in the count. Not preallocated (`BPF_F_NO_PREALLOC`, Linux 4.6;
/// cheap allocation with bpf_mem_alloc since 6.1): an entry is freed after
/// an RCU grace period, so a program that found one never sees it reused for
/// another connection, and memory follows the connections open (the agent
/// sets the size, `--conn-table-size`).
#[map]
pub static TC_CONNS: HashMap<ConnKey, ConnEntry> =
    HashMap::with_max_entries(DEFAULT_MAX_CONNS, BPF_F_NO_PREALLOC as u32);
/// Connection counters per pool (a channel with connection limits).
#[map]
pub static TC_CONN_POOLS: Array<ConnPool> = Array::with_max_entries(MAX_POOLS, 0);
/// Connections per pool that the agent's collector released (timed out):
/// only the agent writes it.
#[map]
pub static TC_CONN_GC: Array<u64> = Array::with_max_entries(MAX_POOLS, 0);
/// Connection timeouts, index 0; written by the agent at start.
#[map]
pub static TC_CONN_CONF: Array<ConnConfig> = Array::with_max_entries(1, 0);

/// A hint that a connection was found established on this CPU a moment
/// ago (see `conn::track`): its client's plain segments skip the
/// connection table until `until_ns`.
#[repr(C)]
pub struct ConnHint {
    /// Tag of the connection's addresses and ports; 0: empty.
    pub tag: u64,
    /// Until when the hint holds (coarse clock).
    pub until_ns: u64,
    /// The client's sequence number when the table last saw it.
    pub seq: u32,
    /// The client's acknowledgment number then: a download moves it, not
    /// the sequence number, and the table must follow it too.
    pub ack: u32,
}

/// Slots of the per-CPU hint table (a power of two).
pub const CONN_HINT_SLOTS: u32 = 1024;

/// Per-CPU hints for established connections. Not pinned: a fresh agent
/// starts without hints, which only costs lookups.
#[map]
pub static TC_CONN_HINTS: PerCpuArray<ConnHint> = PerCpuArray::with_max_entries(CONN_HINT_SLOTS, 0);

/// Interactions (client, server, protocol, server port), each with the
/// slot of its counters in [`TC_IX_SLOTS`]. Preallocated, so an insert
/// never allocates in the datapath; the agent sizes it
/// (`--interaction-table-size`), reads it every sample, removes idle
/// entries (their slots go back to the free ring) and raises the admission
/// threshold ([`TC_IX_CONF`]) when it fills.
#[map]
pub static TC_IX: HashMap<IxKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_INTERACTIONS, 0);
/// Per-CPU counters by slot: a packet whose flow-cache entry names its
/// slot counts here without a hash lookup.
#[map]
pub static TC_IX_SLOTS: PerCpuArray<IxCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_INTERACTIONS, 0);
/// The ring of free slots (see `tc_common::IX_ALLOC_HEAD`).
#[map]
pub static TC_IX_FREE: Array<u32> = Array::with_max_entries(DEFAULT_MAX_INTERACTIONS, 0);
/// The free ring's head (taken by the datapath) and tail (given by the agent).
#[map]
pub static TC_IX_ALLOC: Array<u64> = Array::with_max_entries(2, 0);
/// Per slot, its generation: the agent bumps it when it frees the slot,
/// which turns every hint to it (flow cache, untracked hints) stale.
#[map]
pub static TC_IX_GEN: Array<u32> = Array::with_max_entries(DEFAULT_MAX_INTERACTIONS, 0);
/// The admission threshold for new clients, index 0; the agent writes it.
#[map]
pub static TC_IX_CONF: Array<IxConfig> = Array::with_max_entries(1, 0);
/// Interfaces with one of our ingress hooks (tc or XDP), by ifindex: a
/// forwarded packet that came in through one of them was counted there,
/// and its egress hook does not count it again.
#[map]
pub static TC_IX_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IX_IFACES, 0);

/// The accounting programs the hooks tail-call after their verdict:
/// `tc_common::ACCOUNT_*` slots. Pinned apart from the maps, per loaded
/// object (see `tc_common::MAP_NAMES`).
#[map]
pub static TC_ACCOUNT: ProgramArray = ProgramArray::with_max_entries(2, 0);
/// The same for XDP: a program array serves programs of one type only.
#[map]
pub static TC_ACCOUNT_XDP: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The heavy-hitter sketch: a per-CPU count-min sketch of bytes per
/// (client, server, protocol, port) in the current window, consulted only
/// for clients without an entry while the admission threshold is on.
#[repr(C)]
pub struct IxSketch {
    /// `IX_SKETCH_ROWS` rows of `IX_SKETCH_WIDTH` counters: the window tag
    /// in the high 8 bits, units of `IX_SKETCH_UNIT` bytes in the low 24.
    pub cells: [u32; IX_SKETCH_ROWS * IX_SKETCH_WIDTH],
    /// Units added to each row in the current window, tagged the same
    /// way: a row's average cell is `total / IX_SKETCH_WIDTH`, the floor
    /// that hash collisions alone put under every estimate.
    pub total: u32,
}

/// Not pinned: its estimates only matter within a window of a second.
#[map]
pub static TC_IX_SKETCH: PerCpuArray<IxSketch> = PerCpuArray::with_max_entries(1, 0);

/// Where an interaction's untracked-clients entry counts, remembered per
/// CPU: during a flood most packets count there, and find it here without
/// a table lookup.
#[repr(C)]
pub struct UntrackedHint {
    /// The entry's key (client all zero).
    pub key: IxKey,
    /// Its slot in `TC_IX_SLOTS`.
    pub slot: u32,
    /// The slot's generation when it was found (see `TC_IX_GEN`).
    pub gen: u32,
}

/// Slots of the per-CPU untracked-clients hints (a power of two).
pub const UNTRACKED_HINTS: u32 = 256;

/// Not pinned: hints only save lookups.
#[map]
pub static TC_IX_UNTRACKED: PerCpuArray<UntrackedHint> =
    PerCpuArray::with_max_entries(UNTRACKED_HINTS, 0);

/// A SYN's time, for its SYN-ACK's handshake time.
#[repr(C)]
pub struct SynStamp {
    /// Tag of the connection (both directions agree on it); 0: empty.
    pub tag: u64,
    /// When the SYN passed (fine clock).
    pub at_ns: u64,
}

/// Slots of the SYN table (a power of two).
pub const SYN_SLOTS: u32 = 4096;

/// Recent SYNs by connection tag (shared by the CPUs: a SYN-ACK may come
/// in on another CPU than its SYN went out). A colliding SYN overwrites:
/// a handshake time is then missed, never wrong. Not pinned.
#[map]
pub static TC_IX_SYNS: Array<SynStamp> = Array::with_max_entries(SYN_SLOTS, 0);

/// A TCP server that listens on a port above its client's, seen answering
/// a SYN: its address, port (host order) and an explicit padding.
#[repr(C)]
pub struct HighServer {
    /// The server's address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Its port.
    pub port: u16,
    /// Explicit padding, always zero.
    pub _pad: [u8; 6],
}

/// TCP servers that listen above their clients' ports (rare): without
/// them, the higher-port rule would take them for the clients. Its first
/// entry switches on a lookup per TCP packet ([`TC_IX_HIGH_ON`]). Not pinned.
#[map]
pub static TC_IX_HIGH: LruHashMap<HighServer, u8> = LruHashMap::with_max_entries(4096, 0);
/// Index 0: non-zero once [`TC_IX_HIGH`] has an entry.
#[map]
pub static TC_IX_HIGH_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU scratch: values pass through it where the verifier must not
/// tell the paths that produced them apart (see `pipeline::parse_into`,
/// `pipeline::join_enforce_paths`, `pipeline::join_wire` and the
/// extension-header walk in `parse`). Nothing in it outlives a packet.
#[repr(C)]
pub struct ParseScratch {
    /// The IPv6 extension-header walk's state.
    pub walk: crate::parse::Walk,
    /// The channel slot [`crate::pipeline::handle`] enforces.
    pub slot: u32,
    /// How [`crate::enforce::enforce`] treats the packet (`JUDGE`, `FOLLOW_*`).
    pub follow: u8,
    /// What the connection table said (`conn::CONN_*`).
    pub conn: u8,
    /// Explicit padding.
    pub _pad2: [u8; 2],
    /// The channel [`crate::classify::classify`] found, passed through
    /// here so that the verifier sees one value for every table lookup
    /// kind and word it came from.
    pub channel: u32,
    /// Explicit padding.
    pub _pad3: u32,
    /// The parse results ([`crate::pipeline::handle`] passes them through here).
    pub parsed: crate::parse::Parsed,
    /// The connection-table key of the packet (`conn`): off the 512-byte stack.
    pub conn_key: ConnKey,
    /// A new connection's entry, staged for insertion (likewise).
    pub conn_entry: ConnEntry,
    /// The headers of a reset being built (`reset`): IP + TCP, and the
    /// pseudo-header's protocol and length word.
    pub rst: [u8; 64],
    /// Its Ethernet addresses, swapped (XDP).
    pub rst_macs: [u8; 12],
    /// The packet's wire bytes and packets, for `account`; the pipeline
    /// reads them back too, as one value on every path
    /// (`pipeline::join_wire`).
    pub ix_bytes: u64,
    pub ix_pkts: u64,
    /// The flow cache's hint to the packet's interaction slot
    /// (`tc_common::FlowValue::ix`), the slot's generation then, and the
    /// interaction's server port; the port is `account::NOT_CACHED` when
    /// the flow was not in the cache (`account` then trusts the sketch
    /// before any table lookup).
    pub ix_hint: u32,
    pub ix_hint_gen: u32,
    pub ix_hint_port: u32,
    /// Non-zero when the pipeline parsed the packet: the accounting
    /// program it tail-calls counts it.
    pub ix_want: u64,
    /// The hook's return code, for the accounting program to return.
    pub ret: u64,
}

/// Not pinned: nothing in it outlives one packet.
#[map]
pub static TC_SCRATCH: PerCpuArray<ParseScratch> = PerCpuArray::with_max_entries(1, 0);
