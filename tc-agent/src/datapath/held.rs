//! What each generation's tables hold, kept by the agent so that writing a
//! policy into a generation writes only what differs from what it holds
//! ("write only what changed"): a one-channel change in a 1,024-channel
//! policy touches a handful of entries, not 130,000.
//!
//! A table is held as its keys, sorted, each with a 64-bit fingerprint of
//! its value (a 1,024-bit channel set is 128 bytes; the fingerprint keeps
//! the record at 16 bytes an IPv4 entry). The sum of the fingerprints is
//! also the tables' digest (`datapath::digest`): one pass computes both, and
//! a restarted agent that reads a generation back from the kernel gets its
//! record and its digest at once.
//!
//! The record also says where each table is (its `Probes`: an LPM trie, or
//! the prefix hash maps and the lengths probed there, see
//! `datapath::prefixes`), and so does the digest: the same entries in
//! another place, or a `GenInfo` that places them elsewhere, are another
//! content.
//!
//! A generation whose content is not known (a new agent over pinned maps
//! before it read it, or a write or a prune (`datapath::prune`) into it
//! that failed half-way) holds
//! `None`: the next write into it removes every entry of the generation
//! by walking every trie and prefix hash map, then writes all.

use std::sync::Arc;

use tc_common::{
    ChannelPolicy, ChannelSet, Probes, MAX_PROBES, TABLES, TABLE_DST_V4, TABLE_DST_V6, TABLE_L4,
    TABLE_SRC_V4, TABLE_SRC_V6,
};

use super::prefixes::{self, entries_of, masked, Width};
use crate::policy::compile::Compiled;

/// A key and the fingerprint of its value.
pub type Held<K> = Vec<(K, u64)>;

/// The key of an address entry: prefix length, then the address (bits
/// past the length zero).
pub type AddrKey<const N: usize> = (u8, [u8; N]);
/// The key of an L4 entry: prefix bits after the generation byte, then
/// `[direction, protocol, port_hi, port_lo]`.
pub type L4Key = (u8, [u8; 4]);

/// Every table of one generation. The address tables' records are
/// shared: a generation written with the live one's address tables
/// (`Tables::of_with_addresses`) holds the same records, not copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// Source IPv4 prefixes.
    pub src_v4: Arc<Held<AddrKey<4>>>,
    /// Destination IPv4 prefixes.
    pub dst_v4: Arc<Held<AddrKey<4>>>,
    /// Source IPv6 prefixes.
    pub src_v6: Arc<Held<AddrKey<16>>>,
    /// Destination IPv6 prefixes.
    pub dst_v6: Arc<Held<AddrKey<16>>>,
    /// Direction/protocol/port entries.
    pub l4: Held<L4Key>,
    /// The generation's policy slots in order, up to the last active one
    /// (slots past it are inactive).
    pub policies: Vec<ChannelPolicy>,
    /// Where each table is (index `TABLE_*`), as the generation's
    /// `GenInfo` tells the datapath.
    pub probes: [Probes; TABLES],
    /// Per table and probed length, the channels that length adds, as the
    /// generation's `GenInfo` tells the datapath (`datapath::reach`).
    pub reach: [[ChannelSet; MAX_PROBES]; TABLES],
    /// Entries of the generation found where its `GenInfo` does not place
    /// their table (read back from the kernel only; a written generation
    /// has none). The datapath never sees them, but a record that left
    /// them out would let them resurface when the table moves there:
    /// a generation with any is not adopted, and its digest differs.
    pub misplaced: usize,
}

impl Tables {
    /// The record of `compiled` as [`Datapath::apply`](super::Datapath::apply)
    /// writes it, every table sorted by key.
    ///
    /// The IPv6 tables are recorded on a second thread, as an apply writes
    /// them: fingerprinting, sorting and finding the reach of the
    /// benchmark's 131,072 entries took 11-12 ms on one thread and 5.6-6.9
    /// on two (medians of timed runs of the benchmark's policy).
    pub fn of(c: &Compiled) -> Self {
        let probes = prefixes::plan(c);
        let reach_of = |t: u8| (t, super::reach::table_reach(c, t, &probes[t as usize]));
        let (v4, v6) = crate::families::both(
            "record-ipv6",
            || {
                let reach = [TABLE_SRC_V4, TABLE_DST_V4, TABLE_L4].map(reach_of);
                let tables = (table(c, TABLE_SRC_V4), table(c, TABLE_DST_V4));
                (tables, table(c, TABLE_L4), reach)
            },
            || {
                let reach = [TABLE_SRC_V6, TABLE_DST_V6].map(reach_of);
                ((table(c, TABLE_SRC_V6), table(c, TABLE_DST_V6)), reach)
            },
        );
        let ((src_v4, dst_v4), l4, reach_v4) = v4;
        let ((src_v6, dst_v6), reach_v6) =
            v6.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // Five tables, each listed once in the two arrays above.
        const _: () = assert!(TABLES == 5);
        let mut reach = [[ChannelSet::EMPTY; MAX_PROBES]; TABLES];
        for (t, r) in reach_v4.into_iter().chain(reach_v6) {
            reach[t as usize] = r;
        }
        Self {
            src_v4: Arc::new(src_v4),
            dst_v4: Arc::new(dst_v4),
            src_v6: Arc::new(src_v6),
            dst_v6: Arc::new(dst_v6),
            l4,
            policies: c.policies.clone(),
            reach,
            probes,
            misplaced: 0,
        }
    }

    /// [`of`](Self::of) for a compile whose address tables are those
    /// `kept` was recorded from (the agent keeps both, see
    /// `policy::compile::addresses`): their records, placement and reach
    /// are `kept`'s (the records shared), and only the L4 table and the
    /// policy slots are recorded afresh. Fingerprinting 131,072 address
    /// entries (their 128-byte channel sets), sorting them and finding
    /// their reach is most of a record: 11-13 ms of a one-channel change
    /// of the benchmark's policy (`bench apply`, `RUST_LOG=tc_agent=debug`)
    /// when [`of`](Self::of) ran on one thread, 5.6-6.9 ms on two.
    pub fn of_with_addresses(c: &Compiled, kept: &AddressRecord) -> Self {
        let l4 = TABLE_L4 as usize;
        let mut probes = kept.probes;
        probes[l4] = prefixes::plan_table(c, TABLE_L4);
        let mut reach = kept.reach;
        reach[l4] = super::reach::table_reach(c, TABLE_L4, &probes[l4]);
        Self {
            src_v4: Arc::clone(&kept.src_v4),
            dst_v4: Arc::clone(&kept.dst_v4),
            src_v6: Arc::clone(&kept.src_v6),
            dst_v6: Arc::clone(&kept.dst_v6),
            l4: table(c, TABLE_L4),
            policies: c.policies.clone(),
            probes,
            reach,
            misplaced: 0,
        }
    }

    /// The address tables' share of this record.
    pub fn addresses(&self) -> AddressRecord {
        AddressRecord {
            src_v4: Arc::clone(&self.src_v4),
            dst_v4: Arc::clone(&self.dst_v4),
            src_v6: Arc::clone(&self.src_v6),
            dst_v6: Arc::clone(&self.dst_v6),
            probes: self.probes,
            reach: self.reach,
        }
    }

    /// The digest of the generation: stable across processes and builds,
    /// independent of the order entries are listed in.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for (n, sum) in [
            (self.src_v4.len(), fold_sum(&self.src_v4)),
            (self.dst_v4.len(), fold_sum(&self.dst_v4)),
            (self.src_v6.len(), fold_sum(&self.src_v6)),
            (self.dst_v6.len(), fold_sum(&self.dst_v6)),
            (self.l4.len(), fold_sum(&self.l4)),
        ] {
            h = mix(mix(h, n as u64), sum);
        }
        for p in &self.probes {
            let mut w = [0u8; 8];
            w[0] = p.count;
            w[1..1 + p.lens.len()].copy_from_slice(&p.lens);
            h = mix(h, u64::from_le_bytes(w));
        }
        for set in self.reach.iter().flatten() {
            for w in set.words {
                h = mix(h, w);
            }
        }
        h = mix(h, self.misplaced as u64);
        h = mix(h, self.policies.len() as u64);
        for p in &self.policies {
            h = mix(h, policy_fingerprint(p));
        }
        h
    }
}

/// The address tables' share of a generation's record
/// ([`Tables::addresses`]), kept with the compile's address tables it was
/// made from for the next apply that compiles with them
/// ([`Tables::of_with_addresses`]).
#[derive(Debug, Clone)]
pub struct AddressRecord {
    /// The IPv4 source table's record, shared with the generations'.
    src_v4: Arc<Held<AddrKey<4>>>,
    /// The IPv4 destination table's.
    dst_v4: Arc<Held<AddrKey<4>>>,
    /// The IPv6 source table's.
    src_v6: Arc<Held<AddrKey<16>>>,
    /// The IPv6 destination table's.
    dst_v6: Arc<Held<AddrKey<16>>>,
    /// Where each table is, as [`Tables::probes`]: only the address
    /// tables' are taken (the L4 table is placed afresh).
    probes: [Probes; TABLES],
    /// What each probed length reaches, as [`Tables::reach`]: likewise.
    reach: [[ChannelSet; MAX_PROBES]; TABLES],
}

/// What one generation holds, and whether the flow cache may still hold
/// entries classified under it.
#[derive(Debug, Clone, Default)]
pub struct Generation {
    /// Its tables; `None`: not known, so the next write walks and rewrites.
    pub tables: Option<Tables>,
    /// Whether the flow cache may hold entries of this generation: set when
    /// the generation stops being live (packets classified under it were
    /// cached), cleared once they are removed. A clean generation needs no
    /// walk of the 65,536-entry flow cache before it goes live again.
    pub flows_dirty: bool,
}

impl Generation {
    /// A generation this agent knows nothing about.
    pub fn unknown() -> Self {
        Self {
            tables: None,
            flows_dirty: true,
        }
    }
}

/// Keys to remove and entries to write to turn `held` into `want` (both
/// sorted by key): stale keys, and the indices in `want` of entries that
/// are new or whose value differs.
pub fn diff<K: Ord + Copy>(held: &Held<K>, want: &Held<K>) -> (Vec<K>, Vec<usize>) {
    let (mut stale, mut write) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < held.len() || j < want.len() {
        match (held.get(i), want.get(j)) {
            (Some(h), Some(w)) if h.0 == w.0 => {
                if h.1 != w.1 {
                    write.push(j);
                }
                i += 1;
                j += 1;
            }
            (Some(h), Some(w)) if h.0 < w.0 => {
                stale.push(h.0);
                i += 1;
            }
            (Some(h), None) => {
                stale.push(h.0);
                i += 1;
            }
            (_, Some(_)) => {
                write.push(j);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (stale, write)
}

/// The entries of `held` that `other` holds alike (same key, same value's
/// fingerprint), and the keys of the rest; both sorted by key.
pub fn common<K: Ord + Copy>(held: &Held<K>, other: &Held<K>) -> (Held<K>, Vec<K>) {
    let (mut kept, mut rest) = (Vec::new(), Vec::new());
    let mut theirs = other.iter().peekable();
    for &(k, f) in held {
        while theirs.next_if(|o| o.0 < k).is_some() {}
        match theirs.peek() {
            Some(&&(ok, of)) if ok == k && of == f => kept.push((k, f)),
            _ => rest.push(k),
        }
    }
    kept.shrink_to_fit();
    (kept, rest)
}

/// The record of table `t` of `c`: keys masked as the maps hold them.
fn table<W: Width>(c: &Compiled, t: u8) -> Held<(u8, W)> {
    let held = sorted(entries_of(c, t).map(|(len, raw, set)| {
        let data = masked(&W::from_slice(raw), len);
        ((len, data), entry(t as u64, len as u32, data.as_ref(), set))
    }));
    // The compiled keys are distinct (for L4 because validation refuses
    // port 0, so no port range's entries collide with its protocol's):
    // the writer's check that it wrote every entry the record names
    // (`sync`) counts on it.
    debug_assert!(
        held.windows(2).all(|w| w[0].0 < w[1].0),
        "table {t}: compiled keys repeat"
    );
    held
}

/// `it` as a record: sorted by key, no spare capacity.
pub fn sorted<K: Ord + Copy>(it: impl Iterator<Item = (K, u64)>) -> Held<K> {
    let mut v: Held<K> = it.collect();
    v.sort_unstable_by_key(|a| a.0);
    v.shrink_to_fit();
    v
}

/// The fingerprint of one entry of table `id`: its prefix bits, key bytes
/// and channel set.
pub fn entry(id: u64, bits: u32, key: &[u8], set: &ChannelSet) -> u64 {
    let mut h = mix(id, bits as u64);
    for chunk in key.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix(h, u64::from_le_bytes(w));
    }
    for w in set.words {
        h = mix(h, w);
    }
    h
}

/// The fingerprint of one policy slot.
pub fn policy_fingerprint(p: &ChannelPolicy) -> u64 {
    let mut h = 0;
    for w in [
        p.byte_cost_q16,
        p.byte_tau_ns,
        p.pkt_cost_q16,
        p.pkt_tau_ns,
        p.horizon_ns,
        p.conn_cost_ns,
        p.conn_tau_ns,
        p.conn_limit as u64,
        p.conn_pool as u64,
        u64::from_le_bytes([p.action, p.mode, p.active, p.conn_action, 0, 0, 0, 0]),
    ] {
        h = mix(h, w);
    }
    h
}

fn fold_sum<K>(v: &Held<K>) -> u64 {
    v.iter().fold(0u64, |a, (_, f)| a.wrapping_add(*f))
}

/// One step of a folded-multiply hash (as wyhash and foldhash use): fast on
/// whole words, and every input bit reaches every output bit.
fn mix(h: u64, w: u64) -> u64 {
    let m = u128::from(h ^ w ^ 0x2d35_8dcc_aa6c_78a5).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    ((m >> 64) as u64) ^ (m as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lists_stale_new_and_changed() {
        let held: Held<u8> = vec![(1, 10), (2, 20), (4, 40)];
        let want: Held<u8> = vec![(2, 21), (3, 30), (4, 40), (5, 50)];
        let (stale, write) = diff(&held, &want);
        assert_eq!(stale, vec![1]);
        assert_eq!(write, vec![0, 1, 3]);
        assert_eq!(diff(&want, &want), (vec![], vec![]));
        assert_eq!(diff(&vec![], &want).1, vec![0, 1, 2, 3]);
        assert_eq!(diff(&want, &vec![]).0, vec![2, 3, 4, 5]);
    }

    #[test]
    fn common_keeps_the_entries_held_alike() {
        let held: Held<u8> = vec![(1, 10), (2, 20), (4, 40), (6, 60)];
        let live: Held<u8> = vec![(0, 0), (2, 21), (3, 30), (4, 40), (6, 60), (7, 70)];
        assert_eq!(common(&held, &live), (vec![(4, 40), (6, 60)], vec![1, 2]));
        assert_eq!(common(&held, &held), (held.clone(), vec![]));
        assert_eq!(common(&held, &vec![]), (vec![], vec![1, 2, 4, 6]));
        assert_eq!(common(&vec![], &live), (vec![], vec![]));
    }

    /// A policy with nested prefixes in both families, sets, port ranges
    /// and a shadowed channel.
    const NESTED: &str = "endpoints:
  web: [198.18.1.0/24, \"2001:db8:1::/64\"]
  wide: [198.18.0.0/15, \"2001:db8::/32\"]
channels:
  - name: a
    from: [198.18.0.0/16, web]
    protocol: tcp
    ports: [80, 443-450]
    limit: {bandwidth: 1Mbit}
  - name: b
    to: [198.18.2.0/24, \"2001:db8:2::/48\"]
    limit: {packets: 100}
  - name: c
    from: web
    to: 198.18.2.7
  - name: d
    from: [198.18.1.128/25, 198.18.1.7, \"2001:db8:1::7\", wide]
    protocol: udp
    ports: [53, 5000-6000]
  - name: e
    from: [\"2001:db8:1:0:8000::/65\", \"2001:db8:1::/64\"]
    direction: egress
";

    /// The digest a saved state holds must not change with the agent's
    /// version for the same policy, or a restarted (upgraded) agent
    /// would find the kernel's tables unlike its state and forget the live
    /// policy's channels. Pinned to what `a17d2f2` (before covers named
    /// sets by index and the record ran on two threads) computes; also
    /// the compiled entries' set indices and the sets, in their order.
    #[test]
    fn the_digest_of_a_policy_stays_what_earlier_agents_computed() {
        let p = crate::policy::Policy::parse(NESTED, "g").unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let c = crate::policy::compile::compile(&p).unwrap();
        assert_eq!((c.sets.len(), c.entries()), (11, 42));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut fnv = |x: u64| h = (h ^ x).wrapping_mul(0x0100_0000_01b3);
        let ids = c.src_v4.iter().chain(&c.dst_v4).map(|e| e.set);
        let ids = ids.chain(c.src_v6.iter().chain(&c.dst_v6).map(|e| e.set));
        for id in ids.chain(c.l4.iter().map(|e| e.set)) {
            fnv(u64::from(id));
        }
        for w in c.sets.iter().flat_map(|s| s.words) {
            fnv(w);
        }
        assert_eq!(h, 0xd7b7_86d5_ef85_5416, "set indices or sets");
        assert_eq!(Tables::of(&c).digest(), 0xc423_407b_76fc_84d8);
    }

    #[test]
    fn the_digest_covers_where_each_table_is() {
        let t = Tables::default();
        let mut moved = t.clone();
        moved.probes[TABLE_L4 as usize].count = tc_common::PROBE_TRIE;
        assert_ne!(t.digest(), moved.digest());
        let mut lens = t.clone();
        lens.probes[TABLE_SRC_V4 as usize].count = 1;
        lens.probes[TABLE_SRC_V4 as usize].lens[0] = 32;
        assert_ne!(t.digest(), lens.digest());
        let mut stray = t.clone();
        stray.misplaced = 1;
        assert_ne!(t.digest(), stray.digest());
    }
}
