//! Network namespaces joined by veth pairs, and an agent running in one of
//! them. Everything is torn down on drop, including when a test panics.
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32.

use std::{
    fs::File,
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command, failing with its stderr if it fails.
pub fn sh(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// The qdiscs of `dev` in `netns` as `tc -s -j qdisc show` prints them:
/// one JSON object each (`kind`, `handle`, `root`, `parent`, `drops`, ...).
pub fn tc_qdiscs(netns: &str, dev: &str) -> Result<Vec<serde_json::Value>> {
    let out = sh(&[
        "ip", "netns", "exec", netns, "tc", "-s", "-j", "qdisc", "show", "dev", dev,
    ])?;
    match serde_json::from_slice(&out.stdout)? {
        serde_json::Value::Array(qdiscs) => Ok(qdiscs),
        other => bail!("tc -s -j qdisc show dev {dev}: not a list: {other}"),
    }
}

/// Two hosts, `client` (198.18.0.1, 2001:db8::1) and `server` (198.18.0.2,
/// 2001:db8::2), on one veth pair `<tag>c` / `<tag>s`.
pub struct Pair {
    /// Namespace of the sending host (198.18.0.1, 2001:db8::1).
    pub client: String,
    /// Namespace of the receiving host (198.18.0.2, 2001:db8::2).
    pub server: String,
    /// The client's end of the veth pair.
    pub client_if: String,
    /// The server's end of the veth pair.
    pub server_if: String,
    /// Whether dropping this value deletes the namespaces: false for an
    /// [`alias`](Pair::alias) that another thread uses for a while.
    owner: bool,
}

impl Pair {
    pub fn new() -> Result<Self> {
        let tag = format!(
            "tct{}{}",
            std::process::id() % 10_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let p = Self {
            client: format!("{tag}-c"),
            server: format!("{tag}-s"),
            client_if: format!("{tag}c"),
            server_if: format!("{tag}s"),
            owner: true,
        };
        // From here on, Drop cleans up whatever was made.
        sh(&["ip", "netns", "add", &p.client])?;
        sh(&["ip", "netns", "add", &p.server])?;
        sh(&[
            "ip",
            "link",
            "add",
            &p.client_if,
            "netns",
            &p.client,
            "type",
            "veth",
            "peer",
            "name",
            &p.server_if,
            "netns",
            &p.server,
        ])?;
        for (ns, dev, v4, v6) in [
            (&p.client, &p.client_if, "198.18.0.1/24", "2001:db8::1/64"),
            (&p.server, &p.server_if, "198.18.0.2/24", "2001:db8::2/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        // Resolve the neighbours before any test traffic: while ARP is
        // pending, the kernel queues only ~200 KB per neighbour and drops
        // the oldest, so a flood starting alongside another stream could
        // cost that stream its first packet before any datapath sees it.
        for (ns, peer) in [(&p.client, "198.18.0.2"), (&p.server, "198.18.0.1")] {
            sh(&[
                "ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "5", peer,
            ])?;
        }
        Ok(p)
    }

    /// The same pair under a name that does not own it, for a thread that
    /// runs traffic alongside: the original still cleans up.
    pub fn alias(&self) -> Pair {
        Pair {
            client: self.client.clone(),
            server: self.server.clone(),
            client_if: self.client_if.clone(),
            server_if: self.server_if.clone(),
            owner: false,
        }
    }

    /// Delays everything the server sends (the ACK path) by `ms` with
    /// netem, so TCP and ECN have a round trip to act on. Fails where the
    /// kernel has no netem (this host).
    pub fn delay_server_egress(&self, ms: u32) -> Result<()> {
        let delay = format!("{ms}ms");
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.server,
            "tc",
            "qdisc",
            "add",
            "dev",
            &self.server_if,
            "root",
            "netem",
            "delay",
            &delay,
        ])?;
        Ok(())
    }

    /// Lets TCP negotiate ECN (`net.ipv4.tcp_ecn=1`) on both hosts.
    pub fn enable_ecn(&self) -> Result<()> {
        for ns in [&self.client, &self.server] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_ecn=1",
            ])?;
        }
        Ok(())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        // Deleting a namespace deletes its end of the veth pair, and the peer with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server])
            .status();
    }
}

/// A third host behind the client: namespace `<tag>-h` on its own veth
/// pair (`<tag>h` there, `<tag>r` in the client's namespace), with
/// 198.18.1.1/24 and 2001:db8:1::1/64. The client's namespace routes
/// between it (198.18.1.254, 2001:db8:1::fe) and the server, so what it
/// sends reaches the server through the same veth as the client's traffic
/// and its connections can be cut off without touching the pair.
pub struct RoutedHost {
    /// The host's namespace.
    pub netns: String,
    /// The host's end of its veth pair.
    pub iface: String,
}

impl RoutedHost {
    pub const V4: &'static str = "198.18.1.1";
    pub const V6: &'static str = "2001:db8:1::1";

    /// Deletes the host's veth pair: nothing it sends from now on (a FIN,
    /// an RST) leaves its namespace, as if it had vanished.
    pub fn unplug(&self) -> Result<()> {
        sh(&["ip", "-n", &self.netns, "link", "del", &self.iface])?;
        Ok(())
    }

    /// Deletes the namespace (its sockets go with it once closed).
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RoutedHost {
    fn drop(&mut self) {
        self.delete();
    }
}

impl Pair {
    /// Adds a [`RoutedHost`] behind the client.
    pub fn routed_host(&self) -> Result<RoutedHost> {
        let tag = self.client_if.trim_end_matches('c');
        let h = RoutedHost {
            netns: format!("{tag}-h"),
            iface: format!("{tag}h"),
        };
        let router_if = format!("{tag}r");
        // From here on, Drop deletes the namespace (and the veth with it).
        sh(&["ip", "netns", "add", &h.netns])?;
        sh(&[
            "ip",
            "link",
            "add",
            &h.iface,
            "netns",
            &h.netns,
            "type",
            "veth",
            "peer",
            "name",
            &router_if,
            "netns",
            &self.client,
        ])?;
        for (ns, dev, v4, v6) in [
            (&h.netns, &h.iface, "198.18.1.1/24", "2001:db8:1::1/64"),
            (
                &self.client,
                &router_if,
                "198.18.1.254/24",
                "2001:db8:1::fe/64",
            ),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        sh(&["ip", "-n", &h.netns, "link", "set", "lo", "up"])?;
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh(&["ip", "netns", "exec", &self.client, "sysctl", "-qw", key])?;
        }
        sh(&[
            "ip",
            "-n",
            &h.netns,
            "route",
            "add",
            "default",
            "via",
            "198.18.1.254",
        ])?;
        sh(&[
            "ip",
            "-n",
            &h.netns,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::fe",
        ])?;
        // Replace: a second host on the same pair finds the routes there.
        sh(&[
            "ip",
            "-n",
            &self.server,
            "route",
            "replace",
            "198.18.1.0/24",
            "via",
            "198.18.0.1",
        ])?;
        sh(&[
            "ip",
            "-n",
            &self.server,
            "-6",
            "route",
            "replace",
            "2001:db8:1::/64",
            "via",
            "2001:db8::1",
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &h.netns,
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "198.18.0.2",
        ])?;
        Ok(h)
    }
}

/// Whether the tests run inside `cargo xtask vm-test`'s guest (qemu under
/// TCG emulation: several times slower, and nothing may skip).
pub fn in_vm() -> bool {
    std::env::var_os("TC_TESTS_IN_VM").is_some()
}

/// Path of the `tc-agent` binary next to the test executable.
pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TC_AGENT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> or target/<profile>/<bin> -> target/<profile>/tc-agent
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    dir.join("tc-agent")
}

/// A `tc-agent run` in a namespace, with its own socket, pins and state.
/// Dropping it stops the agent and runs `tc-agent uninstall`, so nothing
/// is left attached or pinned, also when a test fails.
pub struct Agent {
    child: Option<Child>,
    /// The namespace the agent runs in.
    pub netns: String,
    /// `run` arguments naming the hooks (`--iface X`, `--xdp X`), reused by
    /// [`respawn`](Agent::respawn).
    hooks: Vec<String>,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts an agent in `netns` on `iface` with `policy` and waits for its socket.
    pub fn start(netns: &str, iface: &str, policy: &Path) -> Result<Self> {
        Self::start_hooks(netns, &["--iface", iface], policy)
    }

    /// [`start`](Agent::start) with more `tc-agent run` arguments, given
    /// again on every (re)start.
    pub fn start_with(netns: &str, iface: &str, policy: &Path, extra: &[&str]) -> Result<Self> {
        let mut hooks = vec!["--iface", iface];
        hooks.extend_from_slice(extra);
        Self::start_hooks(netns, &hooks, policy)
    }

    /// Starts an agent with `hooks` (`--iface`/`--xdp` and any other `run`
    /// arguments, given again on every restart) and `policy`.
    pub fn start_hooks(netns: &str, hooks: &[&str], policy: &Path) -> Result<Self> {
        let base = std::env::temp_dir().join(format!("tc-agent-test-{netns}"));
        std::fs::create_dir_all(&base)?;
        let mut a = Self {
            child: None,
            netns: netns.to_string(),
            hooks: hooks.iter().map(|s| s.to_string()).collect(),
            socket: base.join("agent.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/tc-agent-test-{netns}")),
            state_dir: base.join("state"),
            log: base.join("agent.log"),
        };
        a.respawn(Some(policy), &[])?;
        Ok(a)
    }

    /// (Re)starts the agent process; `policy` None keeps the pinned policy.
    pub fn spawn(&mut self, netns: &str, iface: &str, policy: Option<&Path>) -> Result<()> {
        self.netns = netns.to_string();
        self.hooks = vec!["--iface".into(), iface.into()];
        self.respawn(policy, &[])
    }

    /// (Re)starts the agent process with the hooks it was started with and
    /// `extra` run arguments; `policy` None keeps the pinned policy.
    pub fn respawn(&mut self, policy: Option<&Path>, extra: &[&str]) -> Result<()> {
        let log = File::create(&self.log)?;
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["run", "--netns", &self.netns]);
        // Tests sample every 200 ms unless the caller chose a period (the
        // benchmark measures detection at the operators' default).
        if !self
            .hooks
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .any(|a| a == "--sample-ms")
        {
            cmd.args(["--sample-ms", "200"]);
        }
        cmd.args(&self.hooks).args(extra);
        cmd.arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin().display()))?;
        self.child = Some(child);
        // Under emulation loading alone (the verifier over every program,
        // filling the interaction table's free ring) takes most of 20 s.
        let deadline = Instant::now() + Duration::from_secs(if in_vm() { 60 } else { 20 });
        while Instant::now() < deadline {
            if self.cli(&["status"]).is_ok() {
                return Ok(());
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "tc-agent exited ({st}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "tc-agent did not come up: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the agent with SIGTERM and waits for it. The datapath stays
    /// attached and enforcing. Returns whether it exited by itself, with
    /// status 0, within 10 s (past that it is killed).
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM).is_some_and(|st| st.success())
    }

    /// Kills the agent with SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Sends `sig` and waits up to 10 s; the exit status, if it exited.
    fn signal(&mut self, sig: libc::c_int) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// `tc-agent uninstall` for this agent's pins and state (the agent must
    /// be stopped).
    pub fn uninstall(&self) -> Result<Output> {
        self.uninstall_with(&[])
    }

    /// [`uninstall`](Agent::uninstall) with more arguments (`--iface X`).
    pub fn uninstall_with(&self, extra: &[&str]) -> Result<Output> {
        let out = Command::new(agent_bin())
            .args(["uninstall", "--netns", &self.netns, "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "tc-agent uninstall: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(agent_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "tc-agent {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// A CLI command with `-o json` added, its answer parsed.
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.cli(&a)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tc-agent {a:?} printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `channels -o json`, parsed.
    pub fn channels(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(
            &self.cli(&["channels", "-o", "json"])?.stdout,
        )?)
    }

    /// The whole row of one channel in `channels -o json`.
    pub fn channel(&self, name: &str) -> Result<serde_json::Value> {
        let c = self.channels()?;
        c["channels"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .cloned()
            .with_context(|| format!("no channel {name} in {c}"))
    }

    /// Totals of one channel.
    pub fn totals(&self, name: &str) -> Result<serde_json::Value> {
        totals_in(&self.channels()?, name)
    }
}

/// Channel `name`'s totals in a `channels -o json` report.
pub fn totals_in(report: &serde_json::Value, name: &str) -> Result<serde_json::Value> {
    report["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .map(|c| c["totals"].clone())
        .with_context(|| format!("no channel {name} in {report}"))
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        if let Err(e) = self.uninstall() {
            eprintln!("cleanup: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if let Some(base) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Runs `f` on a thread inside network namespace `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<Result<T>> {
    let path = Path::new("/run/netns").join(netns);
    std::thread::spawn(move || {
        let ns = File::open(&path)?;
        // SAFETY: setns on a namespace fd affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// Sends UDP datagrams of `payload` bytes to `dst` at about `rate_bps`
/// (payload bits) for `secs`, at most `max` datagrams. Returns datagrams sent.
pub fn udp_send(dst: &str, payload: usize, rate_bps: f64, secs: f64, max: u64) -> Result<u64> {
    udp_send_until(dst, payload, rate_bps, secs, max, &AtomicBool::new(false))
}

/// [`udp_send`] that also stops once `stop` is set: for a load that must
/// last as long as a test's checks, which may end well before `secs`.
pub fn udp_send_until(
    dst: &str,
    payload: usize,
    rate_bps: f64,
    secs: f64,
    max: u64,
    stop: &AtomicBool,
) -> Result<u64> {
    let mut sent = 0;
    udp_send_with(dst, payload, rate_bps, secs, max, stop, |_| sent += 1)?;
    Ok(sent)
}

/// [`udp_send`], returning the payload bytes sent in each tenth of a
/// second of Unix time (key: Unix time in tenths of a second), so a test can
/// tell a second in which the flood was on throughout from one in which the
/// sender stalled for part of it. A second's total is not enough: after a
/// stall the sender catches up in a burst, which a token bucket cuts to
/// its burst size.
pub fn udp_send_bins(
    dst: &str,
    payload: usize,
    rate_bps: f64,
    secs: f64,
    max: u64,
) -> Result<std::collections::BTreeMap<u64, u64>> {
    let mut bins = std::collections::BTreeMap::new();
    udp_send_with(
        dst,
        payload,
        rate_bps,
        secs,
        max,
        &AtomicBool::new(false),
        |stamp| {
            *bins.entry(stamp / 100_000_000).or_insert(0) += payload as u64;
        },
    )?;
    Ok(bins)
}

/// Sends as [`udp_send_until`] does, stamping each datagram with its send
/// time and calling `sent` with it for every datagram the socket took.
fn udp_send_with(
    dst: &str,
    payload: usize,
    rate_bps: f64,
    secs: f64,
    max: u64,
    stop: &AtomicBool,
    mut sent_one: impl FnMut(u64),
) -> Result<()> {
    let sock = UdpSocket::bind(if dst.contains(':') && dst.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })?;
    let mut buf = vec![0x5au8; payload];
    let interval = payload as f64 * 8.0 / rate_bps;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < max && start.elapsed().as_secs_f64() < secs && !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_secs_f64(sent as f64 * interval);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // The send time, for receivers that bin by when a datagram left.
        let stamp = tc_agent::clock::unix_ns();
        if payload >= 8 {
            buf[..8].copy_from_slice(&stamp.to_be_bytes());
        }
        if sock.send_to(&buf, dst).is_ok() {
            sent += 1;
            sent_one(stamp);
        }
    }
    Ok(())
}

/// Receives datagrams from [`udp_send`] on `bind` for `secs` and returns the
/// payload bytes per second of Unix time, binned by each datagram's send
/// time (so the bins say what passed the datapath in each second, whatever
/// this thread's scheduling).
pub fn udp_receive_bins(bind: &str, secs: f64) -> Result<std::collections::BTreeMap<u64, u64>> {
    let sock = UdpSocket::bind(bind)?;
    deepen_receive_buffer(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut bins = std::collections::BTreeMap::new();
    while start.elapsed().as_secs_f64() < secs {
        if let Ok(len) = sock.recv(&mut buf) {
            if len < 8 {
                continue;
            }
            let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
            *bins.entry(sent / 1_000_000_000).or_insert(0) += len as u64;
        }
    }
    Ok(bins)
}

/// A deep receive buffer: the count must measure the datapath, not the
/// receiving thread's scheduling (slow under emulation, with a flood
/// alongside, and starved for seconds while an agent's programs are
/// verified): 64 MiB of queue is several seconds at the rates tested.
pub fn deepen_receive_buffer(sock: &UdpSocket) {
    let size: libc::c_int = 64 << 20;
    // SAFETY: setsockopt reads `size` for its length; the fd is ours.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(sock),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Counts UDP datagrams on `bind` until `secs` pass, or, once `stop` is
/// set, until none came for a second after it was set (what the sender
/// sent before it stopped has arrived, even through a guest's stall).
pub fn udp_count_until(bind: &str, secs: f64, stop: &AtomicBool) -> Result<u64> {
    let sock = UdpSocket::bind(bind)?;
    deepen_receive_buffer(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut n = 0u64;
    // The last datagram, or the moment `stop` was first seen if later.
    let mut quiet_since = start;
    let mut stopping = false;
    while start.elapsed().as_secs_f64() < secs {
        if sock.recv(&mut buf).is_ok() {
            n += 1;
            quiet_since = Instant::now();
        } else if stop.load(Ordering::Relaxed) {
            if !stopping {
                stopping = true;
                quiet_since = quiet_since.max(Instant::now());
            }
            if quiet_since.elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
    }
    Ok(n)
}

/// Sets its flag when dropped, so a load told to stop by the flag stops
/// also when a check fails and the test returns early.
pub struct StopOnDrop(
    /// The flag the load's threads poll.
    pub Arc<AtomicBool>,
);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Counts UDP datagrams on `bind` until `secs` pass; returns `(datagrams,
/// bytes received after `warmup` seconds, seconds measured)`.
pub fn udp_receive(bind: &str, secs: f64, warmup: f64) -> Result<(u64, u64, f64)> {
    let sock = UdpSocket::bind(bind)?;
    deepen_receive_buffer(&sock);
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut first: Option<Instant> = None;
    let mut last = start;
    while start.elapsed().as_secs_f64() < secs {
        if let Ok(len) = sock.recv(&mut buf) {
            let now = Instant::now();
            let t0 = *first.get_or_insert(now);
            n += 1;
            if (now - t0).as_secs_f64() >= warmup {
                bytes += len as u64;
                last = now;
            }
        }
    }
    let measured = first.map_or(0.0, |t0| (last - t0).as_secs_f64() - warmup);
    Ok((n, bytes, measured))
}

/// Runs iperf3 TCP from `pair.client` to the server (198.18.0.2:`port`) for
/// `secs` with `streams` streams, and returns the client's JSON report, with
/// the server's under `server_output_json` (receiver-side intervals). With
/// `pin`, the client runs on CPU 0 and the server on CPU 1.
/// [`iperf3`] on its own thread, for flows that must overlap another.
pub fn iperf3_background(
    pair: &Pair,
    port: u16,
    secs: u32,
    streams: u32,
) -> std::thread::JoinHandle<Result<serde_json::Value>> {
    let pair = pair.alias();
    std::thread::spawn(move || iperf3(&pair, port, secs, streams, false))
}

pub fn iperf3(
    pair: &Pair,
    port: u16,
    secs: u32,
    streams: u32,
    pin: bool,
) -> Result<serde_json::Value> {
    let (secs, streams) = (secs.to_string(), streams.to_string());
    iperf3_run(
        pair,
        port,
        "198.18.0.2",
        &["-t", &secs, "-P", &streams],
        pin,
    )
}

/// iperf3 UDP from `pair.client` to `server` (198.18.0.2 or 2001:db8::2)
/// port `port`: datagrams of `len` bytes at `rate` (e.g. "200M") for
/// `secs`. Datagrams longer than the MTU leave as IP fragments.
pub fn iperf3_udp(
    pair: &Pair,
    server: &str,
    port: u16,
    secs: u32,
    rate: &str,
    len: usize,
) -> Result<serde_json::Value> {
    let (secs, len) = (secs.to_string(), len.to_string());
    iperf3_run(
        pair,
        port,
        server,
        &["-u", "-b", rate, "-l", &len, "-t", &secs],
        false,
    )
}

/// The receiver's goodput over the server's intervals of an iperf3 report
/// (the client's own count bytes written to its socket).
#[derive(Debug, Clone)]
pub struct Goodput {
    /// Bits per second over the intervals taken: their bytes over their
    /// seconds. Not the mean of their rates: the last interval can be a
    /// fraction of a second, and its rate would weigh as much as a whole
    /// second's (a last interval at 54.4 Mbit/s after six at 10 made a
    /// 10 Mbit/s limit's mean 1.72 of it in a guest).
    pub bps: f64,
    /// Each interval's bits per second, to print.
    pub intervals: Vec<f64>,
}

/// The goodput over the server's intervals that start at `from_s` seconds
/// or later; `None` without one, or without their lengths.
pub fn server_goodput(report: &serde_json::Value, from_s: f64) -> Option<Goodput> {
    let (mut bytes, mut secs, mut intervals) = (0.0, 0.0, Vec::new());
    let sums = report["server_output_json"]["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| &i["sum"]);
    for i in sums.filter(|i| i["start"].as_f64().is_some_and(|t| t >= from_s - 0.01)) {
        let (b, t) = (i["bytes"].as_f64()?, i["seconds"].as_f64()?);
        bytes += b;
        secs += t;
        intervals.push(if t > 0.0 { b * 8.0 / t } else { 0.0 });
    }
    (secs > 0.0).then(|| Goodput {
        bps: bytes * 8.0 / secs,
        intervals,
    })
}

/// Runs an iperf3 server on `server`:`port` in `pair.server` and a client
/// with `args` in `pair.client`; returns the client's JSON report with the
/// server's under `server_output_json`.
fn iperf3_run(
    pair: &Pair,
    port: u16,
    server: &str,
    args: &[&str],
    pin: bool,
) -> Result<serde_json::Value> {
    let port = port.to_string();
    let taskset = |cpu: &'static str| -> Vec<&'static str> {
        if pin {
            vec!["taskset", "-c", cpu]
        } else {
            vec![]
        }
    };
    let mut server_proc = Command::new("ip")
        .args(["netns", "exec", &pair.server])
        .args(taskset("1"))
        .args(["iperf3", "-s", "-1", "-J", "-p", &port, "-B", server])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The server may take a while to listen (seconds under emulation): retry
    // while the client cannot connect.
    let mut last = String::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let out = Command::new("timeout")
            .args(["120", "ip", "netns", "exec", &pair.client])
            .args(taskset("0"))
            .args([
                "iperf3",
                "-c",
                server,
                "-p",
                &port,
                "-J",
                "--get-server-output",
            ])
            .args(args)
            .output()?;
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(j) if j.get("error").is_none() => {
                let _ = server_proc.kill();
                let _ = server_proc.wait();
                return Ok(j);
            }
            Ok(j) => last = j["error"].to_string(),
            Err(_) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    let _ = server_proc.kill();
    let _ = server_proc.wait();
    bail!("iperf3 failed: {last}")
}

/// Traffic tests share two CPUs: a test file's tests run one at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a policy file for a test, named after the test process; it is
/// removed when the returned guard is dropped.
pub fn write_policy(name: &str, text: &str) -> TempFile {
    let p = std::env::temp_dir().join(format!("tc-test-{}-{name}.yaml", std::process::id()));
    std::fs::write(&p, text).expect("writing a policy file");
    TempFile(p)
}

/// A file a test wrote (a policy, a wrk script), removed when dropped,
/// whether the test passed or failed (the benchmark's policies are 2.9 MB
/// each). It reads as its path.
#[derive(Debug)]
pub struct TempFile(
    /// Where it was written: what the test hands the agent, the CLI or wrk.
    pub(crate) PathBuf,
);

impl std::ops::Deref for TempFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // A file already gone leaves nothing to clean up.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sends raw Ethernet frames out of `iface` (AF_PACKET) in the calling
/// thread's namespace, at most `count` of them, paced at `per_sec`, for at
/// most `secs`. The destination MAC of each frame is set to `dst_mac`.
/// Returns frames sent.
pub fn send_raw(
    iface: &str,
    dst_mac: [u8; 6],
    frame: &[u8],
    count: u64,
    per_sec: f64,
    secs: f64,
) -> Result<u64> {
    let mut frame = frame.to_vec();
    frame[..6].copy_from_slice(&dst_mac);
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain syscalls on values we own; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {iface}");
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < count && start.elapsed().as_secs_f64() < secs {
            let due = start + Duration::from_secs_f64(sent as f64 / per_sec);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let r = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            if r > 0 {
                sent += 1;
            }
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// The MAC address of `dev` in namespace `netns`.
pub fn mac_of(netns: &str, dev: &str) -> Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).ok();
    let text = match text {
        Some(t) => t,
        None => {
            let out = sh(&[
                "ip",
                "netns",
                "exec",
                netns,
                "cat",
                &format!("/sys/class/net/{dev}/address"),
            ])?;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|x| u8::from_str_radix(x, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("no MAC address for {dev}: {text}"))
}

/// What `ping -q` reported: (avg ms, max ms, loss %). Parses both iputils'
/// `rtt min/avg/max/mdev = …` and busybox's `round-trip min/avg/max = …`.
pub fn ping_summary(text: &str) -> Result<(f64, f64, f64)> {
    let rtt: Vec<f64> = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .map(|v| {
            v.trim()
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let loss = text
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|x| x.parse().ok());
    match (rtt.get(1), rtt.get(2), loss) {
        (Some(avg), Some(max), Some(loss)) => Ok((*avg, *max, loss)),
        _ => bail!("no ping summary in: {text}"),
    }
}
