//! The classification tables of one generation (source and destination
//! addresses per family, direction/protocol/port): where each table's
//! entries go, the keys they have there, and removing a generation from
//! all of them. Writing a table is `datapath::sync`'s job, reading one
//! back `datapath::digest`'s.
//!
//! A table whose entries come in at most [`HASH_MAX_LENS`] prefix lengths
//! goes to the prefix hash maps ([`PREFIX4`] for IPv4 and L4, [`PREFIX6`]),
//! one entry per prefix keyed by generation, table, length and masked
//! data, written in batches; the datapath probes its lengths longest first
//! ([`tc_common::Probes`]). Any other table goes to its LPM trie, as every
//! table did before. Either way the entries are the compiler's: each holds
//! the merged set of its longest-match prefix.

use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, MapData};
use tc_common::{
    ChannelSet, PrefixKey4, PrefixKey6, Probes, DST_V4, DST_V6, GEN_BITS, L4, MAX_PROBES, PREFIX4,
    PREFIX6, PROBE_TRIE, SRC_V4, SRC_V6, TABLES, TABLE_DST_V4, TABLE_DST_V6, TABLE_SRC_V4,
    TABLE_SRC_V6,
};

use super::{
    batch::{self, batch_err},
    map_err, Datapath, DatapathError,
};
use crate::policy::compile::Compiled;

/// Most prefix lengths a table may have and still go to the hash maps.
/// A packet whose longest match is short, or that matches nothing (a
/// random-source flood), pays one hash lookup per length; measured on
/// this machine kind (`bench classify`), a probe costs about what 3–4 trie
/// levels do, so a few lengths beat a trie of thousands of prefixes.
pub const HASH_MAX_LENS: usize = 4;
const _: () = assert!(HASH_MAX_LENS <= MAX_PROBES);

/// Tables with at most this many prefixes stay in their trie: a trie that
/// small is a few nodes, cheaper than a hash lookup (about 10 ns against
/// 20 on this machine kind, `bench classify`). Except a table of the
/// zero-length prefix alone, which hashed costs no lookup at all
/// (`classify::zero_length` in `tc-ebpf`).
pub const SMALL_TABLE: usize = 16;

/// The entries of table `t` of `c` as (length, data, set), borrowed: the
/// writers stream them without a copy of the tables.
pub(super) fn entries_of(
    c: &Compiled,
    t: u8,
) -> Box<dyn Iterator<Item = (u8, &[u8], &ChannelSet)> + '_> {
    match t {
        TABLE_SRC_V4 => Box::new(c.src_v4.iter().map(|e| (e.len, &e.addr[..], c.set(e.set)))),
        TABLE_DST_V4 => Box::new(c.dst_v4.iter().map(|e| (e.len, &e.addr[..], c.set(e.set)))),
        TABLE_SRC_V6 => Box::new(c.src_v6.iter().map(|e| (e.len, &e.addr[..], c.set(e.set)))),
        TABLE_DST_V6 => Box::new(c.dst_v6.iter().map(|e| (e.len, &e.addr[..], c.set(e.set)))),
        _ => Box::new(
            c.l4.iter()
                .map(|e| (e.bits as u8, &e.data[..], c.set(e.set))),
        ),
    }
}

/// `data` with the bits past `len` cleared: the canonical form of a
/// prefix, and the only one a hash probe (which masks the packet's
/// address the same way) can find.
pub fn masked<W: Width>(data: &W, len: u8) -> W {
    let mut out = *data;
    for (i, b) in out.as_mut().iter_mut().enumerate() {
        let keep = (len as usize).saturating_sub(i * 8).min(8);
        *b = if keep == 0 {
            0
        } else {
            *b & (0xffu8 << (8 - keep))
        };
    }
    out
}

/// Whether `p` places its table in the LPM trie (else in a prefix hash
/// map). Two placements of the same kind keep the same keys: only the
/// lengths probed differ, which the generation's `GenInfo` says.
pub fn in_trie(p: &Probes) -> bool {
    p.count == PROBE_TRIE
}

/// The key shapes of one address width: 4 bytes (the IPv4 and L4 tables,
/// in [`PREFIX4`]) or 16 (the IPv6 tables, in [`PREFIX6`]).
pub trait Width: Copy + Ord + Default + AsRef<[u8]> + AsMut<[u8]> + 'static {
    /// The trie key's data: the generation byte, then the bytes.
    type Trie: aya::Pod;
    /// The prefix hash map's key.
    type Hash: aya::Pod;
    /// The prefix hash map this width's tables go to.
    const HASH: &'static str;
    /// The trie key data of `data` in generation `g`.
    fn trie_data(g: u8, data: &Self) -> Self::Trie;
    /// The generation and bytes of a trie key's data.
    fn from_trie(k: &Self::Trie) -> (u8, Self);
    /// The hash key of prefix `len`/`data` of table `t` in generation `g`.
    fn hash_key(g: u8, t: u8, len: u8, data: &Self) -> Self::Hash;
    /// The generation, table, length and bytes of a hash key.
    fn from_hash(k: &Self::Hash) -> (u8, u8, u8, Self);
    /// The bytes of `raw` (a compiled entry's, of this width).
    fn from_slice(raw: &[u8]) -> Self {
        let mut out = Self::default();
        out.as_mut().copy_from_slice(raw);
        out
    }
}

impl Width for [u8; 4] {
    type Trie = [u8; 5];
    type Hash = PrefixKey4;
    const HASH: &'static str = PREFIX4;
    fn trie_data(g: u8, [a, b, c, d]: &Self) -> [u8; 5] {
        [g, *a, *b, *c, *d]
    }
    fn from_trie(k: &[u8; 5]) -> (u8, Self) {
        (k[0], [k[1], k[2], k[3], k[4]])
    }
    fn hash_key(g: u8, t: u8, len: u8, data: &Self) -> PrefixKey4 {
        PrefixKey4 {
            generation: g,
            table: t,
            len,
            _pad: 0,
            data: *data,
        }
    }
    fn from_hash(k: &PrefixKey4) -> (u8, u8, u8, Self) {
        (k.generation, k.table, k.len, k.data)
    }
}

impl Width for [u8; 16] {
    type Trie = [u8; 17];
    type Hash = PrefixKey6;
    const HASH: &'static str = PREFIX6;
    fn trie_data(g: u8, data: &Self) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[0] = g;
        k[1..].copy_from_slice(data);
        k
    }
    fn from_trie(k: &[u8; 17]) -> (u8, Self) {
        (k[0], Self::from_slice(&k[1..]))
    }
    fn hash_key(g: u8, t: u8, len: u8, data: &Self) -> PrefixKey6 {
        PrefixKey6 {
            generation: g,
            table: t,
            len,
            _pad: 0,
            data: *data,
        }
    }
    fn from_hash(k: &PrefixKey6) -> (u8, u8, u8, Self) {
        (k.generation, k.table, k.len, k.data)
    }
}

/// The trie key of prefix `len`/`data` in generation `g`.
pub fn trie_key<W: Width>(g: u8, len: u8, data: &W) -> Key<W::Trie> {
    Key::new(GEN_BITS + len as u32, W::trie_data(g, data))
}

/// Where a table whose entries have the lengths `all` goes: its distinct
/// lengths, longest first, when there are at most [`HASH_MAX_LENS`] and
/// the trie would not be tiny (or the table holds only the zero-length
/// prefix, which the datapath finds without a lookup); else its trie.
pub fn probes_of_lens(all: impl Iterator<Item = u8>) -> Probes {
    let mut seen = [false; 256];
    let mut n = 0;
    for l in all {
        seen[l as usize] = true;
        n += 1;
    }
    let lens: Vec<u8> = (0..=255u8).rev().filter(|l| seen[*l as usize]).collect();
    // A table of only the zero-length prefix costs the datapath no lookup
    // when hashed (`classify::zero_length`), one trie walk otherwise.
    let only_zero = lens == [0];
    if lens.len() > HASH_MAX_LENS || (!only_zero && (1..=SMALL_TABLE).contains(&n)) {
        return Probes {
            count: PROBE_TRIE,
            ..Probes::default()
        };
    }
    let mut p = Probes {
        count: lens.len() as u8,
        ..Probes::default()
    };
    p.lens[..lens.len()].copy_from_slice(&lens);
    p
}

/// Where each table of `compiled` goes, as [`tc_common::GenInfo::probes`] holds it.
pub fn plan(compiled: &Compiled) -> [Probes; TABLES] {
    std::array::from_fn(|t| plan_table(compiled, t as u8))
}

/// Where table `t` of `compiled` goes.
pub fn plan_table(compiled: &Compiled, t: u8) -> Probes {
    probes_of_lens(entries_of(compiled, t).map(|e| e.0))
}

/// The trie of each table.
pub const TRIES: [&str; TABLES] = [SRC_V4, DST_V4, SRC_V6, DST_V6, L4];

impl Datapath {
    /// Removes every entry of `generation` from the tries and the prefix
    /// hash maps.
    pub fn purge_tables(&mut self, generation: u32) -> Result<(), DatapathError> {
        let g = generation as u8;
        self.purge_trie::<5>(SRC_V4, g)?;
        self.purge_trie::<5>(DST_V4, g)?;
        self.purge_trie::<17>(SRC_V6, g)?;
        self.purge_trie::<17>(DST_V6, g)?;
        self.purge_trie::<5>(L4, g)?;
        self.purge_prefix_map::<PrefixKey4>(PREFIX4, g, |k| k.generation)?;
        self.purge_prefix_map::<PrefixKey6>(PREFIX6, g, |k| k.generation)?;
        Ok(())
    }

    /// Removes every entry of generation `g` (as `generation_of` reads a
    /// key's) from the prefix hash map `name`: listed, then deleted, in
    /// batches.
    fn purge_prefix_map<K: aya::Pod>(
        &self,
        name: &'static str,
        g: u8,
        generation_of: impl Fn(&K) -> u8,
    ) -> Result<(), DatapathError> {
        let map = self.prefix_map::<K>(name)?;
        let mut stale = Vec::new();
        batch::for_each::<K, ChannelSet>(map, |k, _| {
            if generation_of(k) == g {
                stale.push(*k)
            }
        })
        .map_err(batch_err(name))?;
        batch::delete(map, &stale).map_err(batch_err(name))
    }

    /// The prefix hash map `name`, its key and value sizes checked.
    pub(super) fn prefix_map<K: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<&MapData, DatapathError> {
        self.checked_map::<HashMap<&MapData, K, ChannelSet>>(name)
    }

    /// The trie `name`, its key and value sizes checked (for writes by
    /// its descriptor, `elem`).
    pub(super) fn trie_map<K: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<&MapData, DatapathError> {
        self.checked_map::<LpmTrie<&MapData, K, ChannelSet>>(name)
    }

    fn purge_trie<const N: usize>(&mut self, name: &'static str, g: u8) -> Result<(), DatapathError>
    where
        [u8; N]: aya::Pod,
    {
        let mut trie = self.trie::<[u8; N]>(name)?;
        let stale: Vec<Key<[u8; N]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data()[0] == g)
            .collect();
        for k in stale {
            trie.remove(&k).map_err(map_err(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_common::TABLE_L4;

    use crate::policy::{compile::compile, Policy};

    fn compiled(text: &str) -> Compiled {
        compile(&Policy::parse(text, "test").unwrap()).unwrap()
    }

    #[test]
    fn masked_clears_the_bits_past_the_length() {
        assert_eq!(masked(&[0xff, 0xff, 0xff, 0xff], 0), [0, 0, 0, 0]);
        assert_eq!(masked(&[0xff, 0xff, 0xff, 0xff], 12), [0xff, 0xf0, 0, 0]);
        assert_eq!(
            masked(&[0xab, 0xcd, 0xef, 0x12], 32),
            [0xab, 0xcd, 0xef, 0x12]
        );
        assert_eq!(masked(&[0x81; 16], 127)[15], 0x80);
    }

    /// A channel per port from 1000, each with `per` source /32s and
    /// /128s from 198.18.0.0 and 2001:db8::, and a destination /16.
    fn wide(channels: usize, per: usize) -> String {
        let mut t = String::from("channels:\n");
        for i in 0..channels {
            let from: Vec<String> = (0..per)
                .flat_map(|j| {
                    let n = i * per + j;
                    [
                        format!("198.18.{}.{}/32", n >> 8, n & 0xff),
                        format!("2001:db8::{n:x}/128"),
                    ]
                })
                .collect();
            t.push_str(&format!(
                "  - name: c{i}\n    protocol: udp\n    ports: [{}]\n    from: [{}]\n    to: [198.19.0.0/16]\n    limit: {{packets: 10}}\n",
                1000 + i,
                from.join(", ")
            ));
        }
        t
    }

    #[test]
    fn few_lengths_are_probed_longest_first() {
        let c = compiled(&wide(20, 2));
        let p = plan(&c);
        let src = p[TABLE_SRC_V4 as usize];
        assert_eq!(src.count, 1);
        assert_eq!(src.lens[0], 32);
        assert_eq!(
            (
                p[TABLE_SRC_V6 as usize].count,
                p[TABLE_SRC_V6 as usize].lens[0]
            ),
            (1, 128)
        );
        // One destination prefix: a trie of one node beats a hash lookup.
        assert_eq!(p[TABLE_DST_V4 as usize].count, PROBE_TRIE);
        // Only the zero-length one: no lookup at all, hashed.
        let open = plan(&compiled(
            "channels:\n  - name: a\n    from: [198.18.0.1]\n    limit: {packets: 10}\n",
        ));
        for t in [TABLE_DST_V4, TABLE_DST_V6] {
            assert_eq!((open[t as usize].count, open[t as usize].lens[0]), (1, 0));
        }
        // Empty tables are probed, and nothing matches.
        assert_eq!(p[TABLE_DST_V6 as usize].count, 0);
        // 20 ports (length 32 after the generation), UDP's own entries
        // (16) and the direction's (8).
        let l4 = p[TABLE_L4 as usize];
        assert_eq!(&l4.lens[..l4.count as usize], &[32, 16, 8]);
        // The entries are the compiler's, byte for byte.
        assert_eq!(entries_of(&c, TABLE_SRC_V4).count(), c.src_v4.len());
        assert!(entries_of(&c, TABLE_SRC_V4)
            .any(|(len, data, _)| len == 32 && data == [198, 18, 0, 39]));
        assert!(entries_of(&c, TABLE_L4).all(|(_, data, _)| data.len() == 4));
    }

    #[test]
    fn many_lengths_go_to_the_trie() {
        let from: Vec<String> = (0..40)
            .map(|i| format!("198.18.{i}.0/{}", 24 + i % (HASH_MAX_LENS + 1)))
            .collect();
        let c = compiled(&format!(
            "channels:\n  - name: a\n    from: [{}]\n    limit: {{packets: 10}}\n",
            from.join(", ")
        ));
        assert!(c.src_v4.len() > SMALL_TABLE);
        assert_eq!(plan(&c)[TABLE_SRC_V4 as usize].count, PROBE_TRIE);
        // Port ranges make many lengths too.
        let c = compiled(
            "channels:\n  - name: a\n    protocol: tcp\n    ports: [1-1000]\n    limit: {packets: 10}\n",
        );
        assert_eq!(plan(&c)[TABLE_L4 as usize].count, PROBE_TRIE);
    }

    /// The datapath's L4 probes rely on it (`classify::probe4`): a query
    /// that stops short of the port has a flag in its direction byte or a
    /// protocol other than TCP and UDP, so no longer entry can match it.
    #[test]
    fn only_flagless_tcp_and_udp_entries_reach_past_the_protocol() {
        let c = compiled(
            "channels:\n  - name: a\n    protocol: tcp\n    ports: [80, 1000-2000]\n    limit: {packets: 10}\n  - name: b\n    protocol: udp\n    direction: egress\n    ports: [53]\n    limit: {packets: 10}\n  - name: c\n    protocol: icmp\n    limit: {packets: 10}\n  - name: d\n    limit: {packets: 10}\n",
        );
        assert!(entries_of(&c, TABLE_L4).any(|(len, _, _)| len > 16));
        for (len, data, _) in entries_of(&c, TABLE_L4) {
            if len > 16 {
                assert_eq!(
                    data[0] & (tc_common::L4_ANY_PORT | tc_common::L4_UNKNOWN),
                    0,
                    "{len} {data:?}"
                );
                assert!(data[1] == 6 || data[1] == 17, "{len} {data:?}");
            }
        }
    }

    #[test]
    fn probes_for_lists_each_length_once() {
        let mut lens = vec![8, 24, 8, 0, 24];
        // A small table stays in its trie.
        assert_eq!(probes_of_lens(lens.iter().copied()).count, PROBE_TRIE);
        lens.extend((0..SMALL_TABLE).map(|_| 24));
        let p = probes_of_lens(lens.iter().copied());
        assert_eq!(p.count, 3);
        assert_eq!(&p.lens[..3], &[24, 8, 0]);
        assert_eq!(probes_of_lens(std::iter::empty()).count, 0);
        assert_eq!(probes_of_lens([0].into_iter()).count, 1);
    }
}
