//! What connection tracking costs per packet: the same TCP packets through
//! a channel without connection limits and through one with them, in one
//! run, with BPF_PROG_TEST_RUN (see `super::ns_per_packet`).

use anyhow::Result;
use tc_agent::{
    datapath::{Datapath, TC_INGRESS, TC_PASS},
    policy::{compile::compile, Policy},
};
use tc_common::ConnConfig;
use tc_tests::packet::{self, ACK, SYN};

const CLIENT: &str = "198.18.1.5:40001";
const SERVER: &str = "198.18.2.10:80";

/// A node with one TCP channel, with a concurrency limit of `limit` (in
/// pool 0) or without connection limits (`None`).
fn node(limit: Option<u32>) -> Result<Datapath> {
    let policy = Policy::parse(
        "channels:\n  - name: web\n    from: [198.18.1.0/24]\n    to: [198.18.2.10/32]\n    protocol: tcp\n    ports: [80]\n",
        "bench",
    )?;
    let mut compiled = compile(&policy)?;
    if let Some(l) = limit {
        compiled.policies[0].conn_limit = l;
        compiled.policies[0].conn_pool = 0;
    }
    let mut dp = Datapath::load(None, tc_common::DEFAULT_MAX_CONNS)?;
    dp.set_conn_config(ConnConfig {
        syn_ns: 60_000_000_000,
        established_ns: 7_875_000_000_000,
        closing_ns: 10_000_000_000,
    })?;
    dp.apply(&compiled, &[None])?;
    Ok(dp)
}

/// Runs `frame` once through tc ingress (to open a connection).
fn once(dp: &Datapath, frame: &[u8]) -> Result<()> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let p: &SchedClassifier = dp.ebpf.program(TC_INGRESS).expect("program").try_into()?;
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    p.test_run(opts)?;
    Ok(())
}

/// The table: ns per packet for an established connection's packet, a
/// retransmitted SYN, and a SYN refused at the concurrency limit (a SYN
/// flood's packets), each with and without connection limits.
pub fn per_packet() -> Result<Vec<serde_json::Value>> {
    let established = packet::tcp(CLIENT, SERVER, ACK, 1, 0);
    let syn = packet::tcp(CLIENT, SERVER, SYN, 1, 0);
    let refused = packet::tcp("198.18.1.5:40002", SERVER, SYN, 1, 0);
    let plain = node(None)?;
    // Limit 1: the connection on port 40001 holds it, so 40002 is refused.
    let limited = node(Some(1))?;
    once(&limited, &syn)?;
    once(&limited, &established)?;
    println!(
        "\n{:<34} {:>8} {:>18} {:>18} {:>8}",
        "TCP PACKET", "floor", "no conn limit", "conn limit", "added"
    );
    let mut rows = Vec::new();
    for (label, frame) in [
        ("established (ACK)", &established),
        ("retransmitted SYN", &syn),
        ("SYN over the limit (refused)", &refused),
    ] {
        let floor = super::ns_per_packet(&plain, TC_PASS, frame)?;
        let without = super::ns_per_packet(&plain, TC_INGRESS, frame)?;
        let with = super::ns_per_packet(&limited, TC_INGRESS, frame)?;
        println!(
            "{label:<34} {floor:>8.0} {:>10.0} ({:>+5.0}) {:>10.0} ({:>+5.0}) {:>+8.0}",
            without,
            without - floor,
            with,
            with - floor,
            with - without
        );
        rows.push(serde_json::json!({
            "packet": label, "floor_ns": floor, "no_limit_ns": without,
            "conn_limit_ns": with, "added_ns": with - without,
        }));
    }
    Ok(rows)
}
