//! A legitimate TCP flow through a bandwidth-limited channel keeps its rate
//! and its flow-cache hits while a random-source UDP flood, sent with live
//! XDP frames (`tc_tests::flood`), runs through the agent's XDP hook
//! against another channel whose limit is far below the flood; the flood
//! is judged (dropped at XDP) and both limits hold.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use tc_agent::policy::{DEFAULT_PACKET_BURST_MS, MIN_PACKET_BURST};
use tc_tests::{
    flood::{self, FloodConfig, FlowCounters, Generator, Pace},
    flow::TcpFlow,
    netns::{in_vm, mac_of, serial, totals_in, write_policy, Agent, Pair},
};

/// The legitimate flow's limit, bit/s: well below what either machine
/// (this host, or the emulated guest) carries over a veth.
fn legit_bps() -> f64 {
    if in_vm() {
        20e6
    } else {
        50e6
    }
}

/// Seconds of each phase (the flow alone, then with the flood).
fn phase() -> f64 {
    if in_vm() {
        8.0
    } else {
        5.0
    }
}

/// The flood channel's packet limit per second (`flood::policy`).
const FLOOD_LIMIT_PPS: f64 = flood::FLOOD_LIMIT_PPS as f64;

/// The flood's rate as a share of what the receiver takes at full speed:
/// under emulation the receiving vCPU wakes slowly and the flow needs a
/// larger share of it. On the host a quarter was once too much: a stall of
/// the receiver let the veth's 256-frame ring overflow (4,000 frames lost
/// before XDP in one CI run), and the flow, losing segments there, fell to
/// 0.79 of its rate. On the host above 3,000 times the flood channel's
/// limit; under emulation at most a hundred times ([`VM_FLOOD_MAX_PPS`]).
fn flood_share() -> f64 {
    if in_vm() {
        0.125
    } else {
        0.15
    }
}

/// The most frames per second the flood sends under emulation, a hundred
/// times the flood channel's limit: the second that measures the
/// receiver's full speed may find the host's cores free and the phase
/// not (the other guest shares them). In one CI run the 6.12 guest took
/// 291,936 frames/s in that second (the 6.1 guest beside it 66,654), the
/// flood then ran at 36,492/s, and the flow fell to 0.69 of its rate
/// while its emulated CPU handled the flood.
const VM_FLOOD_MAX_PPS: f64 = 100.0 * FLOOD_LIMIT_PPS;

/// What one sample of the flow and the agent's counters holds.
struct Sample {
    /// When the flow's bytes were counted.
    at: Instant,
    /// Bytes the flow's receiver had read.
    received: u64,
    /// The legitimate channel's totals (`channels -o json`).
    legit: Value,
    /// The flood channel's totals.
    flood: Value,
    /// The node's flow-cache counters, where the agent reports them.
    cache: FlowCounters,
}

fn sample(agent: &Agent, flow: &TcpFlow) -> Result<Sample> {
    let (received, at) = flow.received();
    // One report for every counter, so that they are of one moment, and a
    // report taken after this sample began: a busy agent (a flood under
    // emulation) answers with its last sample, which may be seconds old.
    let asked = tc_agent::clock::unix_ms();
    let deadline = Instant::now() + FRESH_WAIT;
    let report = loop {
        let report = agent.channels()?;
        let taken = report["taken_unix_ms"].as_u64().unwrap_or(0);
        if taken >= asked {
            break report;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the agent's `channels` reports stayed older than this sample for {FRESH_WAIT:?} (last taken at {taken} ms, asked at {asked}; 0: this agent does not stamp its reports)"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(Sample {
        at,
        received,
        legit: totals_in(&report, "legit")?,
        flood: totals_in(&report, "flood")?,
        cache: FlowCounters::of(&report),
    })
}

/// Longest wait of a sample for a `channels` report taken after it began.
const FRESH_WAIT: Duration = Duration::from_secs(20);

/// `field` of `which` totals, from `a` to `b`.
fn delta(a: &Sample, b: &Sample, which: fn(&Sample) -> &Value, field: &str) -> u64 {
    let get = |s: &Sample| which(s)[field].as_u64().unwrap_or(0);
    get(b).saturating_sub(get(a))
}

#[test]
fn a_legitimate_flow_keeps_its_rate_and_cache_hits_during_a_random_source_flood() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let mut gen = Generator::load()?;
    let frame = flood::frame(
        mac_of(&pair.client, &pair.client_if)?,
        mac_of(&pair.server, &pair.server_if)?,
    );
    let rate = legit_bps();
    let policy = write_policy(
        "flood",
        &flood::policy(2, Some(&format!("{}Mbit", rate / 1e6))),
    );
    let hooks = ["--iface", &pair.server_if, "--xdp", &pair.server_if];
    let agent = Agent::start_hooks(&pair.server, &hooks, &policy)?;
    // The receiver's NAPI thread is real-time, as a NIC's softirq would
    // run ahead of every process: otherwise a busy machine stalls it for
    // milliseconds, the veth's 256-frame ring overflows and the flow loses
    // segments before any XDP program sees them.
    let rx = flood::threaded_napi(&pair.server, &pair.server_if, 1, true)?;
    let tx = (pair.client.as_str(), pair.client_if.as_str());

    // What the receiver takes at full speed, on this machine: the flood
    // runs at a share of it (`flood_share`), so the veth's receive ring (shared with the
    // legitimate flow, and dropping anyone's frames when full, before any
    // XDP program sees them) has room. Every flow new: random sources and
    // destination ports, so flood frames find no cached flow and the
    // node's cache hits are the legitimate traffic's.
    gen.configure(FloodConfig::RANDOM_FLOW)?;
    let full = gen.flood(
        tx,
        &rx,
        &frame,
        Pace {
            max_frames: 20_000_000,
            secs: 1.0,
            per_sec: None,
            cpu: 0,
            realtime: false,
        },
    )?;
    let mut per_sec = full.received_pps() * flood_share();
    if in_vm() {
        per_sec = per_sec.min(VM_FLOOD_MAX_PPS);
    }
    eprintln!(
        "full speed: generated {:.0}/s, received {:.0}/s; the flood runs at {per_sec:.0}/s",
        full.generated_pps(),
        full.received_pps()
    );
    assert!(
        per_sec >= 20.0 * FLOOD_LIMIT_PPS,
        "the receiver took only {:.0} frames/s: no flood far above the flood channel's limit",
        full.received_pps()
    );

    let t = phase();
    // Long enough for both phases, the pauses between, and each of the
    // four samples waiting out its longest wait for a fresh report: a
    // flow that ended on its own mid-test would measure nothing.
    let flow = TcpFlow::start(
        &pair.client,
        &pair.server,
        2.0 * t + 10.0 + 4.0 * FRESH_WAIT.as_secs_f64(),
    )?;
    // Past slow start and the bucket's initial burst.
    std::thread::sleep(Duration::from_secs(3));
    let s0 = sample(&agent, &flow)?;
    std::thread::sleep(Duration::from_secs_f64(t));
    let s1 = sample(&agent, &flow)?;
    let run = gen.flood(
        tx,
        &rx,
        &frame,
        Pace {
            max_frames: (per_sec * t) as u64,
            secs: t,
            per_sec: Some(per_sec),
            cpu: 0,
            realtime: false,
        },
    )?;
    // The paced loop ends once its frames are out; the phase lasts `t`.
    let left = Duration::from_secs_f64(t).saturating_sub(s1.at.elapsed());
    std::thread::sleep(left);
    let s2 = sample(&agent, &flow)?;
    // The flood's counts, once the agent has surely read the last of them.
    std::thread::sleep(Duration::from_secs(1));
    let s3 = sample(&agent, &flow)?;
    flow.finish()?;
    let (secs_a, secs_b) = ((s1.at - s0.at).as_secs_f64(), (s2.at - s1.at).as_secs_f64());

    let legit = |a: &Sample, b: &Sample, f: &str| delta(a, b, |s| &s.legit, f);
    let flood_d = |f: &str| delta(&s1, &s3, |s| &s.flood, f);
    // Rates from the receiver's own count, read when each phase ended.
    let (bytes_a, bytes_b) = (s1.received - s0.received, s2.received - s1.received);
    let (pkts_a, pkts_b) = (
        legit(&s0, &s1, "matched_pkts"),
        legit(&s1, &s2, "matched_pkts"),
    );
    let (bps_a, bps_b) = (bytes_a as f64 * 8.0 / secs_a, bytes_b as f64 * 8.0 / secs_b);
    let flood_frames = run.received.saturating_sub(pkts_b);
    eprintln!(
        "legit: {:.1} Mbit/s alone ({pkts_a} packets), {:.1} Mbit/s during the flood ({pkts_b} packets), limit {:.0} Mbit/s (TCP payload at the receiver)",
        bps_a / 1e6,
        bps_b / 1e6,
        rate / 1e6,
    );
    eprintln!(
        "flood: generated {} ({:.0}/s), {} frames reached XDP of which {flood_frames} flood frames; flood channel matched {} dropped {} passed {}",
        run.generated,
        run.generated_pps(),
        run.received,
        flood_d("matched_pkts"),
        flood_d("dropped_pkts"),
        flood_d("passed_pkts")
    );
    eprintln!(
        "flow cache: {:?} -> {:?} -> {:?} -> {:?}",
        s0.cache, s1.cache, s2.cache, s3.cache
    );

    // The flow ran at its limit: the limit, not the machine, set its rate.
    assert!(
        bps_a >= 0.7 * rate,
        "the flow alone reached {:.1} Mbit/s of its {:.0} Mbit/s limit",
        bps_a / 1e6,
        rate / 1e6
    );
    // It keeps its rate during the flood, measured over the same duration.
    assert!(
        bps_b >= 0.8 * bps_a,
        "during the flood the flow fell to {:.1} Mbit/s from {:.1} Mbit/s",
        bps_b / 1e6,
        bps_a / 1e6
    );
    // The limit held: the payload received (less than the bytes the limit
    // counts) within rate x time + the bucket (250 ms at the rate).
    let allowed = rate / 8.0 * (secs_a + secs_b + 0.25);
    assert!(
        (bytes_a + bytes_b) as f64 <= allowed,
        "the legitimate flow received {} bytes in {:.1} s, over its limit ({allowed:.0})",
        bytes_a + bytes_b,
        secs_a + secs_b
    );
    // The flood was far above its channel's limit, and judged: classified
    // into its channel and dropped at XDP, all but what the limit allows.
    assert!(
        flood_frames as f64 >= 20.0 * FLOOD_LIMIT_PPS * run.secs,
        "only {flood_frames} flood frames reached the XDP hook in {:.1} s",
        run.secs
    );
    assert!(
        flood_d("matched_pkts") as f64 >= 0.9 * flood_frames as f64,
        "the flood channel matched {} of {flood_frames} flood frames",
        flood_d("matched_pkts")
    );
    assert!(
        flood_d("dropped_pkts") as f64 >= 0.9 * flood_frames as f64,
        "the flood channel dropped {} of {flood_frames} flood frames",
        flood_d("dropped_pkts")
    );
    // A token bucket passes at most its depth (full when the flood begins:
    // the flood before `s0` ended seconds ago), one more at the edge, and
    // the rate over the flood's own span, plus 200 ms for the coarse
    // clock's ticks (4 ms at 250 Hz) and the frames still on their way
    // when the generator stops (10 packets: a doubled burst, 64 more,
    // fails). The depth is the default packet burst, at this rate the
    // smallest one (64 packets, 1.28 s). Measured: 314 passed in a 5.02 s
    // flood here (64 + 250), against 325 allowed.
    let burst =
        (FLOOD_LIMIT_PPS * DEFAULT_PACKET_BURST_MS as f64 / 1e3).max(MIN_PACKET_BURST as f64);
    let flood_allowed = burst + 1.0 + FLOOD_LIMIT_PPS * (run.secs + 0.2);
    assert!(
        flood_d("passed_pkts") as f64 <= flood_allowed,
        "the flood channel passed {} packets in a {:.2} s flood, over its {FLOOD_LIMIT_PPS}/s limit and {burst} burst ({flood_allowed:.0})",
        flood_d("passed_pkts"),
        run.secs
    );

    // Legitimate packets hit the flow cache during the flood as before it.
    // The flood's frames are all new flows (random sources and ports),
    // each looked up once, at XDP (which takes tc ingress's place on this
    // interface). The node's hits are the legitimate traffic's: its
    // segments, and the server's ACKs if the cache keeps unclassified
    // flows; less, to be sure, as many as the cache took flows in during
    // the flood (a flood flow could hit only after its insert, and a second
    // hit of one needs a third frame of the same random flow, one in 2^32).
    // The ACKs
    // make the hits per segment vary from run to run with how the receiver
    // coalesces: 1.10 to 1.44 without a flood in the guests. So the hits
    // are held to at least 0.9 a segment in each phase, and the misses
    // (below) compare the two phases.
    let counter =
        |a: &Sample, b: &Sample, name: &str, f: fn(&FlowCounters) -> Option<u64>| -> Result<u64> {
            let (x, y) = f(&a.cache).zip(f(&b.cache)).with_context(|| {
                format!(
                    "`tc-agent channels -o json` reports no `{name}` field: the node's flow-cache \
                     counters (flow_hits, flow_misses, flow_inserts in the global counters) are \
                     missing, so the legitimate flow's cache hits and misses cannot be measured"
                )
            })?;
            // The counters only grow.
            Ok(y.saturating_sub(x))
        };
    let hits = |a: &Sample, b: &Sample| counter(a, b, "flow_hits", |c| c.hits);
    let misses = |a: &Sample, b: &Sample| counter(a, b, "flow_misses", |c| c.misses);
    let inserts = |a: &Sample, b: &Sample| counter(a, b, "flow_inserts", |c| c.inserts);
    // Over the flood's whole count (s1 to s3), as the flood channel's.
    let inserts_b = inserts(&s1, &s3)?;
    let (hits_a, hits_b) = (hits(&s0, &s1)?, hits(&s1, &s2)?.saturating_sub(inserts_b));
    let (per_a, per_b) = (
        hits_a as f64 / pkts_a.max(1) as f64,
        hits_b as f64 / pkts_b.max(1) as f64,
    );
    // Every flood frame misses once: the flood channel's matched frames
    // are the flood's misses, and what the node missed beyond them is the
    // legitimate traffic's. Both over the same samples (s1 to s3), so that
    // no flood frame counted late is taken for a legitimate miss. Fewer
    // node misses than flood frames would mean flood frames hit the cache.
    // Measured: 0, 0 and 2 legitimate misses in 17,000 to 20,000 segments;
    // a flood that kept pushing the flow out of the cache would make its
    // segments miss.
    let (node_misses_b, flood_frames_b) = (misses(&s1, &s3)?, flood_d("matched_pkts"));
    let misses_a = misses(&s0, &s1)?;
    let misses_b = node_misses_b.checked_sub(flood_frames_b).with_context(|| {
        format!(
            "the node missed the flow cache {node_misses_b} times during the flood, fewer than \
             the flood channel's {flood_frames_b} frames: flood frames hit the cache"
        )
    })?;
    let pkts_b_all = legit(&s1, &s3, "matched_pkts");
    eprintln!(
        "flow-cache hits per legitimate packet: {per_a:.3} alone, {per_b:.3} during the flood \
         (less its {inserts_b} inserts); legitimate misses: {misses_a} alone, {misses_b} during \
         the flood ({node_misses_b} node misses, {flood_frames_b} flood frames)"
    );
    assert!(
        per_a >= 0.9,
        "without a flood the flow's packets hit the cache: {hits_a} hits for {pkts_a} packets"
    );
    assert!(
        per_b >= 0.9,
        "during the flood the flow's packets miss the cache: {hits_b} hits (less {inserts_b} \
         inserts) for {pkts_b} packets ({per_b:.3} a packet, {per_a:.3} before)"
    );
    assert!(
        misses_b as f64 <= 0.01 * pkts_b_all as f64 + misses_a as f64,
        "during the flood the legitimate traffic missed the cache {misses_b} times in {pkts_b_all} \
         packets ({misses_a} times in {pkts_a} before it)"
    );
    Ok(())
}
