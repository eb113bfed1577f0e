//! Applying a policy: validate, compile, write the inactive generation, flip.

use super::*;

impl Agent {
    pub(super) fn apply(&mut self, file: &str, text: &str) -> Result<ApplyReport> {
        if self.closing {
            bail!("the agent is stopping: policy not applied, the running policy is unchanged");
        }
        let policy = Policy::parse(text, file)?;
        self.apply_policy(policy, file)
    }

    /// Applies a validated policy (from a file, or the saved state's).
    pub(super) fn apply_policy(&mut self, policy: Policy, file: &str) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let mut compiled = compile(&policy)?;
        let pools = self.pools.assign(&policy, &mut compiled.policies)?;
        let fq_new = self.prepare_fq(&policy)?;
        let old: HashMap<&str, (usize, &crate::policy::Channel)> = self
            .policy
            .channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), (i, c)))
            .collect();
        let mut report = ApplyReport {
            version: 0,
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
                    // Same bandwidth and packet limits: keep the bucket, so a
                    // re-apply hands out no fresh burst. (Connection limits
                    // live in the channel's pool, which it keeps anyway.)
                    let (a, b) = (&o.limit, &c.limit);
                    let same = (a.bandwidth_bps, a.burst_bytes, a.packets, a.packet_burst)
                        == (b.bandwidth_bps, b.burst_bytes, b.packets, b.packet_burst);
                    carry.push(same.then(|| Datapath::slot(self.generation, *i)));
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
        let live = match self.dp.apply(&compiled, &carry) {
            Ok(live) => live,
            Err(e) => {
                // The old policy is still live: undo what this apply added.
                for iface in &fq_new {
                    if let Err(e) = qdisc::restore(iface) {
                        warn!(iface, error = %e, "restoring the qdisc failed");
                    }
                }
                self.fq_installed.retain(|i| !fq_new.contains(i));
                return Err(anyhow::Error::new(e)
                    .context("policy not applied: the running policy is unchanged"));
            }
        };
        // From here on the new policy is live: nothing below may fail the
        // request, or the operator would be told the old one still is.
        self.pools.switched(pools);
        report.took_ms = t0.elapsed().as_secs_f64() * 1e3;
        report.generation = live.generation;
        report.version = live.version;

        // Fold the old generation's counters into the carried totals.
        std::thread::sleep(SWITCH_GRACE);
        let old_counters = self
            .dp
            .channel_counters(previous, self.policy.channels.len())
            .unwrap_or_else(|e| {
                warn!(error = %e, "reading the previous policy's counters failed; its totals restart");
                vec![Default::default(); self.policy.channels.len()]
            });
        let mut carried = HashMap::new();
        for (c, counters) in self.policy.channels.iter().zip(old_counters) {
            if policy.channels.iter().any(|n| n.name == c.name) {
                let mut t = self.carried.get(&c.name).copied().unwrap_or_default();
                t.add(&counters);
                carried.insert(c.name.clone(), t);
            }
        }
        self.carried = carried;
        self.generation = live.generation;
        self.version = live.version;
        self.digest = digest::of_compiled(&compiled);
        self.state_check = StateCheck::Consistent;
        self.live_slots = policy.channels.len();
        self.observer.lock().set_policy(&policy);
        self.policy = policy;
        self.policy_file = Some(file.to_string());
        self.history.clear();
        self.save();
        info!(
            version = live.version,
            generation = live.generation,
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
    /// are put back and the apply fails with nothing changed. Returns the
    /// interfaces where it installed fq now.
    pub(super) fn prepare_fq(&mut self, policy: &Policy) -> Result<Vec<String>> {
        let pacing = policy
            .channels
            .iter()
            .any(|c| c.action == Action::Delay && c.mode == Mode::Enforce);
        if !pacing {
            return Ok(vec![]);
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
        self.fq_installed.extend(installed.iter().cloned());
        Ok(installed)
    }
}
