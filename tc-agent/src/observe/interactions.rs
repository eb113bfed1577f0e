//! Interactions as the agent keeps them: every sample reads the kernel's
//! table, turns each entry's counters into a delta, names both sides by the
//! live policy's endpoint sets, and keeps
//! - per raw entry, the last few deltas (top talkers are single addresses);
//! - per interaction between names, totals since the agent started
//!   (`/metrics`) and the last few deltas (`map`).
//!
//! It also looks after the kernel table: idle entries go, and when it
//! fills, the smallest go and the admission threshold rises, so that heavy
//! sources always find room (see `tc-ebpf/src/account.rs`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Instant,
};

use tc_common::{IxCounters, IxKey};

use self::departed::{add4, Departed};
use super::{
    naming::{addr_of, is_untracked, Filter, Name, Namer, OTHER},
    InteractionTotals,
};
use crate::{
    control::{InteractionRow, InteractionTable, MapReport, Talker, TopTalkersReport},
    detect::{PairSample, SourceSample},
};

/// Samples a window spans: `map` and `top-talkers` average over the last
/// five (five seconds at the default sampling period).
pub const WINDOW: usize = 5;
/// A kernel entry without traffic for this many samples is removed.
const IDLE_SAMPLES: u32 = 30;
/// Sketch units (64 bytes) the admission threshold starts at, and its cap.
const MIN_ADMIT: u32 = tc_common::IX_MIN_ADMIT_UNITS;
const MAX_ADMIT: u32 = 1 << 20;
/// Default bound on distinct unnamed addresses `map` shows (`--max-unnamed`).
pub const DEFAULT_MAX_UNNAMED: usize = 1000;
/// The aggregates keep this many times more unnamed addresses apart than
/// `map` shows, so that `map` can choose the busiest; memory stays bounded.
const KEPT_PER_SHOWN: usize = 4;
/// Interactions between names kept at most. Past it, a new one counts
/// with its unnamed sides as `other` and its port as 0 (all ports), so a
/// scan over every port of every address cannot grow the agent.
pub const MAX_AGGREGATES: usize = 16_384;

/// What one kernel entry's last samples said.
#[derive(Debug, Default)]
struct RawState {
    /// Its counters at the last read: the next delta starts there.
    last: IxCounters,
    /// Samples in a row without traffic.
    idle: u32,
    /// Its last deltas, newest last: request bytes, request packets,
    /// response bytes, response packets.
    recent: VecDeque<[u64; 4]>,
    /// Its aggregate, named once (the names only change with the policy).
    agg: Option<AggKey>,
}

/// An interaction between names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggKey {
    /// The clients' name (`other` for untracked ones).
    pub from: Name,
    /// The servers' name.
    pub to: Name,
    /// IP protocol.
    pub proto: u8,
    /// The server's port.
    pub port: u16,
}

/// An interaction between names: totals and recent deltas.
#[derive(Debug, Default)]
struct AggState {
    /// Since the agent started.
    totals: IxCounters,
    /// The last deltas, newest last, one per sample.
    recent: VecDeque<IxCounters>,
    /// This sample's delta, being summed.
    now: IxCounters,
}

/// The interaction view the agent keeps (see the module docs).
#[derive(Debug)]
pub struct Interactions {
    /// Names for the live policy.
    namer: Namer,
    /// Per kernel entry.
    raw: HashMap<IxKey, RawState>,
    /// Per interaction between names.
    aggs: HashMap<AggKey, AggState>,
    /// When the last samples were taken, newest last (one more than the window).
    times: VecDeque<Instant>,
    /// Bound on distinct unnamed addresses `map` shows; past it the
    /// smallest fold into `other`.
    max_unnamed: usize,
    /// The unnamed addresses kept apart in the aggregates (at most
    /// `KEPT_PER_SHOWN` times the shown bound; later ones count as `other`).
    unnamed: HashSet<Name>,
    /// The kernel table's size, fill and admission threshold.
    table: InteractionTable,
    /// Tracked clients' entries the last sample found new: admissions
    /// since the one before.
    admitted: usize,
    /// Whether the first read is done: the entries it finds (a pinned
    /// table after a restart) count from there, not from their creation,
    /// so a restart shows no spike.
    primed: bool,
    /// Final deltas of entries removed since the last sample, by
    /// aggregate: what they counted after the last read belongs to the
    /// next sample's `now`, so the detectors do not undercount under
    /// table churn.
    carry: HashMap<AggKey, IxCounters>,
    /// Likewise by (source, destination name): request packets, bytes.
    carry_sources: HashMap<(String, String), (u64, u64)>,
    /// The carried per-source counts of the current sample, for
    /// [`Interactions::detect_view`].
    gone_sources: HashMap<(String, String), (u64, u64)>,
    /// What entries gone from the kernel table counted in the window
    /// (see [`departed`]).
    departed: Departed,
}

/// One sample's interaction deltas by `FROM->TO` (endpoint sets or
/// addresses), for the history.
pub type PairDeltas = HashMap<String, IxCounters>;

impl Interactions {
    /// An empty view for a table of `size` entries.
    pub fn new(size: u32, max_unnamed: usize) -> Self {
        Self {
            namer: Namer::default(),
            raw: HashMap::new(),
            aggs: HashMap::new(),
            times: VecDeque::new(),
            max_unnamed,
            unnamed: HashSet::new(),
            table: InteractionTable {
                size,
                ..Default::default()
            },
            admitted: 0,
            primed: false,
            carry: HashMap::new(),
            carry_sources: HashMap::new(),
            gone_sources: HashMap::new(),
            departed: Departed::new(size as usize),
        }
    }

    /// Takes the live policy's endpoint sets: names are found again.
    pub fn set_policy(&mut self, sets: &[(String, Vec<ipnet::IpNet>)]) {
        self.namer = Namer::new(sets);
        for r in self.raw.values_mut() {
            r.agg = None;
        }
    }

    /// The namer of the live policy (for filters).
    pub fn namer(&self) -> &Namer {
        &self.namer
    }

    /// Folds one read of the kernel table in, taken at `at`. Returns the
    /// deltas by pair of names for the history, and what the kernel table
    /// needs: keys to remove and the new admission threshold.
    pub fn sample(
        &mut self,
        entries: Vec<(IxKey, IxCounters)>,
        at: Instant,
        folded_pkts: u64,
    ) -> (PairDeltas, Housekeeping) {
        self.times.push_back(at);
        while self.times.len() > WINDOW + 1 {
            self.times.pop_front();
        }
        for a in self.aggs.values_mut() {
            a.now = IxCounters::default();
        }
        // What removed entries counted after their last read (their
        // totals have it already).
        for (agg, d) in self.carry.drain() {
            self.aggs.entry(agg).or_default().now.add(&d);
        }
        self.gone_sources = std::mem::take(&mut self.carry_sources);
        self.departed.advance();
        let mut present = HashSet::with_capacity(entries.len());
        let mut pairs = PairDeltas::new();
        self.admitted = 0;
        for (key, cum) in entries {
            present.insert(key);
            if !is_untracked(&key.client) && !self.raw.contains_key(&key) {
                self.admitted += 1;
            }
            let r = self.raw.entry(key).or_default();
            if !self.primed {
                r.last = cum;
            }
            let d = delta(&cum, &r.last);
            r.last = cum;
            r.idle = if d == IxCounters::default() {
                r.idle + 1
            } else {
                0
            };
            r.recent
                .push_back([d.req_bytes, d.req_pkts, d.resp_bytes, d.resp_pkts]);
            while r.recent.len() > WINDOW {
                r.recent.pop_front();
            }
            if r.agg.is_none() {
                r.agg = Some(AggKey {
                    from: if is_untracked(&key.client) {
                        Name::Unnamed(OTHER.into())
                    } else {
                        self.namer.name(addr_of(&key.client))
                    },
                    to: self.namer.name(addr_of(&key.server)),
                    proto: key.proto,
                    port: key.port,
                });
            }
            if d == IxCounters::default() {
                continue;
            }
            let agg = bound(
                r.agg.clone().expect("named above"),
                &mut self.unnamed,
                self.max_unnamed * KEPT_PER_SHOWN,
            );
            let agg = capped(agg, &self.aggs);
            let a = self.aggs.entry(agg).or_default();
            a.now.add(&d);
            a.totals.add(&d);
        }
        self.primed = true;
        // Entries gone from the kernel (removed, or a new table).
        let gone: Vec<IxKey> = self
            .raw
            .keys()
            .filter(|k| !present.contains(*k))
            .copied()
            .collect();
        for k in gone {
            if let Some(r) = self.raw.remove(&k) {
                // Its window ends a sample earlier than the kept entries'.
                self.departed.add(k, &r.recent, 1, [0; 4]);
            }
        }
        for (k, a) in self.aggs.iter_mut() {
            a.recent.push_back(a.now);
            while a.recent.len() > WINDOW {
                a.recent.pop_front();
            }
            // Every pair active in the window gets a point, zero included:
            // a pair that fell silent shows as zero, not as a gap.
            if a.recent.iter().any(|d| *d != IxCounters::default()) {
                pairs
                    .entry(format!("{}->{}", k.from.as_str(), k.to.as_str()))
                    .or_default()
                    .add(&a.now);
            }
        }
        self.table.entries = self.raw.len() as u32;
        self.table.folded_pkts = folded_pkts;
        let hk = self.housekeeping();
        self.table.admit_threshold_bytes = hk
            .admit_units
            .saturating_mul(tc_common::IX_SKETCH_UNIT as u32);
        (pairs, hk)
    }

    /// Idle entries go; a table past three quarters loses its smallest
    /// entries down to half, and the admission threshold doubles while it
    /// is past half full and still admitting quickly (more than 1/64 of
    /// its size since the last sample), holds while the table is past half
    /// full but no longer filling (a higher threshold would only shut out
    /// heavy sources that start later), and halves below half full.
    fn housekeeping(&mut self) -> Housekeeping {
        let size = self.table.size.max(1) as usize;
        let mut remove: Vec<IxKey> = self
            .raw
            .iter()
            .filter(|(_, r)| r.idle >= IDLE_SAMPLES)
            .map(|(k, _)| *k)
            .collect();
        let left = self.raw.len() - remove.len();
        if left > size * 3 / 4 {
            let gone: HashSet<IxKey> = remove.iter().copied().collect();
            let mut by_size: Vec<(u64, IxKey)> = self
                .raw
                .iter()
                .filter(|(k, _)| !gone.contains(k) && !is_untracked(&k.client))
                .map(|(k, r)| (r.recent.iter().map(|x| x[0] + x[2]).sum(), *k))
                .collect();
            by_size.sort_unstable_by_key(|(b, _)| *b);
            remove.extend(by_size.iter().take(left - size / 2).map(|(_, k)| *k));
        }
        let fill = self.raw.len().saturating_sub(remove.len());
        let units = self.table.admit_threshold_bytes / tc_common::IX_SKETCH_UNIT as u32;
        let admit_units = if self.raw.len() > size / 2 && self.admitted > size / 64 {
            (units * 2).clamp(MIN_ADMIT, MAX_ADMIT)
        } else if fill < size / 2 {
            if units / 2 < MIN_ADMIT {
                0
            } else {
                units / 2
            }
        } else {
            units
        };
        Housekeeping {
            remove,
            admit_units,
        }
    }

    /// The last sample as the detectors take it: every interaction between
    /// names with traffic, and per destination name every source address
    /// (`other` for the untracked ones) with requests.
    pub fn detect_view(&self) -> (Vec<PairSample>, Vec<SourceSample>) {
        let pairs = self
            .aggs
            .iter()
            .filter(|(_, a)| a.now != IxCounters::default())
            .map(|(k, a)| PairSample {
                from: k.from.as_str().to_string(),
                to: k.to.as_str().to_string(),
                proto: k.proto,
                port: k.port,
                d: a.now,
            })
            .collect();
        let mut by_source: HashMap<(String, &str), (u64, u64)> = HashMap::new();
        for ((source, to), (pkts, bytes)) in &self.gone_sources {
            let e = by_source.entry((source.clone(), to.as_str())).or_default();
            e.0 += pkts;
            e.1 += bytes;
        }
        for (k, r) in &self.raw {
            let (Some(d), Some(agg)) = (r.recent.back(), r.agg.as_ref()) else {
                continue;
            };
            if d[0] == 0 && d[1] == 0 {
                continue;
            }
            let source = if is_untracked(&k.client) {
                OTHER.to_string()
            } else {
                addr_of(&k.client).to_string()
            };
            let e = by_source.entry((source, agg.to.as_str())).or_default();
            e.0 += d[1];
            e.1 += d[0];
        }
        let sources = by_source
            .into_iter()
            .map(|((source, to), (req_pkts, req_bytes))| SourceSample {
                source,
                to: to.to_string(),
                req_pkts,
                req_bytes,
            })
            .collect();
        (pairs, sources)
    }

    /// Seconds between the last two samples (0 before two exist).
    pub fn last_dt(&self) -> f64 {
        let n = self.times.len();
        if n < 2 {
            return 0.0;
        }
        (self.times[n - 1] - self.times[n - 2]).as_secs_f64()
    }

    /// Seconds the window spans now.
    fn window_s(&self) -> f64 {
        match (self.times.front(), self.times.back()) {
            (Some(a), Some(b)) if self.times.len() >= 2 => (*b - *a).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The interaction map over the window, busiest first.
    pub fn map(&self) -> MapReport {
        let w = self.window_s();
        let rows: Vec<InteractionRow> = self
            .aggs
            .iter()
            .filter_map(|(k, a)| {
                let mut sum = IxCounters::default();
                let n = a.recent.len().min(self.times.len().saturating_sub(1));
                for d in a.recent.iter().rev().take(n) {
                    sum.add(d);
                }
                if w <= 0.0 || sum == IxCounters::default() {
                    return None;
                }
                Some(InteractionRow {
                    from: k.from.as_str().to_string(),
                    to: k.to.as_str().to_string(),
                    protocol: protocol(k.proto).to_string(),
                    port: k.port,
                    request_bps: 8.0 * sum.req_bytes as f64 / w,
                    request_pps: sum.req_pkts as f64 / w,
                    response_bps: 8.0 * sum.resp_bytes as f64 / w,
                    response_pps: sum.resp_pkts as f64 / w,
                    open_connections: open(&a.totals),
                    new_connections_per_s: sum.syns as f64 / w,
                    handshake_rtt_us: (sum.rtt_count > 0)
                        .then(|| sum.rtt_sum_ns as f64 / sum.rtt_count as f64 / 1e3),
                    resets_per_s: sum.rsts as f64 / w,
                })
            })
            .collect();
        let mut rows = fold_smallest(rows, self.max_unnamed);
        rows.sort_by(|a, b| {
            (b.request_bps + b.response_bps)
                .total_cmp(&(a.request_bps + a.response_bps))
                .then_with(|| (&a.from, &a.to, a.port).cmp(&(&b.from, &b.to, b.port)))
        });
        MapReport {
            window_s: w,
            interactions: rows,
            table: self.table.clone(),
        }
    }

    /// Single sources by the traffic they sent over the window to
    /// destinations in `to`, from sources in `from`; busiest first.
    /// Untracked clients count in the total (so shares stay honest) under
    /// the source `other`.
    pub fn top_talkers(
        &self,
        to: Option<&Filter>,
        from: Option<&Filter>,
        n: usize,
    ) -> TopTalkersReport {
        let w = self.window_s();
        let mut by_source: HashMap<String, (u64, u64)> = HashMap::new();
        let mut total = 0u64;
        let n_recent = self.times.len().saturating_sub(1);
        let kept = self.raw.iter().map(|(k, r)| (k, &r.recent));
        let departed = self.departed.windows();
        for (k, recent) in kept.chain(departed) {
            let mut sum = [0u64; 4];
            for d in recent.iter().rev().take(n_recent) {
                add4(&mut sum, d);
            }
            if sum == [0; 4] {
                continue;
            }
            let server = addr_of(&k.server);
            let untracked = is_untracked(&k.client);
            let client = addr_of(&k.client);
            // The client's request, then the server's response.
            for (src, dst, bytes, pkts, src_known, dst_known) in [
                (client, server, sum[0], sum[1], !untracked, true),
                (server, client, sum[2], sum[3], true, !untracked),
            ] {
                if bytes == 0 {
                    continue;
                }
                if let Some(f) = to {
                    if !dst_known || !f.matches(dst, &self.namer) {
                        continue;
                    }
                }
                if let Some(f) = from {
                    if src_known && !f.matches(src, &self.namer) {
                        continue;
                    }
                }
                total += bytes;
                let name = if src_known {
                    src.to_string()
                } else {
                    OTHER.to_string()
                };
                let e = by_source.entry(name).or_default();
                e.0 += bytes;
                e.1 += pkts;
            }
        }
        let mut talkers: Vec<Talker> = by_source
            .into_iter()
            .filter(|(_, (b, _))| *b > 0)
            .map(|(source, (bytes, pkts))| Talker {
                source,
                bps: if w > 0.0 { 8.0 * bytes as f64 / w } else { 0.0 },
                pps: if w > 0.0 { pkts as f64 / w } else { 0.0 },
                share: if total > 0 {
                    bytes as f64 / total as f64
                } else {
                    0.0
                },
            })
            .collect();
        talkers.sort_by(|a, b| {
            b.bps
                .total_cmp(&a.bps)
                .then_with(|| a.source.cmp(&b.source))
        });
        talkers.truncate(n);
        TopTalkersReport {
            window_s: w,
            talkers,
        }
    }

    /// [`totals`](Self::totals) with every unnamed address as `other`:
    /// what `/metrics` exports, whose series must stay few whatever the
    /// traffic (endpoint sets only).
    pub fn totals_by_set(&self) -> Vec<InteractionTotals> {
        let mut merged: HashMap<(String, String, String, u16), InteractionTotals> = HashMap::new();
        for mut t in self.totals() {
            for n in [&mut t.from, &mut t.to] {
                if !self.namer.has_set(n) {
                    *n = OTHER.to_string();
                }
            }
            let k = (t.from.clone(), t.to.clone(), t.protocol.clone(), t.port);
            match merged.get_mut(&k) {
                None => {
                    merged.insert(k, t);
                }
                Some(m) => {
                    m.request_pkts += t.request_pkts;
                    m.request_bytes += t.request_bytes;
                    m.response_pkts += t.response_pkts;
                    m.response_bytes += t.response_bytes;
                    m.syns += t.syns;
                    m.synacks += t.synacks;
                    m.resets += t.resets;
                    m.fins += t.fins;
                }
            }
        }
        let mut v: Vec<InteractionTotals> = merged.into_values().collect();
        v.sort_by(|a, b| (&a.from, &a.to, a.port).cmp(&(&b.from, &b.to, b.port)));
        v
    }

    /// Totals per interaction between names since the agent started.
    pub fn totals(&self) -> Vec<InteractionTotals> {
        let mut v: Vec<InteractionTotals> = self
            .aggs
            .iter()
            .map(|(k, a)| InteractionTotals {
                from: k.from.as_str().to_string(),
                to: k.to.as_str().to_string(),
                protocol: protocol(k.proto).to_string(),
                port: k.port,
                request_pkts: a.totals.req_pkts,
                request_bytes: a.totals.req_bytes,
                response_pkts: a.totals.resp_pkts,
                response_bytes: a.totals.resp_bytes,
                syns: a.totals.syns,
                synacks: a.totals.synacks,
                resets: a.totals.rsts,
                fins: a.totals.fins,
            })
            .collect();
        v.sort_by(|a, b| (&a.from, &a.to, a.port).cmp(&(&b.from, &b.to, b.port)));
        v
    }

    /// Folds in the final counters of entries the kernel table just
    /// removed (what they counted since the last read) and forgets them:
    /// into the totals now, and into the next sample's deltas (the
    /// aggregates' `now` and the per-source view the detectors read).
    pub fn removed(&mut self, finals: Vec<(IxKey, IxCounters)>) {
        for (k, cum) in finals {
            let Some(r) = self.raw.remove(&k) else {
                continue;
            };
            let d = delta(&cum, &r.last);
            let next = [d.req_bytes, d.req_pkts, d.resp_bytes, d.resp_pkts];
            self.departed.add(k, &r.recent, 0, next);
            if d == IxCounters::default() {
                continue;
            }
            if let Some(agg) = r.agg {
                let source = if is_untracked(&k.client) {
                    OTHER.to_string()
                } else {
                    addr_of(&k.client).to_string()
                };
                let e = self
                    .carry_sources
                    .entry((source, agg.to.as_str().to_string()))
                    .or_default();
                e.0 += d.req_pkts;
                e.1 += d.req_bytes;
                let agg = bound(agg, &mut self.unnamed, self.max_unnamed * KEPT_PER_SHOWN);
                let agg = capped(agg, &self.aggs);
                // Counted now in the totals, and in the next sample's
                // `now` (and so its window slot and the detectors' view).
                self.aggs.entry(agg.clone()).or_default().totals.add(&d);
                self.carry.entry(agg).or_default().add(&d);
            }
        }
        self.table.entries = self.raw.len() as u32;
    }

    /// The kernel table's state.
    pub fn table(&self) -> &InteractionTable {
        &self.table
    }
}

/// What the kernel table needs after a sample.
#[derive(Debug, Default)]
pub struct Housekeeping {
    /// Entries to remove: idle, or the smallest under pressure.
    pub remove: Vec<IxKey>,
    /// The admission threshold to set, in sketch units.
    pub admit_units: u32,
}

/// `now - before`, field by field; an entry that restarted (removed and
/// created again) counts from zero.
fn delta(now: &IxCounters, before: &IxCounters) -> IxCounters {
    if now.req_pkts < before.req_pkts || now.resp_pkts < before.resp_pkts {
        return *now;
    }
    IxCounters {
        req_pkts: now.req_pkts - before.req_pkts,
        req_bytes: now.req_bytes.saturating_sub(before.req_bytes),
        resp_pkts: now.resp_pkts - before.resp_pkts,
        resp_bytes: now.resp_bytes.saturating_sub(before.resp_bytes),
        syns: now.syns.saturating_sub(before.syns),
        synacks: now.synacks.saturating_sub(before.synacks),
        rsts: now.rsts.saturating_sub(before.rsts),
        fins: now.fins.saturating_sub(before.fins),
        rtt_sum_ns: now.rtt_sum_ns.saturating_sub(before.rtt_sum_ns),
        rtt_count: now.rtt_count.saturating_sub(before.rtt_count),
    }
}

/// Connections open as this node saw them: answered handshakes minus
/// closes (a FIN from each side, or an RST). An estimate: a connection
/// opened before the agent started, or closed by a lost packet, skews it.
fn open(t: &IxCounters) -> u64 {
    t.synacks.saturating_sub(t.fins / 2 + t.rsts)
}

/// The protocol's name in `map`.
pub fn protocol(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

/// Whether a name is an unnamed address (not a set, not `other`).
fn is_unnamed(n: &Name) -> bool {
    matches!(n, Name::Unnamed(s) if s != OTHER)
}

/// An aggregate key with unnamed addresses past the bound (`cap` distinct
/// ones kept apart) renamed `other`.
fn bound(mut key: AggKey, kept: &mut HashSet<Name>, cap: usize) -> AggKey {
    for n in [&mut key.from, &mut key.to] {
        if is_unnamed(n) && !kept.contains(n) {
            if kept.len() < cap {
                kept.insert(n.clone());
            } else {
                *n = Name::Unnamed(OTHER.into());
            }
        }
    }
    key
}

/// `key` itself while the aggregates have room (or already hold it), else
/// with its unnamed sides as `other` and its port as 0.
fn capped(mut key: AggKey, aggs: &HashMap<AggKey, AggState>) -> AggKey {
    if aggs.len() < MAX_AGGREGATES || aggs.contains_key(&key) {
        return key;
    }
    for n in [&mut key.from, &mut key.to] {
        if matches!(n, Name::Unnamed(_)) {
            *n = Name::Unnamed(OTHER.into());
        }
    }
    key.port = 0;
    key
}

/// `map`'s rows with at most `max` distinct unnamed addresses: the
/// quietest of the others are folded into `other` (rows merged).
fn fold_smallest(rows: Vec<InteractionRow>, max: usize) -> Vec<InteractionRow> {
    let unnamed =
        |s: &str| s != OTHER && s.parse::<std::net::IpAddr>().is_ok() || s.ends_with("/64");
    let mut traffic: HashMap<String, f64> = HashMap::new();
    for r in &rows {
        for n in [&r.from, &r.to] {
            if unnamed(n) {
                *traffic.entry(n.clone()).or_default() += r.request_bps + r.response_bps;
            }
        }
    }
    if traffic.len() <= max {
        return rows;
    }
    let mut by: Vec<(String, f64)> = traffic.into_iter().collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let keep: HashSet<String> = by.into_iter().take(max).map(|(n, _)| n).collect();
    let mut merged: HashMap<(String, String, String, u16), InteractionRow> = HashMap::new();
    for mut r in rows {
        for n in [&mut r.from, &mut r.to] {
            if unnamed(n) && !keep.contains(n.as_str()) {
                *n = OTHER.to_string();
            }
        }
        let k = (r.from.clone(), r.to.clone(), r.protocol.clone(), r.port);
        match merged.get_mut(&k) {
            None => {
                merged.insert(k, r);
            }
            Some(m) => {
                let rtt = match (m.handshake_rtt_us, r.handshake_rtt_us) {
                    (Some(a), Some(b)) => {
                        let (wa, wb) = (m.new_connections_per_s, r.new_connections_per_s);
                        Some(if wa + wb > 0.0 {
                            (a * wa + b * wb) / (wa + wb)
                        } else {
                            (a + b) / 2.0
                        })
                    }
                    (a, b) => a.or(b),
                };
                m.request_bps += r.request_bps;
                m.request_pps += r.request_pps;
                m.response_bps += r.response_bps;
                m.response_pps += r.response_pps;
                m.open_connections += r.open_connections;
                m.new_connections_per_s += r.new_connections_per_s;
                m.resets_per_s += r.resets_per_s;
                m.handshake_rtt_us = rtt;
            }
        }
    }
    merged.into_values().collect()
}

mod departed;
#[cfg(test)]
mod tests;
