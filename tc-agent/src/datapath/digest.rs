//! A digest of what one generation's tables hold, computed the same way
//! from a compiled policy (when it is written) and from the kernel's maps
//! (when an agent starts), so the saved state can be checked against what
//! the kernel really enforces. It is the sum of the entries' fingerprints
//! and where each table is (see `datapath::held`), so the record the agent
//! keeps of a generation and its digest come from one pass.

use aya::maps::MapData;
use tc_common::{
    ChannelPolicy, ChannelSet, GenInfo, Probes, GENS, MAX_CHANNELS, POLICIES, TABLES, TABLE_DST_V4,
    TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6,
};

use super::{
    batch,
    batch::batch_err,
    held::{self, Held, Tables},
    map_err,
    prefixes::{in_trie, Width, TRIES},
    Datapath, DatapathError,
};
use crate::policy::compile::Compiled;

/// The digest of `compiled` as [`Datapath::apply`] writes it.
pub fn of_compiled(c: &Compiled) -> u64 {
    Tables::of(c).digest()
}

/// One width's prefix hash entries of a generation, per table.
type Hashed<W> = [Held<(u8, W)>; TABLES];

impl Datapath {
    /// The digest of what generation `generation` holds in the kernel.
    pub fn digest_of_generation(&mut self, generation: u32) -> Result<u64, DatapathError> {
        Ok(self.read_generation(generation)?.digest())
    }

    /// Reads back what generation `generation` holds in the kernel, as the
    /// record [`Datapath::apply`] keeps of what it wrote: each table from
    /// where the generation's `GenInfo` places it (its trie or the prefix
    /// hash maps), entries of it found in the other place counted as
    /// misplaced.
    pub fn read_generation(&mut self, generation: u32) -> Result<Tables, DatapathError> {
        let g = generation as u8;
        let info = self
            .array::<GenInfo>(GENS)?
            .get(&generation, 0)
            .map_err(map_err(GENS))?;
        let (mut hashed4, odd4) = read_hash::<[u8; 4]>(
            self.prefix_map::<tc_common::PrefixKey4>(<[u8; 4]>::HASH)?,
            g,
        )?;
        let (mut hashed6, odd6) = read_hash::<[u8; 16]>(
            self.prefix_map::<tc_common::PrefixKey6>(<[u8; 16]>::HASH)?,
            g,
        )?;
        let mut misplaced = odd4 + odd6;
        // IPv6 tables in the IPv4 map and the other way round: a table
        // byte no agent writes there.
        for t in [TABLE_SRC_V6, TABLE_DST_V6] {
            misplaced += hashed4[t as usize].len();
        }
        for t in [TABLE_SRC_V4, TABLE_DST_V4, TABLE_L4] {
            misplaced += hashed6[t as usize].len();
        }
        let probes = info.probes;
        let mut t = Tables {
            src_v4: self
                .read_table(TABLE_SRC_V4, g, &probes, &mut hashed4, &mut misplaced)?
                .into(),
            dst_v4: self
                .read_table(TABLE_DST_V4, g, &probes, &mut hashed4, &mut misplaced)?
                .into(),
            src_v6: self
                .read_table(TABLE_SRC_V6, g, &probes, &mut hashed6, &mut misplaced)?
                .into(),
            dst_v6: self
                .read_table(TABLE_DST_V6, g, &probes, &mut hashed6, &mut misplaced)?
                .into(),
            l4: self.read_table(TABLE_L4, g, &probes, &mut hashed4, &mut misplaced)?,
            policies: Vec::new(),
            probes,
            reach: info.reach,
            misplaced,
        };
        let policies = self.array::<ChannelPolicy>(POLICIES)?;
        let base = generation * MAX_CHANNELS;
        for i in base..base + MAX_CHANNELS {
            let p = policies.get(&i, 0).map_err(map_err(POLICIES))?;
            if p.active == 0 {
                break;
            }
            t.policies.push(p);
        }
        Ok(t)
    }

    /// Table `t` of generation `g` from where `probes` places it: its
    /// trie's entries, or its share of `hashed`. The other place's entries
    /// of it are added to `misplaced`.
    fn read_table<W: Width>(
        &mut self,
        t: u8,
        g: u8,
        probes: &[Probes; TABLES],
        hashed: &mut Hashed<W>,
        misplaced: &mut usize,
    ) -> Result<Held<(u8, W)>, DatapathError> {
        let from_hash = std::mem::take(&mut hashed[t as usize]);
        let from_trie = self.read_trie::<W>(t, g)?;
        let (mine, other) = if in_trie(&probes[t as usize]) {
            (from_trie, from_hash)
        } else {
            (from_hash, from_trie)
        };
        *misplaced += other.len();
        Ok(held::sorted(mine.into_iter()))
    }

    /// The entries of generation `g` in table `t`'s trie, with their
    /// fingerprints.
    fn read_trie<W: Width>(&mut self, t: u8, g: u8) -> Result<Held<(u8, W)>, DatapathError> {
        let name = TRIES[t as usize];
        let trie = self.trie::<W::Trie>(name)?;
        let keys: Vec<_> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| W::from_trie(&k.data()).0 == g)
            .collect();
        keys.into_iter()
            .map(|k| {
                let set = trie.get(&k, 0).map_err(map_err(name))?;
                let len = (k.prefix_len() - tc_common::GEN_BITS) as u8;
                let data = W::from_trie(&k.data()).1;
                Ok((
                    (len, data),
                    held::entry(t as u64, len as u32, data.as_ref(), &set),
                ))
            })
            .collect()
    }
}

/// The entries of generation `g` in the prefix hash map `map` of width
/// `W`, per table, with their fingerprints, and how many have a table byte
/// no agent writes (the caller counts the tables of the other width as
/// misplaced).
fn read_hash<W: Width>(map: &MapData, g: u8) -> Result<(Hashed<W>, usize), DatapathError> {
    let mut out: Hashed<W> = Default::default();
    let mut odd = 0;
    batch::for_each::<W::Hash, ChannelSet>(map, |k, set| {
        let (generation, t, len, data) = W::from_hash(k);
        if generation == g {
            if let Some(table) = out.get_mut(t as usize) {
                table.push((
                    (len, data),
                    held::entry(t as u64, len as u32, data.as_ref(), set),
                ));
            } else {
                odd += 1;
            }
        }
    })
    .map_err(batch_err(W::HASH))?;
    Ok((out, odd))
}
