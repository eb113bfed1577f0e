//! Real traffic that tries to slip past a port-specific limit: IP
//! fragments (iperf3 with datagrams far above the MTU) and IPv6 extension
//! chains longer than the datapath walks (raw frames). The agent runs in
//! `server` on its veth; traffic stays on 198.18.0.0/15 and 2001:db8::/32.

use anyhow::{Context, Result};
use tc_tests::{
    netns::{
        in_netns, iperf3_udp, mac_of, send_raw, serial, server_goodput, write_policy, Agent,
        Goodput, Pair,
    },
    packet::{self, UDP},
};

/// The port-specific limit the senders try to escape; `rest` is where UDP
/// that escaped it would land (neighbour discovery, ICMPv6, stays out).
const LIMIT_BPS: f64 = 10e6;

const POLICY: &str = "channels:
  - name: udp-5201
    to: [198.18.0.2/32, \"2001:db8::2/128\"]
    protocol: udp
    ports: [5201]
    limit: {bandwidth: 10Mbit, burst: 128KiB}
  - name: rest
    protocol: udp
";

/// Receiver goodput of an iperf3 UDP run, from the server's intervals with
/// the first second (which spends the burst) left out.
fn received(report: &serde_json::Value) -> Result<Goodput> {
    server_goodput(report, 1.0)
        .filter(|g| g.intervals.len() > 1)
        .with_context(|| {
            format!("iperf3 gave fewer than 2 server intervals after the first second: {report}")
        })
}

#[test]
fn fragmented_datagrams_are_held_to_a_port_limit_v4_and_v6() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy("frag", POLICY);
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    for server in ["198.18.0.2", "2001:db8::2"] {
        // 60,000-byte datagrams (41 fragments each) at 20x the limit.
        let report = iperf3_udp(&pair, server, 5201, 6, "200M", 60_000)?;
        let Goodput { bps, intervals } = received(&report)?;
        // The limit counts wire bytes; each 60,000-byte datagram carries
        // 41 Ethernet + IP headers (and the IPv6 fragment headers) besides.
        let ratio = bps / LIMIT_BPS;
        println!(
            "{server}: fragmented UDP arrived at {:.2} Mbit/s = {ratio:.3} of the limit (each interval: {:?} Mbit/s)",
            bps / 1e6,
            intervals
                .iter()
                .map(|x| (x / 1e5).round() / 10.0)
                .collect::<Vec<_>>()
        );
        assert!(
            (0.5..=1.05).contains(&ratio),
            "{server}: fragmented datagrams arrived at {ratio:.3} of the limit"
        );
    }
    let t = agent.totals("udp-5201")?;
    assert!(t["dropped_pkts"].as_u64().unwrap() > 0, "{t}");
    let node = &agent.channels()?["node"];
    assert!(node["fragment_pkts"].as_u64().unwrap() > 0, "{node}");
    // Every later fragment found its first: none went by the conservative path.
    assert_eq!(node["fragment_orphan_pkts"], 0, "{node}");
    assert_eq!(agent.totals("rest")?["dropped_pkts"], 0);
    Ok(())
}

#[test]
fn an_extension_chain_past_the_walk_is_held_by_the_port_channel() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy("ext", POLICY);
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    // Twelve destination-options headers hide a UDP header to port 9999.
    // Were the chain to end classification without ports, the frames would
    // fall through to `rest` and escape the limit.
    let frame = packet::ipv6_ext_chain("2001:db8::1", "2001:db8::2", UDP, 9999, 12);
    let mut frame = packet::with_payload(frame, 1000);
    frame[6..12].copy_from_slice(&mac_of(&pair.client, &pair.client_if)?);
    let mac = mac_of(&pair.server, &pair.server_if)?;
    let iface = pair.client_if.clone();
    let secs = 3.0;
    // ~10,000 frames/s of ~1.2 KB: about 10x the limit, for 3 s at most.
    let sent = in_netns(&pair.client, move || {
        send_raw(&iface, mac, &frame, 30_000, 10_000.0, secs)
    })
    .join()
    .unwrap()??;
    let t = agent.totals("udp-5201")?;
    let matched = t["matched_pkts"].as_u64().unwrap();
    let passed_bits = t["passed_bytes"].as_u64().unwrap() as f64 * 8.0;
    let ceiling = LIMIT_BPS * secs * 1.05 + 128.0 * 1024.0 * 8.0;
    println!(
        "ext chain: sent {sent}, matched {matched}, passed {:.2} Mbit (ceiling {:.2})",
        passed_bits / 1e6,
        ceiling / 1e6
    );
    assert!(sent > 10_000, "the sender managed only {sent} frames");
    assert_eq!(
        matched, sent,
        "every frame must be held by the port channel"
    );
    assert!(passed_bits <= ceiling, "{passed_bits} > {ceiling}");
    assert!(t["dropped_pkts"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(agent.totals("rest")?["matched_pkts"], 0);
    let node = &agent.channels()?["node"];
    assert!(node["no_ports_pkts"].as_u64().unwrap() >= sent, "{node}");
    Ok(())
}
