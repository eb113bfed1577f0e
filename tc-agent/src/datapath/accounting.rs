//! The pins that keep each loaded object's accounting program arrays
//! alive, and their retirement once no program uses them.
//!
//! Each loaded object's hooks tail-call that object's own accounting
//! programs (they share its unpinned scratch value), through program arrays
//! of that object. The kernel empties a program array when no process or
//! pin holds it any more, and emptying it rewrites the tail-call jump in
//! the JIT'ed code of every program that uses the array. Were the arrays
//! held only by the agent, a stopping agent would leave its programs
//! running in the hooks with that jump rewritten under them: they would
//! stop counting until a new agent's programs replaced them, and the
//! rewrite of running code is what qemu's TCG gets wrong (an int3 oops).
//!
//! So each object pins its arrays when it is loaded, under
//! `pin_dir/`[`ACCOUNTING_PINS`]`/<id>/` (`<id>`: the kernel's id of its tc
//! array), and an object's pins go only once no loaded program uses its
//! arrays: its hook programs have been replaced everywhere and freed. Kept
//! apart from the layout's maps, so that a layout upgrade, which removes
//! the old layout's maps while its programs still run in the hooks, does
//! not empty their arrays.

use std::{collections::HashSet, path::Path};

use aya::{
    maps::{Map, MapData},
    programs::Program,
};
use tc_common::{ACCOUNT, ACCOUNT_XDP_PROGS};

use super::{Datapath, DatapathError};

/// Under the pin directory: a directory per loaded object holding its
/// accounting program arrays.
pub const ACCOUNTING_PINS: &str = "accounting";

impl Datapath {
    /// Closes this process's handles on every program of the object: the
    /// kernel frees them once no hook runs them (an uninstall waits for
    /// that before it removes their accounting arrays).
    pub fn unload_programs(&mut self) {
        for (name, prog) in self.ebpf.programs_mut() {
            let r = match prog {
                Program::SchedClassifier(p) => p.unload(),
                Program::Xdp(p) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::debug!(program = name, error = %e, "unloading failed");
            }
        }
    }

    /// Pins this object's accounting program arrays (see the module docs).
    pub(super) fn pin_accounting(&self, pin_dir: &Path) -> Result<(), DatapathError> {
        let tc = match self.ebpf.map(ACCOUNT) {
            Some(Map::ProgramArray(tc)) => tc,
            Some(_) => {
                return Err(DatapathError::Setup(format!(
                    "map {ACCOUNT} is not a program array"
                )))
            }
            None => {
                return Err(DatapathError::Setup(format!(
                    "map {ACCOUNT} missing from object"
                )))
            }
        };
        let id = tc.info().map_err(super::map_err(ACCOUNT))?.id();
        let own = pin_dir.join(ACCOUNTING_PINS).join(id.to_string());
        std::fs::create_dir_all(&own).map_err(|e| {
            DatapathError::Setup(format!(
                "cannot create pin directory {}: {e}",
                own.display()
            ))
        })?;
        for name in [ACCOUNT, ACCOUNT_XDP_PROGS] {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| DatapathError::Setup(format!("map {name} missing from object")))?;
            map.pin(own.join(name)).map_err(|e| {
                DatapathError::Setup(format!("cannot pin {name} under {}: {e}", own.display()))
            })?;
        }
        Ok(())
    }
}

/// Removes the pinned accounting arrays that no loaded program uses any
/// more (their hooks run a later object's programs). Returns how many
/// objects' arrays stay pinned. Conservative: if the kernel's programs
/// cannot all be listed, nothing is removed.
pub fn retire_unused(pin_dir: &Path) -> usize {
    let root = pin_dir.join(ACCOUNTING_PINS);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return 0;
    };
    let dirs: Vec<(u32, std::path::PathBuf)> = entries
        .flatten()
        .map(|e| {
            let id = e.file_name().to_string_lossy().parse().unwrap_or(0);
            (id, e.path())
        })
        .collect();
    if dirs.is_empty() {
        return 0;
    }
    let Some(used) = maps_in_use() else {
        return dirs.len();
    };
    let mut left = 0;
    for (id, path) in dirs {
        // A directory not named by an id is not ours to judge: kept. XDP
        // hooks use only the XDP array, whose id the name does not give.
        let xdp = MapData::from_pin(path.join(ACCOUNT_XDP_PROGS))
            .ok()
            .and_then(|m| m.info().ok())
            .map(|i| i.id());
        if id == 0 || used.contains(&id) || xdp.is_some_and(|x| used.contains(&x)) {
            left += 1;
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the pinned accounting arrays of an object whose programs no hook runs any more")
            }
            Err(e) => {
                left += 1;
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the pinned accounting arrays of an object whose programs no hook runs any more");
            }
        }
    }
    left
}

/// The ids of every map some loaded program uses; None if a program could
/// not be read (one that went away meanwhile included: the caller tries
/// again later).
fn maps_in_use() -> Option<HashSet<u32>> {
    let mut used = HashSet::new();
    for p in aya::programs::loaded_programs() {
        let ids = p.ok()?.map_ids().ok()??;
        used.extend(ids);
    }
    Some(used)
}

/// [`retire_unused`] after hooks were detached: their programs are freed a
/// grace period (or more: a link is released from a work queue) later, so
/// it is tried until no pin is left or `within` has passed. Returns how
/// many objects' arrays stay pinned.
pub fn retire_detached(pin_dir: &Path, within: std::time::Duration) -> usize {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = retire_unused(pin_dir);
        if left == 0 || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes every object's pinned accounting arrays (uninstall: no hook of
/// ours is left).
pub fn remove_all(pin_dir: &Path) {
    let _ = std::fs::remove_dir_all(pin_dir.join(ACCOUNTING_PINS));
}
