//! Crowds of sources for the observation and detection tests: many
//! addresses on the client's veth, UDP and TCP senders whose per-source
//! rates follow a schedule (quiet, wandering, flooding, stepping up), and
//! receivers that count what arrived per source and per second.
//!
//! Every datagram carries its send time (unix nanoseconds, first 8 bytes),
//! so a receiver bins it by the second it left, as the sender does: the two
//! tallies compare second by second whatever the threads' scheduling.
//! Every loop is bounded in count and time, and stops early on a shared
//! flag. Addresses come from 198.18.2.0/24.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::netns::{deepen_receive_buffer, sh, Pair};

/// Ethernet + IPv4 + UDP header bytes on the wire per datagram.
pub const UDP_OVERHEAD: usize = 14 + 20 + 8;

/// Unix time in seconds.
pub fn unix_now() -> f64 {
    tc_agent::clock::unix_ns() as f64 / 1e9
}

/// Adds `count` (at most 254) addresses 198.18.2.1.. (/24) to the client's
/// veth of `pair` in one `ip -batch`, and routes 198.18.2.0/24 back to the
/// client from the server; returns the addresses in order.
pub fn source_addresses(pair: &Pair, count: u32) -> Result<Vec<String>> {
    anyhow::ensure!((1..=254).contains(&count), "1 to 254 sources, not {count}");
    let addrs: Vec<String> = (1..=count).map(|i| format!("198.18.2.{i}")).collect();
    let batch: String = addrs
        .iter()
        .map(|a| format!("addr add {a}/24 dev {}\n", pair.client_if))
        .collect();
    let path =
        std::env::temp_dir().join(format!("tc-test-{}-{}.ip", std::process::id(), pair.client));
    std::fs::write(&path, batch)?;
    let r = sh(&[
        "ip",
        "-n",
        &pair.client,
        "-batch",
        path.to_str().context("temp path")?,
    ]);
    let _ = std::fs::remove_file(&path);
    r?;
    sh(&[
        "ip",
        "-n",
        &pair.server,
        "route",
        "add",
        "198.18.2.0/24",
        "via",
        "198.18.0.1",
    ])?;
    Ok(addrs)
}

/// Packets and payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub pkts: u64,
    pub bytes: u64,
}

impl Count {
    /// Wire bits (Ethernet, IPv4 and UDP headers added per datagram).
    pub fn wire_bits(&self) -> f64 {
        ((self.bytes + self.pkts * UDP_OVERHEAD as u64) * 8) as f64
    }
}

/// What was sent from, or received from, each source, per second of send
/// time (unix seconds).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Source address -> second -> count.
    pub by_source: HashMap<String, BTreeMap<u64, Count>>,
}

impl Tally {
    fn add(&mut self, source: &str, second: u64, bytes: usize) {
        let c = self
            .by_source
            .entry(source.to_string())
            .or_default()
            .entry(second)
            .or_default();
        c.pkts += 1;
        c.bytes += bytes as u64;
    }

    /// The sum over the sources `pick` accepts, over seconds `from..to`.
    pub fn sum(&self, pick: impl Fn(&str) -> bool, from: u64, to: u64) -> Count {
        let mut total = Count::default();
        if from >= to {
            return total;
        }
        for (s, bins) in &self.by_source {
            if pick(s) {
                for c in bins.range(from..to).map(|(_, c)| c) {
                    total.pkts += c.pkts;
                    total.bytes += c.bytes;
                }
            }
        }
        total
    }

    /// Per second `from..to`, the sum over the sources `pick` accepts.
    pub fn per_second(&self, pick: impl Fn(&str) -> bool, from: u64, to: u64) -> Vec<Count> {
        (from..to)
            .map(|s| self.sum(&pick, s, s + 1))
            .collect::<Vec<_>>()
    }
}

/// A schedule: datagrams (or connections) per second for source `i` at
/// unix time `t`.
pub trait Schedule: FnMut(usize, f64) -> f64 + Send + 'static {}
impl<F: FnMut(usize, f64) -> f64 + Send + 'static> Schedule for F {}

/// How often the senders wake to send what their schedule owes.
const TICK: Duration = Duration::from_millis(10);

/// Sends UDP datagrams of `payload` (at least 8) bytes to `dst` from each
/// of `sources` (addresses of the calling thread's namespace) at the rate
/// `rate` gives, for at most `secs` and `max` datagrams or until `stop`.
/// Returns what each source sent, by second.
pub fn udp_crowd(
    sources: &[String],
    dst: &str,
    payload: usize,
    secs: f64,
    max: u64,
    stop: &AtomicBool,
    mut rate: impl Schedule,
) -> Result<Tally> {
    anyhow::ensure!(payload >= 8, "payloads carry an 8-byte send time");
    let socks: Vec<UdpSocket> = sources
        .iter()
        .map(|a| UdpSocket::bind(format!("{a}:0")).with_context(|| format!("binding {a}")))
        .collect::<Result<_>>()?;
    let dst: SocketAddr = dst.parse()?;
    let mut buf = vec![0x5au8; payload];
    let mut owed = vec![0.0f64; sources.len()];
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut last = start;
    let (mut sent, mut ticks) = (0u64, 0u32);
    while sent < max && start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        ticks += 1;
        if let Some(d) = (start + TICK * ticks).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let now = Instant::now();
        // Owed for the time that passed, at most a second's worth (a
        // stalled thread does not burst afterwards).
        let dt = (now - last).as_secs_f64().min(1.0);
        last = now;
        let t = unix_now();
        for (i, sock) in socks.iter().enumerate() {
            owed[i] += rate(i, t) * dt;
            while owed[i] >= 1.0 && sent < max {
                owed[i] -= 1.0;
                let stamp = tc_agent::clock::unix_ns();
                buf[..8].copy_from_slice(&stamp.to_be_bytes());
                if sock.send_to(&buf, dst).is_ok() {
                    sent += 1;
                    tally.add(&sources[i], stamp / 1_000_000_000, payload);
                }
            }
        }
    }
    Ok(tally)
}

/// Receives datagrams from [`udp_crowd`] on `bind` for at most `secs` or
/// until `stop`; returns what arrived from each source, by the second it
/// was sent.
pub fn udp_tally(bind: &str, secs: f64, stop: &AtomicBool) -> Result<Tally> {
    let sock = UdpSocket::bind(bind)?;
    deepen_receive_buffer(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut tally = Tally::default();
    while start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        if let Ok((len, from)) = sock.recv_from(&mut buf) {
            if len >= 8 {
                let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                tally.add(&from.ip().to_string(), sent / 1_000_000_000, len);
            }
        }
    }
    // What is still queued was sent before the stop.
    sock.set_nonblocking(true)?;
    while let Ok((len, from)) = sock.recv_from(&mut buf) {
        if len >= 8 {
            let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
            tally.add(&from.ip().to_string(), sent / 1_000_000_000, len);
        }
    }
    Ok(tally)
}

/// Opens a TCP connection from `source` (an address of the calling
/// thread's namespace) to `dst`, giving up after `timeout`.
pub fn tcp_connect_from(source: &str, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    let from: SocketAddr = format!("{source}:0").parse()?;
    sock.bind(&from.into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    Ok(sock.into())
}

/// What a [`tcp_crowd`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpCrowdReport {
    /// Exchanges completed: connected, request sent, whole reply read.
    pub done: u64,
    /// Exchanges that failed (connect, write, read or a short reply).
    pub failed: u64,
}

/// From each of `sources`, opens connections to `dst` at the rate `rate`
/// gives (connections per second), each sending `request` bytes and
/// reading a `reply`-byte answer ([`reply_server`]) before closing, one at
/// a time, for at most `secs` and `max` connections or until `stop`.
pub fn tcp_crowd(
    sources: &[String],
    dst: SocketAddr,
    (request, reply): (usize, usize),
    secs: f64,
    max: u64,
    stop: &AtomicBool,
    mut rate: impl Schedule,
) -> Result<TcpCrowdReport> {
    let mut owed = vec![0.0f64; sources.len()];
    let mut report = TcpCrowdReport::default();
    let req = vec![0x41u8; request];
    let mut got = vec![0u8; reply];
    let start = Instant::now();
    let mut last = start;
    let mut ticks = 0u32;
    let exchange = |source: &str, got: &mut [u8]| -> Result<()> {
        let mut s = tcp_connect_from(source, dst, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(&req)?;
        s.read_exact(got)?;
        Ok(())
    };
    while report.done + report.failed < max
        && start.elapsed().as_secs_f64() < secs
        && !stop.load(Ordering::Relaxed)
    {
        ticks += 1;
        if let Some(d) = (start + TICK * ticks).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let now = Instant::now();
        let dt = (now - last).as_secs_f64().min(1.0);
        last = now;
        let t = unix_now();
        for (i, source) in sources.iter().enumerate() {
            owed[i] += rate(i, t) * dt;
            while owed[i] >= 1.0 && report.done + report.failed < max {
                owed[i] -= 1.0;
                match exchange(source, &mut got) {
                    Ok(()) => report.done += 1,
                    Err(_) => report.failed += 1,
                }
            }
        }
    }
    Ok(report)
}

/// A TCP server on `bind` (in the calling thread's namespace) that, for
/// each connection, reads `request` bytes, answers `reply` bytes and
/// closes, one connection at a time, for at most `secs` or until `stop`.
/// Returns the connections served.
pub fn reply_server(
    bind: &str,
    (request, reply): (usize, usize),
    secs: f64,
    stop: &AtomicBool,
) -> Result<u64> {
    let l = TcpListener::bind(bind)?;
    l.set_nonblocking(true)?;
    let answer = vec![0x42u8; reply];
    let mut req = vec![0u8; request];
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.set_write_timeout(Some(Duration::from_secs(2)))?;
                if s.read_exact(&mut req).is_ok() && s.write_all(&answer).is_ok() {
                    served += 1;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Ok(served)
}

/// Times TCP handshakes to `dst` from the calling thread's namespace: every
/// `every`, a connect (given up after 3 s) closed at once, for at most
/// `secs` or until `stop`. Returns (unix time of the attempt, seconds the
/// handshake took, or None when it failed or timed out). Ground truth for
/// what a squeeze does to handshakes, whatever a datapath measures.
pub fn handshake_times(
    dst: SocketAddr,
    every: Duration,
    secs: f64,
    stop: &AtomicBool,
) -> Vec<(f64, Option<f64>)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        n += 1;
        let t = unix_now();
        let t0 = Instant::now();
        let took = TcpStream::connect_timeout(&dst, Duration::from_secs(3))
            .ok()
            .map(|_| t0.elapsed().as_secs_f64());
        out.push((t, took));
        if let Some(d) = (start + every * n).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    out
}

/// A multiplier that wanders within `1 ± amplitude`: each second a random
/// step of up to `step` either way, reflected at the bounds. Deterministic
/// for a seed (xorshift), so a failing run can be replayed.
#[derive(Debug, Clone)]
pub struct Wander {
    /// The xorshift state.
    state: u64,
    /// The multiplier now.
    value: f64,
    /// The second `value` belongs to.
    second: Option<u64>,
    /// How far from 1 the multiplier may go.
    amplitude: f64,
    /// The largest change from one second to the next.
    step: f64,
}

impl Wander {
    pub fn new(seed: u64, amplitude: f64, step: f64) -> Self {
        let mut w = Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            value: 1.0,
            second: None,
            amplitude,
            step,
        };
        // Start anywhere in the band.
        w.value = 1.0 + amplitude * (2.0 * w.uniform() - 1.0);
        w
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The multiplier at unix time `t` (steps once per second; `t` must
    /// not go back).
    pub fn at(&mut self, t: f64) -> f64 {
        let s = t as u64;
        match self.second {
            None => self.second = Some(s),
            Some(prev) => {
                for _ in prev..s {
                    let (lo, hi) = (1.0 - self.amplitude, 1.0 + self.amplitude);
                    let mut v = self.value + self.step * (2.0 * self.uniform() - 1.0);
                    if v > hi {
                        v = 2.0 * hi - v;
                    }
                    if v < lo {
                        v = 2.0 * lo - v;
                    }
                    self.value = v;
                }
                self.second = Some(s.max(prev));
            }
        }
        self.value
    }
}

/// A stop flag shared with sender and receiver threads; raised on drop, so
/// a failing test does not leave them running to their time bound.
#[derive(Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag.
    pub fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// The flag, for a thread.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.raise();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wander_stays_in_its_band_and_moves() {
        let mut w = Wander::new(7, 0.3, 0.12);
        let v: Vec<f64> = (0..600).map(|s| w.at(1_000.0 + s as f64)).collect();
        assert!(v.iter().all(|x| (0.7..=1.3).contains(x)), "{v:?}");
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        assert!(
            lo < 0.75 && hi > 1.25,
            "wanders across the band: {lo}..{hi}"
        );
        // Within a second, the same value.
        let mut w = Wander::new(1, 0.3, 0.12);
        assert_eq!(w.at(5.1), w.at(5.9));
    }
}
