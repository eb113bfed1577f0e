//! `tc-agent status`: what the agent is attached to and running.

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::control::{request, Request, StateCheck, StatusReport};

/// Show interfaces and hooks, kernel features in use, the live policy
/// generation, the connection table and its collector, and the agent's
/// uptime.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: StatusArgs, socket: &std::path::Path) -> Result<()> {
    let data = request(socket, &Request::Status)?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let s: StatusReport = serde_json::from_value(data)?;
    println!(
        "agent      pid {}, up {}s, socket {}",
        s.pid, s.uptime_s, s.socket
    );
    println!(
        "kernel     {} (TCX: {}, BTF: {}, delay/EDT: {})",
        s.kernel,
        yes(s.features.tcx),
        yes(s.features.btf),
        if s.features.delay {
            "yes (fq)"
        } else {
            "no, the kernel lacks the fq qdisc"
        }
    );
    if s.version == 0 {
        println!("policy     none applied yet: traffic is only counted");
    } else {
        println!(
            "policy     version {}, {} channels, from {}",
            s.version,
            s.channels,
            s.policy_file.as_deref().unwrap_or("(unknown)")
        );
    }
    match &s.state {
        StateCheck::Mismatch(why) => println!("WARNING    {why}"),
        StateCheck::Recovered(why) => println!("NOTE       {why}"),
        StateCheck::Consistent => {}
    }
    if s.unnamed_channels > 0 {
        println!(
            "WARNING    the kernel enforces {} channels the agent cannot name; apply a policy to take them over",
            s.unnamed_channels
        );
    }
    println!("pins       {}", s.pin_dir);
    let c = &s.connections;
    println!(
        "conns      table {} of {} entries; timeouts {}s handshake, {}s established, {}s closing; collector every {}ms, {} released by timeout{}",
        c.entries,
        c.table_size,
        c.timeout_syn_s,
        c.timeout_established_s,
        c.timeout_closing_s,
        c.collect_interval_ms,
        c.released_by_timeout,
        if c.draining_pools > 0 {
            format!(", {} removed channels draining", c.draining_pools)
        } else {
            String::new()
        }
    );
    if !s.fq_on.is_empty() {
        println!(
            "fq         installed by the agent on {} (`tc-agent uninstall` restores the default)",
            s.fq_on.join(", ")
        );
    }
    println!("hooks");
    for h in &s.hooks {
        println!(
            "  {:<16} {:<12} {:?}{}",
            h.iface,
            h.hook.to_string(),
            h.mechanism,
            if h.replaced {
                " (taken over from a previous agent)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
