//! The daemon's life: start (load, resume or apply, attach), serve, stop.

use super::{
    lock::lock_state_dir,
    server::{bind_socket, Server},
    snapshot::Snapshot,
    *,
};

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

    let server = Server::new(agent.clone(), snapshot, config.socket_group.clone());
    tokio::select! {
        _ = shutdown => {}
        never = server.serve(listener) => match never {},
    }

    info!("shutting down: detaching");
    sampler.abort();
    let _ = std::fs::remove_file(&config.socket);
    let mut agent = agent.lock();
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
