//! The interaction table as the agent sees it: the accounting programs
//! behind the hooks, the interfaces whose ingress counts forwarded packets,
//! reading the per-CPU counters, removing idle entries, and the admission
//! threshold that keeps the table honest under floods.

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{SchedClassifier, Xdp},
};
use tc_common::{
    IxConfig, IxCounters, IxKey, ACCOUNT, ACCOUNT_TC_EGRESS, ACCOUNT_TC_INGRESS, ACCOUNT_XDP,
    ACCOUNT_XDP_PROGS, IX, IX_ALLOC, IX_ALLOC_HEAD, IX_ALLOC_TAIL, IX_CONF, IX_FREE, IX_GEN,
    IX_IFACES, IX_SLOTS,
};

use super::{
    batch, batch::batch_err, map_err, Datapath, DatapathError, Programs, TC_ACCOUNT_EGRESS,
    TC_ACCOUNT_INGRESS, XDP_ACCOUNT,
};

impl Datapath {
    /// Puts the accounting programs into the program array the hooks
    /// tail-call. Until this runs, hooks judge packets without counting
    /// interactions.
    pub(super) fn install_accounting(&mut self) -> Result<(), DatapathError> {
        let mut fds = Vec::new();
        for (slot, name) in [
            (ACCOUNT_TC_INGRESS, TC_ACCOUNT_INGRESS),
            (ACCOUNT_TC_EGRESS, TC_ACCOUNT_EGRESS),
        ] {
            let prog: &SchedClassifier = self
                .ebpf
                .program(name)
                .ok_or_else(|| DatapathError::Setup(format!("program {name} missing from object")))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            let fd = prog
                .fd()
                .map_err(|source| DatapathError::Program { name, source })?
                .try_clone()
                .map_err(|e| DatapathError::Setup(format!("duplicating {name}'s fd: {e}")))?;
            fds.push((slot, fd));
        }
        let mut progs: ProgramArray<&mut MapData> = self.map(ACCOUNT)?;
        for (slot, fd) in &fds {
            progs.set(*slot, fd, 0).map_err(map_err(ACCOUNT))?;
        }
        if self.programs == Programs::Tc {
            // No XDP hook runs this object's programs: its XDP array stays
            // empty.
            return Ok(());
        }
        let xdp: &Xdp = self
            .ebpf
            .program(XDP_ACCOUNT)
            .ok_or_else(|| {
                DatapathError::Setup(format!("program {XDP_ACCOUNT} missing from object"))
            })?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: XDP_ACCOUNT,
                source,
            })?;
        let fd = xdp
            .fd()
            .map_err(|source| DatapathError::Program {
                name: XDP_ACCOUNT,
                source,
            })?
            .try_clone()
            .map_err(|e| DatapathError::Setup(format!("duplicating {XDP_ACCOUNT}'s fd: {e}")))?;
        let mut progs: ProgramArray<&mut MapData> = self.map(ACCOUNT_XDP_PROGS)?;
        progs
            .set(ACCOUNT_XDP, &fd, 0)
            .map_err(map_err(ACCOUNT_XDP_PROGS))?;
        Ok(())
    }

    /// Switches interaction accounting off (the hooks find no program to
    /// tail-call and judge packets alone) or back on. For the benchmark,
    /// which measures what accounting costs against the same object.
    pub fn set_accounting(&mut self, on: bool) -> Result<(), DatapathError> {
        if on {
            return self.install_accounting();
        }
        for (name, slots) in [
            (ACCOUNT, &[ACCOUNT_TC_INGRESS, ACCOUNT_TC_EGRESS][..]),
            (ACCOUNT_XDP_PROGS, &[ACCOUNT_XDP][..]),
        ] {
            let mut progs: ProgramArray<&mut MapData> = self.map(name)?;
            for slot in slots {
                // An empty slot is fine.
                let _ = progs.clear_index(slot);
            }
        }
        Ok(())
    }

    /// Declares the interfaces that have one of our ingress hooks: a
    /// forwarded packet that came in through one of them is counted there,
    /// not again at its egress.
    pub fn set_ingress_ifaces(&mut self, ifindexes: &[u32]) -> Result<(), DatapathError> {
        let mut map: HashMap<&mut MapData, u32, u32> = self.map(IX_IFACES)?;
        let stale: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        for i in stale {
            if !ifindexes.contains(&i) {
                let _ = map.remove(&i);
            }
        }
        for i in ifindexes {
            map.insert(i, 1, 0).map_err(map_err(IX_IFACES))?;
        }
        Ok(())
    }

    /// Fills the free ring with every slot, once, when the table is new
    /// (a pinned table keeps its ring). Then the datapath may open entries.
    pub(super) fn init_slots(&mut self) -> Result<(), DatapathError> {
        let mut conf = self.ix_config()?;
        if conf.slots != 0 {
            return Ok(());
        }
        let n = self.interaction_table_size()?;
        // Every slot free, slot i at i: batched (Linux 5.6), where one call
        // per slot was 16,384 calls at the default size, and under an
        // emulator seconds of each agent's first start.
        let free = self.checked_map::<Array<&MapData, u32>>(IX_FREE)?;
        batch::update_range(free, 0, n as usize, batch::Layout { ncpus: None }, |i| {
            i as u32
        })
        .map_err(batch_err(IX_FREE))?;
        let mut alloc: Array<&mut MapData, u64> = self.map(IX_ALLOC)?;
        alloc.set(IX_ALLOC_HEAD, 0, 0).map_err(map_err(IX_ALLOC))?;
        alloc
            .set(IX_ALLOC_TAIL, n as u64, 0)
            .map_err(map_err(IX_ALLOC))?;
        conf.slots = n;
        self.set_ix_config(conf)
    }

    fn ix_config(&mut self) -> Result<IxConfig, DatapathError> {
        let conf: Array<&mut MapData, IxConfig> = self.map(IX_CONF)?;
        conf.get(&0, 0).map_err(map_err(IX_CONF))
    }

    fn set_ix_config(&mut self, c: IxConfig) -> Result<(), DatapathError> {
        let mut conf: Array<&mut MapData, IxConfig> = self.map(IX_CONF)?;
        conf.set(0, c, 0).map_err(map_err(IX_CONF))
    }

    /// This CPU-summed counters of `slot`.
    fn slot_counters(&mut self, slot: u32) -> Result<IxCounters, DatapathError> {
        let slots: PerCpuArray<&mut MapData, IxCounters> = self.map(IX_SLOTS)?;
        let mut sum = IxCounters::default();
        for v in slots.get(&slot, 0).map_err(map_err(IX_SLOTS))?.iter() {
            sum.add(v);
        }
        Ok(sum)
    }

    /// Every interaction in the table with its counters summed over CPUs.
    pub fn interactions(&mut self) -> Result<Vec<(IxKey, IxCounters)>, DatapathError> {
        let entries: Vec<(IxKey, u32)> = {
            let map: HashMap<&mut MapData, IxKey, u32> = self.map(IX)?;
            // An entry removed between two reads of the iteration is skipped.
            map.iter().filter_map(Result::ok).collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        for (key, slot) in entries {
            out.push((key, self.slot_counters(slot)?));
        }
        Ok(out)
    }

    /// Removes interactions (idle, or the smallest while the table is
    /// under pressure) and returns each one's final counters; their slots
    /// go back to the free ring, zeroed. Their generations move first, so
    /// no flow-cache hint leads to a slot being recycled.
    pub fn remove_interactions(
        &mut self,
        keys: &[IxKey],
    ) -> Result<Vec<(IxKey, IxCounters)>, DatapathError> {
        let mut freed = Vec::new();
        {
            let mut map: HashMap<&mut MapData, IxKey, u32> = self.map(IX)?;
            for k in keys {
                if let Ok(slot) = map.get(k, 0) {
                    if map.remove(k).is_ok() {
                        freed.push((*k, slot));
                    }
                }
            }
        }
        if freed.is_empty() {
            return Ok(Vec::new());
        }
        // Each freed slot's generation moves first, so no hint leads to it
        // once it is recycled.
        {
            let mut gens: Array<&mut MapData, u32> = self.map(IX_GEN)?;
            for (_, slot) in &freed {
                let g = gens.get(slot, 0).map_err(map_err(IX_GEN))?;
                gens.set(*slot, g.wrapping_add(1), 0)
                    .map_err(map_err(IX_GEN))?;
            }
        }
        // Programs that read an old generation or found a removed entry
        // run for microseconds; after this, nothing writes to the freed
        // slots.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut out = Vec::with_capacity(freed.len());
        for (k, slot) in &freed {
            out.push((*k, self.slot_counters(*slot)?));
        }
        let slots: Vec<u32> = freed.iter().map(|(_, s)| *s).collect();
        self.free_slots(&slots)?;
        Ok(out)
    }

    /// Zeroes `slots` and appends them to the free ring.
    fn free_slots(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        let n = self.ix_config()?.slots;
        if n == 0 {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| DatapathError::Setup(format!("counting CPUs: {e}")))?;
        {
            let mut counters: PerCpuArray<&mut MapData, IxCounters> = self.map(IX_SLOTS)?;
            for slot in slots {
                let zero = PerCpuValues::try_from(vec![IxCounters::default(); cpus])
                    .map_err(|e| DatapathError::Setup(format!("per-CPU zeros: {e}")))?;
                counters.set(*slot, zero, 0).map_err(map_err(IX_SLOTS))?;
            }
        }
        let (head, tail) = {
            let alloc: Array<&mut MapData, u64> = self.map(IX_ALLOC)?;
            (
                alloc.get(&IX_ALLOC_HEAD, 0).map_err(map_err(IX_ALLOC))?,
                alloc.get(&IX_ALLOC_TAIL, 0).map_err(map_err(IX_ALLOC))?,
            )
        };
        // The ring holds every slot at most once: more would overwrite free
        // slots not yet taken (a slot freed twice would be owned twice).
        if tail.saturating_sub(head) + slots.len() as u64 > n as u64 {
            return Err(DatapathError::Setup(format!(
                "interaction free ring: {} slots to free with {} already free of {n}; refusing to overwrite",
                slots.len(),
                tail.saturating_sub(head)
            )));
        }
        {
            let mut free: Array<&mut MapData, u32> = self.map(IX_FREE)?;
            for (i, slot) in slots.iter().enumerate() {
                free.set(((tail + i as u64) % n as u64) as u32, *slot, 0)
                    .map_err(map_err(IX_FREE))?;
            }
        }
        // Only now may the datapath take them.
        let mut alloc: Array<&mut MapData, u64> = self.map(IX_ALLOC)?;
        alloc
            .set(IX_ALLOC_TAIL, tail + slots.len() as u64, 0)
            .map_err(map_err(IX_ALLOC))
    }

    /// Slots neither named by an entry nor in the free ring: taken by a
    /// CPU that then lost the race to enter its interaction (or are being
    /// entered this instant: call twice, a second apart, and reclaim only
    /// what both calls found, see [`reclaim_slots`](Self::reclaim_slots)).
    pub fn stray_slots(&mut self) -> Result<Vec<u32>, DatapathError> {
        let n = self.ix_config()?.slots;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut known = vec![false; n as usize];
        {
            let map: HashMap<&mut MapData, IxKey, u32> = self.map(IX)?;
            for (_, slot) in map.iter().filter_map(Result::ok) {
                if let Some(k) = known.get_mut(slot as usize) {
                    *k = true;
                }
            }
        }
        let (head, tail) = {
            let alloc: Array<&mut MapData, u64> = self.map(IX_ALLOC)?;
            (
                alloc.get(&IX_ALLOC_HEAD, 0).map_err(map_err(IX_ALLOC))?,
                alloc.get(&IX_ALLOC_TAIL, 0).map_err(map_err(IX_ALLOC))?,
            )
        };
        // The whole ring in batched reads (Linux 5.6; 4,096 slots a call):
        // one call per free slot was up to 16,384 calls at each look.
        let mut ring = Vec::with_capacity(n as usize);
        let free = self.checked_map::<Array<&MapData, u32>>(IX_FREE)?;
        batch::lookup_range(
            free,
            0,
            n as usize,
            batch::Layout { ncpus: None },
            |_, s: u32| ring.push(s),
        )
        .map_err(batch_err(IX_FREE))?;
        for pos in head.min(tail)..tail {
            if let Some(k) = ring
                .get((pos % n as u64) as usize)
                .and_then(|slot| known.get_mut(*slot as usize))
            {
                *k = true;
            }
        }
        Ok((0..n).filter(|s| !known[*s as usize]).collect())
    }

    /// Gives stray slots back to the free ring (zeroed).
    pub fn reclaim_slots(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        self.free_slots(slots)
    }

    /// Entries the interaction table can hold.
    pub fn interaction_table_size(&mut self) -> Result<u32, DatapathError> {
        let map = self
            .ebpf
            .map(IX)
            .ok_or_else(|| DatapathError::Setup(format!("map {IX} missing from object")))?;
        let aya::maps::Map::HashMap(data) = map else {
            return Err(DatapathError::Setup(format!("map {IX} is not a hash map")));
        };
        Ok(data.info().map_err(map_err(IX))?.max_entries())
    }

    /// Sets the admission threshold for new clients, in sketch units of
    /// `IX_SKETCH_UNIT` bytes per window; 0 admits every client at once.
    pub fn set_admission(&mut self, admit_units: u32) -> Result<(), DatapathError> {
        let mut conf = self.ix_config()?;
        if conf.admit_units != admit_units {
            conf.admit_units = admit_units;
            self.set_ix_config(conf)?;
        }
        Ok(())
    }
}
