//! The daemon: owns the datapath, applies policies, samples counters and
//! serves the control socket until shutdown.

mod state;

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{error, info, warn};

use self::state::SavedState;
use crate::{
    control::{
        ApplyReport, ChannelRow, ChannelsReport, Features, HookRow, Rates, Request, Response,
        StatusReport, Totals,
    },
    datapath::{
        attach::{self, Hook, HookKind},
        qdisc, sys, Datapath,
    },
    policy::{compile::compile, Action, Mode, Policy},
};

/// Everything `tc-agent run` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Interfaces to attach tc ingress and egress to.
    pub ifaces: Vec<String>,
    /// Interfaces whose ingress hook is XDP instead of tc (early drop for floods).
    pub xdp: Vec<String>,
    /// Policy to apply at start; without it the pinned live policy is kept.
    pub policy: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Directory for the socket, the lock and the saved state.
    pub state_dir: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// Counter sampling period for rates and history.
    pub sample_every: Duration,
}

/// Samples kept: two minutes at one per second.
const HISTORY: usize = 120;
/// Grace period after a generation switch before the old generation's
/// counters are read: programs that loaded the old generation finish well
/// within it (they run for microseconds).
const SWITCH_GRACE: Duration = Duration::from_millis(20);

/// One counter sample of the live generation.
struct Sample {
    at: Instant,
    /// Totals per channel name.
    totals: HashMap<String, Totals>,
}

/// The agent's mutable state, behind one lock.
struct Agent {
    config: AgentConfig,
    dp: Datapath,
    hooks: Vec<Hook>,
    /// The live policy (its channels are the live generation's slots, in order).
    policy: Policy,
    /// Where it came from, for `status`.
    policy_file: Option<String>,
    generation: u32,
    /// Counters of earlier generations, by channel name, so totals survive re-applies.
    carried: HashMap<String, Totals>,
    /// Recent samples, newest last, for rates.
    history: VecDeque<Sample>,
    /// Interfaces where the agent installed fq for `delay`; restored on shutdown.
    fq_installed: Vec<String>,
    started: Instant,
}

impl Agent {
    fn state_file(&self) -> PathBuf {
        self.config.state_dir.join("state.json")
    }

    fn save(&self) {
        let s = SavedState {
            generation: self.generation,
            policy: self.policy.clone(),
            policy_file: self.policy_file.clone(),
            carried: self.carried.clone(),
            fq_installed: self.fq_installed.clone(),
        };
        if let Err(e) = s.save(&self.state_file()) {
            warn!(error = %e, "cannot save agent state; counters of earlier generations will reset on restart");
        }
    }

    /// Totals per channel of the live policy: carried + live slots.
    fn totals(&mut self) -> Result<Vec<Totals>> {
        let live = self
            .dp
            .channel_counters(self.generation, self.policy.channels.len())?;
        Ok(self
            .policy
            .channels
            .iter()
            .zip(live)
            .map(|(c, l)| {
                let mut t = self.carried.get(&c.name).copied().unwrap_or_default();
                t.add(&l);
                t
            })
            .collect())
    }

    fn apply(&mut self, file: &str, text: &str) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let policy = Policy::parse(text, file)?;
        let compiled = compile(&policy)?;
        self.prepare_fq(&policy)?;
        let old: HashMap<&str, (usize, &crate::policy::Channel)> = self
            .policy
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), (i, c)))
            .collect();
        let mut report = ApplyReport {
            generation: 0,
            channels: policy.channels.len(),
            added: vec![],
            removed: vec![],
            changed: vec![],
            unchanged: vec![],
            warnings: policy.warnings.iter().map(ToString::to_string).collect(),
            table_entries: compiled.entries(),
            took_ms: 0.0,
        };
        let mut carry = Vec::with_capacity(policy.channels.len());
        for c in &policy.channels {
            match old.get(c.name.as_str()) {
                None => {
                    report.added.push(c.name.clone());
                    carry.push(None);
                }
                Some((i, o)) => {
                    if *o == c {
                        report.unchanged.push(c.name.clone());
                    } else {
                        report.changed.push(c.name.clone());
                    }
                    // Same limits: keep the bucket, so a re-apply hands out no fresh burst.
                    carry.push((o.limit == c.limit).then(|| Datapath::slot(self.generation, *i)));
                }
            }
        }
        report.removed = self
            .policy
            .channels
            .iter()
            .filter(|c| !policy.channels.iter().any(|n| n.name == c.name))
            .map(|c| c.name.clone())
            .collect();

        let previous = self.generation;
        let generation = self.dp.apply(&compiled, &carry)?;
        report.took_ms = t0.elapsed().as_secs_f64() * 1e3;
        report.generation = generation;

        // Fold the old generation's counters into the carried totals.
        std::thread::sleep(SWITCH_GRACE);
        let old_counters = self
            .dp
            .channel_counters(previous, self.policy.channels.len())?;
        let mut carried = HashMap::new();
        for (c, counters) in self.policy.channels.iter().zip(old_counters) {
            if policy.channels.iter().any(|n| n.name == c.name) {
                let mut t = self.carried.get(&c.name).copied().unwrap_or_default();
                t.add(&counters);
                carried.insert(c.name.clone(), t);
            }
        }
        self.carried = carried;
        self.generation = generation;
        self.policy = policy;
        self.policy_file = Some(file.to_string());
        self.history.clear();
        self.save();
        info!(
            generation,
            channels = report.channels,
            added = report.added.len(),
            removed = report.removed.len(),
            changed = report.changed.len(),
            took_ms = report.took_ms,
            "policy applied"
        );
        Ok(report)
    }

    /// `delay` channels need fq on every egress interface. Installs it where
    /// missing, before any map changes; if one interface fails, the others
    /// are put back and the apply fails with nothing changed.
    fn prepare_fq(&mut self, policy: &Policy) -> Result<()> {
        let pacing = policy
            .channels
            .iter()
            .any(|c| c.action == Action::Delay && c.mode == Mode::Enforce);
        if !pacing {
            return Ok(());
        }
        let mut installed = Vec::new();
        for iface in &self.config.ifaces {
            if self.fq_installed.contains(iface) {
                continue;
            }
            match qdisc::ensure_fq(iface) {
                Ok(true) => installed.push(iface.clone()),
                Ok(false) => {}
                Err(e) => {
                    for i in &installed {
                        let _ = qdisc::restore(i);
                    }
                    return Err(e.context("policy not applied: the running policy is unchanged"));
                }
            }
        }
        for i in &installed {
            info!(iface = %i, "installed fq for delay channels");
        }
        self.fq_installed.extend(installed);
        Ok(())
    }

    fn sample(&mut self) -> Result<()> {
        let totals = self.totals()?;
        let totals = self
            .policy
            .channels
            .iter()
            .map(|c| c.name.clone())
            .zip(totals)
            .collect();
        self.history.push_back(Sample {
            at: Instant::now(),
            totals,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        Ok(())
    }

    fn channels(&mut self) -> Result<ChannelsReport> {
        let totals = self.totals()?;
        let g = self.dp.global_counters()?;
        let n = self.history.len();
        let window = if n >= 2 {
            Some((&self.history[n - 2], &self.history[n - 1]))
        } else {
            None
        };
        let rows = self
            .policy
            .channels
            .iter()
            .zip(totals)
            .map(|(c, t)| {
                let rates = window
                    .and_then(|(a, b)| {
                        let (ta, tb) = (a.totals.get(&c.name)?, b.totals.get(&c.name)?);
                        let dt = (b.at - a.at).as_secs_f64();
                        let r = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
                        let delayed = tb.delayed_pkts.saturating_sub(ta.delayed_pkts);
                        Some(Rates {
                            passed_bps: 8.0 * r(ta.passed_bytes, tb.passed_bytes),
                            passed_pps: r(ta.passed_pkts, tb.passed_pkts),
                            dropped_bps: 8.0 * r(ta.dropped_bytes, tb.dropped_bytes),
                            dropped_pps: r(ta.dropped_pkts, tb.dropped_pkts),
                            would_drop_bps: 8.0 * r(ta.would_drop_bytes, tb.would_drop_bytes),
                            marked_pps: r(ta.marked_pkts, tb.marked_pkts),
                            delay_ms: if delayed == 0 {
                                0.0
                            } else {
                                tb.delay_ns.saturating_sub(ta.delay_ns) as f64
                                    / delayed as f64
                                    / 1e6
                            },
                        })
                    })
                    .unwrap_or_default();
                ChannelRow {
                    name: c.name.clone(),
                    direction: c.direction,
                    protocol: c.protocol,
                    mode: c.mode,
                    action: c.action,
                    limit: c.limit,
                    totals: t,
                    rates,
                }
            })
            .collect();
        Ok(ChannelsReport {
            generation: self.generation,
            rate_window_s: window.map_or(0.0, |(a, b)| (b.at - a.at).as_secs_f64()),
            channels: rows,
            node: g,
        })
    }

    fn status(&self) -> StatusReport {
        StatusReport {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            kernel: sys::kernel_release(),
            features: Features {
                tcx: sys::has_tcx(),
                btf: sys::has_btf(),
                delay: qdisc::fq_available(),
            },
            fq_on: self.fq_installed.clone(),
            hooks: self
                .hooks
                .iter()
                .map(|h| HookRow {
                    iface: h.iface.clone(),
                    hook: h.kind,
                    mechanism: h.mechanism,
                    replaced: h.replaced,
                })
                .collect(),
            generation: self.generation,
            channels: self.policy.channels.len(),
            policy_file: self.policy_file.clone(),
            pin_dir: self.config.pin_dir.display().to_string(),
            socket: self.config.socket.display().to_string(),
        }
    }

    fn handle(&mut self, req: Request) -> Result<serde_json::Value> {
        Ok(match req {
            Request::Apply { file, text } => serde_json::to_value(self.apply(&file, &text)?)?,
            Request::Channels => serde_json::to_value(self.channels()?)?,
            Request::Status => serde_json::to_value(self.status())?,
        })
    }
}

/// Holds an exclusive lock on the state directory for the agent's lifetime.
struct LockFile {
    /// The flock is released when this closes, i.e. when the agent exits.
    _file: std::fs::File,
}

fn lock_state_dir(dir: &std::path::Path) -> Result<LockFile> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: f is an open file.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(dir.join("agent.pid")).unwrap_or_default();
        bail!(
            "another tc-agent (pid {}) already runs with state directory {}; stop it, or give this one its own --state-dir, --pin-dir and --socket",
            pid.trim(),
            dir.display()
        );
    }
    std::fs::write(dir.join("agent.pid"), std::process::id().to_string())?;
    Ok(LockFile { _file: f })
}

/// Runs the agent until `shutdown` completes, then detaches.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    sys::require_root()?;
    for i in config.ifaces.iter().chain(&config.xdp) {
        sys::ifindex(i)?;
    }
    let _lock = lock_state_dir(&config.state_dir)?;
    sys::ensure_bpffs(&config.pin_dir)?;
    // Validate the policy before touching the kernel: a bad file changes nothing.
    let initial = match &config.policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading policy {}", p.display()))?;
            Policy::parse(&text, &p.display().to_string())?;
            Some((p.display().to_string(), text))
        }
        None => None,
    };

    let mut dp = Datapath::load(Some(&config.pin_dir)).context("loading the eBPF datapath")?;
    let live = dp.config()?;
    let saved = SavedState::load(&config.state_dir.join("state.json"))
        .filter(|s| s.generation == live.generation);
    let mut agent = Agent {
        dp,
        hooks: Vec::new(),
        policy: saved.as_ref().map(|s| s.policy.clone()).unwrap_or(Policy {
            channels: vec![],
            warnings: vec![],
        }),
        policy_file: saved.as_ref().and_then(|s| s.policy_file.clone()),
        generation: live.generation,
        carried: saved
            .as_ref()
            .map(|s| s.carried.clone())
            .unwrap_or_default(),
        history: VecDeque::new(),
        fq_installed: saved
            .as_ref()
            .map(|s| s.fq_installed.clone())
            .unwrap_or_default(),
        started: Instant::now(),
        config: config.clone(),
    };
    if !agent.policy.channels.is_empty() {
        info!(
            generation = agent.generation,
            channels = agent.policy.channels.len(),
            "resumed the pinned live policy"
        );
    }
    if let Some((file, text)) = &initial {
        agent.apply(file, text)?;
    }

    let links = config.pin_dir.join("links");
    let attach_all = |agent: &mut Agent| -> Result<()> {
        for iface in &config.ifaces {
            let ingress = if config.xdp.contains(iface) {
                HookKind::XdpIngress
            } else {
                HookKind::TcIngress
            };
            for kind in [ingress, HookKind::TcEgress] {
                let hook = attach::attach(&mut agent.dp, iface, kind, &links)?;
                info!(iface, hook = %kind, mechanism = ?hook.mechanism, replaced = hook.replaced, "attached");
                agent.hooks.push(hook);
            }
        }
        Ok(())
    };
    if let Err(e) = attach_all(&mut agent) {
        for h in agent.hooks.drain(..) {
            let _ = h.detach();
        }
        return Err(e);
    }

    let agent = Arc::new(Mutex::new(agent));
    let listener = bind_socket(&config.socket)?;
    info!(socket = %config.socket.display(), "serving");

    let sampler = {
        let agent = agent.clone();
        let every = config.sample_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let agent = agent.clone();
                let r =
                    tokio::task::spawn_blocking(move || agent.lock().expect("agent lock").sample())
                        .await;
                if let Ok(Err(e)) = r {
                    warn!(error = %e, "sampling counters failed");
                }
            }
        })
    };

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, agent.clone()));
                }
                Err(e) => error!(error = %e, "accept failed"),
            },
        }
    }

    info!("shutting down: detaching");
    sampler.abort();
    let _ = std::fs::remove_file(&config.socket);
    let mut agent = agent.lock().expect("agent lock");
    agent.save();
    for h in agent.hooks.drain(..) {
        if let Err(e) = h.detach() {
            warn!(error = %e, "detach failed");
        }
    }
    for iface in std::mem::take(&mut agent.fq_installed) {
        match qdisc::restore(&iface) {
            Ok(()) => info!(iface, "restored the default qdisc"),
            Err(e) => warn!(iface, error = %e, "restoring the qdisc failed"),
        }
    }
    agent.save();
    Ok(())
}

fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another tc-agent is already serving {}; stop it or use --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

async fn serve(stream: UnixStream, agent: Arc<Mutex<Agent>>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let resp = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response {
            ok: false,
            error: Some(format!("bad request: {e}")),
            data: serde_json::Value::Null,
        },
        Ok(req) => {
            let r =
                tokio::task::spawn_blocking(move || agent.lock().expect("agent lock").handle(req))
                    .await;
            match r {
                Ok(Ok(data)) => Response {
                    ok: true,
                    error: None,
                    data,
                },
                Ok(Err(e)) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    data: serde_json::Value::Null,
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("internal error: {e}")),
                    data: serde_json::Value::Null,
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}
