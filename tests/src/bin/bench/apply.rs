//! `bench apply`: how fast a policy change is live, and how much memory the
//! agent needs for a large policy (issue 11's remediation targets).
//!
//! All through the CLI against a running agent, as an operator would:
//!
//! - full apply: the 1,024-channel policy of the per-packet table (64 IPv4
//!   and 64 IPv6 /32 and /128 sources per channel: 65,536 prefixes per
//!   family), cycling through three variants in which every table entry
//!   differs, so each apply writes every entry into the inactive
//!   generation (whose stale entries the agent prunes after the previous
//!   switch, between the applies; an agent without the prune removes them
//!   in the apply). Median of [`RUNS`] applies.
//! - one-channel change: a series of edits, each changing one more
//!   channel's port than the live policy (as an operator edits a file and
//!   applies it, change after change). The inactive generation each apply
//!   writes holds the policy from two applies before, so it writes two
//!   channels' entries. Median of [`RUNS`].
//! - the agent's RSS with no policy, at rest with the policy (after the
//!   applies, once a few samples have passed), and at its peak (VmHWM).
//!
//! `TC_BENCH_BASELINE_AGENT=/path/to/tc-agent` measures a second binary
//! (an older build) in the same run, as the baseline column.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tc_tests::netns::{write_policy, Agent, Pair};

/// Applies measured per case.
const RUNS: usize = 7;
/// Issue 11's targets.
const TARGET_FULL_MS: f64 = 150.0;
const TARGET_ONE_MS: f64 = 20.0;
const TARGET_REST_MIB: f64 = 40.0;
const TARGET_PEAK_MIB: f64 = 64.0;

/// One variant of the 1,024-channel policy.
#[derive(Clone, Copy)]
struct Variant {
    /// Third octet base of the IPv4 sources (198.18/15 only).
    v4_net: u8,
    /// Group of the IPv6 sources (2001:db8:G::/48).
    v6_group: u16,
    /// Channels name their prefixes in reverse order (every entry's channel
    /// set differs from the plain variant's).
    reversed: bool,
    /// How many channels, from the first, have their port changed (the
    /// one-channel changes: each edit changes one more).
    changed: usize,
}

const CHANNELS: usize = 1024;
const PREFIXES: usize = 64;

fn policy_text(v: Variant) -> String {
    let mut t = String::from("channels:\n");
    for i in 0..CHANNELS {
        let port = 1000 + i + if i < v.changed { 5000 } else { 0 };
        t.push_str(&format!(
            "  - name: ch{i}\n    protocol: udp\n    ports: [{port}]\n    from: ["
        ));
        let owner = if v.reversed { CHANNELS - 1 - i } else { i };
        for j in 0..PREFIXES {
            let n = owner * PREFIXES + j;
            t.push_str(&format!(
                "\"198.{}.{}.{}/32\",\"2001:db8:{:x}::{:x}/128\",",
                v.v4_net,
                (n >> 8) & 0xff,
                n & 0xff,
                v.v6_group,
                n & 0xffff
            ));
        }
        t.push_str("]\n    limit: {bandwidth: 400Gbit, packets: 100000000}\n");
    }
    t
}

/// VmRSS and VmHWM of a process, MiB.
fn memory_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One `tc-agent apply`: wall time of the CLI, the agent's own "live in"
/// figure, and the table entries it reports.
fn apply(agent: &Agent, file: &Path) -> Result<(f64, f64, u64)> {
    let t = Instant::now();
    let v = agent.json(&["apply", file.to_str().context("path")?])?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    Ok((
        wall,
        v["took_ms"].as_f64().unwrap_or(f64::NAN),
        v["table_entries"].as_u64().unwrap_or(0),
    ))
}

/// The figures of one agent binary.
struct Figures {
    /// Full apply, the CLI's wall time (median), ms.
    full_ms: f64,
    /// Full apply, the agent's own "live in" figure (median), ms.
    full_agent_ms: f64,
    /// One-channel change, the CLI's wall time (median), ms.
    one_ms: f64,
    /// One-channel change, the agent's "live in" figure (median), ms.
    one_agent_ms: f64,
    /// Table entries of the policy, as the agent reports them.
    entries: u64,
    /// RSS with no policy, MiB.
    start_mib: f64,
    /// RSS at rest with the policy, MiB.
    rest_mib: f64,
    /// Peak RSS (VmHWM), MiB.
    peak_mib: f64,
}

fn measure(label: &str) -> Result<Figures> {
    println!("  {label}: starting an agent");
    let pair = Pair::new()?;
    let empty = write_policy("bench-apply-empty", "channels: []\n");
    let agent = Agent::start(&pair.server, &pair.server_if, &empty)?;
    let pid = agent.pid().context("agent pid")?;
    std::thread::sleep(Duration::from_secs(1));
    let (start_mib, _) = memory_mib(pid)?;
    let plain = Variant {
        v4_net: 18,
        v6_group: 0,
        reversed: false,
        changed: 0,
    };
    let variants = [
        plain,
        Variant {
            v4_net: 19,
            v6_group: 1,
            ..plain
        },
        Variant {
            v6_group: 2,
            reversed: true,
            ..plain
        },
    ];
    let files: Vec<_> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| write_policy(&format!("bench-apply-{i}"), &policy_text(*v)))
        .collect();
    // Two rounds first, so every generation holds a different variant.
    for f in files.iter().take(2) {
        apply(&agent, f)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mut full, mut full_agent) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (w, a, _) = apply(&agent, &files[(i + 2) % 3])?;
        full.push(w);
        full_agent.push(a);
        // Past the agent's sampling period (200 ms in the harness), so the
        // previous switch is settled as it would be between two operators'
        // applies.
        std::thread::sleep(Duration::from_millis(300));
    }
    // From the plain variant, one more channel changed per apply: the
    // first two edits bring both generations within one edit of the next.
    let edits: Vec<_> = (1..=RUNS + 2)
        .map(|k| {
            write_policy(
                &format!("bench-apply-edit-{k}"),
                &policy_text(Variant {
                    changed: k,
                    ..plain
                }),
            )
        })
        .collect();
    apply(&agent, &files[0])?;
    std::thread::sleep(Duration::from_millis(300));
    for f in &edits[..2] {
        apply(&agent, f)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mut one, mut one_agent, mut entries) = (Vec::new(), Vec::new(), 0);
    for f in &edits[2..] {
        let (w, a, n) = apply(&agent, f)?;
        one.push(w);
        one_agent.push(a);
        entries = n;
        std::thread::sleep(Duration::from_millis(300));
    }
    // At rest: several samples after the last apply.
    std::thread::sleep(Duration::from_secs(3));
    let (rest_mib, peak_mib) = memory_mib(pid)?;
    Ok(Figures {
        full_ms: median(full),
        full_agent_ms: median(full_agent),
        one_ms: median(one),
        one_agent_ms: median(one_agent),
        entries,
        start_mib,
        rest_mib,
        peak_mib,
    })
}

/// The apply table.
pub fn run() -> Result<serde_json::Value> {
    println!(
        "\napply: {CHANNELS} channels x {PREFIXES} IPv4 + {PREFIXES} IPv6 sources, via the CLI, median of {RUNS}:"
    );
    let now = measure("this build")?;
    let baseline = match std::env::var_os("TC_BENCH_BASELINE_AGENT") {
        Some(bin) => {
            let ours = tc_tests::netns::agent_bin();
            // The benchmark is single-threaded here; the harness
            // reads TC_AGENT_BIN when it starts an agent.
            std::env::set_var("TC_AGENT_BIN", &bin);
            let r = measure("baseline binary");
            std::env::set_var("TC_AGENT_BIN", ours);
            Some(r?)
        }
        None => None,
    };
    println!(
        "{:<38} {:>12} {:>12} {:>10} {:>8}",
        "CASE", "this build", "baseline", "target", "ok"
    );
    let row = |name: &str, v: f64, b: Option<f64>, target: f64| {
        println!(
            "{name:<38} {v:>12.1} {:>12} {target:>10.0} {:>8}",
            b.map_or("-".to_string(), |b| format!("{b:.1}")),
            if v <= target { "yes" } else { "NO" }
        );
    };
    let b = baseline.as_ref();
    row(
        "full apply, CLI wall (ms)",
        now.full_ms,
        b.map(|b| b.full_ms),
        TARGET_FULL_MS,
    );
    row(
        "one-channel change, CLI wall (ms)",
        now.one_ms,
        b.map(|b| b.one_ms),
        TARGET_ONE_MS,
    );
    row(
        "agent RSS at rest with the policy (MiB)",
        now.rest_mib,
        b.map(|b| b.rest_mib),
        TARGET_REST_MIB,
    );
    row(
        "agent RSS peak, VmHWM (MiB)",
        now.peak_mib,
        b.map(|b| b.peak_mib),
        TARGET_PEAK_MIB,
    );
    println!(
        "(agent's own \"live in\": full {:.1} ms, one channel {:.1} ms; {} table entries; RSS with no policy {:.1} MiB)",
        now.full_agent_ms, now.one_agent_ms, now.entries, now.start_mib
    );
    let doc = |f: &Figures| {
        serde_json::json!({
            "full_apply_cli_ms": f.full_ms, "full_apply_agent_ms": f.full_agent_ms,
            "one_channel_cli_ms": f.one_ms, "one_channel_agent_ms": f.one_agent_ms,
            "table_entries": f.entries,
            "rss_no_policy_mib": f.start_mib, "rss_rest_mib": f.rest_mib, "rss_peak_mib": f.peak_mib,
        })
    };
    Ok(serde_json::json!({
        "channels": CHANNELS, "prefixes_per_channel_per_family": PREFIXES, "runs": RUNS,
        "this_build": doc(&now),
        "baseline": b.map(doc),
        "targets": {"full_apply_ms": TARGET_FULL_MS, "one_channel_ms": TARGET_ONE_MS,
                    "rss_rest_mib": TARGET_REST_MIB, "rss_peak_mib": TARGET_PEAK_MIB},
    }))
}
