//! Every map of the datapath, in one place. The names are the ones
//! `tc-common` exports, so the agent pins and reads the same maps.

use aya_ebpf::{
    macros::map,
    bindings::BPF_F_NO_PREALLOC,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use tc_common::{
    BucketState, ChannelCounters, ChannelPolicy, ChannelSet, Config, ConnConfig, ConnEntry,
    ConnKey, ConnPool, FlowKey4, FlowKey6, FragEntry, FragKey, GenInfo, GlobalCounters, Ip4Key,
    Ip6Key, L4Key, CHANNEL_SLOTS, DEFAULT_MAX_CONNS, MAX_FLOWS, MAX_FRAGS, MAX_L4_ENTRIES,
    MAX_POOLS, MAX_PREFIXES, PACE_SLOTS,
};

#[map]
pub static TC_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static TC_GENS: Array<GenInfo> = Array::with_max_entries(2, 0);
#[map]
pub static TC_FLOWS4: LruHashMap<FlowKey4, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub static TC_FLOWS6: LruHashMap<FlowKey6, u32> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
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
#[map]
pub static TC_POLICIES: Array<ChannelPolicy> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
pub static TC_BUCKETS: Array<BucketState> = Array::with_max_entries(CHANNEL_SLOTS, 0);
#[map]
pub static TC_COUNTERS: PerCpuArray<ChannelCounters> = PerCpuArray::with_max_entries(CHANNEL_SLOTS, 0);
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
pub static TC_CONN_HINTS: PerCpuArray<ConnHint> =
    PerCpuArray::with_max_entries(CONN_HINT_SLOTS, 0);

/// Per-CPU scratch: values pass through it where the verifier must not
/// tell the paths that produced them apart (see `pipeline::parse_into`, `pipeline::join_enforce_paths` and
/// the extension-header walk in `parse`). Nothing in it outlives a packet.
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
}

/// Not pinned: nothing in it outlives one packet.
#[map]
pub static TC_SCRATCH: PerCpuArray<ParseScratch> = PerCpuArray::with_max_entries(1, 0);
