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

use ipnet::IpNet;
use tc_common::ChannelSet;

use super::{
    cover::{Cover, Family, V4, V6},
    interner::Interner,
    model::{Channel, Protocol},
};

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
    shadowed_among(channels, &candidates(channels))
}

/// For each channel, the earlier channels whose sources and destinations
/// contain all of its own: what the channels' addresses alone decide of
/// [`shadowed`]. Channels that name the same addresses in the same places
/// have the same candidates, whatever their ports, protocol or limits.
pub fn candidates(channels: &[Channel]) -> Vec<ChannelSet> {
    // Validation refuses more channels than a channel set holds.
    if channels.len() > tc_common::MAX_CHANNELS as usize {
        return vec![ChannelSet::EMPTY; channels.len()];
    }
    // Candidates start as every earlier channel.
    let mut candidates: Vec<ChannelSet> = (0..channels.len()).map(below).collect();
    for side in [side_from, side_to] {
        for family in [&V4, &V6] {
            // Once no channel has a candidate left, the remaining covers
            // need not be built (a side's IPv6 cover of 65,536 prefixes
            // sorts 2 MiB of them and keeps 2.25): in a policy of distinct
            // sources, the first settles it.
            if candidates.iter().all(ChannelSet::is_empty) {
                return candidates;
            }
            narrow(channels, side, family, &mut candidates);
        }
    }
    candidates
}

/// The shadowed channels, given each one's [`candidates`].
pub fn shadowed_among(channels: &[Channel], candidates: &[ChannelSet]) -> Vec<Shadowed> {
    let mut out = Vec::new();
    let mut ports: Vec<Option<Vec<(u16, u16)>>> = vec![None; channels.len()];
    for (j, (later, cand)) in channels.iter().zip(candidates).enumerate() {
        if cand.is_empty() {
            continue;
        }
        let later_ports = merged(&later.ports);
        let by = members(cand).find(|&i| {
            let earlier = &channels[i];
            earlier.direction == later.direction
                && protocol_covers(earlier.protocol, later.protocol)
                && ports_cover(
                    ports[i].get_or_insert_with(|| merged(&earlier.ports)),
                    &later_ports,
                )
        });
        if let Some(by) = by {
            out.push(Shadowed { channel: j, by });
        }
    }
    out
}

/// One side of a channel.
type Side = fn(&Channel) -> &[IpNet];

fn side_from(c: &Channel) -> &[IpNet] {
    &c.from
}

fn side_to(c: &Channel) -> &[IpNet] {
    &c.to
}

/// Removes from each channel's candidates every channel whose `side`
/// prefixes of `family` do not contain all of the channel's own.
fn narrow(channels: &[Channel], side: Side, family: &Family, candidates: &mut [ChannelSet]) {
    let mut sets = Interner::default();
    let cover = Cover::build(channels.iter().map(side), family, &mut sets);
    if cover.prefixes.is_empty() {
        return;
    }
    for (c, cand) in channels.iter().zip(candidates.iter_mut()) {
        if cand.is_empty() {
            continue;
        }
        for (addr, len) in side(c).iter().filter_map(family.of) {
            // Emptied: no earlier channel contains all of this one's
            // prefixes (in a policy of distinct sources, at the first).
            if cand.is_empty() {
                break;
            }
            if let Some(s) = cover.get((len, addr)) {
                and(cand, sets.get(s));
            }
        }
    }
}

/// The channels before channel `j`, a word at a time.
fn below(j: usize) -> ChannelSet {
    let mut s = ChannelSet::EMPTY;
    for (w, word) in s.words.iter_mut().enumerate() {
        let bits = j.saturating_sub(w * 64).min(64);
        *word = if bits == 64 { !0 } else { (1u64 << bits) - 1 };
    }
    s
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
    fn below_holds_exactly_the_earlier_channels() {
        for j in [0, 1, 63, 64, 65, 127, 128, 700, 1023, 1024] {
            let mut want = ChannelSet::EMPTY;
            for i in 0..j {
                want.insert(i);
            }
            assert_eq!(below(j), want, "channel {j}");
        }
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
