//! `tc-agent suggest`: the policy file that pushes back on one event.

use std::path::Path;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::Output;
use crate::{
    control::{request, Request, SuggestReport},
    policy::Mode,
};

/// Write the policy that answers an event: the live policy, plus, ahead of
/// its channels, an endpoint set for the event's sources and a channel that
/// holds them to their baseline (a limit derived from the agent's history
/// of that traffic, not a constant), with a comment saying why. A spike on
/// a channel sets (or lowers) that channel's own limit in place instead.
///
/// The file goes to stdout, whole and unchanged, so it can be read, kept
/// and applied: `tc-agent suggest dos-1 > answer.yaml && tc-agent apply
/// answer.yaml`. Try `--mode monitor` first for a dry run: the channel
/// counts what it would drop (`tc-agent channels` shows it) and drops
/// nothing.
///
/// ID is an event's id as `tc-agent events` lists it (`dos-1`,
/// `upstream_collapse-2`, `spike-3`); ids count from 1 in each agent run.
/// An event that has ended can still be answered.
#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The event's id, as `tc-agent events` lists it (e.g. `dos-1`).
    #[arg(value_name = "ID")]
    pub id: String,

    /// The suggested channel's mode: `enforce` holds the sources to the
    /// limit; `monitor` only counts what it would drop, for a dry run.
    #[arg(long, value_enum, default_value_t)]
    pub mode: SuggestMode,

    /// Output format: `text` prints the policy file itself; `json` for
    /// scripts (the field names are a contract: `{"id", "mode", "policy":
    /// "<the file's text>", "event": {...}}`).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

/// `--mode`: the suggested channel's mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum SuggestMode {
    /// Hold the sources to the limit: drop what exceeds it.
    #[default]
    Enforce,
    /// Count what would be dropped, drop nothing: a dry run.
    Monitor,
}

impl From<SuggestMode> for Mode {
    fn from(m: SuggestMode) -> Self {
        match m {
            SuggestMode::Enforce => Mode::Enforce,
            SuggestMode::Monitor => Mode::Monitor,
        }
    }
}

pub fn execute(args: SuggestArgs, socket: &Path) -> Result<()> {
    let req = Request::Suggest {
        id: args.id,
        mode: args.mode.into(),
    };
    let data = request(socket, &req)?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: SuggestReport = serde_json::from_value(data)?;
    print!("{}", r.policy);
    if !r.policy.ends_with('\n') {
        println!();
    }
    Ok(())
}
