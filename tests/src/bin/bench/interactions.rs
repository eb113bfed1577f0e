//! What interaction accounting costs: per packet with BPF_PROG_TEST_RUN
//! (the same object with its accounting programs in place and taken out,
//! in one run), and the agent's CPU and memory with 10,000 active
//! interactions against 10 (real frames from that many sources).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tc_agent::{
    datapath::{Datapath, TC_INGRESS, TC_PASS},
    policy::{compile::compile, Policy},
};
use tc_tests::{
    netns::{in_netns, mac_of, write_policy, Agent, Pair},
    packet::{self, UDP},
};

/// One UDP channel, accounting on.
fn node() -> Result<Datapath> {
    let policy = Policy::parse(
        "channels:\n  - name: ch\n    protocol: udp\n    ports: [1000]\n",
        "bench",
    )?;
    let compiled = compile(&policy)?;
    let mut dp = Datapath::load(None, tc_common::DEFAULT_MAX_CONNS)?;
    dp.apply(&compiled, &[None])?;
    Ok(dp)
}

/// The per-packet table: a known interaction (an entry in the table, the
/// flow cached), and a random-source flood's packet (the flow not cached,
/// a new client refused by the admission threshold and counted in its
/// server's untracked-clients entry), each without and with accounting.
pub fn per_packet() -> Result<Vec<serde_json::Value>> {
    let mut dp = node()?;
    println!(
        "\n{:<6} {:>6} {:>22} {:>22} {:>7} {:>24} {:>24} {:>7}",
        "IP",
        "floor",
        "cached, no accounting",
        "cached, accounting",
        "added",
        "flood, no accounting",
        "flood, accounting",
        "added"
    );
    let mut rows = Vec::new();
    for (ip, frame) in [
        (
            "IPv4",
            packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 1000, 22),
        ),
        (
            "IPv6",
            packet::ipv6("2001:db8:1::5", "2001:db8:2::10", UDP, 1000, 2),
        ),
    ] {
        let floor = super::ns_per_packet(&dp, TC_PASS, &frame)?;
        dp.set_flow_cache(true)?;
        dp.set_admission(0)?;
        dp.set_accounting(false)?;
        let cached_off = super::ns_per_packet(&dp, TC_INGRESS, &frame)?;
        dp.set_accounting(true)?;
        let cached_on = super::ns_per_packet(&dp, TC_INGRESS, &frame)?;
        // The flood: every packet classified afresh, and its client (not in
        // the table: its entry is removed first) refused admission.
        let keys: Vec<_> = dp.interactions()?.into_iter().map(|(k, _)| k).collect();
        dp.remove_interactions(&keys)?;
        dp.set_flow_cache(false)?;
        dp.set_admission(u32::MAX)?;
        dp.set_accounting(false)?;
        let flood_off = super::ns_per_packet(&dp, TC_INGRESS, &frame)?;
        dp.set_accounting(true)?;
        let flood_on = super::ns_per_packet(&dp, TC_INGRESS, &frame)?;
        let tracked = dp
            .interactions()?
            .iter()
            .filter(|(k, _)| k.client != [0; 16])
            .count();
        anyhow::ensure!(
            tracked == 0,
            "the flood's client got an entry despite the threshold"
        );
        dp.set_flow_cache(true)?;
        dp.set_admission(0)?;
        println!(
            "{ip:<6} {floor:>6.0} {cached_off:>22.0} {cached_on:>22.0} {:>+7.0} {flood_off:>24.0} {flood_on:>24.0} {:>+7.0}",
            cached_on - cached_off,
            flood_on - flood_off
        );
        rows.push(serde_json::json!({
            "ip": ip, "floor_ns": floor,
            "cached_no_accounting_ns": cached_off, "cached_accounting_ns": cached_on,
            "cached_added_ns": cached_on - cached_off,
            "flood_no_accounting_ns": flood_off, "flood_accounting_ns": flood_on,
            "flood_added_ns": flood_on - flood_off,
        }));
    }
    Ok(rows)
}

/// The agent's CPU (share of one core) and resident memory while `sources`
/// addresses each send a few packets a second through one channel, after
/// a warm-up: raw frames into the server's veth, cycling over the sources.
fn agent_load(sources: u32, secs: f64) -> Result<(f64, f64, u64)> {
    let pair = Pair::new()?;
    let policy = write_policy(
        &format!("bench-ix-{sources}"),
        "endpoints:\n  flood: [198.18.128.0/17]\n  srv: [198.18.0.2/32]\nchannels:\n  - name: ch\n    from: flood\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let pid = agent.pid().context("agent pid")?;
    let mac = mac_of(&pair.server, &pair.server_if)?;
    let frames: Vec<Vec<u8>> = (0..sources)
        .map(|i| {
            let src = format!("198.18.{}.{}", 128 + (i >> 8), i & 0xff);
            packet::ipv4(&src, "198.18.0.2", UDP, 9, 18)
        })
        .collect();
    let iface = pair.client_if.clone();
    // 20,000 frames a second: every source several times a second.
    let rate = 20_000.0;
    let warm = 6.0;
    let sender = in_netns(&pair.client, move || -> Result<u64> {
        send_cycle(&iface, mac, &frames, rate, warm + secs)
    });
    std::thread::sleep(Duration::from_secs_f64(warm));
    let (cpu0, t0) = (cpu_ticks(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (cpu1, t1) = (cpu_ticks(pid)?, Instant::now());
    let rss = rss_kib(pid)?;
    let map = agent.cli(&["map", "-o", "json"])?;
    let map: serde_json::Value = serde_json::from_slice(&map.stdout)?;
    let entries = map["table"]["entries"].as_u64().unwrap_or(0);
    let sent = sender.join().expect("sender")??;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (cpu1 - cpu0) as f64 / hz / (t1 - t0).as_secs_f64();
    println!(
        "{sources:>8} sources: agent CPU {:.1}% of a core, RSS {:.1} MiB, {entries} table entries, {sent} frames",
        100.0 * cpu,
        rss as f64 / 1024.0
    );
    Ok((cpu, rss as f64 / 1024.0, entries))
}

/// Sends `frames` round-robin out of `iface` (AF_PACKET, the calling
/// thread's namespace) to `mac` at `per_sec` for `secs`. Returns frames sent.
pub fn send_cycle(
    iface: &str,
    mac: [u8; 6],
    frames: &[Vec<u8>],
    per_sec: f64,
    secs: f64,
) -> Result<u64> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain syscalls on values we own; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        anyhow::ensure!(ifindex != 0, "no interface {iface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        anyhow::ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while start.elapsed().as_secs_f64() < secs {
            let mut f = frames[i % frames.len()].clone();
            f[..6].copy_from_slice(&mac);
            i += 1;
            let r = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            if r > 0 {
                sent += 1;
            }
            if i.is_multiple_of(100) {
                let due = start + Duration::from_secs_f64(i as f64 / per_sec);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
        }
        libc::close(fd);
        Ok(sent)
    }
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The agent table: CPU and RSS with 10 and with 10,000 active interactions.
pub fn agent_cost() -> Result<serde_json::Value> {
    println!("\nagent with active interactions (raw frames, 20,000/s, 20 s):");
    let (cpu_few, rss_few, n_few) = agent_load(10, 20.0)?;
    let (cpu_many, rss_many, n_many) = agent_load(10_000, 20.0)?;
    Ok(serde_json::json!({
        "few": {"sources": 10, "entries": n_few, "cpu_core_share": cpu_few, "rss_mib": rss_few},
        "many": {"sources": 10_000, "entries": n_many, "cpu_core_share": cpu_many, "rss_mib": rss_many},
        "cpu_ratio": if cpu_few > 0.0 { cpu_many / cpu_few } else { f64::NAN },
        "rss_added_mib": rss_many - rss_few,
    }))
}
