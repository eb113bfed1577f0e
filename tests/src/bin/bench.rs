//! `cargo xtask bench`: per-packet cost of the datapath with
//! BPF_PROG_TEST_RUN, against a bare pass program measured in the same run.
//!
//! Each cell: repeat = 1,000,000 on one pinned CPU, median of 3 runs,
//! reported as ns/packet and ns above the floor. Not a test: this machine
//! is noisy, so nothing here asserts.

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use tc_agent::{
    datapath::{Datapath, TC_INGRESS, TC_PASS},
    policy::{compile::compile, Policy},
};
use tc_tests::packet::{self, UDP};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 3;

fn pin_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

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
        return String::new();
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

fn main() -> Result<()> {
    pin_cpu(0);
    // The measured packet matches the last channel, so every bit-vector word is ANDed.
    let cases: [(&str, usize, usize); 3] = [
        ("0 channels", 0, 0),
        ("1 channel", 1, 1),
        ("1024 channels, 65536 prefixes", 1024, 64),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<32} {:<5} {:>8} {:>22} {:>24}",
        "CASE", "IP", "floor", "flow cached: ns (+floor)", "uncached: ns (+floor)"
    );
    for (label, channels, per) in cases {
        let policy = Policy::parse(&policy_text(channels, per), "bench")?;
        let compiled = compile(&policy)?;
        let mut dp = Datapath::load(None)?;
        dp.apply(&compiled, &vec![None; channels])?;
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
            // The first packet of each flow: the three trie walks.
            dp.set_flow_cache(false)?;
            let uncached = ns_per_packet(&dp, TC_INGRESS, &frame)?;
            dp.set_flow_cache(true)?;
            println!(
                "{label:<32} {ip:<5} {floor:>8.0} {:>15.0} ({:>+5.0}) {:>17.0} ({:>+5.0})",
                cached,
                cached - floor,
                uncached,
                uncached - floor
            );
            rows.push(serde_json::json!({
                "case": label, "ip": ip, "floor_ns": floor,
                "cached_ns": cached, "cached_above_floor_ns": cached - floor,
                "uncached_ns": uncached, "uncached_above_floor_ns": uncached - floor,
            }));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(
            &serde_json::json!({"per_packet": rows, "repeat": REPEAT, "runs": RUNS}),
        )?,
    )?;
    println!("\nwritten to {}", out.display());
    Ok(())
}
