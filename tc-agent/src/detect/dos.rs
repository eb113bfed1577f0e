//! `dos`: traffic to a destination rises sharply and a set of sources
//! dominates it (Figure 4 of the seed), "setting the question of malice
//! aside".
//!
//! Per destination (the [`SourceSample`](super::SourceSample)s summed by
//! `to`, `other` included), each sample, the total request rate (bits/s or
//! packets/s) must be at least [`RISE`] times its baseline, [`K`]
//! deviations above it and above the floor ([`BPS_FLOOR`], [`PPS_FLOOR`]),
//! and one of:
//!
//! - (a) a few sources: between 1 and [`FEW`] tracked sources (never
//!   `other`) are each heavy — at least [`SOURCE_RATIO`] times their own
//!   baseline (and [`K`] deviations above it), or, new (still warming up),
//!   at least [`NEW_TYPICAL`] times the destination's typical tracked
//!   source and [`NEW_SHARE`] of its whole baseline (the latter alone when
//!   the quiet sources are all untracked) — above the source floors, and
//!   together they carry at least [`SHARE`] of the destination's traffic
//!   now. A source that already carried [`WAS_DOMINANT`] of the
//!   destination's baseline is never heavy: its main client sending more
//!   is a `spike` (or an `upstream_collapse`), not a flood;
//! - (b) a crowd: the total is at least [`CROWD_RISE`] times its baseline
//!   and the distinct tracked sources at least [`CROWD_SOURCES`] times
//!   their baseline plus [`CROWD_EXTRA`], or the untracked `other` share at
//!   least [`OTHER_SHARE`] and [`OTHER_RISE`] above its baseline (a
//!   random-source flood lands mostly in `other`). The event names the
//!   busiest of the crowd's tracked sources (new ones, or ones at
//!   [`CROWD_MEMBER`] times their baseline; at most [`CROWD_NAMED`]) and
//!   gives `other`'s share: a crowd in `other` has no address to name.
//!
//! [`ONSET`] samples in a row open an event, always: one burst second (a
//! client uploading a file) is not a flood, however heavy. The sample that
//! would open it must also be a step, not a ramp: its total at least
//! [`STEP`](super::baseline::STEP) times the highest 1 s total of the last
//! minute before the episode became pending ([`RecentMax`]), so a new
//! service ramping up is not a flood. It ends after [`CALM`]
//! samples in a row with the total back under [`END_RATIO`] times its
//! baseline (plus [`END_K`] deviations). Baselines (the destination's and
//! its sources') freeze while an episode is open or pending.
//!
//! A destination keeps its baselines for [`DEST_IDLE`] samples without
//! traffic, decaying towards zero: a flood on a destination that went
//! idle is still a flood (its baseline is near zero and warm). A
//! destination never seen before warms up like any series (a new service
//! taking load is not a flood). Sources are kept per destination, at most
//! [`MAX_SOURCES`] in all and [`MAX_SOURCES_PER_DEST`] each (the smallest
//! go first), and forgotten after [`SOURCE_IDLE`] samples without traffic.
//!
//! The evidence's `distinct_sources` counts the tracked sources with
//! traffic in the sample, plus one for `other` when untracked sources sent
//! (they are at least one; how many the datapath does not say: their
//! share is `other_share`).
//!
//! A flood's episode lasts as long as the traffic stays up, however long:
//! its baselines stay frozen meanwhile (an hour-long flood does not become
//! the normal that the next one is judged against).
//!
//! `dos` is the most specific pattern: it is decided first and wins over
//! `upstream_collapse` and `spike` on the same destination.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::{
    baseline::{Baseline, RecentMax},
    episode::{Episode, Step},
    events::{Event, EventKind},
    evidence::{self, Mix},
    prune::make_room,
    Found, Sample,
};

/// The destination's total at least this many times its baseline...
pub const RISE: f64 = 1.5;
/// ... and this many deviations above it (also for each heavy source).
pub const K: f64 = 3.0;
/// Request bits/s a destination needs now to be judged.
pub const BPS_FLOOR: f64 = 250_000.0;
/// Request packets/s a destination needs now to be judged.
pub const PPS_FLOOR: f64 = 50.0;
/// A heavy source is at least this many times its own baseline.
pub const SOURCE_RATIO: f64 = 8.0;
/// A new source is heavy at this many times the typical tracked source...
pub const NEW_TYPICAL: f64 = 10.0;
/// ... and at this share of the destination's whole baseline at least.
pub const NEW_SHARE: f64 = 0.1;
/// Request bits/s a heavy source needs at least.
pub const SOURCE_BPS_FLOOR: f64 = 50_000.0;
/// Request packets/s a heavy source needs at least.
pub const SOURCE_PPS_FLOOR: f64 = 10.0;
/// A source that carried this share of the destination's baseline is
/// never heavy: it was the main client already.
pub const WAS_DOMINANT: f64 = 0.5;
/// Heavy sources at most for case (a).
pub const FEW: usize = 16;
/// Share of the destination's traffic the heavy sources carry together.
pub const SHARE: f64 = 0.5;
/// Crowd: the total at least this many times its baseline...
pub const CROWD_RISE: f64 = 2.0;
/// ... and distinct sources at least this many times their baseline...
pub const CROWD_SOURCES: f64 = 2.0;
/// ... plus this many.
pub const CROWD_EXTRA: f64 = 10.0;
/// Crowd: the `other` share of the bytes at least this...
pub const OTHER_SHARE: f64 = 0.5;
/// ... and this much above its baseline.
pub const OTHER_RISE: f64 = 0.3;
/// Hot samples in a row that open an event: never one, a single burst
/// second is not a flood.
pub const ONSET: u32 = 2;
/// Back near baseline: under this many times it...
pub const END_RATIO: f64 = 1.3;
/// ... plus this many deviations.
pub const END_K: f64 = 2.0;
/// Calm samples in a row that end an event.
pub const CALM: u32 = 10;
/// A tracked source is named as one of a crowd when new, or at least this
/// many times its own baseline.
pub const CROWD_MEMBER: f64 = 2.0;
/// Sources named at most in a crowd's event (per sample).
pub const CROWD_NAMED: usize = 10;
/// Sources an event names at most over its whole episode (its `from`):
/// beyond, `evidence.more_sources` counts them.
pub const MAX_FROM: usize = 64;
/// Samples without traffic after which a source is forgotten.
pub const SOURCE_IDLE: u64 = 300;
/// Samples without traffic after which a destination is forgotten.
pub const DEST_IDLE: u64 = 3600;
/// Destinations kept at most.
pub const MAX_DESTS: usize = 4096;
/// Sources kept at most, all destinations together.
pub const MAX_SOURCES: usize = 65_536;
/// Sources kept per destination at most.
pub const MAX_SOURCES_PER_DEST: usize = 8192;

/// The name of the untracked sources.
const OTHER: &str = "other";

/// One source's traffic to one destination.
#[derive(Debug, Default)]
struct Source {
    /// Baseline of its request bits/s.
    bps: Baseline,
    /// Baseline of its request packets/s.
    pps: Baseline,
    /// This sample's request bits/s (valid when `stamp` is the tick).
    now_bps: f64,
    /// This sample's request packets/s.
    now_pps: f64,
    /// The tick of its last sample with traffic.
    stamp: u64,
}

/// One destination.
#[derive(Debug, Default)]
struct Dest {
    /// Total request bits/s.
    bps: Baseline,
    /// Total request packets/s.
    pps: Baseline,
    /// Distinct tracked sources per sample.
    distinct: Baseline,
    /// Share of the bytes from untracked sources (`other`).
    other: Baseline,
    /// This sample's total bits/s (valid when `stamp` is the tick).
    now_bps: f64,
    /// This sample's total packets/s.
    now_pps: f64,
    /// This sample's distinct tracked sources.
    now_distinct: u32,
    /// This sample's bits/s from `other`.
    now_other_bps: f64,
    /// This sample's packets/s from `other`.
    now_other_pps: f64,
    /// The tick of the last sample with traffic.
    stamp: u64,
    /// This sample's protocols and ports (from the pairs).
    mix: Mix,
    /// Tracked sources by address.
    sources: HashMap<String, Source>,
    /// Highest total bits/s per 10 s over the last minute: an onset must
    /// be a step above it.
    max_bps: RecentMax,
    /// Highest total packets/s likewise.
    max_pps: RecentMax,
    /// The sources the open event names (its `from`), at most
    /// [`MAX_FROM`]: a source that takes over during the episode is added.
    from: Vec<String>,
    /// The open event's `evidence.sources`, by source, at most
    /// [`MAX_FROM`] (plus `other`).
    listed: Vec<Value>,
    /// Heavy sources seen during the open episode beyond [`MAX_FROM`], by
    /// name (at most [`MAX_SOURCES_PER_DEST`], then only counted).
    more: HashSet<String>,
    /// Heavy sources beyond [`MAX_FROM`]: `more`'s size, or more.
    more_n: usize,
    /// Hysteresis.
    ep: Episode,
}

/// A named source in an event.
struct Named {
    /// The address (or `other`).
    source: String,
    /// Its bits/s now.
    bps: f64,
    /// Its packets/s now.
    pps: f64,
    /// The baseline of its bits/s.
    base_bps: f64,
    /// The baseline of its packets/s.
    base_pps: f64,
}

/// The DoS detector's state.
#[derive(Debug, Default)]
pub struct Dos {
    /// Destinations by name.
    dests: HashMap<String, Dest>,
    /// Sources kept over all destinations.
    sources: usize,
}

impl Dos {
    /// Looks at one sample, `tick` counting samples.
    pub fn observe(&mut self, s: &Sample, tick: u64) -> Vec<Found> {
        let mut found = Vec::new();
        if !(s.dt > 0.0 && s.dt.is_finite()) {
            return found;
        }
        for x in &s.sources {
            let (bps, pps) = (x.req_bytes as f64 * 8.0 / s.dt, x.req_pkts as f64 / s.dt);
            if !self.dests.contains_key(&x.to) {
                let before = self.dests.len();
                make_room(
                    &mut self.dests,
                    MAX_DESTS,
                    |d| d.bps.mean(),
                    |d| d.ep.open(),
                );
                if self.dests.len() != before {
                    self.sources = self.dests.values().map(|d| d.sources.len()).sum();
                }
                if self.dests.len() >= MAX_DESTS {
                    continue;
                }
                self.dests.insert(x.to.clone(), Dest::default());
            }
            let Some(d) = self.dests.get_mut(&x.to) else {
                continue;
            };
            if d.stamp != tick {
                d.stamp = tick;
                d.now_bps = 0.0;
                d.now_pps = 0.0;
                d.now_distinct = 0;
                d.now_other_bps = 0.0;
                d.now_other_pps = 0.0;
                d.mix.clear();
            }
            d.now_bps += bps;
            d.now_pps += pps;
            if x.source == OTHER {
                d.now_other_bps += bps;
                d.now_other_pps += pps;
                continue;
            }
            d.now_distinct += 1;
            if !d.sources.contains_key(&x.source) {
                // Full (this destination, or all together): the smallest
                // of this destination's sources make room.
                let before = d.sources.len();
                let cap = if self.sources >= MAX_SOURCES {
                    before
                } else {
                    MAX_SOURCES_PER_DEST
                };
                make_room(&mut d.sources, cap, |v| v.bps.mean(), |_| false);
                self.sources -= before - d.sources.len();
                if self.sources >= MAX_SOURCES || d.sources.len() >= MAX_SOURCES_PER_DEST {
                    continue;
                }
                d.sources.insert(x.source.clone(), Source::default());
                self.sources += 1;
            }
            if let Some(v) = d.sources.get_mut(&x.source) {
                if v.stamp != tick {
                    v.stamp = tick;
                    v.now_bps = 0.0;
                    v.now_pps = 0.0;
                }
                v.now_bps += bps;
                v.now_pps += pps;
            }
        }
        for p in &s.pairs {
            if let Some(d) = self.dests.get_mut(&p.to) {
                if d.stamp == tick {
                    d.mix.add(p.proto, p.port, p.d.req_bytes);
                }
            }
        }
        for (to, d) in &mut self.dests {
            if d.stamp != tick {
                d.now_bps = 0.0;
                d.now_pps = 0.0;
                d.now_distinct = 0;
                d.now_other_bps = 0.0;
                d.now_other_pps = 0.0;
            }
            let verdict = judge(d, tick);
            let up_bps =
                d.now_bps >= BPS_FLOOR / 2.0 && d.bps.far_above(d.now_bps, END_RATIO, END_K);
            let up_pps =
                d.now_pps >= PPS_FLOOR / 2.0 && d.pps.far_above(d.now_pps, END_RATIO, END_K);
            // The sample that would open the episode must be a step above
            // the last minute's highest total, not the next value of a ramp.
            let verdict = verdict.filter(|v| {
                !d.ep.would_open(ONSET)
                    || if v.by_bps {
                        d.max_bps.stepped(d.now_bps)
                    } else {
                        d.max_pps.stepped(d.now_pps)
                    }
            });
            match d
                .ep
                .step(tick, verdict.is_some(), !(up_bps || up_pps), ONSET, CALM)
            {
                Step::Open => {
                    if let Some(v) = verdict {
                        let e = event(to, d, v, s.t);
                        d.from = e.from.clone();
                        d.listed = match e.evidence.get("sources") {
                            Some(Value::Array(a)) => a.clone(),
                            _ => Vec::new(),
                        };
                        d.more.clear();
                        d.more_n = 0;
                        found.push(Found::Started {
                            key: format!("dest:{to}"),
                            event: e,
                        });
                    }
                }
                Step::Nothing if d.ep.open() => {
                    // A flood that switches sources: the sources heavy now
                    // that the event does not name yet are added to it.
                    if let Some(v) = verdict {
                        if let Some(e) = update(to, d, v, s.t) {
                            found.push(Found::Updated {
                                key: format!("dest:{to}"),
                                event: e,
                            });
                        }
                    }
                }
                Step::Close { .. } => found.push(Found::Ended {
                    key: format!("dest:{to}"),
                    t: s.t,
                }),
                Step::Nothing => {}
            }
            // A total already up (a flood's first, partial second, whose
            // sources did not yet carry the share) is part of the rise, not
            // of the level the onset must step above.
            let rising = (d.now_bps >= BPS_FLOOR && d.bps.far_above(d.now_bps, RISE, K))
                || (d.now_pps >= PPS_FLOOR && d.pps.far_above(d.now_pps, RISE, K));
            learn(d, tick, rising);
        }
        if tick.is_multiple_of(16) {
            self.dests
                .retain(|_, d| tick.saturating_sub(d.stamp) < DEST_IDLE || d.ep.open());
            for d in self.dests.values_mut() {
                d.sources
                    .retain(|_, v| tick.saturating_sub(v.stamp) < SOURCE_IDLE);
            }
            self.sources = self.dests.values().map(|d| d.sources.len()).sum();
        }
        found
    }

    /// Destinations with an episode open or pending (for coherence).
    pub fn busy(&self, out: &mut HashSet<String>) {
        for (to, d) in &self.dests {
            if d.ep.frozen() {
                out.insert(to.clone());
            }
        }
    }

    /// Destinations and sources kept (for the bounded-state test).
    pub fn len(&self) -> (usize, usize) {
        (self.dests.len(), self.sources)
    }
}

/// What a hot sample found.
struct Verdict {
    /// The metric the total rose in: bits (`true`) or packets.
    by_bps: bool,
    /// Case (b).
    crowd: bool,
    /// The sources to name, heaviest first.
    named: Vec<Named>,
}

/// Whether the pattern holds in this sample.
fn judge(d: &Dest, tick: u64) -> Option<Verdict> {
    let up_bps = d.now_bps >= BPS_FLOOR && d.bps.far_above(d.now_bps, RISE, K);
    let up_pps = d.now_pps >= PPS_FLOOR && d.pps.far_above(d.now_pps, RISE, K);
    if !(up_bps || up_pps) {
        return None;
    }
    let by_bps = up_bps;
    // The typical tracked source (the `other` share set apart), and the
    // bar for a new one: far above it, and a sizeable share of the
    // destination's baseline by itself.
    let tracked = (1.0 - d.other.mean()).clamp(0.0, 1.0) / d.distinct.mean().max(1.0);
    let new_bps = (NEW_TYPICAL * tracked).max(NEW_SHARE) * d.bps.mean();
    let new_pps = (NEW_TYPICAL * tracked).max(NEW_SHARE) * d.pps.mean();
    let mut heavy: Vec<Named> = Vec::new();
    for (k, v) in d.sources.iter().filter(|(_, v)| v.stamp == tick) {
        // The baseline as of this tick: absent samples count as zeros.
        let (mut b, mut p) = (v.bps, v.pps);
        b.skip_to(tick);
        p.skip_to(tick);
        // The destination's main client sending more is a spike or a
        // collapse, not a set of sources coming to dominate it.
        let was_dominant =
            b.warm() && d.bps.mean() > 0.0 && b.mean() >= WAS_DOMINANT * d.bps.mean();
        let is_heavy = if was_dominant {
            false
        } else if b.warm() {
            (v.now_bps >= SOURCE_BPS_FLOOR && b.far_above(v.now_bps, SOURCE_RATIO, K))
                || (v.now_pps >= SOURCE_PPS_FLOOR && p.far_above(v.now_pps, SOURCE_RATIO, K))
        } else {
            (v.now_bps >= SOURCE_BPS_FLOOR && v.now_bps >= new_bps)
                || (v.now_pps >= SOURCE_PPS_FLOOR && v.now_pps >= new_pps)
        };
        if is_heavy {
            heavy.push(Named {
                source: k.clone(),
                bps: v.now_bps,
                pps: v.now_pps,
                base_bps: b.mean(),
                base_pps: p.mean(),
            });
        }
    }
    let share = |named: &[Named]| {
        if by_bps {
            named.iter().map(|n| n.bps).sum::<f64>() / d.now_bps.max(f64::MIN_POSITIVE)
        } else {
            named.iter().map(|n| n.pps).sum::<f64>() / d.now_pps.max(f64::MIN_POSITIVE)
        }
    };
    if !heavy.is_empty() && heavy.len() <= FEW && share(&heavy) >= SHARE {
        heavy.sort_by(|a, b| {
            b.bps
                .total_cmp(&a.bps)
                .then_with(|| a.source.cmp(&b.source))
        });
        return Some(Verdict {
            by_bps,
            crowd: false,
            named: heavy,
        });
    }
    let rise2 = (up_bps && d.bps.far_above(d.now_bps, CROWD_RISE, K))
        || (up_pps && d.pps.far_above(d.now_pps, CROWD_RISE, K));
    let distinct = f64::from(d.now_distinct);
    let more_sources =
        d.distinct.warm() && distinct >= CROWD_SOURCES * d.distinct.mean() + CROWD_EXTRA;
    let other_now = d.now_other_bps / d.now_bps.max(f64::MIN_POSITIVE);
    let more_other =
        d.other.warm() && other_now >= OTHER_SHARE && other_now >= d.other.mean() + OTHER_RISE;
    if !(rise2 && (more_sources || more_other)) {
        return None;
    }
    // Name the busiest sources of the crowd: new ones, or ones at least
    // CROWD_MEMBER times their own baseline (the regular clients sending
    // as usual are not in it); and `other`, if it sent.
    let mut named: Vec<Named> = d
        .sources
        .iter()
        .filter(|(_, v)| v.stamp == tick)
        .filter_map(|(k, v)| {
            let (mut b, mut p) = (v.bps, v.pps);
            b.skip_to(tick);
            p.skip_to(tick);
            let member = !b.warm() || v.now_bps >= CROWD_MEMBER * b.mean();
            member.then(|| Named {
                source: k.clone(),
                bps: v.now_bps,
                pps: v.now_pps,
                base_bps: b.mean(),
                base_pps: p.mean(),
            })
        })
        .collect();
    named.sort_by(|a, b| {
        b.bps
            .total_cmp(&a.bps)
            .then_with(|| a.source.cmp(&b.source))
    });
    named.truncate(CROWD_NAMED);
    if d.now_other_bps > 0.0 {
        named.push(Named {
            source: OTHER.to_string(),
            bps: d.now_other_bps,
            pps: d.now_other_pps,
            base_bps: d.other.mean() * d.bps.mean(),
            base_pps: d.other.mean() * d.pps.mean(),
        });
    }
    Some(Verdict {
        by_bps,
        crowd: true,
        named,
    })
}

/// Learns the sample, unless an episode is open or pending; the last
/// minute's highest total does not learn a `rising` one.
fn learn(d: &mut Dest, tick: u64, rising: bool) {
    if d.ep.frozen() {
        for b in [&mut d.bps, &mut d.pps, &mut d.distinct] {
            b.hold(tick);
        }
        d.max_bps.hold(d.now_bps);
        d.max_pps.hold(d.now_pps);
        for v in d.sources.values_mut().filter(|v| v.stamp == tick) {
            v.bps.hold(tick);
            v.pps.hold(tick);
        }
        return;
    }
    d.bps.learn(d.now_bps, tick);
    d.pps.learn(d.now_pps, tick);
    if rising {
        d.max_bps.hold(d.now_bps);
        d.max_pps.hold(d.now_pps);
    } else {
        d.max_bps.learn(d.now_bps, tick);
        d.max_pps.learn(d.now_pps, tick);
    }
    d.distinct.learn(f64::from(d.now_distinct), tick);
    if d.now_bps > 0.0 {
        d.other.learn_sparse(d.now_other_bps / d.now_bps);
    }
    for v in d.sources.values_mut().filter(|v| v.stamp == tick) {
        v.bps.learn(v.now_bps, tick);
        v.pps.learn(v.now_pps, tick);
    }
}

/// The open event of a destination's flood with the sources heavy now
/// merged in, when some of them are new to it: `None` when it names them
/// all already. Sources named earlier stay, with their numbers of then.
fn update(to: &str, d: &mut Dest, v: Verdict, t: u64) -> Option<Event> {
    let mut e = event(to, d, v, t);
    let fresh: Vec<String> = e
        .from
        .iter()
        .filter(|n| !d.from.contains(n) && !d.more.contains(*n))
        .cloned()
        .collect();
    if fresh.is_empty() {
        return None;
    }
    let now = match e.evidence.get("sources") {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let name = |x: &Value| x.get("source").and_then(Value::as_str).map(str::to_string);
    // The sources heavy now first, with today's numbers, then the earlier
    // ones not heavy any more.
    let mut listed = now.clone();
    listed.extend(
        d.listed
            .iter()
            .filter(|x| !now.iter().any(|y| name(y) == name(x)))
            .cloned(),
    );
    let others = listed
        .iter()
        .filter(|x| name(x).as_deref() == Some(OTHER))
        .count();
    listed.truncate(MAX_FROM + others);
    d.listed = listed;
    for n in fresh {
        if d.from.len() < MAX_FROM {
            d.from.push(n);
        } else {
            d.more_n += 1;
            if d.more.len() < MAX_SOURCES_PER_DEST {
                d.more.insert(n);
            }
        }
    }
    e.from = d.from.clone();
    e.evidence
        .insert("sources".into(), Value::Array(d.listed.clone()));
    e.evidence.insert("more_sources".into(), json!(d.more_n));
    e.summary = format!(
        "{}; the flood switched sources: {} named since it started{}",
        e.summary,
        d.from.len(),
        if d.more_n > 0 {
            format!(" and {} more", d.more_n)
        } else {
            String::new()
        }
    );
    Some(e)
}

/// The event of a destination's flood.
fn event(to: &str, d: &Dest, v: Verdict, t: u64) -> Event {
    let (metric, b, now) = if v.by_bps {
        ("request_bps", &d.bps, d.now_bps)
    } else {
        ("request_pps", &d.pps, d.now_pps)
    };
    let share = |n: &Named| {
        if v.by_bps {
            n.bps / d.now_bps.max(f64::MIN_POSITIVE)
        } else {
            n.pps / d.now_pps.max(f64::MIN_POSITIVE)
        }
    };
    let mut ev = evidence::headline(metric, b, now);
    d.mix.put(&mut ev);
    ev.insert("request_bps".into(), evidence::pair(&d.bps, d.now_bps));
    ev.insert("request_pps".into(), evidence::pair(&d.pps, d.now_pps));
    let distinct = d.now_distinct + u32::from(d.now_other_bps > 0.0);
    ev.insert("distinct_sources".into(), json!(distinct));
    ev.insert(
        "baseline_distinct_sources".into(),
        json!(evidence::round(d.distinct.mean())),
    );
    ev.insert(
        "other_share".into(),
        json!(evidence::round(
            d.now_other_bps / d.now_bps.max(f64::MIN_POSITIVE)
        )),
    );
    ev.insert("crowd".into(), json!(v.crowd));
    let sources: Vec<Value> = v
        .named
        .iter()
        .map(|n| {
            json!({
                "source": n.source,
                "share": evidence::round(share(n)),
                "bps": evidence::round(n.bps),
                "pps": evidence::round(n.pps),
                "baseline_bps": evidence::round(n.base_bps),
                "baseline_pps": evidence::round(n.base_pps),
            })
        })
        .collect();
    ev.insert("sources".into(), Value::Array(sources));
    let total_share: f64 = v.named.iter().map(share).sum();
    let rate = if v.by_bps {
        evidence::bps(now)
    } else {
        evidence::pps(now, "pkt")
    };
    let summary = if v.crowd {
        format!(
            "a crowd floods {to}: {distinct} distinct sources (baseline {:.0}), {:.0}% untracked; {rate}, {} its baseline",
            d.distinct.mean(),
            d.now_other_bps / d.now_bps.max(f64::MIN_POSITIVE) * 100.0,
            evidence::factor(b, now),
        )
    } else {
        format!(
            "{} of {distinct} sources send {:.0}% of the traffic to {to}: {rate}, {} its baseline",
            v.named.len(),
            total_share * 100.0,
            evidence::factor(b, now),
        )
    };
    Event {
        id: String::new(),
        kind: EventKind::Dos,
        started: t,
        ended: None,
        from: {
            let mut from: Vec<String> = v
                .named
                .iter()
                .filter(|n| n.source != OTHER)
                .map(|n| n.source.clone())
                .collect();
            // A crowd all in `other` has no address to name: `other` says
            // who it is.
            if from.is_empty() && v.named.iter().any(|n| n.source == OTHER) {
                from.push(OTHER.to_string());
            }
            from
        },
        to: vec![to.to_string()],
        summary,
        evidence: ev,
    }
}

#[cfg(test)]
mod tests;
