//! A digest of what one generation's tables hold, computed the same way
//! from a compiled policy (when it is written) and from the kernel's maps
//! (when an agent starts), so the saved state can be checked against what
//! the kernel really enforces. It is the sum of the entries' fingerprints
//! (see `datapath::held`), so the record the agent keeps of a generation
//! and its digest come from one pass.

use aya::maps::{lpm_trie::Key, MapData};
use tc_common::{
    ChannelPolicy, ChannelSet, DST_V4, DST_V6, GEN_BITS, L4, MAX_CHANNELS, POLICIES, SRC_V4, SRC_V6,
};

use super::{
    held::{self, Held, Tables},
    map_err, Datapath, DatapathError,
};
use crate::policy::compile::Compiled;

/// The digest of `compiled` as [`Datapath::apply`] writes it.
pub fn of_compiled(c: &Compiled) -> u64 {
    Tables::of(c).digest()
}

impl Datapath {
    /// The digest of what generation `generation` holds in the kernel.
    pub fn digest_of_generation(&mut self, generation: u32) -> Result<u64, DatapathError> {
        Ok(self.read_generation(generation)?.digest())
    }

    /// Reads back what generation `generation` holds in the kernel, as the
    /// record [`Datapath::apply`] keeps of what it wrote.
    pub fn read_generation(&mut self, generation: u32) -> Result<Tables, DatapathError> {
        let g = generation as u8;
        let mut t = Tables {
            src_v4: read_trie(&mut self.trie::<[u8; 5]>(SRC_V4)?, SRC_V4, g, 0)?,
            dst_v4: read_trie(&mut self.trie::<[u8; 5]>(DST_V4)?, DST_V4, g, 1)?,
            src_v6: read_trie(&mut self.trie::<[u8; 17]>(SRC_V6)?, SRC_V6, g, 2)?,
            dst_v6: read_trie(&mut self.trie::<[u8; 17]>(DST_V6)?, DST_V6, g, 3)?,
            l4: read_trie(&mut self.trie::<[u8; 5]>(L4)?, L4, g, 4)?,
            policies: Vec::new(),
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
}

/// The entries of generation `g` in one trie, sorted, with their
/// fingerprints as table `id`.
fn read_trie<const K: usize, const A: usize>(
    trie: &mut aya::maps::LpmTrie<&mut MapData, [u8; K], ChannelSet>,
    name: &'static str,
    g: u8,
    id: u64,
) -> Result<Held<(u8, [u8; A])>, DatapathError>
where
    [u8; K]: aya::Pod,
{
    const { assert!(K == A + 1) };
    let keys: Vec<Key<[u8; K]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data()[0] == g)
        .collect();
    let mut out = keys
        .into_iter()
        .map(|k| {
            let set = trie.get(&k, 0).map_err(map_err(name))?;
            let bits = k.prefix_len() - GEN_BITS;
            let mut a = [0u8; A];
            a.copy_from_slice(&k.data()[1..]);
            Ok(((bits as u8, a), held::entry(id, bits, &a, &set)))
        })
        .collect::<Result<Held<(u8, [u8; A])>, DatapathError>>()?;
    out.sort_unstable_by_key(|a| a.0);
    Ok(out)
}
