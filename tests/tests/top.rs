//! `tc-agent top` in a real terminal: tmux runs the TUI against a real
//! agent while a UDP sender loads one of its two channels; the captured
//! pane must show both channel names and the busy channel's rate in the
//! magnitude sent, and `q` must end the program cleanly with the terminal
//! restored (primary screen, cursor shown).
//!
//! Topology as in traffic.rs: `client` (198.18.0.1) -- veth -- `server`
//! (198.18.0.2), the agent on the server's veth. tmux runs on a private
//! server (`-L`) with its own configuration, so it neither sees nor
//! disturbs anyone else's sessions; a guard kills it on every way out.
//! The load is bounded in count and time and stays on 198.18.0.0/15.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tc_tests::netns::{
    agent_bin, in_netns, in_vm, serial, udp_count_until, udp_send_until, write_policy, Agent, Pair,
    StopOnDrop,
};

/// Payload bits per second the sender offers the busy channel.
const SEND_BPS: f64 = 8e6;
/// Datagram payload, bytes.
const PAYLOAD: usize = 1000;
/// Ethernet + IPv4 + UDP header bytes the datapath counts on top.
const UDP_OVERHEAD: f64 = 14.0 + 20.0 + 8.0;

/// `secs` here; three times that under the VM's emulation.
fn slow(secs: f64) -> Duration {
    Duration::from_secs_f64(if in_vm() { secs * 3.0 } else { secs })
}

/// A private tmux server holding one session; dropping it kills the
/// server, its session and whatever still runs in it.
struct Tmux {
    /// The server's socket name (`tmux -L`), also the session's name:
    /// unique to this test process.
    name: String,
}

impl Tmux {
    /// Starts a detached `width` x `height` session running `command`,
    /// without any configuration file (`-f /dev/null`: nobody's
    /// ~/.tmux.conf changes what the test sees).
    fn start(command: &str, width: u16, height: u16) -> Result<Self> {
        let t = Self {
            name: format!("tctop{}", std::process::id()),
        };
        // -u: UTF-8 whatever the locale (the VM has none), for the borders.
        let out = Command::new("tmux")
            .args(["-u", "-L", &t.name, "-f", "/dev/null"])
            .args(["new-session", "-d", "-x", &width.to_string()])
            .args(["-y", &height.to_string(), "-s", &t.name, command])
            .output()
            .context("running tmux (scripts/install-deps.sh installs it)")?;
        if !out.status.success() {
            bail!("tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t)
    }

    /// Runs a tmux command against this server and session; its stdout.
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-u", "-L", &self.name])
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pane's visible text, wrapped lines joined.
    fn capture(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-J", "-t", &self.name])
    }

    /// A tmux format evaluated for the pane (`#{pane_dead}`, ...).
    fn format(&self, f: &str) -> Result<String> {
        Ok(self
            .run(&["display-message", "-p", "-t", &self.name, f])?
            .trim()
            .to_string())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.name, "kill-server"])
            .output();
    }
}

/// The cells of the pane's line for `channel`, borders left out.
fn row_cells<'t>(pane: &'t str, channel: &str) -> Option<Vec<&'t str>> {
    let line = pane.lines().find(|l| {
        l.split(|c: char| c.is_whitespace() || c == '│')
            .any(|w| w == channel)
    })?;
    Some(
        line.split(|c: char| c.is_whitespace() || c == '│')
            .filter(|w| !w.is_empty())
            .collect(),
    )
}

/// Parses a rate as `top` prints it (`8.3Mbit`, `950.0kbit`, `0.0bit`)
/// into bits per second.
fn parse_rate(cell: &str) -> Option<f64> {
    let split = cell.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = cell.split_at(split);
    let mult = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        _ => return None,
    };
    Some(num.parse::<f64>().ok()? * mult)
}

/// The PASS bit/s cell of `channel`: after CHANNEL, DIR and LIMIT (one
/// word in this policy).
fn pass_rate(pane: &str, channel: &str) -> Option<f64> {
    parse_rate(row_cells(pane, channel)?.get(3)?)
}

#[test]
fn top_in_tmux_shows_the_channels_and_the_busy_ones_rate_and_q_quits_cleanly() -> Result<()> {
    let _g = serial();
    let pair = Pair::new()?;
    let policy = write_policy(
        "top",
        "channels:\n  - name: busy-udp\n    to: [198.18.0.2/32]\n    protocol: udp\n    ports: [9000]\n    limit:\n      bandwidth: 100Mbit\n  - name: idle-tcp\n    protocol: tcp\n    ports: [7000]\n    limit:\n      bandwidth: 10Mbit\n",
    );
    let agent = Agent::start(&pair.server, &pair.server_if, &policy)?;

    // The load: 8 Mbit/s of payload to busy-udp, long enough to cover the
    // view's start and several refreshes, bounded in count and time; it
    // stops once the view has been read (or the test fails).
    let secs = slow(14.0).as_secs_f64();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_exit = StopOnDrop(stop.clone());
    let rx = {
        let stop = stop.clone();
        in_netns(&pair.server, move || {
            udp_count_until("198.18.0.2:9000", secs + 1.0, &stop)
        })
    };
    sleep(Duration::from_millis(200));
    let tx = {
        let stop = stop.clone();
        in_netns(&pair.client, move || {
            udp_send_until("198.18.0.2:9000", PAYLOAD, SEND_BPS, secs, 200_000, &stop)
        })
    };

    // After `top`, the shell prints its exit status and the terminal's
    // modes and a marker, then keeps the pane open so all can be read.
    let command = format!(
        "{} --socket {} top; echo top-exit=$?; stty -a; echo modes-end; exec sleep 600",
        agent_bin().display(),
        agent.socket.display()
    );
    let tmux = Tmux::start(&command, 200, 50)?;

    // The wire rate the agent should see: payload plus headers.
    let expected = SEND_BPS * (PAYLOAD as f64 + UDP_OVERHEAD) / PAYLOAD as f64;
    let deadline = Instant::now() + slow(10.0);
    let mut pane = String::new();
    let mut seen = None;
    while Instant::now() < deadline {
        sleep(Duration::from_millis(300));
        pane = tmux.capture()?;
        if let Some(r) = pass_rate(&pane, "busy-udp").filter(|r| *r > 0.0) {
            // A first window may still be filling: wait for a settled one.
            if (0.5..=1.5).contains(&(r / expected)) {
                seen = Some(r);
                break;
            }
            seen = Some(r);
        }
    }
    println!("the pane:\n{}", pane.trim_end());
    let rate = seen.with_context(|| format!("busy-udp never showed a rate:\n{pane}"))?;
    println!(
        "busy-udp shows {:.2} Mbit/s, {:.2} Mbit/s on the wire sent",
        rate / 1e6,
        expected / 1e6
    );
    assert!(
        (0.5..=1.5).contains(&(rate / expected)),
        "busy-udp shows {rate} bit/s, expected about {expected}:\n{pane}"
    );
    let idle = row_cells(&pane, "idle-tcp")
        .with_context(|| format!("no idle-tcp row in the pane:\n{pane}"))?;
    assert_eq!(idle.get(3), Some(&"0.0bit"), "{idle:?}");
    assert!(pane.contains("policy v1"), "{pane}");
    // The interactions pane: the map's table with the busy interaction.
    assert!(
        pane.contains("FROM -> TO")
            && pane
                .lines()
                .any(|l| l.contains("198.18.0.1 -> 198.18.0.2") && l.contains("udp/9000")),
        "no busy interaction in the pane's map:\n{pane}"
    );
    // The events pane (nothing on this quiet pair yet: its count line)
    // and the node counters.
    assert!(pane.contains(" events: "), "{pane}");
    assert!(pane.contains("seen "), "{pane}");

    tmux.run(&["send-keys", "-t", &tmux.name, "q"])?;
    let deadline = Instant::now() + slow(5.0);
    let mut after = String::new();
    while Instant::now() < deadline {
        after = tmux.capture()?;
        // The shell is done writing once the marker after `stty` is out.
        if after.contains("modes-end") {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    println!("after q:\n{}", after.trim_end());
    assert!(
        after.contains("top-exit=0"),
        "top did not exit with status 0 after q:\n{after}"
    );
    // Restored: the primary screen (the view gone, the shell's lines
    // shown), the cursor visible, and the tty out of raw mode.
    assert!(!after.contains("busy-udp"), "the view stayed:\n{after}");
    assert_eq!(tmux.format("#{alternate_on} #{cursor_flag}")?, "0 1");
    let modes: Vec<&str> = after
        .split(|c: char| c.is_whitespace() || c == ';')
        .collect();
    for mode in ["icanon", "echo", "isig"] {
        assert!(
            modes.contains(&mode) && !modes.contains(&format!("-{mode}").as_str()),
            "the terminal is left without {mode}:\n{after}"
        );
    }
    drop(tmux);

    stop.store(true, Ordering::Relaxed);
    let sent = tx.join().expect("sender thread")??;
    let got = rx.join().expect("receiver thread")??;
    println!("sent {sent} datagrams, {got} arrived");
    assert!(got > 0, "nothing arrived: the channel was not exercised");

    // `--once`: the same frame as plain text, for scripts.
    let once = String::from_utf8(agent.cli(&["top", "--once"])?.stdout)?;
    assert!(
        once.contains("busy-udp") && once.contains("idle-tcp"),
        "{once}"
    );
    Ok(())
}
