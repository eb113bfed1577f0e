//! The agent's events as a test reads them: `tc-agent events --follow -o
//! json` as a child process whose lines arrive, stamped with the time they
//! did, through a channel read with a timeout; and the JSON contract of an
//! event (`id`, `kind`, `started`, `ended`, `from`, `to`, `summary`,
//! `evidence` with `baseline` and `now`), checked field by field.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    netns::{agent_bin, Agent},
    sources::unix_now,
};

/// The kinds an event may have.
pub const KINDS: [&str; 3] = ["spike", "upstream_collapse", "dos"];

/// One line `events --follow` printed.
#[derive(Debug, Clone)]
pub struct Line {
    /// Unix seconds when the test read it.
    pub at: f64,
    /// The line, parsed.
    pub json: Value,
}

/// `tc-agent events --follow -o json` running against an agent. Dropping
/// it kills the child.
pub struct Follower {
    child: Child,
    /// Lines as they arrive; closed when the child's stdout is.
    lines: Receiver<Result<Line, String>>,
    /// The thread that reads stdout.
    reader: Option<JoinHandle<()>>,
    /// Every line received so far.
    pub seen: Vec<Line>,
}

impl Follower {
    /// Starts following `agent`'s events.
    pub fn start(agent: &Agent) -> Result<Self> {
        let mut child = Command::new(agent_bin())
            .arg("--socket")
            .arg(&agent.socket)
            .args(["events", "--follow", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tc-agent events --follow")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = serde_json::from_str(&line)
                    .map(|json| Line {
                        at: unix_now(),
                        json,
                    })
                    .map_err(|e| format!("not a JSON line ({e}): {line}"));
                if tx.send(parsed).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            reader: Some(reader),
            seen: Vec::new(),
        })
    }

    /// The next line, if one arrives within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Line>> {
        match self.lines.recv_timeout(timeout) {
            Ok(Ok(line)) => {
                self.seen.push(line.clone());
                Ok(Some(line))
            }
            Ok(Err(e)) => bail!("events --follow: {e}"),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait()?;
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("events --follow ended ({status}): {err}")
            }
        }
    }

    /// Reads lines until one is an event `want` accepts, for at most
    /// `within`; returns it with the time it arrived. Every line read is
    /// checked against the event contract.
    pub fn wait_for(&mut self, within: Duration, want: impl Fn(&Value) -> bool) -> Result<Line> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(line) = self.next(left)? {
                check_event(&line.json);
                if want(&line.json) {
                    return Ok(line);
                }
            }
        }
        bail!(
            "no such event within {:.1}s; lines seen: {:?}",
            within.as_secs_f64(),
            self.seen.iter().map(|l| &l.json).collect::<Vec<_>>()
        )
    }

    /// Whatever arrives within `timeout` (each line checked).
    pub fn drain(&mut self, timeout: Duration) -> Result<Vec<Line>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left)? {
                Some(line) => {
                    check_event(&line.json);
                    out.push(line);
                }
                None => break,
            }
        }
        Ok(out)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A list of strings.
fn strings(e: &Value, key: &str) -> Vec<String> {
    e[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not a list: {e}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("`{key}` holds a non-string: {e}"))
                .to_string()
        })
        .collect()
}

/// The sources an event names.
pub fn from_of(e: &Value) -> Vec<String> {
    strings(e, "from")
}

/// The destinations an event names.
pub fn to_of(e: &Value) -> Vec<String> {
    strings(e, "to")
}

/// Checks one event against the contract: `id` a non-empty string, `kind`
/// one of [`KINDS`], `started` unix seconds (an integer, not in the
/// future, within the last day), `ended` null or an integer not before
/// `started`, `from` and `to` lists of strings (`to` not empty), `summary`
/// a non-empty line, `evidence` an object with numbers `baseline` and
/// `now`.
pub fn check_event(e: &Value) {
    let id = e["id"].as_str().unwrap_or_else(|| panic!("no id: {e}"));
    assert!(!id.is_empty(), "empty id: {e}");
    let kind = e["kind"].as_str().unwrap_or_else(|| panic!("no kind: {e}"));
    assert!(KINDS.contains(&kind), "kind {kind}: {e}");
    let started = e["started"]
        .as_u64()
        .unwrap_or_else(|| panic!("`started` is not unix seconds: {e}"));
    let now = unix_now();
    assert!(
        (started as f64) <= now + 1.0 && (started as f64) > now - 86_400.0,
        "started {started}, now {now}: {e}"
    );
    match &e["ended"] {
        Value::Null => {}
        v => {
            let ended = v
                .as_u64()
                .unwrap_or_else(|| panic!("`ended` is neither null nor unix seconds: {e}"));
            assert!(ended >= started, "ended before it started: {e}");
        }
    }
    let _ = from_of(e);
    assert!(!to_of(e).is_empty(), "an event names its destination: {e}");
    let summary = e["summary"]
        .as_str()
        .unwrap_or_else(|| panic!("no summary: {e}"));
    assert!(
        !summary.trim().is_empty() && !summary.contains('\n'),
        "summary is one line: {e}"
    );
    let ev = e["evidence"]
        .as_object()
        .unwrap_or_else(|| panic!("evidence is not an object: {e}"));
    for k in ["baseline", "now"] {
        assert!(
            ev.get(k).is_some_and(Value::is_number),
            "evidence.{k} is not a number: {e}"
        );
    }
}

/// `events -o json`, checked against the contract: `{"events": [...],
/// "cursor": N}` with every event well formed. Returns the events.
pub fn events(agent: &Agent) -> Result<Vec<Value>> {
    let r = agent.json(&["events"])?;
    anyhow::ensure!(
        r["cursor"].is_u64(),
        "no `cursor` (the change count to follow from) in {r}"
    );
    let list = r["events"]
        .as_array()
        .with_context(|| format!("no `events` list in {r}"))?
        .clone();
    for e in &list {
        check_event(e);
    }
    Ok(list)
}
