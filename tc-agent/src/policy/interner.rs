//! Each distinct channel set once, named by a small index.
//!
//! A policy's prefixes share few sets: where channels name disjoint
//! prefixes, each prefix's set is its one channel's. So the covers
//! ([`Cover`](super::cover::Cover)) and the compiled tables name sets by
//! index, and a 128-byte set exists once per distinct set rather than once
//! per prefix (131,072 prefixes would hold 16 MiB of them). The common
//! sets are found without hashing one: a channel's own set by its index,
//! a union by the pair of sets it joins.

use std::collections::HashMap;

use tc_common::ChannelSet;

/// Marks a channel whose own set is not interned yet.
const UNSET: u32 = u32::MAX;

/// The distinct channel sets seen so far, each with its index.
#[derive(Default)]
pub(crate) struct Interner {
    /// The index of each set in `sets`.
    ids: HashMap<ChannelSet, u32>,
    /// The sets, in the order first seen.
    sets: Vec<ChannelSet>,
    /// Per channel, the index of the set of it alone ([`UNSET`] until
    /// asked): most prefixes are one channel's.
    singles: Vec<u32>,
    /// The union of two indexed sets, by the pair: a prefix inside
    /// another joins its own set to the containing one's, and many
    /// prefixes inside one network join the same two.
    unions: HashMap<(u32, u32), u32>,
}

impl Interner {
    /// An interner holding `sets`, each at its place (distinct, as an
    /// interner left them).
    pub fn from_sets(sets: Vec<ChannelSet>) -> Self {
        let ids = sets
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u32))
            .collect();
        Self {
            ids,
            sets,
            ..Self::default()
        }
    }

    /// The index of `set`, added if new.
    pub fn id(&mut self, set: ChannelSet) -> u32 {
        *self.ids.entry(set).or_insert_with(|| {
            self.sets.push(set);
            (self.sets.len() - 1) as u32
        })
    }

    /// The index of the set of channel `channel` alone.
    pub fn single(&mut self, channel: usize) -> u32 {
        if self.singles.len() <= channel {
            self.singles.resize(channel + 1, UNSET);
        }
        if self.singles[channel] == UNSET {
            let mut s = ChannelSet::EMPTY;
            s.insert(channel);
            self.singles[channel] = self.id(s);
        }
        self.singles[channel]
    }

    /// The index of the union of the sets at `a` and `b`.
    pub fn union(&mut self, a: u32, b: u32) -> u32 {
        if a == b {
            return a;
        }
        if let Some(&u) = self.unions.get(&(a, b)) {
            return u;
        }
        let mut s = self.sets[a as usize];
        for (w, x) in s.words.iter_mut().zip(self.sets[b as usize].words) {
            *w |= x;
        }
        let u = self.id(s);
        self.unions.insert((a, b), u);
        u
    }

    /// Only the sets that `named` (indices into this interner) name,
    /// numbered in the order first named, and `named` renumbered: a cover
    /// interns each channel's own set, and one that only joined a
    /// containing prefix's set names no entry.
    pub fn keep_named<'a>(self, named: impl IntoIterator<Item = &'a mut u32>) -> Self {
        let mut new = vec![UNSET; self.sets.len()];
        let mut kept = Vec::new();
        for id in named {
            let n = &mut new[*id as usize];
            if *n == UNSET {
                *n = kept.len() as u32;
                kept.push(self.sets[*id as usize]);
            }
            *id = *n;
        }
        Self::from_sets(kept)
    }

    /// The set at index `id`.
    pub fn get(&self, id: u32) -> &ChannelSet {
        &self.sets[id as usize]
    }

    /// The sets, by index.
    pub fn into_sets(self) -> Vec<ChannelSet> {
        self.sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(channels: &[usize]) -> ChannelSet {
        let mut s = ChannelSet::EMPTY;
        for c in channels {
            s.insert(*c);
        }
        s
    }

    #[test]
    fn a_set_has_one_index_however_it_is_reached() {
        let mut sets = Interner::default();
        let a = sets.single(3);
        let b = sets.single(700);
        assert_eq!(sets.id(set(&[3])), a);
        let ab = sets.union(a, b);
        assert_eq!(sets.get(ab), &set(&[3, 700]));
        assert_eq!(sets.id(set(&[3, 700])), ab);
        assert_eq!(sets.union(b, a), ab, "the other order finds it by content");
        assert_eq!(sets.union(ab, a), ab, "a union that adds nothing");
        assert_eq!(sets.union(a, a), a);
        let mut again = Interner::from_sets(sets.into_sets());
        assert_eq!(again.id(set(&[3, 700])), ab);
        assert_eq!(again.single(3), a, "a channel's own set found by content");
    }

    #[test]
    fn keeping_the_named_sets_renumbers_them_in_order() {
        let mut sets = Interner::default();
        let a = sets.single(1);
        let b = sets.single(2);
        let ab = sets.union(a, b);
        let mut named = [ab, b, ab];
        let kept = sets.keep_named(&mut named);
        assert_eq!(named, [0, 1, 0]);
        assert_eq!(kept.into_sets(), vec![set(&[1, 2]), set(&[2])]);
    }
}
