//! For every distinct prefix that channels name on one side in one family,
//! the set of channels with a prefix containing it: what a longest-prefix
//! match on that prefix must answer. Both the compiler (the tables) and the
//! shadow check (which channels cover which) need it.
//!
//! Sorted vectors and binary search instead of a hash map of prefixes: the
//! prefixes are sorted once, each looks up only the prefix lengths some
//! prefix has, and no 128-byte set is allocated per lookup (a 1,024-channel
//! policy with 65,536 prefixes per family takes milliseconds, not hundreds).
//! Each prefix names its set by index in an [`Interner`]: a set per prefix
//! (65,536 prefixes of 136-152 bytes with their set: 8.5-9.5 MiB per side
//! and family) was most of a compile's time, in page faults and hashing.

use ipnet::IpNet;
use tc_common::ChannelSet;

use super::interner::Interner;

/// One family: `(address, prefix length)` of a prefix, or `None`, and the
/// family's address bits.
pub(crate) struct Family {
    /// Address bits: 32 or 128.
    pub bits: u8,
    /// The prefix as `(network address, length)` if it is of this family.
    pub of: fn(&IpNet) -> Option<(u128, u8)>,
}

/// IPv4.
pub(crate) const V4: Family = Family {
    bits: 32,
    of: |n| match n {
        IpNet::V4(n) => Some((u32::from(n.network()).into(), n.prefix_len())),
        IpNet::V6(_) => None,
    },
};

/// IPv6.
pub(crate) const V6: Family = Family {
    bits: 128,
    of: |n| match n {
        IpNet::V6(n) => Some((u128::from(n.network()), n.prefix_len())),
        IpNet::V4(_) => None,
    },
};

/// The distinct prefixes of one side and family, sorted by `(length,
/// address)`, each with the channels that contain it.
pub(crate) struct Cover {
    /// `(length, network address)`, sorted, distinct.
    pub prefixes: Vec<(u8, u128)>,
    /// `items[i]` names (in the [`Interner`] the cover was built with)
    /// every channel naming `prefixes[i]` or a prefix containing it.
    pub items: Vec<u32>,
}

impl Cover {
    /// Builds the cover of `sides` (each channel's prefixes, in channel
    /// order) in `family`, its sets interned in `sets`.
    pub fn build<'a, I>(sides: I, family: &Family, sets: &mut Interner) -> Self
    where
        I: IntoIterator<Item = &'a [IpNet]>,
    {
        let mut named: Vec<(u8, u128, u16)> = Vec::new();
        for (i, side) in sides.into_iter().enumerate() {
            named.extend(
                side.iter()
                    .filter_map(family.of)
                    .map(|(addr, len)| (len, addr, i as u16)),
            );
        }
        named.sort_unstable();
        named.dedup();
        let same = |a: &(u8, u128, u16), b: &(u8, u128, u16)| (a.0, a.1) == (b.0, b.1);
        // Sized exactly: 65,536 prefixes take 2 MiB.
        let distinct = named.chunk_by(same).count();
        let mut prefixes: Vec<(u8, u128)> = Vec::with_capacity(distinct);
        let mut items: Vec<u32> = Vec::with_capacity(distinct);
        // Each prefix's own set: the channels naming it, one channel's
        // found without building a set.
        for group in named.chunk_by(same) {
            let (len, addr, first) = group[0];
            let own = match group {
                [_] => sets.single(usize::from(first)),
                _ => {
                    let mut s = ChannelSet::EMPTY;
                    for (_, _, ch) in group {
                        s.insert(usize::from(*ch));
                    }
                    sets.id(s)
                }
            };
            prefixes.push((len, addr));
            items.push(own);
        }
        drop(named);
        let mut lengths: Vec<u8> = prefixes.iter().map(|p| p.0).collect();
        lengths.dedup();
        // Shortest first, each joining the set of its longest containing
        // prefix: that one's set is whole by then, and holds every shorter
        // prefix containing both (prefixes of one address nest).
        for i in 0..prefixes.len() {
            let (len, addr) = prefixes[i];
            let shorter = lengths.partition_point(|l| *l < len);
            for &l in lengths[..shorter].iter().rev() {
                let key = (l, mask(addr, l, family.bits));
                if let Ok(j) = prefixes[..i].binary_search(&key) {
                    items[i] = sets.union(items[i], items[j]);
                    break;
                }
            }
        }
        Self { prefixes, items }
    }

    /// The channels containing `prefix` (their index in the cover's
    /// interner), if some channel names it.
    pub fn get(&self, prefix: (u8, u128)) -> Option<u32> {
        self.prefixes
            .binary_search(&prefix)
            .ok()
            .map(|i| self.items[i])
    }
}

/// The top `len` of the `bits` address bits of `addr`.
pub(crate) fn mask(addr: u128, len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let drop = u32::from(bits - len);
        (addr >> drop) << drop
    }
}
