//! A digest of what one generation's tables hold, computed the same way
//! from a compiled policy (when it is written) and from the kernel's maps
//! (when an agent starts), so the saved state can be checked against what
//! the kernel really enforces.

use aya::maps::{lpm_trie::Key, MapData};
use tc_common::{
    ChannelPolicy, ChannelSet, DST_V4, DST_V6, GEN_BITS, L4, MAX_CHANNELS, POLICIES, SRC_V4, SRC_V6,
};

use super::{map_err, Datapath, DatapathError};
use crate::policy::compile::Compiled;

/// One trie entry in canonical form: prefix bits after the generation
/// byte, key bytes after it, channel set.
type Entry = (u32, Vec<u8>, ChannelSet);

/// FNV-1a, 64 bits: stable across builds and platforms (unlike std's
/// hasher), and collisions only matter by accident here, not by attack.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= *x as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn table(&mut self, id: u8, mut entries: Vec<Entry>) {
        entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        self.bytes(&[id]);
        self.bytes(&(entries.len() as u64).to_le_bytes());
        for (bits, data, set) in entries {
            self.bytes(&bits.to_le_bytes());
            self.bytes(&data);
            for w in set.words {
                self.bytes(&w.to_le_bytes());
            }
        }
    }

    fn policies(&mut self, policies: &[ChannelPolicy]) {
        self.bytes(&(policies.len() as u64).to_le_bytes());
        for p in policies {
            for w in [
                p.byte_cost_q16,
                p.byte_tau_ns,
                p.pkt_cost_q16,
                p.pkt_tau_ns,
                p.horizon_ns,
                p.conn_cost_ns,
                p.conn_tau_ns,
            ] {
                self.bytes(&w.to_le_bytes());
            }
            self.bytes(&p.conn_limit.to_le_bytes());
            self.bytes(&p.conn_pool.to_le_bytes());
            self.bytes(&[p.action, p.mode, p.active, p.conn_action]);
        }
    }
}

/// The digest of `compiled` as [`Datapath::apply`] writes it.
pub fn of_compiled(c: &Compiled) -> u64 {
    let mut h = Fnv::new();
    let addr = |e: Vec<(u8, Vec<u8>, ChannelSet)>| -> Vec<Entry> {
        e.into_iter().map(|(l, a, s)| (l as u32, a, s)).collect()
    };
    h.table(
        0,
        addr(
            c.src_v4
                .iter()
                .map(|e| (e.len, e.addr.to_vec(), e.set))
                .collect(),
        ),
    );
    h.table(
        1,
        addr(
            c.dst_v4
                .iter()
                .map(|e| (e.len, e.addr.to_vec(), e.set))
                .collect(),
        ),
    );
    h.table(
        2,
        addr(
            c.src_v6
                .iter()
                .map(|e| (e.len, e.addr.to_vec(), e.set))
                .collect(),
        ),
    );
    h.table(
        3,
        addr(
            c.dst_v6
                .iter()
                .map(|e| (e.len, e.addr.to_vec(), e.set))
                .collect(),
        ),
    );
    h.table(
        4,
        c.l4.iter()
            .map(|e| (e.bits, e.data.to_vec(), e.set))
            .collect(),
    );
    h.policies(&c.policies);
    h.0
}

impl Datapath {
    /// The digest of what generation `generation` holds in the kernel.
    pub fn digest_of_generation(&mut self, generation: u32) -> Result<u64, DatapathError> {
        let g = generation as u8;
        let mut h = Fnv::new();
        h.table(0, read_trie(&mut self.trie::<[u8; 5]>(SRC_V4)?, SRC_V4, g)?);
        h.table(1, read_trie(&mut self.trie::<[u8; 5]>(DST_V4)?, DST_V4, g)?);
        h.table(
            2,
            read_trie(&mut self.trie::<[u8; 17]>(SRC_V6)?, SRC_V6, g)?,
        );
        h.table(
            3,
            read_trie(&mut self.trie::<[u8; 17]>(DST_V6)?, DST_V6, g)?,
        );
        h.table(4, read_trie(&mut self.trie::<[u8; 5]>(L4)?, L4, g)?);
        let policies = self.array::<ChannelPolicy>(POLICIES)?;
        let base = generation * MAX_CHANNELS;
        let mut live = Vec::new();
        for i in base..base + MAX_CHANNELS {
            let p = policies.get(&i, 0).map_err(map_err(POLICIES))?;
            if p.active == 0 {
                break;
            }
            live.push(p);
        }
        h.policies(&live);
        Ok(h.0)
    }
}

fn read_trie<const N: usize>(
    trie: &mut aya::maps::LpmTrie<&mut MapData, [u8; N], ChannelSet>,
    name: &'static str,
    g: u8,
) -> Result<Vec<Entry>, DatapathError>
where
    [u8; N]: aya::Pod,
{
    let keys: Vec<Key<[u8; N]>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data()[0] == g)
        .collect();
    keys.into_iter()
        .map(|k| {
            let set = trie.get(&k, 0).map_err(map_err(name))?;
            Ok((k.prefix_len() - GEN_BITS, k.data()[1..].to_vec(), set))
        })
        .collect()
}
