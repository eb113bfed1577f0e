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
//! the switch, in the background, takes that time off the next apply's
//! path. Entries the live policy holds alike stay, so an edit of a few
//! channels still writes only their entries. The cost: an apply that
//! returns to the policy before the live one writes back the entries in
//! which the two differ (inserts only), where it wrote nothing before.

use std::sync::Arc;

use super::{
    held::{self, Held, Tables},
    prefixes::Width,
    Datapath, DatapathError,
};
use tc_common::{TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6};

impl Datapath {
    /// Removes from generation `standby` (out of service for a grace
    /// period) every table entry the other, live generation does not hold
    /// with the same value, and records what is left. Nothing to do unless
    /// both generations' contents are known. If a removal fails, the
    /// generation becomes unknown (the next apply rewrites it whole).
    pub(super) fn prune_standby(&mut self, standby: u32) -> Result<(), DatapathError> {
        let live = standby ^ 1;
        let Some(live_tables) = self.gens[live as usize].tables.clone() else {
            return Ok(());
        };
        // Until every removal is done the generation holds neither its
        // record nor the pruned one.
        let Some(held) = self.gens[standby as usize].tables.take() else {
            return Ok(());
        };
        if held.misplaced != 0 {
            self.gens[standby as usize].tables = Some(held);
            return Ok(());
        }
        let g = standby as u8;
        let mut pruned = held.clone();
        if let Some(kept) =
            self.prune_table(TABLE_SRC_V4, g, &held, &held.src_v4, &live_tables.src_v4)?
        {
            pruned.src_v4 = Arc::new(kept);
        }
        if let Some(kept) =
            self.prune_table(TABLE_DST_V4, g, &held, &held.dst_v4, &live_tables.dst_v4)?
        {
            pruned.dst_v4 = Arc::new(kept);
        }
        if let Some(kept) =
            self.prune_table(TABLE_SRC_V6, g, &held, &held.src_v6, &live_tables.src_v6)?
        {
            pruned.src_v6 = Arc::new(kept);
        }
        if let Some(kept) =
            self.prune_table(TABLE_DST_V6, g, &held, &held.dst_v6, &live_tables.dst_v6)?
        {
            pruned.dst_v6 = Arc::new(kept);
        }
        if let Some(kept) = self.prune_table(TABLE_L4, g, &held, &held.l4, &live_tables.l4)? {
            pruned.l4 = kept;
        }
        self.gens[standby as usize].tables = Some(pruned);
        Ok(())
    }

    /// Removes the entries of table `t` of generation `g` that `live` does
    /// not hold alike, from where `held` places the table; the record of
    /// what is left, `None` if nothing was removed.
    fn prune_table<W: Width>(
        &self,
        t: u8,
        g: u8,
        held: &Tables,
        mine: &Held<(u8, W)>,
        live: &Held<(u8, W)>,
    ) -> Result<Option<Held<(u8, W)>>, DatapathError> {
        let (kept, stale) = held::common(mine, live);
        if stale.is_empty() {
            return Ok(None);
        }
        self.table_maps::<W>(t)?
            .remove(t, g, &held.probes[t as usize], stale.into_iter())?;
        Ok(Some(kept))
    }
}
