//! Traffic for the detection scenarios (the benchmark's `detect` part):
//! many source addresses on the client's veth, UDP from each of them at a
//! rate the caller changes while it runs (a flood's onset, a set tripling,
//! rates wandering), a UDP sink that counts what arrived per source, and
//! short HTTP requests to nginx from each source, one connection each.
//!
//! Real sockets bound to real addresses: the server's kernel sees the
//! datagrams and handshakes a client's would bring. Every generator is
//! bounded in time and count, and stops (joining its threads) on drop.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns::in_netns, tcp::enter_netns};

/// Adds `n` addresses `198.18.0.<first>`, `198.18.0.<first + 1>`, ... (all
/// in the pair's /24) to `dev` in `netns`, in one `ip -batch`; returns
/// them in order.
pub fn add_sources(netns: &str, dev: &str, first: u8, n: usize) -> Result<Vec<Ipv4Addr>> {
    if first as usize + n > 254 || first < 3 {
        bail!("198.18.0.{first} + {n} addresses leave the /24 or take the pair's own");
    }
    let addrs: Vec<Ipv4Addr> = (0..n)
        .map(|i| Ipv4Addr::new(198, 18, 0, first + i as u8))
        .collect();
    let script: String = addrs
        .iter()
        .map(|a| format!("addr add {a}/24 dev {dev}\n"))
        .collect();
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .context("ip stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "adding source addresses: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(addrs)
}

/// Per-source rates (per second) that a generator reads every tick, and
/// that the caller changes while it runs.
#[derive(Debug, Clone)]
pub struct Rates(Arc<Mutex<Vec<f64>>>);

impl Rates {
    /// One rate per source.
    pub fn new(rates: Vec<f64>) -> Self {
        Self(Arc::new(Mutex::new(rates)))
    }

    /// Every source at `rate`.
    pub fn uniform(n: usize, rate: f64) -> Self {
        Self::new(vec![rate; n])
    }

    /// The rates now.
    pub fn get(&self) -> Vec<f64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets every rate.
    pub fn set_all(&self, rates: &[f64]) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        r.clear();
        r.extend_from_slice(rates);
    }

    /// Multiplies the rates of `which` by `k`.
    pub fn scale(&self, which: &[usize], k: f64) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &i in which {
            if let Some(x) = r.get_mut(i) {
                *x *= k;
            }
        }
    }
}

/// A deterministic random walk per source, for rates that wander around
/// their mean: each step moves a source's factor by up to `step` either
/// way, kept within `1 ± spread` (the quiet scenario: ±30%).
#[derive(Debug, Clone)]
pub struct Wander {
    /// splitmix64 state: the same seed gives the same walk.
    state: u64,
    /// Each source's factor now, within `1 ± spread`.
    pub factors: Vec<f64>,
    /// Largest move per step.
    step: f64,
    /// Largest distance from 1.
    spread: f64,
}

impl Wander {
    /// `n` sources starting at random factors within `1 ± spread`.
    pub fn new(seed: u64, n: usize, step: f64, spread: f64) -> Self {
        let mut w = Self {
            state: seed,
            factors: vec![1.0; n],
            step,
            spread,
        };
        for i in 0..n {
            w.factors[i] = 1.0 + spread * w.signed();
        }
        w
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f64 {
        2.0 * ((self.next() >> 11) as f64 / (1u64 << 53) as f64) - 1.0
    }

    /// One step of every source's walk; returns the factors.
    pub fn step(&mut self) -> &[f64] {
        for i in 0..self.factors.len() {
            let x = self.factors[i] + self.step * self.signed();
            // Reflect at the bounds, so the walk spends time near them too.
            let (lo, hi) = (1.0 - self.spread, 1.0 + self.spread);
            self.factors[i] = if x > hi {
                2.0 * hi - x
            } else if x < lo {
                2.0 * lo - x
            } else {
                x
            };
        }
        &self.factors
    }
}

/// Most datagrams any one [`UdpLoad`] sends, whatever its rates.
pub const MAX_DATAGRAMS: u64 = 50_000_000;

/// UDP datagrams from each source address to one destination, each source
/// at its own rate from [`Rates`] (re-read every 5 ms), one thread in the
/// client's namespace. Stops after `max_secs`, after [`MAX_DATAGRAMS`], or
/// when stopped.
pub struct UdpLoad {
    /// Set to end the sender early.
    stop: Arc<AtomicBool>,
    /// The sender: datagrams the socket took, per source.
    handle: Option<JoinHandle<Result<Result<Vec<u64>>>>>,
}

impl UdpLoad {
    /// Starts sending `payload`-byte datagrams from every address of
    /// `sources` (bound sockets) to `dst` in `netns`.
    pub fn start(
        netns: &str,
        sources: &[Ipv4Addr],
        dst: SocketAddr,
        payload: usize,
        rates: &Rates,
        max_secs: f64,
    ) -> Result<Self> {
        if rates.get().len() != sources.len() {
            bail!("{} rates for {} sources", rates.get().len(), sources.len());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (sources, rates, flag) = (sources.to_vec(), rates.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = in_netns(netns, move || -> Result<Vec<u64>> {
            let socks: Vec<UdpSocket> = match sources
                .iter()
                .map(|a| UdpSocket::bind((*a, 0)).with_context(|| format!("binding {a}")))
                .collect::<Result<_>>()
            {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let buf = vec![0x5au8; payload];
            let mut sent = vec![0u64; socks.len()];
            let mut credit = vec![0.0f64; socks.len()];
            let (start, mut last) = (Instant::now(), Instant::now());
            let mut total = 0u64;
            while !flag.load(Ordering::Relaxed)
                && start.elapsed().as_secs_f64() < max_secs
                && total < MAX_DATAGRAMS
            {
                std::thread::sleep(Duration::from_millis(5));
                let now = Instant::now();
                let dt = (now - last).as_secs_f64();
                last = now;
                let r = rates.get();
                for (i, s) in socks.iter().enumerate() {
                    // At most a second's worth owed: a stalled thread
                    // catches up, but never bursts a backlog.
                    credit[i] = (credit[i] + r[i] * dt).min(r[i].max(1.0));
                    while credit[i] >= 1.0 {
                        credit[i] -= 1.0;
                        if s.send_to(&buf, dst).is_ok() {
                            sent[i] += 1;
                            total += 1;
                        }
                    }
                }
            }
            Ok(sent)
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => bail!("UDP sources: {e}"),
            Err(_) => bail!("UDP sources did not start"),
        }
    }

    /// Stops the sender; returns datagrams sent per source.
    pub fn stop(mut self) -> Result<Vec<u64>> {
        self.finish()
    }

    fn finish(&mut self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow::anyhow!("UDP sender panicked"))??,
            None => Ok(vec![]),
        }
    }
}

impl Drop for UdpLoad {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A UDP receiver in the server's namespace that counts datagrams per
/// source address, so the sender's kernel gets no ICMP port-unreachable
/// back and a test can tell what arrived from whom. Stops after
/// `max_secs` or when dropped.
pub struct UdpSink {
    /// Datagrams received per source address.
    counts: Arc<Mutex<HashMap<IpAddr, u64>>>,
    /// Set to end the receiver.
    stop: Arc<AtomicBool>,
    /// The receiving thread.
    handle: Option<JoinHandle<Result<Result<()>>>>,
}

impl UdpSink {
    /// Binds `bind` in `netns` and receives until stopped or `max_secs`.
    pub fn start(netns: &str, bind: SocketAddr, max_secs: f64) -> Result<Self> {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, flag) = (counts.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = in_netns(netns, move || -> Result<()> {
            let sock = match UdpSocket::bind(bind) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    bail!("binding {bind}: {e}");
                }
            };
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = vec![0u8; 65536];
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < max_secs {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    *c.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(from.ip())
                        .or_insert(0) += 1;
                }
            }
            Ok(())
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Self {
                counts,
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => bail!("UDP sink on {bind}: {e}"),
            Err(_) => bail!("UDP sink on {bind} did not start"),
        }
    }

    /// Datagrams received so far per source.
    pub fn counts(&self) -> HashMap<IpAddr, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What an [`HttpLoad`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    /// Requests answered (the response read to its end).
    pub ok: u64,
    /// Requests that failed: refused, timed out, cut short, or not sent
    /// because the source already had [`HttpLoad::MAX_IN_FLIGHT`] waiting.
    pub failed: u64,
}

/// HTTP/1.0 requests (`GET /`, one connection each, so every request is a
/// handshake, a response and a close) from each source address to `dst`,
/// each source at its own rate from [`Rates`]: one scheduling thread per
/// source in the client's namespace, each request on its own thread. Open
/// loop: a slow server does not slow the demand (up to
/// [`HttpLoad::MAX_IN_FLIGHT`] requests waiting per source).
pub struct HttpLoad {
    /// Set to end the clients.
    stop: Arc<AtomicBool>,
    /// Requests answered, all sources.
    ok: Arc<AtomicU64>,
    /// Requests failed, all sources.
    failed: Arc<AtomicU64>,
    /// Requests under way, all sources: drop waits for them.
    in_flight: Arc<AtomicU64>,
    /// The schedulers, one per source.
    handles: Vec<JoinHandle<()>>,
}

impl HttpLoad {
    /// Requests one source may have waiting at once.
    pub const MAX_IN_FLIGHT: u64 = 64;

    /// Starts one client per address of `sources` in `netns`, each sending
    /// for at most `max_secs` and at most 1,000,000 requests.
    pub fn start(
        netns: &str,
        sources: &[Ipv4Addr],
        dst: SocketAddr,
        rates: &Rates,
        max_secs: f64,
    ) -> Result<Self> {
        if rates.get().len() != sources.len() {
            bail!("{} rates for {} sources", rates.get().len(), sources.len());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for (i, src) in sources.iter().copied().enumerate() {
            let (netns, rates, stop, ok, failed, in_flight) = (
                netns.to_string(),
                rates.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
                in_flight.clone(),
            );
            handles.push(std::thread::spawn(move || {
                // Threads started from here on inherit the namespace.
                if enter_netns(&netns).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mine = Arc::new(AtomicU64::new(0));
                let start = Instant::now();
                let mut next = start;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && start.elapsed().as_secs_f64() < max_secs
                    && n < 1_000_000
                {
                    let rate = rates.get()[i];
                    let now = Instant::now();
                    if rate <= 0.0 {
                        std::thread::sleep(Duration::from_millis(50));
                        next = now;
                        continue;
                    }
                    if next > now {
                        // Short steps, so that a stop is seen promptly.
                        std::thread::sleep((next - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    // At most a second behind: a stalled scheduler does not burst.
                    next = next.max(now - Duration::from_secs(1))
                        + Duration::from_secs_f64(1.0 / rate);
                    n += 1;
                    if mine.load(Ordering::Relaxed) >= Self::MAX_IN_FLIGHT {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    mine.fetch_add(1, Ordering::Relaxed);
                    in_flight.fetch_add(1, Ordering::Relaxed);
                    let (ok, failed, mine, in_flight) =
                        (ok.clone(), failed.clone(), mine.clone(), in_flight.clone());
                    std::thread::spawn(move || {
                        match http_get(src, dst) {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        mine.fetch_sub(1, Ordering::Relaxed);
                        in_flight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }));
        }
        Ok(Self {
            stop,
            ok,
            failed,
            in_flight,
            handles,
        })
    }

    /// Requests so far.
    pub fn counts(&self) -> HttpCounts {
        HttpCounts {
            ok: self.ok.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HttpLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        // Every request gives up within its timeouts (2 s each step).
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One `GET /` over a new connection from `src` to `dst`, the response read
/// to its end (HTTP/1.0: the server closes). Two seconds for each step.
fn http_get(src: Ipv4Addr, dst: SocketAddr) -> Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from((src, 0)).into())?;
    sock.connect_timeout(&dst.into(), Duration::from_secs(2))?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.1 200") && !body.starts_with(b"HTTP/1.0 200") {
        bail!("unexpected response");
    }
    Ok(())
}
