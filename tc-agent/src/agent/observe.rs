//! The agent's side of observing: each sample folds the interaction table
//! into the observer and records the history; `map`, `top-talkers` and
//! `history` are answered from the observer alone (see `server`), never
//! behind the agent lock.

use super::*;
use crate::{
    control::{HistoryReport, MapReport, TopTalkersReport},
    detect::{scope, Change, ChannelSample, ChannelSides, Sample},
    observe::{interaction_point, naming::Filter, Observer, CHANNEL_METRICS, INTERACTION_METRICS},
};

/// History series kept at most: every channel (1,024 at most) and the
/// busiest pairs of names first seen; a later pair past it has none.
const MAX_HISTORY_SERIES: usize = 4096;

/// The live policy's [`ChannelSides`] and the policy they were made from.
#[derive(Default)]
pub(super) struct SidesCache {
    /// The policy they were made from: they are made again when the live
    /// one is another (held weakly, so its address cannot be reused).
    of: std::sync::Weak<Policy>,
    /// One per channel, in the policy's order.
    sides: Vec<Arc<ChannelSides>>,
}

impl Agent {
    /// The live policy's [`ChannelSides`], one per channel in order: made
    /// again only when the policy changed since the last call.
    fn channel_sides(&mut self) -> Vec<Arc<ChannelSides>> {
        let live = Arc::downgrade(&self.policy);
        if !self.channel_sides.of.ptr_eq(&live) {
            let sets = &self.policy.endpoints;
            let made = self
                .policy
                .channels
                .iter()
                .map(|c| {
                    Arc::new(ChannelSides {
                        from: scope::Side::of(&c.from, sets),
                        to: scope::Side::of(&c.to, sets),
                        to_nets: c.to.clone(),
                        to_sets: scope::sets_within(&c.to, sets),
                    })
                })
                .collect();
            self.channel_sides = SidesCache {
                of: live,
                sides: made,
            };
        }
        self.channel_sides.sides.clone()
    }

    /// Reads the interaction table into the observer, records this
    /// sample's history points, and tidies the table (idle entries out,
    /// the admission threshold for floods). Called right after a counter
    /// sample.
    pub(super) fn observe(&mut self) -> Result<()> {
        let sides = self.channel_sides();
        let entries = self.dp.interactions()?;
        let folded = self.dp.global_counters()?.ix_folded_pkts;
        let at = Instant::now();
        let t = crate::clock::unix_secs();
        let hk = {
            let mut obs = self.observer.lock();
            let (pairs, hk) = obs.interactions.sample(entries, at, folded);
            let dt = obs.interactions.last_dt();
            if dt > 0.0 {
                for (pair, d) in &pairs {
                    // Bounded: a pair past the cap gets no history (it still
                    // shows in `map` and `/metrics`).
                    if obs.history.len() < MAX_HISTORY_SERIES || obs.history.has(pair) {
                        obs.history
                            .record(pair, INTERACTION_METRICS, t, &interaction_point(d, dt));
                    }
                }
            }
            let mut channels = Vec::new();
            let n = self.history.len();
            if n >= 2 {
                let (a, b) = (&self.history[n - 2], &self.history[n - 1]);
                let dt = (b.at - a.at).as_secs_f64();
                for (c, sides) in self.policy.channels.iter().zip(&sides) {
                    if let (Some(x), Some(y)) = (a.totals.get(&c.name), b.totals.get(&c.name)) {
                        let r = |u: u64, v: u64| v.saturating_sub(u) as f64 / dt;
                        let point = [
                            8.0 * r(x.passed_bytes, y.passed_bytes),
                            r(x.passed_pkts, y.passed_pkts),
                            8.0 * r(x.dropped_bytes, y.dropped_bytes),
                            r(x.dropped_pkts, y.dropped_pkts),
                        ];
                        obs.history.record(&c.name, CHANNEL_METRICS, t, &point);
                        channels.push(ChannelSample {
                            name: c.name.clone(),
                            sides: sides.clone(),
                            passed_bps: point[0],
                            passed_pps: point[1],
                            dropped_bps: point[2],
                            dropped_pps: point[3],
                        });
                    }
                }
            }
            if dt > 0.0 && self.config.detect {
                let (pairs, sources) = obs.interactions.detect_view();
                let sample = Sample {
                    t,
                    dt,
                    pairs,
                    sources,
                    channels,
                };
                for change in obs.detector.observe(&sample) {
                    log_change(&change);
                }
            }
            if t >= self.minute_jobs_at + 60 {
                obs.history.forget_idle(t);
            }
            hk
        };
        if !hk.remove.is_empty() {
            let finals = self.dp.remove_interactions(&hk.remove)?;
            self.observer.lock().interactions.removed(finals);
        }
        self.dp.set_admission(hk.admit_units)?;
        // Slots a CPU took and could not enter (it lost a race to another
        // CPU entering the same interaction): back to the ring once two
        // looks a minute apart agree, so none in flight is taken.
        if t >= self.minute_jobs_at + 60 {
            self.minute_jobs_at = t;
            let stray = self.dp.stray_slots()?;
            let confirmed: Vec<u32> = stray
                .iter()
                .filter(|s| self.ix_stray.contains(s))
                .copied()
                .collect();
            if !confirmed.is_empty() {
                info!(
                    slots = confirmed.len(),
                    "reclaimed interaction slots lost to races"
                );
                self.dp.reclaim_slots(&confirmed)?;
            }
            self.ix_stray = stray;
        }
        Ok(())
    }

    /// The observer, for the server.
    pub(super) fn observer(&self) -> Arc<Mutex<Observer>> {
        self.observer.clone()
    }
}

/// An event in the agent's log: a warning when it starts (someone should
/// look), a note when it changes what it names or ends. Both carry what `tc-agent events` shows
/// (id, kind, from, to, the summary), so the log alone tells the story;
/// the start adds the evidence's numbers.
fn log_change(change: &Change) {
    match change {
        Change::Started(e) => warn!(
            id = %e.id,
            kind = e.kind.as_str(),
            from = ?e.from,
            to = ?e.to,
            evidence = %serde_json::Value::Object(e.evidence.clone()),
            "event started: {} (`tc-agent suggest {}` writes a policy that answers it)",
            e.summary,
            e.id
        ),
        Change::Updated(e) => info!(
            id = %e.id,
            kind = e.kind.as_str(),
            from = ?e.from,
            to = ?e.to,
            evidence = %serde_json::Value::Object(e.evidence.clone()),
            "event updated: {}",
            e.summary
        ),
        Change::Ended(e) => info!(
            id = %e.id,
            kind = e.kind.as_str(),
            from = ?e.from,
            to = ?e.to,
            lasted_s = e.ended.unwrap_or(e.started).saturating_sub(e.started),
            "event ended: {}",
            e.summary
        ),
    }
}

/// `map`.
pub(super) fn map(obs: &Mutex<Observer>) -> MapReport {
    obs.lock().interactions.map()
}

/// `top-talkers`: filters are endpoint sets of the live policy, CIDRs or
/// addresses.
pub(super) fn top_talkers(
    obs: &Mutex<Observer>,
    to: Option<&str>,
    from: Option<&str>,
    n: usize,
) -> Result<TopTalkersReport> {
    if n == 0 || n > 10_000 {
        bail!("-n must be 1 to 10000, not {n}");
    }
    let obs = obs.lock();
    let namer = obs.interactions.namer();
    let to = to
        .map(|t| Filter::parse(t, namer).map_err(|e| anyhow::anyhow!("--to: {e}")))
        .transpose()?;
    let from = from
        .map(|t| Filter::parse(t, namer).map_err(|e| anyhow::anyhow!("--from: {e}")))
        .transpose()?;
    Ok(obs.interactions.top_talkers(to.as_ref(), from.as_ref(), n))
}

/// `history`: a channel or a `FROM->TO` pair, as far back as `since_s`.
pub(super) fn history(obs: &Mutex<Observer>, name: &str, since_s: u64) -> Result<HistoryReport> {
    if since_s == 0 || since_s > 86_400 {
        bail!("--since must be 1 s to 24 h, not {since_s} s");
    }
    let obs = obs.lock();
    obs.history
        .query(name, crate::clock::unix_secs(), since_s)
        .with_context(|| {
            format!(
                "no history for `{name}`: NAME is a channel of the live policy, or FROM->TO as `tc-agent map` names an interaction (e.g. `clients->web`); a series starts at the first sample that sees it"
            )
        })
}
