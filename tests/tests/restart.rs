//! No enforcement gap, ever: a flood stays held to its limit while the agent
//! is killed, stopped and restarted, and a restart that fails leaves the
//! hooks it found enforcing. Real traffic through network namespaces; the
//! agent runs in `server` on its veth.

use std::{collections::BTreeMap, sync::mpsc, time::Duration};

use anyhow::Result;
use tc_tests::netns::{
    in_netns, serial, sh, udp_receive_bins, udp_send_bins, write_policy, Agent, Pair,
};

const LIMIT_BPS: f64 = 20e6;
const PAYLOAD: usize = 1000;
/// Ethernet + IPv4 + UDP headers the limit counts on top of the payload.
const OVERHEAD: f64 = 14.0 + 20.0 + 8.0;

fn policy() -> std::path::PathBuf {
    write_policy(
        "restart-flood",
        "channels:\n  - name: capped\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9400]\n    limit: {bandwidth: 20Mbit, burst: 64KiB}\n",
    )
}

/// Payload bits per second the limit lets through.
fn expected_bps() -> f64 {
    LIMIT_BPS * PAYLOAD as f64 / (PAYLOAD as f64 + OVERHEAD)
}

/// Per-second receive rates as ratios of the limit, for every second in
/// which the flood really ran at more than twice the limit (the first
/// second, which spends the burst, and the last, partial one left out),
/// and the number of seconds left out because the sender stalled (under
/// emulation a busy vCPU can starve it).
fn ratios(sent: &BTreeMap<u64, u64>, received: &BTreeMap<u64, u64>) -> (Vec<f64>, usize) {
    let seconds: Vec<u64> = sent.keys().copied().collect();
    let inner = seconds
        .get(1..seconds.len().saturating_sub(1))
        .unwrap_or(&[]);
    let mut out = Vec::new();
    let mut stalled = 0;
    for s in inner {
        if sent[s] as f64 * 8.0 < 2.0 * expected_bps() {
            stalled += 1;
            continue;
        }
        out.push(received.get(s).copied().unwrap_or(0) as f64 * 8.0 / expected_bps());
    }
    (out, stalled)
}

/// A UDP flood at 4x the limit through the agent's veth, bounded in count
/// and time, and its receiver binning by send time.
struct Flood {
    /// The receiver: payload bytes per second of send time.
    rx: std::thread::JoinHandle<Result<Result<BTreeMap<u64, u64>>>>,
    /// The sender: payload bytes per second it sent.
    tx: std::thread::JoinHandle<Result<Result<BTreeMap<u64, u64>>>>,
}

impl Flood {
    /// Starts `secs` seconds of flood from the client to the server.
    fn start(pair: &Pair, secs: f64) -> Self {
        let rx = in_netns(&pair.server, move || {
            udp_receive_bins("198.18.0.2:9400", secs + 2.0)
        });
        std::thread::sleep(Duration::from_millis(200));
        let tx = in_netns(&pair.client, move || {
            udp_send_bins("198.18.0.2:9400", PAYLOAD, 4.0 * LIMIT_BPS, secs, 200_000)
        });
        Self { rx, tx }
    }

    /// Waits for the flood to end and asserts that at least `seconds`
    /// seconds were measured and every one carried 0.85 to 1.10 of the limit.
    fn held(self, what: &str, seconds: usize) -> Result<()> {
        let sent = self.tx.join().unwrap()??;
        let received = self.rx.join().unwrap()??;
        let (r, stalled) = ratios(&sent, &received);
        println!(
            "{what}: per-second receive rate / limit {:?} ({stalled} seconds left out: the sender stalled)",
            r.iter().map(|x| (x * 100.0).round() / 100.0).collect::<Vec<_>>()
        );
        assert!(
            r.len() >= seconds,
            "{what}: too few seconds measured: sent {sent:?}, received {received:?}"
        );
        for (i, x) in r.iter().enumerate() {
            assert!(
                (0.85..=1.10).contains(x),
                "{what}: second {}: {x:.3} of the limit arrived ({r:?})",
                i + 1
            );
        }
        Ok(())
    }
}

/// `status -o json` of a running agent.
fn status(agent: &Agent) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(
        &agent.cli(&["status", "-o", "json"])?.stdout,
    )?)
}

/// Asserts that a restarted agent took over every hook the last one left.
fn assert_taken_over(agent: &Agent, after: &str) -> Result<()> {
    let status = status(agent)?;
    let hooks = status["hooks"].as_array().cloned().unwrap_or_default();
    assert!(
        !hooks.is_empty() && hooks.iter().all(|h| h["replaced"] == true),
        "after {after}, the restarted agent must take over the hooks left: {status}"
    );
    Ok(())
}

#[test]
fn a_flood_stays_held_while_the_agent_is_killed_stopped_and_restarted() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = policy();
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let flood = Flood::start(&pair, 16.0);
    std::thread::sleep(Duration::from_secs(3));
    agent.kill();
    std::thread::sleep(Duration::from_secs(3));
    // Without --policy: the pinned live policy goes on.
    agent.respawn(None, &[])?;
    assert_taken_over(&agent, "SIGKILL")?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.stop(), "SIGTERM: the agent did not exit cleanly");
    std::thread::sleep(Duration::from_secs(3));
    agent.respawn(None, &[])?;
    assert_taken_over(&agent, "SIGTERM")?;
    flood.held("killed, stopped and restarted", 11)?;
    let t = agent.totals("capped")?;
    assert!(t["dropped_pkts"].as_u64().unwrap() > 0, "{t}");
    Ok(())
}

#[test]
fn a_failed_restart_leaves_the_other_interfaces_enforced() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    // A second interface on the server: a veth pair inside its namespace.
    let ns = pair.server.as_str();
    sh(&[
        "ip", "-n", ns, "link", "add", "tcdum0", "type", "veth", "peer", "name", "tcdum1",
    ])?;
    for dev in ["tcdum0", "tcdum1"] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
    }
    let policy = policy();
    let hooks = ["--iface", &pair.server_if, "--iface", "tcdum0"];
    let mut agent = Agent::start_hooks(&pair.server, &hooks, &policy)?;
    agent.kill();

    // Someone else's XDP program on the second interface.
    let (release, held) = mpsc::channel::<()>();
    let (ready_tx, ready) = mpsc::channel::<Result<()>>();
    let foreign = in_netns(&pair.server, move || {
        let mut ebpf = match aya::Ebpf::load(tc_agent::datapath::EBPF_OBJECT) {
            Ok(e) => e,
            Err(e) => return ready_tx.send(Err(e.into())),
        };
        let attached = (|| -> Result<()> {
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(tc_agent::datapath::XDP_PASS)
                .expect("xdp_pass")
                .try_into()?;
            prog.load()?;
            prog.attach("tcdum0", aya::programs::XdpMode::Skb)?;
            Ok(())
        })();
        let _ = ready_tx.send(attached);
        // Keep the program attached until the test is done.
        let _ = held.recv_timeout(Duration::from_secs(60));
        Ok(())
    });
    ready.recv()??;

    // The restart asks for XDP on the second interface and must fail there.
    let err = agent
        .respawn(None, &["--xdp", "tcdum0"])
        .expect_err("the restart must fail: XDP is taken on tcdum0");
    println!("failed restart, as expected: {err:#}");
    assert!(format!("{err:#}").contains("tcdum0"), "{err:#}");

    // No agent runs now; the hooks the killed agent left on the veth still
    // hold the flood to the limit.
    let flood = Flood::start(&pair, 6.0);
    flood.held("after the failed restart", 3)?;
    // Every hook the killed agent left is still there.
    for iface in [pair.server_if.as_str(), "tcdum0"] {
        if tc_agent::datapath::sys::has_tcx() {
            for kind in ["tc-ingress", "tc-egress"] {
                let pin = agent.pin_dir.join("links").join(format!("{iface}-{kind}"));
                assert!(pin.exists(), "{} is gone", pin.display());
            }
        } else {
            // Before TCX the hooks are cls_bpf filters, found by netlink.
            for (dir, prog) in [("ingress", "tc_ingress"), ("egress", "tc_egress")] {
                let out = sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &pair.server,
                    "tc",
                    "filter",
                    "show",
                    "dev",
                    iface,
                    dir,
                ])?;
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains(prog), "{iface} {dir}: {text}");
            }
        }
    }
    let _ = release.send(());
    let _ = foreign.join();
    Ok(())
}

#[test]
fn a_restart_tells_the_truth_about_what_the_kernel_enforces() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let two = write_policy(
        "truth",
        "channels:\n  - name: a\n    protocol: udp\n    limit: {bandwidth: 10Mbit}\n  - name: b\n",
    );
    let mut agent = Agent::start(&pair.server, &pair.server_if, &two)?;
    let s = status(&agent)?;
    let version = s["version"].as_u64().unwrap();
    assert!(version >= 1, "{s}");
    assert_eq!(s["state"]["state"], "consistent", "{s}");

    // A plain restart: same version, same named channels.
    agent.stop();
    agent.respawn(None, &[])?;
    let s = status(&agent)?;
    assert_eq!(s["version"].as_u64(), Some(version), "{s}");
    assert_eq!(s["state"]["state"], "consistent", "{s}");
    assert_eq!(agent.channels()?["channels"].as_array().unwrap().len(), 2);

    // The saved state is lost: the kernel still enforces two channels,
    // which the agent must neither name nor hide.
    agent.stop();
    std::fs::remove_file(agent.state_dir.join("state.json"))?;
    agent.respawn(None, &[])?;
    let s = status(&agent)?;
    assert_eq!(s["state"]["state"], "mismatch", "{s}");
    assert_eq!(s["unnamed_channels"], 2, "{s}");
    let c = agent.channels()?;
    assert_eq!(c["channels"].as_array().unwrap().len(), 0, "{c}");
    assert_eq!(c["unnamed_channels"], 2, "{c}");
    let text = String::from_utf8(agent.cli(&["status"])?.stdout)?;
    assert!(text.contains("WARNING"), "{text}");

    // An apply takes over, with a version that only grows.
    let out = String::from_utf8(agent.cli(&["apply", two.to_str().unwrap()])?.stdout)?;
    assert!(out.contains(&format!("version {}", version + 1)), "{out}");
    let s = status(&agent)?;
    assert_eq!(s["state"]["state"], "consistent", "{s}");
    assert_eq!(s["unnamed_channels"], 0, "{s}");

    // The maps are wiped (as by a layout upgrade) while the saved state
    // still names the policy: the agent applies it again into the new maps
    // before it takes over any hook, with the next version, and says so.
    let version = status(&agent)?["version"].as_u64().unwrap();
    agent.stop();
    tc_agent::datapath::Datapath::unpin_all(&agent.pin_dir);
    agent.respawn(None, &[])?;
    let s = status(&agent)?;
    assert_eq!(s["state"]["state"], "recovered", "{s}");
    assert!(
        s["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("held no policy"),
        "{s}"
    );
    assert_eq!(s["version"].as_u64(), Some(version + 1), "{s}");
    assert_eq!(agent.channels()?["channels"].as_array().unwrap().len(), 2);
    Ok(())
}

#[test]
fn nothing_is_unenforced_while_the_maps_are_replaced() -> Result<()> {
    // A layout upgrade (here: the maps removed under a stopped agent) with
    // a flood on: the restarted agent fills the new maps before it swaps
    // its programs in, so every second stays at the limit.
    let _g = serial();
    let pair = Pair::new()?;
    let policy = policy();
    let mut agent = Agent::start(&pair.server, &pair.server_if, &policy)?;
    let flood = Flood::start(&pair, 9.0);
    std::thread::sleep(Duration::from_secs(2));
    agent.stop();
    tc_agent::datapath::Datapath::unpin_all(&agent.pin_dir);
    std::thread::sleep(Duration::from_secs(2));
    agent.respawn(None, &[])?;
    flood.held("maps replaced under a flood", 6)?;
    assert_eq!(status(&agent)?["state"]["state"], "recovered");
    Ok(())
}
