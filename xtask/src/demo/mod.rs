//! The demo: three clients share one service through a node running
//! tc-agent. Act 1: the freemium client opens four TCP streams and crowds
//! out the paying ones; one policy apply pushes back on it, in the kernel,
//! without touching the clients or the service. Act 2 ([`pool`]): a batch
//! client set drains a service's connection pool; a concurrency cap on its
//! channel gives the interactive clients their latency back.
//!
//! ```text
//!  tcd-c1 198.18.1.2 ─┐
//!  tcd-c2 198.18.2.2 ─┼─ tcd-node (tc-agent on tcdns, egress) ── tcd-svc 198.18.10.2
//!  tcd-c3 198.18.3.2 ─┘
//! ```

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

pub mod flood;
pub mod flood_roles;
pub mod pool;
pub mod pool_roles;

const CLIENTS: [(&str, &str, &str, u32); 3] = [
    ("tcd-c1", "198.18.1.2", "paying", 1),
    ("tcd-c2", "198.18.2.2", "paying", 1),
    ("tcd-c3", "198.18.3.2", "freemium (noisy)", 4),
];
const NODE: &str = "tcd-node";
const SVC: &str = "tcd-svc";
const SOCKET: &str = "/run/tc-agent-demo/agent.sock";
const SECS: u32 = 5;
const LIMIT_MBIT: f64 = 100.0;

fn sh(args: &[&str]) -> Result<()> {
    crate::run(Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()))
}

/// Owns everything the demo creates, and removes it on drop.
struct Topology {
    children: Vec<Child>,
}

impl Topology {
    fn teardown_namespaces() {
        for ns in [
            NODE,
            SVC,
            CLIENTS[0].0,
            CLIENTS[1].0,
            CLIENTS[2].0,
            flood::CROWD_NS,
        ] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all("/sys/fs/bpf/tc-agent-demo");
        let _ = std::fs::remove_dir_all("/run/tc-agent-demo");
    }

    fn build() -> Result<Self> {
        Self::teardown_namespaces();
        let topo = Self { children: vec![] };
        for ns in [NODE, SVC] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            NODE,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        sh(&[
            "ip", "link", "add", "tcdns", "netns", NODE, "type", "veth", "peer", "name", "tcdsv",
            "netns", SVC,
        ])?;
        sh(&[
            "ip",
            "-n",
            NODE,
            "addr",
            "add",
            "198.18.10.1/24",
            "dev",
            "tcdns",
        ])?;
        sh(&[
            "ip",
            "-n",
            SVC,
            "addr",
            "add",
            "198.18.10.2/24",
            "dev",
            "tcdsv",
        ])?;
        sh(&["ip", "-n", NODE, "link", "set", "tcdns", "up"])?;
        sh(&["ip", "-n", SVC, "link", "set", "tcdsv", "up"])?;
        sh(&[
            "ip",
            "-n",
            SVC,
            "route",
            "add",
            "198.18.0.0/16",
            "via",
            "198.18.10.1",
        ])?;
        for (i, (ns, addr, _, _)) in CLIENTS.iter().enumerate() {
            let n = i + 1;
            let (cif, nif) = (format!("tcdc{n}"), format!("tcdn{n}"));
            sh(&["ip", "netns", "add", ns])?;
            sh(&[
                "ip", "link", "add", &cif, "netns", ns, "type", "veth", "peer", "name", &nif,
                "netns", NODE,
            ])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &cif,
            ])?;
            sh(&[
                "ip",
                "-n",
                NODE,
                "addr",
                "add",
                &format!("198.18.{n}.1/24"),
                "dev",
                &nif,
            ])?;
            sh(&["ip", "-n", ns, "link", "set", &cif, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", NODE, "link", "set", &nif, "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &format!("198.18.{n}.1"),
            ])?;
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on our own child; SIGTERM lets the agent detach.
            unsafe { libc_kill(c.id() as i32, 15) };
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        Self::teardown_namespaces();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// All clients at once for `SECS`; returns each one's goodput in Mbit/s.
fn round() -> Result<Vec<f64>> {
    let handles: Vec<_> = CLIENTS
        .iter()
        .enumerate()
        .map(|(i, (ns, _, _, streams))| {
            let port = (5201 + i).to_string();
            let (ns, streams) = (ns.to_string(), streams.to_string());
            thread::spawn(move || -> Result<f64> {
                let out = Command::new("timeout")
                    .args([
                        "30",
                        "ip",
                        "netns",
                        "exec",
                        &ns,
                        "iperf3",
                        "-c",
                        "198.18.10.2",
                        "-p",
                        &port,
                    ])
                    .args(["-t", &SECS.to_string(), "-P", &streams, "-J"])
                    .output()?;
                let j: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("iperf3 output")?;
                Ok(j["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e6)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

fn cli(agent: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(agent)
        .args(["--socket", SOCKET])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tc-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One act of the demo, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Act {
    /// Act 1: the noisy client's bandwidth.
    Noisy,
    /// Act 2 (Figure 3): the batch set's connections.
    Pool,
    /// Act 3 (Figure 4): the flood, detected and held.
    Flood,
}

pub fn run(agent: &Path, only: Option<Act>) -> Result<()> {
    let runs = |a: Act| only.is_none_or(|o| o == a);
    let started = std::time::Instant::now();
    println!(
        "Building the topology: 3 clients and a crowd -> node (tc-agent) -> service, in network namespaces..."
    );
    let mut topo = Topology::build()?;
    for i in 0..CLIENTS.len() {
        topo.children.push(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    SVC,
                    "iperf3",
                    "-s",
                    "-p",
                    &(5201 + i).to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let dir = std::env::temp_dir().join("tc-agent-demo");
    std::fs::create_dir_all(&dir)?;
    let watch = dir.join("1-watch.yaml");
    let push = dir.join("2-push-back.yaml");
    let endpoints = format!(
        "endpoints:\n  paying: [198.18.1.0/24, 198.18.2.0/24]\n  freemium: [198.18.3.0/24]\n  service: [198.18.10.2/32]\n{}",
        flood::ENDPOINTS
    );
    std::fs::write(
        &watch,
        format!("{endpoints}channels:\n  - name: freemium-to-svc\n    from: freemium\n    to: service\n    protocol: tcp\n    direction: egress\n  - name: paying-to-svc\n    from: paying\n    to: service\n    protocol: tcp\n    direction: egress\n"),
    )?;
    std::fs::write(
        &push,
        format!("{endpoints}channels:\n  - name: freemium-to-svc\n    from: freemium\n    to: service\n    protocol: tcp\n    direction: egress\n    limit:\n      bandwidth: {LIMIT_MBIT}Mbit\n  - name: paying-to-svc\n    from: paying\n    to: service\n    protocol: tcp\n    direction: egress\n"),
    )?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    topo.children.push(
        Command::new(agent)
            .args([
                "--socket",
                SOCKET,
                "run",
                "--netns",
                NODE,
                "--iface",
                "tcdns",
                "--detach-on-exit",
            ])
            .args([
                "--pin-dir",
                "/sys/fs/bpf/tc-agent-demo",
                "--state-dir",
                "/run/tc-agent-demo",
            ])
            .arg("--policy")
            .arg(&watch)
            .stderr(log)
            .spawn()?,
    );
    for _ in 0..100 {
        if cli(agent, &["status"]).is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    cli(agent, &["status"]).context("the agent did not start; see the log in the temp dir")?;
    // The crowd sends quietly from now on: Act 3's baseline.
    let crowd = flood::start()?;
    if runs(Act::Noisy) {
        noisy(agent, &watch, &push)?;
    }
    if runs(Act::Pool) {
        pool::act(agent, &mut topo, &dir)?;
    }
    if runs(Act::Flood) {
        flood::act(agent, crowd, &dir)?;
    }
    println!(
        "Cleaning up (the demo took {:.0}s).",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Act 1: everyone sends through a watching policy, the operator looks at
/// the map and the top talkers, and one apply holds the freemium client.
fn noisy(agent: &Path, watch: &Path, push: &Path) -> Result<()> {
    println!(
        "Phase 1: watching only (policy {}). All clients send for {SECS}s...",
        watch.display()
    );
    // Midway, the operator looks before acting: who talks to whom, and
    // who sends the most to the service.
    let watching = thread::spawn(round);
    thread::sleep(Duration::from_secs_f64(SECS as f64 * 0.9));
    println!("\nThe interaction map mid-phase (`tc-agent map`):");
    print!("{}", cli(agent, &["map"])?);
    println!("\nTop talkers to the service (`tc-agent top-talkers --to service -n 5`):");
    let talkers = cli(
        agent,
        &["top-talkers", "--to", "service", "-n", "5", "-o", "json"],
    )?;
    let talkers: serde_json::Value = serde_json::from_str(&talkers)?;
    print!(
        "{}",
        cli(agent, &["top-talkers", "--to", "service", "-n", "5"])?
    );
    if let Some(t) = talkers["talkers"]
        .as_array()
        .and_then(|v| v.iter().find(|t| t["source"] == "198.18.3.2"))
    {
        println!(
            "The freemium client 198.18.3.2 sends {:.0}% of the traffic to the service: push back on it.\n",
            100.0 * t["share"].as_f64().unwrap_or(0.0)
        );
    } else {
        println!("The freemium client 198.18.3.2 is not among the top talkers yet (its streams had not started?).\n");
    }
    let before = watching.join().expect("watch round")?;
    println!(
        "Phase 2: `tc-agent apply {}`: freemium held to {LIMIT_MBIT} Mbit/s",
        push.display()
    );
    print!(
        "{}",
        cli(agent, &["apply", push.to_str().unwrap_or_default()])?
    );
    let after = round()?;
    println!("\nchannels after phase 2 (from `tc-agent channels`):");
    print!("{}", cli(agent, &["channels"])?);

    println!(
        "\n{:<12} {:<18} {:>8} {:>14} {:>14}",
        "CLIENT", "ROLE", "STREAMS", "BEFORE Mbit/s", "AFTER Mbit/s"
    );
    for (i, (_, addr, role, streams)) in CLIENTS.iter().enumerate() {
        println!(
            "{addr:<12} {role:<18} {streams:>8} {:>14.1} {:>14.1}",
            before[i], after[i]
        );
    }
    let paying = |v: &[f64]| v[0] + v[1];
    println!(
        "\nThe freemium client went from {:.1}% to {:.1}% of the service's traffic; the paying clients got {:.1}x as much.",
        100.0 * before[2] / before.iter().sum::<f64>(),
        100.0 * after[2] / after.iter().sum::<f64>(),
        paying(&after) / paying(&before).max(0.001),
    );
    println!("Limit {LIMIT_MBIT} Mbit/s is on wire bytes; goodput is TCP payload.");
    Ok(())
}
