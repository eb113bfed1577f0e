//! `suggest`: the policy that pushes back on an event, as a complete
//! policy file that `apply` takes unchanged.
//!
//! The file is the live policy, rendered from the validated model, plus
//! what holds the event's sources to their baseline:
//!
//! - `dos` with named sources: a set of the sources (reused when the event
//!   names a set) and, ahead of the live channels (the first match wins), a
//!   channel from that set to the destination that holds the sources
//!   *together* to the sum of their baselines. Every other source matches
//!   nothing new and goes on to the live channels as before.
//! - `dos` by a crowd that cannot be named (`crowd`, or only `other`): a
//!   channel from any address to the destination, at the destination's
//!   baseline: it holds everyone, and the comment says so.
//! - `spike` on an interaction: as a `dos` with named sources, the pair's
//!   sources toward its destination.
//! - `spike` on a channel: that channel's limit is set (or lowered) in
//!   place, not copied ahead: a copy with the same match would leave the
//!   live channel matching nothing (the validator warns it can never
//!   match), move its counters and history to a new name, and bypass its
//!   connection limits.
//! - `upstream_collapse`: the clients that drive the demand
//!   (`evidence.clients`) toward the destination, and for TCP their new
//!   connections per second too, which is what a squeezed server pays for.
//!
//! The hold goes on the hook (`direction`) of the first live channel that
//! carries all of its traffic, and is never looser than that channel's
//! enforced limits (it comes first, so it must not undo them). When no
//! live channel tells the hook, there are two holds, ingress and egress:
//! requests arrive at a server and leave a client, and a packet is charged
//! on one hook only, so the two hold the sources together on any node.
//!
//! A baseline is the 95th percentile of the 1 s history points in the
//! [`WINDOW_S`] seconds before the onset ([`ONSET_S`] before `started`,
//! since detection lags the onset), per `FROM->TO` pair (or channel); a
//! series with fewer than [`MIN_POINTS`] points falls back to the event's
//! evidence, and the comment says which was used. The limit is the
//! baseline times [`HEADROOM`], rounded up to three significant digits,
//! never below the validator's minimums. Whatever is built is validated
//! like any policy file before it is handed out.

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::{Event, EventKind};
use crate::{
    observe::history::History,
    policy::{
        render::{self, Notes},
        units::{Rate, MAX_RATE_BPS, MIN_RATE_BPS},
        Action, Channel, ConnAction, Direction, Limit, Mode, Policy, PolicyError, Protocol,
        MAX_NEW_CONNECTIONS, MAX_PACKETS,
    },
};

/// Seconds of history a baseline is taken over: long enough for a p95 to
/// mean something, short enough to be the traffic of the moment (the 1 s
/// history holds 15 minutes).
pub const WINDOW_S: u64 = 300;
/// Seconds before `started` left out of the baseline: an event opens up to
/// a few seconds after its onset, and the flood must not raise its own
/// limit.
pub const ONSET_S: u64 = 15;
/// Points a series needs in the window for its p95 to be used.
pub const MIN_POINTS: usize = 30;
/// The limit over the baseline: room for the ordinary swings of a p95
/// baseline (rates that wander ±30% stay under it), far below a flood.
pub const HEADROOM: f64 = 1.5;
/// What the live part of a suggestion is, said in its header: the agent
/// keeps the validated policy, not the operator's file.
const KEPT: &str = "(The live policy is written from the agent's validated copy: same sets and channels, the file's own comments and layout are not kept.)";
/// Sources listed one by one in a comment; the rest are counted.
const SHOWN: usize = 10;

/// Why no policy can be suggested for an event.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// Nothing in `to` is an address or a set of the live policy.
    #[error("event `{id}` names no destination a channel can match ({to}): no address or endpoint set of the live policy")]
    NoDestination {
        /// The event.
        id: String,
        /// Its `to`, as given.
        to: String,
    },
    /// A channel spike on a channel that the live policy no longer has.
    #[error("event `{id}` is about channel `{channel}`, which the live policy no longer has (it was replaced since); nothing to limit")]
    ChannelGone {
        /// The event.
        id: String,
        /// The channel it names.
        channel: String,
    },
    /// The evidence names no channel and no sources.
    #[error("event `{id}` has neither `evidence.channel` nor sources in `from`: nothing to hold")]
    NothingToHold {
        /// The event.
        id: String,
    },
    /// No room for the channels the suggestion adds.
    #[error("the live policy has {have} channels and the suggestion adds {add}; a policy holds at most {max}: remove a channel first, or limit the sources by hand")]
    PolicyFull {
        /// Channels in the live policy.
        have: usize,
        /// Channels the suggestion adds.
        add: usize,
        /// [`tc_common::MAX_CHANNELS`].
        max: usize,
    },
    /// The channel already holds the traffic at or below what the baseline gives.
    #[error("channel `{channel}` already holds its traffic at or below its baseline's limit ({limit}); nothing to tighten")]
    AlreadyHeld {
        /// The channel.
        channel: String,
        /// The limit the baseline gives, as text.
        limit: String,
    },
    /// Monitor mode asked for a channel that enforces a limit now.
    #[error("channel `{channel}` enforces a limit now: a monitor-mode suggestion would stop enforcing it; suggest without `--mode monitor`")]
    MonitorWouldRelax {
        /// The channel.
        channel: String,
    },
    /// What was built does not validate: a bug here, never handed out.
    #[error(
        "the suggested policy does not validate, so it is not handed out (a bug in suggest): {0}"
    )]
    Invalid(PolicyError),
    /// What was built does not fit the datapath's tables (the live policy
    /// is near them, and the hold's prefixes or ports tip it over).
    #[error("the suggested policy would not fit the datapath: {0}; limit the sources by hand, or make room in the live policy")]
    TooLarge(crate::policy::compile::CapacityError),
    /// What was built reads back to another live policy: a bug here.
    #[error("the suggested policy would change {0} of the live policy: not handed out (a bug in suggest)")]
    Changed(String),
}

/// A complete policy file: `policy` plus, ahead of its channels, an
/// endpoint set for the event's sources and a channel that holds them to
/// their baseline (from `history`), in `mode`; for a spike on a channel,
/// `policy` with that channel's limit set in place. The text has been
/// validated and compiled as `apply` will; an event that cannot be
/// answered (no destination, no room, nothing to tighten) is an error
/// that says why.
///
/// Costs a render, a parse and a compile of the whole policy (measured in
/// a release build: 72 µs for a policy of three channels; 386 ms for
/// 1,000 channels and two 32,000-prefix sets, 1.6 MB of text, where
/// parsing the live file alone takes 222 ms).
pub fn suggest(
    event: &Event,
    policy: &Policy,
    history: &History,
    mode: Mode,
) -> Result<String, SuggestError> {
    let cx = Cx {
        event,
        policy,
        history,
        ev: &event.evidence,
    };
    let plan = match event.kind {
        EventKind::Spike => match cx.text("channel").filter(|c| !c.is_empty()) {
            Some(channel) => return cx.tighten(channel, mode),
            None => cx.spike()?,
        },
        EventKind::Dos => cx.dos()?,
        EventKind::UpstreamCollapse => cx.collapse()?,
    };
    cx.hold(plan, mode)
}

/// Rates a baseline holds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rates {
    /// Request wire bits per second; `None` when unknown (the evidence
    /// gave packets only).
    bps: Option<f64>,
    /// Request packets per second; 0 when unknown.
    pps: f64,
    /// New TCP connections per second; `None` when unknown.
    new_conns: Option<f64>,
}

impl Rates {
    fn add(&mut self, o: Rates) {
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.bps = sum(self.bps, o.bps);
        self.pps += o.pps;
        self.new_conns = sum(self.new_conns, o.new_conns);
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

/// What to hold: built per kind, turned into a file by [`Cx::hold`].
struct Plan {
    /// The sources' prefixes; "any" when they cannot be named.
    from: Vec<IpNet>,
    /// The existing set that is exactly the sources, if the event named one.
    from_set: Option<String>,
    /// What the sources are, for the set's comment.
    sources: String,
    /// The destination's prefixes.
    to: Vec<IpNet>,
    /// The event's protocol, when single.
    protocol: Protocol,
    /// The event's port, when single.
    ports: Vec<(u16, u16)>,
    /// The baseline the limit comes from.
    baseline: Rates,
    /// How the baseline was found, for the channel's comment.
    why: Vec<String>,
}

/// One name of an event's `from` or `to`, resolved against the live policy.
enum Resolved {
    /// An endpoint set of the live policy.
    Set(String, Vec<IpNet>),
    /// An address (a host prefix) or an IPv6 /64.
    Net(IpNet),
    /// `other`, or a name the live policy no longer has.
    Unnamed,
}

/// What every step reads.
struct Cx<'a> {
    /// The event to push back on.
    event: &'a Event,
    /// The live policy: kept whole, its sets resolve the event's names.
    policy: &'a Policy,
    /// Where the baselines come from.
    history: &'a History,
    /// `event.evidence`.
    ev: &'a Map<String, Value>,
}

impl Cx<'_> {
    fn id(&self) -> &str {
        &self.event.id
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.ev.get(key)?.as_str()
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.ev.get(key)?.as_f64()
    }

    /// `{"baseline": x, "now": y}`'s baseline.
    fn baseline_of(&self, key: &str) -> Option<f64> {
        self.ev.get(key)?.get("baseline")?.as_f64()
    }

    /// The evidence's `baseline` as rates, when its `metric` is a rate in
    /// bits (`_bps`) or packets (`_pps`) per second.
    fn evidence_rates(&self) -> Option<(Rates, String)> {
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

    fn resolve(&self, name: &str) -> Resolved {
        if let Some((n, nets)) = self.policy.endpoints.iter().find(|(n, _)| n == name) {
            return Resolved::Set(n.clone(), nets.clone());
        }
        if let Ok(a) = name.parse::<std::net::IpAddr>() {
            return Resolved::Net(IpNet::from(a));
        }
        match name.parse::<IpNet>() {
            Ok(n) => Resolved::Net(n.trunc()),
            Err(_) => Resolved::Unnamed,
        }
    }

    /// The destination's prefixes and the names they came from.
    fn destination(&self) -> Result<(Vec<IpNet>, Vec<String>), SuggestError> {
        let mut nets = Vec::new();
        let mut names = Vec::new();
        for name in &self.event.to {
            match self.resolve(name) {
                Resolved::Set(_, n) => nets.extend(n),
                Resolved::Net(n) => nets.push(n),
                Resolved::Unnamed => continue,
            }
            names.push(name.clone());
        }
        nets.sort();
        nets.dedup();
        if nets.is_empty() {
            return Err(SuggestError::NoDestination {
                id: self.id().into(),
                to: self.event.to.join(", "),
            });
        }
        Ok((nets, names))
    }

    /// The event's protocol and port (`evidence.protocol`, `evidence.port`).
    fn protocol(&self) -> (Protocol, Vec<(u16, u16)>) {
        let protocol = match self.text("protocol") {
            Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some("icmp") => Protocol::Icmp,
            _ => Protocol::Any,
        };
        let port = self
            .num("port")
            .filter(|p| p.fract() == 0.0 && (1.0..=65535.0).contains(p))
            .map(|p| p as u16);
        let ports = match port {
            Some(p) if protocol != Protocol::Icmp => vec![(p, p)],
            _ => Vec::new(),
        };
        (protocol, ports)
    }

    /// The p95 of `metric` in series `key` over the window before the
    /// onset, and its number of points; `None` with too few points.
    fn p95(&self, key: &str, metric: &str) -> Option<(f64, usize)> {
        self.p95_of(key, |p| p.get(metric)?.as_f64())
    }

    /// The p95 of `value` of each point of series `key` over the window
    /// before the onset (points without one do not count), and the number
    /// of points; `None` with fewer than [`MIN_POINTS`].
    fn p95_of(
        &self,
        key: &str,
        value: impl Fn(&Map<String, Value>) -> Option<f64>,
    ) -> Option<(f64, usize)> {
        let end = self.event.started.saturating_sub(ONSET_S);
        let report = self.history.query(key, end, WINDOW_S)?;
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
    fn evidence_pairs(&self, bps: &str, pps: &str) -> Option<(Rates, String)> {
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
    fn pair_history(&self, source: &str, dests: &[String], tcp: bool) -> Option<(Rates, String)> {
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

    /// The named sources of `names` (sets and addresses) as one side, and
    /// the names that could not be named (`other`, or gone).
    fn sources<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> (Vec<IpNet>, Vec<String>, Vec<String>, Option<String>) {
        let (mut nets, mut named, mut unnamed, mut sets) = (vec![], vec![], vec![], vec![]);
        for name in names {
            match self.resolve(name) {
                Resolved::Set(s, n) => {
                    nets.extend(n);
                    sets.push(s);
                    named.push(name.to_string());
                }
                Resolved::Net(n) => {
                    nets.push(n);
                    named.push(name.to_string());
                }
                Resolved::Unnamed => unnamed.push(name.to_string()),
            }
        }
        nets.sort();
        nets.dedup();
        // A set of the live policy that is exactly the sources (named
        // alone, or holding just these addresses) is reused as it is.
        let reuse = match (&sets[..], named.len()) {
            ([s], 1) => Some(s.clone()),
            _ => self
                .policy
                .endpoints
                .iter()
                .find(|(_, n)| *n == nets)
                .map(|(s, _)| s.clone()),
        };
        (nets, named, unnamed, reuse)
    }

    /// Per named source, its baseline: the history of its pairs, else
    /// `fallback` (the evidence's figure for that source, with a label).
    fn per_source(
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
    fn set_of(&self, name: &str) -> Option<&str> {
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

    /// The destination's total baseline, for holding everyone: the
    /// history of every set's (and `other`'s) pair toward it, else the
    /// evidence's `baseline` of its `metric`.
    fn destination_total(&self, dests: &[String], tcp: bool) -> (Rates, Vec<String>) {
        // A flood's or a collapse's evidence is about the destination as a
        // whole (and counts sources the history keeps by address, which
        // the sum below cannot find): first choice. A spike's is about one
        // interaction only.
        if self.event.kind != EventKind::Spike {
            let evidence = self
                .evidence_pairs("request_bps", "request_pps")
                .or_else(|| self.evidence_rates());
            if let Some((r, how)) = evidence {
                return (r, vec![format!("  {how}")]);
            }
        }
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
        match self.evidence_rates() {
            Some((r, how)) => (
                r,
                vec![format!("  no history toward the destination: {how}")],
            ),
            None => (
                Rates::default(),
                vec!["  no history toward the destination and no rate in the evidence: held to the floor".into()],
            ),
        }
    }

    /// A plan for `names` (the sources) toward the destination; when
    /// none can be named, a plan for everyone toward it.
    fn plan_for(
        &self,
        names: &[String],
        fallback: impl Fn(&str) -> Option<(Rates, &'static str)>,
        everyone_reason: &str,
    ) -> Result<Plan, SuggestError> {
        let (to, dests) = self.destination()?;
        let lost: Vec<&str> = self
            .event
            .to
            .iter()
            .filter(|t| !dests.contains(t))
            .map(String::as_str)
            .collect();
        let lost = (!lost.is_empty()).then(|| {
            format!(
                "  not held toward {}: no address or set of the live policy names it",
                lost.join(", ")
            )
        });
        let (protocol, ports) = self.protocol();
        // New connections are what a squeezed upstream pays for; a flood
        // or a spike is held in bytes and packets.
        let tcp = protocol == Protocol::Tcp && self.event.kind == EventKind::UpstreamCollapse;
        let (from, named, unnamed, from_set) = self.sources(names.iter().map(String::as_str));
        let crowd = self.ev.get("crowd").and_then(Value::as_bool) == Some(true)
            && self.event.kind == EventKind::Dos;
        if crowd || named.is_empty() {
            let (baseline, mut why) = self.destination_total(&dests, tcp);
            why.insert(
                0,
                format!(
                    "Holds EVERYONE toward {} to the destination's baseline: {everyone_reason}.",
                    dests.join(", ")
                ),
            );
            if crowd && !named.is_empty() {
                let other = self.num("other_share").map_or(String::new(), |x| {
                    format!(", and `other` carries {:.0}%", x * 100.0)
                });
                why.push(format!(
                    "  the event names {} of the crowd ({}){other}: holding those alone would leave the rest of it unheld",
                    named.len(),
                    shorten(&named.join(", "))
                ));
            }
            why.extend(lost);
            return Ok(Plan {
                from: any(),
                from_set: None,
                sources: "every source".into(),
                to,
                protocol,
                ports,
                baseline,
                why,
            });
        }
        let (baseline, lines) = self.per_source(&named, &dests, tcp, fallback);
        let dest = dests.join(", ");
        let mut why = vec![match &named[..] {
            [one] => format!("Holds {one} toward {dest} to its baseline:"),
            _ => format!(
                "Holds the {} sources together toward {dest} to the sum of their baselines:",
                named.len()
            ),
        }];
        why.extend(lines);
        if named.len() > 1 {
            why.push(format!("  together: {baseline}"));
        }
        if !unnamed.is_empty() {
            why.push(format!(
                "  not held: {} (no address or set names them)",
                unnamed.join(", ")
            ));
        }
        why.extend(lost);
        Ok(Plan {
            from,
            from_set,
            sources: named.join(", "),
            to,
            protocol,
            ports,
            baseline,
            why,
        })
    }

    fn dos(&self) -> Result<Plan, SuggestError> {
        let sources: Vec<&Map<String, Value>> = self
            .ev
            .get("sources")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default();
        let fallback = |s: &str| {
            let e = sources
                .iter()
                .find(|e| e.get("source").and_then(Value::as_str) == Some(s))?;
            let f = |k: &str| e.get(k).and_then(Value::as_f64);
            Some((
                Rates {
                    bps: Some(f("baseline_bps")?),
                    pps: f("baseline_pps").unwrap_or(0.0),
                    new_conns: None,
                },
                "the event's baseline for this source",
            ))
        };
        let reason = if self.ev.get("crowd").and_then(Value::as_bool) == Some(true) {
            "a crowd of sources, too many and too new to be named one by one"
        } else {
            "the sources cannot be named (they are `other`: addresses the agent does not track one by one)"
        };
        self.plan_for(&self.event.from, fallback, reason)
    }

    fn spike(&self) -> Result<Plan, SuggestError> {
        if self.event.from.is_empty() {
            return Err(SuggestError::NothingToHold {
                id: self.id().into(),
            });
        }
        // The evidence holds the interaction's total, not per source: it
        // stands for the first source without history, and counts once.
        let bps = self.baseline_of("request_bps");
        let pps = self.baseline_of("request_pps").unwrap_or(0.0);
        let used = std::cell::Cell::new(false);
        let fallback = move |_: &str| {
            let first = !used.replace(true);
            Some(if first {
                (
                    Rates {
                        bps: Some(bps?),
                        pps,
                        new_conns: None,
                    },
                    "the event's baseline of the whole interaction",
                )
            } else {
                (
                    Rates::default(),
                    "counted in the interaction's baseline above",
                )
            })
        };
        self.plan_for(
            &self.event.from,
            fallback,
            "the spike's sources cannot be named (they are `other`: addresses the agent does not track one by one)",
        )
    }

    fn collapse(&self) -> Result<Plan, SuggestError> {
        let clients: Vec<&Map<String, Value>> = self
            .ev
            .get("clients")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default();
        let names: Vec<String> = if clients.is_empty() {
            self.event.from.clone()
        } else {
            clients
                .iter()
                .filter_map(|c| c.get("from")?.as_str().map(String::from))
                .collect()
        };
        // Destination-wide: an upper bound for any part of it. TCP only.
        let conns = self
            .baseline_of("new_connections_per_s")
            .filter(|_| self.protocol().0 == Protocol::Tcp);
        let fallback = |s: &str| {
            let c = clients
                .iter()
                .find(|c| c.get("from").and_then(Value::as_str) == Some(s))?;
            let f = |k: &str| c.get(k).and_then(Value::as_f64);
            Some((
                Rates {
                    bps: Some(f("baseline_request_bps")?),
                    pps: f("baseline_request_pps").unwrap_or(0.0),
                    new_conns: conns,
                },
                "the event's baseline for this client, new connections the destination's",
            ))
        };
        self.plan_for(
            &names,
            fallback,
            "the clients driving the demand cannot be named (they are `other`)",
        )
    }

    /// The live policy with the set and channel(s) of `plan` ahead of it.
    fn hold(&self, plan: Plan, mode: Mode) -> Result<String, SuggestError> {
        let id = sanitize(self.id());
        let directions = self.directions(&plan);
        let have = self.policy.channels.len();
        let max = tc_common::MAX_CHANNELS as usize;
        if have + directions.len() > max {
            return Err(SuggestError::PolicyFull {
                have,
                add: directions.len(),
                max,
            });
        }
        let mut endpoints = self.policy.endpoints.clone();
        let mut notes = Notes::default();
        let set = if is_any(&plan.from) || plan.from_set.is_some() {
            None
        } else {
            let name = fresh(&format!("{id}-sources"), |n| {
                endpoints.iter().any(|(s, _)| s == n)
            });
            notes.sets.insert(
                name.clone(),
                vec![format!(
                    "The sources of {} ({}): {}.",
                    self.id(),
                    self.event.kind.as_str(),
                    shorten(&plan.sources)
                )],
            );
            endpoints.insert(0, (name.clone(), plan.from.clone()));
            Some(name)
        };
        // Connection limits count TCP connections: only with `protocol: tcp`.
        let (limit, summary) = limit_for(plan.baseline, plan.protocol == Protocol::Tcp);
        let mut channels = Vec::new();
        let mut caps = Vec::new();
        let base = format!("hold-{id}");
        for d in &directions {
            let wanted = match (directions.len(), d) {
                (2, Direction::Egress) => format!("{base}-egress"),
                _ => base.clone(),
            };
            let name = fresh(&wanted, |n| {
                self.policy.channels.iter().any(|c| c.name == n)
                    || channels.iter().any(|c: &Channel| c.name == n)
            });
            let mut channel = Channel {
                name,
                from: plan.from.clone(),
                to: plan.to.clone(),
                protocol: plan.protocol,
                ports: plan.ports.clone(),
                direction: *d,
                limit,
                action: Action::Drop,
                connection_action: ConnAction::Drop,
                horizon_ns: None,
                mode,
            };
            caps.push(self.cap(&plan, &mut channel));
            channels.push(channel);
        }
        let mut why = self.event_lines();
        why.extend(plan.why.iter().cloned());
        why.extend(derivation(&summary));
        if set.is_some() || plan.from_set.is_some() {
            why.push("The other sources do not match this channel: they go on to the channels below, unchanged.".into());
        }
        why.push(match &directions[..] {
            [d] => format!(
                "Direction {}: as `{}`, the first live channel that carries all of this traffic.",
                dir(*d),
                self.policy
                    .channels
                    .iter()
                    .find(|c| carries(c, &plan))
                    .map_or("", |c| c.name.as_str())
            ),
            _ => "Ingress and egress: no live channel tells which hook sees this traffic on this node; the requests arrive (ingress) at a server and leave (egress) at a client, and a packet is charged once, so the two hold the sources together.".into(),
        });
        if mode == Mode::Monitor {
            why.push("mode: monitor: counts what this would drop and drops nothing (`tc-agent channels`: would-drop); once the counts look right, suggest again without `--mode monitor` and apply that.".into());
        }
        for (c, cap) in channels.iter().zip(caps) {
            let mut why = why.clone();
            why.extend(cap);
            notes.channels.insert(c.name.clone(), why);
        }
        let added: Vec<String> = channels.iter().map(|c| format!("`{}`", c.name)).collect();
        let added = match &added[..] {
            [one] => format!("the channel {one}"),
            more => format!("the channels {}", more.join(" and ")),
        };
        notes.header = vec![
            format!(
                "Suggested by `tc-agent suggest {}`: the live policy unchanged, plus",
                self.id()
            ),
            format!(
                "{}{added} ahead of its channels (the first match wins).",
                set.as_ref()
                    .map_or(String::new(), |s| format!("the set `{s}` and "))
            ),
            "Apply it as it is: `tc-agent apply FILE`.".into(),
            KEPT.into(),
        ];
        let added_n = channels.len();
        channels.extend(self.policy.channels.iter().cloned());
        let policy = Policy {
            channels,
            endpoints,
            warnings: Vec::new(),
        };
        self.finish(&policy, &mut notes, added_n)
    }

    /// A channel spike: that channel's limit set or lowered in place.
    fn tighten(&self, channel: &str, mode: Mode) -> Result<String, SuggestError> {
        let Some(at) = self.policy.channels.iter().position(|c| c.name == channel) else {
            return Err(SuggestError::ChannelGone {
                id: self.id().into(),
                channel: channel.into(),
            });
        };
        let live = &self.policy.channels[at];
        let tcp = live.protocol == Protocol::Tcp;
        // What was offered to the channel: passed and dropped.
        let offered = |unit: &'static str| {
            move |p: &Map<String, Value>| {
                let get = |k: String| p.get(&k)?.as_f64();
                Some(get(format!("passed_{unit}"))? + get(format!("dropped_{unit}"))?)
            }
        };
        let (baseline, how) = match (
            self.p95_of(channel, offered("bps")),
            self.p95_of(channel, offered("pps")),
        ) {
            (Some((bps, n)), Some((pps, _))) => (
                Rates {
                    bps: Some(bps),
                    pps,
                    new_conns: None,
                },
                format!(
                    "p95 of {n} s of the channel's history (passed + dropped) before the onset"
                ),
            ),
            _ => match self
                .evidence_pairs("offered_bps", "offered_pps")
                .or_else(|| self.evidence_rates())
            {
                Some((r, how)) => (
                    r,
                    format!(
                        "{how} (the history has no {MIN_POINTS} s of the channel before the onset)"
                    ),
                ),
                None => (
                    Rates::default(),
                    "no history of the channel and no rate in the evidence: held to the floor"
                        .into(),
                ),
            },
        };
        let (wanted, summary) = limit_for(baseline, tcp);
        let pacing = live.action == Action::Delay;
        let mut limit = live.limit;
        if let Some(bps) = wanted.bandwidth_bps {
            if limit.bandwidth_bps.is_none_or(|b| bps < b) {
                limit.bandwidth_bps = Some(bps);
                limit.burst_bytes = render::default_burst(bps, pacing);
            }
        }
        if let Some(p) = wanted.packets {
            if limit.packets.is_none_or(|b| p < b) {
                limit.packets = Some(p);
                limit.packet_burst = render::default_packet_burst(p);
            }
        }
        let enforces = live.mode == Mode::Enforce
            && (!live.limit.is_unlimited() || live.limit.limits_connections());
        if limit == live.limit && live.mode == mode {
            return Err(SuggestError::AlreadyHeld {
                channel: channel.into(),
                limit: summary,
            });
        }
        if mode == Mode::Monitor && enforces {
            return Err(SuggestError::MonitorWouldRelax {
                channel: channel.into(),
            });
        }
        let mut why = self.event_lines();
        why.push(format!(
            "Holds channel `{channel}` to its baseline, set in place: a copy ahead with the same match would leave `{channel}` matching nothing, move its counters and history to a new name, and bypass its other limits."
        ));
        why.push(format!("  baseline: {baseline} ({how})"));
        why.extend(derivation(&summary));
        why.push("  a limit the channel already had that is tighter is kept.".into());
        if live.mode == Mode::Monitor && mode == Mode::Enforce {
            why.push(
                "The channel was in monitor mode: with this it enforces all of its limits.".into(),
            );
        }
        if mode == Mode::Monitor {
            why.push("mode: monitor: counts what this would drop and drops nothing (`tc-agent channels`: would-drop); once the counts look right, suggest again without `--mode monitor` and apply that.".into());
        }
        let mut policy = self.policy.clone();
        policy.warnings.clear();
        policy.channels[at].limit = limit;
        policy.channels[at].mode = mode;
        let mut notes = Notes::default();
        notes.channels.insert(channel.into(), why);
        notes.header = vec![
            format!(
                "Suggested by `tc-agent suggest {}`: the live policy with the limit of",
                self.id()
            ),
            format!("channel `{channel}` set to its baseline; nothing else changes."),
            "Apply it as it is: `tc-agent apply FILE`.".into(),
            KEPT.into(),
        ];
        self.finish(&policy, &mut notes, 0)
    }

    /// The event, for the channel's comment.
    fn event_lines(&self) -> Vec<String> {
        vec![
            format!(
                "Why: event {} ({}), started at unix second {}:",
                self.id(),
                self.event.kind.as_str(),
                self.event.started
            ),
            format!("  {}", self.event.summary),
        ]
    }

    /// The hooks of the live channels that carry the plan's traffic: the
    /// hold goes on the same one, or on both when that is not one hook.
    fn directions(&self, plan: &Plan) -> Vec<Direction> {
        let mut dirs: Vec<Direction> = self
            .policy
            .channels
            .iter()
            .filter(|c| carries(c, plan))
            .map(|c| c.direction)
            .collect();
        dirs.sort_by_key(|d| *d == Direction::Egress);
        dirs.dedup();
        match dirs[..] {
            [d] => vec![d],
            _ => vec![Direction::Ingress, Direction::Egress],
        }
    }

    /// Caps `hold` by the first live channel on its hook that carries all
    /// of its traffic (and enforces): that channel held this traffic
    /// before, and the hold, ahead of it, must not loosen what it
    /// enforced. Returns what was capped, for the comment.
    fn cap(&self, plan: &Plan, hold: &mut Channel) -> Vec<String> {
        let Some(live) =
            self.policy.channels.iter().find(|c| {
                c.direction == hold.direction && c.mode == Mode::Enforce && carries(c, plan)
            })
        else {
            return Vec::new();
        };
        let (l, h) = (&live.limit, &mut hold.limit);
        let mut capped = Vec::new();
        if let Some(b) = l
            .bandwidth_bps
            .filter(|b| h.bandwidth_bps.is_none_or(|x| *b < x))
        {
            h.bandwidth_bps = Some(b);
            h.burst_bytes = render::default_burst(b, false);
            capped.push(format!("bandwidth {}", render::rate(b)));
        }
        if let Some(p) = l.packets.filter(|p| h.packets.is_none_or(|x| *p < x)) {
            h.packets = Some(p);
            h.packet_burst = render::default_packet_burst(p);
            capped.push(format!("packets {p}/s"));
        }
        // Connection limits need `protocol: tcp`; a live channel that has
        // them and carries all of the hold's traffic is TCP, so is the hold.
        if hold.protocol == Protocol::Tcp {
            if let Some(n) = l
                .connections
                .filter(|n| h.connections.is_none_or(|x| *n < x))
            {
                h.connections = Some(n);
                capped.push(format!("connections {n}"));
            }
            if let Some(n) = l
                .new_connections
                .filter(|n| h.new_connections.is_none_or(|x| *n < x))
            {
                h.new_connections = Some(n);
                h.new_connection_burst = render::default_new_connection_burst(n);
                capped.push(format!("new connections {n}/s"));
            }
            if h.limits_connections() {
                hold.connection_action = live.connection_action;
            }
        }
        if capped.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "Never looser than `{}`, which carried this traffic before and enforces tighter: {} (from `{}`).",
            live.name,
            capped.join(", "),
            live.name
        )]
    }

    /// Renders, validates, and checks that the live channels read back
    /// unchanged; notes the live channels the new ones shadow.
    fn finish(
        &self,
        policy: &Policy,
        notes: &mut Notes,
        added: usize,
    ) -> Result<String, SuggestError> {
        let file = format!("suggest-{}.yaml", self.id());
        let text = render::render_with(policy, notes);
        let parsed = Policy::parse(&text, &file).map_err(SuggestError::Invalid)?;
        for (a, b) in parsed.channels.iter().zip(&policy.channels) {
            if a != b {
                return Err(SuggestError::Changed(format!("channel `{}`", b.name)));
            }
        }
        if parsed.channels.len() != policy.channels.len() || parsed.endpoints != policy.endpoints {
            return Err(SuggestError::Changed("the endpoint sets".into()));
        }
        // What `apply` does next: the tables must hold it.
        crate::policy::compile::compile(&parsed).map_err(SuggestError::TooLarge)?;
        // Live channels the hold shadows: said, not hidden.
        let mut shadowed = Vec::new();
        for w in &parsed.warnings {
            let by_new = policy.channels[..added]
                .iter()
                .any(|c| w.message.contains(&format!("`{}` comes first", c.name)));
            if by_new {
                shadowed.push(w.message.clone());
            }
        }
        if shadowed.is_empty() {
            return Ok(text);
        }
        for c in &policy.channels[..added] {
            if let Some(n) = notes.channels.get_mut(&c.name) {
                n.push("While it is in place (the validator's warnings):".into());
                n.extend(shadowed.iter().map(|s| format!("  {s}")));
            }
        }
        let text = render::render_with(policy, notes);
        Policy::parse(&text, &file).map_err(SuggestError::Invalid)?;
        Ok(text)
    }
}

/// The limit for a baseline, and what it holds to, as text
/// (`bandwidth 233kbit, packets 58/s`).
fn limit_for(b: Rates, tcp: bool) -> (Limit, String) {
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
fn derivation(summary: &str) -> Vec<String> {
    vec![
        format!("  limit = baseline x {HEADROOM} headroom, rounded up to 3 digits: {summary}"),
        format!(
            "  (never below the validator's minimums: {} bandwidth, 1 packet/s, 1 new connection/s)",
            render::rate(MIN_RATE_BPS)
        ),
    ]
}

/// `x` rounded up to an integer of at most three significant digits.
fn round_up(x: f64) -> u64 {
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

/// Whether live channel `c` matches all of the plan's traffic (on some
/// hook): its addresses, protocol and ports hold the plan's.
fn carries(c: &Channel, plan: &Plan) -> bool {
    let protocol = c.protocol == Protocol::Any
        || (c.protocol == plan.protocol && plan.protocol != Protocol::Any);
    let ports = c.ports.is_empty()
        || (!plan.ports.is_empty()
            && plan
                .ports
                .iter()
                .all(|(a, b)| c.ports.iter().any(|(x, y)| x <= a && b <= y)));
    protocol && ports && covers(&c.from, &plan.from) && covers(&c.to, &plan.to)
}

/// Whether every prefix of `inner` lies in one of `outer`.
fn covers(outer: &[IpNet], inner: &[IpNet]) -> bool {
    inner.iter().all(|i| outer.iter().any(|o| o.contains(i)))
}

/// Both "any" prefixes: what a missing `from`/`to` means.
fn any() -> Vec<IpNet> {
    vec![
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}

fn is_any(nets: &[IpNet]) -> bool {
    nets == any()
}

fn dir(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// An event id as a name: the name charset only, short enough for a
/// suffix.
fn sanitize(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "event".into()
    } else {
        s
    }
}

/// `wanted`, or `wanted-2`, `wanted-3`, ... : the first that is not taken.
fn fresh(wanted: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(wanted) {
        return wanted.to_string();
    }
    (2..)
        .map(|i| format!("{wanted}-{i}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// A long list cut for a comment.
fn shorten(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let at = s.char_indices().nth(MAX).map_or(s.len(), |(i, _)| i);
    let cut = s[..at].rfind(", ").unwrap_or(at);
    format!("{}, ...", &s[..cut])
}

#[cfg(test)]
mod tests;
