//! `tc-agent uninstall`: remove the datapath from a node.

use anyhow::Result;
use clap::Args;

use super::{NodeArgs, Output};
use crate::{
    agent::{lock_dirs, uninstall},
    datapath::sys,
};

/// Detach the programs, restore the qdiscs the agent installed, and remove
/// the pinned maps and saved state, leaving the node as it was before any
/// agent ran.
///
/// A stopped agent leaves the datapath attached and enforcing; this is the
/// explicit act that removes it. Stop the agent first: uninstall refuses
/// while one holds the state or pin directory. With --iface, only those
/// interfaces are uninstalled and the policy stays pinned for the others.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Only this interface (repeat for several); all by default.
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: UninstallArgs) -> Result<()> {
    sys::require_root()?;
    let NodeArgs {
        pin_dir, state_dir, ..
    } = &args.node;
    sys::ensure_bpffs(pin_dir)?;
    let _locks = lock_dirs(state_dir, pin_dir)?;
    let only = (!args.ifaces.is_empty()).then_some(args.ifaces.as_slice());
    let report = uninstall(pin_dir, state_dir, only)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => {
            if report.detached.is_empty() {
                println!("no hooks were attached");
            } else {
                println!("detached: {}", report.detached.join(", "));
            }
            if !report.qdiscs_restored.is_empty() {
                println!(
                    "restored the default qdisc on: {}",
                    report.qdiscs_restored.join(", ")
                );
            }
            if report.maps_removed {
                println!("removed the pinned maps and the saved state");
            }
        }
    }
    if !report.failed.is_empty() {
        anyhow::bail!("could not undo: {}", report.failed.join("; "));
    }
    Ok(())
}
