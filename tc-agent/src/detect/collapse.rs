//! `upstream_collapse`: demand into a destination rises while its responses
//! stop keeping up (Figures 1-2 of the seed).
//!
//! Per destination name (the pairs summed by `to`), each sample:
//!
//! - demand is up when request bits/s or packets/s is at least
//!   [`DEMAND_RATIO`] times its baseline and [`DEMAND_K`] deviations above
//!   it (and above the floors), or new connections (SYNs) per second over
//!   the last [`WINDOW`] samples at least [`CONN_RATIO`] times theirs and
//!   at least [`CONN_FLOOR`] (a client that opens more connections does so
//!   in a burst, then keeps them alive);
//! - the responses are not keeping up when one of these holds:
//!   - the response/request byte ratio is at most [`RATIO_DROP`] times its
//!     baseline (and [`DEMAND_K`] deviations under it);
//!   - over the last [`WINDOW`] samples, at least [`UNANSWERED`] of at
//!     least [`MIN_SYNS`] SYNs had no SYN-ACK, [`UNANSWERED_RISE`] more
//!     than usual;
//!   - the handshake RTT over the last [`WINDOW`] samples is at least
//!     [`RTT_RATIO`] times its baseline and [`RTT_MIN_RISE_US`] above it;
//!   - resets per second are at least [`RST_RATIO`] times their baseline
//!     and at least [`RST_FLOOR`].
//!
//!   The last two do not count while the agent's own channels toward the
//!   destination (those whose `to` covers it: an endpoint set within
//!   their networks, an address in them, or `any`) drop at least
//!   [`OWN_REFUSALS`] of their rate: a connection limit refuses a SYN
//!   with a reset and counts the SYN as dropped, and its refusals are no
//!   upstream's collapse. Drops of channels toward other destinations do
//!   not count.
//!
//! Both in [`ONSET`] samples in a row open an event, and in the sample that
//! opens it the rise in demand must be a step, not a ramp: at least
//! [`STEP`](super::baseline::STEP) times the highest value of the last
//! minute before the episode became pending
//! ([`RecentMax`]): a new service's clients
//! ramping up are no collapse; [`CALM`] samples in a
//! row without both end it. With keep-alive connections there are few
//! handshakes, so the ratio and the RTT matter most.
//!
//! The episode lasts as long as the pattern holds, with its baselines
//! frozen, however long.
//!
//! The event names the destination and the clients (the pairs' `from`)
//! whose request rate rose most over their own baselines, until they cover
//! [`COVER`] of the rise (at most [`MAX_CLIENTS`]).
//!
//! Coherence: a destination with a `dos` episode open or pending opens a
//! silent episode instead (a flood also makes responses fall behind, and
//! `dos` is the more specific finding).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use tc_common::IxCounters;

use super::{
    baseline::{Baseline, RecentMax},
    bucket::rate,
    episode::{Episode, Step},
    events::{Event, EventKind},
    evidence::{self, Mix},
    prune::make_room,
    scope::covers,
    spike::{BPS_FLOOR, PPS_FLOOR},
    Found, Sample,
};

/// Demand up: request rate at least this many times its baseline...
pub const DEMAND_RATIO: f64 = 1.5;
/// ... and this many deviations above it.
pub const DEMAND_K: f64 = 3.0;
/// Demand up: new connections/s at least this many times the baseline...
pub const CONN_RATIO: f64 = 2.0;
/// ... and at least this many per second.
pub const CONN_FLOOR: f64 = 5.0;
/// Responses behind: the response/request byte ratio at most this share of
/// its baseline. Demand up by [`DEMAND_RATIO`] with the responses flat puts
/// it at 0.67; the real squeezed nginx (`tests::a_squeezed_nginx_as_measured`,
/// demand 1.6x) measured 0.58-0.66, which 0.6 missed.
pub const RATIO_DROP: f64 = 0.75;
/// A response/request ratio under this is no answer to fall from.
pub const MIN_RATIO: f64 = 0.01;
/// Samples the handshake signals are summed over (handshakes are rare).
pub const WINDOW: usize = 3;
/// Responses behind: at least this share of SYNs unanswered...
pub const UNANSWERED: f64 = 0.5;
/// ... that much more than the baseline share...
pub const UNANSWERED_RISE: f64 = 0.3;
/// ... out of at least this many SYNs over the window.
pub const MIN_SYNS: u64 = 5;
/// Responses behind: handshake RTT at least this many times its baseline...
pub const RTT_RATIO: f64 = 3.0;
/// ... and at least this much above it (microseconds): a few tens of
/// microseconds tripling in a namespace is no collapse.
pub const RTT_MIN_RISE_US: f64 = 1000.0;
/// Responses behind: resets/s at least this many times the baseline...
pub const RST_RATIO: f64 = 3.0;
/// ... and at least this many per second.
pub const RST_FLOOR: f64 = 5.0;
/// Resets and unanswered SYNs are not the upstream's when the agent's own
/// channels drop at least this share of their summed rate. A connection
/// limit drops a refused SYN and answers it with a reset: one drop for one
/// unanswered SYN plus one reset, a share of 0.5, so the bar is half that.
pub const OWN_REFUSALS: f64 = 0.25;
/// Hot samples in a row that open an event (one more than `dos` needs, so
/// that a flood is called a flood).
pub const ONSET: u32 = 3;
/// Calm samples in a row that end it.
pub const CALM: u32 = 10;
/// Share of the rise in demand the named clients cover.
pub const COVER: f64 = 0.8;
/// Clients named at most.
pub const MAX_CLIENTS: usize = 10;
/// Samples without traffic after which a client is forgotten.
pub const CLIENT_IDLE: u64 = 300;
/// Samples without traffic after which a destination is forgotten.
pub const DEST_IDLE: u64 = 3600;
/// Destinations kept at most.
pub const MAX_DESTS: usize = 4096;
/// Clients kept per destination at most.
pub const MAX_CLIENTS_KEPT: usize = 1024;

/// One client's demand on one destination.
#[derive(Debug, Default)]
struct Client {
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
    /// Request bits/s.
    bps: Baseline,
    /// Request packets/s.
    pps: Baseline,
    /// New connections (SYNs) per second over the last [`WINDOW`] samples.
    conn: Baseline,
    /// Resets per second.
    rst: Baseline,
    /// Response/request bytes, over the samples with requests.
    ratio: Baseline,
    /// Handshake RTT in microseconds, over the windows with handshakes.
    rtt: Baseline,
    /// Unanswered share of SYNs, over the windows with enough SYNs.
    unanswered: Baseline,
    /// This sample's counters (valid when `stamp` is the tick).
    now: IxCounters,
    /// The last [`WINDOW`] samples' counters, for the handshake signals.
    window: [IxCounters; WINDOW],
    /// The tick of the last sample with traffic.
    stamp: u64,
    /// This sample's protocols and ports.
    mix: Mix,
    /// The clients by `from`.
    clients: HashMap<String, Client>,
    /// Highest request bits/s per 10 s over the last minute: a rise in
    /// demand must be a step above it, not a ramp.
    max_bps: RecentMax,
    /// Highest request packets/s likewise.
    max_pps: RecentMax,
    /// Highest new connections/s likewise.
    max_conn: RecentMax,
    /// Hysteresis.
    ep: Episode,
}

/// One sample's readings of a destination.
#[derive(Debug, Default)]
struct Reading {
    /// Request bits/s: demand.
    bps: f64,
    /// Request packets/s: demand.
    pps: f64,
    /// SYNs/s over the window: demand as new connections.
    conn: f64,
    /// Resets/s.
    rst: f64,
    /// Response/request bytes (unknown without requests).
    ratio: Option<f64>,
    /// Handshake RTT over the window, microseconds.
    rtt: Option<f64>,
    /// Unanswered share of the window's SYNs.
    unanswered: Option<f64>,
    /// Unanswered SYNs per second over the window.
    unanswered_per_s: f64,
}

/// The collapse detector's state.
#[derive(Debug, Default)]
pub struct Collapse {
    /// Destinations by name.
    dests: HashMap<String, Dest>,
}

impl Collapse {
    /// Looks at one sample, `tick` counting samples. `busy`: destinations
    /// where `dos` has an episode open or pending.
    pub fn observe(&mut self, s: &Sample, tick: u64, busy: &HashSet<String>) -> Vec<Found> {
        let mut found = Vec::new();
        if !(s.dt > 0.0 && s.dt.is_finite()) {
            return found;
        }
        for p in &s.pairs {
            if !self.dests.contains_key(&p.to) {
                make_room(
                    &mut self.dests,
                    MAX_DESTS,
                    |d| d.bps.mean(),
                    |d| d.ep.open(),
                );
                if self.dests.len() >= MAX_DESTS {
                    continue;
                }
                self.dests.insert(p.to.clone(), Dest::default());
            }
            let Some(d) = self.dests.get_mut(&p.to) else {
                continue;
            };
            if d.stamp != tick {
                d.stamp = tick;
                d.now = IxCounters::default();
                d.mix.clear();
            }
            d.now.add(&p.d);
            d.mix.add(p.proto, p.port, p.d.req_bytes);
            if !d.clients.contains_key(&p.from) {
                make_room(
                    &mut d.clients,
                    MAX_CLIENTS_KEPT,
                    |c| c.bps.mean(),
                    |_| false,
                );
                d.clients.insert(p.from.clone(), Client::default());
            }
            if let Some(c) = d.clients.get_mut(&p.from) {
                if c.stamp != tick {
                    c.stamp = tick;
                    c.now_bps = 0.0;
                    c.now_pps = 0.0;
                }
                c.now_bps += p.d.req_bytes as f64 * 8.0 / s.dt;
                c.now_pps += p.d.req_pkts as f64 / s.dt;
            }
        }
        for (to, d) in &mut self.dests {
            let now = if d.stamp == tick {
                d.now
            } else {
                IxCounters::default()
            };
            d.window.rotate_left(1);
            d.window[WINDOW - 1] = now;
            let mut r = read(&now, &d.window, s.dt);
            // Packets the agent's own channels toward this destination
            // dropped: a connection limit answers a refused SYN with a
            // reset and counts it here. A channel elsewhere does not hide
            // this destination's resets.
            let own_drops: f64 = s
                .channels
                .iter()
                .filter(|c| covers(&c.sides.to_nets, &c.sides.to_sets, to))
                .map(|c| rate(c.dropped_pps))
                .sum();
            if own_drops > 0.0 && own_drops >= OWN_REFUSALS * (r.rst + r.unanswered_per_s) {
                // The resets and the unanswered SYNs are ours, not the
                // upstream's.
                r.rst = 0.0;
                r.unanswered = None;
            }
            let (hot, metric) = judge(d, &r, d.ep.would_open(ONSET));
            match d.ep.step(tick, hot, !hot, ONSET, CALM) {
                Step::Open if busy.contains(to) => d.ep.shadow(),
                Step::Open => found.push(Found::Started {
                    key: format!("dest:{to}"),
                    event: event(to, d, &r, metric, tick, s.t),
                }),
                Step::Close { shadow: false } => found.push(Found::Ended {
                    key: format!("dest:{to}"),
                    t: s.t,
                }),
                Step::Close { shadow: true } | Step::Nothing => {}
            }
            learn(d, &r, tick);
        }
        if tick.is_multiple_of(16) {
            self.dests
                .retain(|_, d| tick.saturating_sub(d.stamp) < DEST_IDLE || d.ep.open());
            for d in self.dests.values_mut() {
                d.clients
                    .retain(|_, c| tick.saturating_sub(c.stamp) < CLIENT_IDLE);
            }
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

    /// Destinations and clients kept (for the bounded-state test).
    pub fn len(&self) -> (usize, usize) {
        (
            self.dests.len(),
            self.dests.values().map(|d| d.clients.len()).sum(),
        )
    }
}

/// The readings of one sample.
fn read(now: &IxCounters, window: &[IxCounters; WINDOW], dt: f64) -> Reading {
    let mut w = IxCounters::default();
    for c in window {
        w.add(c);
    }
    let bps = now.req_bytes as f64 * 8.0 / dt;
    Reading {
        bps,
        pps: now.req_pkts as f64 / dt,
        conn: w.syns as f64 / (WINDOW as f64 * dt),
        rst: now.rsts as f64 / dt,
        ratio: (bps >= BPS_FLOOR / 2.0 && now.req_bytes > 0)
            .then(|| now.resp_bytes as f64 / now.req_bytes as f64),
        rtt: (w.rtt_count >= 2).then(|| w.rtt_sum_ns as f64 / w.rtt_count as f64 / 1000.0),
        unanswered: (w.syns >= MIN_SYNS).then(|| 1.0 - (w.synacks as f64 / w.syns as f64).min(1.0)),
        unanswered_per_s: w.syns.saturating_sub(w.synacks) as f64 / (WINDOW as f64 * dt),
    }
}

/// Whether the pattern holds, and the demand metric that rose. `opening`:
/// the sample would open the episode, so the rise in demand must also be
/// a step above the last minute's maximum (a ramp is no onset).
fn judge(d: &Dest, r: &Reading, opening: bool) -> (bool, &'static str) {
    let step = |m: &RecentMax, x: f64| !opening || m.stepped(x);
    let demand = if r.bps >= BPS_FLOOR
        && d.bps.far_above(r.bps, DEMAND_RATIO, DEMAND_K)
        && step(&d.max_bps, r.bps)
    {
        Some("request_bps")
    } else if r.pps >= PPS_FLOOR
        && d.pps.far_above(r.pps, DEMAND_RATIO, DEMAND_K)
        && step(&d.max_pps, r.pps)
    {
        Some("request_pps")
    } else if r.conn >= CONN_FLOOR
        && d.conn.far_above(r.conn, CONN_RATIO, DEMAND_K)
        && step(&d.max_conn, r.conn)
    {
        Some("new_connections_per_s")
    } else {
        None
    };
    let Some(metric) = demand else {
        return (false, "request_bps");
    };
    // A destination that never answers (one-way UDP) has a ratio of zero
    // and no fall to see.
    let ratio = r.ratio.is_some_and(|x| {
        d.ratio.warm()
            && d.ratio.mean() >= MIN_RATIO
            && x < d.ratio.mean()
            && x <= RATIO_DROP * d.ratio.mean()
            && x <= d.ratio.mean() - DEMAND_K * d.ratio.dev()
    });
    let unanswered = r.unanswered.is_some_and(|x| {
        let base = if d.unanswered.warm() {
            d.unanswered.mean()
        } else {
            0.0
        };
        x >= UNANSWERED && x >= base + UNANSWERED_RISE
    });
    let rtt = r.rtt.is_some_and(|x| {
        d.rtt.warm() && x >= RTT_RATIO * d.rtt.mean() && x - d.rtt.mean() >= RTT_MIN_RISE_US
    });
    let rst = r.rst >= RST_FLOOR && d.rst.far_above(r.rst, RST_RATIO, DEMAND_K);
    (ratio || unanswered || rtt || rst, metric)
}

/// Learns the sample, unless an episode is open or pending.
fn learn(d: &mut Dest, r: &Reading, tick: u64) {
    if d.ep.frozen() {
        for b in [&mut d.bps, &mut d.pps, &mut d.conn, &mut d.rst] {
            b.hold(tick);
        }
        d.max_bps.hold(r.bps);
        d.max_pps.hold(r.pps);
        d.max_conn.hold(r.conn);
        for c in d.clients.values_mut().filter(|c| c.stamp == tick) {
            c.bps.hold(tick);
            c.pps.hold(tick);
        }
        return;
    }
    d.bps.learn(r.bps, tick);
    d.pps.learn(r.pps, tick);
    d.conn.learn(r.conn, tick);
    d.rst.learn(r.rst, tick);
    d.max_bps.learn(r.bps, tick);
    d.max_pps.learn(r.pps, tick);
    d.max_conn.learn(r.conn, tick);
    if let Some(x) = r.ratio {
        d.ratio.learn_sparse(x);
    }
    if let Some(x) = r.rtt {
        d.rtt.learn_sparse(x);
    }
    if let Some(x) = r.unanswered {
        d.unanswered.learn_sparse(x);
    }
    for c in d.clients.values_mut().filter(|c| c.stamp == tick) {
        c.bps.learn(c.now_bps, tick);
        c.pps.learn(c.now_pps, tick);
    }
}

/// A client named in an event: its name, its rates now and its baselines
/// as of this sample.
struct Driver<'a> {
    /// The client's `from`.
    from: &'a str,
    /// Request bits/s now.
    bps: f64,
    /// Request packets/s now.
    pps: f64,
    /// The baseline of its bits/s (absent samples counted as zeros).
    base_bps: f64,
    /// The baseline of its packets/s.
    base_pps: f64,
}

/// The clients that drive the rise: by rise over their own baseline, until
/// [`COVER`] of the total rise; by current rate when nobody rose.
fn drivers(d: &Dest, tick: u64) -> Vec<Driver<'_>> {
    let mut now: Vec<(Driver<'_>, f64)> = d
        .clients
        .iter()
        .filter(|(_, c)| c.stamp == tick)
        .map(|(k, c)| {
            let (mut b, mut p) = (c.bps, c.pps);
            b.skip_to(tick);
            p.skip_to(tick);
            let rise = (c.now_bps - b.mean()).max(0.0);
            let driver = Driver {
                from: k,
                bps: c.now_bps,
                pps: c.now_pps,
                base_bps: b.mean(),
                base_pps: p.mean(),
            };
            (driver, rise)
        })
        .collect();
    let mut total: f64 = now.iter().map(|x| x.1).sum();
    if total <= 0.0 {
        for x in &mut now {
            x.1 = x.0.bps;
        }
        total = now.iter().map(|x| x.1).sum();
    }
    now.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.from.cmp(b.0.from)));
    let mut out = Vec::new();
    let mut covered = 0.0;
    for (driver, rise) in now {
        if out.len() >= MAX_CLIENTS || (covered >= COVER * total && !out.is_empty()) {
            break;
        }
        covered += rise;
        out.push(driver);
    }
    out
}

/// The event of a destination's collapse.
fn event(to: &str, d: &Dest, r: &Reading, metric: &str, tick: u64, t: u64) -> Event {
    let (b, now) = match metric {
        "request_pps" => (&d.pps, r.pps),
        "new_connections_per_s" => (&d.conn, r.conn),
        _ => (&d.bps, r.bps),
    };
    let mut ev = evidence::headline(metric, b, now);
    d.mix.put(&mut ev);
    ev.insert("request_bps".into(), evidence::pair(&d.bps, r.bps));
    ev.insert("request_pps".into(), evidence::pair(&d.pps, r.pps));
    ev.insert(
        "response_ratio".into(),
        evidence::pair_opt(&d.ratio, r.ratio),
    );
    ev.insert("handshake_rtt_us".into(), evidence::pair_opt(&d.rtt, r.rtt));
    ev.insert("resets_per_s".into(), evidence::pair(&d.rst, r.rst));
    ev.insert(
        "new_connections_per_s".into(),
        evidence::pair(&d.conn, r.conn),
    );
    ev.insert(
        "unanswered_syns".into(),
        json!(r.unanswered.map(evidence::round)),
    );
    let clients = drivers(d, tick);
    let from: Vec<String> = clients.iter().map(|c| c.from.to_string()).collect();
    let list: Vec<Value> = clients
        .iter()
        .map(|c| {
            json!({
                "from": c.from,
                "request_bps": evidence::round(c.bps),
                "baseline_request_bps": evidence::round(c.base_bps),
                "request_pps": evidence::round(c.pps),
                "baseline_request_pps": evidence::round(c.base_pps),
            })
        })
        .collect();
    ev.insert("clients".into(), Value::Array(list));
    let mut why = Vec::new();
    if let Some(x) = r.ratio {
        why.push(format!(
            "response/request bytes {x:.2} (baseline {:.2})",
            d.ratio.mean()
        ));
    }
    if let Some(x) = r.rtt {
        why.push(format!(
            "handshake RTT {x:.0} us (baseline {:.0})",
            d.rtt.mean()
        ));
    }
    if let Some(x) = r.unanswered {
        why.push(format!("{:.0}% of SYNs unanswered", x * 100.0));
    }
    if r.rst > 0.0 {
        why.push(format!(
            "{} (baseline {:.1})",
            evidence::pps(r.rst, "reset"),
            d.rst.mean()
        ));
    }
    let summary = format!(
        "{to} is not keeping up: demand {} ({}: {}), {}; driven by {}",
        evidence::factor(b, now),
        metric,
        if metric == "request_bps" {
            evidence::bps(now)
        } else {
            format!("{now:.0}/s")
        },
        why.join(", "),
        from.join(", "),
    );
    Event {
        id: String::new(),
        kind: EventKind::UpstreamCollapse,
        started: t,
        ended: None,
        from,
        to: vec![to.to_string()],
        summary,
        evidence: ev,
    }
}

#[cfg(test)]
mod tests;
