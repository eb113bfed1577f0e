//! Real traffic between network namespaces through a running agent.
//!
//! Topology: `client` -- veth -- `server`; the agent runs in `server` on its
//! veth, so `ingress` channels see what the client sends. Traffic is
//! bounded in count and time and stays on 198.18.0.0/15.

use std::{path::PathBuf, sync::Mutex, time::Duration};

use anyhow::Result;
use tc_tests::netns::{in_netns, iperf3, udp_receive, udp_send, Agent, Pair};

/// Traffic tests share two CPUs: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_policy(name: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tc-test-{}-{name}.yaml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// Ethernet + IPv4 + UDP header bytes the datapath charges on top of the payload.
const UDP_OVERHEAD: f64 = 14.0 + 20.0 + 8.0;

#[test]
fn udp_flood_is_held_to_the_limit_and_an_unlimited_channel_is_untouched() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "flood",
        "channels:\n  - name: flood\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9000]\n    limit:\n      bandwidth: 20Mbit\n      burst: 64KiB\n  - name: open\n    protocol: udp\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;

    let payload = 1000usize;
    let rx_flood = in_netns(&pair.server, || udp_receive("198.18.0.2:9000", 6.0, 1.0));
    let rx_open = in_netns(&pair.server, || udp_receive("198.18.0.2:9001", 6.0, 0.0));
    std::thread::sleep(Duration::from_millis(200));
    let tx_flood = in_netns(&pair.client, move || {
        udp_send("198.18.0.2:9000", payload, 80e6, 5.0, 1_000_000)
    });
    let tx_open = in_netns(&pair.client, move || {
        udp_send("198.18.0.2:9001", payload, 5e6, 5.0, 1_000_000)
    });
    let _sent_flood = tx_flood.join().unwrap()??;
    let sent_open = tx_open.join().unwrap()??;
    let (_, bytes, secs) = rx_flood.join().unwrap()??;
    let (got_open, _, _) = rx_open.join().unwrap()??;

    // The limit counts wire bytes (L2 frame); the receiver sees payload.
    let expected = 20e6 * payload as f64 / (payload as f64 + UDP_OVERHEAD);
    let measured = bytes as f64 * 8.0 / secs;
    let ratio = measured / expected;
    println!(
        "flood: {:.2} Mbit/s payload, expected {:.2}, ratio {ratio:.3}",
        measured / 1e6,
        expected / 1e6
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "flood arrived at {ratio:.3} of the limit"
    );
    let flood = agent.totals("flood")?;
    assert!(flood["dropped_pkts"].as_u64().unwrap() > 0, "{flood}");

    assert_eq!(got_open, sent_open, "the unlimited channel lost packets");
    let open = agent.totals("open")?;
    assert_eq!(open["dropped_pkts"], 0, "{open}");
    assert!(open["passed_pkts"].as_u64().unwrap() >= sent_open, "{open}");
    Ok(())
}

/// Receiver-side goodput per second of an iperf3 run, the first second
/// (slow start) left out.
fn iperf3_intervals(pair: &Pair, secs: u32, streams: u32) -> Result<Vec<f64>> {
    let j = iperf3(pair, secs, streams, false)?;
    // The server's intervals: the client's own count bytes written to its socket.
    let iv: Vec<f64> = j["server_output_json"]["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(iv.len() > 1, "iperf3 gave no intervals: {j}");
    Ok(iv[1..].to_vec())
}

#[test]
fn tcp_flow_reaches_the_bandwidth_limit_and_never_exceeds_it() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "tcp",
        "channels:\n  - name: tcp\n    to: [198.18.0.2/32]\n    protocol: tcp\n    limit:\n      bandwidth: 50Mbit\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    // 8 s; the first second (which spends the initial burst) is left out.
    let iv = iperf3_intervals(&pair, 8, 1)?;
    let mean = iv.iter().sum::<f64>() / iv.len() as f64;
    let ratio = mean / 50e6;
    println!(
        "tcp goodput per second (Mbit/s): {:?}, mean {:.1} = {ratio:.3} of the limit",
        iv.iter()
            .map(|x| (x / 1e5).round() / 10.0)
            .collect::<Vec<_>>(),
        mean / 1e6
    );
    // Goodput is TCP payload, at most 1448/1514 = 0.956 of the wire bytes the limit counts.
    assert!(ratio >= 0.85, "TCP reached only {ratio:.3} of the limit");
    // The ceiling, on the wire bytes the channel let through over the whole
    // 8 s flow: the rate, plus at most the 250 ms burst, plus 5%.
    let t = agent.totals("tcp")?;
    let wire_bits = t["passed_bytes"].as_u64().unwrap() as f64 * 8.0;
    let ceiling = 50e6 * 8.0 * 1.05 + 50e6 * 0.25;
    println!(
        "wire: {:.1} Mbit passed, ceiling {:.1}",
        wire_bits / 1e6,
        ceiling / 1e6
    );
    assert!(
        wire_bits <= ceiling,
        "TCP exceeded the limit: {wire_bits} > {ceiling}"
    );
    assert!(
        t["dropped_pkts"].as_u64().unwrap() > 0,
        "the limit never acted: {t}"
    );
    Ok(())
}

#[test]
fn a_bad_policy_is_rejected_and_the_running_policy_is_unchanged() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let good = write_policy(
        "good",
        "channels:\n  - name: keep\n    protocol: udp\n    limit: {bandwidth: 10Mbit}\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &good)?;
    let before = agent.channels()?;

    let bad = write_policy(
        "bad",
        "channels:\n  - name: new\n    limit:\n      bandwidth: 0Mbit\n",
    );
    let err = agent
        .cli(&["apply", bad.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains(":4: channels[0].limit.bandwidth"), "{err}");
    let unknown = write_policy("unknown", "channels:\n  - name: new\n    limt: {}\n");
    let err = agent
        .cli(&["apply", unknown.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `limt`"), "{err}");

    let after = agent.channels()?;
    assert_eq!(before["generation"], after["generation"]);
    assert_eq!(after["channels"][0]["name"], "keep");
    assert_eq!(after["channels"].as_array().unwrap().len(), 1);
    Ok(())
}

#[test]
fn a_policy_swap_under_traffic_loses_no_packets() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    // Both policies pass the stream and nearly block every other UDP packet;
    // the stream's channel sits at a different index in each, so a packet
    // classified against a mix of the two would land in `block`.
    let a = write_policy(
        "swap-a",
        "channels:\n  - name: stream\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9100]\n  - name: block\n    to: [198.18.0.0/24]\n    protocol: udp\n    limit: {packets: 1, packet_burst: 64}\n",
    );
    let b = write_policy(
        "swap-b",
        "channels:\n  - name: decoy\n    from: [198.19.0.0/16]\n    protocol: udp\n  - name: other\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9200]\n  - name: stream\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9100]\n  - name: block\n    to: [198.18.0.0/24]\n    protocol: udp\n    limit: {packets: 1, packet_burst: 64}\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &a)?;
    let rx = in_netns(&pair.server, || udp_receive("198.18.0.2:9100", 5.0, 0.0));
    std::thread::sleep(Duration::from_millis(200));
    let tx = in_netns(&pair.client, || {
        udp_send("198.18.0.2:9100", 200, 4e6, 4.0, 20_000)
    });
    let mut generations = vec![];
    for i in 0..16 {
        std::thread::sleep(Duration::from_millis(200));
        let file = if i % 2 == 0 { &b } else { &a };
        agent.cli(&["apply", file.to_str().unwrap()])?;
        generations.push(agent.channels()?["generation"].as_u64().unwrap());
    }
    let sent = tx.join().unwrap()??;
    let (got, _, _) = rx.join().unwrap()??;
    println!("sent {sent}, received {got}, generations {generations:?}");
    assert!(sent > 1000);
    assert_eq!(got, sent, "packets lost across policy swaps");
    let block = agent.totals("block")?;
    assert_eq!(
        block["matched_pkts"], 0,
        "stream packets were misclassified: {block}"
    );
    Ok(())
}

#[test]
fn enforcement_and_counters_survive_an_agent_restart() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "restart",
        "channels:\n  - name: capped\n    to: [198.18.0.2/32]\n    protocol: udp\n    limit: {packets: 100, packet_burst: 64}\n",
    );
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let tx = in_netns(&pair.client, || {
        udp_send("198.18.0.2:9300", 100, 1e6, 1.0, 5_000)
    });
    tx.join().unwrap()??;
    let before = agent.totals("capped")?;
    assert!(before["dropped_pkts"].as_u64().unwrap() > 0, "{before}");

    agent.stop();
    // No --policy: the pinned live policy must come back by itself.
    agent.spawn(&pair.server, &pair.server_if, None)?;
    let after = agent.totals("capped")?;
    assert!(
        after["matched_pkts"].as_u64() >= before["matched_pkts"].as_u64(),
        "{before} -> {after}"
    );
    let tx = in_netns(&pair.client, || {
        udp_send("198.18.0.2:9300", 100, 1e6, 1.0, 5_000)
    });
    tx.join().unwrap()??;
    let later = agent.totals("capped")?;
    assert!(
        later["dropped_pkts"].as_u64().unwrap() > after["dropped_pkts"].as_u64().unwrap(),
        "not enforcing after restart: {after} -> {later}"
    );
    Ok(())
}
