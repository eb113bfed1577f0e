//! Connection pools: each channel with connection limits counts its
//! connections in a pool that outlives generations, so an apply keeps the
//! open connections of a channel that keeps its name (also when its limit
//! changes: a lowered limit cuts nothing, it only refuses new connections
//! until the count is below it). A pool of a removed channel drains: its
//! connections close or time out, and once none is left it is zeroed and
//! free again. The collector's passes tell when that is, so its schedule
//! (which adapts to the churn) lives here too.

use std::collections::{HashMap, HashSet};

use tc_common::{ChannelPolicy, MAX_POOLS};

use super::*;
use crate::{control::ConnStatus, datapath::conn::Collected};

/// Shortest and longest time between two collector passes.
const COLLECT_MIN: Duration = Duration::from_millis(250);
const COLLECT_MAX: Duration = Duration::from_secs(10);
/// Passes a drained pool must stay empty before it is zeroed and given
/// out again: a connection inserted while a pass listed the table shows up
/// in the next one.
const DRAINED_PASSES: u8 = 2;

/// Which pool each channel holds, and which are draining.
#[derive(Debug, Default)]
pub(super) struct Pools {
    /// Pool of each live channel with connection limits, by name.
    by_name: HashMap<String, u32>,
    /// Pools the live generation uses, named or not (after a state
    /// mismatch the agent cannot name the live channels, but their pools
    /// are still in use).
    live: HashSet<u32>,
    /// Pools of removed channels, with the number of passes they were
    /// found empty in a row.
    draining: HashMap<u32, u8>,
    /// Time until the next collector pass.
    interval: Duration,
    /// The last pass, for `status`.
    last: Collected,
    /// Connections the collector released since the agent started.
    released: u64,
}

impl Pools {
    /// The pool of a live channel, if it has connection limits.
    pub(super) fn of(&self, channel: &str) -> Option<u32> {
        self.by_name.get(channel).copied()
    }

    /// Pools of `policies` (the live generation's, as the kernel holds
    /// them) named by `names` when the agent knows them. Any other pool
    /// with counts left is a removed channel's, still draining.
    pub(super) fn resume(
        dp: &mut Datapath,
        policies: &[ChannelPolicy],
        names: Option<&[String]>,
    ) -> Result<Self> {
        let mut pools = Pools {
            interval: COLLECT_MIN * 4,
            ..Default::default()
        };
        for (i, p) in policies.iter().enumerate() {
            if p.limits_connections() && p.conn_pool < MAX_POOLS {
                pools.live.insert(p.conn_pool);
                if let Some(name) = names.and_then(|n| n.get(i)) {
                    pools.by_name.insert(name.clone(), p.conn_pool);
                }
            }
        }
        for (pool, counts) in (0..MAX_POOLS).zip(dp.all_pool_counts()?) {
            if !pools.live.contains(&pool) && counts != PoolCounts::default() {
                pools.draining.insert(pool, 0);
            }
        }
        Ok(pools)
    }

    /// Gives each channel of `policy` that limits connections its pool in
    /// `compiled` (written into its `conn_pool`): the pool it held under
    /// the same name, or a free one. Returns the assignment, which
    /// [`Pools::switched`] makes live once the generation switch succeeded.
    pub(super) fn assign(
        &self,
        policy: &Policy,
        compiled: &mut [ChannelPolicy],
    ) -> Result<HashMap<String, u32>> {
        let mut taken: HashSet<u32> = self
            .live
            .iter()
            .chain(self.draining.keys())
            .copied()
            .collect();
        let mut next_free = 0u32;
        let mut out = HashMap::new();
        for (c, p) in policy.channels.iter().zip(compiled.iter_mut()) {
            if !p.limits_connections() {
                continue;
            }
            let pool = match self.by_name.get(&c.name) {
                Some(&pool) => pool,
                None => {
                    while next_free < MAX_POOLS && taken.contains(&next_free) {
                        next_free += 1;
                    }
                    if next_free == MAX_POOLS {
                        bail!(
                            "no free connection pool for channel `{}`: {} pools of removed channels still hold connections \
                             (they drain as those connections close or time out); policy not applied: the running policy is unchanged",
                            c.name,
                            self.draining.len()
                        );
                    }
                    next_free
                }
            };
            taken.insert(pool);
            p.conn_pool = pool;
            out.insert(c.name.clone(), pool);
        }
        Ok(out)
    }

    /// The new generation is live with `assigned` pools: pools no channel
    /// holds any more start draining.
    pub(super) fn switched(&mut self, assigned: HashMap<String, u32>) {
        let now_live: HashSet<u32> = assigned.values().copied().collect();
        for pool in self.live.difference(&now_live) {
            self.draining.insert(*pool, 0);
        }
        self.live = now_live;
        self.by_name = assigned;
    }

    /// What `status` shows of the table and its collector.
    pub(super) fn status(&self, table_size: u32, conf: &tc_common::ConnConfig) -> ConnStatus {
        ConnStatus {
            table_size,
            entries: self.last.scanned,
            timeout_syn_s: conf.syn_ns / 1_000_000_000,
            timeout_established_s: conf.established_ns / 1_000_000_000,
            timeout_closing_s: conf.closing_ns / 1_000_000_000,
            collect_interval_ms: self.interval.as_millis() as u64,
            released_by_timeout: self.released,
            draining_pools: self.draining.len(),
        }
    }
}

impl Agent {
    /// One collector pass: releases timed-out connections, drains the pools
    /// of removed channels, and returns the time until the next pass,
    /// shorter while many entries time out, longer while none do.
    pub(super) fn collect(&mut self) -> Result<Duration> {
        let conf = self.config.conn_timeouts;
        let c = self.dp.collect_conns(&conf)?;
        let mut freed = Vec::new();
        for (pool, empty) in self.pools.draining.iter_mut() {
            if c.left.contains_key(pool) {
                *empty = 0;
            } else {
                *empty += 1;
                if *empty >= DRAINED_PASSES {
                    freed.push(*pool);
                }
            }
        }
        for pool in freed {
            self.dp.reset_pool(pool)?;
            self.pools.draining.remove(&pool);
        }
        if c.released > 0 {
            info!(
                released = c.released,
                removed = c.removed,
                scanned = c.scanned,
                "released connections idle past their timeout"
            );
        }
        // The longest sensible interval: a quarter of the shortest timeout,
        // so a connection is released at most that much after it.
        let shortest = [conf.syn_ns, conf.established_ns, conf.closing_ns]
            .into_iter()
            .filter(|t| *t != 0)
            .min()
            .map_or(COLLECT_MAX, |ns| Duration::from_nanos(ns / 4));
        let ceiling = shortest.clamp(COLLECT_MIN, COLLECT_MAX);
        let interval = self.pools.interval;
        self.pools.interval = if c.removed > 0 && c.removed * 10 >= c.scanned {
            (interval / 2).max(COLLECT_MIN)
        } else if c.removed == 0 {
            (interval * 2).min(ceiling)
        } else {
            interval.min(ceiling)
        };
        self.pools.released += c.released as u64;
        self.pools.last = c;
        Ok(self.pools.interval)
    }

    /// Connection counters of every live channel with connection limits.
    pub(super) fn pool_counts(&mut self) -> Result<HashMap<String, PoolCounts>> {
        let mut out = HashMap::new();
        for c in &self.policy.channels {
            if let Some(pool) = self.pools.of(&c.name) {
                out.insert(c.name.clone(), self.dp.pool_counts(pool)?);
            }
        }
        Ok(out)
    }
}
