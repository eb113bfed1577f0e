//! Detection (`bench detect`): how fast the agent finds each pattern, how
//! often it raises an event on steady traffic, and what detecting costs.
//!
//! - **Delay**: real traffic through a veth pair with the real agent
//!   sampling at its default period (1 s), a fresh pair and agent per run,
//!   the onset at a random point of the sampling period;
//!   the delay is from the onset (the instant the generator's rates change)
//!   to the event's first appearance in `tc-agent events` (polled every
//!   100 ms), median/min/max over the runs.
//!   - `dos`: 200 sources send UDP quietly, then three jump 80x;
//!   - `spike`: three client sets of 16 sources each, then one set triples;
//!   - `upstream_collapse`: 20 sources send HTTP requests to nginx (a new
//!     connection each, open loop), then demand quadruples while a TBF on
//!     the server's egress squeezes its replies; the agent runs on the
//!     client's side, where unanswered handshakes and missing replies show.
//! - **False events**: 20 sources send UDP and HTTP whose rates wander
//!   ±30% (a random walk, a step a second) for a bounded time; every event
//!   the agent opens counts.
//! - **CPU**: the agent's utime + stime (`/proc/PID/stat`) with 1,000 live
//!   interactions (raw frames from 1,000 sources), and `Detector::observe`
//!   timed directly on 1,000 synthetic interactions a sample.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tc_agent::detect::{ChannelSample, Detector, PairSample, Sample, SourceSample};
use tc_common::IxCounters;
use tc_tests::{
    netns::{in_netns, mac_of, sh, write_policy, Agent, Pair},
    packet::{self, UDP},
    scenario::{add_sources, HttpLoad, Rates, UdpLoad, UdpSink, Wander},
    web::{Nginx, NginxConfig},
};

/// The agent's sampling period in the traffic parts: its default, what an
/// operator runs.
const SAMPLE_MS: &str = "1000";
/// How long after the onset a run waits for its event.
const WAIT_S: f64 = 30.0;
/// Polling period of `tc-agent events`.
const POLL: Duration = Duration::from_millis(100);
/// UDP port of the sink.
const UDP_PORT: u16 = 9000;

/// What the `detect` part runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parts to run: `delays`, `quiet`, `cpu`, `observe` (all when empty).
    pub parts: Vec<String>,
    /// Patterns whose delay to measure (all when empty).
    pub patterns: Vec<String>,
    /// Runs per pattern.
    pub runs: usize,
    /// Minutes of steady traffic for the false-event rate.
    pub quiet_minutes: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            parts: vec![],
            patterns: vec![],
            runs: 5,
            quiet_minutes: 10.0,
        }
    }
}

impl Options {
    /// `bench detect [delays|quiet|cpu|observe]... [--pattern P]... [--runs N]
    /// [--quiet-minutes M]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "delays" | "quiet" | "cpu" | "observe" => o.parts.push(a.clone()),
                "--pattern" => {
                    let p = it.next().context("--pattern needs a value")?;
                    anyhow::ensure!(
                        PATTERNS.contains(&p.as_str()),
                        "unknown pattern `{p}`: choose from {PATTERNS:?}"
                    );
                    o.patterns.push(p.clone());
                }
                "--runs" => {
                    o.runs = it.next().context("--runs needs a value")?.parse()?;
                    anyhow::ensure!(o.runs >= 1, "--runs must be at least 1");
                }
                "--quiet-minutes" => {
                    o.quiet_minutes = it
                        .next()
                        .context("--quiet-minutes needs a value")?
                        .parse()?;
                    anyhow::ensure!(
                        o.quiet_minutes > 0.0 && o.quiet_minutes <= 120.0,
                        "--quiet-minutes must be in (0, 120]"
                    );
                }
                other => anyhow::bail!(
                    "unknown argument `{other}`: bench detect [delays|quiet|cpu|observe]... [--pattern dos|spike|upstream_collapse]... [--runs N] [--quiet-minutes M]"
                ),
            }
        }
        Ok(o)
    }

    fn runs_part(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }
}

/// The patterns, as `events` names them.
const PATTERNS: [&str; 3] = ["dos", "spike", "upstream_collapse"];

/// Runs the parts `o` asks for; the JSON document of what was measured.
pub fn run(o: &Options) -> Result<serde_json::Value> {
    let mut doc = serde_json::Map::new();
    if o.runs_part("observe") {
        doc.insert("observe_cost".into(), observe_cost()?);
    }
    if o.runs_part("delays") {
        doc.insert("delays".into(), delays(o)?);
    }
    if o.runs_part("quiet") {
        doc.insert("false_events".into(), quiet(o.quiet_minutes)?);
    }
    if o.runs_part("cpu") {
        doc.insert("agent_cpu".into(), agent_cpu()?);
    }
    Ok(serde_json::Value::Object(doc))
}

/// A pause of 0 to 1 s, different each run: the agent samples once a
/// second from its start, and every run's steps take about as long, so
/// without it every onset would fall at the same point of the sampling
/// period and the runs would repeat one delay instead of spreading over
/// the period as real onsets do.
fn phase() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // The low digits of the clock, scrambled into a fraction of a second.
    Duration::from_nanos(u64::from(nanos.wrapping_mul(2_654_435_761)) % 1_000_000_000)
}

/// `tc-agent events -o json`: every event the agent keeps.
fn events(agent: &Agent) -> Result<Vec<serde_json::Value>> {
    let out = agent.cli(&["events", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("events output: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(v["events"].as_array().cloned().unwrap_or_default())
}

/// What `tc-agent map -o json` shows going to `to`: interactions, their
/// request packets per second and response packets per second; printed at
/// the onset, so every run shows that the agent saw the traffic it was
/// meant to.
fn map_line(agent: &Agent, to: &str) -> Result<String> {
    let map: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["map", "-o", "json"])?.stdout)?;
    let rows: Vec<&serde_json::Value> = map["interactions"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["to"] == to).collect())
        .unwrap_or_default();
    let sum = |f: &str| rows.iter().filter_map(|r| r[f].as_f64()).sum::<f64>();
    Ok(format!(
        "map: {} interactions to {to}, {:.0} request pkt/s, {:.0} response pkt/s",
        rows.len(),
        sum("request_pps"),
        sum("response_pps")
    ))
}

/// One run of one pattern.
#[derive(Debug, Clone)]
struct Run {
    /// Seconds from the onset to the event's first appearance in `events`.
    delay_s: Option<f64>,
    /// The event's own `started` (whole unix seconds, the sample that
    /// opened it) minus the onset: coarser, and not past the poll.
    started_after_onset_s: Option<f64>,
    /// Whether the event names what the scenario made happen.
    named: bool,
    /// The event, as `events` showed it.
    event: Option<serde_json::Value>,
    /// Other events opened from the agent's start to the end of the run:
    /// `kind: summary`, warm-up included.
    others: Vec<String>,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "delay_s": self.delay_s, "started_after_onset_s": self.started_after_onset_s,
            "named": self.named, "event": self.event, "other_events": self.others,
        })
    }
}

/// Waits up to [`WAIT_S`] after `onset` for an event of `kind`; the run's
/// outcome, with `named` judged by `names_it`.
fn wait_for(
    agent: &Agent,
    kind: &str,
    onset: Instant,
    onset_unix: f64,
    names_it: impl Fn(&serde_json::Value) -> bool,
) -> Result<Run> {
    let deadline = onset + Duration::from_secs_f64(WAIT_S);
    let mut run = Run {
        delay_s: None,
        started_after_onset_s: None,
        named: false,
        event: None,
        others: vec![],
    };
    while Instant::now() < deadline {
        let evs = events(agent)?;
        let seen = Instant::now();
        if let Some(e) = evs.iter().find(|e| e["kind"] == kind) {
            run.delay_s = Some((seen - onset).as_secs_f64());
            run.started_after_onset_s = e["started"].as_f64().map(|s| s - onset_unix);
            run.named = names_it(e);
            run.event = Some(e.clone());
            break;
        }
        std::thread::sleep(POLL);
    }
    let id = run.event.as_ref().map(|e| e["id"].clone());
    run.others = events(agent)?
        .iter()
        .filter(|e| Some(&e["id"]) != id.as_ref())
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap_or("?"),
                e["summary"].as_str().unwrap_or("")
            )
        })
        .collect();
    Ok(run)
}

/// Whether `e[field]` (a list of names) holds `name`.
fn lists(e: &serde_json::Value, field: &str, name: &str) -> bool {
    e[field]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == name))
}

/// Quiet UDP from 200 sources (10 datagrams/s each), then three of them
/// at 80x: a `dos` event naming all three.
fn dos_run() -> Result<Run> {
    const WARM_S: f64 = 25.0;
    const BASE_PPS: f64 = 10.0;
    const FLOODERS: [usize; 3] = [17, 101, 188];
    let pair = Pair::new()?;
    let sources = add_sources(&pair.client, &pair.client_if, 10, 200)?;
    let dst: SocketAddr = format!("198.18.0.2:{UDP_PORT}").parse()?;
    let _sink = UdpSink::start(&pair.server, dst, WARM_S + WAIT_S + 10.0)?;
    let policy = write_policy(
        "bench-detect-dos",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--sample-ms", SAMPLE_MS],
    )?;
    let rates = Rates::uniform(sources.len(), BASE_PPS);
    let _load = UdpLoad::start(
        &pair.client,
        &sources,
        dst,
        200,
        &rates,
        WARM_S + WAIT_S + 5.0,
    )?;
    std::thread::sleep(Duration::from_secs_f64(WARM_S) + phase());
    println!("    before the onset, {}", map_line(&agent, "srv")?);
    let (onset, onset_unix) = (Instant::now(), tc_tests::sources::unix_now());
    rates.scale(&FLOODERS, 80.0);
    let flooders: Vec<String> = FLOODERS.iter().map(|&i| sources[i].to_string()).collect();
    let run = wait_for(&agent, "dos", onset, onset_unix, |e| {
        flooders.iter().all(|f| lists(e, "from", f))
    })?;
    println!("    after the onset, {}", map_line(&agent, "srv")?);
    Ok(run)
}

/// Three client sets of 16 sources (20 datagrams/s each), then every
/// source of set `a` triples: a `spike` event naming `a` and `srv`.
fn spike_run() -> Result<Run> {
    const WARM_S: f64 = 25.0;
    const BASE_PPS: f64 = 20.0;
    let pair = Pair::new()?;
    // 198.18.0.16 - 198.18.0.63: sets a, b and c.
    let sources = add_sources(&pair.client, &pair.client_if, 16, 48)?;
    let dst: SocketAddr = format!("198.18.0.2:{UDP_PORT}").parse()?;
    let _sink = UdpSink::start(&pair.server, dst, WARM_S + WAIT_S + 10.0)?;
    let policy = write_policy(
        "bench-detect-spike",
        "endpoints:\n  a: [198.18.0.16/28]\n  b: [198.18.0.32/28]\n  c: [198.18.0.48/28]\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--sample-ms", SAMPLE_MS],
    )?;
    let rates = Rates::uniform(sources.len(), BASE_PPS);
    let _load = UdpLoad::start(
        &pair.client,
        &sources,
        dst,
        400,
        &rates,
        WARM_S + WAIT_S + 5.0,
    )?;
    std::thread::sleep(Duration::from_secs_f64(WARM_S) + phase());
    println!("    before the onset, {}", map_line(&agent, "srv")?);
    let (onset, onset_unix) = (Instant::now(), tc_tests::sources::unix_now());
    rates.scale(&(0..16).collect::<Vec<_>>(), 3.0);
    let run = wait_for(&agent, "spike", onset, onset_unix, |e| {
        lists(e, "from", "a") && lists(e, "to", "srv")
    })?;
    println!("    after the onset, {}", map_line(&agent, "srv")?);
    Ok(run)
}

/// 20 sources send HTTP requests to nginx (10 a second each, a connection
/// each), then demand quadruples while a TBF on the server's egress
/// squeezes its replies to 800 kbit/s, about what the steady demand's
/// replies took (as the `detect` test does): an `upstream_collapse` event
/// naming `srv`. The agent runs on the client's side, which sees the
/// replies after the squeeze.
fn collapse_run() -> Result<Run> {
    const WARM_S: f64 = 25.0;
    const BASE_RPS: f64 = 10.0;
    let pair = Pair::new()?;
    let sources = add_sources(&pair.client, &pair.client_if, 10, 20)?;
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            workers: 1,
            v6: None,
            ..Default::default()
        },
    )?;
    let policy = write_policy(
        "bench-detect-collapse",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n    protocol: tcp\n    direction: egress\n",
    );
    let agent = Agent::start_with(
        &pair.client,
        &pair.client_if,
        &policy,
        &["--sample-ms", SAMPLE_MS],
    )?;
    let rates = Rates::uniform(sources.len(), BASE_RPS);
    let load = HttpLoad::start(
        &pair.client,
        &sources,
        "198.18.0.2:80".parse()?,
        &rates,
        WARM_S + WAIT_S + 5.0,
    )?;
    std::thread::sleep(Duration::from_secs_f64(WARM_S) + phase());
    println!("    before the onset, {}", map_line(&agent, "srv")?);
    let warm = load.counts();
    let (onset, onset_unix) = (Instant::now(), tc_tests::sources::unix_now());
    sh(&[
        "ip",
        "netns",
        "exec",
        &pair.server,
        "tc",
        "qdisc",
        "add",
        "dev",
        &pair.server_if,
        "root",
        "tbf",
        "rate",
        "800kbit",
        "burst",
        "4kb",
        "latency",
        "20ms",
    ])?;
    rates.scale(&(0..sources.len()).collect::<Vec<_>>(), 4.0);
    let run = wait_for(&agent, "upstream_collapse", onset, onset_unix, |e| {
        lists(e, "to", "srv")
    })?;
    println!("    after the onset, {}", map_line(&agent, "srv")?);
    let after = load.counts();
    println!(
        "    (HTTP before the onset: {} answered, {} failed; after: {} answered, {} failed)",
        warm.ok,
        warm.failed,
        after.ok - warm.ok,
        after.failed - warm.failed
    );
    Ok(run)
}

/// Median of a non-empty sample.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The delay table: every pattern asked for, `o.runs` runs each.
fn delays(o: &Options) -> Result<serde_json::Value> {
    println!(
        "\nDetection delay: seconds from the onset to the event in `tc-agent events` (polled every {} ms), agent sampling every {SAMPLE_MS} ms, {} run(s) per pattern, each on a fresh pair and agent; waits {WAIT_S} s",
        POLL.as_millis(),
        o.runs
    );
    let mut out = serde_json::Map::new();
    let mut rows = Vec::new();
    for pattern in PATTERNS {
        if !o.patterns.is_empty() && !o.patterns.iter().any(|p| p == pattern) {
            continue;
        }
        let mut runs = Vec::new();
        for i in 0..o.runs {
            let took = Instant::now();
            let r = match pattern {
                "dos" => dos_run(),
                "spike" => spike_run(),
                _ => collapse_run(),
            }?;
            println!(
                "  {pattern} run {} ({:.0} s): {} {}{}",
                i + 1,
                took.elapsed().as_secs_f64(),
                r.delay_s
                    .map_or(format!("not detected within {WAIT_S} s"), |d| format!(
                        "{d:.2} s"
                    )),
                if r.event.is_some() && !r.named {
                    "(event does not name the scenario's sources/destination) "
                } else {
                    ""
                },
                if r.others.is_empty() {
                    String::new()
                } else {
                    format!("; other events: {}", r.others.join(" | "))
                }
            );
            runs.push(r);
        }
        let d: Vec<f64> = runs.iter().filter_map(|r| r.delay_s).collect();
        let started: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.started_after_onset_s)
            .collect();
        let (lo, hi) = d
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let named = runs.iter().filter(|r| r.named).count();
        let others = runs.iter().map(|r| r.others.len()).sum::<usize>();
        rows.push(format!(
            "{pattern:<18} {:>4} {:>9} {:>8} {:>6} {:>6} {:>14} {:>6} {:>7}",
            o.runs,
            format!("{}/{}", d.len(), o.runs),
            fmt_s(median(d.clone())),
            fmt_s(lo),
            fmt_s(hi),
            fmt_s(median(started.clone())),
            format!("{named}/{}", o.runs),
            others
        ));
        out.insert(
            pattern.into(),
            serde_json::json!({
                "runs": runs.len(), "detected": d.len(), "named": named,
                "median_s": if d.is_empty() { None } else { Some(median(d.clone())) },
                "min_s": d.iter().copied().reduce(f64::min), "max_s": d.iter().copied().reduce(f64::max),
                "median_started_after_onset_s": if started.is_empty() { None } else { Some(median(started)) },
                "each": runs.iter().map(Run::json).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "\n{:<18} {:>4} {:>9} {:>8} {:>6} {:>6} {:>14} {:>6} {:>7}",
        "PATTERN",
        "RUNS",
        "DETECTED",
        "MEDIAN s",
        "MIN s",
        "MAX s",
        "started-onset",
        "NAMED",
        "OTHERS"
    );
    for r in rows {
        println!("{r}");
    }
    println!("(started-onset: the event's own whole-second `started` minus the onset, median; OTHERS: other events opened in all runs, warm-up included)");
    out.insert("sample_ms".into(), SAMPLE_MS.parse::<u64>()?.into());
    out.insert("poll_ms".into(), (POLL.as_millis() as u64).into());
    Ok(serde_json::Value::Object(out))
}

fn fmt_s(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "-".into()
    }
}

/// Steady traffic for `minutes`: 20 sources, each sending UDP (mean 50
/// datagrams/s) and HTTP requests (mean 4 a second, a connection each),
/// every rate on its own random walk within ±30% (a step of up to 10% a
/// second). The sources are in no set, so each is its own interaction
/// (40 series wandering ±30%, not two smoothed sums). Every event the
/// agent opens is a false one.
fn quiet(minutes: f64) -> Result<serde_json::Value> {
    const UDP_PPS: f64 = 50.0;
    const HTTP_RPS: f64 = 4.0;
    let secs = minutes * 60.0;
    println!(
        "\nFalse events: {minutes} min of steady traffic, 20 sources of UDP ({UDP_PPS}/s) and HTTP ({HTTP_RPS} req/s, a connection each), each rate wandering within ±30%; agent sampling every {SAMPLE_MS} ms"
    );
    let pair = Pair::new()?;
    let sources = add_sources(&pair.client, &pair.client_if, 10, 20)?;
    let dst: SocketAddr = format!("198.18.0.2:{UDP_PORT}").parse()?;
    let _sink = UdpSink::start(&pair.server, dst, secs + 30.0)?;
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            workers: 1,
            v6: None,
            ..Default::default()
        },
    )?;
    let policy = write_policy(
        "bench-detect-quiet",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: udp-to-srv\n    to: srv\n    protocol: udp\n  - name: tcp-to-srv\n    to: srv\n    protocol: tcp\n",
    );
    let agent = Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--sample-ms", SAMPLE_MS],
    )?;
    let (mut wu, mut wh) = (
        Wander::new(1, sources.len(), 0.1, 0.3),
        Wander::new(2, sources.len(), 0.1, 0.3),
    );
    let udp = Rates::new(wu.factors.iter().map(|f| f * UDP_PPS).collect());
    let http = Rates::new(wh.factors.iter().map(|f| f * HTTP_RPS).collect());
    let start = Instant::now();
    let udp_load = UdpLoad::start(&pair.client, &sources, dst, 200, &udp, secs + 5.0)?;
    let http_load = HttpLoad::start(
        &pair.client,
        &sources,
        "198.18.0.2:80".parse()?,
        &http,
        secs + 5.0,
    )?;
    let mut next_report = 60.0;
    while start.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_secs(1));
        udp.set_all(&wu.step().iter().map(|f| f * UDP_PPS).collect::<Vec<_>>());
        http.set_all(&wh.step().iter().map(|f| f * HTTP_RPS).collect::<Vec<_>>());
        if start.elapsed().as_secs_f64() >= next_report {
            next_report += 60.0;
            println!(
                "  {:.0} min: {} events so far",
                start.elapsed().as_secs_f64() / 60.0,
                events(&agent)?.len()
            );
        }
    }
    let observed = start.elapsed().as_secs_f64();
    let evs = events(&agent)?;
    println!("  at the end, {}", map_line(&agent, "srv")?);
    let sent = udp_load.stop()?;
    let h = http_load.counts();
    drop(http_load);
    let per_hour = evs.len() as f64 / (observed / 3600.0);
    println!(
        "  sent {} datagrams, {} HTTP requests answered ({} failed)",
        sent.iter().sum::<u64>(),
        h.ok,
        h.failed
    );
    for e in &evs {
        println!(
            "  event {} {}: {}",
            e["id"].as_str().unwrap_or("?"),
            e["kind"].as_str().unwrap_or("?"),
            e["summary"].as_str().unwrap_or("")
        );
    }
    println!(
        "\n{:<14} {:>10} {:>8} {:>12}",
        "OBSERVED", "EVENTS", "PER HOUR", "BY KIND"
    );
    let by_kind: Vec<String> = PATTERNS
        .iter()
        .map(|k| format!("{k}={}", evs.iter().filter(|e| e["kind"] == *k).count()))
        .collect();
    println!(
        "{:<14} {:>10} {:>8.1} {:>12}",
        format!("{:.1} min", observed / 60.0),
        evs.len(),
        per_hour,
        by_kind.join(" ")
    );
    Ok(serde_json::json!({
        "observed_s": observed, "events": evs.len(), "per_hour": per_hour,
        "sources": sources.len(), "udp_pps_mean": UDP_PPS, "http_rps_mean": HTTP_RPS,
        "wander": "random walk within ±30%, step up to 10% a second",
        "datagrams_sent": sent.iter().sum::<u64>(), "http_ok": h.ok, "http_failed": h.failed,
        "list": evs,
    }))
}

/// The agent's CPU with 1,000 live interactions: raw UDP frames from 1,000
/// source addresses (20,000 a second, every source 20 times a second) to
/// one server, measured over 30 s after 30 s of warm-up (past the
/// detectors' warm-up), with `extra` run arguments.
fn agent_cpu_once(extra: &[&str]) -> Result<(f64, f64, u64)> {
    const SOURCES: u32 = 1000;
    const WARM_S: f64 = 30.0;
    const SECS: f64 = 30.0;
    let pair = Pair::new()?;
    let policy = write_policy(
        "bench-detect-cpu",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: ch\n    to: srv\n    protocol: udp\n",
    );
    let mut args = vec!["--sample-ms", SAMPLE_MS];
    args.extend_from_slice(extra);
    let agent = Agent::start_with(&pair.server, &pair.server_if, &policy, &args)?;
    let pid = agent.pid().context("agent pid")?;
    let mac = mac_of(&pair.server, &pair.server_if)?;
    let frames: Vec<Vec<u8>> = (0..SOURCES)
        .map(|i| {
            let src = format!("198.18.{}.{}", 128 + (i >> 8), i & 0xff);
            packet::ipv4(&src, "198.18.0.2", UDP, UDP_PORT, 18)
        })
        .collect();
    let iface = pair.client_if.clone();
    let sender = in_netns(&pair.client, move || -> Result<u64> {
        super::interactions::send_cycle(&iface, mac, &frames, 20_000.0, WARM_S + SECS)
    });
    std::thread::sleep(Duration::from_secs_f64(WARM_S));
    let (c0, t0) = (super::interactions::cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(SECS));
    let (c1, t1) = (super::interactions::cpu_ticks(pid)?, Instant::now());
    let rss = super::interactions::rss_kib(pid)?;
    let map: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["map", "-o", "json"])?.stdout)?;
    let pairs = map["interactions"].as_array().map_or(0, |a| a.len()) as u64;
    sender.join().expect("sender")??;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((
        (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64(),
        rss as f64 / 1024.0,
        pairs,
    ))
}

/// The agent's CPU with 1,000 live interactions, with detection and
/// without (`run --no-detect`, hidden), one after the other in this run.
fn agent_cpu() -> Result<serde_json::Value> {
    println!(
        "\nAgent CPU with 1,000 live interactions (raw UDP frames from 1,000 sources, 20,000/s), sampling every {SAMPLE_MS} ms, utime+stime over 30 s after 30 s of warm-up:"
    );
    let (off, rss_off, pairs_off) = agent_cpu_once(&["--no-detect"])?;
    println!(
        "  detection off (run --no-detect): {:.2}% of a core, RSS {rss_off:.1} MiB, {pairs_off} interactions in `map`",
        100.0 * off
    );
    let (on, rss_on, pairs_on) = agent_cpu_once(&[])?;
    println!(
        "  detection on:                    {:.2}% of a core, RSS {rss_on:.1} MiB, {pairs_on} interactions in `map`",
        100.0 * on
    );
    println!(
        "  detection adds {:+.2}% of a core (clock ticks of 10 ms: ±0.03% of a core over 30 s)",
        100.0 * (on - off)
    );
    Ok(serde_json::json!({
        "detect_off": {"cpu_core_share": off, "rss_mib": rss_off, "map_interactions": pairs_off},
        "detect_on": {"cpu_core_share": on, "rss_mib": rss_on, "map_interactions": pairs_on},
        "added_core_share": on - off,
    }))
}

/// `Detector::observe` timed directly: 1,000 interactions between names
/// (1,000 sources to one server, UDP and TCP) and their 1,000 sources a
/// sample, rates wandering ±30%; 300 samples of warm-up, then 600 timed.
fn observe_cost() -> Result<serde_json::Value> {
    const N: usize = 1000;
    const WARM: usize = 300;
    const TIMED: usize = 600;
    let mut w = Wander::new(7, N, 0.1, 0.3);
    let mut det = Detector::default();
    let t0 = 1_800_000_000u64;
    let mut times = Vec::with_capacity(TIMED);
    let mut events = 0usize;
    for i in 0..WARM + TIMED {
        let f = w.step().to_vec();
        let mut s = Sample {
            t: t0 + i as u64,
            dt: 1.0,
            pairs: Vec::with_capacity(N),
            sources: Vec::with_capacity(N),
            channels: vec![ChannelSample {
                name: "ch".into(),
                passed_bps: 0.0,
                passed_pps: 0.0,
                dropped_bps: 0.0,
                dropped_pps: 0.0,
                ..ChannelSample::default()
            }],
        };
        let (mut bps, mut pps) = (0.0, 0.0);
        for (j, k) in f.iter().enumerate() {
            let src = format!("198.18.{}.{}", 128 + (j >> 8), j & 0xff);
            let pkts = (20.0 * k).round() as u64;
            let tcp = j % 2 == 0;
            let d = IxCounters {
                req_pkts: pkts,
                req_bytes: pkts * 142,
                resp_pkts: if tcp { pkts } else { 0 },
                resp_bytes: if tcp { pkts * 300 } else { 0 },
                syns: if tcp { pkts / 4 } else { 0 },
                synacks: if tcp { pkts / 4 } else { 0 },
                rsts: 0,
                fins: if tcp { pkts / 2 } else { 0 },
                rtt_sum_ns: if tcp { pkts / 4 * 50_000 } else { 0 },
                rtt_count: if tcp { pkts / 4 } else { 0 },
            };
            bps += 8.0 * d.req_bytes as f64;
            pps += d.req_pkts as f64;
            s.pairs.push(PairSample {
                from: src.clone(),
                to: "srv".into(),
                proto: if tcp { 6 } else { 17 },
                port: if tcp { 80 } else { UDP_PORT },
                d,
            });
            s.sources.push(SourceSample {
                source: src,
                to: "srv".into(),
                req_pkts: d.req_pkts,
                req_bytes: d.req_bytes,
            });
        }
        s.channels[0].passed_bps = bps;
        s.channels[0].passed_pps = pps;
        let t = Instant::now();
        events += det.observe(&s).len();
        let el = t.elapsed();
        if i >= WARM {
            times.push(el.as_secs_f64() * 1e6);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted[(sorted.len() - 1) * 99 / 100];
    let med = median(times);
    println!(
        "\n`Detector::observe` with {N} interactions and {N} sources a sample ({TIMED} timed samples after {WARM} of warm-up, rates wandering ±30%):"
    );
    println!(
        "  median {med:.0} us, mean {mean:.0} us, p99 {p99:.0} us a sample: {:.3}% of a core at one sample a second; {events} event changes on this steady series",
        mean / 1e4
    );
    Ok(serde_json::json!({
        "interactions": N, "sources": N, "timed_samples": TIMED, "warm_samples": WARM,
        "median_us": med, "mean_us": mean, "p99_us": p99,
        "core_share_at_1s": mean / 1e6, "event_changes": events,
    }))
}
