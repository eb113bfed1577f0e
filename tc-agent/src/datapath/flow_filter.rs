//! The flow cache's filter (`TC_FLOW_BITS`): the datapath sets a flow's bit
//! when the cache takes it and never clears one, so bits of flows the
//! cache has since evicted pile up. The agent zeroes the filter after
//! [`FLOW_BITS_CLEAR_AFTER`] inserts, which keeps the bits of evicted
//! flows to about an eighth of the filter (the cache's live flows may set
//! up to a quarter more; each set bit lets a flood's frame that hashes to
//! it pay for the cache lookup the filter exists to spare). A flow still
//! cached when its bit goes is found uncached and classified afresh until
//! the doorkeeper admits it again (two packets in a row on a CPU, which a
//! flood that keeps taking its slot can put off for long); that keeps its
//! entry and interaction hint (not counted as an insert) and sets its bit.
//! Until then its packets carry no hint, so under admission a small
//! client's packets fold into the untracked entry. It never costs a wrong
//! channel. Aging the filter (two of them, a flow's
//! bit set again in the newer one on a hit) would keep live flows' bits.
//! (See the README, "The flow cache".)

use aya::maps::{Array, MapData};
use tc_common::{FLOW_BITS, FLOW_BITS_CLEAR_AFTER, FLOW_BITS_WORDS};

use super::{
    batch::{self, batch_err},
    Datapath, DatapathError,
};

impl Datapath {
    /// Zeroes the flow cache's filter if the cache took
    /// [`FLOW_BITS_CLEAR_AFTER`] flows since it was last zeroed (or since
    /// this agent's first call: a restarted agent may leave up to that many
    /// earlier inserts' bits, which costs speed only). `inserts` is the
    /// node's `flow_inserts`. Returns whether it zeroed it.
    pub fn tidy_flow_filter(&mut self, inserts: u64) -> Result<bool, DatapathError> {
        let since = *self.flow_bits_since.get_or_insert(inserts);
        if inserts.saturating_sub(since) < FLOW_BITS_CLEAR_AFTER {
            return Ok(false);
        }
        self.clear_flow_filter()?;
        self.flow_bits_since = Some(inserts);
        tracing::debug!(inserts, "cleared the flow cache's filter");
        Ok(true)
    }

    /// Zeroes the flow cache's filter in one batched call (Linux 5.6):
    /// every cached flow is looked up again once a packet of it set its
    /// bit anew.
    pub fn clear_flow_filter(&mut self) -> Result<(), DatapathError> {
        let bits = self.checked_map::<Array<&MapData, u64>>(FLOW_BITS)?;
        let plain = batch::Layout { ncpus: None };
        batch::update_range(bits, 0, FLOW_BITS_WORDS as usize, plain, |_| 0u64)
            .map_err(batch_err(FLOW_BITS))
    }
}
