//! Baselines: the history window a suggestion reads ([`Window`]), the
//! p95 of its series, the evidence's figures when the history has too
//! little, and the limit a baseline gives.

use super::*;

/// The history a suggestion may read: a copy of every series a baseline
/// could come from. Taking it is quick (the series' encoded bytes are
/// copied, not decoded), so the agent does it under the observer's lock
/// and decodes and builds the suggestion after: measured in a release
/// build for a crowd on a policy of 1,000 channels and 500 sets, each with
/// a series toward the destination, 2.2 to 6 ms to take the 500 series,
/// against 0.47 to 0.55 s to decode them and build the file.
#[derive(Debug, Default)]
pub struct Window {
    /// The series, as the history keeps them.
    pub(super) history: History,
}

impl Window {
    /// The series `suggest` may ask for: the event's channel, and each
    /// source (the event's `from`, its evidence's clients, every set of
    /// `policy` and `other`) toward each of its destinations.
    pub fn take(event: &Event, policy: &Policy, history: &History) -> Window {
        let clients = event
            .evidence
            .get("clients")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("from")?.as_str());
        let sources: Vec<&str> = event
            .from
            .iter()
            .map(String::as_str)
            .chain(clients)
            .chain(policy.endpoints.iter().map(|(n, _)| n.as_str()))
            .chain(std::iter::once(crate::observe::naming::OTHER))
            .collect();
        let mut keys: Vec<String> = event
            .evidence
            .get("channel")
            .and_then(Value::as_str)
            .map(String::from)
            .into_iter()
            .collect();
        for s in &sources {
            keys.extend(event.to.iter().map(|d| format!("{s}->{d}")));
        }
        Window {
            history: history.subset(keys.iter().map(String::as_str)),
        }
    }
}

/// Rates a baseline holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Rates {
    /// Request wire bits per second; `None` when unknown (the evidence
    /// gave packets only).
    pub(super) bps: Option<f64>,
    /// Request packets per second; 0 when unknown.
    pub(super) pps: f64,
    /// New TCP connections per second; `None` when unknown.
    pub(super) new_conns: Option<f64>,
}

impl Rates {
    pub(super) fn add(&mut self, o: Rates) {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.bps = sum(self.bps, o.bps);
        self.pps += o.pps;
        self.new_conns = sum(self.new_conns, o.new_conns);
    }

    /// Every rate times `k`.
    pub(super) fn scaled(self, k: f64) -> Rates {
        Rates {
            bps: self.bps.map(|b| b * k),
            pps: self.pps * k,
            new_conns: self.new_conns.map(|n| n * k),
        }
    }
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(bps) = self.bps {
            parts.push(format!("{}/s", Rate(bps)));
        }
        if self.pps > 0.0 {
            parts.push(format!("{:.1} packets/s", self.pps));
        }
        if let Some(n) = self.new_conns {
            parts.push(format!("{n:.1} new connections/s"));
        }
        if parts.is_empty() {
            parts.push("nothing known".into());
        }
        f.write_str(&parts.join(", "))
    }
}

impl Cx<'_> {
    /// `{"baseline": x, "now": y}`'s baseline.
    pub(super) fn baseline_of(&self, key: &str) -> Option<f64> {
        self.ev.get(key)?.get("baseline")?.as_f64()
    }

    /// The evidence's `baseline` as rates, when its `metric` is a rate in
    /// bits (`_bps`) or packets (`_pps`) per second.
    pub(super) fn evidence_rates(&self) -> Option<(Rates, String)> {
        let metric = self.text("metric")?;
        let b = self.num("baseline")?;
        let r = if metric.ends_with("_bps") {
            Rates {
                bps: Some(b),
                ..Rates::default()
            }
        } else if metric.ends_with("_pps") {
            Rates {
                pps: b,
                ..Rates::default()
            }
        } else {
            return None;
        };
        Some((r, format!("the event's baseline {metric}: {r}")))
    }

    /// The p95 of `metric` in series `key` over the window before the
    /// onset, and its number of points; `None` with too few points.
    pub(super) fn p95(&self, key: &str, metric: &str) -> Option<(f64, usize)> {
        self.p95_of(key, |p| p.get(metric)?.as_f64())
    }

    /// The p95 of `value` of each point of series `key` over the window
    /// before the onset (points without one do not count), and the number
    /// of points; `None` with fewer than [`MIN_POINTS`].
    pub(super) fn p95_of(
        &self,
        key: &str,
        value: impl Fn(&Map<String, Value>) -> Option<f64>,
    ) -> Option<(f64, usize)> {
        let end = self.event.started.saturating_sub(ONSET_S);
        let report = self.history.history.query(key, end, WINDOW_S)?;
        let mut v: Vec<f64> = report.points.iter().filter_map(value).collect();
        if v.len() < MIN_POINTS {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = (v.len() as f64 * 0.95).ceil() as usize;
        Some((v[rank.clamp(1, v.len()) - 1], v.len()))
    }

    /// The detector's baselines of the `{"baseline","now"}` pairs `bps`
    /// and `pps` (either may be missing); `None` without both.
    pub(super) fn evidence_pairs(&self, bps: &str, pps: &str) -> Option<(Rates, String)> {
        let r = Rates {
            bps: self.baseline_of(bps),
            pps: self.baseline_of(pps).unwrap_or(0.0),
            new_conns: None,
        };
        (r.bps.is_some() || r.pps > 0.0).then(|| {
            (
                r,
                format!("the detector's baseline (its moving mean) of {bps} and {pps}: {r}"),
            )
        })
    }

    /// The baseline of `source` toward every destination name, from the
    /// history of each `source->dest` pair; `None` if a pair lacks one.
    pub(super) fn pair_history(
        &self,
        source: &str,
        dests: &[String],
        tcp: bool,
    ) -> Option<(Rates, String)> {
        let mut r = Rates::default();
        let mut points = usize::MAX;
        let mut keys = Vec::new();
        for d in dests {
            let key = format!("{source}->{d}");
            let (bps, n) = self.p95(&key, "request_bps")?;
            let (pps, _) = self.p95(&key, "request_pps")?;
            let conns = if tcp {
                self.p95(&key, "new_connections_per_s").map(|x| x.0)
            } else {
                None
            };
            r.add(Rates {
                bps: Some(bps),
                pps,
                new_conns: conns,
            });
            points = points.min(n);
            keys.push(format!("`{key}`"));
        }
        Some((
            r,
            format!(
                "p95 of {points} s of {} history before the onset",
                keys.join(" + ")
            ),
        ))
    }

    /// Per named source, its baseline: the history of its pairs, else
    /// `fallback` (the evidence's figure for that source, with a label).
    pub(super) fn per_source(
        &self,
        named: &[String],
        dests: &[String],
        tcp: bool,
        fallback: impl Fn(&str) -> Option<(Rates, &'static str)>,
    ) -> (Rates, Vec<String>) {
        let mut total = Rates::default();
        let mut lines = Vec::new();
        for (i, s) in named.iter().enumerate() {
            let (r, how) = match self.pair_history(s, dests, tcp) {
                Some(x) => x,
                None => match fallback(s) {
                    Some((r, label)) => (
                        r,
                        match self.set_of(s) {
                            // The map names the address by its set: its
                            // history is the whole set's.
                            Some(set) => format!(
                                "{label}; its history is the whole set's, `{set}->{}`",
                                dests.join("|")
                            ),
                            None => format!(
                                "{label}; the history has no {MIN_POINTS} s of `{s}->{}` before the onset",
                                dests.join("|")
                            ),
                        },
                    ),
                    None => (
                        Rates::default(),
                        "no baseline in the history or the evidence: a new source, held to the floor".into(),
                    ),
                },
            };
            total.add(r);
            if i < SHOWN {
                lines.push(format!("  {s}: {r} ({how})"));
            }
        }
        if named.len() > SHOWN {
            lines.push(format!("  ... and {} more sources", named.len() - SHOWN));
        }
        (total, lines)
    }

    /// The live set the interaction map names address `name` by (the most
    /// specific that holds it, the first in file order among equals), if
    /// `name` is an address in one.
    pub(super) fn set_of(&self, name: &str) -> Option<&str> {
        let Resolved::Net(net) = self.resolve(name) else {
            return None;
        };
        let mut best: Option<(&str, u8)> = None;
        for (set, nets) in &self.policy.endpoints {
            let len = nets
                .iter()
                .filter(|n| n.contains(&net))
                .map(IpNet::prefix_len)
                .max();
            if let Some(len) = len.filter(|l| best.is_none_or(|(_, b)| *l > b)) {
                best = Some((set, len));
            }
        }
        best.map(|(s, _)| s)
    }

    /// The destination's total baseline, for holding everyone: first the
    /// history (the p95 of every set's, and `other`'s, pair toward it,
    /// summed), else the detector's figures in the evidence.
    pub(super) fn destination_total(&self, dests: &[String], tcp: bool) -> (Rates, Vec<String>) {
        let mut total = Rates::default();
        let mut lines = Vec::new();
        let froms = self
            .policy
            .endpoints
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(std::iter::once(crate::observe::naming::OTHER));
        for f in froms {
            if let Some((r, how)) = self.pair_history(f, dests, tcp) {
                total.add(r);
                lines.push(format!("  {f}: {r} ({how})"));
            }
        }
        if !lines.is_empty() {
            lines.push(format!("  together: {total}"));
            lines.push(
                "  (sources the history keeps by address, outside every set, are not in this sum)"
                    .into(),
            );
            return (total, lines);
        }
        // No history: a flood's or a collapse's evidence is about the
        // destination as a whole; a spike's is about one interaction only.
        let pairs = if self.event.kind != EventKind::Spike {
            self.evidence_pairs("request_bps", "request_pps")
        } else {
            None
        };
        match pairs.or_else(|| self.evidence_rates()) {
            Some((r, how)) => (
                r,
                vec![format!(
                    "  no {MIN_POINTS} s of history toward the destination before the onset: {how}"
                )],
            ),
            None => (
                Rates::default(),
                vec!["  no history toward the destination and no rate in the evidence: held to the floor".into()],
            ),
        }
    }
}

/// The limit for a baseline, and what it holds to, as text
/// (`bandwidth 233kbit, packets 58/s`).
pub(super) fn limit_for(b: Rates, tcp: bool) -> (Limit, String) {
    let mut limit = Limit::default();
    let mut out = Vec::new();
    // A bandwidth when the baseline has one, or has nothing at all (the
    // floor); not when it knows packets only.
    if b.bps.is_some() || b.pps <= 0.0 {
        let bps = round_up(b.bps.unwrap_or(0.0) * HEADROOM).clamp(MIN_RATE_BPS, MAX_RATE_BPS);
        limit.bandwidth_bps = Some(bps);
        limit.burst_bytes = render::default_burst(bps, false);
        out.push(format!("bandwidth {}", render::rate(bps)));
    }
    if b.pps > 0.0 {
        let p = round_up(b.pps * HEADROOM).clamp(1, MAX_PACKETS);
        limit.packets = Some(p);
        limit.packet_burst = render::default_packet_burst(p);
        out.push(format!("packets {p}/s"));
    }
    if let Some(n) = b.new_conns.filter(|_| tcp) {
        let n = round_up(n * HEADROOM).clamp(1, u64::from(MAX_NEW_CONNECTIONS)) as u32;
        limit.new_connections = Some(n);
        limit.new_connection_burst = render::default_new_connection_burst(n);
        out.push(format!("new connections {n}/s"));
    }
    (limit, out.join(", "))
}

/// How the limit came from the baseline, for a channel's comment.
pub(super) fn derivation(summary: &str) -> Vec<String> {
    vec![
        format!("  limit = baseline x {HEADROOM} headroom, rounded up to 3 digits: {summary}"),
        format!(
            "  (never below the validator's minimums: {} bandwidth, 1 packet/s, 1 new connection/s)",
            render::rate(MIN_RATE_BPS)
        ),
    ]
}

/// `x` rounded up to an integer of at most three significant digits.
pub(super) fn round_up(x: f64) -> u64 {
    if !x.is_finite() || x <= 0.0 {
        return 0;
    }
    let n = x.ceil() as u64;
    let digits = n.checked_ilog10().unwrap_or(0) + 1;
    if digits <= 3 {
        return n;
    }
    let m = 10u64.pow(digits - 3);
    n.div_ceil(m) * m
}
