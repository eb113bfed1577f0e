//! An XDP flood on a veth pair: the generator (`tests/flood-ebpf`, built by
//! this crate's build.rs and embedded here) run with `BPF_PROG_TEST_RUN`
//! and `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18): each repetition is a real
//! frame that `flood_tx` rewrites (a random source, optionally a random
//! UDP destination port) and sends out of the client's veth with
//! `XDP_TX`, so the server's end receives it on its XDP hook (the agent's
//! `--xdp` program, or the bare `XDP_DROP` baseline). What arrived is read
//! from the receiving veth's `ethtool -S` counters.
//!
//! The receiving veth runs threaded NAPI (`/sys/class/net/<dev>/threaded`,
//! Linux 5.12) with its NAPI thread pinned to one CPU and the generator to
//! another, so the receiver's rate is one core's, not a share of the
//! generator's.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::{
    include_bytes_aligned,
    maps::Array,
    programs::{xdp::XdpLinkId, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};

use crate::netns::sh;

/// The generator's object, built for bpfel by build.rs.
static OBJECT: &[u8] = include_bytes_aligned!(env!("TC_FLOOD_OBJ"));

/// What `flood_tx` rewrites: the layout of `FloodConfig` in
/// `tests/flood-ebpf/src/main.rs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodConfig {
    /// The source range's first address, host order; bits outside
    /// `src_mask` are kept from it.
    pub src_base: u32,
    /// Source bits drawn at random per frame; 0 keeps the frame's source
    /// (a single-source flood).
    pub src_mask: u32,
    /// The UDP destination port range's first port.
    pub dport_base: u16,
    /// Destination-port bits drawn at random per frame; 0 keeps the port.
    pub dport_mask: u16,
    /// The share of frames sent, out of `u32::MAX` (all); the rest are
    /// dropped by the generator. Set by [`Generator::flood`] to pace it.
    pub send_share: u32,
}

// SAFETY: plain integers, no padding (4 + 4 + 2 + 2 + 4 bytes).
unsafe impl aya::Pod for FloodConfig {}

impl FloodConfig {
    /// Every frame from the frame's own source.
    pub const SINGLE: FloodConfig = FloodConfig {
        src_base: 0,
        src_mask: 0,
        dport_base: 0,
        dport_mask: 0,
        send_share: u32::MAX,
    };

    /// Sources drawn from 198.18.0.0/15 (131,072 of them), the ports kept.
    pub const RANDOM_SOURCE: FloodConfig = FloodConfig {
        src_base: u32::from_be_bytes([198, 18, 0, 0]),
        src_mask: (1 << 17) - 1,
        dport_base: 0,
        dport_mask: 0,
        send_share: u32::MAX,
    };

    /// Sources from 198.18.0.0/15 and UDP destination ports from
    /// 32768-65535: 2^32 flows, so a flood frame (almost) never finds its
    /// flow in the flow cache, and the node's cache hits are the
    /// legitimate traffic's.
    pub const RANDOM_FLOW: FloodConfig = FloodConfig {
        src_base: u32::from_be_bytes([198, 18, 0, 0]),
        src_mask: (1 << 17) - 1,
        dport_base: 32768,
        dport_mask: 0x7fff,
        send_share: u32::MAX,
    };
}

/// The `xdp_md` a live-frames run takes as its context: the frame's
/// bounds and the interface it "arrived" on, which `XDP_TX` sends out of.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct XdpMd {
    /// Offset of the frame's start: 0.
    data: u32,
    /// Offset of the frame's end: its length.
    data_end: u32,
    /// No metadata before the frame.
    data_meta: u32,
    /// The sending veth, in the calling thread's namespace.
    ingress_ifindex: u32,
    /// Queue 0: a veth has one per CPU it was created with; 0 always exists.
    rx_queue_index: u32,
    /// Must be 0 on input.
    egress_ifindex: u32,
}

/// Frames the kernel sends per batch in a live-frames run (its maximum,
/// `TEST_XDP_MAX_BATCH`).
pub const BATCH: u32 = 256;

/// A baseline receiver in the generator's object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// `bare_drop`: drops every frame without reading it.
    BareDrop,
    /// `read_drop`: reads the EtherType, the IPv4 header and the port
    /// bytes after it, as the agent's parser does for a UDP frame, then
    /// drops the frame: what the first read of a frame's headers costs,
    /// which `bare_drop` never pays.
    ReadDrop,
}

impl Baseline {
    /// Every baseline, in the order the benchmark's table lists them.
    pub const ALL: [Baseline; 2] = [Baseline::BareDrop, Baseline::ReadDrop];

    /// The XDP program's name.
    pub fn program(self) -> &'static str {
        match self {
            Baseline::BareDrop => "bare_drop",
            Baseline::ReadDrop => "read_drop",
        }
    }

    /// What the benchmark's table calls it.
    pub fn label(self) -> &'static str {
        match self {
            Baseline::BareDrop => "bare XDP_DROP",
            Baseline::ReadDrop => "XDP reading the headers",
        }
    }
}

/// The loaded generator and the baseline receivers.
pub struct Generator {
    /// The loaded object: `flood_tx` and the baseline receivers.
    ebpf: Ebpf,
    /// `FLOOD_CONFIG`, taken out of `ebpf` so it can be written while
    /// `flood_tx` runs.
    config: Array<aya::maps::MapData, FloodConfig>,
    /// What [`configure`](Generator::configure) set last.
    current: FloodConfig,
    /// The baseline receiver attached, and its link.
    attached: Option<(Baseline, XdpLinkId)>,
    /// The namespace where `flood_tx` is attached to an idle veth, see
    /// [`park`](Generator::park).
    parked: Option<String>,
}

/// One flood run's outcome.
#[derive(Clone, Copy, Debug)]
pub struct FloodRun {
    /// Frames the generator sent (repetitions run, times the share sent).
    pub generated: u64,
    /// Wall time from the first frame to the last, s.
    pub secs: f64,
    /// Frames the receiving veth's XDP program saw (`rx_queue_0_xdp_packets`).
    pub received: u64,
    /// Of those, dropped by its program (`rx_queue_0_xdp_drops`).
    pub dropped: u64,
    /// CPU time the receiver's NAPI thread ran meanwhile, s
    /// (`/proc/<pid>/schedstat`).
    pub rx_busy_secs: f64,
}

/// Run time and runs of the loaded BPF program `id`: counted only while a
/// [`RunStats`] is held.
pub fn prog_runs(id: u32) -> Result<(Duration, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == id {
            return Ok((info.run_time(), info.run_count()));
        }
    }
    bail!("no loaded BPF program has id {id}")
}

/// The id of the XDP program attached to `iface` in `netns` (as `ip link`
/// reports it): the receiver's program itself, not another of its name.
pub fn xdp_prog_id(netns: &str, iface: &str) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "-d", "link", "show", "dev", iface])
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip link show {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let xdp = &v[0]["xdp"];
    // One program: `xdp.prog`; programs in several modes: `xdp.attached[]`
    // (which some kernels report for a single one, too).
    let prog = match xdp["attached"].as_array() {
        Some(one) if one.len() == 1 => &one[0]["prog"],
        Some(many) => bail!(
            "{iface} has {} XDP programs attached (several modes); the receiver's is not known",
            many.len()
        ),
        None => &xdp["prog"],
    };
    prog["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no XDP program attached to {iface}"))
}

/// While held, the kernel counts each BPF program's runs and run time
/// (`BPF_ENABLE_STATS`, Linux 5.8), which [`prog_runs`] reads: it costs
/// two clock reads per run, for every program alike.
pub struct RunStats(#[expect(dead_code, reason = "held for its Drop")] std::os::fd::OwnedFd);

impl RunStats {
    pub fn enable() -> Result<Self> {
        Ok(Self(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF run-time statistics")?,
        ))
    }
}

impl FloodRun {
    /// Frames per second that reached the receiver's XDP program.
    pub fn received_pps(&self) -> f64 {
        self.received as f64 / self.secs
    }

    /// Frames the receiver handled per second of its NAPI thread's CPU
    /// time: one core's capacity, whatever else ran on that core or how
    /// often the thread slept.
    pub fn per_core_pps(&self) -> f64 {
        self.received as f64 / self.rx_busy_secs
    }

    /// Frames per second the generator produced.
    pub fn generated_pps(&self) -> f64 {
        self.generated as f64 / self.secs
    }
}

/// How fast and how long to flood.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Stop after this many frames sent.
    pub max_frames: u64,
    /// Stop after this long.
    pub secs: f64,
    /// Frames per second to aim at; `None`: as fast as the generator goes.
    pub per_sec: Option<f64>,
    /// The CPU the generator runs on.
    pub cpu: usize,
    /// Whether the generator runs as a real-time thread (`SCHED_FIFO`), so
    /// the other processes of a busy machine do not set its rate.
    pub realtime: bool,
}

impl Generator {
    /// Loads `flood_tx` and the baseline receivers.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the flood generator")?;
        let baselines = Baseline::ALL.map(Baseline::program);
        for name in ["flood_tx"].into_iter().chain(baselines) {
            xdp_program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifying {name}"))?;
        }
        let config = ebpf
            .take_map("FLOOD_CONFIG")
            .context("no FLOOD_CONFIG map")?
            .try_into()?;
        let mut g = Self {
            ebpf,
            config,
            current: FloodConfig::SINGLE,
            attached: None,
            parked: None,
        };
        g.configure(FloodConfig::SINGLE)?;
        Ok(g)
    }

    /// Sets what `flood_tx` rewrites.
    pub fn configure(&mut self, cfg: FloodConfig) -> Result<()> {
        self.config.set(0, cfg, 0)?;
        self.current = cfg;
        Ok(())
    }

    /// Attaches the baseline receiver `which` to `iface` in `netns`, in
    /// place of the one attached before, if any.
    pub fn attach_baseline(&mut self, which: Baseline, netns: &str, iface: &str) -> Result<()> {
        self.detach_baseline()?;
        let name = which.program();
        let p = xdp_program(&mut self.ebpf, name)?;
        let id = in_ns(netns, || {
            p.attach(iface, XdpMode::Default)
                .with_context(|| format!("attaching {name} to {iface}"))
        })?;
        self.attached = Some((which, id));
        Ok(())
    }

    /// Detaches the baseline receiver, if one is attached.
    pub fn detach_baseline(&mut self) -> Result<()> {
        let Some((which, id)) = self.attached.take() else {
            return Ok(());
        };
        xdp_program(&mut self.ebpf, which.program())?.detach(id)?;
        Ok(())
    }

    /// Attaches `flood_tx` to a veth pair of its own in `netns`, down, so
    /// nothing ever arrives there: the kernel's XDP dispatcher then holds
    /// the program already, and a test run does not rewrite the
    /// dispatcher's code (`bpf_prog_change_xdp`) at its start and end.
    /// That rewrite waits for an RCU grace period, and under qemu's TCG a
    /// vCPU running the dispatcher (the receiver's NAPI thread) while the
    /// other patches it can hit the patch's int3 (seen on 6.12: an oops in
    /// `bpf_dispatcher_xdp_func`).
    fn park(&mut self, netns: &str, tx_if: &str) -> Result<()> {
        if self.parked.as_deref() == Some(netns) {
            return Ok(());
        }
        let (a, b) = (format!("{tx_if}g"), format!("{tx_if}h"));
        sh(&[
            "ip", "-n", netns, "link", "add", &a, "type", "veth", "peer", "name", &b,
        ])?;
        let p = xdp_program(&mut self.ebpf, "flood_tx")?;
        // The link lives as long as the program: until the generator drops.
        in_ns(netns, || {
            p.attach(&a, XdpMode::Default)
                .with_context(|| format!("parking flood_tx on {a}"))
        })?;
        self.parked = Some(netns.into());
        Ok(())
    }

    /// Floods `frame` out of `tx_if` in `tx_ns` as `pace` says and counts
    /// what `rx_if` in `rx_ns` (its peer) received. Runs of the kernel's
    /// live-frames loop are chunked (about 100 ms each, sized from the rate
    /// so far), so both bounds hold whatever the machine's speed.
    pub fn flood(
        &mut self,
        tx: (&str, &str),
        rx: &Rx,
        frame: &[u8],
        pace: Pace,
    ) -> Result<FloodRun> {
        let (tx_ns, tx_if) = tx;
        self.park(tx_ns, tx_if)?;
        let p: &Xdp = self
            .ebpf
            .program("flood_tx")
            .context("no flood_tx")?
            .try_into()?;
        let (config, cfg) = (&mut self.config, self.current);
        let busy0 = rx.busy_ns();
        let before = xdp_stats(&rx.netns, &rx.dev)?;
        // On a thread of its own: the caller keeps its namespace and CPUs.
        let (generated, secs) = std::thread::scope(|s| {
            s.spawn(|| {
                in_ns(tx_ns, || {
                    crate::pin_to_cpu(pace.cpu)?;
                    if pace.realtime {
                        realtime(0)?;
                    }
                    let ifindex = ifindex(tx_if)?;
                    let r = run_live(p, config, cfg, frame, ifindex, pace);
                    // Whatever happened, the next run starts sending all.
                    config.set(0, cfg, 0)?;
                    r
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
        })?;
        let after = xdp_stats(&rx.netns, &rx.dev)?;
        let busy1 = rx.busy_ns();
        let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
        ensure!(
            after.contains_key("rx_queue_0_xdp_packets"),
            "{} has no rx_queue_0_xdp_packets counter: {after:?}",
            rx.dev
        );
        Ok(FloodRun {
            generated,
            secs,
            received: delta("rx_queue_0_xdp_packets"),
            dropped: delta("rx_queue_0_xdp_drops"),
            rx_busy_secs: busy1.saturating_sub(busy0) as f64 / 1e9,
        })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if let Err(e) = self.detach_baseline() {
            eprintln!("cleanup: detaching the baseline receiver: {e:#}");
        }
    }
}

/// The XDP program `name` of the generator's object.
fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// The live-frames loop in the calling thread: chunks of `flood_tx` runs
/// of about 100 ms each (sized from the rate so far) until `pace` is
/// spent. A paced flood sends a share of the frames, set anew after each
/// chunk from the generator's rate (one syscall per batch would not do:
/// setting up a live-frames run takes milliseconds). Returns (frames
/// sent, seconds).
fn run_live(
    p: &Xdp,
    config: &mut Array<aya::maps::MapData, FloodConfig>,
    cfg: FloodConfig,
    frame: &[u8],
    ifindex: u32,
    pace: Pace,
) -> Result<(u64, f64)> {
    let md = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    };
    // SAFETY: XdpMd is plain u32s with no padding.
    let ctx: &[u8] = unsafe {
        std::slice::from_raw_parts((&md as *const XdpMd).cast(), std::mem::size_of::<XdpMd>())
    };
    let start = Instant::now();
    let limit = Duration::from_secs_f64(pace.secs);
    let (mut runs, mut sent) = (0u64, 0.0f64);
    // The first chunk is small: the rate is unknown (a TCG guest is ~50x
    // slower); a paced one starts as if the generator made 10 Mpps.
    let mut chunk = 20_000u64;
    let mut share = pace.per_sec.map_or(1.0, |r| (r / 1e7).min(1.0));
    while (sent as u64) < pace.max_frames && start.elapsed() < limit {
        if pace.per_sec.is_some() {
            let send_share = (share * u32::MAX as f64) as u32;
            config.set(0, FloodConfig { send_share, ..cfg }, 0)?;
        }
        // At the share sent, at most the frames still allowed.
        let n = chunk.min(((pace.max_frames as f64 - sent) / share.max(1e-6)).ceil() as u64);
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(ctx);
        opts.repeat = n as u32;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        p.test_run(opts)
            .context("BPF_PROG_TEST_RUN with live frames (Linux 5.18+)")?;
        runs += n;
        sent += n as f64 * share;
        let rate = runs as f64 / start.elapsed().as_secs_f64().max(1e-6);
        chunk = ((rate * 0.1) as u64).clamp(BATCH as u64, 50_000_000);
        if let Some(per_sec) = pace.per_sec {
            // What is still to send over what is left of the time, at
            // the generator's rate.
            let left = (pace.secs - start.elapsed().as_secs_f64()).max(0.01);
            let want = (per_sec * pace.secs - sent).max(0.0) / left;
            share = (want / rate).clamp(0.0, 1.0);
        }
    }
    Ok((sent as u64, start.elapsed().as_secs_f64()))
}

/// Makes thread `tid` (0: the calling thread) a `SCHED_FIFO` thread at
/// the lowest real-time priority: it runs whenever it is ready, ahead of
/// every ordinary process (the kernel still leaves them 5% of each CPU,
/// `sched_rt_runtime_us`).
pub fn realtime(tid: i32) -> Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: plain syscall on a thread id and a parameter we own.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        bail!(
            "SCHED_FIFO for thread {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `ethtool -S dev` in `netns`, by name.
pub fn xdp_stats(netns: &str, dev: &str) -> Result<HashMap<String, u64>> {
    let out = sh(&["ip", "netns", "exec", netns, "ethtool", "-S", dev])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// The receiving end of a flood: a veth whose NAPI runs in threads of its own.
pub struct Rx {
    /// The receiver's namespace.
    pub netns: String,
    /// The receiving veth.
    pub dev: String,
    /// Its NAPI threads, whose CPU time is the receiver's.
    threads: Vec<i32>,
}

impl Rx {
    /// CPU time the NAPI threads have run, ns (`/proc/<pid>/schedstat`).
    fn busy_ns(&self) -> u64 {
        self.threads
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }
}

/// Turns on threaded NAPI (Linux 5.12) for `dev` in `netns` (it needs
/// NAPI, so an XDP program attached first) and pins its NAPI thread to
/// `cpu`, as a real-time thread with `realtime`. Call it again after the
/// XDP program changes: the veth makes its NAPI (and thread) afresh.
pub fn threaded_napi(netns: &str, dev: &str, cpu: usize, realtime: bool) -> Result<Rx> {
    sh(&[
        "ip",
        "netns",
        "exec",
        netns,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{dev}/threaded"),
    ])?;
    // The kthread is `napi/<dev>-<id>`, cut to 15 characters.
    let name: String = format!("napi/{dev}-").chars().take(15).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut threads = Vec::new();
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end().starts_with(&name) {
                // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it.
                let r = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
                };
                ensure!(
                    r == 0,
                    "pinning {comm:?} to CPU {cpu}: {}",
                    std::io::Error::last_os_error()
                );
                if realtime {
                    self::realtime(pid)?;
                }
                threads.push(pid);
            }
        }
        if !threads.is_empty() {
            return Ok(Rx {
                netns: netns.into(),
                dev: dev.into(),
                threads,
            });
        }
        if Instant::now() > deadline {
            bail!("no NAPI thread {name}* after turning threaded NAPI on for {dev}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Index of `dev` in the calling thread's namespace.
fn ifindex(dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev)?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(i != 0, "no interface {dev}");
    Ok(i)
}

/// Runs `f` with the calling thread in network namespace `netns`, and
/// returns it to its own namespace after.
pub fn in_ns<T>(netns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let own = File::open("/proc/thread-self/ns/net").context("this thread's namespace")?;
    let target = File::open(Path::new("/run/netns").join(netns))
        .with_context(|| format!("namespace {netns}"))?;
    // SAFETY: setns on namespace fds affects only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {netns}: {}", std::io::Error::last_os_error());
    }
    let r = f();
    // SAFETY: as above.
    if unsafe { libc::setns(own.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        // A thread left in another namespace would send the rest of the
        // test's traffic there: nothing sensible can follow.
        panic!(
            "setns back from {netns}: {}",
            std::io::Error::last_os_error()
        );
    }
    r
}

/// The flood channel's packet limit, per second.
pub const FLOOD_LIMIT_PPS: u32 = 50;

/// The flood's UDP destination port when it is not drawn at random.
pub const FLOOD_PORT: u16 = 2023;

/// A 64-byte UDP frame from the client (198.18.0.1) to the server
/// (198.18.0.2) port [`FLOOD_PORT`], addressed to `dst_mac`: what
/// `flood_tx` rewrites and sends.
pub fn frame(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = crate::packet::ipv4(
        "198.18.0.1",
        "198.18.0.2",
        crate::packet::UDP,
        FLOOD_PORT,
        22,
    );
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f
}

/// A policy of `channels` channels (at least one) whose last, `flood`,
/// takes the flood (UDP from 198.18.0.0/15 to the server, port
/// [`FLOOD_PORT`] or 32768-65535) with limits far below any flood
/// ([`FLOOD_LIMIT_PPS`] packets/s, 1 Mbit/s). The ones before it are the benchmark's
/// `policy_text` channels (UDP port 1000 + i, 64 IPv4 and 64 IPv6 /32 and
/// /128 sources each: 65,536 prefixes per side at 1,024 channels); with
/// `legit` (a bandwidth such as `50Mbit`), the one before `flood` is
/// instead `legit`: TCP from the client to the server's port 5201 at that
/// limit.
pub fn policy(channels: usize, legit: Option<&str>) -> String {
    let named = 1 + legit.is_some() as usize;
    assert!(
        channels >= named,
        "{channels} channels cannot hold flood and legit"
    );
    let fillers = channels - named;
    let mut t = String::from("channels:\n");
    for i in 0..fillers {
        t.push_str(&format!(
            "  - name: ch{i}\n    protocol: udp\n    ports: [{}]\n    from: [",
            1000 + i
        ));
        for j in 0..64 {
            let n = i * 64 + j;
            t.push_str(&format!(
                "\"198.{}.{}.{}/32\",\"2001:db8:{:x}::{:x}/128\",",
                18 + (n >> 16),
                (n >> 8) & 0xff,
                n & 0xff,
                n >> 16,
                n & 0xffff
            ));
        }
        t.push_str("]\n    limit: {bandwidth: 400Gbit, packets: 100000000}\n");
    }
    if let Some(rate) = legit {
        t.push_str(&format!(
            "  - name: legit\n    protocol: tcp\n    from: [198.18.0.1/32]\n    to: [198.18.0.2/32]\n    ports: [5201]\n    limit: {{bandwidth: {rate}}}\n"
        ));
    }
    t.push_str(&format!(
        "  - name: flood\n    protocol: udp\n    from: [198.18.0.0/15]\n    to: [198.18.0.2/32]\n    ports: [{FLOOD_PORT}, \"32768-65535\"]\n    limit: {{bandwidth: 1Mbit, packets: {FLOOD_LIMIT_PPS}}}\n"
    ));
    t
}

/// The node's flow-cache counters as the agent reports them; `None` where
/// the agent has no such field (before the flow-cache counters exist).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowCounters {
    /// Packets whose flow was in the cache.
    pub hits: Option<u64>,
    /// Packets whose flow was not.
    pub misses: Option<u64>,
    /// Flows inserted into the cache.
    pub inserts: Option<u64>,
}

impl FlowCounters {
    /// The counters in a `channels -o json` report, wherever they are in
    /// it: taken from the same report as a channel's totals, both are of
    /// the same moment (a busy agent answers with its last sample).
    pub fn of(report: &serde_json::Value) -> Self {
        Self {
            hits: find_u64(report, "flow_hits"),
            misses: find_u64(report, "flow_misses"),
            inserts: find_u64(report, "flow_inserts"),
        }
    }
}

/// The first number under key `name` anywhere in `v`.
fn find_u64(v: &serde_json::Value, name: &str) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => m
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .or_else(|| m.values().find_map(|x| find_u64(x, name))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_u64(x, name)),
        _ => None,
    }
}
