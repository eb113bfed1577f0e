//! The flow cache's filter (`TC_FLOW_BITS`): the datapath sets a flow's bit
//! when the cache takes it or finds it and never clears one, so bits of
//! flows the cache has since evicted pile up. The filter has two halves:
//! bits are set in the newer and tested in both, and at the first sample
//! after [`FLOW_BITS_AGE_AFTER`] inserts the agent ages it: zeroes the
//! older half and makes it the newer. That keeps the bits of evicted flows
//! to about an eighth of the positions a frame tests (the cache's live
//! flows, of both families, may cover up to half more; each set bit lets a
//! flood's frame that hashes to it pay for the cache lookup the filter
//! exists to spare), while a flow that sent since the aging before keeps
//! its bit: its hit set it again in the newer half (barring a hit that
//! races the aging, which costs one fresh classification). A cached flow
//! idle through two agings loses it, and is classified afresh until the
//! doorkeeper admits it again (two packets in a row on a CPU); that keeps
//! its entry and interaction hint (not counted as an insert) and sets its
//! bit. Until then its packets carry no hint, so under admission a small
//! client's packets fold into the untracked entry. It never costs a wrong
//! channel. (See the README, "The flow cache".)

use aya::maps::{Array, MapData};
use tc_common::{FLOW_BITS, FLOW_BITS_AGE_AFTER, FLOW_BITS_NEWER, FLOW_BITS_WORDS};

use super::{
    batch::{self, batch_err},
    map_err, Datapath, DatapathError,
};

impl Datapath {
    /// Ages the flow cache's filter if the cache took
    /// [`FLOW_BITS_AGE_AFTER`] flows since it was last aged (or since this
    /// agent's first call: a restarted agent may leave up to two periods'
    /// earlier inserts' bits, which costs speed only). `inserts` is the
    /// node's `flow_inserts`. Returns whether it aged it.
    pub fn tidy_flow_filter(&mut self, inserts: u64) -> Result<bool, DatapathError> {
        let since = *self.flow_bits_since.get_or_insert(inserts);
        if inserts.saturating_sub(since) < FLOW_BITS_AGE_AFTER {
            return Ok(false);
        }
        self.age_flow_filter()?;
        self.flow_bits_since = Some(inserts);
        tracing::debug!(inserts, "aged the flow cache's filter");
        Ok(true)
    }

    /// Ages the flow cache's filter: zeroes its older half in one batched
    /// call (Linux 5.6), then names that half the newer one, where the
    /// datapath sets bits from then on. A flow whose bit was only in the
    /// zeroed half (it sent nothing since the aging before) is looked up
    /// again once a packet of it sets the bit anew.
    pub fn age_flow_filter(&mut self) -> Result<(), DatapathError> {
        let newer = self
            .array::<u64>(FLOW_BITS)?
            .get(&FLOW_BITS_NEWER, 0)
            .map_err(map_err(FLOW_BITS))?;
        let older = u32::from(newer & 1 == 0);
        let bits = self.checked_map::<Array<&MapData, u64>>(FLOW_BITS)?;
        let plain = batch::Layout { ncpus: None };
        let first = older * FLOW_BITS_WORDS;
        batch::update_range(bits, first, FLOW_BITS_WORDS as usize, plain, |_| 0u64)
            .map_err(batch_err(FLOW_BITS))?;
        self.array::<u64>(FLOW_BITS)?
            .set(FLOW_BITS_NEWER, u64::from(older), 0)
            .map_err(map_err(FLOW_BITS))
    }
}
