//! For every distinct prefix that channels name on one side in one family,
//! the set of channels with a prefix containing it: what a longest-prefix
//! match on that prefix must answer. Both the compiler (the tables) and the
//! shadow check (which channels cover which) need it.
//!
//! Sorted vectors and binary search instead of a hash map of prefixes: the
//! prefixes are sorted once, each looks up only the prefix lengths some
//! prefix has, and no 128-byte set is allocated per lookup (a 1,024-channel
//! policy with 65,536 prefixes per family takes milliseconds, not hundreds).

use ipnet::IpNet;
use tc_common::ChannelSet;

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

/// What a cover keeps per prefix: its channel set, inside whatever the
/// caller builds from it (the compiler keeps its table entries, so the
/// sets are not held twice).
pub(crate) trait Covered {
    /// The prefix's channel set.
    fn set(&self) -> &ChannelSet;
    /// The prefix's channel set, to add channels to.
    fn set_mut(&mut self) -> &mut ChannelSet;
}

impl Covered for ChannelSet {
    fn set(&self) -> &ChannelSet {
        self
    }

    fn set_mut(&mut self) -> &mut ChannelSet {
        self
    }
}

/// The distinct prefixes of one side and family, sorted by `(length,
/// address)`, each with the channels that contain it.
pub(crate) struct Cover<T = ChannelSet> {
    /// `(length, network address)`, sorted, distinct.
    pub prefixes: Vec<(u8, u128)>,
    /// `items[i]` holds every channel naming `prefixes[i]` or a prefix
    /// containing it.
    pub items: Vec<T>,
}

impl Cover {
    /// Builds the cover of `sides` (each channel's prefixes, in channel
    /// order) in `family`.
    pub fn build<'a, I>(sides: I, family: &Family) -> Self
    where
        I: IntoIterator<Item = &'a [IpNet]>,
    {
        Self::build_with(sides, family, |_, _| ChannelSet::EMPTY)
    }

    /// The channels containing `prefix`, if some channel names it.
    pub fn get(&self, prefix: (u8, u128)) -> Option<&ChannelSet> {
        self.prefixes
            .binary_search(&prefix)
            .ok()
            .map(|i| &self.items[i])
    }
}

impl<T: Covered> Cover<T> {
    /// [`Cover::build`] keeping `make(length, address)` per prefix, its set
    /// empty, then filled.
    pub fn build_with<'a, I>(sides: I, family: &Family, make: impl Fn(u8, u128) -> T) -> Self
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
        // Sized exactly: a set is 128 bytes, and a vector grown by doubling
        // would hold up to twice the 8 MiB that 65,536 prefixes need.
        let distinct = match named.len() {
            0 => 0,
            _ => {
                1 + named
                    .windows(2)
                    .filter(|w| (w[0].0, w[0].1) != (w[1].0, w[1].1))
                    .count()
            }
        };
        let mut prefixes: Vec<(u8, u128)> = Vec::with_capacity(distinct);
        let mut items: Vec<T> = Vec::with_capacity(distinct);
        for (len, addr, ch) in named {
            if prefixes.last() != Some(&(len, addr)) {
                prefixes.push((len, addr));
                items.push(make(len, addr));
            }
            if let Some(s) = items.last_mut() {
                s.set_mut().insert(ch as usize);
            }
        }
        let mut lengths: Vec<u8> = prefixes.iter().map(|p| p.0).collect();
        lengths.dedup();
        // Longest first: the prefixes containing one are shorter, so they
        // sort before it and still hold only their own channels when read.
        for i in (0..prefixes.len()).rev() {
            let (len, addr) = prefixes[i];
            for &l in lengths.iter().take_while(|l| **l < len) {
                let key = (l, mask(addr, l, family.bits));
                if let Ok(j) = prefixes[..i].binary_search(&key) {
                    let (head, tail) = items.split_at_mut(i);
                    let from = *head[j].set();
                    for (w, x) in tail[0].set_mut().words.iter_mut().zip(from.words) {
                        *w |= x;
                    }
                }
            }
        }
        Self { prefixes, items }
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
