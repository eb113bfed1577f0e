//! `cargo xtask soak --minutes N`: the agent kept busy for N minutes, and
//! nothing may be lost or leak.
//!
//! One veth pair; the agent on the server's veth. For the whole run:
//!
//! - five UDP channels with continuous paced senders (over and under their
//!   limits, bandwidth and packet limits, one monitor channel, one
//!   unlimited IPv6 channel) and an iperf3 TCP flow through a policed
//!   channel, in back-to-back segments;
//! - every 5 s a valid apply (three policies in turn: other limits, other
//!   channel order, a decoy channel, endpoint sets; the same channel names);
//! - 2.5 s after each apply one bad input straight to the socket (invalid
//!   YAML, unknown field, a bad value, 2 MiB of garbage, 1,025 channels,
//!   a 17 MiB policy): each must be refused with the live version unchanged;
//! - every minute the agent is killed (SIGKILL and SIGTERM in turn), kept
//!   down 2 s and restarted without `--policy`: the pinned policy enforces
//!   meanwhile, and the new agent must say its state is consistent, at the
//!   same version, in the hooks the old one left;
//! - the agent's RSS and open fds every 10 s, and 45 s after each start.
//!
//! At the end, per UDP channel: datagrams sent = received + dropped by the
//! datapath, exactly. Then the agent is stopped and uninstalled, and no pin
//! or namespace may remain. Prints a table, writes `target/soak.json`, and
//! exits non-zero when any check failed.

use std::{
    io::{BufRead, BufReader, Write},
    net::UdpSocket,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use tc_agent::control::{request, Request};
use tc_tests::netns::{agent_bin, in_netns, iperf3, sh, write_policy, Agent, Pair};

/// Seconds between valid applies.
const APPLY_EVERY: f64 = 5.0;
/// Seconds between agent restarts.
const RESTART_EVERY: f64 = 60.0;
/// Seconds the agent stays down at each restart.
const DOWN_FOR: f64 = 2.0;
/// Seconds between resource samples.
const SAMPLE_EVERY: f64 = 10.0;
/// Age of an agent process at which its resources are compared with the
/// other processes' at the same age: after every kind of bad input has
/// reached it once (a cycle is 30 s). The first 17 MiB request leaves
/// about 13 MiB with the allocator for reuse (measured: RSS steps from 28
/// to 41 MiB at that request, then stays flat), so a sample before it
/// would compare unlike with like.
const SAMPLE_AT_AGE: f64 = 45.0;
/// RSS growth allowed between the first and the last comparable sample
/// (and within a process after it): allocator noise, a request being
/// served while sampling; a leak of a few KiB per apply or request (a dozen
/// of each a minute) exceeds it within the run.
const RSS_SLACK: f64 = 0.10;
/// Open fds allowed on top of the first comparable sample: a client
/// connection being answered while sampling, and one transient socket.
const FD_SLACK: usize = 2;
/// Receive buffer per socket: the receivers may be descheduled on this
/// shared machine; the count must measure the datapath, not them.
const RCVBUF: libc::c_int = 64 << 20;
/// The TCP channel's destination port (iperf3's).
const TCP_PORT: u16 = 5201;
/// The TCP channel's limit, the same in every policy (its bucket is kept).
const TCP_LIMIT_MBIT: u32 = 30;
/// The TCP channel's burst in seconds at its rate: the default, 250 ms.
const TCP_BURST_S: f64 = 0.25;

/// What a policy allows one channel.
#[derive(Clone, Copy, PartialEq)]
enum Limit {
    /// Counted only.
    None,
    /// Megabits per second on the wire.
    Mbit(u32),
    /// Packets per second, burst 64 packets.
    Pps(u32),
}

/// One UDP channel: its traffic, and what each policy allows it.
struct UdpChannel {
    /// The channel's name in every policy: the accounting key.
    name: &'static str,
    /// Where the client sends (`addr:port`).
    dst: &'static str,
    /// What the server's receiver binds.
    bind: &'static str,
    /// The prefix the channel matches (`to:`), without the port.
    to: &'static str,
    /// The destination port the channel matches.
    port: u16,
    /// Payload bytes of every datagram: one size, below the MTU, so a
    /// datagram is one packet, never fragments.
    payload: usize,
    /// Payload bits per second the client sends.
    rate_bps: f64,
    /// Bytes the datapath charges on top of the payload: Ethernet + IP + UDP.
    overhead: usize,
    /// The limit in each of the three policies, in the order they are applied.
    limits: [Limit; 3],
    /// The default burst (250 ms at the rate) instead of 64 KiB: for a
    /// channel sent under its limit, which must then drop nothing.
    default_burst: bool,
    /// Monitor mode: over the limit is counted as would-drop, nothing drops.
    monitor: bool,
    /// Whether the channel may drop nothing (sent under its limit, monitor
    /// mode, or unlimited).
    lossless: bool,
}

/// Bytes the datapath charges an IPv4 datagram beyond its payload: Ethernet + IPv4 + UDP.
const V4_OVERHEAD: usize = 14 + 20 + 8;
/// Bytes the datapath charges an IPv6 datagram beyond its payload: Ethernet + IPv6 + UDP.
const V6_OVERHEAD: usize = 14 + 40 + 8;

fn channels() -> Vec<UdpChannel> {
    vec![
        UdpChannel {
            name: "capped",
            dst: "198.18.0.2:9001",
            bind: "198.18.0.2:9001",
            to: "198.18.0.2/32",
            port: 9001,
            payload: 1000,
            rate_bps: 40e6,
            overhead: V4_OVERHEAD,
            limits: [Limit::Mbit(20), Limit::Mbit(30), Limit::Mbit(20)],
            default_burst: false,
            monitor: false,
            lossless: false,
        },
        UdpChannel {
            name: "under",
            dst: "198.18.0.2:9002",
            bind: "198.18.0.2:9002",
            to: "198.18.0.2/32",
            port: 9002,
            payload: 1000,
            rate_bps: 8e6,
            overhead: V4_OVERHEAD,
            limits: [Limit::Mbit(20), Limit::Mbit(25), Limit::Mbit(20)],
            default_burst: true,
            monitor: false,
            lossless: true,
        },
        UdpChannel {
            name: "pps",
            dst: "198.18.0.2:9003",
            bind: "198.18.0.2:9003",
            to: "198.18.0.2/32",
            port: 9003,
            payload: 200,
            // 1,000 datagrams/s.
            rate_bps: 1.6e6,
            overhead: V4_OVERHEAD,
            limits: [Limit::Pps(400), Limit::Pps(600), Limit::Pps(500)],
            default_burst: false,
            monitor: false,
            lossless: false,
        },
        UdpChannel {
            name: "watch",
            dst: "198.18.0.2:9004",
            bind: "198.18.0.2:9004",
            to: "198.18.0.2/32",
            port: 9004,
            payload: 1000,
            rate_bps: 10e6,
            overhead: V4_OVERHEAD,
            limits: [Limit::Mbit(5), Limit::Mbit(5), Limit::Mbit(4)],
            default_burst: false,
            monitor: true,
            lossless: true,
        },
        UdpChannel {
            name: "open6",
            dst: "[2001:db8::2]:9005",
            bind: "[2001:db8::2]:9005",
            to: "\"2001:db8::2/128\"",
            port: 9005,
            payload: 1000,
            rate_bps: 5e6,
            overhead: V6_OVERHEAD,
            limits: [Limit::None, Limit::None, Limit::None],
            default_burst: false,
            monitor: false,
            lossless: true,
        },
    ]
}

/// The text of policy `variant` (0, 1 or 2). 0: the channels in order;
/// 1: in reverse order after a decoy channel that matches nothing; 2: in
/// order, naming the server through an endpoint set. The channels match
/// disjoint ports, so order never changes where a packet lands.
fn policy_text(variant: usize) -> String {
    let mut blocks = Vec::new();
    for c in channels() {
        let to = if variant == 2 {
            if c.to.contains(':') {
                "server6".to_string()
            } else {
                "server4".to_string()
            }
        } else {
            format!("[{}]", c.to)
        };
        let mut b = format!(
            "  - name: {}\n    to: {to}\n    protocol: udp\n    ports: [{}]\n",
            c.name, c.port
        );
        match c.limits[variant] {
            Limit::None => {}
            Limit::Mbit(m) if c.default_burst => {
                b.push_str(&format!("    limit: {{bandwidth: {m}Mbit}}\n"));
            }
            Limit::Mbit(m) => {
                b.push_str(&format!(
                    "    limit: {{bandwidth: {m}Mbit, burst: 64KiB}}\n"
                ));
            }
            Limit::Pps(p) => {
                b.push_str(&format!("    limit: {{packets: {p}, packet_burst: 64}}\n"));
            }
        }
        if c.monitor {
            b.push_str("    mode: monitor\n");
        }
        blocks.push(b);
    }
    blocks.push(format!(
        "  - name: bulk\n    to: [198.18.0.2/32]\n    protocol: tcp\n    ports: [{TCP_PORT}]\n    limit: {{bandwidth: {TCP_LIMIT_MBIT}Mbit}}\n"
    ));
    let mut text = String::new();
    if variant == 2 {
        text.push_str("endpoints:\n  server4: [198.18.0.2/32]\n  server6: [\"2001:db8::2/128\"]\n");
    }
    text.push_str("channels:\n");
    if variant == 1 {
        text.push_str("  - name: decoy\n    from: [198.19.0.0/16]\n    protocol: udp\n    limit: {packets: 1, packet_burst: 64}\n");
        blocks.reverse();
    }
    for b in blocks {
        text.push_str(&b);
    }
    text
}

/// A raw socket-level request, for inputs the typed client cannot send.
fn raw_request(socket: &Path, line: &[u8]) -> Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // An over-long request is answered ("request too large") and the
    // connection closed before the rest is read: the write then fails with
    // a broken pipe, and the answer waits in our socket. Read it either way.
    if let Err(e) = s.write_all(line) {
        if !matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return Err(e.into());
        }
    }
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply)?;
    serde_json::from_str(&reply).with_context(|| format!("not a JSON reply: {reply:?}"))
}

/// One kind of bad input: its name, what the refusal must say, and the bytes to send.
struct BadInput {
    /// Short name for the report.
    name: &'static str,
    /// A substring the agent's error must contain: refused for the right reason.
    expect: &'static str,
    /// The request line (with its newline), sent as it is.
    line: Vec<u8>,
}

fn apply_line(text: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"cmd": "apply", "file": "bad.yaml", "text": text}))
        .expect("JSON of a string");
    line.push(b'\n');
    line
}

fn bad_inputs() -> Vec<BadInput> {
    // 2 MiB of bytes that are neither a newline nor JSON (xorshift, fixed seed).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut garbage: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (x >> 56) as u8 {
                b'\n' => b'~',
                b => b,
            }
        })
        .collect();
    garbage.push(b'\n');
    let mut many = String::from("channels:\n");
    for i in 0..1025 {
        many.push_str(&format!(
            "  - {{name: c{i}, protocol: udp, ports: [{}]}}\n",
            1000 + i
        ));
    }
    let mut huge = String::from("channels: []\n");
    while huge.len() < 17 << 20 {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    vec![
        BadInput {
            name: "invalid YAML",
            expect: "bad.yaml",
            line: apply_line("channels:\n  - name: [unclosed\n    protocol: udp\n"),
        },
        BadInput {
            name: "unknown field",
            expect: "unknown field `limt`",
            line: apply_line("channels:\n  - name: x\n    limt: {bandwidth: 1Mbit}\n"),
        },
        BadInput {
            name: "bad value",
            expect: "bad.yaml:4: channels[0].limit.bandwidth",
            line: apply_line("channels:\n  - name: x\n    limit:\n      bandwidth: 0Mbit\n"),
        },
        BadInput {
            name: "2 MiB garbage",
            expect: "bad request",
            line: garbage,
        },
        BadInput {
            name: "1,025 channels",
            expect: "1025 channels; at most 1024",
            line: apply_line(&many),
        },
        BadInput {
            name: "17 MiB policy",
            expect: "request too large",
            line: apply_line(&huge),
        },
    ]
}

/// Counts of one sender, shared with the control thread.
#[derive(Default)]
struct SendCounts {
    /// Datagrams the kernel accepted (`send_to` succeeded).
    sent: AtomicU64,
    /// Datagrams the kernel refused (`send_to` failed, e.g. ENOBUFS when
    /// the veth's peer backlog is full): never on the wire, not counted as sent.
    refused: AtomicU64,
}

/// Sends `payload`-byte datagrams to `dst` at `rate_bps` until `stop` or
/// `deadline`, at most `max`. A sender that falls more than 20 ms behind
/// (descheduled) skips ahead instead of bursting to catch up. Returns the
/// seconds it sent for.
fn send_udp(
    dst: &str,
    payload: usize,
    rate_bps: f64,
    stop: &AtomicBool,
    deadline: Instant,
    max: u64,
    counts: &SendCounts,
) -> Result<f64> {
    let sock = UdpSocket::bind(if dst.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })?;
    sock.connect(dst)?;
    let buf = vec![0x5au8; payload];
    let interval = Duration::from_secs_f64(payload as f64 * 8.0 / rate_bps);
    let start = Instant::now();
    let mut due = start;
    let mut n = 0u64;
    while n < max && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(20) {
            due = now;
        }
        n += 1;
        match sock.send(&buf) {
            Ok(len) if len == payload => counts.sent.fetch_add(1, Ordering::Relaxed),
            _ => counts.refused.fetch_add(1, Ordering::Relaxed),
        };
        due += interval;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// What one receiver got.
#[derive(Debug, Default)]
struct Received {
    /// Datagrams of the expected size.
    datagrams: u64,
    /// Datagrams of any other size (must be none).
    wrong_size: u64,
}

/// Receives on `bind` until `stop` is set and the socket has been quiet
/// for 100 ms, or `hard_deadline`. Signals `ready` once bound.
fn receive_udp(
    bind: &str,
    payload: usize,
    stop: &AtomicBool,
    hard_deadline: Instant,
    ready: mpsc::Sender<()>,
) -> Result<Received> {
    let sock = UdpSocket::bind(bind)?;
    // SAFETY: setsockopt reads `RCVBUF` for its length; the fd is ours.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RCVBUF as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(
        r == 0,
        "SO_RCVBUFFORCE: {}",
        std::io::Error::last_os_error()
    );
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = ready.send(());
    let mut buf = vec![0u8; 65536];
    let mut got = Received::default();
    while Instant::now() < hard_deadline {
        match sock.recv(&mut buf) {
            Ok(len) if len == payload => got.datagrams += 1,
            Ok(_) => got.wrong_size += 1,
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(_) => {}
        }
    }
    Ok(got)
}

/// What the iperf3 runs of the TCP channel did, summed.
#[derive(Debug, Default, Clone, Copy)]
struct TcpTotals {
    /// iperf3 runs completed.
    runs: u32,
    /// Bytes the receiver got.
    bytes: f64,
    /// Seconds the receiver measured over.
    seconds: f64,
    /// Sender retransmissions.
    retransmits: u64,
    /// Runs that failed (iperf3 error): reported, and a failure.
    failed: u32,
}

/// iperf3 in back-to-back runs of up to 20 s until `stop` or 6 s before `end`.
fn tcp_load(pair: Pair, stop: Arc<AtomicBool>, end: Instant) -> TcpTotals {
    let mut t = TcpTotals::default();
    // Bounded: at most one run per 4 s of the soak.
    for _ in 0..1000 {
        let left = end.saturating_duration_since(Instant::now()).as_secs();
        if stop.load(Ordering::Relaxed) || left < 6 {
            break;
        }
        let secs = (left - 3).min(20) as u32;
        match iperf3(&pair, TCP_PORT, secs, 1, false) {
            Ok(j) => {
                t.runs += 1;
                t.bytes += j["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
                t.seconds += j["end"]["sum_received"]["seconds"].as_f64().unwrap_or(0.0);
                t.retransmits += j["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
            }
            Err(e) => {
                eprintln!("iperf3 run failed: {e:#}");
                t.failed += 1;
            }
        }
    }
    t
}

/// The agent's memory and descriptors at one moment.
#[derive(Debug, Clone, Copy)]
struct Resources {
    /// Which agent process (0 = the first start, +1 per restart).
    process: usize,
    /// Seconds since that process started.
    age_s: f64,
    /// Seconds since the load started.
    at_s: f64,
    /// VmRSS, KiB.
    rss_kib: u64,
    /// Entries in /proc/PID/fd.
    fds: usize,
    /// Taken [`SAMPLE_AT_AGE`] after the process started: the samples
    /// compared across processes (restarts make new ones).
    comparable: bool,
}

fn resources(pid: u32) -> Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

fn status(agent: &Agent) -> Result<Value> {
    request(&agent.socket, &Request::Status)
}

/// Everything under `dir` (a pin directory), as paths.
fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded: a pin directory holds a few dozen entries.
    while let Some(d) = stack.pop() {
        if out.len() > 10_000 {
            break;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Kernel counters that name a loss outside the datapath: UDP receive
/// errors in the server's namespace and drops on either end of the veth.
fn kernel_drops(pair: &Pair) -> Result<Value> {
    let snmp = in_netns(&pair.server, || -> Result<(String, String)> {
        Ok((
            std::fs::read_to_string("/proc/thread-self/net/snmp")?,
            std::fs::read_to_string("/proc/thread-self/net/snmp6")?,
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("snmp thread panicked"))???;
    let udp: Vec<&str> = snmp.0.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut v4 = json!({});
    if let [names, values] = udp[..] {
        for (n, x) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            v4[n] = json!(x.parse::<u64>().unwrap_or(0));
        }
    }
    let mut v6 = json!({});
    for l in snmp.1.lines().filter(|l| l.starts_with("Udp6")) {
        let mut it = l.split_whitespace();
        if let (Some(n), Some(x)) = (it.next(), it.next()) {
            v6[n] = json!(x.parse::<u64>().unwrap_or(0));
        }
    }
    let link = |ns: &str, dev: &str| -> Result<Value> {
        let out = sh(&["ip", "-j", "-s", "-n", ns, "link", "show", "dev", dev])?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(json!({
            "rx_dropped": v[0]["stats64"]["rx"]["dropped"],
            "tx_dropped": v[0]["stats64"]["tx"]["dropped"],
        }))
    };
    Ok(json!({
        "server_udp": v4,
        "server_udp6": v6,
        "client_veth": link(&pair.client, &pair.client_if)?,
        "server_veth": link(&pair.server, &pair.server_if)?,
    }))
}

/// `--minutes N` from the command line (default 5).
fn minutes() -> Result<f64> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(5.0),
        [flag, n] if flag == "--minutes" => {
            let m: f64 = n.parse().with_context(|| format!("--minutes {n}"))?;
            ensure!(
                (0.5..=24.0 * 60.0).contains(&m),
                "--minutes must be 0.5 to 1440"
            );
            Ok(m)
        }
        _ => bail!("usage: soak [--minutes N]"),
    }
}

/// The mean of a piecewise-constant limit over [from, to]: `log` holds
/// (time, policy variant) of each apply, the first entry at or before `from`.
fn mean_limit(
    log: &[(Instant, usize)],
    from: Instant,
    to: Instant,
    value: impl Fn(usize) -> f64,
) -> f64 {
    let mut sum = 0.0;
    for (i, (at, variant)) in log.iter().enumerate() {
        let start = (*at).max(from);
        let stop = log.get(i + 1).map_or(to, |n| n.0).min(to);
        if stop > start {
            sum += value(*variant) * (stop - start).as_secs_f64();
        }
    }
    sum / (to - from).as_secs_f64()
}

fn main() {
    match soak() {
        Ok(failures) if failures.is_empty() => println!("\nsoak: every check held"),
        Ok(failures) => {
            eprintln!("\nsoak FAILED ({} checks):", failures.len());
            for f in &failures {
                eprintln!("  - {f}");
            }
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("soak FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Records a failed check (and says so at once, in the log of a long run).
fn fail(failures: &mut Vec<String>, msg: String) {
    eprintln!("CHECK FAILED: {msg}");
    failures.push(msg);
}

/// Runs the soak; returns the checks that failed (empty: all held).
fn soak() -> Result<Vec<String>> {
    let minutes = minutes()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "the soak needs root (namespaces, BPF)");
    ensure!(
        agent_bin().exists(),
        "no agent binary at {}: run `cargo xtask soak`, which builds it",
        agent_bin().display()
    );
    let mut failures: Vec<String> = Vec::new();

    let pair = Pair::new()?;
    // Resolve the IPv6 neighbours too (Pair::new does IPv4): while one is
    // pending the kernel queues a few packets and drops the rest, after
    // `send` said they left.
    for (ns, peer) in [(&pair.client, "2001:db8::2"), (&pair.server, "2001:db8::1")] {
        sh(&[
            "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "5", peer,
        ])?;
    }
    let policies: Vec<tc_tests::netns::TempFile> = (0..3)
        .map(|v| write_policy(&format!("soak-{v}"), &policy_text(v)))
        .collect();
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policies[0])?;
    let first = status(&agent)?;
    ensure!(first["state"]["state"] == "consistent", "{first}");
    let mut version = first["version"].as_u64().context("version")?;
    let chans = channels();
    let bad = bad_inputs();

    // Receivers, then senders, then TCP.
    let stop_tx = Arc::new(AtomicBool::new(false));
    let stop_rx = Arc::new(AtomicBool::new(false));
    let secs = minutes * 60.0;
    let load_start = Instant::now();
    let end = load_start + Duration::from_secs_f64(secs);
    let hard_deadline = end + Duration::from_secs(60);
    let (ready_tx, ready) = mpsc::channel();
    let receivers: Vec<JoinHandle<Result<Result<Received>>>> = chans
        .iter()
        .map(|c| {
            let (bind, payload, stop, ready) =
                (c.bind, c.payload, stop_rx.clone(), ready_tx.clone());
            in_netns(&pair.server, move || {
                receive_udp(bind, payload, &stop, hard_deadline, ready)
            })
        })
        .collect();
    for _ in &chans {
        ready
            .recv_timeout(Duration::from_secs(10))
            .context("a receiver did not bind")?;
    }
    let counts: Vec<Arc<SendCounts>> = chans.iter().map(|_| Arc::default()).collect();
    let send_start = Instant::now();
    let senders: Vec<JoinHandle<Result<Result<f64>>>> = chans
        .iter()
        .zip(&counts)
        .map(|(c, n)| {
            let (dst, payload, rate, stop, n) =
                (c.dst, c.payload, c.rate_bps, stop_tx.clone(), n.clone());
            let max = (rate / 8.0 / payload as f64 * (secs + 10.0) * 1.2) as u64;
            in_netns(&pair.client, move || {
                send_udp(dst, payload, rate, &stop, end, max, &n)
            })
        })
        .collect();
    let tcp = {
        let (p, stop) = (pair.alias(), stop_tx.clone());
        std::thread::spawn(move || tcp_load(p, stop, end))
    };

    // The control timeline.
    let mut apply_log: Vec<(Instant, usize)> = vec![(load_start, 0)];
    let mut variant = 0usize;
    let mut applies = 0u32;
    let mut refused = vec![0u32; bad.len()];
    let mut bad_next = 0usize;
    let (mut kills, mut terms) = (0u32, 0u32);
    let mut samples: Vec<Resources> = Vec::new();
    let mut process = 0usize;
    let mut process_start = load_start;
    let mut age_sampled = false;
    let at = |s: f64| load_start + Duration::from_secs_f64(s);
    let mut next_apply = at(APPLY_EVERY);
    let mut next_bad = at(APPLY_EVERY / 2.0);
    let mut next_restart = at(RESTART_EVERY);
    let mut next_sample = at(SAMPLE_EVERY);
    let mut restarts: Vec<Value> = Vec::new();
    // Bounded: at most one step per 100 ms of the run, plus slack.
    for _ in 0..(secs * 20.0) as u64 + 1000 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let age_due =
            (!age_sampled).then(|| process_start + Duration::from_secs_f64(SAMPLE_AT_AGE));
        let next = [
            Some(next_apply),
            Some(next_bad),
            Some(next_restart),
            Some(next_sample),
            age_due,
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("end");
        if next > now {
            std::thread::sleep((next - now).min(Duration::from_millis(500)));
            continue;
        }
        let sample = |process: usize,
                      process_start: Instant,
                      agent: &Agent,
                      comparable: bool|
         -> Result<Resources> {
            let pid = agent.pid().context("agent pid")?;
            let (rss_kib, fds) = resources(pid)?;
            Ok(Resources {
                process,
                age_s: process_start.elapsed().as_secs_f64(),
                at_s: load_start.elapsed().as_secs_f64(),
                rss_kib,
                fds,
                comparable,
            })
        };
        if let Some(due) = age_due {
            if now >= due {
                samples.push(sample(process, process_start, &agent, true)?);
                age_sampled = true;
                continue;
            }
        }
        if now >= next_restart && end.saturating_duration_since(now) > Duration::from_secs(15) {
            let kill = (kills + terms) % 2 == 0;
            let before = status(&agent)?;
            let old_pid = before["pid"].as_u64();
            if kill {
                agent.kill();
                kills += 1;
            } else {
                agent.stop();
                terms += 1;
            }
            std::thread::sleep(Duration::from_secs_f64(DOWN_FOR));
            let t = Instant::now();
            agent.respawn(None, &[])?;
            let up_ms = t.elapsed().as_secs_f64() * 1e3;
            process += 1;
            process_start = Instant::now();
            age_sampled = false;
            // Every process sees the bad inputs in the same order at about
            // the same ages, so its resources compare with the others'.
            bad_next = 0;
            let s = status(&agent)?;
            let how = if kill { "SIGKILL" } else { "SIGTERM" };
            if s["state"]["state"] != "consistent" {
                fail(&mut failures, format!("after {how}: state {}", s["state"]));
            }
            let v = s["version"].as_u64().unwrap_or(0);
            if v != version {
                fail(
                    &mut failures,
                    format!("after {how}: version {version} became {v}"),
                );
            }
            let hooks = s["hooks"].as_array().cloned().unwrap_or_default();
            if hooks.len() != 2 || hooks.iter().any(|h| h["replaced"] != true) {
                fail(
                    &mut failures,
                    format!("after {how}: hooks not taken over: {}", s["hooks"]),
                );
            }
            if s["pid"].as_u64() == old_pid {
                fail(&mut failures, format!("after {how}: the same pid answers"));
            }
            restarts.push(json!({
                "at_s": load_start.elapsed().as_secs_f64(), "signal": how, "up_ms": up_ms,
                "state": s["state"], "version": v,
            }));
            println!(
                "[{:>5.1} s] {how}, down {DOWN_FOR} s, back in {up_ms:.0} ms: state {}, version {v}",
                load_start.elapsed().as_secs_f64(),
                s["state"]["state"]
            );
            next_restart += Duration::from_secs_f64(RESTART_EVERY);
            let soon = Instant::now() + Duration::from_secs(1);
            next_apply = next_apply.max(soon);
            next_bad = next_bad.max(soon + Duration::from_secs_f64(APPLY_EVERY / 2.0));
            continue;
        }
        if now >= next_restart {
            next_restart = end;
        }
        if now >= next_apply {
            variant = (variant + 1) % 3;
            let text = std::fs::read_to_string(&policies[variant])?;
            let r = request(
                &agent.socket,
                &Request::Apply {
                    file: format!("soak-{variant}.yaml"),
                    text,
                },
            );
            match r {
                Ok(report) => {
                    apply_log.push((Instant::now(), variant));
                    applies += 1;
                    let v = report["version"].as_u64().unwrap_or(0);
                    if v != version + 1 {
                        fail(
                            &mut failures,
                            format!("apply {applies}: version {version} -> {v}"),
                        );
                    }
                    version = v;
                }
                Err(e) => fail(
                    &mut failures,
                    format!("valid apply of policy {variant} failed: {e:#}"),
                ),
            }
            next_apply += Duration::from_secs_f64(APPLY_EVERY);
            continue;
        }
        if now >= next_bad {
            let i = bad_next % bad.len();
            bad_next += 1;
            let b = &bad[i];
            let r = raw_request(&agent.socket, &b.line);
            let after = status(&agent)?["version"].as_u64().unwrap_or(0);
            match r {
                Ok(r) if r["ok"] == false => {
                    let err = r["error"].as_str().unwrap_or_default();
                    if err.contains(b.expect) {
                        refused[i] += 1;
                    } else {
                        fail(
                            &mut failures,
                            format!(
                                "{}: refused, but with {err:?} (expected {:?})",
                                b.name, b.expect
                            ),
                        );
                    }
                }
                Ok(r) => fail(&mut failures, format!("{}: not refused: {r}", b.name)),
                Err(e) => fail(&mut failures, format!("{}: no answer: {e:#}", b.name)),
            }
            if after != version {
                fail(
                    &mut failures,
                    format!("{}: version {version} became {after}", b.name),
                );
            }
            next_bad += Duration::from_secs_f64(APPLY_EVERY);
            continue;
        }
        if now >= next_sample {
            samples.push(sample(process, process_start, &agent, false)?);
            next_sample += Duration::from_secs_f64(SAMPLE_EVERY);
            continue;
        }
    }

    // Stop the senders, let what is in flight land, then stop the receivers.
    stop_tx.store(true, Ordering::Relaxed);
    let mut send_secs = Vec::new();
    for s in senders {
        send_secs.push(
            s.join()
                .map_err(|_| anyhow::anyhow!("sender panicked"))???,
        );
    }
    let send_stop = Instant::now();
    let tcp = tcp
        .join()
        .map_err(|_| anyhow::anyhow!("TCP thread panicked"))?;
    std::thread::sleep(Duration::from_secs(1));
    stop_rx.store(true, Ordering::Relaxed);
    let mut received = Vec::new();
    for r in receivers {
        received.push(
            r.join()
                .map_err(|_| anyhow::anyhow!("receiver panicked"))???,
        );
    }
    let report = request(&agent.socket, &Request::Channels)?;
    let kernel = kernel_drops(&pair)?;
    let final_status = status(&agent)?;
    if final_status["state"]["state"] != "consistent" {
        fail(
            &mut failures,
            format!("at the end: state {}", final_status["state"]),
        );
    }
    let totals = |name: &str| -> Value {
        report["channels"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .map_or(Value::Null, |c| c["totals"].clone())
    };

    // Accounting, per UDP channel.
    let window = (send_stop - send_start).as_secs_f64();
    let mut rows = Vec::new();
    for (i, c) in chans.iter().enumerate() {
        let t = totals(c.name);
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        let sent = counts[i].sent.load(Ordering::Relaxed);
        let send_refused = counts[i].refused.load(Ordering::Relaxed);
        let got = &received[i];
        let dropped = n("dropped_pkts");
        let diff = sent as i64 - (got.datagrams + dropped) as i64;
        if diff != 0 {
            fail(
                &mut failures,
                format!(
                    "{}: sent {sent} != received {} + dropped {dropped} (difference {diff}; matched {}, passed {})",
                    c.name, got.datagrams, n("matched_pkts"), n("passed_pkts")
                ),
            );
        }
        if n("matched_pkts") != sent {
            fail(
                &mut failures,
                format!("{}: matched {} of {sent} sent", c.name, n("matched_pkts")),
            );
        }
        if got.wrong_size != 0 {
            fail(
                &mut failures,
                format!("{}: {} datagrams of another size", c.name, got.wrong_size),
            );
        }
        if c.lossless && dropped != 0 {
            fail(
                &mut failures,
                format!("{}: {dropped} dropped, expected none", c.name),
            );
        }
        if c.monitor && n("would_drop_pkts") == 0 {
            fail(
                &mut failures,
                format!("{}: monitor counted no would-drop", c.name),
            );
        }
        if !c.lossless && dropped == 0 {
            fail(&mut failures, format!("{}: the limit never acted", c.name));
        }
        let secs = send_secs[i];
        let wire = (c.payload + c.overhead) as f64 * 8.0;
        let (offered, passed, unit) = match c.limits[0] {
            Limit::Pps(_) => (sent as f64 / secs, got.datagrams as f64 / secs, "pkt/s"),
            _ => (
                sent as f64 * wire / secs / 1e6,
                got.datagrams as f64 * wire / secs / 1e6,
                "Mbit/s",
            ),
        };
        // The limit over the window, in the unit above, and what may pass.
        let value = |v: usize| match c.limits[v] {
            Limit::None => 0.0,
            Limit::Mbit(m) => m as f64,
            Limit::Pps(p) => p as f64,
        };
        let limit = (c.limits[0] != Limit::None)
            .then(|| mean_limit(&apply_log, send_start, send_stop, value));
        // Held: what passed over the window against the limit over it (for
        // enforcing channels sent over their limit).
        let passed_total = match c.limits[0] {
            Limit::Pps(_) => got.datagrams as f64,
            _ => got.datagrams as f64 * wire / 1e6,
        };
        let held = limit
            .filter(|_| !c.monitor && !c.lossless)
            .map(|l| passed_total / (l * window));
        // Never over the limit: what passed in the window is at most the
        // limit over it, plus a full burst at the start and a fresh one at
        // each apply that changes the limit (the bucket is kept only for
        // the same limits; restarts keep it), plus one packet each (GCRA
        // admits a packet while its debt is under one burst).
        let changes = apply_log
            .windows(2)
            .filter(|w| c.limits[w[0].1] != c.limits[w[1].1])
            .count() as f64;
        let mut ceiling = None;
        if let (Some(l), Some(_)) = (limit, held) {
            let (burst, packet) = match c.limits[0] {
                Limit::Pps(_) => (64.0, 1.0),
                _ => {
                    let bytes = if c.default_burst {
                        (l * 1e6 / 8.0 * 0.25).max(262_144.0)
                    } else {
                        65_536.0
                    };
                    (bytes * 8.0 / 1e6, wire / 1e6)
                }
            };
            let bound = l * window + (1.0 + changes) * (burst + packet);
            if passed_total > bound {
                fail(
                    &mut failures,
                    format!(
                        "{}: {passed_total:.1} {} passed, over the limit's {bound:.1} (it changed {changes} times)",
                        c.name,
                        if unit == "pkt/s" { "packets" } else { "Mbit" }
                    ),
                );
            }
            ceiling = Some(bound / (l * window));
        }
        rows.push(json!({
            "channel": c.name, "unit": unit, "mode": if c.monitor { "monitor" } else { "enforce" },
            "offered": offered, "passed": passed, "mean_limit": limit, "held": held,
            "sent": sent, "send_refused": send_refused, "received": got.datagrams,
            "dropped": dropped, "would_drop": n("would_drop_pkts"), "matched": n("matched_pkts"),
            "held_ceiling": ceiling, "limit_changes": changes,
            "passed_pkts": n("passed_pkts"), "difference": diff, "seconds": secs,
        }));
    }
    let bulk = totals("bulk");
    let tcp_wire = bulk["passed_bytes"].as_f64().unwrap_or(0.0) * 8.0;
    let tcp_limit = TCP_LIMIT_MBIT as f64 * 1e6;
    // The channel's wire bytes over the whole run may not exceed the rate
    // times the time plus one burst (its limit never changes, so its bucket
    // is carried through every apply and restart), plus one 64 KiB GSO
    // packet, which the bucket admits whole.
    let tcp_window = (send_stop - load_start).as_secs_f64();
    let tcp_ceiling = tcp_limit * (tcp_window + TCP_BURST_S) + 65536.0 * 8.0;
    if tcp_wire > tcp_ceiling {
        fail(
            &mut failures,
            format!("bulk: {tcp_wire} wire bits passed, ceiling {tcp_ceiling}"),
        );
    }
    if tcp.failed > 0 || tcp.runs == 0 {
        fail(
            &mut failures,
            format!(
                "TCP: {} iperf3 runs failed, {} completed",
                tcp.failed, tcp.runs
            ),
        );
    }
    let goodput = if tcp.seconds > 0.0 {
        tcp.bytes * 8.0 / tcp.seconds
    } else {
        0.0
    };

    // Resources: the same age in every process, and within each process.
    let at_age: Vec<Resources> = samples.iter().filter(|s| s.comparable).copied().collect();
    let mut resource_checks = json!({});
    if let (Some(a), Some(b)) = (at_age.first(), at_age.last()) {
        // Each process starts afresh, so what could grow from one to the
        // next is what it inherits (pinned maps, the state file): the last
        // must stay within the slack of the largest before it. Between
        // processes the allocator's high-water mark varies by a few MiB
        // with which requests arrived first (measured 28.6-36.1 MiB at
        // 45 s), which is noise, not growth.
        let earlier = at_age[..at_age.len() - 1]
            .iter()
            .max_by_key(|s| s.rss_kib)
            .unwrap_or(a);
        let rss_limit = (earlier.rss_kib as f64 * (1.0 + RSS_SLACK)) as u64;
        if b.rss_kib > rss_limit {
            fail(&mut failures, format!("RSS {} KiB at {SAMPLE_AT_AGE} s in process {} grew to {} KiB in process {} (limit {rss_limit})", earlier.rss_kib, earlier.process, b.rss_kib, b.process));
        }
        if b.fds > a.fds + FD_SLACK {
            fail(
                &mut failures,
                format!(
                    "open fds {} in process {} grew to {} in process {}",
                    a.fds, a.process, b.fds, b.process
                ),
            );
        }
        resource_checks = json!({"first": {"process": a.process, "rss_kib": a.rss_kib, "fds": a.fds},
                                 "last": {"process": b.process, "rss_kib": b.rss_kib, "fds": b.fds}});
    } else {
        fail(
            &mut failures,
            "no resource sample at the comparison age".into(),
        );
    }
    // Within each process: its last sample against its sample at the age.
    for a in &at_age {
        if let Some(b) = samples.iter().rfind(|s| s.process == a.process) {
            if b.age_s > a.age_s + 5.0 {
                let rss_limit = (a.rss_kib as f64 * (1.0 + RSS_SLACK)) as u64;
                if b.rss_kib > rss_limit || b.fds > a.fds + FD_SLACK {
                    fail(&mut failures, format!("process {}: RSS {} -> {} KiB, fds {} -> {} between {:.0} s and {:.0} s of age", a.process, a.rss_kib, b.rss_kib, a.fds, b.fds, a.age_s, b.age_s));
                }
            }
        }
    }

    // Teardown: stop, uninstall, and nothing may remain.
    agent.stop();
    let uninstall = agent.uninstall();
    if let Err(e) = &uninstall {
        fail(&mut failures, format!("uninstall: {e:#}"));
    }
    let stale: Vec<String> = entries_under(&agent.pin_dir)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if !stale.is_empty() {
        fail(
            &mut failures,
            format!("stale pins under {}: {stale:?}", agent.pin_dir.display()),
        );
    }
    let pin_dir = agent.pin_dir.clone();
    drop(agent);
    let namespaces = [pair.client.clone(), pair.server.clone()];
    drop(pair);
    let left: Vec<&String> = namespaces
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect();
    if !left.is_empty() {
        fail(&mut failures, format!("namespaces left: {left:?}"));
    }
    // The guards remove the policy files.
    drop(policies);

    // The report.
    let bad_total: u32 = refused.iter().sum();
    println!(
        "\nsoak: {minutes} min of load ({:.0} s of sending), agent {}",
        window,
        agent_bin().display()
    );
    println!(
        "faults: {applies} applies (3 policies in turn), {bad_total} bad inputs refused, restarts {kills} SIGKILL + {terms} SIGTERM (down {DOWN_FOR} s each)"
    );
    println!(
        "bad inputs: {}",
        bad.iter()
            .zip(&refused)
            .map(|(b, n)| format!("{} x{n}", b.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\n| channel | mode | offered | passed | mean limit | held (passed / limit) | sent | received | dropped | would-drop | sent - (received + dropped) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let unit = r["unit"].as_str().unwrap_or("");
        let f = |k: &str| r[k].as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "| {} | {} | {} {unit} | {} {unit} | {} | {} | {} | {} | {} | {} | {} |",
            r["channel"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            f("offered"),
            f("passed"),
            r["mean_limit"]
                .as_f64()
                .map_or("none".to_string(), |x| format!("{x:.1} {unit}")),
            match (r["held"].as_f64(), r["held_ceiling"].as_f64()) {
                (Some(h), Some(c)) => format!("{h:.3} (at most {c:.3})"),
                _ => "-".to_string(),
            },
            r["sent"],
            r["received"],
            r["dropped"],
            r["would_drop"],
            r["difference"],
        );
    }
    println!(
        "| bulk (TCP, iperf3) | enforce | - | goodput {:.2} Mbit/s, wire {:.2} Mbit/s | {TCP_LIMIT_MBIT} Mbit/s | wire {:.3} | {} runs | - | {} | - | - |",
        goodput / 1e6,
        tcp_wire / tcp_window / 1e6,
        tcp_wire / tcp_window / tcp_limit,
        tcp.runs,
        bulk["dropped_pkts"],
    );
    let first_rss = at_age.first();
    let last_rss = at_age.last();
    if let (Some(a), Some(b)) = (first_rss, last_rss) {
        println!(
            "\nagent at {SAMPLE_AT_AGE:.0} s after start: RSS {} KiB (process {}) -> {} KiB (process {}), fds {} -> {}; peak RSS {} KiB over {} samples",
            a.rss_kib, a.process, b.rss_kib, b.process, a.fds, b.fds,
            samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            samples.len()
        );
    }
    println!(
        "teardown: {} stale pins under {}, {} namespaces left",
        stale.len(),
        pin_dir.display(),
        left.len()
    );
    let doc = json!({
        "minutes": minutes,
        "send_seconds": window,
        "applies": applies,
        "bad_inputs": bad.iter().zip(&refused).map(|(b, n)| json!({"input": b.name, "refused": n})).collect::<Vec<_>>(),
        "restarts": restarts,
        "kills": kills,
        "terms": terms,
        "channels": rows,
        "tcp": {
            "limit_mbit": TCP_LIMIT_MBIT, "runs": tcp.runs, "failed_runs": tcp.failed,
            "goodput_mbit": goodput / 1e6, "wire_mbit": tcp_wire / tcp_window / 1e6,
            "retransmits": tcp.retransmits, "dropped_pkts": bulk["dropped_pkts"],
        },
        "resources": samples.iter().map(|s| json!({
            "process": s.process, "age_s": s.age_s, "comparable": s.comparable, "at_s": s.at_s, "rss_kib": s.rss_kib, "fds": s.fds,
        })).collect::<Vec<_>>(),
        "resource_check": resource_checks,
        "kernel_counters": kernel,
        "node": report["node"],
        "stale_pins": stale,
        "namespaces_left": left,
        "failures": failures,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::create_dir_all(&out)?;
    let out = out.join("soak.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&doc)?)?;
    println!("written to {}", out.display());
    Ok(failures)
}
