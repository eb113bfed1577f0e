//! What the agent keeps on disk between runs: the live policy (so pinned
//! counters can be named after a restart), counters of earlier generations,
//! and what it changed on the node (hooks, qdiscs) so that `tc-agent
//! uninstall` can undo it without an agent.

use std::{collections::HashMap, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    control::Totals,
    datapath::attach::{HookKind, Mechanism},
    policy::Policy,
};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    /// Generation the policy below is live in; ignored if the maps disagree.
    pub generation: u32,
    /// Policy version the policy below was applied as; ignored if the
    /// kernel's config map holds another.
    #[serde(default)]
    pub version: u64,
    /// Digest of the tables that version wrote (`datapath::digest`): the
    /// saved policy names the kernel's channels only if the kernel still
    /// holds exactly these tables.
    #[serde(default)]
    pub digest: u64,
    /// The live policy, in slot order.
    pub policy: Policy,
    /// The file it came from.
    pub policy_file: Option<String>,
    /// Counters of earlier generations, by channel name.
    pub carried: HashMap<String, Totals>,
    /// Interfaces where the agent installed fq, to restore on uninstall.
    #[serde(default)]
    pub fq_installed: Vec<String>,
    /// Hooks the agent attached, which stay attached when it stops; netlink
    /// filters (before Linux 6.6) have no pin to find them by.
    #[serde(default)]
    pub hooks: Vec<SavedHook>,
}

/// One hook as `uninstall` needs to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHook {
    /// Interface name.
    pub iface: String,
    /// Which hook.
    pub kind: HookKind,
    /// How it is attached: a pinned link, or a netlink filter.
    pub mechanism: Mechanism,
}

/// [`SavedState`] as the agent writes it: borrowed from the agent, so a
/// save copies neither the policy nor the counters (the same JSON fields).
#[derive(Debug, Serialize)]
pub struct SavedStateRef<'a> {
    /// As [`SavedState::generation`].
    pub generation: u32,
    /// As [`SavedState::version`].
    pub version: u64,
    /// As [`SavedState::digest`].
    pub digest: u64,
    /// As [`SavedState::policy`].
    pub policy: &'a Policy,
    /// As [`SavedState::policy_file`].
    pub policy_file: &'a Option<String>,
    /// As [`SavedState::carried`].
    pub carried: &'a HashMap<String, Totals>,
    /// As [`SavedState::fq_installed`].
    pub fq_installed: &'a [String],
    /// As [`SavedState::hooks`].
    pub hooks: Vec<SavedHook>,
}

impl SavedStateRef<'_> {
    /// Writes atomically and durably: a temporary file, fsync, rename, so a
    /// crash leaves either the old state or the new one, never a torn file.
    /// Compact JSON, streamed: no second copy of a large policy in memory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        serde_json::to_writer(&mut w, self)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl SavedState {
    /// Writes it as [`SavedStateRef::save`] does.
    pub fn save(&self, path: &Path) -> Result<()> {
        SavedStateRef {
            generation: self.generation,
            version: self.version,
            digest: self.digest,
            policy: &self.policy,
            policy_file: &self.policy_file,
            carried: &self.carried,
            fq_installed: &self.fq_installed,
            hooks: self.hooks.clone(),
        }
        .save(path)
    }

    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
