//! What connection tracking costs per packet: the same TCP packets through
//! a channel without connection limits and through one with them, in one
//! run, with BPF_PROG_TEST_RUN (see `super::ns_per_packet`).

use anyhow::Result;
use tc_agent::{
    datapath::{Datapath, TC_EGRESS, TC_INGRESS, TC_PASS},
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

/// Runs `frame` once through tc program `prog` (to open a connection).
fn once(dp: &Datapath, prog: &str, frame: &[u8]) -> Result<()> {
    use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
    let p: &SchedClassifier = dp.ebpf.program(prog).expect("program").try_into()?;
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
    // A whole handshake, the server's SYN-ACK leaving at egress.
    once(&limited, TC_INGRESS, &syn)?;
    once(
        &limited,
        TC_EGRESS,
        &packet::tcp(SERVER, CLIENT, SYN | ACK, 7, 0),
    )?;
    once(&limited, TC_INGRESS, &established)?;
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

/// Rounds of each case in [`nginx_connections`]; the median counts.
const NGINX_ROUNDS: usize = 3;

/// New connections per second that nginx sustains (wrk, one request per
/// connection: nginx closes each after its first request) with no agent,
/// with the agent and an unlimited channel for the traffic, and with the
/// agent and a connection limit far above the load (every connection
/// tracked). Rounds alternate between the cases, so drift on this noisy
/// machine hits them alike.
pub fn nginx_connections() -> Result<serde_json::Value> {
    use tc_tests::{
        netns::{write_policy, Agent, Pair},
        web::{wrk, Nginx, NginxConfig, WrkConfig},
    };
    let cases = [
        ("no agent", None),
        (
            "agent, unlimited channel",
            Some("channels:\n  - name: web\n    protocol: tcp\n    ports: [80]\n"),
        ),
        (
            "agent, connections: 1000000",
            Some("channels:\n  - name: web\n    protocol: tcp\n    ports: [80]\n    limit:\n      connections: 1000000\n"),
        ),
    ];
    let pair = Pair::new()?;
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            keepalive_requests: 1,
            ..Default::default()
        },
    )?;
    let mut rates: Vec<Vec<f64>> = vec![vec![]; cases.len()];
    for _ in 0..NGINX_ROUNDS {
        for (i, (_, policy)) in cases.iter().enumerate() {
            let agent = match policy {
                Some(text) => Some(Agent::start(
                    &pair.server,
                    &pair.server_if,
                    &write_policy("bench-nginx", text),
                )?),
                None => None,
            };
            let r = wrk(
                &pair.client,
                "http://198.18.0.2/",
                &WrkConfig {
                    connections: 50,
                    threads: 2,
                    secs: 5,
                    ..Default::default()
                },
            )?;
            drop(agent);
            rates[i].push(r.requests_per_s);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut rates[0].clone());
    println!(
        "\n{:<30} {:>18} {:>8}",
        "NGINX, NEW CONNECTION EACH", "connections/s", "ratio"
    );
    let mut rows = Vec::new();
    for (i, (label, _)) in cases.iter().enumerate() {
        let m = median(&mut rates[i]);
        println!("{label:<30} {m:>18.0} {:>8.2}", m / base);
        rows.push(serde_json::json!({"case": label, "connections_per_s": m, "ratio": m / base, "rounds": rates[i]}));
    }
    Ok(serde_json::json!(rows))
}
