//! The flow cache's filter (`TC_FLOW_BITS`): the datapath sets a flow's bit
//! when the cache takes it or finds it and never clears one, so bits of
//! flows the cache has since evicted pile up. The filter has two halves:
//! bits are set in the newer and tested in both, and after
//! [`FLOW_BITS_CLEAR_AFTER`] inserts the agent zeroes the older half and
//! makes it the newer. That keeps the bits of evicted flows to about an
//! eighth of the filter's bits (the cache's live flows may set up to a
//! quarter more; each set bit lets a flood's frame that hashes to it pay
//! for the cache lookup the filter exists to spare), while a flow that
//! sent in the last such period keeps its bit: the hit set it again in the
//! newer half. A cached flow idle for longer loses it, and is classified
//! afresh until the doorkeeper admits it again (two packets in a row on a
//! CPU); that keeps its entry and interaction hint (not counted as an
//! insert) and sets its bit. Until then its packets carry no hint, so
//! under admission a small client's packets fold into the untracked entry.
//! It never costs a wrong channel. (See the README, "The flow cache".)

use aya::maps::{Array, MapData};
use tc_common::{FLOW_BITS, FLOW_BITS_CLEAR_AFTER, FLOW_BITS_WORDS};

use super::{
    batch::{self, batch_err},
    map_err, Datapath, DatapathError,
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

    /// Ages the flow cache's filter: zeroes its older half in one batched
    /// call (Linux 5.6), then names that half the newer one, where the
    /// datapath sets bits from then on. A flow whose bit was only in the
    /// zeroed half (it sent nothing since the last aging) is looked up
    /// again once its packet sets the bit anew.
    pub fn clear_flow_filter(&mut self) -> Result<(), DatapathError> {
        let older = {
            let bits: Array<&mut MapData, u64> = self.map(FLOW_BITS)?;
            let newer = bits.get(&FLOW_BITS_NEWER, 0).map_err(map_err(FLOW_BITS))?;
            (newer & 1) as u32 ^ 1
        };
        let plain = batch::Layout { ncpus: None };
        let data = self.checked_map::<Array<&MapData, u64>>(FLOW_BITS)?;
        batch::update_range(
            data,
            older * FLOW_BITS_WORDS,
            FLOW_BITS_WORDS as usize,
            plain,
            |_| 0u64,
        )
        .map_err(batch_err(FLOW_BITS))?;
        let mut bits: Array<&mut MapData, u64> = self.map(FLOW_BITS)?;
        bits.set(FLOW_BITS_NEWER, u64::from(older), 0)
            .map_err(map_err(FLOW_BITS))
    }
}

/// The filter's word that names its newer half (after both halves).
const FLOW_BITS_NEWER: u32 = 2 * FLOW_BITS_WORDS;
