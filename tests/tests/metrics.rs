//! `tc-agent run --metrics-addr`: a real agent serves `/metrics`, the text
//! passes `promtool check metrics` (Debian's `prometheus` package), and the
//! counters move with real UDP and TCP traffic.
//!
//! Topology: `client` -- veth -- `server`; the agent runs in `server` on its
//! veth and serves metrics on the server's address, scraped from inside
//! the server's namespace. Traffic is bounded in count and time and stays
//! on 198.18.0.0/15.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use tc_tests::netns::{in_netns, serial, udp_receive, udp_send, write_policy, Agent, Pair};

/// Where the agent serves metrics: the server's address in its namespace.
const METRICS: &str = "198.18.0.2:9464";

/// One `GET /metrics` from inside `netns`: (content type, body).
fn scrape(netns: &str) -> Result<(String, String)> {
    in_netns(netns, || -> Result<(String, String)> {
        let mut s = TcpStream::connect_timeout(&METRICS.parse()?, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: tc-agent\r\nConnection: close\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let raw = String::from_utf8(raw).context("the response is not UTF-8")?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
        ensure!(head.starts_with("HTTP/1.1 200"), "scrape failed: {head}");
        let ctype = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_string())
            })
            .context("no content type")?;
        Ok((ctype, body.to_string()))
    })
    .join()
    .expect("scrape thread")?
}

/// `promtool check metrics` on `text`: passes only without any finding.
fn promtool_check(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running promtool (Debian's `prometheus` package; scripts/install-deps.sh installs it)",
        )?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("promtool check metrics: {} {findings}", out.status);
    ensure!(
        out.status.success(),
        "promtool check metrics failed ({}): {findings}",
        out.status
    );
    Ok(())
}

/// The value of the sample `series` (name and labels exactly as exported).
fn sample(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no sample {series} in:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("sample {series}"))
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "metrics",
        "channels:\n  - name: udp-in\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9000]\n    limit:\n      bandwidth: 200Mbit\n  - name: tcp-in\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9100]\n    limit:\n      connections: 50\n",
    );
    let agent = Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--metrics-addr", METRICS],
    )?;
    let udp_passed = r#"tc_channel_packets_total{channel="udp-in",verdict="passed"}"#;
    let tcp_passed = r#"tc_channel_packets_total{channel="tcp-in",verdict="passed"}"#;
    let tcp_opened = r#"tc_channel_connections_total{channel="tcp-in",outcome="opened"}"#;

    let (ctype, first) = scrape(&pair.server)?;
    println!("content type {ctype}; first scrape {} bytes", first.len());
    ensure!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    promtool_check(&first)?;
    ensure!(sample(&first, "tc_policy_version")? >= 1.0);
    ensure!(sample(&first, r#"tc_channel_connection_limit{channel="tcp-in"}"#)? == 50.0);
    // Every kind of event has its series from the first scrape, at zero
    // (no detector fires on an idle pair).
    for kind in ["spike", "upstream_collapse", "dos"] {
        let total = sample(
            &first,
            &format!(r#"tc_agent_events_total{{kind="{kind}"}}"#),
        )?;
        let open = sample(&first, &format!(r#"tc_agent_events_open{{kind="{kind}"}}"#))?;
        ensure!(
            total == 0.0 && open == 0.0,
            "{kind}: {total} opened, {open} open"
        );
    }

    // UDP: a bounded burst the channel lets through whole.
    let rx = in_netns(&pair.server, || udp_receive("198.18.0.2:9000", 4.0, 0.0));
    std::thread::sleep(Duration::from_millis(200));
    let sent = in_netns(&pair.client, || {
        udp_send("198.18.0.2:9000", 200, 4e6, 2.0, 2_000)
    })
    .join()
    .unwrap()??;
    let (got, _, _) = rx.join().unwrap()??;
    println!("udp: sent {sent}, received {got}");

    // TCP: a few whole connections, each with a little data.
    const CONNS: usize = 5;
    let server = in_netns(&pair.server, || -> Result<usize> {
        let l = TcpListener::bind("198.18.0.2:9100")?;
        l.set_nonblocking(false)?;
        let mut served = 0;
        for _ in 0..CONNS {
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf)?;
            s.write_all(&buf[..n])?;
            served += 1;
        }
        Ok(served)
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = in_netns(&pair.client, || -> Result<()> {
        for _ in 0..CONNS {
            let mut s =
                TcpStream::connect_timeout(&"198.18.0.2:9100".parse()?, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"hello metrics")?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            ensure!(&buf[..n] == b"hello metrics", "echo mismatch");
        }
        Ok(())
    });
    client.join().unwrap()??;
    ensure!(server.join().unwrap()?? == CONNS);

    // The agent samples every 200 ms: scrape until both bursts show (at
    // most 5 s), then check everything on that scrape.
    let moved = |text: &str| -> Result<bool> {
        Ok(
            sample(text, udp_passed)? - sample(&first, udp_passed)? >= sent as f64
                && sample(text, tcp_opened)? - sample(&first, tcp_opened)? >= CONNS as f64,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        let (_, text) = scrape(&pair.server)?;
        if moved(&text)? || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let udp_before = sample(&first, udp_passed)?;
    promtool_check(&second)?;
    let udp_delta = sample(&second, udp_passed)? - udp_before;
    let tcp_delta = sample(&second, tcp_passed)? - sample(&first, tcp_passed)?;
    let opened = sample(&second, tcp_opened)? - sample(&first, tcp_opened)?;
    println!(
        "scrapes: udp-in passed +{udp_delta} (sent {sent}), tcp-in passed +{tcp_delta}, opened +{opened}"
    );
    // Every datagram sent passes the channel once; nothing else uses port 9000.
    ensure!(
        udp_delta >= sent as f64 && udp_delta <= sent as f64 + 5.0,
        "udp-in passed moved by {udp_delta}, {sent} sent"
    );
    // SYN, ACK, data, ACKs, FIN...: several packets per connection, to the server.
    ensure!(
        tcp_delta >= (3 * CONNS) as f64,
        "tcp-in passed moved by {tcp_delta}"
    );
    ensure!(opened == CONNS as f64, "opened moved by {opened}");
    ensure!(
        sample(&second, r#"tc_node_packets_total{kind="seen"}"#)?
            > sample(&first, r#"tc_node_packets_total{kind="seen"}"#)?,
        "node counters did not move"
    );
    // Interactions by endpoint set only (none here: both sides are
    // `other`, never an address): the datagrams to port 9000, request side.
    let udp_requests = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("tc_interaction_packets_total{")
                    && l.contains(r#"port="9000""#)
                    && l.contains(r#"direction="request""#)
                    && l.contains(r#"from="other""#)
                    && l.contains(r#"to="other""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = 0.0;
    while Instant::now() < deadline {
        let (_, text) = scrape(&pair.server)?;
        seen = udp_requests(&text);
        if seen >= sent as f64 {
            promtool_check(&text)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("interaction other -> other udp/9000 requests: {seen}");
    ensure!(
        seen >= sent as f64 && seen <= sent as f64 + 5.0,
        "tc_interaction_packets_total for udp/9000 shows {seen}, {sent} sent"
    );
    // The agent's own counters agree with the scrape.
    let totals = agent.totals("udp-in")?;
    ensure!(totals["passed_pkts"].as_u64().unwrap_or(0) as f64 >= sample(&second, udp_passed)?);
    Ok(())
}

#[test]
fn a_busy_or_bad_metrics_address_is_refused() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "metrics-busy",
        "channels:\n  - name: any\n    protocol: udp\n",
    );
    // Someone else holds the address: the agent refuses to start.
    let holder = in_netns(&pair.server, || TcpListener::bind(METRICS))
        .join()
        .unwrap()??;
    match Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--metrics-addr", METRICS],
    ) {
        Ok(_) => bail!("the agent started on a busy --metrics-addr"),
        Err(e) => {
            let e = format!("{e:#}");
            println!("busy: {e}");
            ensure!(e.contains("--metrics-addr 198.18.0.2:9464"), "{e}");
        }
    }
    drop(holder);
    // Not an address: clap refuses it before anything runs.
    let out = Command::new(tc_tests::netns::agent_bin())
        .args(["run", "--iface", "lo", "--metrics-addr", "localhost:9464"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("bad: {err}");
    ensure!(!out.status.success(), "a bad --metrics-addr was accepted");
    ensure!(err.contains("is not IP:PORT"), "{err}");
    Ok(())
}

/// What a real agent cannot show yet (interactions: the observer fills them
/// in), and channel names with characters that need escaping, rendered
/// with every optional family present: promtool accepts it all.
#[test]
fn every_family_passes_promtool() -> Result<()> {
    use std::sync::Arc;
    use tc_agent::{
        control::{ChannelRow, ChannelsReport},
        detect::EventKind,
        metrics::{EventCounts, Exporter, MetricsView},
        observe::InteractionTotals,
    };
    let row: ChannelRow = serde_json::from_value(serde_json::json!({
        "name": "odd \"name\" \\ with\nnewline",
        "direction": "ingress", "protocol": "tcp", "mode": "monitor", "action": "delay",
        "limit": {"bandwidth_bps": 1000000, "burst_bytes": 1500, "packets": null, "packet_burst": 0,
                  "connections": 10, "new_connections": null},
        "totals": {"matched_pkts": 9, "matched_bytes": 900, "passed_pkts": 9, "passed_bytes": 900,
                   "dropped_pkts": 0, "dropped_bytes": 0, "would_drop_pkts": 1, "would_drop_bytes": 100,
                   "delayed_pkts": 4, "delay_ns": 4000000, "horizon_drop_pkts": 0, "marked_pkts": 0},
        "rates": {"passed_bps": 0.0, "passed_pps": 0.0, "dropped_bps": 0.0, "dropped_pps": 0.0,
                  "would_drop_bps": 0.0, "marked_pps": 0.0, "delay_ms": 0.0},
        "open_connections": 3, "connection_limit": 10, "new_connections_per_s": 0.0,
        "opened_connections": 7, "refused_connections": 2, "table_full_connections": 1,
        "would_refuse_connections": 0, "refused_per_s": 0.0,
        "handshake_rtt_us": 250.0, "handshake_rtt_max_us": 900.0
    }))
    .context("a synthetic channel row")?;
    let report = ChannelsReport {
        version: 2,
        generation: 1,
        rate_window_s: 1.0,
        taken_unix_ms: 0,
        channels: vec![row],
        unnamed_channels: 1,
        node: Default::default(),
    };
    let interaction = |from: &str, to: &str, protocol: &str, port: u16| InteractionTotals {
        from: from.into(),
        to: to.into(),
        protocol: protocol.into(),
        port,
        request_pkts: 5,
        request_bytes: 500,
        response_pkts: 4,
        response_bytes: 4000,
        syns: 1,
        synacks: 1,
        resets: 0,
        fins: 2,
    };
    let view = MetricsView {
        channels: Arc::new(report),
        interactions: vec![
            interaction("clients", "web", "tcp", 443),
            interaction("clients", "dns", "udp", 53),
            interaction("other", "web", "icmp", 0),
        ]
        .into(),
        uptime: Duration::from_millis(1500),
        events: EventCounts {
            opened: [
                (EventKind::Spike, 4),
                (EventKind::UpstreamCollapse, 0),
                (EventKind::Dos, 2),
            ],
            open: [
                (EventKind::Spike, 1),
                (EventKind::UpstreamCollapse, 0),
                (EventKind::Dos, 0),
            ],
        },
    };
    let text = Exporter::new(Arc::new(move || view.clone())).render()?;
    promtool_check(&text)?;
    for family in [
        "tc_interaction_packets_total",
        "tc_interaction_bytes_total",
        "tc_interaction_tcp_flags_total",
        "tc_channel_delay_seconds_total",
        "tc_channel_handshake_rtt_seconds",
        "tc_channel_bandwidth_limit_bytes_per_second",
        "tc_agent_events_total",
        "tc_agent_events_open",
    ] {
        ensure!(
            text.contains(&format!("\n{family}{{")),
            "no {family} in:\n{text}"
        );
    }
    Ok(())
}
