//! The classification tables of one generation (source and destination
//! addresses per family, direction/protocol/port): where each table's
//! entries go, writing them, reading them back and removing them.
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
    ChannelSet, GenInfo, PrefixKey4, PrefixKey6, Probes, DST_V4, DST_V6, GENS, GEN_BITS, L4,
    MAX_PROBES, PREFIX4, PREFIX6, PROBE_TRIE, SRC_V4, SRC_V6, TABLES, TABLE_DST_V4, TABLE_DST_V6,
    TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6,
};

use super::{batch, map_err, Datapath, DatapathError};
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
/// 20 on this machine kind, `bench classify`).
pub const SMALL_TABLE: usize = 16;

/// One table entry in canonical form: prefix length in bits after the
/// generation byte, the data (bits past the length zero), the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableEntry {
    /// Prefix length, in bits of `data`.
    pub len: u8,
    /// Address bytes, or an L4 key's bytes after the generation byte.
    pub data: Vec<u8>,
    /// Channels of the entry.
    pub set: ChannelSet,
}

/// The tables of a generation, indexed by `TABLE_*`.
pub type Tables = [Vec<TableEntry>; TABLES];

/// The tables of `compiled` in canonical form.
pub fn tables_of(c: &Compiled) -> Tables {
    let addr = |len: u8, a: &[u8], set: ChannelSet| TableEntry {
        len,
        data: masked(a, len),
        set,
    };
    [
        c.src_v4
            .iter()
            .map(|e| addr(e.len, &e.addr, e.set))
            .collect(),
        c.dst_v4
            .iter()
            .map(|e| addr(e.len, &e.addr, e.set))
            .collect(),
        c.src_v6
            .iter()
            .map(|e| addr(e.len, &e.addr, e.set))
            .collect(),
        c.dst_v6
            .iter()
            .map(|e| addr(e.len, &e.addr, e.set))
            .collect(),
        c.l4.iter()
            .map(|e| addr(e.bits as u8, &e.data, e.set))
            .collect(),
    ]
}

/// The entries of table `t` of `c` as (length, data, set), borrowed: the
/// writer streams them without a copy of the tables.
fn entries_of(c: &Compiled, t: u8) -> Box<dyn Iterator<Item = (u8, &[u8], &ChannelSet)> + '_> {
    match t {
        TABLE_SRC_V4 => Box::new(c.src_v4.iter().map(|e| (e.len, &e.addr[..], &e.set))),
        TABLE_DST_V4 => Box::new(c.dst_v4.iter().map(|e| (e.len, &e.addr[..], &e.set))),
        TABLE_SRC_V6 => Box::new(c.src_v6.iter().map(|e| (e.len, &e.addr[..], &e.set))),
        TABLE_DST_V6 => Box::new(c.dst_v6.iter().map(|e| (e.len, &e.addr[..], &e.set))),
        _ => Box::new(c.l4.iter().map(|e| (e.bits as u8, &e.data[..], &e.set))),
    }
}

/// `data` with the bits past `len` cleared.
fn masked(data: &[u8], len: u8) -> Vec<u8> {
    data.iter()
        .enumerate()
        .map(|(i, b)| {
            let keep = (len as usize).saturating_sub(i * 8).min(8);
            if keep == 0 {
                0
            } else {
                b & (0xffu8 << (8 - keep))
            }
        })
        .collect()
}

/// Where a table with `entries` goes: its distinct lengths, longest
/// first, when there are at most [`HASH_MAX_LENS`] and the trie would not
/// be tiny; else its trie.
pub fn probes_for(entries: &[TableEntry]) -> Probes {
    probes_of_lens(entries.iter().map(|e| e.len))
}

/// [`probes_for`] from the entries' lengths alone.
fn probes_of_lens(all: impl Iterator<Item = u8>) -> Probes {
    let mut seen = [false; 256];
    let mut n = 0;
    for l in all {
        seen[l as usize] = true;
        n += 1;
    }
    let lens: Vec<u8> = (0..=255u8).rev().filter(|l| seen[*l as usize]).collect();
    if lens.len() > HASH_MAX_LENS || (1..=SMALL_TABLE).contains(&n) {
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
    std::array::from_fn(|t| probes_of_lens(entries_of(compiled, t as u8).map(|e| e.0)))
}

/// The trie of each table.
const TRIES: [&str; TABLES] = [SRC_V4, DST_V4, SRC_V6, DST_V6, L4];

impl Datapath {
    /// Writes the classification tables of `compiled` under `generation`,
    /// which must be empty ([`purge_tables`](Self::purge_tables)), and
    /// returns the generation's `GenInfo` (words in use, where each table
    /// went), which the caller writes before it makes the generation live.
    pub fn write_tables(
        &mut self,
        generation: u32,
        compiled: &Compiled,
    ) -> Result<GenInfo, DatapathError> {
        let g = generation as u8;
        let probes = plan(compiled);
        let info = GenInfo {
            words: compiled.words,
            probes,
            ..GenInfo::default()
        };
        // Written a chunk at a time, so the agent never holds a second
        // copy of the tables.
        let mut keys4 = Vec::with_capacity(batch::CHUNK);
        let mut keys6 = Vec::with_capacity(batch::CHUNK);
        let mut sets4 = Vec::with_capacity(batch::CHUNK);
        let mut sets6 = Vec::with_capacity(batch::CHUNK);
        for t in 0..TABLES as u8 {
            if probes[t as usize].count == PROBE_TRIE {
                let entries: Vec<TableEntry> = entries_of(compiled, t)
                    .map(|(len, data, set)| TableEntry {
                        len,
                        data: masked(data, len),
                        set: *set,
                    })
                    .collect();
                self.write_trie(TRIES[t as usize], g, &entries)?;
                continue;
            }
            for (len, raw, set) in entries_of(compiled, t) {
                let data = masked(raw, len);
                if t == TABLE_SRC_V6 || t == TABLE_DST_V6 {
                    let mut d = [0u8; 16];
                    d.copy_from_slice(&data);
                    keys6.push(PrefixKey6 {
                        generation: g,
                        table: t,
                        len,
                        _pad: 0,
                        data: d,
                    });
                    sets6.push(*set);
                } else {
                    let mut d = [0u8; 4];
                    d.copy_from_slice(&data);
                    keys4.push(PrefixKey4 {
                        generation: g,
                        table: t,
                        len,
                        _pad: 0,
                        data: d,
                    });
                    sets4.push(*set);
                }
                if keys4.len() == batch::CHUNK {
                    self.flush(PREFIX4, &mut keys4, &mut sets4)?;
                }
                if keys6.len() == batch::CHUNK {
                    self.flush(PREFIX6, &mut keys6, &mut sets6)?;
                }
            }
        }
        self.flush(PREFIX4, &mut keys4, &mut sets4)?;
        self.flush(PREFIX6, &mut keys6, &mut sets6)?;
        Ok(info)
    }

    /// Writes and empties one chunk of prefix hash entries.
    fn flush<K: aya::Pod>(
        &mut self,
        name: &'static str,
        keys: &mut Vec<K>,
        sets: &mut Vec<ChannelSet>,
    ) -> Result<(), DatapathError> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = self.prefix_map::<K>(name)?;
        batch::update(map, keys, sets).map_err(batch_err(name))?;
        keys.clear();
        sets.clear();
        Ok(())
    }

    /// Removes every entry of `generation` from the tries and the prefix
    /// hash maps.
    pub fn purge_tables(&mut self, generation: u32) -> Result<(), DatapathError> {
        let g = generation as u8;
        self.purge_trie::<5>(SRC_V4, g)?;
        self.purge_trie::<5>(DST_V4, g)?;
        self.purge_trie::<17>(SRC_V6, g)?;
        self.purge_trie::<17>(DST_V6, g)?;
        self.purge_trie::<5>(L4, g)?;
        let map = self.prefix_map::<PrefixKey4>(PREFIX4)?;
        let mut stale = Vec::new();
        batch::for_each::<PrefixKey4, ChannelSet>(map, |k, _| {
            if k.generation == g {
                stale.push(*k)
            }
        })
        .map_err(batch_err(PREFIX4))?;
        batch::delete(map, &stale).map_err(batch_err(PREFIX4))?;
        let map = self.prefix_map::<PrefixKey6>(PREFIX6)?;
        let mut stale = Vec::new();
        batch::for_each::<PrefixKey6, ChannelSet>(map, |k, _| {
            if k.generation == g {
                stale.push(*k)
            }
        })
        .map_err(batch_err(PREFIX6))?;
        batch::delete(map, &stale).map_err(batch_err(PREFIX6))?;
        Ok(())
    }

    /// What the tables of `generation` hold in the kernel, tries and hash
    /// maps together, in canonical form (unsorted), and where the
    /// generation's `GenInfo` says each table is.
    pub fn read_tables(
        &mut self,
        generation: u32,
    ) -> Result<(Tables, [Probes; TABLES]), DatapathError> {
        let g = generation as u8;
        let info = self
            .array::<GenInfo>(GENS)?
            .get(&generation, 0)
            .map_err(map_err(GENS))?;
        let mut out: Tables = Default::default();
        out[TABLE_SRC_V4 as usize] = self.read_trie::<5>(SRC_V4, g)?;
        out[TABLE_DST_V4 as usize] = self.read_trie::<5>(DST_V4, g)?;
        out[TABLE_SRC_V6 as usize] = self.read_trie::<17>(SRC_V6, g)?;
        out[TABLE_DST_V6 as usize] = self.read_trie::<17>(DST_V6, g)?;
        out[TABLE_L4 as usize] = self.read_trie::<5>(L4, g)?;
        let map = self.prefix_map::<PrefixKey4>(PREFIX4)?;
        let mut found = Vec::new();
        batch::for_each::<PrefixKey4, ChannelSet>(map, |k, v| {
            if k.generation == g {
                found.push((k.table, k.len, k.data.to_vec(), *v))
            }
        })
        .map_err(batch_err(PREFIX4))?;
        let map = self.prefix_map::<PrefixKey6>(PREFIX6)?;
        batch::for_each::<PrefixKey6, ChannelSet>(map, |k, v| {
            if k.generation == g {
                found.push((k.table, k.len, k.data.to_vec(), *v))
            }
        })
        .map_err(batch_err(PREFIX6))?;
        for (table, len, data, set) in found {
            // A table byte no agent writes is reported as an entry of no
            // table: the digest then differs from every policy's.
            if let Some(t) = out.get_mut(table as usize) {
                t.push(TableEntry { len, data, set });
            }
        }
        Ok((out, info.probes))
    }

    /// The prefix hash map `name`, its key and value sizes checked.
    fn prefix_map<K: aya::Pod>(&self, name: &'static str) -> Result<&MapData, DatapathError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| DatapathError::Setup(format!("map {name} missing from object")))?;
        let _typed: HashMap<&MapData, K, ChannelSet> = map.try_into().map_err(map_err(name))?;
        match map {
            aya::maps::Map::HashMap(data) => Ok(data),
            _ => Err(DatapathError::Setup(format!(
                "map {name} is not a hash map"
            ))),
        }
    }

    /// Inserts `entries` into the trie `name` under generation `g`
    /// (key data: the generation byte, then the entry's `K - 1` bytes).
    fn write_trie(
        &mut self,
        name: &'static str,
        g: u8,
        entries: &[TableEntry],
    ) -> Result<(), DatapathError> {
        if name == SRC_V6 || name == DST_V6 {
            let mut trie = self.trie::<[u8; 17]>(name)?;
            insert_all(&mut trie, name, g, entries)
        } else {
            let mut trie = self.trie::<[u8; 5]>(name)?;
            insert_all(&mut trie, name, g, entries)
        }
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

    fn read_trie<const N: usize>(
        &mut self,
        name: &'static str,
        g: u8,
    ) -> Result<Vec<TableEntry>, DatapathError>
    where
        [u8; N]: aya::Pod,
    {
        let trie = self.trie::<[u8; N]>(name)?;
        let keys: Vec<Key<[u8; N]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.data()[0] == g)
            .collect();
        keys.into_iter()
            .map(|k| {
                Ok(TableEntry {
                    len: (k.prefix_len() - GEN_BITS) as u8,
                    data: k.data()[1..].to_vec(),
                    set: trie.get(&k, 0).map_err(map_err(name))?,
                })
            })
            .collect()
    }
}

fn insert_all<const K: usize>(
    trie: &mut LpmTrie<&mut MapData, [u8; K], ChannelSet>,
    name: &'static str,
    g: u8,
    entries: &[TableEntry],
) -> Result<(), DatapathError>
where
    [u8; K]: aya::Pod,
{
    for e in entries {
        let mut data = [0u8; K];
        data[0] = g;
        data[1..].copy_from_slice(&e.data);
        trie.insert(&Key::new(GEN_BITS + e.len as u32, data), e.set, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

fn batch_err(name: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |e| DatapathError::Setup(format!("eBPF map `{name}`: batch operation: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // Empty tables are probed, and nothing matches.
        assert_eq!(p[TABLE_DST_V6 as usize].count, 0);
        // 20 ports (length 32 after the generation), UDP's own entries
        // (16) and the direction's (8).
        let l4 = p[TABLE_L4 as usize];
        assert_eq!(&l4.lens[..l4.count as usize], &[32, 16, 8]);
        // The entries are the compiler's, byte for byte.
        let t = tables_of(&c);
        assert_eq!(t[TABLE_SRC_V4 as usize].len(), c.src_v4.len());
        assert!(t[TABLE_SRC_V4 as usize]
            .iter()
            .any(|e| e.len == 32 && e.data == [198, 18, 0, 39]));
        assert!(t[TABLE_L4 as usize].iter().all(|e| e.data.len() == 4));
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
        let t = tables_of(&c);
        assert!(t[TABLE_L4 as usize].iter().any(|e| e.len > 16));
        for e in &t[TABLE_L4 as usize] {
            if e.len > 16 {
                assert_eq!(
                    e.data[0] & (tc_common::L4_ANY_PORT | tc_common::L4_UNKNOWN),
                    0,
                    "{e:?}"
                );
                assert!(e.data[1] == 6 || e.data[1] == 17, "{e:?}");
            }
        }
    }

    #[test]
    fn probes_for_lists_each_length_once() {
        let e = |len| TableEntry {
            len,
            data: vec![0; 4],
            set: ChannelSet::EMPTY,
        };
        let mut entries = vec![e(8), e(24), e(8), e(0), e(24)];
        // A small table stays in its trie.
        assert_eq!(probes_for(&entries).count, PROBE_TRIE);
        entries.extend((0..SMALL_TABLE).map(|_| e(24)));
        let p = probes_for(&entries);
        assert_eq!(p.count, 3);
        assert_eq!(&p.lens[..3], &[24, 8, 0]);
        assert_eq!(probes_for(&[]).count, 0);
    }
}
