//! Project tasks. `cargo xtask test` runs every test; `cargo xtask demo`
//! shows backpressure on a noisy client in network namespaces. Both install
//! missing dependencies first (scripts/install-deps.sh, idempotent).

mod bpffs;
mod demo;
mod fuzz;
mod vm;

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
    /// Build, then run unit, BPF_PROG_TEST_RUN and namespace traffic tests on
    /// this kernel, then the kernel-dependent suites in qemu on 6.1 and 6.12 (needs root).
    Test {
        /// Skip the qemu kernel matrix.
        #[arg(long)]
        skip_vm: bool,
    },
    /// Demo: three clients and a service in namespaces; throttle the noisy
    /// one, then cap a batch client set's connections to a service whose
    /// connection pool it drains, then let the agent find a flood in a
    /// crowd of clients and hold the flooders with its own suggestion.
    Demo {
        /// Run only this act (the crowd still starts first: the flood act
        /// waits for its baseline).
        #[arg(long, value_enum)]
        only: Option<demo::Act>,
    },
    /// The demo's service and load generators, run inside its namespaces.
    #[command(hide = true)]
    DemoPool {
        #[command(subcommand)]
        role: demo::pool_roles::PoolRole,
    },
    /// The demo's crowd and its UDP service, run inside its namespaces.
    #[command(hide = true)]
    DemoFlood {
        #[command(subcommand)]
        role: demo::flood_roles::FloodRole,
    },
    /// Fuzz the policy parser/compiler and the datapath (BPF_PROG_TEST_RUN,
    /// needs root) in rounds with fresh seeds, longer than `test` does.
    Fuzz {
        /// Policy files per property per round (the packet fuzzer runs 200x as many frames).
        #[arg(long, default_value_t = 5_000)]
        cases: u64,
        /// Start no new round after this many minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Run the kernel-dependent suites in qemu on Debian's 6.1 (clsact) and 6.12 (TCX) kernels.
    VmTest {
        /// Which kernel: 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only this suite, optionally with a test-name filter: `verdicts` or
        /// `verdicts:icmp` (a quick check of one kernel's verifier).
        #[arg(long, value_name = "SUITE[:FILTER]")]
        only: Option<String>,
    },
    /// Only the VM part of `bench`: drop, delay, mark, TBF and HTB at one rate on 6.12.
    VmBench {
        /// Run only these methods (drop, delay, mark, tbf, htb); all by default.
        methods: Vec<String>,
    },
    /// Per-packet cost, enforcement accuracy vs TBF/HTB with ping RTT, attach cost, XDP floods
    /// against a bare XDP_DROP; writes target/bench.json.
    Bench,
    /// Soak: UDP and TCP load on several channels, applies, bad inputs and
    /// agent kills for N minutes; asserts nothing lost or leaked; writes target/soak.json.
    Soak {
        /// Minutes of load.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
    },
}

/// Runs a command, failing if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs cargo (the one running xtask) in the workspace root.
fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).current_dir(root()).args(args))
}

/// Runs cargo with extra environment and returns its stdout (stderr passes through).
pub fn cargo_output(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(args)
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !out.status.success() {
        bail!("cargo {args:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn install_deps() -> Result<()> {
    run(Command::new("bash").arg(root().join("scripts/install-deps.sh")))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::InstallDeps => install_deps(),
        Task::Test { skip_vm } => {
            let _bpffs = bpffs::Guard::new();
            install_deps()?;
            // The traffic tests drive the real binary: build it first.
            cargo(&["build", "--workspace", "--bins"])?;
            cargo(&["test", "--workspace"])?;
            if skip_vm {
                println!("vm-test: skipped (--skip-vm)");
                return Ok(());
            }
            vm::vm_test("all", None)
        }
        Task::Demo { only } => {
            let _bpffs = bpffs::Guard::new();
            install_deps()?;
            cargo(&["build", "--release", "-p", "tc-agent"])?;
            demo::run(&vm::target_dir().join("release/tc-agent"), only)
        }
        Task::DemoPool { role } => demo::pool_roles::role(role),
        Task::DemoFlood { role } => demo::flood_roles::role(role),
        Task::Fuzz { cases, minutes } => {
            let _bpffs = bpffs::Guard::new();
            install_deps()?;
            fuzz::fuzz(cases, minutes)
        }
        Task::VmTest { kernel, only } => {
            install_deps()?;
            vm::vm_test(&kernel, only.as_deref())
        }
        Task::VmBench { methods } => {
            install_deps()?;
            vm::vm_bench(&methods).map(|_| ())
        }
        Task::Bench => {
            let _bpffs = bpffs::Guard::new();
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
            ])?;
            // Delay and mark need fq and netem, which this host kind lacks.
            let actions = vm::vm_bench(&[])?;
            let path = root().join("target/bench-actions.json");
            std::fs::write(&path, serde_json::to_vec_pretty(&actions)?)?;
            println!("written to {}", path.display());
            Ok(())
        }
        Task::Soak { minutes } => {
            let _bpffs = bpffs::Guard::new();
            install_deps()?;
            // Release, as deployed: the RSS and fd figures are the real binary's.
            cargo(&["build", "--release", "-p", "tc-agent"])?;
            let minutes = minutes.to_string();
            cargo(&[
                "run",
                "--quiet",
                "--release",
                "-p",
                "tc-tests",
                "--bin",
                "soak",
                "--",
                "--minutes",
                &minutes,
            ])
        }
    }
}
