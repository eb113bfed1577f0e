//! Detection on real traffic through a real agent: the seed's three
//! patterns each raise their event within the delay, measured from
//! the onset to the line `events --follow -o json` prints, and steady
//! traffic whose rates wander ±30% raises none.
//!
//! - DoS: 200 sources send quietly for 25 s (no event), then three of them
//!   send 80 times as much: a `dos` event names the three within 10 s;
//!   `suggest` on it, `apply` its output unchanged, and the three are held
//!   to the suggested limit while the 197 others keep at least 90% of
//!   their traffic.
//! - Upstream collapse: wrk drives nginx steadily, then four times as
//!   many clients while the server's replies are squeezed (TBF on its
//!   egress): an `upstream_collapse` event names the server's set within
//!   15 s. The agent runs on the clients' side, which sees the replies
//!   after the squeeze.
//! - Spike: one client set of two triples its rate: a `spike` event names
//!   the interaction (from set -> to set) within 5 s.
//! - Quiet: 60 s of traffic from 20 sources, UDP and TCP, each rate
//!   wandering within ±30%: no event.
//!
//! Every test also checks `events -o json` against the contract and prints
//! its detection delay (`detection delay: ...`) for the benchmark's
//! figures. The suite runs on the host (detection is agent logic over the
//! datapath the other suites cover on each kernel). Traffic is bounded in
//! count and time, stays on 198.18.0.0/15, and stops when a test fails.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::{atomic::Ordering, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tc_agent::policy::Policy;
use tc_tests::{
    events::{events, from_of, to_of, Follower},
    netns::{agent_bin, in_netns, serial, sh, write_policy, Agent, Pair},
    sources::{
        handshake_times, reply_server, source_addresses, tcp_crowd, udp_crowd, udp_tally, unix_now,
        Count, StopFlag, Tally, Wander,
    },
    web::{wrk_script, Nginx, NginxConfig, WrkConfig, WrkRun},
};

/// Sleeps until unix time `t`.
fn sleep_until(t: f64) {
    let left = t - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// Reads `events --follow` until unix time `until`: nothing may arrive,
/// and `events -o json` must list nothing either.
fn assert_quiet(agent: &Agent, follow: &mut Follower, until: f64, phase: &str) -> Result<()> {
    let left = until - unix_now();
    if left > 0.0 {
        let lines = follow.drain(Duration::from_secs_f64(left))?;
        assert!(
            lines.is_empty(),
            "{phase}: no event, but events --follow printed {:?}",
            lines.iter().map(|l| &l.json).collect::<Vec<_>>()
        );
    }
    let listed = events(agent)?;
    assert!(listed.is_empty(), "{phase}: no event, but: {listed:?}");
    Ok(())
}

/// The first event of `kind` that `events --follow` prints within
/// `within`, with the delay from `onset` to its line; fails with the
/// series `trace` prints when none comes.
fn detect(
    follow: &mut Follower,
    kind: &str,
    onset: f64,
    within: Duration,
    trace: impl FnOnce() -> String,
) -> Result<(Value, f64)> {
    match follow.wait_for(within, |e| e["kind"] == kind) {
        Ok(line) => Ok((line.json, line.at - onset)),
        Err(e) => bail!("{e:#}\nwhat the agent saw:\n{}", trace()),
    }
}

/// Checks that `events -o json` lists `event` (by id) as it was printed,
/// and prints the whole list.
fn listed(agent: &Agent, event: &Value) -> Result<Vec<Value>> {
    let all = events(agent)?;
    eprintln!("events -o json: {}", Value::from(all.clone()));
    let id = &event["id"];
    let e = all
        .iter()
        .find(|e| e["id"] == *id)
        .with_context(|| format!("events -o json does not list {id}: {all:?}"))?;
    for k in ["kind", "started", "from", "to"] {
        assert_eq!(e[k], event[k], "{k} of {id}: listed {e}, followed {event}");
    }
    Ok(all)
}

/// `history NAME` over the last `since` seconds: per second, `metric`
/// (null as `-`), for failure messages and the report.
fn history_line(agent: &Agent, name: &str, metric: &str, since: u32) -> String {
    match agent.json(&["history", name, "--since", &format!("{since}s")]) {
        Ok(h) => {
            let pts: Vec<String> = h["points"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| match p[metric].as_f64() {
                            Some(v) if v >= 1e4 => format!("{:.0}k", v / 1e3),
                            Some(v) => format!("{v:.0}"),
                            None => "-".into(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{name} {metric} per second: {}", pts.join(" "))
        }
        Err(e) => format!("history {name}: {e:#}"),
    }
}

/// The numbers of one history series (points without a value skipped).
fn history_values(agent: &Agent, name: &str, metric: &str, since: u32) -> Result<Vec<(u64, f64)>> {
    let h = agent.json(&["history", name, "--since", &format!("{since}s")])?;
    Ok(h["points"]
        .as_array()
        .with_context(|| format!("no points: {h}"))?
        .iter()
        .filter_map(|p| Some((p["t"].as_u64()?, p[metric].as_f64()?)))
        .collect())
}

/// One reading of the map: unix time and the rows picked.
type Reading = (f64, Vec<Value>);

/// `map -o json` read every second by a thread, keeping the rows a test
/// watches: the series the detectors saw, for the scenario's own checks
/// and for the report when a detector misses.
struct MapTrace {
    /// The readings so far.
    rows: Arc<Mutex<Vec<Reading>>>,
    /// The map's `window_s` in the last reading.
    window: Arc<Mutex<f64>>,
    stop: StopFlag,
    thread: Option<JoinHandle<()>>,
}

impl MapTrace {
    /// Starts reading `agent`'s map, keeping the rows `pick` accepts.
    fn start(agent: &Agent, pick: impl Fn(&Value) -> bool + Send + 'static) -> Self {
        let rows = Arc::new(Mutex::new(Vec::new()));
        let stop = StopFlag::new();
        let window = Arc::new(Mutex::new(f64::NAN));
        let (flag, out, socket) = (stop.flag(), rows.clone(), agent.socket.clone());
        let window_s = window.clone();
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes of readings.
            for _ in 0..600 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let t = unix_now();
                let read = Command::new(agent_bin())
                    .arg("--socket")
                    .arg(&socket)
                    .args(["map", "-o", "json"])
                    .output();
                if let Ok(o) = read {
                    if let Ok(m) = serde_json::from_slice::<Value>(&o.stdout) {
                        *window_s.lock().unwrap() = m["window_s"].as_f64().unwrap_or(f64::NAN);
                        let picked = m["interactions"]
                            .as_array()
                            .map(|a| a.iter().filter(|r| pick(r)).cloned().collect())
                            .unwrap_or_default();
                        out.lock().unwrap().push((t, picked));
                    }
                }
                let next = t + 1.0;
                while unix_now() < next && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Self {
            rows,
            window,
            stop,
            thread: Some(thread),
        }
    }

    /// The readings so far.
    fn readings(&self) -> Vec<Reading> {
        self.rows.lock().unwrap().clone()
    }

    /// The readings within `from..to` (unix time) of the row `which` picks.
    fn series(&self, from: f64, to: f64, which: impl Fn(&Value) -> bool) -> Vec<(f64, Value)> {
        self.readings()
            .into_iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .filter_map(|(t, rows)| rows.into_iter().find(|r| which(r)).map(|r| (t, r)))
            .collect()
    }

    /// One line per reading: seconds from `onset`, then per row
    /// `from->to` and `keys`.
    fn table(&self, onset: f64, keys: &[&str]) -> String {
        let mut out = format!(
            "map -o json each second (rates over its window_s, {} s): {}\n",
            self.window.lock().unwrap(),
            keys.join(", ")
        );
        for (t, rows) in self.readings() {
            out += &format!("  {:+6.1}s", t - onset);
            for r in rows {
                out += &format!(
                    "  {}->{}:",
                    r["from"].as_str().unwrap_or("?"),
                    r["to"].as_str().unwrap_or("?")
                );
                for k in keys {
                    out += &match r[*k].as_f64() {
                        Some(v) => format!(" {v:.0}"),
                        None => " null".into(),
                    };
                }
            }
            out += "\n";
        }
        out
    }
}

impl Drop for MapTrace {
    fn drop(&mut self) {
        self.stop.raise();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no values");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Datagrams a quiet DoS source sends per second, and their payload.
const DOS_QUIET_PPS: f64 = 10.0;
const DOS_PAYLOAD: usize = 200;
/// How many times as much the flooders send.
const DOS_FACTOR: f64 = 80.0;
const DOS_QUIET_S: f64 = 25.0;

/// The first channel of `policy` that a UDP datagram from `source` to
/// 198.18.0.2:9000 at ingress falls in.
fn channel_for<'a>(policy: &'a Policy, source: &str) -> Option<&'a tc_agent::policy::Channel> {
    let src: IpAddr = source.parse().ok()?;
    let dst: IpAddr = "198.18.0.2".parse().ok()?;
    policy.channels.iter().find(|c| {
        c.direction == tc_agent::policy::Direction::Ingress
            && c.from.iter().any(|n| n.contains(&src))
            && c.to.iter().any(|n| n.contains(&dst))
            && c.protocol.numbers().is_none_or(|p| p.contains(&17))
            && (c.ports.is_empty() || c.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&9000)))
    })
}

/// Wire bits per second of `c` over `secs`.
fn bps(c: Count, secs: u64) -> f64 {
    c.wire_bits() / secs as f64
}

/// 200 sources send 10 datagrams a second each for 25 s: no event. Then
/// three of them send 80 times as much: within 10 s `events --follow`
/// prints a `dos` event whose `from` names exactly the three and whose
/// `to` names the server's set; `suggest` on it prints a policy that
/// `apply` takes unchanged, after which the three together arrive at no
/// more than the suggested limit (and at most half of what they send),
/// while the 197 others keep at least 90% of what they send.
#[test]
fn dos_three_of_200_sources_are_named_within_10s_and_the_suggestion_holds_them() -> Result<()> {
    let _g = serial();
    let test_start = Instant::now();
    let pair = Pair::new()?;
    let sources = source_addresses(&pair, 200)?;
    let heavy: Vec<String> = ["198.18.2.17", "198.18.2.101", "198.18.2.188"]
        .map(String::from)
        .to_vec();
    let policy = write_policy(
        "detect-dos",
        "endpoints:\n  clients: [198.18.2.0/24]\n  srv: [198.18.0.2/32]\n\
         channels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let mut follow = Follower::start(&agent)?;
    let trace = MapTrace::start(&agent, |r| r["to"] == "srv");
    let stop = StopFlag::new();
    // Bounds: the whole scenario takes under 50 s.
    const MAX_S: f64 = 70.0;
    let max = (MAX_S * DOS_QUIET_PPS * (197.0 + 3.0 * DOS_FACTOR)) as u64;
    let rx = {
        let flag = stop.flag();
        in_netns(&pair.server, move || {
            udp_tally("198.18.0.2:9000", MAX_S + 5.0, &flag)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let onset = unix_now().ceil() + DOS_QUIET_S;
    let is_heavy: Vec<bool> = sources.iter().map(|s| heavy.contains(s)).collect();
    let tx = {
        let (flag, srcs) = (stop.flag(), sources.clone());
        in_netns(&pair.client, move || {
            udp_crowd(
                &srcs,
                "198.18.0.2:9000",
                DOS_PAYLOAD,
                MAX_S,
                max,
                &flag,
                move |i, t| {
                    if is_heavy[i] && t >= onset {
                        DOS_QUIET_PPS * DOS_FACTOR
                    } else {
                        DOS_QUIET_PPS
                    }
                },
            )
        })
    };

    // The quiet phase: nothing to report.
    assert_quiet(&agent, &mut follow, onset - 0.5, "200 quiet sources")?;
    eprintln!(
        "dos: quiet for {DOS_QUIET_S} s, no event; {}",
        history_line(&agent, "clients->srv", "request_pps", 30)
    );

    let (event, delay) = detect(&mut follow, "dos", onset, Duration::from_secs(25), || {
        let talkers = agent
            .json(&["top-talkers", "--to", "srv", "-n", "6"])
            .map_or_else(|e| format!("{e:#}"), |t| t["talkers"].to_string());
        format!(
            "{}top-talkers --to srv: {talkers}",
            trace.table(onset, &["request_bps", "request_pps"]),
        )
    })?;
    let started = event["started"].as_u64().unwrap_or(0) as f64;
    eprintln!(
        "detection delay: dos {delay:.2} s from onset to the events --follow line (started {:+.0} s from onset); event {event}",
        started - onset
    );
    let mut named = from_of(&event);
    named.sort();
    let mut want = heavy.clone();
    want.sort();
    assert_eq!(
        named, want,
        "the dos event names the three flooders: {event}"
    );
    assert!(
        to_of(&event).iter().any(|t| t == "srv"),
        "the dos event names the server's set: {event}"
    );
    assert!(
        started >= onset - 1.0,
        "the event started at {started}, before the flood at {onset}: {event}"
    );
    listed(&agent, &event)?;

    // Suggest, apply unchanged, and measure.
    let id = event["id"].as_str().context("id")?;
    let t = Instant::now();
    let text = String::from_utf8(agent.cli(&["suggest", id])?.stdout)?;
    let suggest_s = t.elapsed().as_secs_f64();
    let file = write_policy("detect-dos-suggested", &text);
    let parsed = Policy::parse(&text, "suggested")
        .map_err(|e| anyhow::anyhow!("the suggested policy does not parse: {e}\n{text}"))?;
    let t = Instant::now();
    agent.cli(&["apply", file.to_str().context("path")?])?;
    let apply_s = t.elapsed().as_secs_f64();
    let applied = unix_now();
    eprintln!(
        "dos: suggest took {suggest_s:.2} s, apply {apply_s:.2} s, {:.1} s after onset; suggested:\n{text}",
        applied - onset
    );
    let held_by = channel_for(&parsed, &heavy[0])
        .with_context(|| format!("no channel holds {} in:\n{text}", heavy[0]))?;
    for h in &heavy {
        let c = channel_for(&parsed, h).map(|c| &c.name);
        assert_eq!(
            c,
            Some(&held_by.name),
            "one channel holds the three flooders:\n{text}"
        );
    }
    let limit = held_by.limit;
    assert!(
        !limit.is_unlimited(),
        "the channel holding the flooders has a rate limit: {held_by:?}"
    );
    for s in sources.iter().filter(|s| !heavy.contains(s)).step_by(7) {
        assert_ne!(
            channel_for(&parsed, s).map(|c| &c.name),
            Some(&held_by.name),
            "{s} is not a flooder:\n{text}"
        );
    }

    // Two seconds to drain the bucket's burst, six to measure.
    let from = (applied + 2.0).ceil() as u64;
    let to = from + 6;
    sleep_until(to as f64 + 1.0);
    stop.raise();
    let sent = tx.join().unwrap()??;
    let got = rx.join().unwrap()??;
    let pick_heavy = |s: &str| heavy.iter().any(|h| h == s);
    let pick_other = |s: &str| !heavy.iter().any(|h| h == s);
    let secs = to - from;
    let (heavy_sent, heavy_got) = (
        sent.sum(pick_heavy, from, to),
        got.sum(pick_heavy, from, to),
    );
    let (other_sent, other_got) = (
        sent.sum(pick_other, from, to),
        got.sum(pick_other, from, to),
    );
    // Before: the quiet phase's last 10 s.
    let quiet = (onset as u64 - 10, onset as u64);
    let heavy_quiet = bps(sent.sum(pick_heavy, quiet.0, quiet.1), 10);
    eprintln!(
        "dos: the three sent {:.0} kbit/s before the flood; after the apply they sent {:.0} kbit/s ({:.0} pkt/s) and {:.0} kbit/s ({:.0} pkt/s) arrived; suggested limit {:?} bit/s, {:?} pkt/s ({:.1}x their rate before the flood)",
        heavy_quiet / 1e3,
        bps(heavy_sent, secs) / 1e3,
        heavy_sent.pkts as f64 / secs as f64,
        bps(heavy_got, secs) / 1e3,
        heavy_got.pkts as f64 / secs as f64,
        limit.bandwidth_bps,
        limit.packets,
        limit.bandwidth_bps.map_or(f64::NAN, |b| b as f64 / heavy_quiet),
    );
    eprintln!(
        "dos: the 197 others sent {:.0} kbit/s and {:.0} kbit/s arrived ({:.3}) after the apply",
        bps(other_sent, secs) / 1e3,
        bps(other_got, secs) / 1e3,
        other_got.bytes as f64 / other_sent.bytes as f64,
    );
    if let Some(b) = limit.bandwidth_bps {
        assert!(
            bps(heavy_got, secs) <= b as f64 * 1.1,
            "the three arrive at {:.0} bit/s, over the suggested {b} bit/s",
            bps(heavy_got, secs)
        );
    }
    if let Some(p) = limit.packets {
        let pps = heavy_got.pkts as f64 / secs as f64;
        assert!(
            pps <= p as f64 * 1.1,
            "the three arrive at {pps:.0} pkt/s, over the suggested {p} pkt/s"
        );
    }
    assert!(
        heavy_got.bytes * 2 < heavy_sent.bytes,
        "the three are held: {} of {} bytes arrived",
        heavy_got.bytes,
        heavy_sent.bytes
    );
    assert!(
        other_got.bytes as f64 >= 0.9 * other_sent.bytes as f64,
        "the others keep at least 90%: {} of {} bytes arrived",
        other_got.bytes,
        other_sent.bytes
    );
    assert!(
        delay <= 10.0,
        "dos detected {delay:.2} s after onset (target 10 s)"
    );
    eprintln!("dos: test took {:.1} s", test_start.elapsed().as_secs_f64());
    Ok(())
}

/// Datagrams per second each spike source sends, and their payload.
const SPIKE_PPS: f64 = 50.0;
const SPIKE_PAYLOAD: usize = 400;
const SPIKE_STEADY_S: f64 = 20.0;

/// Two client sets, `a` and `b`, four sources each, send to `srv` at rates
/// that wander ±10% for 20 s (no event); then `a` sends three times as
/// much: within 5 s `events --follow` prints a `spike` event naming
/// `a` -> `srv` (and not `b`).
#[test]
fn spike_one_client_set_triples_and_its_interaction_is_named_within_5s() -> Result<()> {
    let _g = serial();
    let test_start = Instant::now();
    let pair = Pair::new()?;
    let all = source_addresses(&pair, 12)?;
    // a: 198.18.2.1-4, b: 198.18.2.9-12.
    let sources: Vec<String> = all[0..4].iter().chain(&all[8..12]).cloned().collect();
    let policy = write_policy(
        "detect-spike",
        "endpoints:\n  a: [198.18.2.0/29]\n  b: [198.18.2.8/29]\n  srv: [198.18.0.2/32]\n\
         channels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let mut follow = Follower::start(&agent)?;
    let trace = MapTrace::start(&agent, |r| r["to"] == "srv");
    let stop = StopFlag::new();
    const MAX_S: f64 = 60.0;
    let max = (MAX_S * SPIKE_PPS * 1.1 * 16.0) as u64;
    std::thread::sleep(Duration::from_millis(200));
    let onset = unix_now().ceil() + SPIKE_STEADY_S;
    let tx = {
        let (flag, srcs) = (stop.flag(), sources.clone());
        let mut wander: Vec<Wander> = (0..8).map(|i| Wander::new(100 + i, 0.1, 0.05)).collect();
        in_netns(&pair.client, move || {
            udp_crowd(
                &srcs,
                "198.18.0.2:9000",
                SPIKE_PAYLOAD,
                MAX_S,
                max,
                &flag,
                move |i, t| {
                    let step = if i < 4 && t >= onset { 3.0 } else { 1.0 };
                    SPIKE_PPS * wander[i].at(t) * step
                },
            )
        })
    };
    assert_quiet(&agent, &mut follow, onset - 0.5, "steady a and b")?;
    let (event, delay) = detect(&mut follow, "spike", onset, Duration::from_secs(20), || {
        trace.table(onset, &["request_bps", "request_pps"])
    })?;
    let started = event["started"].as_u64().unwrap_or(0) as f64;
    eprintln!(
        "detection delay: spike {delay:.2} s from onset to the events --follow line (started {:+.0} s from onset); event {event}",
        started - onset
    );
    // Let the traffic show its step in the history before checking it.
    sleep_until(onset + 6.0);
    let later = follow.drain(Duration::from_millis(100))?;
    stop.raise();
    let sent = tx.join().unwrap()??;
    let a_sent = sent.per_second(
        |s| sources[..4].iter().any(|x| x == s),
        onset as u64 - 10,
        onset as u64 + 6,
    );
    eprintln!(
        "spike: a sent per second (pkts) {:?}",
        a_sent.iter().map(|c| c.pkts).collect::<Vec<_>>()
    );
    for name in ["a->srv", "b->srv"] {
        eprintln!("spike: {}", history_line(&agent, name, "request_pps", 30));
    }
    // The traffic did what the test says: a tripled, b did not move.
    let level = |name: &str, from: f64, to: f64| -> Result<f64> {
        let v = history_values(&agent, name, "request_pps", 40)?;
        Ok(median(
            v.into_iter()
                .filter(|(t, _)| (*t as f64) >= from && (*t as f64) < to)
                .map(|(_, x)| x)
                .collect(),
        ))
    };
    let (a0, a1) = (
        level("a->srv", onset - 10.0, onset - 1.0)?,
        level("a->srv", onset + 2.0, onset + 6.0)?,
    );
    let (b0, b1) = (
        level("b->srv", onset - 10.0, onset - 1.0)?,
        level("b->srv", onset + 2.0, onset + 6.0)?,
    );
    eprintln!("spike: a->srv {a0:.0} -> {a1:.0} pkt/s, b->srv {b0:.0} -> {b1:.0} pkt/s");
    assert!(
        (2.5..3.5).contains(&(a1 / a0)),
        "a's rate tripled: {a0} -> {a1}"
    );
    assert!(
        (0.8..1.25).contains(&(b1 / b0)),
        "b's rate held: {b0} -> {b1}"
    );

    assert_eq!(
        from_of(&event),
        vec!["a".to_string()],
        "spike names a: {event}"
    );
    assert_eq!(
        to_of(&event),
        vec!["srv".to_string()],
        "spike names srv: {event}"
    );
    assert!(
        started >= onset - 1.0,
        "the event started at {started}, before the step at {onset}: {event}"
    );
    let all_events = listed(&agent, &event)?;
    for e in all_events.iter().chain(later.iter().map(|l| &l.json)) {
        assert!(
            !from_of(e).iter().any(|f| f == "b"),
            "b did not change, yet: {e}"
        );
    }
    assert!(
        delay <= 5.0,
        "spike detected {delay:.2} s after onset (target 5 s)"
    );
    eprintln!(
        "spike: test took {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn num(row: &Value, key: &str) -> f64 {
    row[key].as_f64().unwrap_or(f64::NAN)
}

/// Connections of the steady wrk; the surge adds three times as many.
const COLLAPSE_STEADY_CONNS: u32 = 200;
/// What each wrk connection waits, on average, between a response and its
/// next request: long against a response time, so that demand depends
/// little on how fast the server answers.
const COLLAPSE_THINK_MS: u32 = 1000;
const COLLAPSE_STEADY_S: f64 = 20.0;
/// The squeeze on the server's replies: about what the steady demand's
/// replies take (0.77 Mbit/s), with a short queue.
const COLLAPSE_TBF: [&str; 6] = ["rate", "800kbit", "burst", "4kb", "latency", "20ms"];

fn is_web(r: &Value) -> bool {
    r["from"] == "clients" && r["to"] == "web" && r["protocol"] == "tcp" && r["port"] == 80
}

/// The response/request ratio of a map row (wire bits).
fn reply_ratio(r: &Value) -> f64 {
    num(r, "response_bps") / num(r, "request_bps")
}

/// wrk drives nginx with 200 connections that each make a request about
/// once a second (a new connection per request), for 20 s: no event. Then
/// 600 more connections join while a TBF squeezes the server's replies to
/// about what the steady demand needed: within 15 s `events --follow`
/// prints an `upstream_collapse` event naming the server's set and the
/// clients. The agent runs on the clients' veth, which sees the replies
/// after the squeeze; its map shows the squeeze (response/request ratio
/// down, handshake time up, more new connections).
#[test]
fn upstream_collapse_of_a_squeezed_nginx_is_named_within_15s() -> Result<()> {
    let _g = serial();
    let test_start = Instant::now();
    let pair = Pair::new()?;
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            workers: 1,
            v6: None,
            ..Default::default()
        },
    )?;
    let policy = write_policy(
        "detect-collapse",
        "endpoints:\n  clients: [198.18.0.1/32]\n  web: [198.18.0.2/32]\n\
         channels:\n  - name: web\n    from: clients\n    to: web\n    protocol: tcp\n    ports: [80]\n",
    );
    let agent = Agent::start(&pair.client, &pair.client_if, &policy)?;
    let mut follow = Follower::start(&agent)?;
    let trace = MapTrace::start(&agent, is_web);
    let script = wrk_script(COLLAPSE_THINK_MS, true)?;
    let cfg = |connections| WrkConfig {
        connections,
        threads: 1,
        secs: 60,
        timeout_s: 2,
        script: Some(script.to_path_buf()),
        ..Default::default()
    };
    let url = "http://198.18.0.2:80/";
    let steady = WrkRun::start(&pair.client, url, &cfg(COLLAPSE_STEADY_CONNS))?;
    let stop = StopFlag::new();
    let handshakes = {
        let flag = stop.flag();
        let dst: SocketAddr = "198.18.0.2:80".parse()?;
        in_netns(&pair.client, move || {
            handshake_times(dst, Duration::from_millis(200), 60.0, &flag)
        })
    };
    let onset = unix_now().ceil() + COLLAPSE_STEADY_S;
    assert_quiet(&agent, &mut follow, onset - 0.5, "steady wrk")?;
    sleep_until(onset);
    let mut tbf = vec![
        "ip",
        "netns",
        "exec",
        &pair.server,
        "tc",
        "qdisc",
        "add",
        "dev",
    ];
    tbf.extend([pair.server_if.as_str(), "root", "tbf"]);
    tbf.extend(COLLAPSE_TBF);
    sh(&tbf)?;
    let surge = WrkRun::start(&pair.client, url, &cfg(3 * COLLAPSE_STEADY_CONNS))?;
    let keys = [
        "request_bps",
        "response_bps",
        "request_pps",
        "response_pps",
        "new_connections_per_s",
        "handshake_rtt_us",
        "resets_per_s",
    ];
    let result = detect(
        &mut follow,
        "upstream_collapse",
        onset,
        Duration::from_secs(30),
        || trace.table(onset, &keys),
    );
    // The squeeze's first 8 s in the map, whatever the outcome.
    sleep_until(onset + 8.0);
    stop.raise();
    let handshakes = handshakes.join().unwrap()?;
    let surge = surge.stop()?;
    let steady = steady.stop()?;
    drop(follow);
    // Handshakes timed by a client, every 200 ms: before, and in the squeeze.
    let timed = |from: f64, to: f64| -> (f64, usize, usize) {
        let w: Vec<&Option<f64>> = handshakes
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| d)
            .collect();
        let done: Vec<f64> = w.iter().filter_map(|d| **d).collect();
        let n = done.len();
        (
            if n == 0 { f64::NAN } else { median(done) * 1e6 },
            n,
            w.len() - n,
        )
    };
    let (hs_before, _, _) = timed(onset - 8.0, onset);
    let (hs_after, hs_done, hs_failed) = timed(onset + 1.0, onset + 8.0);
    eprintln!(
        "collapse: a client's handshakes (connect every 200 ms): median {hs_before:.0} us before, {hs_after:.0} us in the squeeze ({hs_done} done, {hs_failed} failed or over 3 s)"
    );
    eprintln!("collapse: steady wrk {}", steady.summary());
    eprintln!("collapse: surge wrk {}", surge.summary());
    eprintln!("collapse: {}", trace.table(onset, &keys));
    let before = trace.series(onset - 8.0, onset, is_web);
    let after = trace.series(onset + 1.0, onset + 8.0, is_web);
    anyhow::ensure!(
        before.len() >= 4 && after.len() >= 4,
        "map readings: {} before, {} after",
        before.len(),
        after.len()
    );
    let ratio_before = median(before.iter().map(|(_, r)| reply_ratio(r)).collect());
    let ratio_after = after
        .iter()
        .map(|(_, r)| reply_ratio(r))
        .fold(f64::MAX, f64::min);
    let rtt_before = median(
        before
            .iter()
            .filter_map(|(_, r)| r["handshake_rtt_us"].as_f64())
            .collect(),
    );
    let rtt_after = after
        .iter()
        .filter_map(|(_, r)| r["handshake_rtt_us"].as_f64())
        .fold(f64::NAN, f64::max);
    let new_before = median(
        before
            .iter()
            .map(|(_, r)| num(r, "new_connections_per_s"))
            .collect(),
    );
    let new_after = after
        .iter()
        .map(|(_, r)| num(r, "new_connections_per_s"))
        .fold(0.0, f64::max);
    eprintln!(
        "collapse: response/request {ratio_before:.2} -> {ratio_after:.2} (lowest), the agent's handshake time {rtt_before:.0} -> {rtt_after:.0} us (highest; NaN: null throughout), new connections {new_before:.0} -> {new_after:.0}/s (highest)"
    );
    let (event, delay) = result?;
    let started = event["started"].as_u64().unwrap_or(0) as f64;
    eprintln!(
        "detection delay: upstream_collapse {delay:.2} s from onset to the events --follow line (started {:+.0} s from onset); event {event}",
        started - onset
    );
    // The scenario did what it says: demand up, replies behind, slower handshakes.
    assert!(
        new_after > 2.5 * new_before,
        "the new connections rose: {new_before} -> {new_after}"
    );
    assert!(
        ratio_after < 0.8 * ratio_before,
        "the replies fell behind the requests: {ratio_before} -> {ratio_after}"
    );
    // Handshakes slowed, as a client timed them (the agent's own handshake
    // time is printed above and is in the event's evidence).
    assert!(
        hs_after > 3.0 * hs_before,
        "handshakes slowed: {hs_before:.0} -> {hs_after:.0} us (the agent showed {rtt_before:.0} -> {rtt_after:.0} us)"
    );
    assert!(
        to_of(&event).iter().any(|t| t == "web"),
        "the event names the server's set: {event}"
    );
    assert!(
        from_of(&event).iter().any(|f| f == "clients"),
        "the event names the clients that drive the demand: {event}"
    );
    assert!(
        started >= onset - 1.0,
        "the event started at {started}, before the squeeze at {onset}: {event}"
    );
    listed(&agent, &event)?;
    assert!(
        delay <= 15.0,
        "upstream collapse detected {delay:.2} s after onset (target 15 s)"
    );
    eprintln!(
        "collapse: test took {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
    Ok(())
}

const QUIET_S: f64 = 60.0;
const QUIET_SOURCES: u32 = 20;

/// 20 sources send UDP (20 to 58 datagrams a second each) and open TCP
/// connections (3 to 6 a second each, 200 bytes up, 4,000 down) for 60 s,
/// every rate wandering within ±30% (a shared drift and each source's
/// own): `events --follow` prints nothing and `events` lists nothing.
/// The map, read each second, shows the wander.
#[test]
fn quiet_60s_of_wandering_udp_and_tcp_from_20_sources_raise_no_event() -> Result<()> {
    let _g = serial();
    let test_start = Instant::now();
    let pair = Pair::new()?;
    let sources = source_addresses(&pair, QUIET_SOURCES)?;
    let policy = write_policy(
        "detect-quiet",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let mut follow = Follower::start(&agent)?;
    let trace = MapTrace::start(&agent, |r| r["to"] == "srv");
    let stop = StopFlag::new();
    let secs = QUIET_S + 2.0;
    let server = {
        let flag = stop.flag();
        in_netns(&pair.server, move || {
            reply_server("198.18.0.2:8080", (200, 4000), secs + 5.0, &flag)
        })
    };
    let rx = {
        let flag = stop.flag();
        in_netns(&pair.server, move || {
            udp_tally("198.18.0.2:9000", secs + 5.0, &flag)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let n = sources.len();
    // Each rate: base x (shared drift x own wander), within 0.7..1.3.
    let udp_base: Vec<f64> = (0..n).map(|i| 20.0 + 2.0 * i as f64).collect();
    let tcp_base: Vec<f64> = (0..n).map(|i| 3.0 + (i % 4) as f64).collect();
    let udp = {
        let (flag, srcs, udp_base) = (stop.flag(), sources.clone(), udp_base.clone());
        let mut drift = Wander::new(1, 0.15, 0.05);
        let mut own: Vec<Wander> = (0..n as u64)
            .map(|i| Wander::new(10 + i, 0.3, 0.1))
            .collect();
        let max = (secs * udp_base.iter().sum::<f64>() * 1.4) as u64;
        in_netns(&pair.client, move || {
            udp_crowd(
                &srcs,
                "198.18.0.2:9000",
                400,
                secs,
                max,
                &flag,
                move |i, t| udp_base[i] * (drift.at(t) * own[i].at(t)).clamp(0.7, 1.3),
            )
        })
    };
    let tcp = {
        let (flag, srcs) = (stop.flag(), sources.clone());
        let mut drift = Wander::new(2, 0.15, 0.05);
        let mut own: Vec<Wander> = (0..n as u64)
            .map(|i| Wander::new(50 + i, 0.3, 0.1))
            .collect();
        let max = (secs * tcp_base.iter().sum::<f64>() * 1.4) as u64;
        let dst: SocketAddr = "198.18.0.2:8080".parse()?;
        in_netns(&pair.client, move || {
            tcp_crowd(&srcs, dst, (200, 4000), secs, max, &flag, move |i, t| {
                tcp_base[i] * (drift.at(t) * own[i].at(t)).clamp(0.7, 1.3)
            })
        })
    };
    let start = unix_now();
    let end = start + QUIET_S;
    assert_quiet(&agent, &mut follow, end, "60 s of wandering traffic")?;
    stop.raise();
    let udp: Tally = udp.join().unwrap()??;
    let tcp = tcp.join().unwrap()??;
    let served = server.join().unwrap()??;
    let got = rx.join().unwrap()??;
    let (from, to) = (start.ceil() as u64 + 2, end.floor() as u64 - 1);
    let sent_all = udp.sum(|_| true, from, to);
    let got_all = got.sum(|_| true, from, to);
    eprintln!(
        "quiet: UDP {} datagrams sent, {} arrived; TCP {} exchanges done, {} failed, {served} served",
        sent_all.pkts, got_all.pkts, tcp.done, tcp.failed
    );
    assert!(got_all.pkts * 100 >= sent_all.pkts * 99, "UDP arrived");
    assert!(
        tcp.failed * 100 <= tcp.done,
        "TCP exchanges failed: {tcp:?}"
    );
    // The agent saw the rates wander: per source, the map's UDP rate read
    // each second stays within the band around the source's base rate
    // (±30%, and a little for the reading's own noise) from its 5th to its
    // 95th percentile, and spans a good part of it (1.3 / 0.7 = 1.86 from
    // bottom to top). Percentiles, not extremes: a source of 20
    // datagrams/s that the sender catches up after a stall of a few
    // hundred milliseconds reads 1.5 for one second, which says nothing
    // about the agent.
    let mut spans = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let mut v: Vec<f64> = trace
            .series(from as f64, to as f64, |r| {
                r["from"] == s.as_str() && r["protocol"] == "udp"
            })
            .iter()
            .map(|(_, r)| num(r, "request_pps") / udp_base[i])
            .collect();
        // About one reading a second; at least two thirds of the window's.
        anyhow::ensure!(
            v.len() as u64 >= (to - from) * 2 / 3,
            "{s}: {} map readings in {} s",
            v.len(),
            to - from
        );
        v.sort_by(f64::total_cmp);
        let (p5, p95) = (v[v.len() / 20], v[v.len() * 19 / 20]);
        assert!(
            p5 > 0.6 && p95 < 1.4,
            "{s}: its UDP rate left the ±30% band: {p5:.2}..{p95:.2} of its base (5th to 95th percentile)"
        );
        spans.push((p5, p95));
    }
    eprintln!(
        "quiet: per source, the 5th and 95th percentiles of its UDP rate read each second, over its base: {:.2?}",
        spans
    );
    let typical = median(spans.iter().map(|(p5, p95)| p95 / p5).collect());
    assert!(
        typical >= 1.4,
        "the rates wandered: 95th/5th percentile {typical:.2} in the median source"
    );
    eprintln!(
        "quiet: test took {:.1} s",
        test_start.elapsed().as_secs_f64()
    );
    Ok(())
}
