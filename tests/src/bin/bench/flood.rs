//! `bench flood`: the packets per second an XDP receiver sustains under a
//! 64-byte UDP flood (`tc_tests::flood`: live frames from an `XDP_TX`
//! generator on CPU 0 into a veth whose threaded NAPI runs on CPU 1),
//! with the bare `XDP_DROP` baseline measured on the same veth in the same
//! run: bare drop, a program that reads the headers and drops (what the
//! first read of a frame costs), the agent's `--xdp` hook with 1 channel
//! and with 1,024 channels (65,536 prefixes per side) whose last channel
//! limits the flood; single-source and random-source (198.18.0.0/15)
//! floods. The generator and the NAPI thread run real-time
//! (`SCHED_FIFO`): the other processes of a shared machine do not set the
//! rate. Then, while a random-flow flood runs, a legitimate TCP flow's
//! goodput and flow-cache hits (the agent's `flow_hits`, where it reports
//! them).

use std::time::Duration;

use anyhow::{Context, Result};
use tc_tests::{
    flood::{self, Baseline, FloodConfig, FloodRun, FlowCounters, Generator, Pace, Rx},
    flow::TcpFlow,
    netns::{mac_of, totals_in, write_policy, Agent, Pair},
};

/// Rounds: every case once per round, so a slow phase of the machine hits
/// all of them alike; medians reported.
const ROUNDS: usize = 3;
/// Seconds per measured flood.
const SECS: f64 = 3.0;
/// Frames per measured flood at most.
const MAX_FRAMES: u64 = 200_000_000;
/// The generator's CPU; the receiver's NAPI thread runs on the other.
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;
/// The generator and the receiver's NAPI thread run `SCHED_FIFO`: on a
/// shared machine, other processes otherwise decide the rate (the NAPI
/// thread got 13-19% of its CPU in a run without).
const REALTIME: bool = true;

/// The receivers of the table's rows.
#[derive(Clone, Copy)]
enum Receiver {
    /// A program of the generator's object, in the agent's place.
    Baseline(Baseline),
    /// The agent's `--xdp` hook with a policy of this many channels.
    Agent(usize),
}

impl Receiver {
    fn label(self) -> String {
        match self {
            Receiver::Baseline(b) => b.label().into(),
            Receiver::Agent(1) => "tc-agent --xdp, 1 channel".into(),
            Receiver::Agent(n) => format!("tc-agent --xdp, {n} channels"),
        }
    }
}

const COLUMNS: [(&str, FloodConfig); 2] = [
    ("single-source", FloodConfig::SINGLE),
    ("random-source", FloodConfig::RANDOM_SOURCE),
];

/// One measured flood: warm-up of 0.3 s (the ring and caches fill), then
/// `SECS` at full speed; with the receiving XDP program's run time per
/// frame in that time, ns.
fn measure(
    gen: &mut Generator,
    pair: &Pair,
    rx: &Rx,
    frame: &[u8],
    cfg: FloodConfig,
) -> Result<(FloodRun, f64)> {
    gen.configure(cfg)?;
    let tx = (pair.client.as_str(), pair.client_if.as_str());
    let pace = |secs| Pace {
        max_frames: MAX_FRAMES,
        secs,
        per_sec: None,
        cpu: GEN_CPU,
        realtime: REALTIME,
    };
    gen.flood(tx, rx, frame, pace(0.3))?;
    let prog = flood::xdp_prog_id(&pair.server, &pair.server_if)?;
    let (t0, n0) = flood::prog_runs(prog)?;
    let run = gen.flood(tx, rx, frame, pace(SECS))?;
    let (t1, n1) = flood::prog_runs(prog)?;
    let ns = (t1 - t0).as_nanos() as f64 / (n1 - n0).max(1) as f64;
    Ok((run, ns))
}

/// Attaches the receiver, floods with every column's generator, detaches.
fn round(
    gen: &mut Generator,
    pair: &Pair,
    frame: &[u8],
    rx: Receiver,
    policies: &[(usize, tc_tests::netns::TempFile)],
) -> Result<Vec<Run>> {
    let _agent = match rx {
        Receiver::Baseline(b) => {
            gen.attach_baseline(b, &pair.server, &pair.server_if)?;
            None
        }
        Receiver::Agent(n) => {
            let policy = &policies.iter().find(|(c, _)| *c == n).context("policy")?.1;
            let hooks = ["--iface", &pair.server_if, "--xdp", &pair.server_if];
            Some(Agent::start_hooks(&pair.server, &hooks, policy)?)
        }
    };
    let rxq = flood::threaded_napi(&pair.server, &pair.server_if, RX_CPU, REALTIME)?;
    let prog = match rx {
        Receiver::Baseline(b) => b.program(),
        Receiver::Agent(_) => tc_agent::datapath::XDP_INGRESS,
    };
    let mut runs = Vec::new();
    for (name, cfg) in COLUMNS {
        let (r, ns) = measure(gen, pair, &rxq, frame, cfg)?;
        println!(
            "  {:<32} {name:<14} generated {:>6.2} Mpps, received {:>6.2} Mpps ({:>6.2} per core, NAPI busy {:.0}%), XDP-dropped {:.3} of received, {ns:.0} ns a frame in {prog}",
            rx.label(),
            r.generated_pps() / 1e6,
            r.received_pps() / 1e6,
            r.per_core_pps() / 1e6,
            100.0 * r.rx_busy_secs / r.secs,
            r.dropped as f64 / r.received.max(1) as f64
        );
        runs.push((r, ns));
    }
    gen.detach_baseline()?;
    Ok(runs)
}

/// One receiver's run of one flood: the frames, and the ns its XDP
/// program ran per frame.
type Run = (FloodRun, f64);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The table, then the legitimate flow's hits.
pub fn run() -> Result<serde_json::Value> {
    println!(
        "\nXDP flood: 64-byte UDP, live frames (XDP_TX generator on CPU {GEN_CPU}) into a veth with threaded NAPI on CPU {RX_CPU}; {SECS} s per run, median of {ROUNDS} rounds; kernel {}",
        tc_agent::datapath::sys::kernel_release()
    );
    let pair = Pair::new()?;
    let mut gen = Generator::load()?;
    let frame = flood::frame(
        mac_of(&pair.client, &pair.client_if)?,
        mac_of(&pair.server, &pair.server_if)?,
    );
    let rows: Vec<Receiver> = Baseline::ALL
        .map(Receiver::Baseline)
        .into_iter()
        .chain([Receiver::Agent(1), Receiver::Agent(1024)])
        .collect();
    // The row every ratio is taken against, and the one whose random-source
    // rate sizes the legitimate flow's flood.
    let bare = rows
        .iter()
        .position(|r| matches!(r, Receiver::Baseline(Baseline::BareDrop)))
        .context("no bare XDP_DROP row")?;
    let largest = rows
        .iter()
        .position(|r| matches!(r, Receiver::Agent(1024)))
        .context("no 1,024-channel row")?;
    let policies: Vec<(usize, tc_tests::netns::TempFile)> = [1usize, 1024]
        .iter()
        .map(|&n| {
            (
                n,
                write_policy(&format!("flood-{n}"), &flood::policy(n, None)),
            )
        })
        .collect();
    // runs[row][column] over the rounds.
    let _stats = flood::RunStats::enable()?;
    let mut runs: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); COLUMNS.len()]; rows.len()];
    for r in 0..ROUNDS {
        println!("round {}:", r + 1);
        for (i, rx) in rows.iter().enumerate() {
            for (j, run) in round(&mut gen, &pair, &frame, *rx, &policies)?
                .into_iter()
                .enumerate()
            {
                runs[i][j].push(run);
            }
        }
    }
    let med = |i: usize, j: usize, f: fn(&FloodRun) -> f64| {
        median(runs[i][j].iter().map(|r| f(&r.0) / 1e6).collect())
    };
    let ns = |i: usize, j: usize| median(runs[i][j].iter().map(|r| r.1).collect());
    let wall = |i, j| med(i, j, FloodRun::received_pps);
    let core = |i, j| med(i, j, FloodRun::per_core_pps);
    println!(
        "\nMpps received (wall clock) and per core (received / the NAPI thread's CPU time), ratio to bare XDP_DROP in brackets; ns: the receiving XDP program's run time per frame (kernel.bpf_stats), accounting tail call included:"
    );
    println!(
        "{:<32} {:>22} {:>22} {:>12} {:>22} {:>22} {:>12}",
        "RECEIVER",
        "single-source",
        "single, per core",
        "single, ns",
        "random-source",
        "random, per core",
        "random, ns"
    );
    let mut table = Vec::new();
    for (i, rx) in rows.iter().enumerate() {
        let cell = |x: f64, base: f64| format!("{x:.2} ({:.2})", x / base);
        println!(
            "{:<32} {:>22} {:>22} {:>12.0} {:>22} {:>22} {:>12.0}",
            rx.label(),
            cell(wall(i, 0), wall(bare, 0)),
            cell(core(i, 0), core(bare, 0)),
            ns(i, 0),
            cell(wall(i, 1), wall(bare, 1)),
            cell(core(i, 1), core(bare, 1)),
            ns(i, 1),
        );
        let mut row = serde_json::json!({"receiver": rx.label()});
        for (j, (name, _)) in COLUMNS.iter().enumerate() {
            row[*name] = serde_json::json!({
                "received_mpps": wall(i, j), "ratio_to_bare": wall(i, j) / wall(bare, j),
                "per_core_mpps": core(i, j), "per_core_ratio_to_bare": core(i, j) / core(bare, j),
                "prog_ns_per_frame": ns(i, j),
                "runs": runs[i][j].iter().map(|(r, ns)| serde_json::json!({
                    "prog_ns_per_frame": ns,
                    "generated": r.generated, "received": r.received,
                    "xdp_dropped": r.dropped, "secs": r.secs, "rx_busy_secs": r.rx_busy_secs,
                })).collect::<Vec<_>>(),
            });
        }
        table.push(row);
    }
    let random_1024 = wall(largest, 1);
    drop(gen);
    drop(pair);
    let hits = legit_hits(random_1024 * 1e6 / 4.0)?;
    Ok(serde_json::json!({
        "kernel": tc_agent::datapath::sys::kernel_release(),
        "secs": SECS, "rounds": ROUNDS, "table": table, "legit_flow": hits,
    }))
}

/// Seconds of each phase of the legitimate flow's measurement.
const PHASE: f64 = 5.0;

/// A legitimate TCP flow (`TcpFlow`, its own 50 Mbit/s channel in
/// the 1,024-channel policy) alone for `PHASE` s, then alongside a
/// random-flow flood at `per_sec` for `PHASE` s: its goodput at the
/// receiver and its flow-cache hits per legitimate packet in each phase.
/// The random-flow flood varies the destination port too, so its own
/// frames find no cached flow and the node's hits are the legitimate
/// traffic's (the flow's segments, and the server's ACKs if the cache
/// keeps unclassified flows).
fn legit_hits(per_sec: f64) -> Result<serde_json::Value> {
    let pair = Pair::new()?;
    let mut gen = Generator::load()?;
    gen.configure(FloodConfig::RANDOM_FLOW)?;
    let frame = flood::frame(
        mac_of(&pair.client, &pair.client_if)?,
        mac_of(&pair.server, &pair.server_if)?,
    );
    let policy = write_policy("flood-legit", &flood::policy(1024, Some("50Mbit")));
    let hooks = ["--iface", &pair.server_if, "--xdp", &pair.server_if];
    let agent = Agent::start_hooks(&pair.server, &hooks, &policy)?;
    // Real-time as a NIC's softirq; the generator is not (the flow's ends
    // and the agent need their share).
    let rx = flood::threaded_napi(&pair.server, &pair.server_if, RX_CPU, true)?;
    let flow = TcpFlow::start(&pair.client, &pair.server, 2.0 * PHASE + 10.0)?;
    std::thread::sleep(Duration::from_secs(3));
    let sample = || -> Result<(FlowCounters, u64, (u64, std::time::Instant))> {
        // One report for both, so they are of the same moment.
        let report = agent.channels()?;
        let legit = totals_in(&report, "legit")?["matched_pkts"]
            .as_u64()
            .context("legit matched_pkts")?;
        Ok((FlowCounters::of(&report), legit, flow.received()))
    };
    let s0 = sample()?;
    std::thread::sleep(Duration::from_secs_f64(PHASE));
    let s1 = sample()?;
    let run = gen.flood(
        (&pair.client, &pair.client_if),
        &rx,
        &frame,
        Pace {
            max_frames: (per_sec * PHASE) as u64,
            secs: PHASE,
            per_sec: Some(per_sec),
            cpu: GEN_CPU,
            realtime: false,
        },
    )?;
    std::thread::sleep(Duration::from_secs_f64(PHASE).saturating_sub(s1.2 .1.elapsed()));
    let s2 = sample()?;
    flow.finish()?;
    type S = (FlowCounters, u64, (u64, std::time::Instant));
    let per_legit = |a: &S, b: &S| {
        let pkts = b.1 - a.1;
        a.0.hits
            .zip(b.0.hits)
            .map(|(x, y)| (y - x) as f64 / pkts.max(1) as f64)
    };
    let mbps =
        |a: &S, b: &S| (b.2 .0 - a.2 .0) as f64 * 8.0 / (b.2 .1 - a.2 .1).as_secs_f64() / 1e6;
    let (before, during) = (per_legit(&s0, &s1), per_legit(&s1, &s2));
    let (rate_before, rate_during) = (mbps(&s0, &s1), mbps(&s1, &s2));
    let fmt = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.3}"));
    let count = |c: &FlowCounters, d: &FlowCounters, f: fn(&FlowCounters) -> Option<u64>| {
        f(c).zip(f(d)).map(|(x, y)| y - x)
    };
    let misses = count(&s1.0, &s2.0, |c| c.misses);
    let inserts = count(&s1.0, &s2.0, |c| c.inserts);
    println!(
        "\nLegitimate TCP flow (50 Mbit/s channel, 1,024 channels), {PHASE} s alone then {PHASE} s with a random-flow flood of {:.2} Mpps received ({:.2} Mpps asked): goodput {rate_before:.1} then {rate_during:.1} Mbit/s (ratio {:.2}); flow-cache hits per legitimate packet {} then {} (ratio {}); during the flood {} misses, {} inserts{}",
        run.received_pps() / 1e6,
        per_sec / 1e6,
        rate_during / rate_before,
        fmt(before),
        fmt(during),
        fmt(before.zip(during).map(|(b, d)| d / b)),
        misses.map_or("n/a".into(), |x| x.to_string()),
        inserts.map_or("n/a".into(), |x| x.to_string()),
        if s0.0.hits.is_none() {
            " (this agent reports no flow_hits/flow_misses/flow_inserts)"
        } else {
            ""
        }
    );
    Ok(serde_json::json!({
        "flood_received_pps": run.received_pps(), "flood_asked_pps": per_sec,
        "goodput_mbps_before": rate_before, "goodput_mbps_during": rate_during,
        "hits_per_legit_packet_before": before, "hits_per_legit_packet_during": during,
        "flood_misses": misses, "flood_inserts": inserts,
    }))
}
