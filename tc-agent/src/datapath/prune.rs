//! Pruning the standby generation: once the grace period after a switch
//! is over, the generation that went out of service keeps only the
//! entries the live one holds alike, and its record says so.
//!
//! An apply writes the difference between what the standby generation
//! holds (the policy before the live one) and the new policy: stale
//! entries removed, new ones written, all before the switch. Removing is
//! about half of that time: in the benchmark's full apply (131,072
//! address entries, every one different), the write took 108-121 ms into
//! a generation that held the policy before, 48-50 ms into an empty one
//! (`bench apply`, `RUST_LOG=tc_agent=debug`). Entries the live policy
//! does not hold alike are the likeliest to be stale at the next apply,
//! which is most often an edit of the live policy; removing them after
//! the switch, off the apply's path (the agent prunes after the switch's
//! fold has saved the state, unless an apply comes first, which then
//! removes what it must itself), takes that time off the next apply.
//! Entries the live policy holds alike stay, so an edit of a few channels
//! still writes only their entries. Entries of a table placed elsewhere
//! than in the live generation (its trie, or the prefix hash maps and
//! the lengths probed there) all go: the next apply would remove them
//! from there to place the table as the live one does.
//!
//! The cost: an apply that returns to the policy before the live one
//! writes back the entries in which the two differ, where it wrote
//! nothing before; for the benchmark's policy, when every entry differs,
//! a write of 131,072 entries (53-65 ms, inserts only) instead of none.

use std::sync::Arc;

use tc_common::{Probes, TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6};

use super::{
    held::{self, Held},
    prefixes::Width,
    Datapath, DatapathError,
};

impl Datapath {
    /// Prunes the inactive generation: removes every table entry the live
    /// generation does not hold with the same value, or that is not where
    /// the live generation places its table, and records what is left;
    /// returns how many entries it removed. Call it only once every
    /// program that may have read the inactive generation has finished (a
    /// grace period after the switch). Nothing to do unless both
    /// generations' contents are known. If a removal fails, the generation
    /// becomes unknown: the next apply removes all its entries by walking
    /// every table and writes it whole.
    pub fn prune_standby(&mut self) -> Result<usize, DatapathError> {
        let standby = self.config()?.generation ^ 1;
        // Until every removal is done the generation holds neither its
        // record nor the pruned one.
        let Some(mut mine) = self.gens[standby as usize].tables.take() else {
            return Ok(0);
        };
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
        let mut removed = 0;
        for (t, table, theirs) in [
            (TABLE_SRC_V4, &mut mine.src_v4, &live.src_v4),
            (TABLE_DST_V4, &mut mine.dst_v4, &live.dst_v4),
        ] {
            removed += self.prune_shared(t, g, [at, live_at], table, theirs)?;
        }
        for (t, table, theirs) in [
            (TABLE_SRC_V6, &mut mine.src_v6, &live.src_v6),
            (TABLE_DST_V6, &mut mine.dst_v6, &live.dst_v6),
        ] {
            removed += self.prune_shared(t, g, [at, live_at], table, theirs)?;
        }
        let l4 = TABLE_L4 as usize;
        if let Some(kept) =
            self.prune_table(TABLE_L4, g, [at[l4], live_at[l4]], &mine.l4, &live.l4)?
        {
            removed += mine.l4.len() - kept.len();
            mine.l4 = kept;
        }
        self.gens[standby as usize].tables = Some(mine);
        Ok(removed)
    }

    /// [`prune_table`](Self::prune_table) for an address table whose
    /// record the generations may share (`Tables::of_with_addresses`): a
    /// shared record in the same place is held alike whole. Returns the
    /// entries removed.
    fn prune_shared<W: Width>(
        &self,
        t: u8,
        g: u8,
        [at, live_at]: [[Probes; tc_common::TABLES]; 2],
        mine: &mut Arc<Held<(u8, W)>>,
        live: &Arc<Held<(u8, W)>>,
    ) -> Result<usize, DatapathError> {
        let i = t as usize;
        if Arc::ptr_eq(mine, live) && at[i] == live_at[i] {
            return Ok(0);
        }
        let Some(kept) = self.prune_table(t, g, [at[i], live_at[i]], mine, live)? else {
            return Ok(0);
        };
        let removed = mine.len() - kept.len();
        *mine = Arc::new(kept);
        Ok(removed)
    }

    /// Removes the entries of table `t` of generation `g` (placed at `at`)
    /// that `live` (placed at `live_at`) does not hold alike: all of them
    /// if the places differ, since the next apply, placing the table as
    /// the live generation does, would remove them from there anyway. The
    /// record of what is left, `None` if nothing was removed.
    fn prune_table<W: Width>(
        &self,
        t: u8,
        g: u8,
        [at, live_at]: [Probes; 2],
        mine: &Held<(u8, W)>,
        live: &Held<(u8, W)>,
    ) -> Result<Option<Held<(u8, W)>>, DatapathError> {
        let (kept, stale) = if at == live_at {
            held::common(mine, live)
        } else {
            (Vec::new(), mine.iter().map(|e| e.0).collect())
        };
        if stale.is_empty() {
            return Ok(None);
        }
        self.table_maps::<W>(t)?
            .remove(t, g, &at, stale.into_iter())?;
        Ok(Some(kept))
    }
}
