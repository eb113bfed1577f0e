//! The validated policy: what the rest of the agent works with. Everything
//! here has passed validation and has its defaults filled in; the agent
//! saves [`Policy`] as JSON in its state directory.

use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::diagnostic::Diagnostic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
    #[default]
    Any,
}

impl Protocol {
    /// IP protocol numbers this matches; `None` = every protocol.
    pub fn numbers(self) -> Option<&'static [u8]> {
        match self {
            Protocol::Tcp => Some(&[6]),
            Protocol::Udp => Some(&[17]),
            Protocol::Icmp => Some(&[1, 58]),
            Protocol::Any => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets arriving on the node's interfaces (tc ingress, or XDP).
    #[default]
    Ingress,
    /// Packets leaving the node's interfaces (tc egress).
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Drop,
    Delay,
    Mark,
}

/// What a channel's connection limits do with a new TCP connection over
/// them: its SYN is refused one way or the other. Established connections
/// are never cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnAction {
    /// The SYN is dropped: the client's SYN retransmission (1 s, 3 s, ...
    /// later) is the backpressure.
    #[default]
    Drop,
    /// The SYN is answered with a TCP RST at once, so the client fails fast.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// A channel's limits after validation, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limit {
    /// Bits per second; `None` = no bandwidth limit.
    pub bandwidth_bps: Option<u64>,
    /// Byte bucket depth; meaningful only with a bandwidth.
    pub burst_bytes: u64,
    /// Packets per second; `None` = no packet-rate limit.
    pub packets: Option<u64>,
    /// Packet bucket depth; meaningful only with a packet rate.
    pub packet_burst: u64,
    /// Open TCP connections the channel allows at once (`connections`);
    /// `None` = no concurrency limit. Bounds what a backend holds open,
    /// which no rate limit does. `default`: saved states from before
    /// connection limits have none.
    #[serde(default)]
    pub connections: Option<u32>,
    /// New TCP connections per second (`new_connections`); `None` = no
    /// new-connection rate limit. Bounds handshake and accept work, which
    /// a byte or packet rate barely sees. `default`: as `connections`.
    #[serde(default)]
    pub new_connections: Option<u32>,
    /// New connections admitted at once from idle (`new_connection_burst`),
    /// so that a client opening a small pool is not refused; meaningful
    /// only with `new_connections` (0 without). `default`: as `connections`.
    #[serde(default)]
    pub new_connection_burst: u32,
}

impl Limit {
    /// Whether the channel has no bandwidth and no packet-rate limit: no
    /// limit that charges a packet by itself. Connection limits are asked
    /// for separately ([`Limit::limits_connections`]): validation's "a
    /// limit needs ..." accepts either, and [`Channel::holds_hidden`]
    /// counts either as enforcing.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth_bps.is_none() && self.packets.is_none()
    }

    /// Whether the channel limits TCP connections (`connections` or
    /// `new_connections`), so the datapath must track its connections and
    /// the agent must give it a connection pool.
    pub fn limits_connections(&self) -> bool {
        self.connections.is_some() || self.new_connections.is_some()
    }
}

/// A validated channel: who talks to whom, and how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique name, the key the operator and the counters use.
    pub name: String,
    /// Source prefixes, sorted and deduplicated; `0.0.0.0/0` + `::/0` when
    /// the file says nothing.
    #[serde(serialize_with = "super::prefix_text::serialize")]
    pub from: Arc<[IpNet]>,
    /// Destination prefixes; likewise.
    #[serde(serialize_with = "super::prefix_text::serialize")]
    pub to: Arc<[IpNet]>,
    /// Which IP protocols the channel matches.
    pub protocol: Protocol,
    /// Destination port ranges, inclusive, sorted; empty = any port.
    pub ports: Vec<(u16, u16)>,
    /// Which hook sees the channel's packets.
    pub direction: Direction,
    /// How much traffic the channel lets through.
    pub limit: Limit,
    /// What happens to traffic over the bandwidth or packet limit.
    pub action: Action,
    /// What happens to a new TCP connection over the connection limits: a
    /// separate key from `action`, because a refused SYN cannot be delayed
    /// or marked, and dropping it and resetting it tell the client
    /// different things. `Drop` when the channel has no connection limits.
    /// `default`: saved states from before connection limits have none.
    #[serde(default)]
    pub connection_action: ConnAction,
    /// `delay` only: a packet that would wait longer is dropped (bounds queueing delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_ns: Option<u64>,
    /// Whether over-limit traffic is acted on or only counted.
    pub mode: Mode,
}

/// The addresses of each channel of a policy, in order: what its address
/// tables and its shadowing candidates are made from, kept with them so
/// that a later policy naming the same addresses in the same places can
/// take them as they are.
#[derive(Debug, Clone, Default)]
pub struct Sides(Vec<FromTo>);

/// A channel's sources and destinations.
type FromTo = (Arc<[IpNet]>, Arc<[IpNet]>);

impl Sides {
    /// The sources and destinations of `channels` (their lists shared).
    pub fn of(channels: &[Channel]) -> Self {
        Self(
            channels
                .iter()
                .map(|c| (c.from.clone(), c.to.clone()))
                .collect(),
        )
    }

    /// Whether `channels` name these addresses, in the same order.
    pub fn named_by(&self, channels: &[Channel]) -> bool {
        self.0.len() == channels.len()
            && self.0.iter().zip(channels).all(|((f, t), c)| {
                // A reading that reused an item shares its lists.
                (Arc::ptr_eq(f, &c.from) || **f == *c.from)
                    && (Arc::ptr_eq(t, &c.to) || **t == *c.to)
            })
    }
}

impl Channel {
    /// Whether the channel may hold a packet whose ports (`hidden_proto`:
    /// or protocol) the datapath cannot read. Such a packet goes to the
    /// first channel of its addresses that could hold it, but a channel
    /// that is more specific than what is known (it names ports, or a
    /// protocol when the protocol is hidden) and enforces nothing (no
    /// limit, or monitor mode) is passed over: the packet cannot be shown
    /// to belong to it, and landing there would let it slip past a later
    /// channel's limit that it may belong to.
    pub fn holds_hidden(&self, hidden_proto: bool) -> bool {
        let more_specific =
            !self.ports.is_empty() || (hidden_proto && self.protocol.numbers().is_some());
        // Connection limits count: the datapath refuses a TCP segment (or
        // a packet that may be one) whose ports it cannot read in a channel
        // that limits connections, since it could be a SYN the table cannot
        // follow (RFC 1858's tiny first fragment).
        let enforces = self.mode == Mode::Enforce
            && (!self.limit.is_unlimited() || self.limit.limits_connections());
        !more_specific || enforces
    }
}

/// A validated policy, ready to compile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Channels in file order: the first match wins.
    pub channels: Vec<Channel>,
    /// The named endpoint sets in file order, with their networks: the
    /// interaction map names each address by the most specific set that
    /// holds it (ties: the first in file order).
    #[serde(default)]
    pub endpoints: Vec<(String, Vec<IpNet>)>,
    /// Non-fatal findings, such as shadowed channels.
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}
