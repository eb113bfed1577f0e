//! Hostile clients on the control socket, each against a real agent in a
//! namespace: 64 MiB without a newline, 2,000 idle connections, running out
//! of file descriptors, non-root clients with and without
//! `--socket-group`, and YAML bombs sent as raw apply requests.
//!
//! Every test asserts the same three things: while the attack runs,
//! `tc-agent status` answers within 3 s; afterwards the agent is alive with
//! a peak RSS under 300 MB; and the live policy (generation and channels)
//! is unchanged. Every loop is bounded in count and time.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use tc_tests::netns::{agent_bin, serial, write_policy, Agent, Pair};

const POLICY: &str = "channels:
  - name: capped
    to: [198.18.0.2/32]
    protocol: udp
    limit: {packets: 100, packet_burst: 64}
  - name: rest
";

/// How long `status` may take while an attack runs.
const STATUS_WITHIN: Duration = Duration::from_secs(3);
/// Peak RSS the agent may reach.
const MAX_PEAK_RSS: u64 = 300 << 20;
/// `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;

/// What must not change: the live policy version, its generation and the
/// channel names.
#[derive(Debug, PartialEq)]
struct Live {
    /// The policy version (only an apply changes it).
    version: u64,
    /// The generation slot it lives in.
    generation: u64,
    /// The live channels, in order.
    channels: Vec<String>,
}

fn live(agent: &Agent) -> Result<Live> {
    let c = agent.channels()?;
    Ok(Live {
        version: c["version"].as_u64().context("no version")?,
        generation: c["generation"].as_u64().context("no generation")?,
        channels: c["channels"]
            .as_array()
            .context("no channels")?
            .iter()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect(),
    })
}

/// Runs the CLI as `uid`:`gid` (None: as root) with a deadline; kills it past that.
fn cli_as(
    agent: &Agent,
    ids: Option<(u32, u32)>,
    args: &[&str],
    within: Duration,
) -> Result<Output> {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--socket").arg(&agent.socket).args(args);
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("tc-agent {args:?} did not answer within {within:?}")
}

/// `tc-agent status`, which must succeed within [`STATUS_WITHIN`]; returns
/// how long it took.
fn status_latency(agent: &Agent) -> Result<Duration> {
    let t0 = Instant::now();
    let out = cli_as(agent, None, &["status"], STATUS_WITHIN)?;
    let took = t0.elapsed();
    ensure!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// Runs `attack` on its own thread while probing `status` every 200 ms
/// (at least `probes` times); returns the attack's result and the slowest
/// status.
fn while_attacking<T: Send + 'static>(
    agent: &Agent,
    probes: usize,
    attack: impl FnOnce(Arc<AtomicBool>) -> Result<T> + Send + 'static,
) -> Result<(T, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        thread::spawn(move || attack(stop))
    };
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    let probing = (|| -> Result<()> {
        while n < probes || !handle.is_finished() {
            slowest = slowest.max(status_latency(agent)?);
            n += 1;
            if n >= 100 {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let result = handle.join().expect("the attack thread panicked");
    probing?;
    println!("status answered {n} times while attacked, slowest in {slowest:?}");
    Ok((result?, slowest))
}

/// The agent is running, its peak RSS is under [`MAX_PEAK_RSS`], and the
/// live policy is `before`. Returns the peak RSS in bytes.
fn unharmed(agent: &Agent, before: &Live) -> Result<u64> {
    let pid = agent.pid().context("the agent is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("the agent process is gone")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    let state = field("State:").unwrap_or_default();
    ensure!(
        !state.starts_with('Z') && !state.starts_with('X'),
        "the agent died: {state}"
    );
    let hwm_kb: u64 = field("VmHWM:")
        .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
        .context("no VmHWM")?;
    let peak = hwm_kb << 10;
    println!("agent peak RSS {} MiB", peak >> 20);
    ensure!(peak < MAX_PEAK_RSS, "peak RSS {} MiB", peak >> 20);
    status_latency(agent)?;
    let now = live(agent)?;
    ensure!(
        &now == before,
        "the live policy changed: {before:?} -> {now:?}"
    );
    Ok(peak)
}

/// An agent on a fresh pair, and its live policy.
fn setup(name: &str, extra: &[&str]) -> Result<(Pair, Agent, Live)> {
    let pair = Pair::new()?;
    let policy = write_policy(name, POLICY);
    let agent = Agent::start_with(&pair.server, &pair.server_if, &policy, extra)?;
    let before = live(&agent)?;
    ensure!(before.channels == ["capped", "rest"], "{before:?}");
    Ok((pair, agent, before))
}

/// Reads one response line, waiting at most 10 s.
fn response(stream: &UnixStream) -> Result<serde_json::Value> {
    response_within(stream, Duration::from_secs(10))
}

/// Reads one response line, waiting at most `wait`.
fn response_within(stream: &UnixStream, wait: Duration) -> Result<serde_json::Value> {
    stream.set_read_timeout(Some(wait))?;
    let mut line = String::new();
    BufReader::new(stream).take(1 << 20).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("not a JSON line: {line:?}"))
}

#[test]
fn sixty_four_mib_without_a_newline() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("huge", &[])?;
    let socket = agent.socket.clone();
    // Two clients at once, each sending 64 MiB of `x` again and again for
    // 5 s (at most 20 times): every one is cut off at the request cap.
    let ((sent, errors), slowest) = while_attacking(&agent, 5, move |stop| {
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let socket = socket.clone();
                let stop = stop.clone();
                thread::spawn(move || -> Result<(u64, Vec<String>)> {
                    let chunk = vec![b'x'; 1 << 20];
                    let start = Instant::now();
                    let (mut sent, mut errors) = (0u64, vec![]);
                    for _ in 0..20 {
                        if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(5)
                        {
                            break;
                        }
                        let mut s = UnixStream::connect(&socket)?;
                        s.set_write_timeout(Some(Duration::from_secs(5)))?;
                        for _ in 0..64 {
                            match s.write_all(&chunk) {
                                Ok(()) => sent += chunk.len() as u64,
                                Err(_) => break,
                            }
                        }
                        errors.push(
                            response(&s)?["error"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        );
                    }
                    Ok((sent, errors))
                })
            })
            .collect();
        let mut total = (0, vec![]);
        for c in clients {
            let (s, e) = c.join().expect("client thread")?;
            total.0 += s;
            total.1.extend(e);
        }
        Ok(total)
    })?;
    println!(
        "{} oversized requests, {} MiB written, slowest status {slowest:?}",
        errors.len(),
        sent >> 20
    );
    ensure!(!errors.is_empty());
    for e in &errors {
        ensure!(e == "request too large (max 7864320 bytes)", "{e}");
    }
    // Each was cut off soon after the cap, not read to its end.
    ensure!(sent < errors.len() as u64 * (10 << 20), "{sent}");
    unharmed(&agent, &before)?;
    Ok(())
}

/// Lets this process hold many sockets.
fn raise_fd_limit(want: u64) -> Result<()> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write the struct we pass.
    unsafe {
        ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0);
        l.rlim_max = l.rlim_max.max(want);
        l.rlim_cur = l.rlim_max;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Opens `n` connections that never send a byte and holds them for `hold`.
fn idle_connections(socket: std::path::PathBuf, n: usize, hold: Duration) -> Result<usize> {
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    while conns.len() < n && start.elapsed() < Duration::from_secs(20) {
        conns.push(UnixStream::connect(&socket)?);
    }
    let opened = conns.len();
    println!("{opened} idle connections open after {:?}", start.elapsed());
    thread::sleep(hold);
    Ok(opened)
}

#[test]
fn two_thousand_idle_connections() -> Result<()> {
    let _g = serial();
    raise_fd_limit(4096)?;
    let (_pair, agent, before) = setup("idle", &[])?;
    let socket = agent.socket.clone();
    let (opened, _) = while_attacking(&agent, 10, move |_| {
        idle_connections(socket, 2000, Duration::from_secs(5))
    })?;
    ensure!(opened == 2000, "{opened}");
    unharmed(&agent, &before)?;
    Ok(())
}

#[test]
fn out_of_file_descriptors() -> Result<()> {
    let _g = serial();
    raise_fd_limit(4096)?;
    let (_pair, agent, before) = setup("emfile", &[])?;
    // Leave the agent 16 descriptors beyond those it holds: idle clients
    // exhaust them long before the connection cap.
    let pid = agent.pid().context("no pid")?;
    let used = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let lim = libc::rlimit {
        rlim_cur: used + 16,
        rlim_max: used + 16,
    };
    // SAFETY: prlimit on our child's pid, reading `lim`.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    ensure!(r == 0, "prlimit: {}", std::io::Error::last_os_error());
    let socket = agent.socket.clone();
    let (opened, _) = while_attacking(&agent, 10, move |_| {
        idle_connections(socket, 500, Duration::from_secs(5))
    })?;
    ensure!(opened == 500, "{opened}");
    unharmed(&agent, &before)?;
    let log = std::fs::read_to_string(&agent.log)?;
    ensure!(
        log.contains("Too many open files"),
        "no EMFILE was seen: {log}"
    );
    // Throttled: not a line per failed accept.
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    println!("{lines} `accept failed` lines");
    ensure!(lines < 40, "{lines} accept warnings");
    Ok(())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_non_root_client_cannot_connect_without_socket_group() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("nonroot", &[])?;
    let policy = write_policy("nonroot-new", "channels: []\n");
    let policy = policy.to_str().unwrap();
    let ((), _) = while_attacking(&agent, 3, |_| Ok(()))?;
    for args in [&["status"][..], &["channels"], &["apply", policy]] {
        let out = cli_as(
            &agent,
            Some((NOBODY, NOBODY)),
            args,
            Duration::from_secs(10),
        )?;
        ensure!(!out.status.success(), "{args:?} as nobody succeeded");
        ensure!(
            stderr(&out).contains("cannot reach the agent"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The file permissions stopped those. Open them up (as a careless
    // operator might): the agent's own check of the peer's credentials
    // must refuse the client by itself.
    use std::os::unix::fs::PermissionsExt;
    let dir = agent.socket.parent().context("socket directory")?;
    let mut opened = vec![agent.socket.clone()];
    let mut d = Some(dir);
    while let Some(p) =
        d.filter(|p| p.starts_with(std::env::temp_dir()) && *p != std::env::temp_dir())
    {
        opened.push(p.to_path_buf());
        d = p.parent();
    }
    for p in &opened {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777))?;
    }
    for args in [&["status"][..], &["channels"], &["apply", policy]] {
        let out = cli_as(
            &agent,
            Some((NOBODY, NOBODY)),
            args,
            Duration::from_secs(10),
        )?;
        ensure!(!out.status.success(), "{args:?} as nobody succeeded");
        ensure!(
            stderr(&out).contains("permission denied: only root may use the agent socket"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    unharmed(&agent, &before)?;
    Ok(())
}

#[test]
fn the_socket_group_may_read_but_not_apply() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("group", &["--socket-group", "nogroup"])?;
    let policy = write_policy("group-new", "channels: []\n");
    let policy = policy.to_str().unwrap().to_string();
    let member = Some((NOBODY, NOBODY));
    // Members read, while root probes status alongside.
    let out = cli_as(&agent, member, &["status"], STATUS_WITHIN)?;
    ensure!(out.status.success(), "status as a member: {}", stderr(&out));
    ensure!(String::from_utf8_lossy(&out.stdout).contains("policy"));
    let out = cli_as(&agent, member, &["channels", "-o", "json"], STATUS_WITHIN)?;
    ensure!(
        out.status.success(),
        "channels as a member: {}",
        stderr(&out)
    );
    let c: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(c["generation"].as_u64() == Some(before.generation), "{c}");
    // ...and may not apply.
    let out = cli_as(&agent, member, &["apply", &policy], Duration::from_secs(10))?;
    ensure!(!out.status.success(), "apply as a member succeeded");
    ensure!(
        stderr(&out).contains(
            "permission denied: apply needs root (uid 0); members of --socket-group may only read"
        ),
        "{}",
        stderr(&out)
    );
    // A non-member cannot reach the socket (0660 root:nogroup).
    let out = cli_as(
        &agent,
        Some((NOBODY, 65533)),
        &["status"],
        Duration::from_secs(10),
    )?;
    ensure!(!out.status.success(), "status as a non-member succeeded");
    ensure!(
        stderr(&out).contains("cannot reach the agent"),
        "{}",
        stderr(&out)
    );
    // Many members' applies at once, while root's status keeps answering.
    let socket = agent.socket.clone();
    let (refused, _) = while_attacking(&agent, 5, move |stop| {
        let mut refused = 0;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(3)
            && refused < 50
        {
            let out = Command::new(agent_bin())
                .arg("--socket")
                .arg(&socket)
                .args(["apply", &policy])
                .uid(NOBODY)
                .gid(NOBODY)
                .output()?;
            ensure!(!out.status.success());
            refused += 1;
        }
        Ok(refused)
    })?;
    println!("{refused} applies by a member refused");
    unharmed(&agent, &before)?;
    Ok(())
}

/// Sends `text` as a raw apply request again and again for 4 s (at most
/// 50 times); returns the errors.
fn apply_bombs(agent: &Agent, text: String) -> Result<(Vec<String>, Duration)> {
    let socket = agent.socket.clone();
    while_attacking(agent, 5, move |stop| {
        let mut line = serde_json::to_vec(&serde_json::json!({
            "cmd": "apply",
            "file": "x.yaml",
            "text": text,
        }))?;
        line.push(b'\n');
        let start = Instant::now();
        let mut errors = vec![];
        while !stop.load(Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(4)
            && errors.len() < 50
        {
            let mut s = UnixStream::connect(&socket)?;
            s.write_all(&line)?;
            let r = response(&s)?;
            ensure!(r["ok"] == false, "the bomb was applied: {r}");
            errors.push(r["error"].as_str().unwrap_or_default().to_string());
        }
        Ok(errors)
    })
}

#[test]
fn yaml_nested_50000_deep() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("deep", &[])?;
    let flow = format!("channels: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    // Block style: fifty thousand nested sequences, `- - - ... x`.
    let block = format!("channels:\n  {}x\n", "- ".repeat(50_000));
    for (style, text) in [("flow", flow), ("block", block)] {
        let (errors, _) = apply_bombs(&agent, text)?;
        println!("{} deep {style}-style requests refused", errors.len());
        ensure!(!errors.is_empty());
        for e in &errors {
            ensure!(e.contains("nested deeper than 16 levels"), "{style}: {e}");
        }
    }
    unharmed(&agent, &before)?;
    Ok(())
}

#[test]
fn alias_bomb() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("bomb", &[])?;
    // 1,024 channels each naming a 65,536-prefix list by alias: 67 million
    // prefixes if expanded.
    let mut text = String::from("endpoints:\n  big: &big [");
    for n in 0..65_536u32 {
        text.push_str(&format!(
            "198.{}.{}.{}/32,",
            18 + (n >> 16),
            (n >> 8) & 0xff,
            n & 0xff
        ));
    }
    text.push_str("]\nchannels:\n");
    for i in 0..1024 {
        text.push_str(&format!("  - {{name: c{i}, from: *big}}\n"));
    }
    let (errors, _) = apply_bombs(&agent, text)?;
    println!("{} alias bombs refused", errors.len());
    ensure!(!errors.is_empty());
    for e in &errors {
        ensure!(
            e.contains("aliases (`*name`) would expand to more than"),
            "{e}"
        );
    }
    unharmed(&agent, &before)?;
    Ok(())
}

/// Sends an `apply-raw` line announcing `announced` bytes, then each of
/// `chunks` in its own write 100 ms apart (the first with the line), then
/// closes the sending side if `close`; returns the agent's error.
fn raw_apply(agent: &Agent, announced: usize, chunks: &[&[u8]], close: bool) -> Result<String> {
    let mut s = UnixStream::connect(&agent.socket)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut first = serde_json::to_vec(&serde_json::json!({
        "cmd": "apply-raw",
        "file": "x.yaml",
        "bytes": announced,
    }))?;
    first.push(b'\n');
    first.extend_from_slice(chunks.first().copied().unwrap_or_default());
    s.write_all(&first)?;
    for chunk in chunks.iter().skip(1) {
        thread::sleep(Duration::from_millis(100));
        // The agent may have refused and closed already.
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    if close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    // Past the agent's 10 s request deadline.
    let r = response_within(&s, Duration::from_secs(15))?;
    ensure!(r["ok"] == false, "applied: {r}");
    Ok(r["error"].as_str().unwrap_or_default().to_string())
}

#[test]
fn raw_apply_texts_other_than_announced() -> Result<()> {
    let _g = serial();
    let (_pair, agent, before) = setup("raw", &[])?;
    let valid = POLICY.replace("packets: 100", "packets: 200");
    let v = valid.as_bytes();
    let max = tc_agent::policy::MAX_FILE_BYTES;
    // A valid policy of 100 kB: the agent reads past its first 64 KiB
    // read before it sees what follows.
    let long = format!(
        "{valid}{}",
        "# padding padding padding padding padding pad\n".repeat(2000)
    );
    let (l, cut) = (long.as_bytes(), 80_000);
    let cases: [(&str, usize, Vec<&[u8]>, String); 6] = [
        (
            "more than a policy may take",
            max + 1,
            vec![v],
            format!(
                "the file is larger than {max} bytes (6 MiB), the most a policy file may hold ({} bytes announced)",
                max + 1
            ),
        ),
        (
            "cut short",
            v.len() + 10,
            vec![v],
            format!(
                "the policy text ended after {} of the {} bytes announced",
                v.len(),
                v.len() + 10
            ),
        ),
        (
            "longer than announced",
            v.len() - 1,
            vec![v],
            format!(
                "more than the {} bytes announced follow the request line",
                v.len() - 1
            ),
        ),
        (
            "longer than announced, past the first read",
            l.len(),
            vec![&l[..cut], &l[cut..], b"# one line more\n"],
            format!(
                "more than the {} bytes announced follow the request line",
                l.len()
            ),
        ),
        (
            "cut short, past the first read",
            l.len() + 1,
            vec![&l[..cut], &l[cut..]],
            format!(
                "the policy text ended after {} of the {} bytes announced",
                l.len(),
                l.len() + 1
            ),
        ),
        (
            "not UTF-8",
            v.len() + 1,
            vec![v, &[0xff]],
            "the file is not UTF-8".to_string(),
        ),
    ];
    for (what, announced, chunks, error) in cases {
        let e = raw_apply(&agent, announced, &chunks, true)?;
        ensure!(e.contains(&error), "{what}: {e}");
    }
    // Every byte announced, but the sending side left open: told so once
    // the request's 10 s are up.
    let e = raw_apply(&agent, v.len(), &[v], false)?;
    ensure!(
        e.contains("did not close its sending side (shutdown SHUT_WR)"),
        "left open: {e}"
    );
    unharmed(&agent, &before)?;
    Ok(())
}
