//! Reading what the kernel saw, every sample: interactions between
//! endpoint sets, top talkers, and the metric history that `map`,
//! `top-talkers`, `history`, `top` and `/metrics` show.
//!
//! Data flows one way: the datapath's tables are read here, aggregated by
//! the live policy's endpoint sets, and kept in bounded memory; nothing
//! here writes to the kernel except the interaction table's housekeeping
//! (see `datapath::interactions`).

pub mod history;

use serde::{Deserialize, Serialize};

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
