//! The demo's third act, the seed's Figure 4: a crowd of quiet clients
//! talks to an API; then a few of them flood it. Nobody writes a rule: the
//! agent raises a `dos` event naming the flooders, `tc-agent suggest` turns
//! it into a policy that holds them to their own baseline, `apply` puts it
//! in the kernel, and the table shows the flooders held and everyone else
//! unaffected, with the time each step took.
//!
//! The crowd sends from the start of the demo (its namespace is built with
//! the others), so the detectors have its baseline by the time the act
//! begins; every act's policy names the crowd and the API the same way
//! ([`ENDPOINTS`]), so applying them does not restart the API's series.
//! The crowd and the API's UDP service are this binary, run inside the
//! namespaces (`xtask demo-flood crowd|sink`, see [`super::flood_roles`]).
//!
//! ```text
//!  tcd-c4 198.18.4.10-49 (the crowd) ── tcd-node (tc-agent) ── tcd-svc 198.18.10.3:9000 (api)
//! ```

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{cli, sh, NODE, SVC};

/// The crowd's namespace.
pub const CROWD_NS: &str = "tcd-c4";
/// Endpoint sets in every act's policy: the crowd and the API.
pub const ENDPOINTS: &str = "  crowd: [198.18.4.0/24]\n  api: [198.18.10.3/32]\n";
/// Clients in the crowd: 198.18.4.10 onwards.
const CROWD: usize = 40;
/// The first this many of the crowd flood.
const FLOODERS: usize = 3;
/// Datagrams a second each client sends while quiet.
const PPS: f64 = 20.0;
/// How much more the flooders send.
const FACTOR: f64 = 80.0;
/// The API's address and port.
const API: &str = "198.18.10.3:9000";
/// The crowd sends at least this long before the flood: the detectors
/// warm up over 10 samples (a second each). Acts 1 and 2 take longer, so
/// only `--only flood` waits.
const WARM: Duration = Duration::from_secs(20);
/// How long the act waits for the event.
const DETECT_WAIT: Duration = Duration::from_secs(30);
/// Seconds of traffic measured in each window of the table.
const WINDOW: Duration = Duration::from_secs(3);
/// Bound on the crowd's and the sink's lifetime.
const LIFETIME_S: u64 = 300;

/// One role process (`demo-flood crowd|sink`) with its command pipe.
struct Role {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Role {
    fn spawn(ns: &str, args: &[String]) -> Result<Self> {
        let me = std::env::current_exe()?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(me)
            .arg("demo-flood")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("role stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn send(&mut self, cmd: &str) -> Result<()> {
        let w = self.stdin.as_mut().context("role already stopped")?;
        writeln!(w, "{cmd}")?;
        w.flush()?;
        Ok(())
    }

    /// Datagrams per source so far.
    fn counts(&mut self) -> Result<Vec<(String, u64)>> {
        self.send("report")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("a role's report: {line:?}"))?;
        Ok(v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        // End of input ends the role; kill it if it lingers.
        self.stdin.take();
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The crowd and the API's service, running since `started`.
pub(super) struct Crowd {
    sender: Role,
    sink: Role,
    started: Instant,
    /// The crowd's addresses, flooders first.
    sources: Vec<String>,
}

/// Builds the crowd's namespace (one veth to the node, 40 addresses), puts
/// the API's address on the service, and starts both sides sending quietly.
pub(super) fn start() -> Result<Crowd> {
    sh(&["ip", "netns", "add", CROWD_NS])?;
    sh(&[
        "ip", "link", "add", "tcdc4", "netns", CROWD_NS, "type", "veth", "peer", "name", "tcdn4",
        "netns", NODE,
    ])?;
    sh(&[
        "ip",
        "-n",
        CROWD_NS,
        "addr",
        "add",
        "198.18.4.2/24",
        "dev",
        "tcdc4",
    ])?;
    sh(&[
        "ip",
        "-n",
        NODE,
        "addr",
        "add",
        "198.18.4.1/24",
        "dev",
        "tcdn4",
    ])?;
    let sources: Vec<String> = (0..CROWD).map(|i| format!("198.18.4.{}", 10 + i)).collect();
    let mut batch = Command::new("ip")
        .args(["-n", CROWD_NS, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    {
        let mut w = batch.stdin.take().context("ip stdin")?;
        for a in &sources {
            writeln!(w, "addr add {a}/24 dev tcdc4")?;
        }
    }
    anyhow::ensure!(batch.wait()?.success(), "adding the crowd's addresses");
    sh(&["ip", "-n", CROWD_NS, "link", "set", "tcdc4", "up"])?;
    sh(&["ip", "-n", CROWD_NS, "link", "set", "lo", "up"])?;
    sh(&["ip", "-n", NODE, "link", "set", "tcdn4", "up"])?;
    sh(&[
        "ip",
        "-n",
        CROWD_NS,
        "route",
        "add",
        "default",
        "via",
        "198.18.4.1",
    ])?;
    sh(&[
        "ip",
        "-n",
        SVC,
        "addr",
        "add",
        "198.18.10.3/24",
        "dev",
        "tcdsv",
    ])?;
    let secs = LIFETIME_S.to_string();
    let mut sink = Role::spawn(
        SVC,
        &[
            "sink".into(),
            "--addr".into(),
            API.into(),
            "--secs".into(),
            secs.clone(),
        ],
    )?;
    // The sink answers once it has bound its socket.
    sink.counts().context("the API's service did not start")?;
    let mut sender = Role::spawn(
        CROWD_NS,
        &[
            "crowd".into(),
            "--to".into(),
            API.into(),
            "--sources".into(),
            sources.join(","),
            "--pps".into(),
            PPS.to_string(),
            "--flooders".into(),
            FLOODERS.to_string(),
            "--factor".into(),
            FACTOR.to_string(),
            "--secs".into(),
            secs,
        ],
    )?;
    sender.counts().context("the crowd did not start")?;
    Ok(Crowd {
        sender,
        sink,
        started: Instant::now(),
        sources,
    })
}

/// Sent and received datagrams per source at one instant.
struct Snapshot {
    at: Instant,
    sent: Vec<(String, u64)>,
    received: Vec<(String, u64)>,
}

impl Crowd {
    fn snapshot(&mut self) -> Result<Snapshot> {
        Ok(Snapshot {
            at: Instant::now(),
            sent: self.sender.counts()?,
            received: self.sink.counts()?,
        })
    }
}

/// Per-source datagrams a second between two snapshots, for the flooders
/// and for everyone else: (sent, received) means per source.
fn rates(crowd: &Crowd, a: &Snapshot, b: &Snapshot) -> [(f64, f64); 2] {
    let secs = (b.at - a.at).as_secs_f64().max(1e-3);
    let get = |v: &[(String, u64)], s: &str| v.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    let mean = |group: &[String]| {
        let (mut sent, mut recv) = (0.0, 0.0);
        for s in group {
            sent += get(&b.sent, s).saturating_sub(get(&a.sent, s)) as f64;
            recv += get(&b.received, s).saturating_sub(get(&a.received, s)) as f64;
        }
        let n = group.len().max(1) as f64;
        (sent / n / secs, recv / n / secs)
    };
    let (flooders, others) = crowd.sources.split_at(FLOODERS);
    [mean(flooders), mean(others)]
}

/// The act: the flood, the event, the suggestion, the apply, and the table.
pub(super) fn act(agent: &Path, mut crowd: Crowd, dir: &Path) -> Result<()> {
    let act_started = Instant::now();
    println!(
        "\nAct 3 (Figure 4): a crowd of {CROWD} clients ({}-{}) sends {PPS} datagrams/s each to the API ({API}); it has done so since the demo began ({:.0}s ago).",
        crowd.sources[0],
        crowd.sources[CROWD - 1],
        crowd.started.elapsed().as_secs_f64()
    );
    if let Some(left) = WARM.checked_sub(crowd.started.elapsed()) {
        println!(
            "Letting the detectors learn the crowd's baseline for {:.0}s more...",
            left.as_secs_f64()
        );
        thread::sleep(left);
    }
    let quiet_from = crowd.snapshot()?;
    thread::sleep(WINDOW);
    let quiet_to = crowd.snapshot()?;
    let known: Vec<String> = events(agent)?
        .iter()
        .filter_map(|e| e["id"].as_str().map(String::from))
        .collect();

    println!(
        "Phase 5: {FLOODERS} of them ({}) now send {FACTOR}x as much ({:.0} datagrams/s each). No rule names them; waiting for the agent's `dos` event...",
        crowd.sources[..FLOODERS].join(", "),
        PPS * FACTOR
    );
    crowd.sender.send("flood")?;
    let onset = Instant::now();
    let flood_from = crowd.snapshot()?;
    let event = loop {
        if let Some(e) = events(agent)?
            .into_iter()
            .find(|e| e["kind"] == "dos" && !known.iter().any(|k| e["id"] == k.as_str()))
        {
            break e;
        }
        anyhow::ensure!(
            onset.elapsed() < DETECT_WAIT,
            "no dos event within {}s of the flood; `tc-agent events`:\n{}",
            DETECT_WAIT.as_secs(),
            cli(agent, &["events"]).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let detected = onset.elapsed();
    let flood_to = crowd.snapshot()?;
    let id = event["id"].as_str().context("event id")?.to_string();
    println!(
        "\nThe agent raised {id} {:.1}s after the flood began (`tc-agent events`):",
        detected.as_secs_f64()
    );
    print!("{}", cli(agent, &["events"])?);
    println!(
        "Its evidence (`tc-agent events -o json`): {}",
        serde_json::to_string(&event["evidence"])?
    );

    let t = Instant::now();
    let suggested = cli(agent, &["suggest", &id])?;
    let suggest_took = t.elapsed();
    let file = dir.join("5-suggested.yaml");
    std::fs::write(&file, &suggested)?;
    println!(
        "\n`tc-agent suggest {id}` ({:.0} ms), saved as {}:",
        suggest_took.as_secs_f64() * 1e3,
        file.display()
    );
    print!("{suggested}");

    println!("\nPhase 6: `tc-agent apply {}`, unchanged", file.display());
    let t = Instant::now();
    print!(
        "{}",
        cli(agent, &["apply", file.to_str().unwrap_or_default()])?
    );
    let apply_took = t.elapsed();
    let held_at = onset.elapsed();
    println!("  (applied in {:.0} ms)", apply_took.as_secs_f64() * 1e3);
    // The new policy's first instants are its burst: measure after it.
    thread::sleep(Duration::from_secs(1));
    let after_from = crowd.snapshot()?;
    thread::sleep(WINDOW);
    let after_to = crowd.snapshot()?;
    println!("\nchannels during phase 6 (from `tc-agent channels`):");
    print!("{}", cli(agent, &["channels"])?);

    let quiet = rates(&crowd, &quiet_from, &quiet_to);
    let flood = rates(&crowd, &flood_from, &flood_to);
    let after = rates(&crowd, &after_from, &after_to);
    println!(
        "\nDatagrams a second per client, sent / reaching the API:\n{:<10} {:>8} {:>18} {:>26} {:>20}",
        "GROUP", "CLIENTS", "QUIET", "FLOOD, BEFORE THE EVENT", "AFTER THE APPLY"
    );
    let cell = |(s, r): (f64, f64)| format!("{s:.1} / {r:.1}");
    for (i, (name, n)) in [("flooders", FLOODERS), ("others", CROWD - FLOODERS)]
        .into_iter()
        .enumerate()
    {
        println!(
            "{name:<10} {n:>8} {:>18} {:>26} {:>20}",
            cell(quiet[i]),
            cell(flood[i]),
            cell(after[i])
        );
    }
    println!(
        "\nThe others kept {:.0}% of their quiet traffic; the flooders went from {:.0} to {:.1} datagrams/s reaching the API (their quiet rate: {:.1}).",
        100.0 * after[1].1 / quiet[1].1.max(1e-9),
        flood[0].1,
        after[0].1,
        quiet[0].1
    );
    println!(
        "Steps: flood -> dos event {:.1}s; suggest {:.0} ms; apply {:.0} ms; flood -> held {:.1}s.",
        detected.as_secs_f64(),
        suggest_took.as_secs_f64() * 1e3,
        apply_took.as_secs_f64() * 1e3,
        held_at.as_secs_f64()
    );
    println!("(Act 3 took {:.0}s.)", act_started.elapsed().as_secs_f64());
    Ok(())
}

/// `tc-agent events -o json`: every event the agent keeps.
fn events(agent: &Path) -> Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(&cli(agent, &["events", "-o", "json"])?)?;
    Ok(v["events"].as_array().cloned().unwrap_or_default())
}
