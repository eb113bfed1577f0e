//! `spike`: an interaction's or a channel's request rate far above its own
//! baseline.
//!
//! Per interaction between names (`from`, `to`), summed over protocol and
//! port: request packets/s and request bits/s. Per channel: offered (passed
//! plus dropped) packets/s and bits/s. A sample is hot when either rate is
//! at least [`RATIO`] times its baseline, [`K`] deviations above it, and
//! above its floor ([`PPS_FLOOR`], [`BPS_FLOOR`]: tiny flows are ignored),
//! and its baseline was not silence (at least [`ACTIVE`] of a floor: traffic
//! that starts on an idle channel is no spike);
//! [`ONSET`] hot samples in a row open an event, and the one that opens it
//! must be a step, not a ramp: at least [`STEP`](super::baseline::STEP)
//! times the highest 1 s rate of the last minute before the episode became
//! pending ([`RecentMax`]). A new service
//! ramping up outruns its lagging baseline but never its own recent
//! maximum; growth doubling every few seconds is a spike. It ends after [`CALM`]
//! samples in a row back under [`END_RATIO`] times the baseline (plus
//! [`END_K`] deviations) or under half the floor. Baselines freeze while an
//! episode is open or pending. An episode that lasts [`MAX_EPISODE`]
//! samples is the new normal: the event ends and the baseline starts over.
//!
//! Coherence: a spike is the least specific pattern. An interaction whose
//! destination has a `dos` or `upstream_collapse` episode open or pending
//! opens a silent episode instead of an event (`dos` decides in fewer
//! samples, and `upstream_collapse` is judged first, so they win the
//! race). A channel does the same while any destination has one, or any
//! interaction has a spike open or pending, since a channel's traffic is
//! not split by interaction in the sample: a channel's own event is for
//! demand spread over many interactions, none of which spiked alone.
//!
//! Thresholds, measured by `tests::threshold_table` on synthetic series
//! (1 s samples, seeded): see the table in `spike/tests.rs` and the
//! report in `detect/mod.rs`.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    baseline::{Baseline, RecentMax},
    bucket::rate,
    episode::{Episode, Step},
    events::{Event, EventKind},
    evidence::{self, Mix},
    prune::make_room,
    Found, Sample,
};

/// Onset: the rate is at least this many times its baseline...
pub const RATIO: f64 = 2.0;
/// ... and this many mean absolute deviations above it.
pub const K: f64 = 4.0;
/// Request packets/s under which an interaction is too small to judge.
pub const PPS_FLOOR: f64 = 20.0;
/// Request bits/s under which an interaction is too small to judge.
pub const BPS_FLOOR: f64 = 100_000.0;
/// A baseline under this part of the floors is silence, not a level a
/// spike rises from.
pub const ACTIVE: f64 = 0.1;
/// Hot samples in a row that open an event.
pub const ONSET: u32 = 3;
/// Back near the baseline: under this many times it...
pub const END_RATIO: f64 = 1.5;
/// ... plus this many deviations.
pub const END_K: f64 = 2.0;
/// Calm samples in a row that end an event.
pub const CALM: u32 = 10;
/// Samples after which a level that stays up is the new normal.
pub const MAX_EPISODE: u64 = 900;
/// Samples without traffic after which a series is forgotten.
pub const IDLE: u64 = 300;
/// Series kept at most (interactions and channels each).
pub const MAX_SERIES: usize = 8192;

/// One watched rate series.
#[derive(Debug, Default)]
struct Series {
    /// Baseline of the packets/s.
    pps: Baseline,
    /// Baseline of the bits/s.
    bps: Baseline,
    /// This sample's packets/s (valid when `stamp` is the tick).
    now_pps: f64,
    /// This sample's bits/s.
    now_bps: f64,
    /// The tick of the last sample with traffic.
    stamp: u64,
    /// This sample's protocols and ports, for the evidence.
    mix: Mix,
    /// What a channel covers, whose sides the event names (from the
    /// sample, [`ChannelSides`](super::ChannelSides)); empty for an
    /// interaction.
    sides: std::sync::Arc<super::ChannelSides>,
    /// Highest packets/s per 10 s over the last minute: an onset must be
    /// a step above it.
    max_pps: RecentMax,
    /// Highest bits/s likewise.
    max_bps: RecentMax,
    /// Hysteresis.
    ep: Episode,
}

impl Series {
    /// The current rates (zero when absent from this sample).
    fn now(&self, tick: u64) -> (f64, f64) {
        if self.stamp == tick {
            (self.now_pps, self.now_bps)
        } else {
            (0.0, 0.0)
        }
    }

    /// Adds traffic of this sample.
    fn add(&mut self, tick: u64, pps: f64, bps: f64) {
        if self.stamp != tick {
            self.stamp = tick;
            self.now_pps = 0.0;
            self.now_bps = 0.0;
            self.mix.clear();
        }
        self.now_pps += pps;
        self.now_bps += bps;
    }
}

/// What one series' verdict was, for the event.
struct Verdict {
    /// The event opened.
    open: bool,
    /// The event ended (and was not silent).
    close: bool,
    /// Which rate fired: bits (`true`) or packets.
    by_bps: bool,
}

/// The spike detector's state.
#[derive(Debug)]
pub struct Spike {
    /// The onset ratio: [`RATIO`], other values only in the threshold
    /// table's sweep.
    ratio: f64,
    /// Interactions by `from\0to`.
    pairs: HashMap<String, Series>,
    /// Channels by name.
    channels: HashMap<String, Series>,
    /// Scratch key, reused.
    key: String,
}

impl Default for Spike {
    fn default() -> Self {
        Self {
            ratio: RATIO,
            pairs: HashMap::new(),
            channels: HashMap::new(),
            key: String::new(),
        }
    }
}

impl Spike {
    /// A detector with another onset ratio, for the threshold sweep.
    #[cfg(test)]
    fn with_ratio(ratio: f64) -> Self {
        Self {
            ratio,
            ..Self::default()
        }
    }

    /// Looks at one sample, `tick` counting samples. `busy`: destinations
    /// where a more specific detector has an episode open or pending.
    pub fn observe(&mut self, s: &Sample, tick: u64, busy: &HashSet<String>) -> Vec<Found> {
        let mut found = Vec::new();
        if !(s.dt > 0.0 && s.dt.is_finite()) {
            return found;
        }
        for p in &s.pairs {
            self.key.clear();
            self.key.push_str(&p.from);
            self.key.push('\0');
            self.key.push_str(&p.to);
            let Some(series) = entry(&mut self.pairs, &self.key) else {
                continue;
            };
            series.add(
                tick,
                p.d.req_pkts as f64 / s.dt,
                p.d.req_bytes as f64 * 8.0 / s.dt,
            );
            series.mix.add(p.proto, p.port, p.d.req_bytes);
        }
        for c in &s.channels {
            let Some(series) = entry(&mut self.channels, &c.name) else {
                continue;
            };
            let (pps, bps) = (
                rate(c.passed_pps) + rate(c.dropped_pps),
                rate(c.passed_bps) + rate(c.dropped_bps),
            );
            let (pps, bps) = (rate(pps), rate(bps));
            if pps > 0.0 || bps > 0.0 {
                series.add(tick, pps, bps);
            }
            if !std::sync::Arc::ptr_eq(&series.sides, &c.sides) {
                series.sides = c.sides.clone();
            }
        }
        let mut pair_busy = false;
        for (key, series) in &mut self.pairs {
            let (from, to) = key.split_once('\0').unwrap_or((key.as_str(), ""));
            let v = judge(series, tick, busy.contains(to), self.ratio);
            pair_busy |= series.ep.frozen();
            if v.open {
                found.push(Found::Started {
                    key: format!("ix:{key}"),
                    event: pair_event(from, to, series, tick, s.t, v.by_bps),
                });
            }
            if v.close {
                found.push(Found::Ended {
                    key: format!("ix:{key}"),
                    t: s.t,
                });
            }
        }
        for (name, series) in &mut self.channels {
            let v = judge(series, tick, pair_busy || !busy.is_empty(), self.ratio);
            if v.open {
                found.push(Found::Started {
                    key: format!("ch:{name}"),
                    event: channel_event(name, series, tick, s.t, v.by_bps),
                });
            }
            if v.close {
                found.push(Found::Ended {
                    key: format!("ch:{name}"),
                    t: s.t,
                });
            }
        }
        if tick.is_multiple_of(16) {
            let live = |v: &Series| tick.saturating_sub(v.stamp) < IDLE || v.ep.open();
            self.pairs.retain(|_, v| live(v));
            self.channels.retain(|_, v| live(v));
        }
        found
    }

    /// Series kept: interactions and channels (for the bounded-state test).
    pub fn len(&self) -> (usize, usize) {
        (self.pairs.len(), self.channels.len())
    }
}

/// The series of `key`, created if there is room.
fn entry<'a>(map: &'a mut HashMap<String, Series>, key: &str) -> Option<&'a mut Series> {
    if !map.contains_key(key) {
        make_room(map, MAX_SERIES, |v| v.bps.mean(), |v| v.ep.open());
        if map.len() >= MAX_SERIES {
            return None;
        }
        map.insert(key.to_string(), Series::default());
    }
    map.get_mut(key)
}

/// One sample's verdict on one series, learning it when calm.
fn judge(series: &mut Series, tick: u64, busy: bool, ratio: f64) -> Verdict {
    let (pps, bps) = series.now(tick);
    // A series that was silent has no level to spike from: traffic that
    // starts (a service coming up, a channel's first client) is not a
    // demand spike. A flood onto an idle destination is `dos`'s.
    let active = series.bps.mean() >= BPS_FLOOR * ACTIVE || series.pps.mean() >= PPS_FLOOR * ACTIVE;
    // The sample that would open the episode must be a step above the
    // last minute's highest rate: a ramp (a new service taking load) keeps
    // outrunning its lagging baseline, but never its own recent maximum.
    let step = !series.ep.would_open(ONSET);
    let hot_bps = active
        && bps >= BPS_FLOOR
        && series.bps.far_above(bps, ratio, K)
        && (step || series.max_bps.stepped(bps));
    let hot_pps = active
        && pps >= PPS_FLOOR
        && series.pps.far_above(pps, ratio, K)
        && (step || series.max_pps.stepped(pps));
    let up_bps = bps >= BPS_FLOOR / 2.0 && series.bps.far_above(bps, END_RATIO, END_K);
    let up_pps = pps >= PPS_FLOOR / 2.0 && series.pps.far_above(pps, END_RATIO, END_K);
    let mut v = Verdict {
        open: false,
        close: false,
        by_bps: hot_bps,
    };
    match series
        .ep
        .step(tick, hot_bps || hot_pps, !(up_bps || up_pps), ONSET, CALM)
    {
        Step::Open if busy => series.ep.shadow(),
        Step::Open => v.open = true,
        Step::Close { shadow } => v.close = !shadow,
        Step::Nothing => {}
    }
    if series.ep.age(tick) >= MAX_EPISODE {
        // The new normal: end the event and learn the level afresh.
        if let Step::Close { shadow } = series.ep.close() {
            v.close = !shadow;
        }
        series.bps = Baseline::new();
        series.pps = Baseline::new();
        series.max_bps = RecentMax::default();
        series.max_pps = RecentMax::default();
    }
    if series.ep.frozen() {
        series.bps.hold(tick);
        series.pps.hold(tick);
        series.max_bps.hold(bps);
        series.max_pps.hold(pps);
    } else {
        series.bps.learn(bps, tick);
        series.pps.learn(pps, tick);
        series.max_bps.learn(bps, tick);
        series.max_pps.learn(pps, tick);
    }
    v
}

/// The event of an interaction's spike.
fn pair_event(from: &str, to: &str, series: &Series, tick: u64, t: u64, by_bps: bool) -> Event {
    let (pps, bps) = series.now(tick);
    let (metric, b, now) = if by_bps {
        ("request_bps", &series.bps, bps)
    } else {
        ("request_pps", &series.pps, pps)
    };
    let mut ev = evidence::headline(metric, b, now);
    series.mix.put(&mut ev);
    ev.insert("request_bps".into(), evidence::pair(&series.bps, bps));
    ev.insert("request_pps".into(), evidence::pair(&series.pps, pps));
    let summary = format!(
        "{from} -> {to}: requests at {} ({}), {} the baseline of {} ({})",
        evidence::bps(bps),
        evidence::pps(pps, "pkt"),
        evidence::factor(b, now),
        evidence::bps(series.bps.mean()),
        evidence::pps(series.pps.mean(), "pkt"),
    );
    Event {
        id: String::new(),
        kind: EventKind::Spike,
        started: t,
        ended: None,
        from: vec![from.to_string()],
        to: vec![to.to_string()],
        summary,
        evidence: ev,
    }
}

/// The event of a channel's spike.
fn channel_event(name: &str, series: &Series, tick: u64, t: u64, by_bps: bool) -> Event {
    let (pps, bps) = series.now(tick);
    let (metric, b, now) = if by_bps {
        ("offered_bps", &series.bps, bps)
    } else {
        ("offered_pps", &series.pps, pps)
    };
    let mut ev = evidence::headline(metric, b, now);
    ev.insert("protocol".into(), json!("mixed"));
    ev.insert("port".into(), json!(null));
    ev.insert("channel".into(), json!(name));
    ev.insert("offered_bps".into(), evidence::pair(&series.bps, bps));
    ev.insert("offered_pps".into(), evidence::pair(&series.pps, pps));
    let summary = format!(
        "channel {name}: offered {} ({}), {} the baseline of {} ({})",
        evidence::bps(bps),
        evidence::pps(pps, "pkt"),
        evidence::factor(b, now),
        evidence::bps(series.bps.mean()),
        evidence::pps(series.pps.mean(), "pkt"),
    );
    Event {
        id: String::new(),
        kind: EventKind::Spike,
        started: t,
        ended: None,
        from: series.sides.from.names(),
        to: series.sides.to.names(),
        summary,
        evidence: ev,
    }
}

#[cfg(test)]
mod tests;
