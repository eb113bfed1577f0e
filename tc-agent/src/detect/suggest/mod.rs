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
//! carries all of its traffic. When no live channel tells the hook, there
//! are two holds, ingress and egress, each with HALF of the limit:
//! requests arrive at a server and leave a client, a packet is charged on
//! one hook only, and sources on both sides of the node together stay
//! within the limit.
//!
//! The hold comes first and takes every packet it matches, so it must not
//! undo a live limit: it is capped by EVERY enforcing live channel on its
//! hook that could hold one of its packets (addresses that meet; for
//! connection limits, protocols that meet too), the smallest of each kind
//! of limit. A `protocol: any` hold over TCP traffic that a live channel
//! limits in connections is refused (connection limits need `protocol:
//! tcp`), and so is a monitor-mode hold over traffic a live channel
//! enforces limits on (a dry run that stopped enforcing them). The hold
//! has its own buckets: the destination's other traffic keeps the live
//! channels' full limits, and the comment says so.
//!
//! A baseline is the 95th percentile of the 1 s history points in the
//! [`WINDOW_S`] seconds before the onset ([`ONSET_S`] before `started`,
//! since detection lags the onset), per `FROM->TO` pair (or channel); a
//! series with fewer than [`MIN_POINTS`] points falls back to the event's
//! evidence (the detector's figures), and the comment says which was
//! used. The limit is the baseline times [`HEADROOM`], rounded up to three
//! significant digits, never below the validator's minimums. Whatever is
//! built is validated like any policy file before it is handed out.

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

mod baseline;
mod hold;
mod plan;
mod tighten;

pub use self::baseline::Window;
use self::baseline::{derivation, limit_for, Rates};

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
    /// The hold cannot keep a live channel's limits on the packets it
    /// would take from it.
    #[error("the hold cannot keep the limits of live channel `{channel}`: {why}; limit the sources by hand")]
    CannotCap {
        /// The live channel.
        channel: String,
        /// Why, as text.
        why: String,
    },
    /// A monitor-mode hold would take packets that live channels enforce
    /// limits on, and enforce nothing for them during the dry run.
    #[error("a monitor-mode hold comes first and would stop enforcing the limits of {channels} for the packets it takes (a dry run must not relax what is enforced now); suggest with `--mode enforce` to apply it for real")]
    MonitorWouldBypass {
        /// The live channels, as text (`` `web`, `dns` ``).
        channels: String,
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
    suggest_from(event, policy, &Window::take(event, policy, history), mode)
}

/// [`suggest`] from the history points taken beforehand ([`Window::take`]):
/// the agent takes them under the observer's lock and builds the file
/// (the slow part) after releasing it.
pub fn suggest_from(
    event: &Event,
    policy: &Policy,
    history: &Window,
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
    history: &'a Window,
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
