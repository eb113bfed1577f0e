//! The command line: one module per subcommand.

mod apply;
mod channels;
mod events;
mod history;
mod map;
mod run;
mod status;
mod suggest;
mod top;
mod top_talkers;
mod uninstall;
mod validate;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::control::DEFAULT_SOCKET;

/// Kernel-level traffic controller: classify traffic into channels
/// (sources x destinations x protocol x ports) with eBPF, and hold each
/// channel to its bandwidth and packet-rate limits.
///
/// Start the agent on a node with `tc-agent run`, then drive it with
/// `apply`, `channels` and `status`; `top` is a live terminal view. See
/// who talks to whom with `map`, the heaviest single sources with
/// `top-talkers`, and a channel or an interaction over the last 24 hours
/// with `history`. The agent flags demand spikes, upstream collapses and
/// floods by itself: `events` lists them and `suggest ID` writes the
/// policy that answers one. `validate` checks a policy file offline. A stopped agent
/// leaves the node enforced; `uninstall` removes the datapath.
#[derive(Debug, Parser)]
#[command(name = "tc-agent", version, propagate_version = true)]
pub struct Cli {
    /// Control socket of the agent to talk to (or to serve, for `run`).
    #[arg(long, global = true, env = "TC_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::RunArgs),
    Apply(apply::ApplyArgs),
    Validate(validate::ValidateArgs),
    Channels(channels::ChannelsArgs),
    Status(status::StatusArgs),
    Map(map::MapArgs),
    TopTalkers(top_talkers::TopTalkersArgs),
    History(history::HistoryArgs),
    Events(events::EventsArgs),
    Suggest(suggest::SuggestArgs),
    Top(top::TopArgs),
    Uninstall(uninstall::UninstallArgs),
}

/// Where an agent keeps its node-wide state: `run` and `uninstall` must
/// name the same directories (and namespace).
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// bpffs directory for pinned maps and links (mounted if missing).
    #[arg(long, default_value = "/sys/fs/bpf/tc-agent", value_name = "DIR")]
    pub pin_dir: PathBuf,

    /// Directory for the lock, the pid file and the saved state.
    #[arg(long, default_value = "/run/tc-agent", value_name = "DIR")]
    pub state_dir: PathBuf,

    /// Enter this network namespace (`ip netns add NAME`) before anything
    /// else, keeping the host's bpffs for pins.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// How to print a report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> Result<()> {
        match self.command {
            Command::Run(a) => run::execute(a, self.socket),
            Command::Apply(a) => apply::execute(a, &self.socket),
            Command::Validate(a) => validate::execute(a),
            Command::Channels(a) => channels::execute(a, &self.socket),
            Command::Status(a) => status::execute(a, &self.socket),
            Command::Map(a) => map::execute(a, &self.socket),
            Command::TopTalkers(a) => top_talkers::execute(a, &self.socket),
            Command::History(a) => history::execute(a, &self.socket),
            Command::Events(a) => events::execute(a, &self.socket),
            Command::Suggest(a) => suggest::execute(a, &self.socket),
            Command::Top(a) => top::execute(a, &self.socket),
            Command::Uninstall(a) => uninstall::execute(a),
        }
    }
}

/// `--netns` must be entered before any thread starts; `main` asks this first.
pub fn netns_of(cli: &Cli) -> Option<&str> {
    match &cli.command {
        Command::Run(a) => a.node.netns.as_deref(),
        Command::Uninstall(a) => a.node.netns.as_deref(),
        _ => None,
    }
}
