//! Thin binary: parse the command line, set up logging, run.

use clap::Parser;
use tc_agent::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A report piped into `head` ends quietly, as other tools do. Not
        // for `run`: the agent must survive a client that hangs up.
        // SAFETY: restores the default disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // Entering a network namespace only affects the calling thread: do it
    // before the runtime starts any other.
    if let Some(ns) = cli::netns_of(&cli) {
        if let Err(e) = tc_agent::datapath::sys::enter_netns(ns) {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
    if let Err(e) = cli.execute() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
