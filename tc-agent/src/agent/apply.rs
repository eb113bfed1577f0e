//! Applying a policy: validate, compile, write the inactive generation, flip.

use super::*;
use crate::{
    datapath::{held::Tables, steps::Steps},
    policy::PolicyError,
};

impl Agent {
    /// Applies a policy file's text and saves the state.
    pub(super) fn apply(&mut self, file: &str, text: &str) -> Result<ApplyReport> {
        let report = self.apply_parsed(Policy::parse(text, file), file)?;
        self.save();
        Ok(report)
    }

    /// Applies what [`parse`] made of a file (the control server parses
    /// before it takes the agent lock). Does not save the state (unless it
    /// installed fq): the switch's fold saves it (`settle_in_background`,
    /// which the server runs once the switch's grace period is over, and
    /// which then prunes the old generation).
    pub(super) fn apply_parsed(
        &mut self,
        parsed: std::result::Result<Policy, PolicyError>,
        file: &str,
    ) -> Result<ApplyReport> {
        if self.closing {
            bail!("the agent is stopping: policy not applied, the running policy is unchanged");
        }
        self.apply_policy(parsed?, file)
    }

    /// Applies a validated policy (from a file, or the saved state's); the
    /// caller saves the state.
    pub(super) fn apply_policy(&mut self, policy: Policy, file: &str) -> Result<ApplyReport> {
        let t0 = Instant::now();
        let mut steps = Steps::new("agent apply");
        // The previous switch's fold must read its old generation before
        // this apply writes into it.
        self.settle();
        steps.step("settle");
        // The live policy's address tables, and their record, serve again
        // when the channels name the same addresses.
        let (kept, record) = self.addresses.take().unzip();
        let (mut compiled, reused) = compile_reusing(&policy, kept)?;
        let record = record.filter(|_| reused);
        steps.step("compile");
        let pools = self.pools.assign(&policy, &mut compiled.policies)?;
        let fq_new = self.prepare_fq(&policy)?;
        steps.step("pools and fq");
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
        let new_names: std::collections::HashSet<&str> =
            policy.channels.iter().map(|c| c.name.as_str()).collect();
        report.removed = self
            .policy
            .channels
            .iter()
            .filter(|c| !new_names.contains(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect();

        steps.step("diff channels");
        let previous = self.generation;
        let tables = match &record {
            Some(r) => Tables::of_with_addresses(&compiled, r),
            None => Tables::of(&compiled),
        };
        debug_assert!(
            tables == Tables::of(&compiled),
            "the kept record of the address tables differs from a fresh one"
        );
        let address_record = tables.addresses();
        let digest = tables.digest();
        steps.step("record");
        // The write below removes what the old generation holds and this
        // policy does not: a prune after it would only remove more.
        self.prune_due = false;
        let live = match self.dp.apply_tables(&compiled, tables, &carry) {
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

        steps.step("datapath");
        // The old generation's counters are folded into the carried
        // totals after the grace period (`settle`); until then `totals`
        // adds them. Totals of removed channels are dropped now.
        let kept: Vec<(usize, String)> = self
            .policy
            .channels
            .iter()
            .enumerate()
            .filter(|(_, c)| new_names.contains(c.name.as_str()))
            .map(|(i, c)| (i, c.name.clone()))
            .collect();
        self.carried
            .retain(|name, _| new_names.contains(name.as_str()));
        let switched_at = Instant::now();
        // The address tables are kept for the next apply; the rest of
        // the compile is done with.
        self.addresses = Some((Addresses::take(&policy, &mut compiled), address_record));
        drop(compiled);
        self.generation = live.generation;
        self.version = live.version;
        self.digest = digest;
        self.state_check = StateCheck::Consistent;
        self.live_slots = policy.channels.len();
        let policy = Arc::new(policy);
        self.observer.lock().set_policy(policy.clone());
        self.pending = Some(PendingFold {
            at: switched_at,
            generation: previous,
            kept,
            retired_policy: std::mem::replace(&mut self.policy, policy),
            retired_samples: std::mem::take(&mut self.history),
        });
        self.policy_file = Some(file.to_string());
        steps.step("observer");
        if !fq_new.is_empty() {
            // Qdiscs this apply installed are in the state before the
            // answer (the switch's fold saves the rest after it): an agent
            // killed in between would not put back what they replaced.
            self.save();
        }
        steps.log();
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

/// Reads and validates a policy file's text, reusing what `reuse` kept
/// of the last one; `file` names it in diagnostics.
pub(super) fn parse(
    reuse: &crate::policy::Reuse,
    text: String,
    file: &str,
) -> std::result::Result<Policy, PolicyError> {
    let t = Instant::now();
    let parsed = reuse.parse(text, file);
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        reused_so_far = reuse.reused(),
        "policy parsed"
    );
    parsed
}
