//! `tc-agent events` against a real agent and real traffic: a flood from
//! two of eight quiet sources opens a `dos` event that `events --follow -o
//! json` prints as one line when it starts and again when it ends, that
//! `events` lists, and that `tc-agent top --once` shows; then how a follow
//! ends: SIGINT (status 0), its pipe's reader going away (it notices
//! without an event to write), and the agent stopping (an error, status
//! 1). `suggest` for an id this run never gave is refused.
//!
//! The detectors' accuracy on the seed's patterns is tested elsewhere;
//! this test holds the plumbing to its contract (the JSON field names, one
//! event object per line, the exits) on a real agent.
//!
//! Topology: `client` (198.18.0.10-17 as extra addresses) -- veth --
//! `server` (198.18.0.2, the endpoint set `web`); the agent runs in
//! `server` on its veth. Every sender is bounded in time and count.

use std::{
    io::{BufRead, BufReader, Read},
    net::UdpSocket,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tc_tests::netns::{agent_bin, in_netns, serial, sh, udp_receive, write_policy, Agent, Pair};

/// The quiet sources; the first two flood.
const SOURCES: [&str; 8] = [
    "198.18.0.10",
    "198.18.0.11",
    "198.18.0.12",
    "198.18.0.13",
    "198.18.0.14",
    "198.18.0.15",
    "198.18.0.16",
    "198.18.0.17",
];
const FLOODERS: usize = 2;
/// Payload bits per second of a quiet source, and of a flooder (100x).
const QUIET_BPS: f64 = 200e3;
const FLOOD_BPS: f64 = 20e6;
/// Seconds of quiet before the flood (the baselines warm up), and of flood.
const QUIET_S: f64 = 12.0;
const FLOOD_S: f64 = 5.0;
/// Datagram payload, bytes.
const PAYLOAD: usize = 1000;

/// Sends from `src` to the server at `QUIET_BPS`, switching to `FLOOD_BPS`
/// after `QUIET_S` if `flood`; stops after `QUIET_S + FLOOD_S` seconds or
/// 100,000 datagrams.
fn send_from(src: &str, flood: bool) -> Result<u64> {
    let sock = UdpSocket::bind((src, 0))?;
    let buf = vec![0x5au8; PAYLOAD];
    let start = Instant::now();
    let (mut sent, mut due) = (0u64, Duration::ZERO);
    while sent < 100_000 {
        let t = start.elapsed().as_secs_f64();
        if t >= QUIET_S + FLOOD_S {
            break;
        }
        let rate = if flood && t >= QUIET_S {
            FLOOD_BPS
        } else {
            QUIET_BPS
        };
        due += Duration::from_secs_f64(PAYLOAD as f64 * 8.0 / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if sock.send_to(&buf, "198.18.0.2:9000").is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// `tc-agent events --follow` with `args`, stdout and stderr piped.
fn spawn_follow(agent: &Agent, args: &[&str]) -> Result<Child> {
    Command::new(agent_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["events", "--follow"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting events --follow")
}

/// [`spawn_follow`], its stdout read line by line on a thread into the
/// returned channel, each line with when it arrived.
fn follow(agent: &Agent, args: &[&str]) -> Result<(Child, mpsc::Receiver<(Instant, String)>)> {
    let mut child = spawn_follow(agent, args)?;
    let out = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    Ok((child, rx))
}

/// The next line of a follow that satisfies `want`, within `within`.
fn next_line(
    rx: &mpsc::Receiver<(Instant, String)>,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) -> Result<(Instant, Value)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = rx
            .recv_timeout(left)
            .context("no such line from events --follow in time")?;
        let v: Value = serde_json::from_str(&line).with_context(|| {
            format!("events --follow -o json wrote a line that is not JSON: {line}")
        })?;
        println!("follow: {line}");
        if want(&v) {
            return Ok((at, v));
        }
    }
}

/// Waits up to `within` for `child` to exit; kills it past that.
fn exit_within(child: &mut Child, within: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("did not exit within {within:?}")
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn events_follow_prints_a_floods_start_and_end_and_ends_cleanly() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    for s in SOURCES {
        sh(&[
            "ip",
            "-n",
            &pair.client,
            "addr",
            "add",
            &format!("{s}/24"),
            "dev",
            &pair.client_if,
        ])?;
    }
    let policy = write_policy(
        "events",
        "endpoints:\n  web: [198.18.0.2/32]\nchannels:\n  - name: udp-in\n    to: [web]\n    protocol: udp\n    ports: [9000]\n    limit:\n      bandwidth: 1Gbit\n",
    );
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policy)?;

    // Nothing yet: an empty list with its cursor.
    let empty: Value = serde_json::from_slice(&agent.cli(&["events", "-o", "json"])?.stdout)?;
    ensure!(
        empty["events"].as_array().is_some_and(|a| a.is_empty()),
        "{empty}"
    );
    ensure!(empty["cursor"].is_u64(), "{empty}");

    // Before any event: the reader of a follow's pipe goes (`| head -1`
    // after the header), and it ends, status 0, though it has nothing to
    // write that would meet SIGPIPE.
    let mut piped = spawn_follow(&agent, &[])?;
    let mut reader = BufReader::new(piped.stdout.take().context("stdout")?);
    let mut header = String::new();
    reader.read_line(&mut header)?;
    ensure!(header.starts_with("ID "), "{header}");
    drop(reader);
    let gone = Instant::now();
    let st = exit_within(&mut piped, Duration::from_secs(3))?;
    println!(
        "follow ended {:.2} s after its reader went: {st:?}",
        gone.elapsed().as_secs_f64()
    );
    ensure!(st.success(), "{st:?}: {}", stderr_of(&mut piped));

    let (mut json, lines) = follow(&agent, &["-o", "json"])?;
    let rx = in_netns(&pair.server, || {
        udp_receive("198.18.0.2:9000", QUIET_S + FLOOD_S + 2.0, 0.0)
    });
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let senders: Vec<_> = SOURCES
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.to_string();
            in_netns(&pair.client, move || send_from(&s, i < FLOODERS))
        })
        .collect();
    let onset = start + Duration::from_secs_f64(QUIET_S);

    // The flood's start: one line, a `dos` event on `web` naming both
    // flooders, still open.
    let is_dos = |v: &Value| {
        v["kind"] == "dos"
            && v["to"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == "web"))
    };
    let (seen_at, started) = next_line(
        &lines,
        Duration::from_secs_f64(QUIET_S + FLOOD_S + 5.0),
        |v| is_dos(v),
    )?;
    for field in [
        "id", "kind", "started", "ended", "from", "to", "summary", "evidence",
    ] {
        ensure!(started.get(field).is_some(), "no {field} in {started}");
    }
    ensure!(started["ended"].is_null(), "{started}");
    let id = started["id"].as_str().context("id")?.to_string();
    ensure!(id.starts_with("dos-"), "{id}");
    let from: Vec<&str> = started["from"]
        .as_array()
        .context("from")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in &SOURCES[..FLOODERS] {
        ensure!(from.contains(f), "{f} not named in {started}");
    }
    ensure!(
        started["evidence"]["baseline"].is_number() && started["evidence"]["now"].is_number(),
        "{started}"
    );
    let delay = seen_at.saturating_duration_since(onset).as_secs_f64();
    println!("{id} reached `events --follow` {delay:.2} s after the flood's onset");
    ensure!(seen_at > onset, "a dos event before the flood: {started}");

    // Listed while it lasts, and shown by `top`.
    let table = String::from_utf8(agent.cli(&["events"])?.stdout)?;
    println!("{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .with_context(|| format!("no row for {id}:\n{table}"))?;
    ensure!(row.contains(" dos ") && row.contains("-> web"), "{row}");
    let top = String::from_utf8(agent.cli(&["top", "--once"])?.stdout)?;
    ensure!(
        top.lines()
            .any(|l| l.contains(&id) && l.contains("ongoing")),
        "{id} not in top's events pane:\n{top}"
    );

    // Its end: the same event again, `ended` set, once the flood is over.
    let (_, ended) = next_line(&lines, Duration::from_secs(30), |v| {
        v["id"] == id.as_str() && !v["ended"].is_null()
    })?;
    let ended_at = ended["ended"].as_u64().context("ended")?;
    ensure!(
        ended_at >= started["started"].as_u64().context("started")?,
        "{ended}"
    );
    for s in senders {
        s.join().expect("sender")??;
    }
    let (got, _, _) = rx.join().expect("receiver")??;
    println!("the server received {got} datagrams");

    // `events -o json` has it, ended, with the contract's fields.
    let all: Value = serde_json::from_slice(&agent.cli(&["events", "-o", "json"])?.stdout)?;
    let listed = all["events"]
        .as_array()
        .context("events")?
        .iter()
        .find(|e| e["id"] == id.as_str())
        .with_context(|| format!("{id} not listed: {all}"))?;
    ensure!(listed["ended"] == ended_at, "{listed}");
    ensure!(all["cursor"].as_u64().is_some_and(|c| c >= 2), "{all}");

    // `suggest ID > file && apply file` works as it stands.
    let suggested = String::from_utf8(agent.cli(&["suggest", &id])?.stdout)?;
    println!("tc-agent suggest {id}:\n{suggested}");
    let file = write_policy("events-suggested", &suggested);
    let file = file.to_str().context("policy path")?;
    agent.cli(&["apply", file])?;
    let live: Vec<String> = agent.channels()?["channels"]
        .as_array()
        .context("channels")?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    ensure!(
        live.len() >= 2 && live.contains(&"udp-in".to_string()),
        "{live:?}"
    );
    // `-o json` carries the contract's fields, and the suggestion now
    // builds on the policy just applied (the observer's copy followed the
    // apply): every live channel is in it.
    let v: Value = serde_json::from_slice(&agent.cli(&["suggest", &id, "-o", "json"])?.stdout)?;
    ensure!(v["id"] == id.as_str() && v["mode"] == "enforce", "{v}");
    ensure!(v["event"]["id"] == id.as_str(), "{v}");
    let text = v["policy"].as_str().context("policy")?;
    for name in &live {
        ensure!(
            text.contains(name.as_str()),
            "{name} not in the new suggestion:\n{text}"
        );
    }
    // A dry run here would come first and stop enforcing the live limits
    // (`udp-in`'s bandwidth, the applied hold) for the sources it takes:
    // `--mode monitor` is refused with the reason, status 1.
    let out = Command::new(agent_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["suggest", &id, "--mode", "monitor"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{:?}: {err}", out.status);
    ensure!(
        err.contains("would stop enforcing")
            && err.contains("udp-in")
            && err.contains("--mode enforce"),
        "{err}"
    );

    // An id this run never gave: a clear error, status 1.
    let out = Command::new(agent_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["suggest", "dos-999"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{:?}: {err}", out.status);
    ensure!(
        err.contains("no event dos-999: ids are per agent run"),
        "{err}"
    );

    // SIGINT: the follow ends with status 0.
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(json.id() as i32, libc::SIGINT) };
    let st = exit_within(&mut json, Duration::from_secs(2))?;
    ensure!(
        st.success(),
        "after SIGINT: {st:?}: {}",
        stderr_of(&mut json)
    );

    // The agent stops: the follow ends with an error and status 1.
    let (mut orphan, _lines) = follow(&agent, &["-o", "json"])?;
    std::thread::sleep(Duration::from_millis(700));
    ensure!(agent.stop(), "the agent did not stop cleanly");
    let st = exit_within(&mut orphan, Duration::from_secs(3))?;
    let err = stderr_of(&mut orphan);
    ensure!(st.code() == Some(1), "{st:?}: {err}");
    ensure!(
        err.contains("the agent stopped answering while `events --follow` watched it"),
        "{err}"
    );
    Ok(())
}
