//! The interaction table as the agent sees it: the accounting programs
//! behind the hooks, the interfaces whose ingress counts forwarded packets,
//! reading the per-CPU counters, removing idle entries, and the admission
//! threshold that keeps the table honest under floods.

use aya::{
    maps::{Array, HashMap, MapData, PerCpuHashMap, ProgramArray},
    programs::{SchedClassifier, Xdp},
};
use tc_common::{
    IxConfig, IxCounters, IxKey, ACCOUNT, ACCOUNT_TC_EGRESS, ACCOUNT_TC_INGRESS, ACCOUNT_XDP,
    ACCOUNT_XDP_PROGS, IX, IX_CONF, IX_IFACES,
};

use super::{map_err, Datapath, DatapathError, TC_ACCOUNT_EGRESS, TC_ACCOUNT_INGRESS, XDP_ACCOUNT};

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
        let mut progs: ProgramArray<&mut MapData> = self.map(ACCOUNT)?;
        for (slot, fd) in &fds {
            progs.set(*slot, fd, 0).map_err(map_err(ACCOUNT))?;
        }
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

    /// Every interaction in the table with its counters summed over CPUs.
    pub fn interactions(&mut self) -> Result<Vec<(IxKey, IxCounters)>, DatapathError> {
        let map: PerCpuHashMap<&mut MapData, IxKey, IxCounters> = self.map(IX)?;
        let mut out = Vec::new();
        for item in map.iter() {
            // An entry removed between two reads of the iteration is skipped.
            let Ok((key, values)) = item else { continue };
            let mut sum = IxCounters::default();
            for v in values.iter() {
                sum.add(v);
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// Removes interactions (idle, or the smallest while the table is
    /// under pressure). Their counts up to the last read are the agent's.
    pub fn remove_interactions(&mut self, keys: &[IxKey]) -> Result<(), DatapathError> {
        let mut map: PerCpuHashMap<&mut MapData, IxKey, IxCounters> = self.map(IX)?;
        for k in keys {
            // Already gone is fine.
            let _ = map.remove(k);
        }
        Ok(())
    }

    /// Entries the interaction table can hold.
    pub fn interaction_table_size(&mut self) -> Result<u32, DatapathError> {
        let map = self
            .ebpf
            .map(IX)
            .ok_or_else(|| DatapathError::Setup(format!("map {IX} missing from object")))?;
        let aya::maps::Map::PerCpuHashMap(data) = map else {
            return Err(DatapathError::Setup(format!(
                "map {IX} is not a per-CPU hash map"
            )));
        };
        Ok(data.info().map_err(map_err(IX))?.max_entries())
    }

    /// Sets the admission threshold for new clients, in sketch units of
    /// `IX_SKETCH_UNIT` bytes per window; 0 admits every client at once.
    pub fn set_admission(&mut self, admit_units: u32) -> Result<(), DatapathError> {
        let mut conf: Array<&mut MapData, IxConfig> = self.map(IX_CONF)?;
        conf.set(
            0,
            IxConfig {
                admit_units,
                _pad: 0,
            },
            0,
        )
        .map_err(map_err(IX_CONF))
    }
}
