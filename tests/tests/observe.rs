//! "See it": `map`, `top-talkers` and `history` on real traffic through a
//! real agent. A node that forwards counts each packet once and names
//! both sides by the policy's endpoint sets; a TCP flow shows its
//! responses, new connections and handshake time; among 200 sources and
//! among 100,000 (with a table small enough to overflow, so admission
//! runs) the heavy ones are the top talkers with their true shares; the
//! history shows a rate step at the right second; bad input is refused.
//!
//! Traffic is bounded in count and time and stays on 198.18.0.0/15.
//! Under the VM's emulation rates are scaled down and waits stretched;
//! every assertion compares relative figures.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tc_tests::{
    netns::{
        agent_bin, in_netns, in_vm, mac_of, serial, sh, udp_count_until, write_policy, Agent, Pair,
        StopOnDrop,
    },
    packet,
    sources::source_addresses,
};

/// Ethernet + IPv4 + UDP header bytes on the wire per datagram.
const UDP_OVERHEAD: usize = 14 + 20 + 8;

/// `secs` of wall time, stretched under emulation.
fn slow(secs: f64) -> Duration {
    Duration::from_secs_f64(if in_vm() { secs * 3.0 } else { secs })
}

/// Rates are this fraction of the host's under emulation.
fn scale() -> f64 {
    if in_vm() {
        0.25
    } else {
        1.0
    }
}

/// Sends UDP datagrams of `payload` bytes from `bind` (an address of the
/// calling thread's namespace) to `dst` at `wire_bps` wire bits per second
/// for `secs`; returns datagrams sent.
fn udp_from(bind: &str, dst: &str, payload: usize, wire_bps: f64, secs: f64) -> Result<u64> {
    let sock = UdpSocket::bind(format!("{bind}:0"))?;
    let buf = vec![0x5au8; payload];
    let interval = ((payload + UDP_OVERHEAD) * 8) as f64 / wire_bps;
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let due = start + Duration::from_secs_f64(sent as f64 * interval);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if sock.send_to(&buf, dst).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// The `map` row of `from` -> `to` over `protocol` to `port`.
fn row(map: &Value, from: &str, to: &str, protocol: &str, port: u64) -> Option<Value> {
    map["interactions"]
        .as_array()?
        .iter()
        .find(|r| {
            r["from"] == from && r["to"] == to && r["protocol"] == protocol && r["port"] == port
        })
        .cloned()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("no number `{k}` in {v}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty(), "no values");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A node that forwards (the agent on both of its interfaces) between two
/// sources at known UDP rates, 198.18.1.1 (`a`) and 198.18.1.2 (`b`), and
/// the server (`srv`): `map` names each row by its endpoint sets and shows
/// its wire rate within 0.9..1.25 of what was sent, so each forwarded
/// packet counts once, not at both hooks. A TCP flow from `a` then shows
/// its responses, its new connections per second and a plausible
/// handshake time.
#[test]
fn a_forwarding_node_maps_each_interaction_once_by_endpoint_set() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let host = pair.routed_host()?;
    sh(&[
        "ip",
        "-n",
        &host.netns,
        "addr",
        "add",
        "198.18.1.2/24",
        "dev",
        &host.iface,
    ])?;
    let router_if = format!("{}r", pair.client_if.trim_end_matches('c'));
    let policy = write_policy(
        "observe-forward",
        "endpoints:\n  a: [198.18.1.1/32]\n  b: [198.18.1.2/32]\n  srv: [198.18.0.2/32]\n\
         channels:\n  - name: a-srv\n    from: a\n    to: srv\n  - name: b-srv\n    from: b\n    to: srv\n",
    );
    let agent = Agent::start_hooks(
        &pair.client,
        &["--iface", &pair.client_if, "--iface", &router_if],
        &policy,
    )?;

    // 8 and 2 Mbit/s of wire bits (2 and 0.5 in the VM), 1000-byte payloads.
    let payload = 1000usize;
    let secs = slow(6.0).as_secs_f64();
    let (rate_a, rate_b) = (8e6 * scale(), 2e6 * scale());
    // The receiver counts until the senders are done and what they sent
    // has arrived (`sent` is set when they are joined).
    let sent = Arc::new(AtomicBool::new(false));
    // Also set when a check fails: the receiver stops then too.
    let _stop_sent = StopOnDrop(sent.clone());
    let rx = {
        let sent = sent.clone();
        in_netns(&pair.server, move || {
            udp_count_until("198.18.0.2:9000", secs + 2.0, &sent)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let tx_a = in_netns(&host.netns, move || {
        udp_from("198.18.1.1", "198.18.0.2:9000", payload, rate_a, secs)
    });
    let tx_b = in_netns(&host.netns, move || {
        udp_from("198.18.1.2", "198.18.0.2:9000", payload, rate_b, secs)
    });
    std::thread::sleep(slow(2.0));
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let m = agent.json(&["map"])?;
        let ra = row(&m, "a", "srv", "udp", 9000).with_context(|| format!("no a->srv in {m}"))?;
        let rb = row(&m, "b", "srv", "udp", 9000).with_context(|| format!("no b->srv in {m}"))?;
        seen_a.push(f(&ra, "request_bps") / rate_a);
        seen_b.push(f(&rb, "request_bps") / rate_b);
        assert_eq!(f(&ra, "response_bps"), 0.0, "UDP one way: {ra}");
        // Nothing else to srv, and a and b talk to srv only.
        for r in m["interactions"].as_array().unwrap() {
            let from_ab = ["a", "b"].contains(&r["from"].as_str().unwrap());
            assert_eq!(from_ab, r["to"] == "srv", "unexpected row {r}");
        }
        std::thread::sleep(slow(0.4));
    }
    let sent_a = tx_a.join().unwrap()??;
    let sent_b = tx_b.join().unwrap()??;
    sent.store(true, Ordering::Relaxed);
    let received = rx.join().unwrap()??;
    eprintln!(
        "forwarding: map/sent wire rate a {seen_a:.3?}, b {seen_b:.3?}; sent {sent_a} + {sent_b}, received {received}"
    );
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let m = median(seen.clone());
        assert!(
            (0.9..1.25).contains(&m),
            "{name}->srv: map shows {m:.3} of the sent wire rate (readings {seen:.3?}); 2.0 would be a double count"
        );
    }
    assert!(received > (sent_a + sent_b) * 9 / 10, "the node forwards");

    // TCP: connections from a to srv:8080, each a 100-byte request and a
    // 20,000-byte answer, 20 a second (5 in the VM).
    let secs = slow(5.0).as_secs_f64();
    // Set once the client is done: the server stops then, not at its
    // deadline.
    let client_done = Arc::new(AtomicBool::new(false));
    // Also set when a check fails: the receiver stops then too.
    let _stop_client_done = StopOnDrop(client_done.clone());
    let server_done = client_done.clone();
    let server = in_netns(&pair.server, move || -> Result<u64> {
        let l = TcpListener::bind("198.18.0.2:8080")?;
        l.set_nonblocking(true)?;
        let end = Instant::now() + Duration::from_secs_f64(secs + 5.0);
        let mut served = 0;
        while Instant::now() < end && !server_done.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut req = [0u8; 100];
                    if s.read_exact(&mut req).is_ok() && s.write_all(&[0x42; 20_000]).is_ok() {
                        served += 1;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        Ok(served)
    });
    let per_s = 20.0 * scale();
    let client = in_netns(&host.netns, move || -> Result<(u64, f64)> {
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            let due = start + Duration::from_secs_f64(done as f64 / per_s);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let mut s = TcpStream::connect_timeout(
                &"198.18.0.2:8080".parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(&[0x41; 100])?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            if got.len() != 20_000 {
                bail!("short answer: {} bytes", got.len());
            }
            done += 1;
        }
        Ok((done, start.elapsed().as_secs_f64()))
    });
    std::thread::sleep(slow(2.5));
    let m = agent.json(&["map"])?;
    let client = client.join().unwrap();
    client_done.store(true, Ordering::Relaxed);
    let (done, took) = client??;
    let served = server.join().unwrap()??;
    let r = row(&m, "a", "srv", "tcp", 8080).with_context(|| format!("no a->srv tcp in {m}"))?;
    eprintln!("tcp: {done} connections in {took:.1}s ({served} served); map row {r}");
    let rate = done as f64 / took;
    let (req, resp) = (f(&r, "request_bps"), f(&r, "response_bps"));
    assert!(
        req > 0.0 && resp > 4.0 * req,
        "requests are small, responses 20 KB each: {r}"
    );
    // About 20 KB + headers per connection each way's share.
    let expect_resp = rate * 20_000.0 * 8.0;
    assert!(
        (0.6..1.6).contains(&(resp / expect_resp)),
        "response {resp} bit/s against {expect_resp} sent: {r}"
    );
    let new = f(&r, "new_connections_per_s");
    assert!(
        (0.5..1.5).contains(&(new / rate)),
        "{new} new connections/s shown, {rate:.1}/s made: {r}"
    );
    let rtt = r["handshake_rtt_us"]
        .as_f64()
        .with_context(|| format!("no handshake time: {r}"))?;
    assert!(
        rtt > 0.0 && rtt < 1e6,
        "SYN to SYN-ACK across a veth: {rtt} us"
    );
    assert_eq!(f(&r, "resets_per_s"), 0.0, "clean closes: {r}");
    Ok(())
}

/// The talkers of a `top-talkers -o json` answer: (source, share).
fn talkers(t: &Value) -> Vec<(String, f64)> {
    t["talkers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| (x["source"].as_str().unwrap().to_string(), f(x, "share")))
                .collect()
        })
        .unwrap_or_default()
}

/// 200 sources, three of them sending 40 times the others' rate: the
/// three are `top-talkers --to srv -n 3`, and their shares add up to
/// 3*40/(197+120) within 15 %. A broader set holding the server (`lab`)
/// filters the same traffic.
#[test]
fn among_200_sources_the_three_heavy_ones_are_the_top_talkers() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let addrs = source_addresses(&pair, 200)?;
    let policy = write_policy(
        "observe-200",
        "endpoints:\n  srv: [198.18.0.2/32]\n  lab: [198.18.0.0/16]\n\
         channels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    // Sorted as strings, as the test compares them.
    let heavy: Vec<String> = ["198.18.2.101", "198.18.2.17", "198.18.2.188"]
        .map(String::from)
        .to_vec();
    let secs = slow(7.0).as_secs_f64();
    let tx_done = Arc::new(AtomicBool::new(false));
    // Also set when a check fails: the receiver stops then too.
    let _stop_tx_done = StopOnDrop(tx_done.clone());
    let rx = {
        let tx_done = tx_done.clone();
        in_netns(&pair.server, move || {
            udp_count_until("198.18.0.2:9000", secs + 2.0, &tx_done)
        })
    };
    // Every tick, each heavy source sends 5 datagrams and an eighth of the
    // others (in turn) one: 40 to 1. 25 ms ticks: 200 and 5 datagrams/s
    // (half in the VM, 50 ms ticks).
    let tick = Duration::from_millis(if in_vm() { 50 } else { 25 });
    let heavy2 = heavy.clone();
    let tx = in_netns(&pair.client, move || -> Result<u64> {
        let socks: Vec<(bool, UdpSocket)> = addrs
            .iter()
            .map(|a| Ok((heavy2.contains(a), UdpSocket::bind(format!("{a}:0"))?)))
            .collect::<Result<_>>()?;
        let buf = [0x5au8; 200];
        let start = Instant::now();
        let mut sent = 0;
        let mut n = 0u32;
        while start.elapsed().as_secs_f64() < secs {
            let due = start + tick * n;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let mut light = 0usize;
            for (is_heavy, s) in &socks {
                let k = if *is_heavy {
                    5
                } else {
                    light += 1;
                    usize::from(light % 8 == n as usize % 8)
                };
                for _ in 0..k {
                    if s.send_to(&buf, "198.18.0.2:9000").is_ok() {
                        sent += 1;
                    }
                }
            }
            n += 1;
        }
        Ok(sent)
    });
    std::thread::sleep(slow(3.0));
    let expect = 3.0 * 40.0 / (197.0 + 120.0);
    let mut readings = Vec::new();
    for to in ["srv", "lab", "198.18.0.2"] {
        let t = agent.json(&["top-talkers", "--to", to, "-n", "3"])?;
        let top = talkers(&t);
        eprintln!("top-talkers --to {to}: {top:?}");
        let mut names: Vec<String> = top.iter().map(|(s, _)| s.clone()).collect();
        names.sort();
        assert_eq!(names, heavy, "--to {to}: the heavy three first: {t}");
        readings.push((to, top.iter().map(|(_, s)| s).sum::<f64>()));
        std::thread::sleep(slow(0.5));
    }
    let sent = tx.join().unwrap();
    tx_done.store(true, Ordering::Relaxed);
    let sent = sent??;
    let received = rx.join().unwrap()??;
    eprintln!("200 sources: heavy shares {readings:.3?} (expected {expect:.3}); sent {sent}, received {received}");
    for (to, sum) in readings {
        assert!(
            (sum / expect - 1.0).abs() < 0.15,
            "--to {to}: the heavy three hold {sum:.3}, expected {expect:.3}"
        );
    }
    Ok(())
}

/// Sources of the flood: 100,000 distinct addresses in 198.18.4.0 ..
/// 198.19.255.255 (a permutation of the 130,048 there).
fn random_source(i: u32) -> Ipv4Addr {
    const SPAN: u32 = (1 << 17) - (4 << 8);
    let base = u32::from(Ipv4Addr::new(198, 18, 4, 0));
    Ipv4Addr::from(base + (i.wrapping_mul(7919) % SPAN))
}

/// Sets the IPv4 source of a frame from [`packet::ipv4`] and its header checksum.
fn set_source(f: &mut [u8], src: Ipv4Addr) {
    f[26..30].copy_from_slice(&src.octets());
    f[24] = 0;
    f[25] = 0;
    let mut sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Sends raw frames out of `iface` (AF_PACKET, this thread's namespace):
/// blocks of ten from the next random sources and one from each heavy
/// source, the last of them only from `late_after` seconds on, at most
/// `max` frames, paced at `per_sec`, for at most `secs`. Returns (frames
/// sent, distinct random sources used).
fn flood(
    iface: &str,
    dst_mac: [u8; 6],
    heavy: &[Ipv4Addr],
    late_after: f64,
    per_sec: f64,
    secs: f64,
    max: u64,
) -> Result<(u64, u32)> {
    let mut frame = packet::ipv4("198.18.4.1", "198.18.0.2", packet::UDP, 9000, 58);
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
        let (mut sent, mut next) = (0u64, 0u32);
        while sent < max && start.elapsed().as_secs_f64() < secs {
            let due = start + Duration::from_secs_f64(sent as f64 / per_sec);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            let on = if start.elapsed().as_secs_f64() < late_after {
                heavy.len() - 1
            } else {
                heavy.len()
            };
            for k in 0..10 + on {
                let src = if k < 10 {
                    next = (next + 1) % 100_000;
                    random_source(next)
                } else {
                    heavy[k - 10]
                };
                set_source(&mut frame, src);
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
        }
        libc::close(fd);
        let used = if sent >= 100_000 * 14 / 10 {
            100_000
        } else {
            (sent * 10 / 14) as u32
        };
        Ok((sent, used))
    }
}

/// 100,000 random sources and three heavy ones (each about 1/13 of the
/// frames) into the server's veth, the agent there with a 4,096-entry
/// table, on tc ingress or XDP: the table overflows, so admission starts
/// (`table.admit_threshold_bytes` > 0) and the small sources count as
/// `other`; the three heavy sources are still the top addresses of
/// `top-talkers --to srv`, each with about its share. A fourth heavy
/// source that starts once the flood is on gets its own entry too (the
/// threshold stays within reach of a heavy source) and joins them.
fn flood_keeps_heavy_sources_on_top(xdp: bool) -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "observe-flood",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n    protocol: udp\n",
    );
    let mut hooks = vec!["--iface", pair.server_if.as_str()];
    if xdp {
        hooks.extend(["--xdp", pair.server_if.as_str()]);
    }
    hooks.extend(["--interaction-table-size", "4096"]);
    let agent = Agent::start_hooks(&pair.server, &hooks, &policy)?;
    let heavy = [
        Ipv4Addr::new(198, 18, 3, 1),
        Ipv4Addr::new(198, 18, 3, 2),
        Ipv4Addr::new(198, 18, 3, 3),
        Ipv4Addr::new(198, 18, 3, 4),
    ];
    let late = heavy[3].to_string();
    let mac = mac_of(&pair.server, &pair.server_if)?;
    let (per_sec, secs) = if in_vm() {
        (6_000.0, 30.0)
    } else {
        (40_000.0, 10.0)
    };
    let late_after = 0.4 * secs;
    let max = (per_sec * secs) as u64;
    let iface = pair.client_if.clone();
    let tx = in_netns(&pair.client, move || {
        flood(&iface, mac, &heavy, late_after, per_sec, secs, max)
    });
    let start = Instant::now();
    let mode = if xdp { "xdp" } else { "tc" };
    let (mut admit_seen, mut entries_max, mut folded) = (0u64, 0u64, 0u64);
    let (mut good, mut late_seen, mut readings, mut folded_readings) = (0, 0, 0, 0);
    let first: Vec<String> = heavy[..3].iter().map(|h| h.to_string()).collect();
    std::thread::sleep(slow(2.0));
    while !tx.is_finished() && start.elapsed() < Duration::from_secs_f64(secs) {
        let at = start.elapsed().as_secs_f64();
        let m = agent.json(&["map"])?;
        let t = &m["table"];
        let admit = t["admit_threshold_bytes"].as_u64().unwrap_or(0);
        admit_seen = admit_seen.max(admit);
        entries_max = entries_max.max(t["entries"].as_u64().unwrap_or(0));
        folded = folded.max(t["folded_pkts"].as_u64().unwrap_or(0));
        let top = agent.json(&["top-talkers", "--to", "srv", "-n", "5"])?;
        let list = talkers(&top);
        let addrs: Vec<&(String, f64)> = list.iter().filter(|(s, _)| s != "other").collect();
        readings += 1;
        eprintln!("flood ({mode}) at {at:.1}s: table {t}, top {list:?}");
        if admit > 0 {
            let mut names: Vec<String> = addrs
                .iter()
                .map(|(s, _)| s.clone())
                .filter(|s| *s != late)
                .take(3)
                .collect();
            names.sort();
            assert_eq!(
                names, first,
                "under admission the heavy three stay the top addresses: {top}"
            );
            // The late source's window has filled.
            let late_full = at > late_after + slow(2.0).as_secs_f64();
            let full = |s: &String| first.contains(s) || late_full && *s == late;
            for (s, share) in addrs.iter().filter(|(s, _)| full(s)) {
                assert!(
                    (0.05..0.1).contains(share),
                    "{s} holds {share:.3} of the traffic, sent 1/13 or 1/14"
                );
            }
            // Most random sources are not tracked one by one (some are:
            // admitted while the threshold was lower, or by sketch
            // collisions). The threshold adapts to the table's fill, so a
            // reading just after it halved may find more of them tracked:
            // most readings, not every one, must show the flood as `other`.
            let other = list.iter().find(|(s, _)| s == "other").map(|(_, x)| *x);
            if other.is_some_and(|x| x > 0.3) {
                folded_readings += 1;
            }
            good += 1;
            if late_full {
                assert!(
                    addrs.iter().take(4).any(|(s, _)| *s == late),
                    "{late}, heavy since {late_after:.1}s, is a top address at {at:.1}s: {top}"
                );
                late_seen += 1;
            }
        }
        std::thread::sleep(slow(0.5));
    }
    let (sent, used) = tx.join().unwrap()??;
    eprintln!(
        "flood ({mode}): {sent} frames from {used} random sources + 4 heavy in {:.1}s; table size 4096, entries up to {entries_max}, admit threshold up to {admit_seen} B/window, folded {folded} pkts; {good} of {readings} readings under admission ({folded_readings} with `other` over 0.3), {late_seen} with the late source",
        start.elapsed().as_secs_f64()
    );
    assert!(
        used >= 30_000,
        "the flood used {used} sources only (sent {sent})"
    );
    assert!(admit_seen > 0, "the table overflowed: admission must start");
    assert!(entries_max <= 4096, "bounded table: {entries_max} entries");
    assert!(folded > 0, "small sources folded into `other`");
    assert!(good >= 2, "{good} readings under admission");
    assert!(
        folded_readings * 3 >= good * 2,
        "the untracked sources count in the shares as `other` (over 0.3) in {folded_readings} of {good} readings under admission: at least two thirds"
    );
    assert!(late_seen >= 2, "{late_seen} readings with the late source");
    Ok(())
}

/// [`flood_keeps_heavy_sources_on_top`] on tc ingress.
#[test]
fn a_flood_of_100k_sources_keeps_the_heavy_ones_on_top_tc() -> Result<()> {
    flood_keeps_heavy_sources_on_top(false)
}

/// [`flood_keeps_heavy_sources_on_top`] on XDP.
#[test]
fn a_flood_of_100k_sources_keeps_the_heavy_ones_on_top_xdp() -> Result<()> {
    flood_keeps_heavy_sources_on_top(true)
}

/// The points of one metric in a `history -o json` answer: (t, value).
fn series(h: &Value, metric: &str) -> Vec<(f64, Option<f64>)> {
    h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (f(p, "t"), p[metric].as_f64()))
        .collect()
}

/// Checks that `metric` of `h` was `low` from `t0` to `t1`, four times as
/// much from `t1` to `t2` and off after, with the steps within 2 s.
fn check_step(h: &Value, metric: &str, sent_low: f64, t: [f64; 3]) {
    let s = series(h, metric);
    let level = |a: f64, b: f64| {
        median(
            s.iter()
                .filter(|(x, v)| *x >= a && *x <= b && v.is_some())
                .map(|(_, v)| v.unwrap())
                .collect(),
        )
    };
    let [t0, t1, t2] = t;
    let low = level(t0 + 2.0, t1 - 2.0);
    let high = level(t1 + 2.0, t2 - 2.0);
    let after: Vec<f64> = s
        .iter()
        .filter(|(x, _)| *x >= t2 + 2.0)
        .filter_map(|(_, v)| *v)
        .collect();
    eprintln!(
        "history {} {metric}: low {low:.0}, high {high:.0} (x{:.2}), sent low {sent_low:.0}; after: {after:?}",
        h["name"],
        high / low
    );
    assert!(
        (0.8..1.25).contains(&(low / sent_low)),
        "{metric}: {low} shown, {sent_low} sent"
    );
    assert!(
        (3.4..4.7).contains(&(high / low)),
        "{metric}: the rate went up four times: {low} -> {high}"
    );
    assert!(
        after.iter().all(|v| *v < 0.1 * low),
        "{metric}: off after {t2}: {after:?}"
    );
    let mid = (low + high) / 2.0;
    let up = s
        .iter()
        .find(|(x, v)| *x >= t0 + 2.0 && v.is_some_and(|v| v > mid))
        .map(|(x, _)| *x)
        .expect("a step up");
    let down = s
        .iter()
        .find(|(x, v)| *x > up && v.is_none_or(|v| v < low / 2.0))
        .map(|(x, _)| *x)
        .expect("a step down");
    assert!(
        (up - t1).abs() <= 2.0,
        "{metric}: up at {up}, switched at {t1:.1}: {s:?}"
    );
    assert!(
        (down - t2).abs() <= 2.0,
        "{metric}: down at {down}, stopped at {t2:.1}: {s:?}"
    );
}

/// UDP low for 10 s, four times that for 10 s, then off: `history CHANNEL`
/// and `history FROM->TO` show both steps within 2 s of when they
/// happened, at levels in a 4:1 ratio and the low one at the sent rate.
#[test]
fn history_shows_a_rate_step_at_the_right_second() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "observe-history",
        "endpoints:\n  cli: [198.18.0.1/32]\n  srv: [198.18.0.2/32]\n\
         channels:\n  - name: hist\n    from: cli\n    to: srv\n    protocol: udp\n    ports: [9100]\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let payload = 500usize;
    let low = 2e6 * scale();
    let tx_done = Arc::new(AtomicBool::new(false));
    // Also set when a check fails: the receiver stops then too.
    let _stop_tx_done = StopOnDrop(tx_done.clone());
    let rx = {
        let tx_done = tx_done.clone();
        in_netns(&pair.server, move || {
            udp_count_until("198.18.0.2:9100", 24.0, &tx_done)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let tx = in_netns(&pair.client, move || -> Result<[f64; 3]> {
        let t0 = tc_tests::sources::unix_now();
        udp_from("198.18.0.1", "198.18.0.2:9100", payload, low, 10.0)?;
        let t1 = tc_tests::sources::unix_now();
        udp_from("198.18.0.1", "198.18.0.2:9100", payload, 4.0 * low, 10.0)?;
        Ok([t0, t1, tc_tests::sources::unix_now()])
    });
    let t = tx.join().unwrap();
    tx_done.store(true, Ordering::Relaxed);
    let t = t??;
    let _ = rx.join().unwrap()??;
    std::thread::sleep(slow(3.0));
    let h = agent.json(&["history", "hist", "--since", "60s"])?;
    assert_eq!(h["step_s"], 1);
    assert_eq!(
        h["metrics"],
        serde_json::json!(["passed_bps", "passed_pps", "dropped_bps", "dropped_pps"])
    );
    check_step(&h, "passed_bps", low, t);
    check_step(
        &h,
        "passed_pps",
        low / ((payload + UDP_OVERHEAD) * 8) as f64,
        t,
    );
    let h = agent.json(&["history", "cli->srv", "--since", "60s"])?;
    for m in [
        "request_bps",
        "request_pps",
        "response_bps",
        "new_connections_per_s",
        "handshake_rtt_us",
    ] {
        assert!(
            h["metrics"].as_array().unwrap().iter().any(|x| x == m),
            "{m} in {}",
            h["metrics"]
        );
    }
    check_step(&h, "request_bps", low, t);
    eprintln!(
        "history store: {} bytes, {} bytes/point",
        h["store_bytes"], h["bytes_per_point"]
    );
    Ok(())
}

/// Runs the CLI against `agent`, returning (exit code, stdout, stderr)
/// without failing on a non-zero exit.
fn cli_status(agent: &Agent, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(agent_bin())
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `map`, `top-talkers` and `history` refuse bad input with a non-zero
/// exit code, nothing on stdout and a message naming the problem: an
/// unknown set, a bad CIDR, `-n 0` or past 10000, an unknown output
/// format or argument, an unknown history name, a bad `--since`.
#[test]
fn map_top_talkers_and_history_refuse_bad_input() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "observe-errors",
        "endpoints:\n  srv: [198.18.0.2/32]\nchannels:\n  - name: to-srv\n    to: srv\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    // Usage errors (clap) exit 2; requests the agent refuses exit 1.
    let cases: [(&[&str], i32, &[&str]); 10] = [
        (
            &["top-talkers", "--to", "nosuchset"],
            1,
            &["nosuchset", "endpoint set", "srv"],
        ),
        (
            &["top-talkers", "--from", "198.18.0.0/40"],
            1,
            &["198.18.0.0/40"],
        ),
        (&["top-talkers", "-n", "0"], 2, &["0"]),
        (&["top-talkers", "-n", "10001"], 2, &["10001"]),
        (&["top-talkers", "-n", "many"], 2, &["many"]),
        (&["top-talkers", "-o", "xml"], 2, &["xml"]),
        (&["map", "-o", "xml"], 2, &["xml"]),
        (&["map", "--to", "srv"], 2, &["--to"]),
        (&["history", "nosuch", "--since", "30s"], 1, &["nosuch"]),
        (
            &["history", "to-srv", "--since", "forever"],
            2,
            &["forever"],
        ),
    ];
    for (args, code, words) in cases {
        let (got, out, err) = cli_status(&agent, args)?;
        eprintln!("{args:?} -> {got}: {}", err.trim());
        assert_eq!(got, code, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
        for w in words {
            assert!(err.contains(w), "{args:?}: `{w}` not in {err}");
        }
    }
    // And good input works.
    let (code, out, err) = cli_status(&agent, &["top-talkers", "--to", "srv", "-n", "1"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("top talkers"), "{out}");
    Ok(())
}
