//! Reading what the kernel saw, every sample: interactions between
//! endpoint sets, top talkers, and the metric history that `map`,
//! `top-talkers`, `history`, `top` and `/metrics` show.
//!
//! Data flows one way: the datapath's tables are read here, aggregated by
//! the live policy's endpoint sets, and kept in bounded memory; nothing
//! here writes to the kernel except the interaction table's housekeeping
//! (see `datapath::interactions`).

pub mod history;
pub mod interactions;
pub mod naming;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use self::{history::History, interactions::Interactions};
use crate::{detect::Detector, policy::Policy};

/// What the agent has seen: the interaction view, the metric history and
/// the events found in them.
/// Shared behind its own lock, so `map`, `top-talkers` and `history` never
/// wait behind an apply.
#[derive(Debug)]
pub struct Observer {
    /// Interactions by kernel entry and by endpoint sets.
    pub interactions: Interactions,
    /// Per channel and per `FROM->TO`, 15 minutes at 1 s and 24 hours at 1 min.
    pub history: History,
    /// The detectors, fed every sample, and the events they opened.
    pub detector: Detector,
    /// The live policy, for `suggest` (which writes it out with a channel
    /// added): shared with the agent (not a copy: a 1,024-channel policy
    /// is megabytes) and replaced at start and on every apply, so
    /// `suggest` never waits behind an apply for the agent's lock.
    pub policy: Arc<Policy>,
}

impl Observer {
    /// Takes in a newly live policy: its endpoint sets name the
    /// interactions, and `suggest` builds on it.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.interactions.set_policy(&policy.endpoints);
        self.policy = policy;
    }
}

/// The metrics a channel's history keeps, in display order.
pub const CHANNEL_METRICS: &[&str] = &["passed_bps", "passed_pps", "dropped_bps", "dropped_pps"];
/// The metrics an interaction's (`FROM->TO`) history keeps.
pub const INTERACTION_METRICS: &[&str] = &[
    "request_bps",
    "request_pps",
    "response_bps",
    "response_pps",
    "new_connections_per_s",
    "handshake_rtt_us",
    "resets_per_s",
];

/// The values of [`INTERACTION_METRICS`] for a delta over `dt` seconds.
pub fn interaction_point(d: &tc_common::IxCounters, dt: f64) -> [f64; 7] {
    let r = |x: u64| x as f64 / dt;
    [
        8.0 * r(d.req_bytes),
        r(d.req_pkts),
        8.0 * r(d.resp_bytes),
        r(d.resp_pkts),
        r(d.syns),
        if d.rtt_count > 0 {
            d.rtt_sum_ns as f64 / d.rtt_count as f64 / 1e3
        } else {
            f64::NAN
        },
        r(d.rsts),
    ]
}

/// Cumulative counters of one interaction between endpoint sets since the
/// agent started: what `/metrics` exports (bounded cardinality: sets, not
/// addresses, except the few unnamed addresses `map` shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionTotals {
    /// The clients' endpoint set (or address, or `other`), as `map` names it.
    pub from: String,
    /// The servers' endpoint set (or address, or `other`).
    pub to: String,
    /// `tcp`, `udp`, `icmp` or `other`.
    pub protocol: String,
    /// The server's port (0 without ports).
    pub port: u16,
    /// Client to server: packets and wire bytes.
    pub request_pkts: u64,
    pub request_bytes: u64,
    /// Server to client: packets and wire bytes.
    pub response_pkts: u64,
    pub response_bytes: u64,
    /// TCP: client SYNs (connection attempts), server SYN-ACKs, RSTs and
    /// FINs (either side).
    pub syns: u64,
    pub synacks: u64,
    pub resets: u64,
    pub fins: u64,
}
