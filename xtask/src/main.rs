//! Project tasks. `cargo xtask test` runs every test; `cargo xtask demo`
//! shows backpressure on a noisy client in network namespaces. Both install
//! missing dependencies first (scripts/install-deps.sh, idempotent).

mod demo;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "tc-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing build and test dependencies (Debian packages, bpf-linker).
    InstallDeps,
    /// Build, then run unit, BPF_PROG_TEST_RUN and namespace traffic tests (needs root).
    Test,
    /// Demo: three clients and a service in namespaces; throttle the noisy one.
    Demo,
    /// Per-packet cost, enforcement accuracy vs TBF/HTB with ping RTT, attach cost; writes target/bench.json.
    Bench,
}

/// Runs a command, failing if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs cargo (the one running xtask) in the workspace root.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root()).args(args))
}

fn install_deps() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/install-deps.sh")))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::InstallDeps => install_deps(),
        Task::Test => {
            install_deps()?;
            // The traffic tests drive the real binary: build it first.
            cargo(&["build", "--workspace", "--bins"])?;
            cargo(&["test", "--workspace"])
        }
        Task::Demo => {
            install_deps()?;
            cargo(&["build", "--release", "-p", "tc-agent"])?;
            demo::run(&root().join("target/release/tc-agent"))
        }
        Task::Bench => {
            install_deps()?;
            // The accuracy part drives the real agent binary.
            cargo(&["build", "--release", "-p", "tc-agent"])?;
            cargo(&[
                "run",
                "--quiet",
                "--release",
                "-p",
                "tc-tests",
                "--bin",
                "bench",
            ])
        }
    }
}
