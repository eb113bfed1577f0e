//! Samples a host's established TCP connections as an operator would watch
//! them: `ss -Htn state established '( sport = :80 ... )'` in the server's
//! namespace every 50 ms, counted per local port, and with each sample the
//! namespace's `CurrEstab` (/proc/net/snmp).
//!
//! The two differ under churn. `ss` walks the kernel's socket hash while
//! connections come and go, so a connection closed early in the walk and
//! its replacement opened later can both be listed: a sample may exceed the
//! most connections that were ever open at once. `CurrEstab` is a counter
//! (ESTABLISHED and CLOSE_WAIT sockets of the namespace), read at once:
//! it never over-counts, but covers every port and peer of the namespace.
//! A strict ceiling under churn is checked on `CurrEstab`, in a namespace
//! holding only the connections of the channel under test.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::tcp::enter_netns;

/// One `ss` run: established connections per local port.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When `ss` was started.
    pub at: Instant,
    pub by_port: BTreeMap<u16, usize>,
    /// The namespace's `CurrEstab`, read just before `ss` ran.
    pub curr_estab: u64,
}

impl Sample {
    pub fn count(&self, port: u16) -> usize {
        self.by_port.get(&port).copied().unwrap_or(0)
    }
}

/// The series a [`Sampler`] took.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The most connections on `port` in any sample.
    pub fn max(&self, port: u16) -> usize {
        self.0.iter().map(|s| s.count(port)).max().unwrap_or(0)
    }

    /// The highest `CurrEstab` in any sample.
    pub fn max_curr_estab(&self) -> u64 {
        self.0.iter().map(|s| s.curr_estab).max().unwrap_or(0)
    }

    /// `(seconds since the first sample, count)` for `port`.
    pub fn series(&self, port: u16) -> Vec<(f64, usize)> {
        let Some(t0) = self.0.first().map(|s| s.at) else {
            return vec![];
        };
        self.0
            .iter()
            .map(|s| ((s.at - t0).as_secs_f64(), s.count(port)))
            .collect()
    }

    /// Samples taken at or after `t`.
    pub fn since(&self, t: Instant) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.at >= t)
    }

    /// The series for `port` squeezed for printing: runs of equal counts as
    /// `count x repeats`.
    pub fn compact(&self, port: u16) -> String {
        self.compact_by(|s| s.count(port) as u64)
    }

    /// The `CurrEstab` series squeezed for printing.
    pub fn compact_curr_estab(&self) -> String {
        self.compact_by(|s| s.curr_estab)
    }

    fn compact_by(&self, value: impl Fn(&Sample) -> u64) -> String {
        let mut out: Vec<String> = vec![];
        let mut run: Option<(u64, usize)> = None;
        let show = |(v, n): (u64, usize)| {
            if n > 1 {
                format!("{v}x{n}")
            } else {
                v.to_string()
            }
        };
        for s in &self.0 {
            let c = value(s);
            run = match run {
                Some((v, n)) if v == c => Some((v, n + 1)),
                Some(r) => {
                    out.push(show(r));
                    Some((c, 1))
                }
                None => Some((c, 1)),
            };
        }
        out.extend(run.map(show));
        out.join(" ")
    }
}

/// The `ss` filter for connections on local `ports` from `peer` (an IPv4
/// or IPv6 address or prefix, any peer when None).
pub fn filter(ports: &[u16], peer: Option<&str>) -> String {
    let ports = ports
        .iter()
        .map(|p| format!("sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    match peer {
        // ss wants an IPv6 address in brackets, else it reads a port.
        Some(p) if p.contains(':') => format!("( ( {ports} ) and dst [{p}] )"),
        Some(p) => format!("( ( {ports} ) and dst {p} )"),
        None => format!("( {ports} )"),
    }
}

/// Runs `ss` once in the calling thread's namespace.
fn ss_once(filter: &str) -> Result<BTreeMap<u16, usize>> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established", filter])
        .output()
        .context("running ss")?;
    if !out.status.success() {
        bail!("ss {filter}: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Counts `ss -Htn state established` lines per local port. Columns:
/// Recv-Q Send-Q Local:Port Peer:Port.
pub fn parse(text: &str) -> Result<BTreeMap<u16, usize>> {
    let mut by_port = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let local = line
            .split_whitespace()
            .nth(2)
            .with_context(|| format!("no local address in ss line {line:?}"))?;
        let port: u16 = local
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("no port in ss address {local:?}"))?;
        *by_port.entry(port).or_insert(0) += 1;
    }
    Ok(by_port)
}

/// The calling thread's namespace's `CurrEstab` (TCP connections in
/// ESTABLISHED or CLOSE_WAIT), from /proc/thread-self/net/snmp.
fn curr_estab_here() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")
        .context("reading /proc/thread-self/net/snmp")?;
    parse_curr_estab(&text)
}

/// `CurrEstab` from the text of /proc/net/snmp: a `Tcp:` line of names,
/// then one of values.
pub fn parse_curr_estab(text: &str) -> Result<u64> {
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next(), tcp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "CurrEstab")
        .context("no CurrEstab in /proc/net/snmp")?;
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .context("no CurrEstab value in /proc/net/snmp")
}

/// `CurrEstab` of `netns` now.
pub fn curr_estab(netns: &str) -> Result<u64> {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        curr_estab_here()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the snmp thread panicked"))?
}

/// Established connections on `ports` from `peer` in `netns` now.
pub fn established(netns: &str, ports: &[u16], peer: Option<&str>) -> Result<BTreeMap<u16, usize>> {
    let (netns, f) = (netns.to_string(), filter(ports, peer));
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        ss_once(&f)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the ss thread panicked"))?
}

/// Runs `ss` in a namespace every `period` (or as fast as `ss` runs, if
/// slower) until stopped or `max_secs` pass.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Samples>>>,
}

impl Sampler {
    /// Starts sampling connections on `ports` from `peer` in `netns` every
    /// 50 ms, for at most `max_secs`. Returns after the first sample, so a
    /// broken `ss` fails here.
    pub fn start(netns: &str, ports: &[u16], peer: Option<&str>, max_secs: f64) -> Result<Self> {
        Self::start_every(netns, ports, peer, Duration::from_millis(50), max_secs)
    }

    /// [`start`](Sampler::start) with another period.
    pub fn start_every(
        netns: &str,
        ports: &[u16],
        peer: Option<&str>,
        period: Duration,
        max_secs: f64,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first) = mpsc::channel::<Result<()>>();
        let (netns, f, st) = (netns.to_string(), filter(ports, peer), stop.clone());
        let handle = std::thread::spawn(move || -> Result<Samples> {
            if let Err(e) = enter_netns(&netns) {
                let _ = first_tx.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
            let start = Instant::now();
            let mut samples = Samples::default();
            let mut next = start;
            while !st.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < max_secs {
                let at = Instant::now();
                match curr_estab_here().and_then(|c| Ok((c, ss_once(&f)?))) {
                    Ok((curr_estab, by_port)) => {
                        samples.0.push(Sample {
                            at,
                            by_port,
                            curr_estab,
                        });
                        if samples.0.len() == 1 {
                            let _ = first_tx.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        let _ = first_tx.send(Err(anyhow::anyhow!("{e:#}")));
                        return Err(e);
                    }
                }
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(samples)
        });
        first
            .recv_timeout(Duration::from_secs(30))
            .context("ss took no first sample")??;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops sampling and returns the series.
    pub fn stop(mut self) -> Result<Samples> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the ss sampler panicked"),
            None => Ok(Samples::default()),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_lines_per_local_port() {
        let text = "0      0      198.18.0.2:80 198.18.0.1:41834\n39     0      198.18.0.2:80 198.18.0.1:41976\n0 0 [2001:db8::2]:8080 [2001:db8::1]:5000\n\n";
        let m = parse(text).unwrap();
        assert_eq!(m.get(&80), Some(&2));
        assert_eq!(m.get(&8080), Some(&1));
        assert_eq!(
            filter(&[80, 8080], Some("2001:db8::1")),
            "( ( sport = :80 or sport = :8080 ) and dst [2001:db8::1] )"
        );
        assert_eq!(
            filter(&[80], Some("198.18.0.1")),
            "( ( sport = :80 ) and dst 198.18.0.1 )"
        );
    }

    #[test]
    fn compacts_a_series() {
        let t = Instant::now();
        let s = Samples(
            [3, 3, 5, 5, 5, 2]
                .iter()
                .map(|c| Sample {
                    at: t,
                    by_port: [(80u16, *c as usize)].into(),
                    curr_estab: *c,
                })
                .collect(),
        );
        assert_eq!(s.compact(80), "3x2 5x3 2");
        assert_eq!(s.compact_curr_estab(), "3x2 5x3 2");
        assert_eq!(s.max(80), 5);
        assert_eq!(s.max_curr_estab(), 5);
    }

    #[test]
    fn parses_curr_estab() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs\nTcp: 1 200 120000 -1 10 20 0 0 17 12345\nUdp: InDatagrams\nUdp: 0\n";
        assert_eq!(parse_curr_estab(text).unwrap(), 17);
        assert!(parse_curr_estab("Ip: 1\n").is_err());
    }
}
