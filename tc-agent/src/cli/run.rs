//! `tc-agent run`: the daemon, in the foreground.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::Args;
use nix::sys::stat::Mode;
use tokio::signal::unix::{signal, SignalKind};

use super::NodeArgs;
use crate::agent::{self, AgentConfig, SocketGroup};

/// Load the datapath, attach it to interfaces and serve the control socket
/// until SIGTERM or SIGINT.
///
/// Each --iface gets a tc ingress and a tc egress program (TCX on Linux 6.6+,
/// clsact before). Maps and links are pinned under --pin-dir. A stopped
/// agent (SIGTERM, SIGINT, or killed) leaves the programs attached and
/// enforcing the live policy; the next agent swaps its programs into the
/// same hooks atomically and keeps buckets and counters. Removing the
/// datapath is an explicit act: `tc-agent uninstall`, or --detach-on-exit.
/// Runs in the foreground and logs to stderr (RUST_LOG=debug for more): fit
/// for a systemd `Type=simple` unit.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// Use XDP instead of tc for this interface's ingress (early drop for
    /// floods). XDP on veth turns TSO off on the peer, so it is opt-in.
    #[arg(long = "xdp", value_name = "IFACE")]
    pub xdp: Vec<String>,

    /// Policy file to validate and apply at start. Without it, a policy left
    /// live by a previous agent (pinned maps) keeps being enforced.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    #[command(flatten)]
    pub node: NodeArgs,

    /// Counter sampling period in milliseconds (rates and history).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub sample_ms: u64,

    /// On SIGTERM/SIGINT, detach the programs, restore qdiscs and remove
    /// the pinned maps and state, leaving nothing behind (tests, demos).
    /// Without it, the node stays enforced while no agent runs.
    #[arg(long)]
    pub detach_on_exit: bool,

    /// Let members of GROUP (a name or a gid) run the read-only commands,
    /// `status` and `channels`; `apply` stays root-only. The socket becomes
    /// 0660 with that group and, when it lives in --state-dir (the
    /// default), that directory 0710 with that group. A socket elsewhere
    /// needs a directory the group can search. Without it only root may
    /// connect (socket 0600). The agent checks every peer's credentials
    /// either way.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Entries of the connection table (TCP connections of channels with
    /// connection limits, both families). When it is full, new connections
    /// of those channels are refused and counted, never let through
    /// uncounted. Takes effect when the table is created: a pinned table
    /// keeps its size until `tc-agent uninstall`. Memory follows the
    /// connections open, about 100 bytes each.
    #[arg(long, default_value_t = tc_common::DEFAULT_MAX_CONNS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub conn_table_size: u32,

    /// Seconds a handshake may take (SYN seen, not yet established) before
    /// its connection stops counting.
    #[arg(long, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub conn_timeout_syn: u64,

    /// Seconds an established connection may stay idle before it stops
    /// counting. The default outlasts Linux's TCP keepalive (7,200 s, then
    /// 9 probes 75 s apart), so a connection kept alive is never dropped
    /// from the count; a peer that vanished without FIN or RST is.
    #[arg(long, default_value_t = 7_875, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub conn_timeout_established: u64,

    /// Seconds a connection may stay idle after a FIN or an RST.
    #[arg(long, default_value_t = 10, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub conn_timeout_closing: u64,

    /// Entries of the interaction table: (client, server, protocol, server
    /// port) tuples counted one by one, for `map`, `top-talkers` and
    /// `/metrics`. When it fills, the agent sheds the quietest entries and
    /// the datapath admits a new client only once a sketch says it is
    /// heavy; the rest count as `other` toward the same server, so totals
    /// stay whole and a flood of small sources cannot hide the heavy ones.
    /// Takes effect when the table is created (a pinned one keeps its size
    /// until `tc-agent uninstall`); about 200 bytes per entry and CPU.
    #[arg(long, default_value_t = tc_common::DEFAULT_MAX_INTERACTIONS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(256..=4_194_304))]
    pub interaction_table_size: u32,

    /// Distinct addresses outside every endpoint set that `map` shows at
    /// most; the quietest of the others fold into `other`.
    #[arg(long, default_value_t = crate::observe::interactions::DEFAULT_MAX_UNNAMED as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_unnamed: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT, e.g.
    /// 127.0.0.1:9464 or [::1]:9464; in the --netns namespace when one is
    /// given). Off by default. Per-channel verdict and connection counters,
    /// node counters, and interactions by endpoint set, read from the last
    /// sample without waiting for the agent. The endpoint has no
    /// authentication: bind a loopback or management address. The
    /// Grafana dashboard deploy/grafana/tc-agent.json plots them.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Do not feed the detectors (no events): the benchmark's baseline for
    /// what detection costs. Not for operators, so hidden from --help.
    #[arg(long, hide = true)]
    pub no_detect: bool,
}

/// `--metrics-addr`: an IP and a port, nothing to resolve, port not 0.
fn parse_metrics_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("`{s}` is not IP:PORT (e.g. 127.0.0.1:9464, or [::1]:9464 for IPv6)")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "`{s}`: port 0 is no fixed port for Prometheus to scrape"
        ));
    }
    Ok(addr)
}

pub fn execute(args: RunArgs, socket: PathBuf) -> Result<()> {
    for x in &args.xdp {
        if !args.ifaces.contains(x) {
            anyhow::bail!("--xdp {x}: also name it with --iface {x}");
        }
    }
    let socket_group = args
        .socket_group
        .as_deref()
        .map(SocketGroup::resolve)
        .transpose()?;
    // Whatever the agent creates (state, lock, socket) is private unless
    // it says otherwise.
    nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    let config = AgentConfig {
        ifaces: args.ifaces,
        xdp: args.xdp,
        policy: args.policy,
        pin_dir: args.node.pin_dir,
        state_dir: args.node.state_dir,
        socket,
        sample_every: Duration::from_millis(args.sample_ms.max(100)),
        detach_on_exit: args.detach_on_exit,
        socket_group,
        conn_table_size: args.conn_table_size,
        conn_timeouts: tc_common::ConnConfig {
            syn_ns: args.conn_timeout_syn * 1_000_000_000,
            established_ns: args.conn_timeout_established * 1_000_000_000,
            closing_ns: args.conn_timeout_closing * 1_000_000_000,
        },
        interaction_table_size: args.interaction_table_size,
        max_unnamed: args.max_unnamed as usize,
        metrics_addr: args.metrics_addr,
        detect: !args.no_detect,
    };
    tune_allocator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        };
        agent::run(config, shutdown).await
    })
}

/// Tunes glibc's allocator for an agent whose applies allocate and free
/// tens of megabytes around a resident policy of a few. Called before any
/// thread starts.
///
/// - **One heap arena for every thread.** By default each thread that
///   allocates gets its own arena, and an apply that parses on one thread
///   and compiles on another leaves freed megabytes in several arenas that
///   `malloc_trim` cannot give back whole: measured with a 1,024-channel
///   policy after its first apply, the agent at rest held 68 MB with
///   per-thread arenas and 37 MB with one. The agent's threads take turns
///   on one lock anyway, so they barely contend on the arena's.
/// - **A fixed mmap threshold (256 KiB).** By default glibc raises the
///   threshold to the size of the largest block freed, so after the first
///   apply the next applies' buffers of megabytes (compiled tables, the
///   record of the tables) come from the heap, between the policy's small
///   blocks, and leave it fragmented. A fixed threshold keeps them in
///   mappings of their own, returned whole when freed. Measured with
///   `cargo xtask bench` (`bench apply`, twenty applies of the
///   1,024-channel policy), one run without it and four with it: RSS at
///   rest 42.1 MiB without, 38.3 to 40.4 MiB with; peak 58.7 MiB
///   without, 55.9 to 56.1 MiB with. The cost is
///   fresh pages for those buffers on every apply (the prefix covers'
///   sets above all): a one-channel change took 11-16 ms more in `bench
///   apply`'s paired runs (the agent's own steps, with and without the
///   threshold alone: compile 13 -> 24 ms, record 8 -> 10 ms).
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning; no thread runs yet.
    unsafe {
        // mallopt returns 1 on success; both values are within its range.
        let arenas = libc::mallopt(libc::M_ARENA_MAX, 1);
        let threshold = libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        if (arenas, threshold) != (1, 1) {
            tracing::warn!(
                arenas,
                threshold,
                "glibc refused an allocator setting: memory at rest will be higher"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_metrics_addr;

    #[test]
    fn metrics_addr_takes_ip_and_port_only() {
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9464").unwrap(),
            "127.0.0.1:9464".parse().unwrap()
        );
        assert!(parse_metrics_addr("[::1]:9464").is_ok());
        for bad in [
            "localhost:9464",
            "127.0.0.1",
            "9464",
            "127.0.0.1:0",
            "1.2.3.4:99999",
        ] {
            let e = parse_metrics_addr(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
