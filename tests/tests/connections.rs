//! TCP connection limits with real clients and servers: nginx and wrk, a
//! Rust server that counts its accepts and open connections exactly, and a
//! Rust client that opens connections from hundreds of threads.
//!
//! Topology as in traffic.rs: `client` (198.18.0.1, 2001:db8::1) -- veth --
//! `server` (198.18.0.2, 2001:db8::2); the agent runs in `server` on its
//! veth, so `ingress` channels see the client's SYNs arrive (one test puts
//! it on the client's side for `egress`). What the server holds is watched
//! with `ss` every 50 ms; where connections churn, the strict ceiling is
//! checked on the namespace's `CurrEstab` instead, as `ss` can list a
//! closing connection and its replacement in one walk (see tc_tests::ss);
//! the Rust server counts its own open connections exactly.
//! Every load is bounded in count and time and stays on 198.18.0.0/15 and
//! 2001:db8::/32.

use std::{
    net::SocketAddr,
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tc_tests::{
    netns::{in_vm, serial, write_policy, Agent, Pair},
    ss::{self, Sampler},
    tcp::{allowed_cpus, hold_connections, open_fast, AcceptServer, OpenerConfig},
    web::{wrk_background, Nginx, NginxConfig, WrkConfig},
};

const CLIENT_V4: &str = "198.18.0.1";
const CLIENT_V6: &str = "2001:db8::1";
const URL_V4: &str = "http://198.18.0.2:80/";
const URL_V6: &str = "http://[2001:db8::2]:80/";

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// `secs` here; three times that under the VM's emulation.
fn slow(secs: f64) -> Duration {
    Duration::from_secs_f64(if in_vm() { secs * 3.0 } else { secs })
}

/// A connection field of a channel row: the contract puts them on the row
/// itself (`channels -o json`), nowhere else.
fn field<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
    row.get(key)
}

fn u64_of(row: &Value, key: &str) -> u64 {
    field(row, key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {key} (an integer) in channel row {row}"))
}

/// A field that may be null.
fn f64_or_null(row: &Value, key: &str) -> Option<f64> {
    match field(row, key) {
        None => panic!("no {key} in channel row {row}"),
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .unwrap_or_else(|| panic!("{key} is not a number in {row}")),
        ),
    }
}

/// Up to `reads` counts of `channel`'s open connections, a second apart,
/// while a wrk of `wrk_secs` seconds started at `started` runs: a read is
/// kept only if it came back a second or more before wrk's end. Under an
/// emulator a read takes a second or more, and one that came back after
/// wrk ended read 0 (seen once on 6.1: `[20, 20, 0]`). At least one read
/// must make it.
fn counts_while_loaded(
    agent: &Agent,
    channel: &str,
    started: Instant,
    wrk_secs: u64,
    reads: usize,
) -> Result<Vec<u64>> {
    let mut during = vec![];
    while during.len() < reads {
        let n = open_connections(agent, channel)?;
        if started.elapsed() >= Duration::from_secs(wrk_secs - 1) {
            break;
        }
        during.push(n);
        sleep(Duration::from_secs(1));
    }
    assert!(
        !during.is_empty(),
        "no count of {channel} read while wrk ran"
    );
    Ok(during)
}

fn open_connections(agent: &Agent, channel: &str) -> Result<u64> {
    Ok(u64_of(&agent.channel(channel)?, "open_connections"))
}

/// Waits until `open_connections` of `channel` is `want`; returns how long
/// that took.
fn wait_open(agent: &Agent, channel: &str, want: u64, within: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < within {
        let n = open_connections(agent, channel)?;
        if n == want {
            return Ok(t0.elapsed());
        }
        last = Some(n);
        sleep(Duration::from_millis(100));
    }
    let table = tc_tests::conn_table::counted(&agent.pin_dir, 20)
        .unwrap_or_else(|e| format!("(the connection table: {e:#})"));
    bail!(
        "{channel}: open_connections still {last:?} after {:.1}s, expected {want}; the table: {table}",
        within.as_secs_f64()
    )
}

/// Waits until the agent has two samples (its rates and windows exist).
fn wait_sampled(agent: &Agent) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < slow(5.0) {
        if agent.channels()?["rate_window_s"].as_f64().unwrap_or(0.0) > 0.0 {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("the agent took no two samples")
}

/// Asserts that `open_connections` of `channel` reads `want` five times
/// over a second.
fn assert_steady(agent: &Agent, channel: &str, want: u64, when: &str) -> Result<()> {
    for _ in 0..5 {
        let n = open_connections(agent, channel)?;
        assert_eq!(n, want, "{when}: open_connections of {channel}");
        sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn apply(agent: &Agent, file: &Path) -> Result<()> {
    agent.cli(&["apply", file.to_str().context("policy path")?])?;
    Ok(())
}

/// One web channel from the client to the server's port 80.
fn web_policy(name: &str, connections: u32) -> tc_tests::netns::TempFile {
    write_policy(
        name,
        &format!(
            "channels:\n  - name: web\n    from: [198.18.0.1/32]\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [80]\n    limit:\n      connections: {connections}\n"
        ),
    )
}

#[test]
fn a_connection_limit_holds_wrk_to_20_and_an_unlimited_channel_is_untouched() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-web",
        "channels:
  - name: web
    from: [198.18.0.1/32]
    to: [198.18.0.2/32]
    protocol: tcp
    ports: [80]
    limit:
      connections: 20
  - name: open
    to: [198.18.0.2/32]
    protocol: tcp
    ports: [8080]
",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    // Long-lived keepalive connections: nothing closes during the run.
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            ports: vec![80, 8080],
            ..Default::default()
        },
    )?;
    let sampler = Sampler::start(&pair.server, &[80, 8080], Some(CLIENT_V4), 120.0)?;
    let wrk_started = Instant::now();
    let limited = wrk_background(
        &pair.client,
        URL_V4,
        &WrkConfig {
            connections: 100,
            secs: 8,
            ..Default::default()
        },
    );
    let unlimited = wrk_background(
        &pair.client,
        "http://198.18.0.2:8080/",
        &WrkConfig {
            connections: 50,
            secs: 8,
            ..Default::default()
        },
    );
    // The agent's count in the middle of the run.
    sleep(Duration::from_secs(3));
    let during = counts_while_loaded(&agent, "web", wrk_started, 8, 3)?;
    let limited = limited.join().unwrap()?;
    let unlimited = unlimited.join().unwrap()?;
    let samples = sampler.stop()?;
    println!("limited (-c 100, 20 allowed): {}", limited.summary());
    println!("unlimited (-c 50): {}", unlimited.summary());
    println!("ss :80  {}", samples.compact(80));
    println!("ss :8080 {}", samples.compact(8080));
    println!("open_connections during the run: {during:?}");

    let max = samples.max(80);
    assert!(max <= 20, "{max} connections established on :80, limit 20");
    assert_eq!(max, 20, "the limit of 20 was never reached");
    assert!(limited.requests > 0, "{}", limited.text);
    assert!(limited.requests_per_s >= 50.0, "{}", limited.text);
    assert_eq!(
        (limited.errors.read, limited.errors.write),
        (0, 0),
        "an admitted connection was cut: {}",
        limited.text
    );
    for n in &during {
        assert!((1..=20).contains(n), "open_connections {during:?}");
    }

    // The unlimited channel: every one of its 50 connections got in.
    assert_eq!(
        samples.max(8080),
        50,
        "the unlimited channel lost connections"
    );
    assert!(unlimited.requests > 0, "{}", unlimited.text);
    assert_eq!(
        unlimited.errors,
        Default::default(),
        "the unlimited channel saw socket errors: {}",
        unlimited.text
    );

    let web = agent.channel("web")?;
    println!("web: {web}");
    assert_eq!(
        field(&web, "connection_limit"),
        Some(&Value::from(20)),
        "{web}"
    );
    assert!(u64_of(&web, "opened_connections") >= 20, "{web}");
    assert!(u64_of(&web, "refused_connections") > 0, "{web}");
    let open = agent.channel("open")?;
    assert_eq!(
        field(&open, "connection_limit"),
        Some(&Value::Null),
        "{open}"
    );
    assert_eq!(u64_of(&open, "refused_connections"), 0, "{open}");
    assert_eq!(u64_of(&open, "would_refuse_connections"), 0, "{open}");
    let node = &agent.channels()?["node"];
    for key in ["conn_untracked_pkts", "conn_after_close_pkts"] {
        assert!(node[key].is_u64(), "no {key} in node counters {node}");
    }

    // wrk is gone: every connection closed, the count back to 0.
    let took = wait_open(&agent, "web", 0, slow(8.0))?;
    println!(
        "open_connections back to 0 {:.1}s after wrk ended",
        took.as_secs_f64()
    );
    Ok(())
}

#[test]
fn lowering_the_limit_under_load_cuts_no_connection_and_converges() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let twenty = web_policy("conn-lower-20", 20);
    let five = web_policy("conn-lower-5", 5);
    let agent = Agent::start(&pair.server, &pair.server_if, &twenty)?;
    // Each connection serves 50 requests, then nginx closes it cleanly
    // (`Connection: close`) and wrk opens another: connections end all the
    // time, and none may be cut.
    let _nginx = Nginx::start(
        &pair.server,
        &NginxConfig {
            keepalive_requests: 50,
            ..Default::default()
        },
    )?;
    // The server's namespace holds only this channel's connections: its
    // CurrEstab is the strict count under this churn (see tc_tests::ss).
    let sampler = Sampler::start(&pair.server, &[80], Some(CLIENT_V4), 120.0)?;
    const LOAD_SECS: u32 = 14;
    let load_started = Instant::now();
    let load = wrk_background(
        &pair.client,
        URL_V4,
        &WrkConfig {
            connections: 40,
            secs: LOAD_SECS,
            ..Default::default()
        },
    );
    // Let the limit fill.
    let t0 = Instant::now();
    loop {
        let n = ss::curr_estab(&pair.server)?;
        if n >= 15 {
            break;
        }
        assert!(
            t0.elapsed() < slow(6.0),
            "only {n} connections after {:?}",
            t0.elapsed()
        );
        sleep(Duration::from_millis(100));
    }
    sleep(Duration::from_secs(1));
    let applying = Instant::now();
    apply(&agent, &five)?;
    let applied = Instant::now();
    let row = agent.channel("web")?;
    assert_eq!(
        field(&row, "connection_limit"),
        Some(&Value::from(5)),
        "{row}"
    );
    let report = load.join().unwrap()?;
    let samples = sampler.stop()?;
    println!("wrk: {}", report.summary());
    println!("ss :80    {}", samples.compact(80));
    println!("CurrEstab {}", samples.compact_curr_estab());

    // What was established when the limit dropped (a handshake under way
    // at the apply completes just after it).
    let at_apply = samples
        .0
        .iter()
        .filter(|s| {
            s.at + Duration::from_millis(300) >= applying
                && s.at <= applied + Duration::from_millis(500)
        })
        .map(|s| s.curr_estab)
        .max()
        .context("no sample around the apply")?;
    println!(
        "apply took {:.0} ms; {at_apply} established then",
        (applied - applying).as_secs_f64() * 1e3
    );
    assert!(at_apply >= 10, "only {at_apply} established at the apply");
    // Never more than then, and nothing new until under 5: once past the
    // apply, the count only falls while above 5.
    let mut low = u64::MAX;
    let mut converged: Option<Instant> = None;
    for s in samples.since(applied) {
        let (c, after) = (s.curr_estab, (s.at - applied).as_secs_f64());
        assert!(
            c <= at_apply.max(5),
            "{c} established {after:.2}s after lowering the limit to 5 from {at_apply}"
        );
        if s.at >= applied + Duration::from_millis(500) {
            assert!(
                c <= low.max(5),
                "{c} established {after:.2}s after the apply, after {low}: a new connection got in above 5"
            );
            low = low.min(c);
        }
        if c <= 5 && converged.is_none() {
            converged = Some(s.at);
        }
        if converged.is_some() {
            assert!(
                c <= 5,
                "{c} established {after:.2}s after the apply, once the count had fallen to 5"
            );
        }
    }
    let converged = converged.context("the count never fell to 5")?;
    let took = converged - applied;
    println!(
        "converged to <= 5 {:.2}s after the apply",
        took.as_secs_f64()
    );
    assert!(took <= slow(6.0), "the count took {took:?} to fall to 5");
    // New connections still get in, up to 5: the last 3 s of load, once
    // the count had fallen to 5. Timed from the load's start (wrk starts
    // after it, so it is still on): the samples go on after wrk ends, and
    // wrk can take seconds to exit.
    let end = load_started + Duration::from_secs(LOAD_SECS.into()) - Duration::from_millis(500);
    let start = (end - Duration::from_secs(3)).max(converged + Duration::from_millis(500));
    assert!(
        end >= start + Duration::from_secs(1),
        "the count fell to 5 only {:.1}s into the {LOAD_SECS}s load: no time left to see admissions go on",
        (converged - load_started).as_secs_f64()
    );
    let tail = samples
        .since(start)
        .take_while(|s| s.at <= end)
        .map(|s| s.curr_estab)
        .max()
        .context("no sample in the last 3 s of load")?;
    assert!(
        tail >= 2,
        "only {tail} connections in the last 3 s: admissions stopped; {}",
        agent.channel("web")?
    );

    assert!(report.requests > 0, "{}", report.text);
    assert_eq!(
        (report.errors.read, report.errors.write),
        (0, 0),
        "an established connection was cut: {}",
        report.text
    );
    wait_open(&agent, "web", 0, slow(8.0))?;
    Ok(())
}

/// `new_connections: 50` (burst 12) against the opener's 200 threads for
/// 6 s; the server must accept between `min_share` and 1.10 of
/// 50/s * T + 12.
fn new_connection_rate(action: &str, min_share: f64) -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        &format!("conn-rate-{action}"),
        &format!(
            "channels:\n  - name: rate\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9000]\n    limit:\n      new_connections: 50\n    connection_action: {action}\n"
        ),
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    let cfg = OpenerConfig {
        threads: 200,
        // Longer under emulation: each `channels` reading below starts a
        // process, which takes seconds there, and they must fall inside the
        // run.
        secs: slow(6.0).as_secs_f64(),
        connect_timeout: Duration::from_millis(1500),
        stagger: Duration::from_secs(1),
        max_per_thread: 20_000,
        // Seen on 6.12 under emulation: at normal priority the 200
        // threads, refused at once by RSTs, starved the readings below
        // until the run had ended.
        low_priority: true,
        ..Default::default()
    };
    let opener = open_fast(&pair.client, addr("198.18.0.2:9000"), &cfg);
    // Several readings while the opener runs: under emulation a storm of
    // refused SYNs can starve the agent's sampler for a second or two.
    let mut mids = Vec::new();
    for _ in 0..4 {
        sleep(Duration::from_millis(1200));
        mids.push(agent.channel("rate")?);
    }
    let mid = mids
        .iter()
        .max_by(|a, b| {
            let r = |v: &serde_json::Value| f64_or_null(v, "new_connections_per_s").unwrap_or(0.0);
            r(a).total_cmp(&r(b))
        })
        .cloned()
        .context("no mid-run reading")?;
    let report = opener.join().unwrap()?;
    server.settle(Duration::from_millis(300), slow(3.0));
    let stats = server.stop()?;
    let row = agent.channel("rate")?;
    let t = report.elapsed.as_secs_f64();
    let expected = 50.0 * t + 12.0;
    let accepted = stats.accepted.len() as f64;
    println!("{action}: opener {}", report.summary());
    println!(
        "{action}: server accepted {accepted} in {t:.2}s = {:.3} of 50/s * T + 12 = {expected:.0}",
        accepted / expected
    );
    println!("{action}: busiest mid-run row {mid}");
    println!("{action}: final row {row}");

    assert!(
        accepted <= 1.10 * expected,
        "{accepted} accepted, more than 1.10 x {expected:.0}"
    );
    assert!(
        accepted >= min_share * expected,
        "{accepted} accepted, less than {min_share} x {expected:.0}"
    );
    let opened = u64_of(&row, "opened_connections") as f64;
    assert!(
        opened >= accepted && opened <= 1.10 * expected,
        "opened_connections {opened}, server accepted {accepted}"
    );
    assert!(u64_of(&row, "refused_connections") > 0, "{row}");
    match action {
        "reset" => {
            assert!(report.refusals() > 0, "{}", report.summary());
            // A reset answers at once, so a timeout means a SYN or its RST
            // was lost on the way (a full veth backlog or listen queue under
            // emulation's storm of 20k SYN/s): 0-2 in 10,000 on the earlier
            // hosts, 7 in 24,452 in the 6.1 guest on a slower one (an AMD
            // EPYC guest with retpolines). One in 1,000 is the tolerance;
            // under `drop` every refused attempt times out.
            assert!(
                report.timed_out * 1_000 <= report.refusals(),
                "{}",
                report.summary()
            );
        }
        _ => {
            assert_eq!(
                report.refusals(),
                0,
                "drop refused with an RST: {}",
                report.summary()
            );
            assert!(report.timed_out > 0, "{}", report.summary());
        }
    }
    // The agent's view while connections kept coming.
    let rate = f64_or_null(&mid, "new_connections_per_s").unwrap_or(0.0);
    assert!(rate > 0.0, "new_connections_per_s {rate} mid-run: {mid}");
    let rtt = f64_or_null(&mid, "handshake_rtt_us").context("no handshake_rtt_us mid-run")?;
    let rtt_max =
        f64_or_null(&mid, "handshake_rtt_max_us").context("no handshake_rtt_max_us mid-run")?;
    assert!(
        rtt > 0.0 && rtt <= rtt_max && rtt_max < 1e6,
        "handshake RTT {rtt} us, max {rtt_max} us"
    );
    Ok(())
}

#[test]
fn new_connections_are_held_to_the_rate_with_drop() -> Result<()> {
    new_connection_rate("drop", 0.6)
}

#[test]
fn new_connections_are_held_to_the_rate_with_reset() -> Result<()> {
    new_connection_rate("reset", 0.9)
}

#[test]
fn reset_refuses_at_once_over_ipv4_and_ipv6() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-reset",
        "channels:
  - name: v4
    to: [198.18.0.2/32]
    protocol: tcp
    ports: [9000]
    limit:
      connections: 5
    connection_action: reset
  - name: v6
    to: [2001:db8::2/128]
    protocol: tcp
    ports: [9000]
    limit:
      connections: 5
    connection_action: reset
",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000", "[2001:db8::2]:9000"])?;
    // Refusals must come from the RST, not from SYN retransmits (1 s, 3 s).
    let p90_limit = Duration::from_millis(if in_vm() { 500 } else { 200 });
    for (channel, to) in [("v4", "198.18.0.2:9000"), ("v6", "[2001:db8::2]:9000")] {
        let held = hold_connections(&pair.client, addr(to), 5, slow(3.0))?;
        assert_eq!(held.streams.len(), 5, "{channel}: {held:?}");
        wait_open(&agent, channel, 5, slow(3.0))?;
        let report = open_fast(
            &pair.client,
            addr(to),
            &OpenerConfig {
                threads: 8,
                secs: 1.5,
                max_per_thread: 2_000,
                connect_timeout: Duration::from_secs(3),
                ..Default::default()
            },
        )
        .join()
        .unwrap()?;
        println!("{channel}: {}", report.summary());
        assert_eq!(report.succeeded, 0, "{channel}: got in over the limit");
        assert_eq!(report.timed_out, 0, "{channel}: a refusal timed out");
        assert_eq!(report.other, 0, "{channel}: {:?}", report.other_messages);
        assert!(report.refusals() >= 8, "{channel}: {}", report.summary());
        let p90 = report.refusal_quantile(0.9).unwrap();
        let p99 = report.refusal_quantile(0.99).unwrap();
        assert!(p90 < p90_limit, "{channel}: refusal p90 {p90:?}");
        assert!(
            p99 < Duration::from_secs(1),
            "{channel}: refusal p99 {p99:?}"
        );
        let row = agent.channel(channel)?;
        assert!(
            u64_of(&row, "refused_connections") >= report.refusals(),
            "{channel}: the client saw {} refusals: {row}",
            report.refusals()
        );
        assert_eq!(u64_of(&row, "open_connections"), 5, "{row}");
        // The 5 close: room again, at once.
        drop(held);
        wait_open(&agent, channel, 0, slow(8.0))?;
        let one = hold_connections(&pair.client, addr(to), 1, slow(3.0))?;
        assert_eq!(
            one.streams.len(),
            1,
            "{channel}: no room after the 5 closed: {one:?}"
        );
    }
    drop(server);
    Ok(())
}

#[test]
fn a_connection_whose_client_vanished_is_released_by_the_idle_timeout() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-gone",
        "channels:\n  - name: gone\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9000]\n    limit:\n      connections: 20\n",
    );
    let agent = Agent::start_with(
        &pair.server,
        &pair.server_if,
        &policy,
        &["--conn-timeout-established", "5"],
    )?;
    let host = pair.routed_host()?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    let mut held = hold_connections(&host.netns, addr("198.18.0.2:9000"), 4, slow(3.0))?;
    assert_eq!(held.streams.len(), 4, "{held:?}");
    wait_open(&agent, "gone", 4, slow(3.0))?;
    // Active for longer than the idle timeout: a byte on each connection
    // every 500 ms for 7 s. Active connections are kept.
    for _ in 0..14 {
        held.poke()?;
        sleep(Duration::from_millis(500));
    }
    assert_eq!(
        open_connections(&agent, "gone")?,
        4,
        "active connections were released"
    );
    // The host vanishes: its veth first, so nothing it sends on close
    // (RST or FIN) reaches the server, then its sockets and namespace.
    host.unplug()?;
    held.abort();
    host.delete();
    let took = wait_open(&agent, "gone", 0, slow(15.0))?;
    println!(
        "released {:.1}s after the client vanished (idle timeout 5 s)",
        took.as_secs_f64()
    );
    // The server never saw them end: its 4 connections are still open.
    assert_eq!(server.open(), 4, "the server saw the connections end");
    Ok(())
}

#[test]
fn open_connections_survive_a_restart_and_an_unchanged_apply() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-kept",
        "channels:\n  - name: kept\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9000]\n    limit:\n      connections: 10\n",
    );
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let _server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    let to = addr("198.18.0.2:9000");
    let held = hold_connections(&pair.client, to, 10, slow(3.0))?;
    assert_eq!(held.streams.len(), 10, "{held:?}");
    wait_open(&agent, "kept", 10, slow(3.0))?;

    // Killed, then restarted without --policy: the pinned pool goes on.
    agent.kill();
    agent.respawn(None, &[])?;
    wait_sampled(&agent)?;
    assert_steady(&agent, "kept", 10, "after SIGKILL and a restart")?;
    apply(&agent, &policy)?;
    assert_steady(&agent, "kept", 10, "after applying the unchanged file")?;

    // The count carried over is enforced: an 11th connection waits.
    let extra = hold_connections(&pair.client, to, 1, Duration::from_millis(1500))?;
    assert!(
        extra.streams.is_empty() && extra.timed_out == 1,
        "an 11th connection got in over the limit of 10: {extra:?}"
    );
    drop(held);
    wait_open(&agent, "kept", 0, slow(8.0))?;
    Ok(())
}

#[test]
fn the_concurrency_limit_is_exact_with_clients_on_both_cpus() -> Result<()> {
    let allowed = allowed_cpus();
    assert!(
        allowed.len() >= 2,
        "this test needs two CPUs, has {allowed:?}"
    );
    let two_cpus = format!("{},{}", allowed[0], allowed[1]);
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-cpus",
        "channels:
  - name: pool
    to: [198.18.0.2/32]
    protocol: tcp
    ports: [9000]
    limit:
      connections: 10
    connection_action: reset
  - name: web
    from: [198.18.0.1/32]
    to: [198.18.0.2/32]
    protocol: tcp
    ports: [80]
    limit:
      connections: 10
",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    // Long-lived keepalive connections on :80 (ss is exact without churn,
    // see tc_tests::ss); the churn is the opener's.
    let _nginx = Nginx::start(&pair.server, &NginxConfig::default())?;
    let sampler = Sampler::start(&pair.server, &[80], Some(CLIENT_V4), 120.0)?;
    // 100 opener threads, pinned alternately to the two CPUs, each holding a
    // connection 20 ms and retrying a refusal at once: SYNs from both CPUs
    // race for every freed place.
    let opener = open_fast(
        &pair.client,
        addr("198.18.0.2:9000"),
        &OpenerConfig {
            threads: 100,
            secs: 5.0,
            max_per_thread: 5_000,
            connect_timeout: Duration::from_secs(2),
            hold: Duration::from_millis(20),
            pin: true,
            ..Default::default()
        },
    );
    // One wrk, two threads, on both CPUs: a second wrk on the same full
    // channel could not start (wrk first checks with one blocking connect).
    let wrk = wrk_background(
        &pair.client,
        URL_V4,
        &WrkConfig {
            connections: 60,
            threads: 2,
            secs: 5,
            cpus: Some(two_cpus.clone()),
            ..Default::default()
        },
    );
    let mut during = vec![];
    sleep(Duration::from_secs(1));
    for _ in 0..4 {
        let c = agent.channels()?;
        let n = |name: &str| -> u64 {
            let row = c["channels"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["name"] == name))
                .unwrap_or_else(|| panic!("no channel {name} in {c}"));
            u64_of(row, "open_connections")
        };
        during.push((n("pool"), n("web")));
        sleep(Duration::from_millis(800));
    }
    let report = opener.join().unwrap()?;
    let wrk = wrk.join().unwrap()?;
    let stats = server.stop()?;
    let samples = sampler.stop()?;
    println!("opener: {}", report.summary());
    println!("wrk on CPUs {two_cpus}: {}", wrk.summary());
    println!(
        "server: {} accepted, at most {} open at once",
        stats.accepted.len(),
        stats.max_open
    );
    println!("ss :80    {}", samples.compact(80));
    println!("CurrEstab {}", samples.compact_curr_estab());
    println!("open_connections (pool, web) during the run: {during:?}");

    // Exact, with no sampling gap: the server's own count.
    assert!(
        stats.max_open <= 10,
        "{} open at once, limit 10",
        stats.max_open
    );
    assert_eq!(stats.max_open, 10, "the limit of 10 was never reached");
    assert!(
        report.succeeded > 0 && report.refusals() > 0,
        "{}",
        report.summary()
    );
    let max = samples.max(80);
    assert!(max <= 10, "{max} established on :80, limit 10");
    assert_eq!(max, 10, "the limit of 10 on :80 was never reached");
    // Both channels together, counted at once: never above 10 + 10.
    let both = samples.max_curr_estab();
    assert!(both <= 20, "{both} established in the server's namespace");
    for (pool, web) in &during {
        assert!(*pool <= 10 && *web <= 10, "open_connections {during:?}");
    }
    assert!(wrk.requests > 0, "{}", wrk.text);
    assert_eq!((wrk.errors.read, wrk.errors.write), (0, 0), "{}", wrk.text);
    Ok(())
}

#[test]
fn ipv6_connection_limit_holds_wrk_to_20() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-web6",
        "channels:\n  - name: web6\n    from: [2001:db8::1/128]\n    to: [2001:db8::2/128]\n    protocol: tcp\n    ports: [80]\n    limit:\n      connections: 20\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let _nginx = Nginx::start(&pair.server, &NginxConfig::default())?;
    let sampler = Sampler::start(&pair.server, &[80], Some(CLIENT_V6), 120.0)?;
    let wrk_started = Instant::now();
    let load = wrk_background(
        &pair.client,
        URL_V6,
        &WrkConfig {
            connections: 60,
            secs: 6,
            ..Default::default()
        },
    );
    sleep(Duration::from_secs(3));
    let during = counts_while_loaded(&agent, "web6", wrk_started, 6, 2)?;
    let report = load.join().unwrap()?;
    let samples = sampler.stop()?;
    println!("wrk over IPv6 (-c 60, 20 allowed): {}", report.summary());
    println!("ss :80 {}", samples.compact(80));
    println!("open_connections during the run: {during:?}");
    let max = samples.max(80);
    assert!(
        max <= 20,
        "{max} connections established over IPv6, limit 20"
    );
    let counted = samples.max_curr_estab();
    assert!(counted <= 20, "CurrEstab {counted}, limit 20");
    assert_eq!(max, 20, "the limit of 20 was never reached");
    assert!(
        report.requests > 0 && report.requests_per_s >= 50.0,
        "{}",
        report.text
    );
    assert_eq!(
        (report.errors.read, report.errors.write),
        (0, 0),
        "{}",
        report.text
    );
    for n in &during {
        assert!((1..=20).contains(n), "open_connections {during:?}");
    }
    wait_open(&agent, "web6", 0, slow(8.0))?;
    Ok(())
}

#[test]
fn monitor_mode_counts_would_be_refusals_and_refuses_nothing() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-monitor",
        "channels:\n  - name: watch\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9000]\n    limit:\n      connections: 5\n    mode: monitor\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    let held = hold_connections(&pair.client, addr("198.18.0.2:9000"), 20, slow(3.0))?;
    assert_eq!(held.streams.len(), 20, "monitor mode refused: {held:?}");
    let t0 = Instant::now();
    while server.open() < 20 && t0.elapsed() < slow(3.0) {
        sleep(Duration::from_millis(50));
    }
    assert_eq!(server.open(), 20);
    // 15 of the 20 came while 5 or more were open.
    let t0 = Instant::now();
    let row = loop {
        let row = agent.channel("watch")?;
        if u64_of(&row, "would_refuse_connections") >= 15 || t0.elapsed() > slow(3.0) {
            break row;
        }
        sleep(Duration::from_millis(100));
    };
    println!("monitor: {row}");
    assert_eq!(u64_of(&row, "would_refuse_connections"), 15, "{row}");
    assert_eq!(u64_of(&row, "refused_connections"), 0, "{row}");
    drop(held);
    Ok(())
}

#[test]
fn an_egress_limit_on_the_client_side_holds_5() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "conn-egress",
        "channels:\n  - name: out\n    direction: egress\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [9000]\n    limit:\n      connections: 5\n",
    );
    // The agent on the client's veth: the SYNs leave there.
    let agent = Agent::start(&pair.client, &pair.client_if, &policy)?;
    let server = AcceptServer::start(&pair.server, &["198.18.0.2:9000"])?;
    let held = hold_connections(&pair.client, addr("198.18.0.2:9000"), 12, slow(2.5))?;
    println!(
        "egress: {} connected, {} timed out, {} refused",
        held.streams.len(),
        held.timed_out,
        held.refused
    );
    assert_eq!(held.streams.len(), 5, "{held:?}");
    assert_eq!(held.timed_out, 7, "{held:?}");
    let established = ss::established(&pair.server, &[9000], Some(CLIENT_V4))?;
    assert_eq!(established.get(&9000), Some(&5), "{established:?}");
    assert_eq!(server.stats().max_open, 5);
    let row = agent.channel("out")?;
    assert_eq!(u64_of(&row, "open_connections"), 5, "{row}");
    assert!(u64_of(&row, "refused_connections") > 0, "{row}");
    drop(held);
    wait_open(&agent, "out", 0, slow(8.0))?;
    Ok(())
}
