//! The demo's crowd and its UDP service, run inside the demo's namespaces
//! as `xtask demo-flood crowd|sink` (hidden subcommands). Both take
//! commands on stdin, one a line, and answer on stdout with one JSON line:
//!
//! - `flood` (crowd): the flooders' rate goes up by the factor, from now;
//! - `report`: datagrams sent (crowd) or received (sink) per source address
//!   so far, `{"198.18.4.10": 812, ...}`.
//!
//! Both end at end of input or after `--secs`, whichever comes first.

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum FloodRole {
    /// The crowd: every address in SOURCES sends DATAGRAM-byte datagrams to
    /// TO at PPS each; after `flood` on stdin the first FLOODERS of them
    /// send at PPS x FACTOR.
    Crowd {
        #[arg(long)]
        to: SocketAddr,
        /// Source addresses (already on an interface of this namespace).
        #[arg(long, value_delimiter = ',', required = true)]
        sources: Vec<IpAddr>,
        #[arg(long)]
        pps: f64,
        #[arg(long)]
        flooders: usize,
        #[arg(long)]
        factor: f64,
        #[arg(long, default_value_t = 200)]
        datagram: usize,
        /// Stop after this long, whatever stdin says.
        #[arg(long)]
        secs: u64,
    },
    /// The service: counts datagrams on ADDR per source.
    Sink {
        #[arg(long)]
        addr: SocketAddr,
        /// Stop after this long, whatever stdin says.
        #[arg(long)]
        secs: u64,
    },
}

pub fn role(r: FloodRole) -> Result<()> {
    match r {
        FloodRole::Crowd {
            to,
            sources,
            pps,
            flooders,
            factor,
            datagram,
            secs,
        } => crowd(to, &sources, pps, flooders, factor, datagram, secs),
        FloodRole::Sink { addr, secs } => sink(addr, secs),
    }
}

/// Per-source counts, as the `report` line prints them.
type Counts = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

/// Prints `counts` as one JSON line.
fn report(counts: &Counts) -> Result<()> {
    let map: serde_json::Map<String, serde_json::Value> = counts
        .lock()
        .map_err(|_| anyhow::anyhow!("counts lock poisoned"))?
        .iter()
        .map(|(a, n)| (a.to_string(), (*n).into()))
        .collect();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::Value::Object(map))?;
    out.flush()?;
    Ok(())
}

/// Reads commands from stdin on its own thread: `flood` sets `flood`,
/// `report` prints `counts`; end of input sets `done`.
fn commands(flood: Arc<AtomicBool>, done: Arc<AtomicBool>, counts: Counts) {
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line.as_deref().map(str::trim) {
                Ok("flood") => flood.store(true, Ordering::Relaxed),
                Ok("report") => {
                    if report(&counts).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        done.store(true, Ordering::Relaxed);
    });
}

fn crowd(
    to: SocketAddr,
    sources: &[IpAddr],
    pps: f64,
    flooders: usize,
    factor: f64,
    datagram: usize,
    secs: u64,
) -> Result<()> {
    anyhow::ensure!(
        pps > 0.0 && pps * factor <= 10_000.0,
        "rates must be positive and at most 10,000 a second per source"
    );
    let socks: Vec<UdpSocket> = sources
        .iter()
        .map(|a| UdpSocket::bind((*a, 0)).with_context(|| format!("binding {a}")))
        .collect::<Result<_>>()?;
    let counts: Counts = Arc::new(Mutex::new(sources.iter().map(|a| (*a, 0)).collect()));
    let (flood, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    commands(flood.clone(), done.clone(), counts.clone());
    let buf = vec![0x5au8; datagram];
    let mut credit = vec![0.0f64; socks.len()];
    let (start, mut last) = (Instant::now(), Instant::now());
    while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let dt = (now - last).as_secs_f64();
        last = now;
        let flooding = flood.load(Ordering::Relaxed);
        let mut sent = vec![0u64; socks.len()];
        for (i, s) in socks.iter().enumerate() {
            let rate = if flooding && i < flooders {
                pps * factor
            } else {
                pps
            };
            // At most a second owed: a stalled sender never bursts a backlog.
            credit[i] = (credit[i] + rate * dt).min(rate);
            while credit[i] >= 1.0 {
                credit[i] -= 1.0;
                if s.send_to(&buf, to).is_ok() {
                    sent[i] += 1;
                }
            }
        }
        let mut c = counts
            .lock()
            .map_err(|_| anyhow::anyhow!("counts lock poisoned"))?;
        for (a, n) in sources.iter().zip(sent) {
            *c.entry(*a).or_insert(0) += n;
        }
    }
    Ok(())
}

fn sink(addr: SocketAddr, secs: u64) -> Result<()> {
    let sock = UdpSocket::bind(addr).with_context(|| format!("binding {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let counts: Counts = Arc::new(Mutex::new(BTreeMap::new()));
    let (flood, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    commands(flood, done.clone(), counts.clone());
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while !done.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(secs) {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            *counts
                .lock()
                .map_err(|_| anyhow::anyhow!("counts lock poisoned"))?
                .entry(from.ip())
                .or_insert(0) += 1;
        }
    }
    Ok(())
}
