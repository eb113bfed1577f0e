//! A digest of what one generation's tables hold, computed the same way
//! from a compiled policy (when it is written) and from the kernel's maps
//! (when an agent starts), so the saved state can be checked against what
//! the kernel really enforces.

use tc_common::{ChannelPolicy, Probes, MAX_CHANNELS, POLICIES, TABLES};

use super::{
    map_err,
    prefixes::{self, Tables},
    Datapath, DatapathError,
};
use crate::policy::compile::Compiled;

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

    /// Every table, and where its entries are (its `Probes`: the hash
    /// maps' lengths or the trie), so that entries in the wrong place or a
    /// `GenInfo` that does not match them show.
    fn tables(&mut self, tables: Tables, probes: &[Probes; TABLES]) {
        for (id, (mut entries, p)) in tables.into_iter().zip(probes).enumerate() {
            entries.sort_by(|a, b| (a.len, &a.data).cmp(&(b.len, &b.data)));
            self.bytes(&[id as u8, p.count]);
            self.bytes(&p.lens);
            self.bytes(&(entries.len() as u64).to_le_bytes());
            for e in entries {
                self.bytes(&(e.len as u32).to_le_bytes());
                self.bytes(&e.data);
                for w in e.set.words {
                    self.bytes(&w.to_le_bytes());
                }
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
    h.tables(prefixes::tables_of(c), &prefixes::plan(c));
    h.policies(&c.policies);
    h.0
}

impl Datapath {
    /// The digest of what generation `generation` holds in the kernel.
    pub fn digest_of_generation(&mut self, generation: u32) -> Result<u64, DatapathError> {
        let mut h = Fnv::new();
        let (tables, probes) = self.read_tables(generation)?;
        h.tables(tables, &probes);
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
