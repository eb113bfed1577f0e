//! The connection table as the agent sees it: the timeouts it gives the
//! datapath, the pool counters it reads, and the collector that releases
//! connections idle past their timeout.
//!
//! The count of open connections in a pool is `opened - closed - gc_closed`.
//! The datapath writes `opened` and `closed`; only the collector writes
//! `gc_closed` ([`CONN_GC`]). An entry idle past its state's timeout is
//! never written by the datapath again (see `tc-ebpf/src/conn.rs`), and the
//! collector removes entries only once they are idle past the timeout plus
//! [`COLLECT_MARGIN`], by which time no program that found the entry still
//! runs: what the collector reads of such an entry is final, and each
//! connection is released exactly once.

use std::{collections::HashMap as StdHashMap, time::Duration};

use aya::maps::{Array, HashMap, MapData};
use tc_common::{
    ConnConfig, ConnEntry, ConnKey, ConnPool, CONNS, CONN_CONF, CONN_GC, CONN_POOLS, MAX_POOLS,
};

use super::{batch, batch::batch_err, map_err, Datapath, DatapathError};

/// How much longer than its timeout an entry stays before the collector
/// takes it: programs run for microseconds, so no program that read the
/// entry before it expired can still be writing it.
pub const COLLECT_MARGIN: Duration = Duration::from_secs(1);

/// A pool's counters as the agent reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// What the datapath counts (atomically).
    pub pool: ConnPool,
    /// Connections the collector released (timed out).
    pub gc_closed: u64,
}

impl PoolCounts {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.pool
            .opened
            .saturating_sub(self.pool.closed + self.gc_closed)
    }
}

/// What one pass of the collector found and did.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// Entries in the table when the pass started.
    pub scanned: usize,
    /// Entries removed (idle past their timeout and the margin).
    pub removed: usize,
    /// Of those, connections that still counted as open and were released.
    pub released: usize,
    /// Entries left per pool, so the agent knows when the pool of a
    /// removed channel has drained.
    pub left: StdHashMap<u32, usize>,
}

/// The monotonic clock `bpf_ktime_get_ns` reads, in ns.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

impl Datapath {
    /// Gives the datapath its connection timeouts.
    pub fn set_conn_config(&mut self, conf: ConnConfig) -> Result<(), DatapathError> {
        self.array::<ConnConfig>(CONN_CONF)?
            .set(0, conf, 0)
            .map_err(map_err(CONN_CONF))
    }

    /// Entries the connection table can hold (as created: a pinned table
    /// keeps the size it was made with).
    pub fn conn_table_size(&mut self) -> Result<u32, DatapathError> {
        let map = self
            .ebpf
            .map(CONNS)
            .ok_or_else(|| DatapathError::Setup(format!("map {CONNS} missing from object")))?;
        let data: &MapData = match map {
            aya::maps::Map::HashMap(d) => d,
            _ => {
                return Err(DatapathError::Setup(format!(
                    "map {CONNS} is not a hash map"
                )))
            }
        };
        let info = data.info().map_err(map_err(CONNS))?;
        Ok(info.max_entries())
    }

    /// The counters of `pool`.
    pub fn pool_counts(&mut self, pool: u32) -> Result<PoolCounts, DatapathError> {
        let counts = self
            .array::<ConnPool>(CONN_POOLS)?
            .get(&pool, 0)
            .map_err(map_err(CONN_POOLS))?;
        let gc_closed = self
            .array::<u64>(CONN_GC)?
            .get(&pool, 0)
            .map_err(map_err(CONN_GC))?;
        Ok(PoolCounts {
            pool: counts,
            gc_closed,
        })
    }

    /// The counters of every pool, index by pool: two batched reads
    /// (Linux 5.6) where [`pool_counts`](Self::pool_counts) for each of the
    /// 2,048 pools made 4,096 calls, most of an agent's start after the
    /// verifier.
    pub fn all_pool_counts(&self) -> Result<Vec<PoolCounts>, DatapathError> {
        let plain = batch::Layout { ncpus: None };
        let mut all = Vec::with_capacity(MAX_POOLS as usize);
        let pools = self.checked_map::<Array<&MapData, ConnPool>>(CONN_POOLS)?;
        batch::lookup_range(pools, 0, MAX_POOLS as usize, plain, |_, pool| {
            all.push(PoolCounts { pool, gc_closed: 0 })
        })
        .map_err(batch_err(CONN_POOLS))?;
        let gc = self.checked_map::<Array<&MapData, u64>>(CONN_GC)?;
        batch::lookup_range(gc, 0, MAX_POOLS as usize, plain, |i, closed: u64| {
            all[i].gc_closed = closed
        })
        .map_err(batch_err(CONN_GC))?;
        Ok(all)
    }

    /// Zeroes a pool that no channel uses and no connection refers to, so
    /// it can be given to a new channel.
    pub fn reset_pool(&mut self, pool: u32) -> Result<(), DatapathError> {
        self.array::<ConnPool>(CONN_POOLS)?
            .set(pool, ConnPool::default(), 0)
            .map_err(map_err(CONN_POOLS))?;
        self.array::<u64>(CONN_GC)?
            .set(pool, 0, 0)
            .map_err(map_err(CONN_GC))
    }

    /// One pass of the collector: removes the entries idle past their
    /// state's timeout (plus [`COLLECT_MARGIN`]), and releases the
    /// connections among them that still counted as open. The entries of a
    /// removed channel's pool go the same way, never sooner: the datapath
    /// may still be writing any entry that has not timed out (a FIN, a
    /// reused tuple reopening it into a live pool).
    pub fn collect_conns(&mut self, conf: &ConnConfig) -> Result<Collected, DatapathError> {
        let margin = COLLECT_MARGIN.as_nanos() as u64;
        let mut out = Collected::default();
        let mut released: StdHashMap<u32, u64> = StdHashMap::new();
        {
            let mut table: HashMap<_, ConnKey, ConnEntry> = self.map(CONNS)?;
            // Keys first: removing while iterating restarts the walk.
            let keys: Vec<ConnKey> = table.keys().filter_map(Result::ok).collect();
            out.scanned = keys.len();
            let now = monotonic_ns();
            for k in keys {
                let Ok(e) = table.get(&k, 0) else {
                    continue; // removed meanwhile
                };
                let timeout = conf.timeout(e.state);
                let idle = now.saturating_sub(e.last_ns);
                let timed_out = timeout != 0 && idle > timeout + margin;
                if !timed_out {
                    *out.left.entry(e.pool).or_default() += 1;
                    continue;
                }
                if table.remove(&k).is_err() {
                    continue;
                }
                out.removed += 1;
                if e.counted != 0 {
                    out.released += 1;
                    *released.entry(e.pool).or_default() += 1;
                }
            }
        }
        let mut gc = self.array::<u64>(CONN_GC)?;
        for (pool, n) in released {
            let before = gc.get(&pool, 0).map_err(map_err(CONN_GC))?;
            gc.set(pool, before + n, 0).map_err(map_err(CONN_GC))?;
        }
        Ok(out)
    }
}
