//! The daemon's life: start (load, take over or attach, resume or apply),
//! serve, stop. A stopped agent leaves the datapath attached and enforcing
//! the live policy, exactly as a killed one does; only `--detach-on-exit`
//! or `tc-agent uninstall` remove it.

use super::{
    lock::{lock_dirs, lock_ifaces},
    server::{bind_socket, Server},
    snapshot::Snapshot,
    state::SavedHook,
    uninstall::uninstall,
    *,
};
use crate::metrics;

/// Runs the agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    sys::require_root()?;
    for i in config.ifaces.iter().chain(&config.xdp) {
        sys::ifindex(i)?;
    }
    sys::ensure_bpffs(&config.pin_dir)?;
    let _locks = lock_dirs(&config.state_dir, &config.pin_dir)?;
    let _iface_locks = lock_ifaces(&config.ifaces)?;
    // Bound before the kernel is touched: a busy address changes nothing.
    let metrics_listener = config.metrics_addr.map(metrics::http::bind).transpose()?;
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

    // Without an XDP hook the XDP programs stay unloaded: a quarter of
    // the verifier's time at every start.
    let programs = if config.xdp.is_empty() {
        Programs::Tc
    } else {
        Programs::All
    };
    let mut dp = Datapath::load_with(
        Some(&config.pin_dir),
        TableSizes {
            conns: config.conn_table_size,
            interactions: config.interaction_table_size,
        },
        programs,
    )
    .context("loading the eBPF datapath")?;
    dp.set_conn_config(config.conn_timeouts)?;
    let table_size = dp.conn_table_size()?;
    if table_size != config.conn_table_size {
        warn!(
            pinned = table_size,
            asked = config.conn_table_size,
            "the pinned connection table keeps its size; --conn-table-size takes effect after `tc-agent uninstall`"
        );
    }
    let (mut agent, lost) = Agent::resume(dp, config.clone())?;
    let mut initial = initial;
    if agent.version == 0 {
        // Fresh maps (first start, an upgrade to a new map layout, or
        // wiped maps): whatever hooks a previous agent left still run its
        // programs over its old maps. Fill the new maps first, so that
        // swapping the new programs into those hooks never leaves the node
        // without its policy.
        if let Some((file, text)) = initial.take() {
            agent.apply(&file, &text)?;
        } else if let Some(lost) = lost {
            agent.recover(lost)?;
        }
    }
    // Attach before any other apply: a start that fails leaves the hooks
    // it found, and the policy they enforce, as they were.
    if let Err(e) = attach_all(&mut agent) {
        agent.release_hooks();
        return Err(e);
    }
    if let Some((file, text)) = &initial {
        if let Err(e) = agent.apply(file, text) {
            agent.release_hooks();
            return Err(e);
        }
    }
    // Only now that every hook is in place: hooks of the other ingress kind.
    retire_other_ingress(&agent)?;
    let ingress: Vec<u32> = config
        .ifaces
        .iter()
        .map(|i| sys::ifindex(i))
        .collect::<Result<_>>()?;
    agent
        .dp
        .set_ingress_ifaces(&ingress)
        .context("declaring the ingress interfaces for interaction accounting")?;
    agent.save();

    let snapshot = Arc::new(Snapshot::new(&mut agent)?);
    let agent = Arc::new(Mutex::new(agent));
    let listener = bind_socket(&config)?;
    info!(socket = %config.socket.display(), "serving");

    let sampler = {
        let agent = agent.clone();
        let snapshot = snapshot.clone();
        let every = config.sample_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (agent, snapshot) = (agent.clone(), snapshot.clone());
                let r =
                    tokio::task::spawn_blocking(move || agent.lock().sample_into(&snapshot)).await;
                if let Ok(Err(e)) = r {
                    warn!(error = %e, "sampling counters failed");
                }
            }
        })
    };

    // The earlier agents' accounting arrays go once no program uses them
    // (their programs are freed a grace period after their last hook is
    // replaced): tried once a second, for half a minute at most (a hook
    // on an interface this agent does not manage keeps its programs, and
    // their arrays, until a later start or an uninstall).
    let retirer = {
        let pin_dir = config.pin_dir.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                let dir = pin_dir.clone();
                let left = tokio::task::spawn_blocking(move || {
                    crate::datapath::accounting::retire_unused(&dir)
                })
                .await;
                if matches!(left, Ok(n) if n <= 1) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let collector = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut next = Duration::from_secs(1);
            loop {
                tokio::time::sleep(next).await;
                let agent = agent.clone();
                match tokio::task::spawn_blocking(move || agent.lock().collect()).await {
                    Ok(Ok(n)) => next = n,
                    Ok(Err(e)) => warn!(error = %e, "collecting timed-out connections failed"),
                    Err(e) => warn!(error = %e, "the connection collector panicked"),
                }
            }
        })
    };

    let observer = agent.lock().observer();
    let metrics = metrics_listener.map(|listener| {
        let snapshot = snapshot.clone();
        let started = snapshot.started();
        let source: metrics::MetricsSource = Arc::new(move || {
            let obs = observer.lock();
            metrics::MetricsView {
                channels: snapshot.channels(),
                interactions: Arc::from(obs.interactions.totals_by_set()),
                uptime: started.elapsed(),
                events: metrics::EventCounts::of(obs.detector.log()),
            }
        });
        let exporter = Arc::new(metrics::Exporter::new(source));
        tokio::spawn(async move {
            let Err(e) = metrics::http::serve(listener, exporter, Default::default()).await;
            error!(error = %format!("{e:#}"), "the metrics server stopped");
        })
    });

    let server = Server::new(agent.clone(), snapshot, config.socket_group.clone());
    tokio::select! {
        _ = shutdown => {}
        never = server.serve(listener) => match never {},
    }

    sampler.abort();
    retirer.abort();
    collector.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&config.socket);
    let mut agent = agent.lock();
    agent.closing = true;
    // Saved once, folded or not (a large policy takes about 17 ms to
    // write out).
    agent.fold();
    agent.save();
    if config.detach_on_exit {
        info!("shutting down: --detach-on-exit, removing the datapath");
        for h in std::mem::take(&mut agent.hooks) {
            h.leave();
        }
        // Uninstalling waits for the programs to be freed before it
        // removes their accounting arrays: this process holds them too.
        agent.dp.unload_programs();
        let report = uninstall(&config.pin_dir, &config.state_dir, None)?;
        for f in &report.failed {
            warn!(failed = %f, "uninstall left something behind");
        }
    } else {
        info!(
            generation = agent.generation,
            "shutting down: the datapath stays attached and enforcing the live policy (`tc-agent uninstall` removes it)"
        );
        for h in std::mem::take(&mut agent.hooks) {
            h.leave();
        }
    }
    Ok(())
}

/// Attaches (or takes over) every hook the configuration names.
fn attach_all(agent: &mut Agent) -> Result<()> {
    let links = agent.config.pin_dir.join("links");
    let config = agent.config.clone();
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
    for (iface, kind, _) in attach::pinned_hooks(&links) {
        if !config.ifaces.contains(&iface) {
            warn!(
                iface,
                hook = %kind,
                "a hook from an earlier run on an interface this agent does not manage keeps enforcing; `tc-agent uninstall --iface {iface}` removes it"
            );
        }
    }
    Ok(())
}

/// An ingress hook of the other kind (tc <-> XDP) left by an earlier run
/// would see every packet a second time: it goes once its replacement is
/// in place and the start has succeeded.
fn retire_other_ingress(agent: &Agent) -> Result<()> {
    let links = agent.config.pin_dir.join("links");
    for iface in &agent.config.ifaces {
        let other = if agent.config.xdp.contains(iface) {
            HookKind::TcIngress
        } else {
            HookKind::XdpIngress
        };
        let stale = attach::link_path(&links, iface, other);
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("removing {}", stale.display()))?;
            info!(iface, hook = %other, "detached the ingress hook of the other kind");
        } else if other == HookKind::TcIngress && !sys::has_tcx() {
            // Before TCX the tc hook is a filter, found by its priority.
            if attach::detach_netlink(iface, HookKind::TcIngress).is_ok() {
                info!(iface, "detached the tc ingress filter: XDP replaces it");
            }
        }
    }
    Ok(())
}

/// Checks the saved state against the kernel. The saved policy is used
/// only when its version and its tables' digest are what the kernel holds;
/// otherwise (state lost or stale, maps wiped, a layout upgrade) the
/// mismatch is reported, and the saved policy is dropped so that no channel
/// is listed that the kernel is not enforcing. What the saved state knows
/// besides the policy (hooks, qdiscs it installed) is kept either way.
fn check_saved(
    dp: &mut Datapath,
    live: tc_common::Config,
    saved: Option<SavedState>,
) -> (Option<SavedState>, StateCheck, Option<Lost>) {
    let Some(mut saved) = saved else {
        return if live.version == 0 {
            (None, StateCheck::Consistent, None)
        } else {
            (
                None,
                StateCheck::Mismatch(format!(
                    "the kernel enforces policy version {} but the saved state is missing; its channels are unnamed until a policy is applied",
                    live.version
                )),
                None,
            )
        };
    };
    if live.version == 0 && saved.version != 0 {
        // The maps are new: the saved policy is applied again before any
        // hook is taken over (see `run`).
        let lost = Lost {
            policy: std::mem::take(&mut saved.policy),
            file: saved.policy_file.take(),
            version: saved.version,
        };
        return (Some(saved), StateCheck::Consistent, Some(lost));
    }
    let why = if saved.version != live.version {
        if live.version == 0 {
            Some(format!(
                "the saved state names policy version {}, but the kernel holds no policy (maps wiped, or a new map layout): nothing is enforced until a policy is applied",
                saved.version
            ))
        } else {
            Some(format!(
                "the saved state names policy version {}, the kernel enforces version {}",
                saved.version, live.version
            ))
        }
    } else if saved.generation != live.generation {
        Some("the saved state and the kernel disagree on the live generation".into())
    } else {
        // What the live generation holds, read back: its digest checks the
        // saved state, and it is the record the next writes diff against.
        match dp.read_generation(live.generation).map(|t| {
            let d = t.digest();
            dp.adopt(live.generation, t);
            d
        }) {
            Ok(d) if d == saved.digest => None,
            Ok(_) => Some(format!(
                "the kernel's tables for policy version {} differ from the saved policy",
                live.version
            )),
            Err(e) => Some(format!("cannot read the kernel's tables: {e}")),
        }
    };
    match why {
        None => (Some(saved), StateCheck::Consistent, None),
        Some(why) => {
            saved.policy = Policy::default();
            saved.policy_file = None;
            saved.carried.clear();
            (Some(saved), StateCheck::Mismatch(why), None)
        }
    }
}

/// The saved policy of maps that are gone, to be applied again.
pub(super) struct Lost {
    /// The policy the saved state names.
    policy: Policy,
    /// The file it came from.
    file: Option<String>,
    /// Its version: the new one follows it.
    version: u64,
}

impl Agent {
    /// The agent over a freshly loaded datapath, resuming what the pinned
    /// maps and the saved state say is live.
    fn resume(mut dp: Datapath, config: AgentConfig) -> Result<(Self, Option<Lost>)> {
        let live = dp.config()?;
        if live.version == 0 {
            dp.reset_generations()?;
        }
        let saved = SavedState::load(&config.state_dir.join("state.json"));
        let (saved, state_check, lost) = check_saved(&mut dp, live, saved);
        if let StateCheck::Mismatch(why) = &state_check {
            warn!(reason = %why, "the saved state does not match the kernel: the live channels cannot be named; apply a policy to take them over");
        }
        let saved = saved.unwrap_or_default();
        let live_slots = dp.active_channels(live.generation)?;
        let names: Vec<String> = saved
            .policy
            .channels
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let named = !matches!(state_check, StateCheck::Mismatch(_));
        let live_policies = dp.policies(live.generation, live_slots)?;
        let pools =
            connections::Pools::resume(&mut dp, &live_policies, named.then_some(&names[..]))?;
        let dp_table_size = dp.conn_table_size()?;
        let ix_size = dp.interaction_table_size()?;
        if ix_size != config.interaction_table_size {
            warn!(
                pinned = ix_size,
                asked = config.interaction_table_size,
                "the pinned interaction table keeps its size; --interaction-table-size takes effect after `tc-agent uninstall`"
            );
        }
        let interactions =
            crate::observe::interactions::Interactions::new(ix_size, config.max_unnamed);
        let mut observer = crate::observe::Observer {
            interactions,
            history: crate::observe::history::History::new(),
            detector: crate::detect::Detector::default(),
            policy: Default::default(),
        };
        let policy = Arc::new(saved.policy);
        observer.set_policy(policy.clone());
        let observer = Arc::new(Mutex::new(observer));
        let agent = Agent {
            dp,
            hooks: Vec::new(),
            policy,
            policy_file: saved.policy_file,
            generation: live.generation,
            version: live.version,
            digest: saved.digest,
            addresses: None,
            state_check,
            live_slots,
            closing: false,
            carried: saved.carried,
            pending: None,
            prune_due: false,
            history: VecDeque::new(),
            fq_installed: saved.fq_installed,
            started: Instant::now(),
            pools,
            conn_table_size: dp_table_size,
            observer,
            ix_stray: Vec::new(),
            minute_jobs_at: 0,
            channel_sides: Default::default(),
            features: Features {
                tcx: sys::has_tcx(),
                btf: sys::has_btf(),
                delay: qdisc::fq_available(),
            },
            config,
        };
        if !agent.policy.channels.is_empty() {
            info!(
                version = agent.version,
                channels = agent.policy.channels.len(),
                "resumed the pinned live policy"
            );
        }
        Ok((agent, lost))
    }

    /// Applies the saved policy again into fresh maps, its version
    /// continuing the saved one's, and says so in `status`.
    fn recover(&mut self, lost: Lost) -> Result<()> {
        self.dp.seed_version(lost.version)?;
        let file = lost.file.unwrap_or_else(|| "(saved state)".into());
        let report = self
            .apply_policy(lost.policy, &file)
            .context("applying the saved policy to the new maps")?;
        self.save();
        let why = format!(
            "the kernel held no policy (maps wiped, or a new map layout); the saved policy version {} was applied again as version {} before any hook was taken over",
            lost.version, report.version
        );
        warn!(reason = %why, "recovered the saved policy");
        self.state_check = StateCheck::Recovered(why);
        Ok(())
    }

    /// After a failed start: hooks taken over from an earlier agent keep
    /// enforcing; hooks this start added are removed again.
    fn release_hooks(&mut self) {
        for h in std::mem::take(&mut self.hooks) {
            if h.replaced {
                h.leave();
            } else if let Err(e) = h.detach() {
                warn!(error = %e, "detach failed");
            }
        }
    }

    /// The hooks as the saved state records them.
    pub(super) fn saved_hooks(&self) -> Vec<SavedHook> {
        self.hooks
            .iter()
            .map(|h| SavedHook {
                iface: h.iface.clone(),
                kind: h.kind,
                mechanism: h.mechanism,
            })
            .collect()
    }
}
