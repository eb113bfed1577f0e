//! `cargo xtask bench`: every figure with its baseline measured in the same run.
//!
//! 1. Per-packet cost with BPF_PROG_TEST_RUN against a bare pass program:
//!    repeat = 1,000,000 on one pinned CPU, median of 3 runs.
//! 2. Enforcement accuracy: iperf3 TCP through a veth pair, 1 and 4
//!    streams at 10/100/1000 Mbit/s, tc-agent (drop) side by side with
//!    Linux TBF and HTB on the same veth, with ping RTT under load.
//! 3. Throughput cost of attaching the tc programs with no matching channel.
//! 4. Connection tracking (`connections`): per-packet cost, and the new
//!    connections per second nginx sustains with and without the agent.
//! 5. Interaction accounting (`interactions`): per-packet cost on the
//!    cached path and under a random-source flood, and the agent's CPU and
//!    memory with 10,000 active interactions against 10.
//! 6. Detection (`detect`): delay from onset to event for each pattern
//!    (several runs), false events per hour of steady traffic, and the
//!    agent's CPU for detection with 1,000 interactions; also written to
//!    `target/bench-detect.json`. `bench detect` takes
//!    `[delays|quiet|cpu|observe]... [--pattern P]... [--runs N]
//!    [--quiet-minutes M]`.
//! 7. Apply (`apply`): a full apply and a one-channel change of the
//!    1,024-channel policy through the CLI, and the agent's RSS at rest and
//!    at peak, against issue 11's targets; also `target/bench-apply.json`.
//! 8. XDP floods (`flood`): the packets per second the agent's XDP hook
//!    sustains under a 64-byte UDP flood (live frames from an XDP_TX
//!    generator), against a bare XDP_DROP and a program that only reads
//!    the headers, on the same veth, and a legitimate flow's flow-cache
//!    hits during a flood; also written to
//!    `target/bench-flood.json`.
//!
//! Not a test: this machine is noisy, so nothing here asserts. Results go to
//! `target/bench.json`; `bench PART` runs one part (`bench --help` lists
//! them).

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use tc_agent::{
    datapath::{Datapath, TC_INGRESS, TC_PASS},
    policy::{compile::compile, Policy},
};
use tc_tests::{
    netns::{iperf3, ping_summary, server_goodput, sh, write_policy, Agent, Pair},
    packet::{self, UDP},
};

#[path = "bench/apply.rs"]
mod apply;
#[path = "bench/connections.rs"]
mod connections;
#[path = "bench/detect.rs"]
mod detect;
#[path = "bench/flood.rs"]
mod flood;
#[path = "bench/interactions.rs"]
mod interactions;

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 3;

fn ns_per_packet(dp: &Datapath, prog: &str, frame: &[u8]) -> Result<f64> {
    let p: &SchedClassifier = dp.ebpf.program(prog).context("program")?.try_into()?;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = REPEAT;
        runs.push(p.test_run(opts)?.duration.as_nanos() as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[RUNS / 2])
}

fn policy_text(channels: usize, prefixes_per_channel: usize) -> String {
    if channels == 0 {
        return "channels: []\n".into();
    }
    let mut t = String::from("channels:\n");
    for i in 0..channels {
        t.push_str(&format!(
            "  - name: ch{i}\n    protocol: udp\n    ports: [{}]\n    from: [",
            1000 + i
        ));
        for j in 0..prefixes_per_channel {
            let n = i * prefixes_per_channel + j;
            t.push_str(&format!(
                "\"198.{}.{}.{}/32\",",
                18 + (n >> 16),
                (n >> 8) & 0xff,
                n & 0xff
            ));
            t.push_str(&format!(
                "\"2001:db8:{:x}::{:x}/128\",",
                n >> 16,
                n & 0xffff
            ));
        }
        t.push_str("]\n    limit: {bandwidth: 400Gbit, packets: 100000000}\n");
    }
    t
}

fn per_packet() -> Result<Vec<serde_json::Value>> {
    tc_tests::pin_to_cpu(0)?;
    // The measured packet matches the last channel, so every bit-vector word is ANDed.
    let cases: [(&str, usize, usize); 3] = [
        ("0 channels", 0, 0),
        ("1 channel", 1, 1),
        ("1024 channels, 65536 prefixes", 1024, 64),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<32} {:<5} {:>8} {:>22} {:>24} {:>28}",
        "CASE",
        "IP",
        "floor",
        "flow cached: ns (+floor)",
        "uncached: ns (+floor)",
        "known destination: ns (+floor)"
    );
    for (label, channels, per) in cases {
        let policy = Policy::parse(&policy_text(channels, per), "bench")?;
        let compiled = compile(&policy)?;
        let mut dp = Datapath::load(None, tc_common::DEFAULT_MAX_CONNS)?;
        dp.apply(&compiled, &vec![None; channels])?;
        // The same policy again, into the other generation, which a fresh
        // load knows nothing of: every table walked to purge it, then every
        // entry written (the slowest apply: an agent's first into maps it
        // could not read back).
        let started = std::time::Instant::now();
        dp.apply(&compiled, &vec![None; channels])?;
        let apply_ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "{label}: apply {apply_ms:.0} ms ({} table entries)",
            compiled.entries()
        );
        // Classification and enforcement alone: what interaction accounting
        // adds is its own table (`interactions`).
        dp.set_accounting(false)?;
        let last = channels.saturating_sub(1) * per.max(1) + per.saturating_sub(1);
        let v4_src = format!(
            "198.{}.{}.{}",
            18 + (last >> 16),
            (last >> 8) & 0xff,
            last & 0xff
        );
        let v6_src = format!("2001:db8:{:x}::{:x}", last >> 16, last & 0xffff);
        let port = 1000 + channels.saturating_sub(1) as u16;
        for (ip, frame) in [
            ("IPv4", packet::ipv4(&v4_src, "198.18.200.1", UDP, port, 22)),
            (
                "IPv6",
                packet::ipv6(&v6_src, "2001:db8:ff::1", UDP, port, 2),
            ),
        ] {
            let floor = ns_per_packet(&dp, TC_PASS, &frame)?;
            // Repeats of one packet: after the first, every run hits the flow cache.
            dp.set_flow_cache(true)?;
            let cached = ns_per_packet(&dp, TC_INGRESS, &frame)?;
            // The first packet of each flow: the three tables read.
            dp.set_flow_cache(false)?;
            dp.set_dst_memo(false)?;
            let uncached = ns_per_packet(&dp, TC_INGRESS, &frame)?;
            // The first packet of a flow to a destination (and port) the
            // packet before it had: the destination memo stands in for
            // two of them (as under a flood from many sources).
            dp.set_dst_memo(true)?;
            let known_dst = ns_per_packet(&dp, TC_INGRESS, &frame)?;
            dp.set_flow_cache(true)?;
            println!(
                "{label:<32} {ip:<5} {floor:>8.0} {:>15.0} ({:>+5.0}) {:>17.0} ({:>+5.0}) {:>21.0} ({:>+5.0})",
                cached,
                cached - floor,
                uncached,
                uncached - floor,
                known_dst,
                known_dst - floor
            );
            rows.push(serde_json::json!({
                "case": label, "ip": ip, "floor_ns": floor,
                "cached_ns": cached, "cached_above_floor_ns": cached - floor,
                "uncached_ns": uncached, "uncached_above_floor_ns": uncached - floor,
                "known_dst_ns": known_dst, "known_dst_above_floor_ns": known_dst - floor,
                "apply_ms": apply_ms,
            }));
        }
    }
    Ok(rows)
}

/// Seconds per iperf3 run.
const SECS: u32 = 6;
/// Seconds per iperf3 run of the actions comparison: long enough that the
/// steady state (after `STEADY_FROM`) has several sawtooth cycles.
const ACTION_SECS: u32 = 10;
/// Receiver intervals from this second on make the steady-state goodput:
/// past slow start and past the initial full bucket, which every tc-agent
/// channel starts with (250 ms at the rate by default, 4% of a 6 s run).
const STEADY_FROM: f64 = 3.0;
/// TCP goodput ceiling on Ethernet: 1448 payload bytes per 1514-byte frame.
const CEILING: f64 = 1448.0 / 1514.0;

/// What one loaded run measured.
struct Load {
    /// Receiver goodput over the whole run, bit/s.
    goodput: f64,
    /// Receiver goodput from `STEADY_FROM` s on, bit/s (NaN without intervals).
    steady: f64,
    /// Sender retransmits over the run.
    retransmits: u64,
    /// Ping RTT alongside the flow, ms.
    ping_avg_ms: f64,
    ping_max_ms: f64,
    /// Pings lost alongside the flow, %.
    ping_loss_pct: f64,
}

/// `ping -q -i 0.05` from client to server, plus `args`.
fn ping_cmd(pair: &Pair, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &pair.client, "ping", "-q", "-i", "0.05"])
        .args(args)
        .arg("198.18.0.2");
    c
}

/// One iperf3 run client -> server (client on CPU 0, server on CPU 1) with
/// a ping every 50 ms alongside.
fn load(pair: &Pair, streams: u32, secs: u32) -> Result<Load> {
    let ping = ping_cmd(pair, &["-w", &(secs - 1).to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let j = iperf3(pair, 5201, secs, streams, true)?;
    let ping = ping.wait_with_output()?;
    // Receiver side, over the whole flow: every method pays its own start
    // (slow start; tc-agent also gets its initial burst).
    let goodput = j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no received rate")?;
    // A ping that printed no summary (it can happen under emulation) leaves NaNs.
    let (ping_avg_ms, ping_max_ms, ping_loss_pct) = ping_summary(&String::from_utf8_lossy(
        &ping.stdout,
    ))
    .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
    Ok(Load {
        goodput,
        steady: server_goodput(&j, STEADY_FROM).map_or(f64::NAN, |g| g.bps),
        retransmits: j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        ping_avg_ms,
        ping_max_ms,
        ping_loss_pct,
    })
}

fn accuracy() -> Result<Vec<serde_json::Value>> {
    println!(
        "\nEnforcement accuracy: TCP goodput / limit (ceiling {CEILING:.3}), retransmits, ping RTT under load avg/max ms, ping loss"
    );
    println!(
        "{:<9} {:>7}  {:<32} {:<32} {:<32}",
        "RATE", "STREAMS", "tc-agent (drop, ingress)", "TBF (egress)", "HTB (egress)"
    );
    let mut rows = Vec::new();
    for mbit in [10u32, 100, 1000] {
        // Everything to the server, ping included, shares the one bucket.
        let policy = write_policy(
            &format!("{mbit}"),
            &format!("channels:\n  - name: to-server\n    to: [198.18.0.2/32]\n    limit:\n      bandwidth: {mbit}Mbit\n"),
        );
        for streams in [1u32, 4] {
            let mut cells = Vec::new();
            let mut json = serde_json::json!({"rate_mbit": mbit, "streams": streams});
            for method in ["tc-agent", "tbf", "htb"] {
                let pair = Pair::new()?;
                let _agent = match method {
                    "tc-agent" => Some(Agent::start(&pair.server, &pair.server_if, &policy)?),
                    kind => {
                        shape(&pair, kind, mbit)?;
                        None
                    }
                };
                let l = load(&pair, streams, SECS)?;
                let ratio = l.goodput / (mbit as f64 * 1e6);
                cells.push(format!(
                    "{ratio:.3} r{:<6} {:>6.2}/{:<6.1} {:.0}%",
                    l.retransmits, l.ping_avg_ms, l.ping_max_ms, l.ping_loss_pct
                ));
                json[method] = serde_json::json!({
                    "goodput_ratio": ratio, "retransmits": l.retransmits,
                    "ping_avg_ms": l.ping_avg_ms, "ping_max_ms": l.ping_max_ms, "ping_loss_pct": l.ping_loss_pct,
                });
            }
            println!(
                "{:<9} {streams:>7}  {:<32} {:<32} {:<32}",
                format!("{mbit}Mbit"),
                cells[0],
                cells[1],
                cells[2]
            );
            rows.push(json);
        }
    }
    Ok(rows)
}

/// TCP throughput with the tc programs attached and no channel matching,
/// against no program; median of 3 runs each.
fn attach_cost() -> Result<serde_json::Value> {
    let policy = write_policy("nomatch", "channels:\n  - name: elsewhere\n    to: [198.19.255.0/24]\n    limit: {bandwidth: 1Mbit}\n");
    let (mut base, mut with) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let pair = Pair::new()?;
        base.push(load(&pair, 1, SECS)?.goodput);
        let _agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
        with.push(load(&pair, 1, SECS)?.goodput);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, w) = (median(&mut base), median(&mut with));
    println!(
        "\nAttach cost (TCP, 1 stream, median of 3): no program {:.2} Gbit/s, tc programs with no matching channel {:.2} Gbit/s: ratio {:.3}",
        b / 1e9,
        w / 1e9,
        w / b
    );
    Ok(serde_json::json!({"baseline_bps": b, "attached_bps": w, "ratio": w / b}))
}

/// Installs `tc args...` in `netns`.
fn tc_in(netns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["ip", "netns", "exec", netns, "tc"];
    v.extend_from_slice(args);
    sh(&v).map(|_| ())
}

/// Shapes the client's egress to `mbit` with Linux's own qdiscs, the
/// baselines: `tbf` (burst = rate / HZ at HZ = 250, at least one 64 KiB GSO
/// packet; latency 50 ms) or `htb` (one class, rate = ceil).
fn shape(pair: &Pair, kind: &str, mbit: u32) -> Result<()> {
    let (ns, dev, rate) = (&pair.client, &pair.client_if, format!("{mbit}mbit"));
    if kind == "tbf" {
        let burst = (mbit as u64 * 1_000_000 / 8 / 250)
            .max(65536 + 1514)
            .to_string();
        return tc_in(
            ns,
            &[
                "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "50ms",
            ],
        );
    }
    tc_in(
        ns,
        &[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ],
    )?;
    tc_in(
        ns,
        &[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", &rate,
            "ceil", &rate,
        ],
    )
}

/// Average RTT of 20 pings, 50 ms apart, from client to server: the
/// idle path, so a method's RTT under load can be read as what it adds.
fn idle_rtt(pair: &Pair) -> Result<f64> {
    let out = ping_cmd(pair, &["-c", "20"]).output()?;
    Ok(ping_summary(&String::from_utf8_lossy(&out.stdout))?.0)
}

/// One method's run of the actions comparison.
struct ActionRun {
    /// The loaded run (goodputs in bit/s).
    load: Load,
    /// Idle RTT on the same pair just before the load, ms.
    idle_ms: f64,
    /// What the method adds to the RTT under load: loaded minus idle, ms.
    added_ms: f64,
}

impl ActionRun {
    fn json(&self) -> serde_json::Value {
        let limit = ACTION_MBIT as f64 * 1e6;
        let l = &self.load;
        serde_json::json!({"goodput_ratio": l.goodput / limit, "steady_goodput_ratio": l.steady / limit, "retransmits": l.retransmits, "ping_avg_ms": l.ping_avg_ms, "ping_max_ms": l.ping_max_ms, "ping_loss_pct": l.ping_loss_pct, "idle_rtt_ms": self.idle_ms, "added_rtt_ms": self.added_ms})
    }
}

const ACTION_MBIT: u32 = 50;

/// Sets up `method` on a fresh pair with 10 ms of netem delay on the ACK
/// path, measures the idle RTT, then the loaded run.
fn action_run(method: &str) -> Result<ActionRun> {
    const MBIT: u32 = ACTION_MBIT;
    let pair = Pair::new()?;
    pair.delay_server_egress(10)?;
    let _agent = match method {
        "drop" | "mark" => {
            if method == "mark" {
                pair.enable_ecn()?;
            }
            let p = write_policy(
                method,
                &format!("channels:\n  - name: c\n    to: [198.18.0.2/32]\n    action: {method}\n    limit: {{bandwidth: {MBIT}Mbit}}\n"),
            );
            Some(Agent::start(&pair.server, &pair.server_if, &p)?)
        }
        "delay" => {
            let p = write_policy(
                method,
                &format!("channels:\n  - name: c\n    to: [198.18.0.2/32]\n    direction: egress\n    action: delay\n    limit: {{bandwidth: {MBIT}Mbit}}\n"),
            );
            Some(Agent::start(&pair.client, &pair.client_if, &p)?)
        }
        kind => {
            shape(&pair, kind, MBIT)?;
            None
        }
    };
    let idle_ms = idle_rtt(&pair)?;
    let load = load(&pair, 1, ACTION_SECS)?;
    Ok(ActionRun {
        added_ms: load.ping_avg_ms - idle_ms,
        load,
        idle_ms,
    })
}

/// Median of a small sample (NaNs sort last).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Rounds of the actions comparison: every method once per round, so a
/// slow phase of the emulated machine hits all of them alike.
const ACTION_ROUNDS: usize = 5;

/// Drop, delay, mark, TBF and HTB at one rate on the same path: a veth pair
/// with 10 ms of netem delay on the ACK direction (ECN needs an RTT to act
/// on, and every method gets the same one), `ACTION_ROUNDS` rounds, medians
/// reported. Needs fq and netem: run in the VM (`cargo xtask bench` does).
/// `only` limits the run to some methods.
///
/// The path's own RTT (10 ms) is in every figure, so latency is compared as
/// RTT added under load: load average minus the idle average measured on
/// the same pair just before.
fn actions(only: &[String]) -> Result<serde_json::Value> {
    const METHODS: [&str; 5] = ["drop", "delay", "mark", "tbf", "htb"];
    if let Some(bad) = only.iter().find(|m| !METHODS.contains(&m.as_str())) {
        anyhow::bail!("unknown method `{bad}`: choose from {METHODS:?}");
    }
    let chosen: Vec<&str> = METHODS
        .into_iter()
        .filter(|m| only.is_empty() || only.iter().any(|o| o == m))
        .collect();
    println!(
        "\nActions at {ACTION_MBIT} Mbit/s, TCP 1 stream {ACTION_SECS} s, base RTT 10 ms (netem on the ACK path), {ACTION_ROUNDS} rounds, kernel {}",
        tc_agent::datapath::sys::kernel_release()
    );
    let header = format!(
        "{:<8} {:>13} {:>13} {:>11} {:>16} {:>8} {:>9} {:>9}",
        "METHOD",
        "goodput/limit",
        format!("from {STEADY_FROM} s"),
        "retransmits",
        "ping avg/max ms",
        "idle ms",
        "added ms",
        "ping loss"
    );
    let limit = ACTION_MBIT as f64 * 1e6;
    let line = |m: &str, r: &ActionRun| {
        let l = &r.load;
        format!(
            "{m:<8} {:>13.3} {:>13.3} {:>11} {:>16} {:>8.1} {:>9.1} {:>8.0}%",
            l.goodput / limit,
            l.steady / limit,
            l.retransmits,
            format!("{:.1}/{:.1}", l.ping_avg_ms, l.ping_max_ms),
            r.idle_ms,
            r.added_ms,
            l.ping_loss_pct
        )
    };
    println!("{header}");
    let mut runs: Vec<(&str, ActionRun)> = Vec::new();
    for _ in 0..ACTION_ROUNDS {
        for &m in &chosen {
            let r = action_run(m)?;
            println!("{}", line(m, &r));
            runs.push((m, r));
        }
    }
    println!("\nMedians of {ACTION_ROUNDS} rounds (goodput range over the rounds in brackets):");
    println!("{header}");
    let mut rows = serde_json::Map::new();
    for &m in &chosen {
        let mine: Vec<&ActionRun> = runs
            .iter()
            .filter(|(n, _)| *n == m)
            .map(|(_, r)| r)
            .collect();
        let med = |f: &dyn Fn(&ActionRun) -> f64| median(mine.iter().map(|r| f(r)).collect());
        let summary = ActionRun {
            load: Load {
                goodput: med(&|r| r.load.goodput),
                steady: med(&|r| r.load.steady),
                retransmits: med(&|r| r.load.retransmits as f64) as u64,
                ping_avg_ms: med(&|r| r.load.ping_avg_ms),
                ping_max_ms: med(&|r| r.load.ping_max_ms),
                ping_loss_pct: med(&|r| r.load.ping_loss_pct),
            },
            idle_ms: med(&|r| r.idle_ms),
            added_ms: med(&|r| r.added_ms),
        };
        let (lo, hi) = mine.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
            (lo.min(r.load.goodput), hi.max(r.load.goodput))
        });
        println!(
            "{}  [{:.3}-{:.3}]",
            line(m, &summary),
            lo / limit,
            hi / limit
        );
        let each: Vec<serde_json::Value> = mine.iter().map(|r| r.json()).collect();
        rows.insert(
            m.into(),
            serde_json::json!({"median": summary.json(), "runs": each}),
        );
    }
    // The targets, against TBF measured in this same run.
    let added = |m: &str| {
        rows.get(m)
            .and_then(|r| r["median"]["added_rtt_ms"].as_f64())
    };
    let goodput = |m: &str| {
        rows.get(m)
            .and_then(|r| r["median"]["goodput_ratio"].as_f64())
    };
    if let Some(tbf) = added("tbf") {
        for m in ["delay", "mark"] {
            if let (Some(a), Some(g)) = (added(m), goodput(m)) {
                println!(
                    "{m}: goodput {g:.3} of the limit (target >= 0.95); RTT added under load {a:.1} ms = {:.2} x TBF's {tbf:.1} ms (target <= 0.25)",
                    a / tbf
                );
            }
        }
    }
    Ok(serde_json::Value::Object(rows))
}

/// Every figure with its baseline measured in the same run; with no part
/// named, all of them into `target/bench.json`. Needs root. Not a test:
/// nothing here asserts.
#[derive(clap::Parser)]
#[command(name = "bench")]
struct Cli {
    /// One part only; without it, every part except `actions`.
    #[command(subcommand)]
    part: Option<Part>,
}

/// The parts of the benchmark that run on their own.
#[derive(clap::Subcommand)]
enum Part {
    /// Per-packet classification (BPF_PROG_TEST_RUN against a bare pass
    /// program): flow cached, uncached, known destination, at 0, 1 and
    /// 1,024 channels; target/bench-classify.json.
    Classify,
    /// Connection tracking: per-packet cost, and nginx's new connections
    /// per second with and without the agent; target/bench-connections.json.
    Connections,
    /// Interaction accounting: per-packet cost, and the agent's CPU and
    /// memory with 10,000 interactions; target/bench-interactions.json.
    Interactions,
    /// A full apply and a one-channel change of the 1,024-channel policy
    /// through the CLI, and the agent's RSS; target/bench-apply.json.
    Apply,
    /// XDP floods (live frames) against a bare XDP_DROP and a program
    /// that only reads the headers, on the same veth, and a legitimate flow
    /// beside one; target/bench-flood.json.
    Flood,
    /// Detection: delay to event, false events, the agent's CPU;
    /// target/bench-detect.json.
    Detect {
        /// `[delays|quiet|cpu|observe]... [--pattern dos|spike|upstream_collapse]...
        /// [--runs N] [--quiet-minutes M]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Drop, delay, mark, TBF and HTB at one rate, printed as `TCVM-JSON`:
    /// needs fq and netem, so `cargo xtask vm-bench` runs it in the 6.12 VM.
    Actions {
        /// Which of drop, delay, mark, tbf, htb (all when none is named).
        methods: Vec<String>,
    },
}

/// Writes `doc` to `target/NAME` and says so.
fn write_doc(name: &str, doc: &serde_json::Value) -> Result<()> {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(doc)?)?;
    println!("\nwritten to {}", out.display());
    Ok(())
}

/// A part in two halves, as the full run measures them: the per-packet
/// one pinned to CPU 0, then the one with real traffic on both CPUs;
/// written to `target/NAME` under the two keys.
fn per_packet_then_agent<A: Into<serde_json::Value>, B: Into<serde_json::Value>>(
    name: &str,
    per_packet: (&str, fn() -> Result<A>),
    agent: (&str, fn() -> Result<B>),
) -> Result<()> {
    tc_tests::pin_to_cpu(0)?;
    let first = (per_packet.1)()?;
    tc_tests::pin_to_cpus(&[0, 1])?;
    let second = (agent.1)()?;
    let mut doc = serde_json::Map::new();
    doc.insert(per_packet.0.to_string(), first.into());
    doc.insert(agent.0.to_string(), second.into());
    write_doc(name, &serde_json::Value::Object(doc))
}

fn main() -> Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    match cli.part {
        None => {}
        Some(Part::Actions { methods }) => {
            let v = actions(&methods)?;
            println!("TCVM-JSON {v}");
            return Ok(());
        }
        Some(Part::Apply) => {
            tc_tests::pin_to_cpus(&[0, 1])?;
            return write_doc("bench-apply.json", &apply::run()?);
        }
        Some(Part::Connections) => {
            return per_packet_then_agent(
                "bench-connections.json",
                ("connections_per_packet", connections::per_packet),
                ("nginx_connections", connections::nginx_connections),
            );
        }
        Some(Part::Classify) => {
            return write_doc("bench-classify.json", &serde_json::json!(per_packet()?));
        }
        Some(Part::Detect { args }) => {
            let opts = detect::Options::parse(&args)?;
            return write_doc("bench-detect.json", &detect::run(&opts)?);
        }
        Some(Part::Flood) => return write_doc("bench-flood.json", &flood::run()?),
        Some(Part::Interactions) => {
            return per_packet_then_agent(
                "bench-interactions.json",
                ("interactions_per_packet", interactions::per_packet),
                ("interactions_agent", interactions::agent_cost),
            );
        }
    }
    let per_packet = per_packet()?;
    let conn_per_packet = connections::per_packet()?;
    let ix_per_packet = interactions::per_packet()?;
    // The traffic parts pin their own processes; let this one use both CPUs.
    tc_tests::pin_to_cpus(&[0, 1])?;
    let accuracy = accuracy()?;
    let attach = attach_cost()?;
    let nginx = connections::nginx_connections()?;
    let ix_agent = interactions::agent_cost()?;
    let apply = apply::run()?;
    let detect = detect::run(&detect::Options::default())?;
    write_doc("bench-detect.json", &detect)?;
    let flood = flood::run()?;
    write_doc("bench-flood.json", &flood)?;
    let doc = serde_json::json!({
        "per_packet": per_packet, "repeat": REPEAT, "runs": RUNS,
        "connections_per_packet": conn_per_packet,
        "nginx_connections": nginx,
        "interactions_per_packet": ix_per_packet, "interactions_agent": ix_agent,
        "accuracy": accuracy, "attach_cost": attach,
        "detect": detect,
        "apply": apply,
        "flood": flood,
    });
    write_doc("bench.json", &doc)
}
