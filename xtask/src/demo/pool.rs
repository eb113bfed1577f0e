//! The demo's second act, the seed's Figure 3: a data-access service with
//! a fixed pool of workers, one per open connection (as a database's
//! connection pool). A batch client set opens hundreds of sessions and the
//! pool runs dry: the interactive clients' requests queue behind them.
//! Capping the batch channel's concurrency in the kernel, with a reset for
//! each refused connection, restores the interactive latency.
//!
//! The service and the load generators are this binary, run inside the
//! namespaces (`xtask demo-pool serve|load`, hidden subcommands; see
//! [`super::pool_roles`]).

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::pool_roles::WORKERS;

const PORT: u16 = 5432;
/// Sessions the batch client set keeps going at once.
const BATCH_SESSIONS: usize = 200;
/// Requests per batch session before it closes and opens a new one.
const BATCH_REQUESTS: u32 = 50;
/// Threads per interactive client: one connection per request.
const INTERACTIVE_THREADS: usize = 2;
/// The cap the push-back puts on the batch channel.
pub const BATCH_CONNECTIONS: u32 = 8;
const SECS: u64 = 6;

/// One round: the batch set and both interactive clients at once; each
/// client's JSON summary, in `super::CLIENTS` order, and `tc-agent
/// channels` as it was halfway through.
fn round(agent: &Path) -> Result<(Vec<serde_json::Value>, String)> {
    let me = std::env::current_exe()?;
    let addr = format!("198.18.10.2:{PORT}");
    let handles: Vec<_> = super::CLIENTS
        .iter()
        .enumerate()
        .map(|(i, (ns, ..))| {
            let (threads, requests) = if i == 2 {
                (BATCH_SESSIONS, BATCH_REQUESTS)
            } else {
                (INTERACTIVE_THREADS, 1)
            };
            let mut cmd = Command::new("timeout");
            cmd.args(["60", "ip", "netns", "exec", ns])
                .arg(&me)
                .args(["demo-pool", "load", "--addr", &addr])
                .args(["--threads", &threads.to_string()])
                .args(["--requests", &requests.to_string()])
                .args(["--secs", &SECS.to_string()]);
            thread::spawn(move || -> Result<serde_json::Value> {
                let out = cmd.stderr(Stdio::inherit()).output()?;
                serde_json::from_slice(&out.stdout).context("load generator output")
            })
        })
        .collect();
    thread::sleep(Duration::from_secs(SECS / 2));
    let channels = super::cli(agent, &["channels"])?;
    let summaries = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect::<Result<_>>()?;
    Ok((summaries, channels))
}

/// The act: the service, a round with only a watching channel, the push
/// back, a round under it, and the before/after table.
pub(super) fn act(agent: &Path, topo: &mut super::Topology, dir: &Path) -> Result<()> {
    let me = std::env::current_exe()?;
    topo.children.push(
        Command::new("ip")
            .args(["netns", "exec", super::SVC])
            .arg(&me)
            .args(["demo-pool", "serve", "--addr"])
            .arg(format!("198.18.10.2:{PORT}"))
            .stdout(Stdio::null())
            .spawn()?,
    );
    thread::sleep(Duration::from_millis(300));
    let endpoints = format!(
        "endpoints:\n  interactive: [198.18.1.0/24, 198.18.2.0/24]\n  batch: [198.18.3.0/24]\n  db: [198.18.10.2/32]\n{}",
        super::flood::ENDPOINTS
    );
    let channel = |limit: &str| {
        format!("  - name: batch-to-db\n    from: batch\n    to: db\n    protocol: tcp\n    ports: [{PORT}]\n    direction: egress\n{limit}  - name: interactive-to-db\n    from: interactive\n    to: db\n    protocol: tcp\n    ports: [{PORT}]\n    direction: egress\n")
    };
    let watch = dir.join("3-watch-db.yaml");
    let cap = dir.join("4-cap-batch.yaml");
    std::fs::write(&watch, format!("{endpoints}channels:\n{}", channel("")))?;
    std::fs::write(
        &cap,
        format!(
            "{endpoints}channels:\n{}",
            channel(&format!(
                "    limit:\n      connections: {BATCH_CONNECTIONS}\n    connection_action: reset\n"
            ))
        ),
    )?;
    println!(
        "\nAct 2 (Figure 3): a data-access service with a pool of {WORKERS} workers, one per open connection.\n\
         The batch set runs {BATCH_SESSIONS} sessions of {BATCH_REQUESTS} queries; each interactive client one query per connection."
    );
    println!(
        "Phase 3: watching only (`tc-agent apply {}`), {SECS}s...",
        watch.display()
    );
    super::cli(agent, &["apply", watch.to_str().unwrap_or_default()])?;
    let t = Instant::now();
    let (before, _) = round(agent)?;
    println!("  ({:.1}s)", t.elapsed().as_secs_f64());
    println!(
        "Phase 4: `tc-agent apply {}`: the batch set may hold {BATCH_CONNECTIONS} connections; a new one over that is reset",
        cap.display()
    );
    let t = Instant::now();
    print!(
        "{}",
        super::cli(agent, &["apply", cap.to_str().unwrap_or_default()])?
    );
    println!("  (applied in {:.0} ms)", t.elapsed().as_secs_f64() * 1e3);
    let (after, channels) = round(agent)?;
    println!("\nchannels halfway through phase 4 (from `tc-agent channels`):");
    print!("{channels}");

    let ms = |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    println!(
        "\n{:<12} {:<12} {:>10} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
        "CLIENT",
        "ROLE",
        "BEFORE req",
        "p50 ms",
        "p99 ms",
        "AFTER req",
        "p50 ms",
        "p99 ms",
        "refused"
    );
    for (i, (_, addr, ..)) in super::CLIENTS.iter().enumerate() {
        let role = if i == 2 { "batch" } else { "interactive" };
        let (b, a) = (&before[i], &after[i]);
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        println!(
            "{addr:<12} {role:<12} {:>10} {:>12} {:>10} {:>12} {:>10} {:>12} {:>10}",
            n(&b["requests"]),
            ms(&b["p50_ms"]),
            ms(&b["p99_ms"]),
            n(&a["requests"]),
            ms(&a["p50_ms"]),
            ms(&a["p99_ms"]),
            n(&a["refused"]),
        );
    }
    println!(
        "\nCapping the batch set's concurrency at {BATCH_CONNECTIONS} leaves {} of the {WORKERS} workers to the interactive clients: their p99 went from {} ms to {} ms.",
        WORKERS as u32 - BATCH_CONNECTIONS,
        ms(&before[0]["p99_ms"]),
        ms(&after[0]["p99_ms"]),
    );
    Ok(())
}
