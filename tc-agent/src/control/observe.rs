//! What the agent shows of the traffic it sees: the interaction map, top
//! talkers and metric history. The JSON field names are a contract for
//! scripts (see `tc-agent map --help`, `top-talkers --help`, `history --help`).

use serde::{Deserialize, Serialize};

/// `tc-agent map`: interactions between endpoint sets (or addresses) over
/// the last window, busiest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MapReport {
    /// Seconds the rates are averaged over (5 once the agent has run that long).
    pub window_s: f64,
    /// One row per (from, to, protocol, port), busiest (request + response
    /// bits per second) first.
    pub interactions: Vec<InteractionRow>,
    /// Interaction-table health: size, entries, folded traffic.
    pub table: InteractionTable,
}

/// One interaction: clients in `from` talking to servers in `to`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionRow {
    /// The clients' endpoint set, or an address (IPv4) or /64 (IPv6) in no
    /// set, or `other` (addresses folded past the cardinality bound, and
    /// sources the kernel did not track individually).
    pub from: String,
    /// The servers' endpoint set, or address, likewise.
    pub to: String,
    /// `tcp`, `udp`, `icmp` (ICMP and ICMPv6) or `other`.
    pub protocol: String,
    /// The server's port (0 for protocols without ports).
    pub port: u16,
    /// Client to server, wire bits per second.
    pub request_bps: f64,
    /// Client to server, packets per second.
    pub request_pps: f64,
    /// Server to client, wire bits per second.
    pub response_bps: f64,
    /// Server to client, packets per second.
    pub response_pps: f64,
    /// TCP connections open now (handshakes answered minus connections
    /// closed, as this node saw them).
    pub open_connections: u64,
    /// Connection attempts (client SYNs) per second.
    pub new_connections_per_s: f64,
    /// Mean time from a client's SYN to its SYN-ACK as this node saw
    /// them, microseconds; null without answered SYNs in the window.
    pub handshake_rtt_us: Option<f64>,
    /// TCP resets (either side) per second.
    pub resets_per_s: f64,
}

/// The kernel's interaction table, for `map` and `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InteractionTable {
    /// Interactions the table can hold (`--interaction-table-size`).
    pub size: u32,
    /// Interactions it holds now.
    pub entries: u32,
    /// Bytes per window (about one second) a new source must reach before
    /// it gets its own entry; 0 while the table has room.
    pub admit_threshold_bytes: u32,
    /// Packets counted without a client of their own (below the threshold
    /// or the table full), since the agent started.
    pub folded_pkts: u64,
}

/// `tc-agent top-talkers`: single source addresses by traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopTalkersReport {
    /// Seconds the rates are averaged over.
    pub window_s: f64,
    /// Busiest first, at most `-n`.
    pub talkers: Vec<Talker>,
}

/// One source address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Talker {
    /// The address (IPv4 dotted, IPv6 full).
    pub source: String,
    /// Wire bits per second it sent (to the destinations asked for).
    pub bps: f64,
    /// Packets per second it sent.
    pub pps: f64,
    /// Its part of all traffic to those destinations (0..1), including
    /// sources too small to be tracked one by one.
    pub share: f64,
}

/// `tc-agent history`: one series' points, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryReport {
    /// What was asked for: a channel name or `FROM->TO`.
    pub name: String,
    /// Seconds between points: 1 (last 15 minutes) or 60 (last 24 hours).
    pub step_s: u64,
    /// The metric names every point carries, in display order.
    pub metrics: Vec<String>,
    /// Points; each has `t` (unix seconds) and one field per metric.
    pub points: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Bytes the agent's whole history store holds now, and per point
    /// stored (the compact encoding's figure).
    pub store_bytes: u64,
    pub bytes_per_point: f64,
}
