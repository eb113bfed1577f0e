//! Removing the datapath from a node: the explicit act that a stopped
//! agent never performs by itself. Used by `tc-agent uninstall` and by
//! `tc-agent run --detach-on-exit`.

use std::{path::Path, time::Duration};

use anyhow::Result;
use serde::Serialize;
use tracing::{info, warn};

use super::state::SavedState;
use crate::datapath::{
    accounting,
    attach::{self, HookKind, Mechanism},
    qdisc, sys, Datapath,
};

/// What an uninstall did.
#[derive(Debug, Default, Serialize)]
pub struct UninstallReport {
    /// Hooks detached, as `iface/kind`.
    pub detached: Vec<String>,
    /// Interfaces whose default qdisc was restored (fq was ours).
    pub qdiscs_restored: Vec<String>,
    /// Whether the pinned maps (policy, buckets, counters) were removed:
    /// only when every interface was uninstalled.
    pub maps_removed: bool,
    /// What could not be undone, with the reason.
    pub failed: Vec<String>,
}

/// Detaches the hooks of `ifaces` (all when `None`), restores the qdiscs the
/// agent installed there and, when all are gone, removes the pinned maps
/// and the saved state. Accounting program arrays go once no loaded
/// program uses them (see `datapath::accounting`). The caller holds the
/// directory locks, and no program of its own is loaded.
pub fn uninstall(
    pin_dir: &Path,
    state_dir: &Path,
    ifaces: Option<&[String]>,
) -> Result<UninstallReport> {
    let state_file = state_dir.join("state.json");
    let mut state = SavedState::load(&state_file).unwrap_or_default();
    let links = pin_dir.join("links");
    let wanted = |iface: &str| ifaces.is_none_or(|l| l.iter().any(|i| i == iface));
    let mut report = UninstallReport::default();

    // Pinned links (TCX, XDP): found by their pins, whatever the state says.
    for (iface, kind, path) in attach::pinned_hooks(&links) {
        if !wanted(&iface) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => report.detached.push(format!("{iface}/{kind}")),
            Err(e) => report.failed.push(format!("{}: {e}", path.display())),
        }
    }
    // Netlink filters (before Linux 6.6) have no pin: every interface is
    // probed for ours (fixed priority and handle), whatever the saved state
    // remembers, so a lost state file cannot leave one enforcing.
    if !sys::has_tcx() {
        for iface in sys::interfaces().into_iter().filter(|i| wanted(i)) {
            for kind in [HookKind::TcIngress, HookKind::TcEgress] {
                if attach::detach_netlink(&iface, kind).is_ok() {
                    report.detached.push(format!("{iface}/{kind}"));
                }
            }
        }
    }
    for h in state.hooks.iter().filter(|h| wanted(&h.iface)) {
        let name = format!("{}/{}", h.iface, h.kind);
        if h.mechanism == Mechanism::Netlink && !report.detached.contains(&name) {
            // Its interface is gone, or the filter was removed by hand.
            info!(hook = %name, "no filter left to detach");
        }
    }
    state.hooks.retain(|h| !wanted(&h.iface));

    let mut fq_left = Vec::new();
    for iface in std::mem::take(&mut state.fq_installed) {
        if !wanted(&iface) {
            fq_left.push(iface);
            continue;
        }
        match qdisc::restore(&iface) {
            Ok(()) => report.qdiscs_restored.push(iface),
            Err(e) => {
                report
                    .failed
                    .push(format!("restoring the qdisc of {iface}: {e:#}"));
                fq_left.push(iface);
            }
        }
    }
    state.fq_installed = fq_left;

    let hooks_left = !attach::pinned_hooks(&links).is_empty() || !state.hooks.is_empty();
    if ifaces.is_none() && !hooks_left {
        // No program of ours is left in a hook. The detached ones are
        // freed a little later: their arrays go once they are (emptying an
        // array rewrites the code of the programs using it), or after 5 s.
        if accounting::retire_detached(pin_dir, Duration::from_secs(5)) > 0 {
            warn!("programs using the accounting arrays are still loaded after 5 s; removing their pins anyway");
        }
        accounting::remove_all(pin_dir);
    } else {
        // Hooks on other interfaces (the saved state may not know them all:
        // a netlink filter has no pin) keep their programs' arrays.
        accounting::retire_detached(pin_dir, Duration::from_secs(1));
    }
    let anything_left = hooks_left || !state.fq_installed.is_empty();
    if ifaces.is_none() && !anything_left {
        Datapath::unpin_all(pin_dir);
        let _ = std::fs::remove_dir(&links);
        let _ = std::fs::remove_dir(pin_dir);
        let _ = std::fs::remove_file(&state_file);
        report.maps_removed = true;
    } else if let Err(e) = state.save(&state_file) {
        warn!(error = %e, "cannot save agent state after uninstall");
    }
    for d in &report.detached {
        info!(hook = %d, "detached");
    }
    Ok(report)
}
