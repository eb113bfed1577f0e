//! Writing one classification table of a generation: from what the
//! generation holds of it (its record in `datapath::held`, and where it
//! is) to what a compiled policy wants, wherever `datapath::prefixes`
//! places it.
//!
//! When the table stays where it is (trie to trie, or hash maps to hash
//! maps, whatever lengths are probed), only the difference is written:
//! stale keys removed, new and changed entries written. When it moves,
//! its entries are removed from the old place by their recorded keys and
//! the table is written whole in the new one. Hash map entries are
//! removed and written in batches (`datapath::batch`); the tries take
//! one call per entry (`datapath::elem`).
//!
//! A table's write needs only its trie and its width's prefix hash map,
//! shared ([`TableMaps`]): the apply writes the IPv4 and the IPv6 tables,
//! which share no map, from two threads at once.

use std::marker::PhantomData;

use aya::maps::MapData;
use tc_common::{ChannelSet, Probes};

use super::{
    batch,
    batch::batch_err,
    elem,
    held::Held,
    prefixes::{entries_of, in_trie, masked, trie_key, Width, TRIES},
    Datapath, DatapathError,
};
use crate::policy::compile::Compiled;

/// The maps one table of width `W` may be in, their key and value sizes
/// checked for `W`: the writes below go by descriptor, and the kernel reads
/// as many bytes as the map's sizes say.
pub struct TableMaps<'a, W> {
    /// The table's trie.
    trie: &'a MapData,
    /// The prefix hash map of the table's width.
    hash: &'a MapData,
    /// The width the sizes were checked for.
    width: PhantomData<W>,
}

impl<W> Clone for TableMaps<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<W> Copy for TableMaps<'_, W> {}

impl Datapath {
    /// The maps table `t` of width `W` may be in, their types checked.
    pub(super) fn table_maps<W: Width>(&self, t: u8) -> Result<TableMaps<'_, W>, DatapathError> {
        Ok(TableMaps {
            trie: self.trie_map::<W::Trie>(TRIES[t as usize])?,
            hash: self.prefix_map::<W::Hash>(W::HASH)?,
            width: PhantomData,
        })
    }
}

/// What a generation holds of one table: its record, and where it is.
pub struct Holds<'a, W> {
    /// The table's keys and fingerprints, sorted.
    pub entries: &'a Held<(u8, W)>,
    /// Where the entries are.
    pub at: Probes,
}

impl<'a, W> Holds<'a, W> {
    /// What a generation holds of a table, if its content is `known`.
    pub fn known(known: bool, entries: &'a Held<(u8, W)>, at: Probes) -> Option<Self> {
        known.then_some(Self { entries, at })
    }
}

impl<W: Width> TableMaps<'_, W> {
    /// Turns table `t` of generation `g` from `held` (`None`: the
    /// generation holds nothing of it, anywhere) into `want` (sorted by
    /// key, made from `compiled`), placed as `to` says.
    pub(super) fn sync_table(
        self,
        t: u8,
        g: u8,
        held: Option<Holds<'_, W>>,
        want: &Held<(u8, W)>,
        to: Probes,
        compiled: &Compiled,
    ) -> Result<(), DatapathError> {
        let none = Held::new();
        let base = match held {
            Some(h) if in_trie(&h.at) == in_trie(&to) => h.entries,
            Some(h) => {
                // Moved: the old place's entries go, by their keys.
                self.remove(t, g, &h.at, h.entries.iter().map(|e| e.0))?;
                &none
            }
            None => &none,
        };
        let (stale, write) = super::held::diff(base, want);
        self.remove(t, g, &to, stale.into_iter())?;
        if write.is_empty() {
            return Ok(());
        }
        // The compiled entries to write, streamed: all of them, or those
        // whose (masked) key the diff names.
        let all = write.len() == want.len();
        let need: Vec<(u8, W)> = if all {
            Vec::new()
        } else {
            write.iter().map(|&j| want[j].0).collect()
        };
        let mut found = 0usize;
        let entries = entries_of(compiled, t).filter_map(|(len, raw, set)| {
            let key = (len, masked(&W::from_slice(raw), len));
            let take = all || need.binary_search(&key).is_ok();
            found += usize::from(take);
            take.then_some((key, set))
        });
        if in_trie(&to) {
            let name = TRIES[t as usize];
            for ((len, data), set) in entries {
                elem::update(self.trie, &trie_key(g, len, &data), set)
                    .map_err(elem_err(name, "write"))?;
            }
        } else {
            let map = self.hash;
            let mut keys = Vec::with_capacity(write.len().min(batch::CHUNK));
            let mut sets: Vec<ChannelSet> = Vec::with_capacity(keys.capacity());
            for ((len, data), set) in entries {
                keys.push(W::hash_key(g, t, len, &data));
                sets.push(*set);
                if keys.len() == batch::CHUNK {
                    batch::update(map, &keys, &sets).map_err(batch_err(W::HASH))?;
                    keys.clear();
                    sets.clear();
                }
            }
            batch::update(map, &keys, &sets).map_err(batch_err(W::HASH))?;
        }
        // Every entry the diff names must have been in the compiled
        // policy: one that was not would be missing from the kernel, and
        // its traffic would pass unclassified. The generation is then
        // unknown and rewritten whole next time.
        if found != write.len() {
            return Err(DatapathError::Setup(format!(
                "internal error: table {t} wrote {found} of {} entries its record names",
                write.len()
            )));
        }
        Ok(())
    }

    /// Removes `keys` of table `t` of generation `g` from where `at` says
    /// they are. Every key must be there: a record that names one the
    /// kernel does not hold fails the write, and the generation becomes
    /// unknown (rewritten whole next time).
    pub(super) fn remove(
        self,
        t: u8,
        g: u8,
        at: &Probes,
        keys: impl Iterator<Item = (u8, W)>,
    ) -> Result<(), DatapathError> {
        if in_trie(at) {
            let name = TRIES[t as usize];
            for (len, data) in keys {
                elem::delete(self.trie, &trie_key(g, len, &data))
                    .map_err(elem_err(name, "remove"))?;
            }
        } else {
            let keys: Vec<W::Hash> = keys
                .map(|(len, data)| W::hash_key(g, t, len, &data))
                .collect();
            if !keys.is_empty() {
                batch::delete(self.hash, &keys).map_err(batch_err(W::HASH))?;
            }
        }
        Ok(())
    }
}

/// A trie write's error, naming the trie and the operation.
fn elem_err(name: &'static str, op: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |e| DatapathError::Setup(format!("eBPF map `{name}`: {op} an entry: {e}"))
}
