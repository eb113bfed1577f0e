//! Shadowed channels: with first match wins, a channel that an earlier
//! channel matches entirely can never see a packet.
//!
//! Comparing every pair of channels prefix by prefix costs channels² x
//! prefixes²; instead each address table is built once, as the compiler
//! does: for every distinct prefix, the set of channels with a prefix that
//! contains it. A channel's `from` is covered by exactly the channels in the
//! intersection of those sets over its prefixes, so one bit-vector AND per
//! prefix finds every candidate for both sides. Only candidates are then
//! compared on direction, protocol and ports, with merged, sorted port
//! ranges in one linear pass per pair.

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;
use tc_common::ChannelSet;

use super::model::{Channel, Protocol};

/// `channel` can never match because of `by`, an earlier channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shadowed {
    /// Index of the shadowed channel.
    pub channel: usize,
    /// Index of the first earlier channel that matches all of its traffic.
    pub by: usize,
}

/// Every shadowed channel, in channel order.
pub fn shadowed(channels: &[Channel]) -> Vec<Shadowed> {
    // Validation refuses more channels than a channel set holds.
    if channels.len() > tc_common::MAX_CHANNELS as usize {
        return Vec::new();
    }
    // Candidates start as every earlier channel.
    let mut candidates: Vec<ChannelSet> = (0..channels.len())
        .map(|j| {
            let mut s = ChannelSet::EMPTY;
            for i in 0..j {
                s.insert(i);
            }
            s
        })
        .collect();
    for side in [side_from, side_to] {
        for family in [v4 as Family, v6] {
            narrow(channels, side, family, &mut candidates);
        }
    }
    let ports: Vec<Vec<(u16, u16)>> = channels.iter().map(|c| merged(&c.ports)).collect();
    let mut out = Vec::new();
    for (j, later) in channels.iter().enumerate() {
        let by = members(&candidates[j]).find(|&i| {
            let earlier = &channels[i];
            earlier.direction == later.direction
                && protocol_covers(earlier.protocol, later.protocol)
                && ports_cover(&ports[i], &ports[j])
        });
        if let Some(by) = by {
            out.push(Shadowed { channel: j, by });
        }
    }
    out
}

/// One side of a channel.
type Side = fn(&Channel) -> &[IpNet];
/// One family: `(address, prefix length, address bits)` of a prefix, or `None`.
type Family = fn(&IpNet) -> Option<(u128, u8, u8)>;

fn side_from(c: &Channel) -> &[IpNet] {
    &c.from
}

fn side_to(c: &Channel) -> &[IpNet] {
    &c.to
}

fn v4(n: &IpNet) -> Option<(u128, u8, u8)> {
    match n {
        IpNet::V4(n) => Some((u32::from(n.network()).into(), n.prefix_len(), 32)),
        IpNet::V6(_) => None,
    }
}

fn v6(n: &IpNet) -> Option<(u128, u8, u8)> {
    match n {
        IpNet::V6(n) => Some((u128::from(n.network()), n.prefix_len(), 128)),
        IpNet::V4(_) => None,
    }
}

/// The top `len` of the `bits` address bits of `addr`.
fn mask(addr: u128, len: u8, bits: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let drop = u32::from(bits - len);
        (addr >> drop) << drop
    }
}

/// Removes from each channel's candidates every channel whose `side`
/// prefixes of `family` do not contain all of the channel's own.
fn narrow(channels: &[Channel], side: Side, family: Family, candidates: &mut [ChannelSet]) {
    // Which channels name each prefix exactly.
    let mut direct: HashMap<(u128, u8), ChannelSet> = HashMap::new();
    let mut lengths = BTreeSet::new();
    let mut bits = 0;
    for (i, c) in channels.iter().enumerate() {
        for (addr, len, b) in side(c).iter().filter_map(family) {
            direct
                .entry((addr, len))
                .or_insert(ChannelSet::EMPTY)
                .insert(i);
            lengths.insert(len);
            bits = b;
        }
    }
    if direct.is_empty() {
        return;
    }
    // Which channels contain each prefix: those naming it or an ancestor.
    // Only lengths some prefix has are looked up.
    let lengths: Vec<u8> = lengths.into_iter().collect();
    let covering: HashMap<(u128, u8), ChannelSet> = direct
        .keys()
        .map(|&(addr, len)| {
            let mut set = ChannelSet::EMPTY;
            for &l in lengths.iter().take_while(|l| **l <= len) {
                if let Some(s) = direct.get(&(mask(addr, l, bits), l)) {
                    or(&mut set, s);
                }
            }
            ((addr, len), set)
        })
        .collect();
    for (c, cand) in channels.iter().zip(candidates.iter_mut()) {
        for key in side(c).iter().filter_map(family) {
            if let Some(s) = covering.get(&(key.0, key.1)) {
                and(cand, s);
            }
        }
    }
}

fn or(a: &mut ChannelSet, b: &ChannelSet) {
    for (x, y) in a.words.iter_mut().zip(b.words) {
        *x |= y;
    }
}

fn and(a: &mut ChannelSet, b: &ChannelSet) {
    for (x, y) in a.words.iter_mut().zip(b.words) {
        *x &= y;
    }
}

/// The channels in `s`, lowest first.
fn members(s: &ChannelSet) -> impl Iterator<Item = usize> + '_ {
    s.words.iter().enumerate().flat_map(|(w, &word)| {
        let mut word = word;
        std::iter::from_fn(move || {
            if word == 0 {
                return None;
            }
            let bit = word.trailing_zeros() as usize;
            word &= word - 1;
            Some(w * 64 + bit)
        })
    })
}

fn protocol_covers(earlier: Protocol, later: Protocol) -> bool {
    match (earlier.numbers(), later.numbers()) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|p| e.contains(p)),
    }
}

/// Sorted ranges with overlapping and adjacent ones joined.
fn merged(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(sorted.len());
    for (a, b) in sorted {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether every port of `later` is a port of `earlier` (both merged; empty = any port).
fn ports_cover(earlier: &[(u16, u16)], later: &[(u16, u16)]) -> bool {
    if earlier.is_empty() {
        return true;
    }
    if later.is_empty() {
        return false;
    }
    let mut e = earlier.iter().peekable();
    later.iter().all(|&(a, b)| {
        while e.next_if(|r| r.1 < a).is_some() {}
        e.peek().is_some_and(|r| r.0 <= a && b <= r.1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_cover_uses_the_union() {
        let e = merged(&[(80, 90), (91, 100), (200, 300)]);
        assert_eq!(e, vec![(80, 100), (200, 300)]);
        assert!(ports_cover(&e, &[(85, 95), (250, 250)]));
        assert!(!ports_cover(&e, &[(85, 101)]));
        assert!(!ports_cover(&e, &[(150, 150)]));
        assert!(ports_cover(&[], &[(1, 2)]));
        assert!(!ports_cover(&e, &[]));
    }

    #[test]
    fn members_lists_bits_in_order() {
        let mut s = ChannelSet::EMPTY;
        for i in [0, 63, 64, 700, 1023] {
            s.insert(i);
        }
        assert_eq!(members(&s).collect::<Vec<_>>(), vec![0, 63, 64, 700, 1023]);
    }
}
