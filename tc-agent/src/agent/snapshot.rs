//! The latest reports, readable without the agent lock: `status` and
//! `channels` answer from here while an apply holds the agent for hundreds
//! of milliseconds.
//!
//! `channels` is republished after every counter sample and every apply;
//! `status` only changes on an apply (its kernel features may read
//! /proc/kallsyms, too costly for every sample), so it is republished then,
//! and its uptime is filled in when it is read.

use super::*;

/// The published reports. Each lock is held only to clone or replace an
/// `Arc`, never across any work, so a reader cannot wait behind an apply.
pub(super) struct Snapshot {
    /// When the agent started, to give `status` its uptime at read time.
    started: Instant,
    /// The last `status` report, as of the last apply (or the start).
    status: RwLock<Arc<StatusReport>>,
    /// The last `channels` report, as of the last sample or apply.
    channels: RwLock<Arc<ChannelsReport>>,
}

impl Snapshot {
    /// The first reports, computed before the socket serves anything.
    pub(super) fn new(agent: &mut Agent) -> Result<Self> {
        Ok(Self {
            started: agent.started,
            status: RwLock::new(Arc::new(agent.status())),
            channels: RwLock::new(Arc::new(
                agent
                    .channels()
                    .context("reading the counters for the first report")?,
            )),
        })
    }

    /// `status`, with the uptime as of now.
    pub(super) fn status(&self) -> StatusReport {
        let mut s = StatusReport::clone(&self.status.read());
        s.uptime_s = self.started.elapsed().as_secs();
        s
    }

    /// When the agent started, for `/metrics`' uptime.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// `channels` as of the last sample or apply.
    pub(super) fn channels(&self) -> Arc<ChannelsReport> {
        self.channels.read().clone()
    }

    /// Publishes a fresh `channels` report. Callers hold the agent lock, so
    /// reports are published in the order they were taken.
    pub(super) fn set_channels(&self, report: ChannelsReport) {
        *self.channels.write() = Arc::new(report);
    }
}

impl Agent {
    /// Takes a counter sample and publishes the `channels` report it
    /// gives, after the last switch's fold and the old generation's prune
    /// if the post-apply task has not run them yet.
    pub(super) fn sample_into(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.settle_in_background();
        self.sample()?;
        snapshot.set_channels(self.channels()?);
        Ok(())
    }

    /// Publishes both reports, after an apply (which may have failed after
    /// installing fq, so it is called whatever the apply returned).
    pub(super) fn publish(&mut self, snapshot: &Snapshot) {
        *snapshot.status.write() = Arc::new(self.status());
        match self.channels() {
            Ok(c) => snapshot.set_channels(c),
            Err(e) => {
                warn!(error = %e, "reading counters after an apply failed; `channels` shows the previous report until the next sample")
            }
        }
    }
}
