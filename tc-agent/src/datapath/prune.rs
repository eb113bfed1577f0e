//! Pruning the standby generation: once the grace period after a switch
//! is over, the generation that went out of service keeps only the
//! entries the live one holds alike, and its record says so.
//!
//! An apply writes the difference between what the standby generation
//! holds (the policy before the live one) and the new policy: stale
//! entries removed, new ones written, all before the switch. Removing is
//! about half of that time: in the benchmark's full apply (131,072
//! address entries, every one different), the write took 108-121 ms into
//! a generation that held the policy before, 48-50 ms into empty maps
//! (the agent's first applies; `bench apply`, `RUST_LOG=tc_agent=debug`). Entries the live policy
//! does not hold alike are the likeliest to be stale at the next apply,
//! which is most often an edit of the live policy; removing them after
//! the switch, off the apply's path (the agent prunes after the switch's
//! fold has saved the state, unless an apply comes first, which then
//! removes what it must itself), takes that time off the next apply.
//! Entries the live policy holds alike stay, so an edit of a few channels
//! still writes only their entries. Entries of a table in its trie while
//! the live generation's is in the prefix hash maps, or the reverse, all
//! go: the next apply would remove them from there to place the table
//! as the live one does.
//!
//! The cost: an apply that returns to the policy before the live one
//! writes back the entries in which the two differ, where it wrote
//! nothing before; for the benchmark's policy, when every entry differs,
//! a write of 131,072 entries (53-65 ms into a pruned generation,
//! inserts only) instead of none.

use std::sync::Arc;

use tc_common::{Probes, TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6};

use super::{
    both_families,
    held::{self, Held},
    prefixes::{in_trie, Width},
    sync::TableMaps,
    Datapath, DatapathError,
};

impl Datapath {
    /// Prunes the inactive generation: removes every table entry the live
    /// generation does not hold with the same value, or that is not where
    /// the live generation places its table, and records what is left;
    /// returns how many entries it removed. The IPv6 tables are pruned
    /// from a second thread while this one prunes the others (they share
    /// no map), as an apply writes them: the agent holds its lock
    /// meanwhile. Call it only once every program that may have read the
    /// inactive generation has finished (a grace period after the switch).
    /// Nothing to do unless both generations' contents are known. If a
    /// removal fails, the generation becomes unknown: the next apply
    /// removes all its entries by walking every table and writes it whole.
    pub fn prune_standby(&mut self) -> Result<usize, DatapathError> {
        let standby = self.config()?.generation ^ 1;
        // The maps are found, and their types checked, before the record
        // is taken: a lookup that fails leaves the generation known.
        self.maps()?;
        // From the first removal until the last, the generation holds
        // neither its record nor the pruned one.
        let Some(mut mine) = self.gens[standby as usize].tables.take() else {
            return Ok(0);
        };
        let ((src4, dst4, l4), (src6, dst6)) = self.maps()?;
        let Some(live) = self.gens[(standby ^ 1) as usize].tables.as_ref() else {
            self.gens[standby as usize].tables = Some(mine);
            return Ok(0);
        };
        // Only a generation read back from the kernel may have misplaced
        // entries, and only the live one is read back (`adopt`).
        debug_assert_eq!(
            mine.misplaced, 0,
            "a written generation has no misplaced entries"
        );
        let g = standby as u8;
        let (at, live_at) = (mine.probes, live.probes);
        let places = |t: u8| [at[t as usize], live_at[t as usize]];
        let held = &mine;
        let prune_v4 = || {
            Ok::<_, DatapathError>((
                prune_address(
                    src4,
                    TABLE_SRC_V4,
                    g,
                    places(TABLE_SRC_V4),
                    &held.src_v4,
                    &live.src_v4,
                )?,
                prune_address(
                    dst4,
                    TABLE_DST_V4,
                    g,
                    places(TABLE_DST_V4),
                    &held.dst_v4,
                    &live.dst_v4,
                )?,
                prune_table(l4, TABLE_L4, g, places(TABLE_L4), &held.l4, &live.l4)?,
            ))
        };
        let prune_v6 = || {
            Ok::<_, DatapathError>((
                prune_address(
                    src6,
                    TABLE_SRC_V6,
                    g,
                    places(TABLE_SRC_V6),
                    &held.src_v6,
                    &live.src_v6,
                )?,
                prune_address(
                    dst6,
                    TABLE_DST_V6,
                    g,
                    places(TABLE_DST_V6),
                    &held.dst_v6,
                    &live.dst_v6,
                )?,
            ))
        };
        let (r4, r6) = both_families("prune-ipv6", prune_v4, prune_v6);
        let ((src_v4, dst_v4, l4_kept), (src_v6, dst_v6)) = (r4?, r6?);
        let mut removed = 0;
        for (table, kept) in [(&mut mine.src_v4, src_v4), (&mut mine.dst_v4, dst_v4)] {
            removed += replace(table, kept);
        }
        for (table, kept) in [(&mut mine.src_v6, src_v6), (&mut mine.dst_v6, dst_v6)] {
            removed += replace(table, kept);
        }
        if let Some(kept) = l4_kept {
            removed += mine.l4.len() - kept.len();
            mine.l4 = kept;
        }
        self.gens[standby as usize].tables = Some(mine);
        Ok(removed)
    }
}

/// The maps a prune writes, per family: the IPv4 tables' and the L4
/// table's, then the IPv6 tables'.
type Maps<'a> = (
    (
        TableMaps<'a, [u8; 4]>,
        TableMaps<'a, [u8; 4]>,
        TableMaps<'a, [u8; 4]>,
    ),
    (TableMaps<'a, [u8; 16]>, TableMaps<'a, [u8; 16]>),
);

impl Datapath {
    /// The maps of every table, their types checked.
    fn maps(&self) -> Result<Maps<'_>, DatapathError> {
        Ok((
            (
                self.table_maps(TABLE_SRC_V4)?,
                self.table_maps(TABLE_DST_V4)?,
                self.table_maps(TABLE_L4)?,
            ),
            (
                self.table_maps(TABLE_SRC_V6)?,
                self.table_maps(TABLE_DST_V6)?,
            ),
        ))
    }
}

/// Puts a pruned address table's record in place, if it was pruned;
/// the entries it removed.
fn replace<K>(table: &mut Arc<Held<K>>, kept: Option<Held<K>>) -> usize {
    let Some(kept) = kept else {
        return 0;
    };
    let removed = table.len() - kept.len();
    *table = Arc::new(kept);
    removed
}

/// [`prune_table`] for an address table, whose record the generations
/// may share (`Tables::of_with_addresses`): a shared record placed alike
/// is held alike whole.
fn prune_address<W: Width>(
    maps: TableMaps<'_, W>,
    t: u8,
    g: u8,
    places: [Probes; 2],
    mine: &Arc<Held<(u8, W)>>,
    live: &Arc<Held<(u8, W)>>,
) -> Result<Option<Held<(u8, W)>>, DatapathError> {
    if Arc::ptr_eq(mine, live) && in_trie(&places[0]) == in_trie(&places[1]) {
        return Ok(None);
    }
    prune_table(maps, t, g, places, mine, live)
}

/// Removes the entries of table `t` of generation `g` (placed at `at`)
/// that `live` (placed at `live_at`) does not hold alike: all of them if
/// one is in its trie and the other in the prefix hash maps, since the
/// next apply, placing the table as the live generation does, would
/// remove them from there anyway. (Tables in the hash maps are alike
/// whatever lengths each probes: an entry's key does not depend on
/// them, and the next apply keeps it, as `sync` does.) The record of
/// what is left, `None` if nothing was removed.
fn prune_table<W: Width>(
    maps: TableMaps<'_, W>,
    t: u8,
    g: u8,
    [at, live_at]: [Probes; 2],
    mine: &Held<(u8, W)>,
    live: &Held<(u8, W)>,
) -> Result<Option<Held<(u8, W)>>, DatapathError> {
    let (kept, stale) = if in_trie(&at) == in_trie(&live_at) {
        held::common(mine, live)
    } else {
        (Vec::new(), mine.iter().map(|e| e.0).collect())
    };
    if stale.is_empty() {
        return Ok(None);
    }
    maps.remove(t, g, &at, stale.into_iter())?;
    Ok(Some(kept))
}
