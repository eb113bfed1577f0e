//! What the agent keeps on disk between runs: the live policy (so pinned
//! counters can be named after a restart) and counters of earlier generations.

use std::{collections::HashMap, path::Path};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{control::Totals, policy::Policy};

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedState {
    /// Generation the policy below is live in; ignored if the maps disagree.
    pub generation: u32,
    /// The live policy, in slot order.
    pub policy: Policy,
    /// The file it came from.
    pub policy_file: Option<String>,
    /// Counters of earlier generations, by channel name.
    pub carried: HashMap<String, Totals>,
    /// Interfaces where the agent installed fq, to restore on shutdown.
    #[serde(default)]
    pub fq_installed: Vec<String>,
}

impl SavedState {
    /// Writes atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}
