//! `tc-agent status`: what the agent is attached to and running.

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::control::{request, Request, StatusReport};

/// Show interfaces and hooks, kernel features in use, the live policy
/// generation and the agent's uptime.
#[derive(Debug, Args)]
pub struct StatusArgs {
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
    println!(
        "policy     generation {}, {} channels, from {}",
        s.generation,
        s.channels,
        s.policy_file.as_deref().unwrap_or("(none)")
    );
    println!("pins       {}", s.pin_dir);
    if !s.fq_on.is_empty() {
        println!(
            "fq         installed by the agent on {} (restored on shutdown)",
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
