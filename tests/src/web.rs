//! A real web server and load generator for the connection-limit tests:
//! nginx (Debian's nginx-light) in the server's namespace and wrk in the
//! client's, each started and stopped by the test.

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{netns::TempFile, tcp::enter_netns};

/// How [`Nginx`] is configured.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// Worker processes.
    pub workers: u32,
    /// Ports to listen on, each on every address below.
    pub ports: Vec<u16>,
    /// IPv4 address to listen on.
    pub v4: Option<String>,
    /// IPv6 address to listen on (without brackets).
    pub v6: Option<String>,
    /// Requests a keepalive connection serves before nginx closes it
    /// (answering the last with `Connection: close`, which wrk takes as a
    /// clean close and reconnects).
    pub keepalive_requests: u64,
    /// Connections each worker may hold.
    pub worker_connections: u32,
}

impl Default for NginxConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            ports: vec![80],
            v4: Some("198.18.0.2".into()),
            v6: Some("2001:db8::2".into()),
            keepalive_requests: 1_000_000,
            worker_connections: 4096,
        }
    }
}

/// nginx in the foreground (`daemon off`) in a namespace, with its own
/// prefix, configuration, pid, lock and log files in a temporary directory,
/// answering every request with `200 ok`. Dropping it stops the master and
/// its workers (by their pids) and removes the directory.
pub struct Nginx {
    child: Option<Child>,
    /// Worker pids, read from the master once it served.
    workers: Vec<i32>,
    /// Prefix directory holding configuration, logs and temp paths.
    pub dir: PathBuf,
    /// The addresses it listens on.
    pub addrs: Vec<SocketAddr>,
}

impl Nginx {
    /// Renders the configuration for prefix `dir`.
    pub fn config_text(cfg: &NginxConfig, dir: &str) -> String {
        let mut listen = String::new();
        for port in &cfg.ports {
            if let Some(a) = &cfg.v4 {
                listen += &format!("        listen {a}:{port} backlog=4096;\n");
            }
            if let Some(a) = &cfg.v6 {
                listen += &format!("        listen [{a}]:{port} backlog=4096;\n");
            }
        }
        format!(
            "# Written by tc-tests (tests/src/web.rs).\n\
             worker_processes {workers};\n\
             user root root;\n\
             pid {dir}/nginx.pid;\n\
             lock_file {dir}/nginx.lock;\n\
             error_log {dir}/error.log warn;\n\
             worker_rlimit_nofile {nofile};\n\
             events {{\n    worker_connections {wc};\n}}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {dir}/body;\n\
             \x20   proxy_temp_path {dir}/proxy;\n\
             \x20   fastcgi_temp_path {dir}/fastcgi;\n\
             \x20   uwsgi_temp_path {dir}/uwsgi;\n\
             \x20   scgi_temp_path {dir}/scgi;\n\
             \x20   keepalive_timeout 75s;\n\
             \x20   keepalive_requests {kr};\n\
             \x20   server {{\n{listen}\
             \x20       location / {{\n\
             \x20           default_type text/plain;\n\
             \x20           return 200 \"ok\\n\";\n\
             \x20       }}\n\
             \x20   }}\n\
             }}\n",
            workers = cfg.workers,
            nofile = cfg.worker_connections * 2 + 64,
            wc = cfg.worker_connections,
            kr = cfg.keepalive_requests,
        )
    }

    /// Starts nginx in `netns` and waits until every listen address accepts
    /// (checked from inside `netns`, over loopback: no connection of the
    /// check crosses the agent's interface).
    pub fn start(netns: &str, cfg: &NginxConfig) -> Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tc-test-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let d = dir.to_str().context("temp dir is not UTF-8")?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, Self::config_text(cfg, d))?;
        let mut addrs = Vec::new();
        for port in &cfg.ports {
            if let Some(a) = &cfg.v4 {
                addrs.push(format!("{a}:{port}").parse()?);
            }
            if let Some(a) = &cfg.v6 {
                addrs.push(format!("[{a}]:{port}").parse()?);
            }
        }
        let out = File::create(dir.join("stderr.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "nginx", "-p", d, "-c"])
            .arg(&conf)
            .args(["-e", &format!("{d}/error.log"), "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting nginx (Debian package nginx-light)")?;
        let mut n = Nginx {
            child: Some(child),
            workers: vec![],
            dir,
            addrs,
        };
        n.wait_serving(netns)?;
        n.workers = n.read_workers(cfg.workers as usize);
        Ok(n)
    }

    fn wait_serving(&mut self, netns: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pending = self.addrs.clone();
        while Instant::now() < deadline {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("nginx exited ({st}): {}", self.logs());
            }
            let (ns, check) = (netns.to_string(), pending.clone());
            pending = std::thread::spawn(move || -> Result<Vec<SocketAddr>> {
                enter_netns(&ns)?;
                Ok(check
                    .into_iter()
                    .filter(|a| TcpStream::connect_timeout(a, Duration::from_millis(500)).is_err())
                    .collect())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("nginx check panicked"))??;
            if pending.is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("nginx does not answer on {pending:?}: {}", self.logs())
    }

    /// The master's children (its workers), waiting briefly for all of them.
    fn read_workers(&self, want: usize) -> Vec<i32> {
        let Some(pid) = self.pid() else { return vec![] };
        let mut found = vec![];
        for _ in 0..50 {
            found = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if found.len() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        found
    }

    /// The master's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Worker pids.
    pub fn workers(&self) -> &[i32] {
        &self.workers
    }

    /// nginx's error log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// Stops nginx: SIGTERM (fast shutdown), then SIGKILL to the master and
    /// its workers if it is still there after 10 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Workers outlive a killed master; end any still there (only if the
        // pid still names an nginx process).
        for &w in &self.workers {
            let comm = std::fs::read_to_string(format!("/proc/{w}/cmdline")).unwrap_or_default();
            if comm.starts_with("nginx") {
                // SAFETY: kill(2) on a worker pid of our nginx.
                unsafe { libc::kill(w, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How [`wrk`] runs.
#[derive(Debug, Clone)]
pub struct WrkConfig {
    /// Connections kept open (`-c`).
    pub connections: u32,
    /// Threads (`-t`).
    pub threads: u32,
    /// Duration (`-d`), seconds.
    pub secs: u32,
    /// Run under `taskset -c CPUS` ("0", "0,1").
    pub cpus: Option<String>,
    /// Request timeout (`--timeout`), seconds.
    pub timeout_s: u32,
    /// A Lua script (`-s`), e.g. one from [`wrk_script`], to pace each connection.
    pub script: Option<PathBuf>,
}

/// A wrk script whose connections each wait about `think_ms` (uniformly
/// 0.5 to 1.5 times it, so that connections started together drift apart)
/// after every response before the next request: a closed loop with think
/// time, so a connection's request rate is about 1000 / (`think_ms` +
/// response time) per second and wrk does not take every CPU it can; with
/// a think time long against the response time, demand barely depends on
/// how fast the server answers, as clients that arrive on their own
/// schedule. With `close`, each
/// request asks for `Connection: close`: nginx closes after answering and
/// wrk opens a new connection (a handshake per request, as clients that
/// do not keep connections alive). The script is removed when the
/// returned guard is dropped.
pub fn wrk_script(think_ms: u32, close: bool) -> Result<TempFile> {
    // A number of its own: the guard removes the file, so two tests of one
    // process with the same parameters must not share it.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "tc-test-{}-wrk-{n}-{think_ms}-{close}.lua",
        std::process::id()
    ));
    let header = if close {
        "wrk.headers[\"Connection\"] = \"close\"\n"
    } else {
        ""
    };
    std::fs::write(
        &p,
        format!(
            "-- Written by tc-tests (tests/src/web.rs).\n{header}function delay()\n  return math.random({lo}, {hi})\nend\n",
            lo = think_ms / 2,
            hi = think_ms + think_ms / 2
        ),
    )?;
    Ok(TempFile(p))
}

impl Default for WrkConfig {
    fn default() -> Self {
        Self {
            connections: 100,
            threads: 2,
            secs: 8,
            cpus: None,
            timeout_s: 2,
            script: None,
        }
    }
}

/// wrk's "Socket errors" line (all zero when wrk printed none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Requests not answered within the timeout. wrk also counts here,
    /// every 2 s, each connection whose connect has not completed.
    pub timeout: u64,
}

/// What wrk reported.
#[derive(Debug, Clone, Default)]
pub struct WrkReport {
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub latency_avg_us: f64,
    pub latency_max_us: f64,
    /// Latency distribution (`--latency`): (percent, microseconds).
    pub latency_percentiles_us: Vec<(f64, f64)>,
    pub errors: SocketErrors,
    /// Responses other than 2xx or 3xx.
    pub non_2xx: u64,
    /// wrk's whole output.
    pub text: String,
}

impl WrkReport {
    /// The latency at `percent` (50, 75, 90, 99), microseconds.
    pub fn latency_us(&self, percent: f64) -> Option<f64> {
        self.latency_percentiles_us
            .iter()
            .find(|(p, _)| (*p - percent).abs() < 1e-9)
            .map(|(_, v)| *v)
    }

    /// One line for a test's output.
    pub fn summary(&self) -> String {
        format!(
            "{} requests in {:.2}s ({:.0}/s), latency avg {:.0}us p99 {:.0}us, socket errors {:?}, non-2xx {}",
            self.requests,
            self.duration_s,
            self.requests_per_s,
            self.latency_avg_us,
            self.latency_us(99.0).unwrap_or(f64::NAN),
            self.errors,
            self.non_2xx
        )
    }
}

/// A wrk duration ("656.03us", "1.45ms", "2.00s", "1.00m", "1.00h") in microseconds.
fn duration_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(
        v * match unit {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            "m" => 60e6,
            "h" => 3600e6,
            _ => return None,
        },
    )
}

/// Parses wrk's output (with `--latency`).
pub fn parse_wrk(text: &str) -> Result<WrkReport> {
    let mut r = WrkReport {
        text: text.to_string(),
        ..Default::default()
    };
    let mut seen_requests = false;
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let (Some(p), Some(v)) = (words.first(), words.get(1)) {
                if let (Some(p), Some(v)) = (p.strip_suffix('%'), duration_us(v)) {
                    if let Ok(p) = p.parse() {
                        r.latency_percentiles_us.push((p, v));
                        continue;
                    }
                }
            }
            in_distribution = false;
        }
        if words.first() == Some(&"Latency") && words.len() >= 4 {
            r.latency_avg_us = duration_us(words[1]).unwrap_or(f64::NAN);
            r.latency_max_us = duration_us(words[3]).unwrap_or(f64::NAN);
        } else if words.get(1) == Some(&"requests") && words.get(2) == Some(&"in") {
            // "367159 requests in 3.02s, 52.52MB read"
            r.requests = words[0].parse().context("wrk request count")?;
            r.duration_s = words
                .get(3)
                .and_then(|d| duration_us(d.trim_end_matches(',')))
                .map_or(0.0, |us| us / 1e6);
            seen_requests = true;
        } else if let Some(rest) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 160"
            for part in rest.split(',') {
                let kv: Vec<&str> = part.split_whitespace().collect();
                if let [k, v] = kv[..] {
                    let v: u64 = v.parse().context("wrk socket error count")?;
                    match k {
                        "connect" => r.errors.connect = v,
                        "read" => r.errors.read = v,
                        "write" => r.errors.write = v,
                        "timeout" => r.errors.timeout = v,
                        _ => {}
                    }
                }
            }
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest.trim().parse().context("wrk non-2xx count")?;
        } else if let Some(rest) = t.strip_prefix("Requests/sec:") {
            r.requests_per_s = rest.trim().parse().context("wrk requests/sec")?;
        }
    }
    if !seen_requests {
        bail!("no request count in wrk's output:\n{text}");
    }
    Ok(r)
}

/// The wrk command line for `cfg`, bounded: killed after its duration
/// plus 60 s.
fn wrk_command(netns: &str, url: &str, cfg: &WrkConfig) -> Command {
    let limit = (cfg.secs + 60).to_string();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &limit, "ip", "netns", "exec", netns]);
    if let Some(cpus) = &cfg.cpus {
        cmd.args(["taskset", "-c", cpus]);
    }
    cmd.args([
        "wrk",
        "-c",
        &cfg.connections.to_string(),
        "-t",
        &cfg.threads.to_string(),
        "-d",
        &format!("{}s", cfg.secs),
        "--timeout",
        &format!("{}s", cfg.timeout_s),
        "--latency",
    ]);
    if let Some(script) = &cfg.script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(url);
    cmd
}

/// Runs wrk in `netns` against `url` (`"http://198.18.0.2:80/"`,
/// `"http://[2001:db8::2]:80/"`) and returns its report. Bounded: killed
/// after its duration plus 60 s.
pub fn wrk(netns: &str, url: &str, cfg: &WrkConfig) -> Result<WrkReport> {
    let out = wrk_command(netns, url, cfg)
        .output()
        .context("running wrk (Debian package wrk)")?;
    wrk_result(url, out)
}

fn wrk_result(url: &str, out: std::process::Output) -> Result<WrkReport> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

/// wrk running in the background, to be stopped when the test has seen
/// enough ([`WrkRun::stop`]); dropping it kills wrk.
pub struct WrkRun {
    child: Option<Child>,
    /// The URL, for messages.
    url: String,
}

impl WrkRun {
    /// Starts wrk as [`wrk`] does, without waiting for it.
    pub fn start(netns: &str, url: &str, cfg: &WrkConfig) -> Result<Self> {
        let child = wrk_command(netns, url, cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting wrk (Debian package wrk)")?;
        Ok(Self {
            child: Some(child),
            url: url.to_string(),
        })
    }

    /// Stops wrk with SIGINT (`timeout` passes it on; wrk then prints its
    /// report as at the end of its duration) and returns the report.
    pub fn stop(mut self) -> Result<WrkReport> {
        let child = self.child.take().context("wrk already stopped")?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        wrk_result(&self.url, child.wait_with_output()?)
    }
}

impl Drop for WrkRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL reaches `timeout` only: SIGINT first lets it pass the
            // signal on to wrk.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// [`wrk`] on its own thread.
pub fn wrk_background(netns: &str, url: &str, cfg: &WrkConfig) -> JoinHandle<Result<WrkReport>> {
    let (netns, url, cfg) = (netns.to_string(), url.to_string(), cfg.clone());
    std::thread::spawn(move || wrk(&netns, &url, &cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 3s test @ http://198.18.0.2:80/
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.09ms    1.48ms  12.99ms   86.29%
    Req/Sec    61.31k    10.89k   77.73k    85.00%
  Latency Distribution
     50%  486.00us
     75%    1.45ms
     90%    3.11ms
     99%    6.88ms
  367159 requests in 3.02s, 52.52MB read
  Socket errors: connect 0, read 3, write 1, timeout 160
  Non-2xx or 3xx responses: 7
Requests/sec: 121752.29
Transfer/sec:     17.42MB
";

    #[test]
    fn parses_wrk_output() {
        let r = parse_wrk(OUT).unwrap();
        assert_eq!(r.requests, 367159);
        assert!((r.duration_s - 3.02).abs() < 1e-9);
        assert!((r.requests_per_s - 121752.29).abs() < 1e-6);
        assert!((r.latency_avg_us - 1090.0).abs() < 1e-6);
        assert!((r.latency_max_us - 12990.0).abs() < 1e-6);
        assert_eq!(r.latency_us(50.0), Some(486.0));
        assert_eq!(r.latency_us(99.0), Some(6880.0));
        assert_eq!(
            r.errors,
            SocketErrors {
                connect: 0,
                read: 3,
                write: 1,
                timeout: 160
            }
        );
        assert_eq!(r.non_2xx, 7);
    }

    #[test]
    fn a_clean_run_has_no_socket_errors() {
        let clean: String = OUT
            .lines()
            .filter(|l| !l.contains("Socket errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse_wrk(&clean).unwrap();
        assert_eq!(r.errors, SocketErrors::default());
        assert_eq!(r.non_2xx, 0);
        assert!(parse_wrk("unable to connect to 198.18.0.2:81 Connection refused").is_err());
    }

    #[test]
    fn the_config_listens_everywhere_asked() {
        let cfg = NginxConfig {
            ports: vec![80, 8080],
            ..Default::default()
        };
        let t = Nginx::config_text(&cfg, "/tmp/x");
        for l in [
            "listen 198.18.0.2:80 backlog=4096;",
            "listen [2001:db8::2]:80 backlog=4096;",
            "listen 198.18.0.2:8080 backlog=4096;",
            "listen [2001:db8::2]:8080 backlog=4096;",
            "keepalive_requests 1000000;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(t.contains(l), "{l} missing from:\n{t}");
        }
    }
}
