//! Plain TCP endpoints for the connection-limit tests, each run in a
//! network namespace: a server that counts its accepts and its open
//! connections exactly, a client that opens connections as fast as it can
//! from many threads, and one that opens a few at once and holds them.
//! Every loop here is bounded in count and time.

use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Moves the calling thread into network namespace `netns` (`/run/netns/NAME`).
/// Threads and processes it starts afterwards are created there too.
pub fn enter_netns(netns: &str) -> Result<()> {
    let ns = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("opening namespace {netns}"))?;
    // SAFETY: setns on a namespace fd affects only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {netns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises this process's open-file limit (once) to at least 65,536: the
/// test process holds both ends of many connections (the server's and the
/// clients'), and the VM's init starts it with a soft limit of 1,024. Root
/// may raise the hard limit too.
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: getrlimit/setrlimit on a local struct.
        unsafe {
            let mut r: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return;
            }
            let want: libc::rlim_t = 65_536;
            let raised = libc::rlimit {
                rlim_cur: r.rlim_cur.max(want),
                rlim_max: r.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                // Not root after all: as far as the hard limit goes.
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
        }
    });
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    allowed_cpus().len().max(1)
}

/// The CPU numbers this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is an empty set that sched_getaffinity
    // fills; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// What an [`AcceptServer`] saw.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// When each connection was accepted, in order.
    pub accepted: Vec<Instant>,
    /// Connections accepted and not yet closed by their client (the server
    /// closes a connection once it reads its end).
    pub open: usize,
    /// The most connections open at once. A connection counts from its
    /// accept until the server reads the client's FIN, a span inside the
    /// one the datapath counts (from the SYN to both FINs), so this never
    /// exceeds what the datapath counted, and no sampling can miss a peak.
    pub max_open: usize,
    /// Connections that ended (EOF or error).
    pub closed: u64,
}

impl ServerStats {
    /// Accepts at or after `from` and before `to`.
    pub fn accepted_between(&self, from: Instant, to: Instant) -> usize {
        self.accepted
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

/// A TCP server on one or more addresses of a namespace: it accepts every
/// connection at once, reads and discards what the client sends, and
/// closes the connection when the client closes its end. It never closes
/// a connection first, so a client that vanishes stays open here.
/// Single-threaded (poll), bounded to [`AcceptServer::MAX_LIFETIME`];
/// dropping it stops it and closes everything.
pub struct AcceptServer {
    stats: Arc<Mutex<ServerStats>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<()>>>,
    /// The addresses it listens on.
    pub addrs: Vec<SocketAddr>,
}

impl AcceptServer {
    /// The server stops by itself after this long.
    pub const MAX_LIFETIME: Duration = Duration::from_secs(600);

    /// Listens on `binds` (`"198.18.0.2:9000"`, `"[2001:db8::2]:9000"`) in
    /// `netns`; returns once every listener is bound.
    pub fn start(netns: &str, binds: &[&str]) -> Result<Self> {
        let addrs: Vec<SocketAddr> = binds
            .iter()
            .map(|b| b.parse().with_context(|| format!("address {b}")))
            .collect::<Result<_>>()?;
        raise_fd_limit();
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel::<Result<()>>();
        let (netns, a, s, st) = (
            netns.to_string(),
            addrs.clone(),
            stats.clone(),
            stop.clone(),
        );
        let handle = std::thread::spawn(move || -> Result<()> {
            let listeners = (|| -> Result<Vec<TcpListener>> {
                enter_netns(&netns)?;
                let mut ls = Vec::new();
                for addr in &a {
                    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
                    // A deep accept queue: listen() again only changes the backlog.
                    // SAFETY: plain listen(2) on our socket.
                    unsafe { libc::listen(l.as_raw_fd(), 4096) };
                    l.set_nonblocking(true)?;
                    ls.push(l);
                }
                Ok(ls)
            })();
            let listeners = match listeners {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("{e:#}")));
                    return Err(e);
                }
            };
            serve(&listeners, &s, &st)
        });
        ready
            .recv_timeout(Duration::from_secs(30))
            .context("the accept server did not start")??;
        Ok(Self {
            stats,
            stop,
            handle: Some(handle),
            addrs,
        })
    }

    /// What the server saw so far.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).open
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accepted
            .len()
    }

    /// Waits until no connection was accepted for `quiet` (the accept
    /// queue is drained), at most `max`; returns the accepts so far.
    pub fn settle(&self, quiet: Duration, max: Duration) -> usize {
        let t0 = Instant::now();
        let (mut last, mut since) = (self.accepted(), Instant::now());
        while t0.elapsed() < max {
            std::thread::sleep(Duration::from_millis(20));
            let n = self.accepted();
            if n != last {
                (last, since) = (n, Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        last
    }

    /// Starts a new peak: `max_open` becomes the number open now.
    pub fn reset_max(&self) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.max_open = s.open;
    }

    /// Stops the server, closing every connection, and returns what it saw.
    pub fn stop(mut self) -> Result<ServerStats> {
        self.shutdown()?;
        Ok(self.stats())
    }

    fn shutdown(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(r) => r?,
                Err(_) => bail!("the accept server panicked"),
            }
        }
        Ok(())
    }
}

impl Drop for AcceptServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The server's loop: poll the listeners and the connections every 20 ms
/// at most, until `stop` or [`AcceptServer::MAX_LIFETIME`].
fn serve(listeners: &[TcpListener], stats: &Mutex<ServerStats>, stop: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && start.elapsed() < AcceptServer::MAX_LIFETIME {
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .map(|l| l.as_raw_fd())
            .chain(conns.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {e}");
        }
        if n == 0 {
            continue;
        }
        // Connections first (indices shift once new ones are pushed).
        let mut ended = Vec::new();
        for (i, c) in conns.iter_mut().enumerate() {
            let revents = fds[listeners.len() + i].revents;
            if revents == 0 {
                continue;
            }
            loop {
                match c.read(&mut buf) {
                    Ok(0) => {
                        ended.push(i);
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        ended.push(i);
                        break;
                    }
                }
            }
        }
        if !ended.is_empty() {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            for i in ended.into_iter().rev() {
                conns.swap_remove(i);
                s.open -= 1;
                s.closed += 1;
            }
        }
        for (i, l) in listeners.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            // Everything queued, a bounded batch per round.
            for _ in 0..1024 {
                match l.accept() {
                    Ok((c, _)) => {
                        let now = Instant::now();
                        c.set_nonblocking(true)?;
                        conns.push(c);
                        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.accepted.push(now);
                        s.open += 1;
                        s.max_open = s.max_open.max(s.open);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // ECONNABORTED and the like: the next one.
                    Err(_) => continue,
                }
            }
        }
    }
    Ok(())
}

/// How [`open_fast`] runs.
#[derive(Debug, Clone)]
pub struct OpenerConfig {
    /// Threads, each opening one connection at a time.
    pub threads: usize,
    /// How long to open connections.
    pub secs: f64,
    /// At most this many attempts per thread.
    pub max_per_thread: u64,
    /// A connect that has not completed by then is given up (its socket
    /// closed: the kernel stops retransmitting its SYN).
    pub connect_timeout: Duration,
    /// How long each connection is kept open before it is closed (0: at once).
    pub hold: Duration,
    /// Pin thread `i` to the `i % n`-th of the `n` CPUs this process may use.
    pub pin: bool,
    /// Threads start spread over this span, not all in the same instant.
    pub stagger: Duration,
    /// Threads run at the lowest priority (nice 19), so that a test's own
    /// readings during the load, the agent and the server run first: under
    /// emulation 200 busy threads left a reading thread so little of the
    /// CPU that it came back only after the run.
    pub low_priority: bool,
}

impl Default for OpenerConfig {
    fn default() -> Self {
        Self {
            threads: 200,
            secs: 6.0,
            max_per_thread: 20_000,
            connect_timeout: Duration::from_millis(1500),
            hold: Duration::ZERO,
            pin: false,
            stagger: Duration::ZERO,
            low_priority: false,
        }
    }
}

/// What [`open_fast`] saw.
#[derive(Debug, Clone, Default)]
pub struct OpenerReport {
    pub attempts: u64,
    /// Connects that completed (the handshake finished).
    pub succeeded: u64,
    /// Connects that failed with ECONNREFUSED (an RST answered the SYN).
    pub refused: u64,
    /// Connects that failed with ECONNRESET.
    pub reset: u64,
    /// Connects given up after the whole `connect_timeout`.
    pub timed_out: u64,
    /// Connects cut short by the end of the run (less than `connect_timeout` left).
    pub cut_at_end: u64,
    /// Other failures, and the first few of their messages.
    pub other: u64,
    pub other_messages: Vec<String>,
    /// How long each refused or reset connect took, from the call to the error.
    pub refusal_times: Vec<Duration>,
    /// When the first thread started.
    pub started: Option<Instant>,
    /// From `started` until the last thread ended: the span in which SYNs left.
    pub elapsed: Duration,
}

impl OpenerReport {
    /// Refused plus reset connects.
    pub fn refusals(&self) -> u64 {
        self.refused + self.reset
    }

    /// The `p`-quantile (0..=1) of the refusal times.
    pub fn refusal_quantile(&self, p: f64) -> Option<Duration> {
        let mut t = self.refusal_times.clone();
        if t.is_empty() {
            return None;
        }
        t.sort();
        let i = ((t.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
        Some(t[i])
    }

    fn merge(&mut self, o: OpenerReport) {
        self.attempts += o.attempts;
        self.succeeded += o.succeeded;
        self.refused += o.refused;
        self.reset += o.reset;
        self.timed_out += o.timed_out;
        self.cut_at_end += o.cut_at_end;
        self.other += o.other;
        for m in o.other_messages {
            if self.other_messages.len() < 5 {
                self.other_messages.push(m);
            }
        }
        self.refusal_times.extend(o.refusal_times);
    }

    /// One line for a test's output.
    pub fn summary(&self) -> String {
        let q = |p| {
            self.refusal_quantile(p)
                .map_or("-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3))
        };
        format!(
            "{} attempts in {:.2}s: {} succeeded, {} refused, {} reset, {} timed out, {} cut at the end, {} other {:?}; refusal time p50 {} p90 {} max {}",
            self.attempts,
            self.elapsed.as_secs_f64(),
            self.succeeded,
            self.refused,
            self.reset,
            self.timed_out,
            self.cut_at_end,
            self.other,
            self.other_messages,
            q(0.5),
            q(0.9),
            q(1.0)
        )
    }
}

/// Opens TCP connections to `addr` from `netns` as fast as `cfg.threads`
/// threads can, for `cfg.secs` and at most `cfg.max_per_thread` attempts
/// each; each connection is closed after `cfg.hold`. Runs in the
/// background; join the handle for the report.
pub fn open_fast(
    netns: &str,
    addr: SocketAddr,
    cfg: &OpenerConfig,
) -> JoinHandle<Result<OpenerReport>> {
    raise_fd_limit();
    let (netns, cfg) = (netns.to_string(), cfg.clone());
    std::thread::spawn(move || {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(cfg.secs);
        let allowed = allowed_cpus();
        let workers: Vec<JoinHandle<Result<OpenerReport>>> = (0..cfg.threads)
            .map(|i| {
                let (netns, cfg) = (netns.clone(), cfg.clone());
                let cpu = allowed[i % allowed.len().max(1)];
                std::thread::Builder::new()
                    .stack_size(128 << 10)
                    .spawn(move || {
                        enter_netns(&netns)?;
                        if cfg.pin {
                            crate::pin_to_cpu(cpu)?;
                        }
                        if cfg.low_priority {
                            crate::lower_priority()?;
                        }
                        let delay = cfg.stagger.mul_f64(i as f64 / cfg.threads.max(1) as f64);
                        std::thread::sleep(delay);
                        Ok(open_loop(addr, &cfg, deadline))
                    })
                    .expect("spawning an opener thread")
            })
            .collect();
        let mut report = OpenerReport {
            started: Some(start),
            ..Default::default()
        };
        let mut failed = None;
        for w in workers {
            match w.join() {
                Ok(Ok(r)) => report.merge(r),
                Ok(Err(e)) => failed = Some(e),
                Err(_) => failed = Some(anyhow::anyhow!("an opener thread panicked")),
            }
        }
        report.elapsed = start.elapsed();
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    })
}

/// One opener thread's loop.
fn open_loop(addr: SocketAddr, cfg: &OpenerConfig, deadline: Instant) -> OpenerReport {
    let mut r = OpenerReport::default();
    while r.attempts < cfg.max_per_thread {
        let now = Instant::now();
        if now + Duration::from_millis(1) >= deadline {
            break;
        }
        let left = deadline - now;
        let timeout = cfg.connect_timeout.min(left);
        r.attempts += 1;
        let t0 = Instant::now();
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                r.succeeded += 1;
                if !cfg.hold.is_zero() {
                    std::thread::sleep(
                        cfg.hold
                            .min(deadline.saturating_duration_since(Instant::now())),
                    );
                }
                drop(s);
            }
            Err(e) => match (e.kind(), e.raw_os_error()) {
                (_, Some(libc::ECONNREFUSED)) | (ErrorKind::ConnectionRefused, _) => {
                    r.refused += 1;
                    r.refusal_times.push(t0.elapsed());
                }
                (_, Some(libc::ECONNRESET)) | (ErrorKind::ConnectionReset, _) => {
                    r.reset += 1;
                    r.refusal_times.push(t0.elapsed());
                }
                (ErrorKind::TimedOut, _) | (ErrorKind::WouldBlock, _) => {
                    if timeout < cfg.connect_timeout {
                        r.cut_at_end += 1;
                    } else {
                        r.timed_out += 1;
                    }
                }
                _ => {
                    r.other += 1;
                    if r.other_messages.len() < 5 {
                        r.other_messages.push(e.to_string());
                    }
                    // Not a refusal: do not spin on it.
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
        }
    }
    r
}

/// Connections [`hold_connections`] opened, and how the others failed.
#[derive(Debug, Default)]
pub struct Held {
    /// The connections that completed, open until dropped.
    pub streams: Vec<TcpStream>,
    pub refused: u64,
    pub timed_out: u64,
    pub other: Vec<String>,
}

impl Held {
    /// Sends one byte on every held connection (keeps them active).
    pub fn poke(&mut self) -> Result<()> {
        for s in &mut self.streams {
            s.write_all(b".").context("poking a held connection")?;
        }
        Ok(())
    }

    /// Closes every connection with SO_LINGER 0: the socket is freed at
    /// once, with an RST instead of a FIN (which goes nowhere if the host
    /// was unplugged first), and leaves no orphan behind.
    pub fn abort(self) {
        for s in self.streams {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt reads `l` for its length; the fd is ours.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(s);
        }
    }
}

/// Opens `n` connections to `addr` from `netns` all at once (one thread
/// each), each connect given `timeout`, and returns those that completed,
/// open.
pub fn hold_connections(
    netns: &str,
    addr: SocketAddr,
    n: usize,
    timeout: Duration,
) -> Result<Held> {
    raise_fd_limit();
    let (tx, rx) = mpsc::channel();
    let workers: Vec<JoinHandle<()>> = (0..n)
        .map(|_| {
            let (netns, tx) = (netns.to_string(), tx.clone());
            std::thread::spawn(move || {
                let r = enter_netns(&netns)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))
                    .and_then(|()| TcpStream::connect_timeout(&addr, timeout));
                let _ = tx.send(r);
            })
        })
        .collect();
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
    let mut held = Held::default();
    for r in rx {
        match r {
            Ok(s) => held.streams.push(s),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => held.refused += 1,
            Err(e) if e.kind() == ErrorKind::TimedOut => held.timed_out += 1,
            Err(e) => held.other.push(e.to_string()),
        }
    }
    Ok(held)
}
