//! The control socket: one JSON request per connection (an `apply-raw`
//! line followed by the policy text it announces), one JSON response.
//!
//! The socket (`/run/tc-agent/agent.sock` by default) is mode 0600 in a 0700
//! directory: only root may drive the agent. With `run --socket-group G` it
//! is 0660 with group G (and its directory 0710), and members of G may send
//! `status` and `channels`. The agent checks every peer's credentials, caps
//! a request at 20 MiB and 10 s, and answers every failure it can with
//! `{"ok":false,"error":"..."}` (see `agent/server/`).

use serde::{Deserialize, Serialize};
use tc_common::{ChannelCounters, GlobalCounters};

mod client;
mod detect;
mod observe;

pub use self::{
    client::{request, request_with_body, Body, BodyError},
    detect::*,
    observe::*,
};

use crate::{
    datapath::attach::{HookKind, Mechanism},
    policy::{Action, Direction, Limit, Mode, Protocol},
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/tc-agent/agent.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Validate and apply a policy atomically.
    Apply {
        /// The file name, for diagnostics.
        file: String,
        /// The file's contents: the agent never reads files the client names.
        text: String,
    },
    /// [`Apply`](Request::Apply) with the file's text after the request
    /// line, as it is, rather than inside it as a JSON string: escaping a
    /// large policy's quotes into JSON and back cost more than the rest of
    /// a one-channel change (10 ms in the CLI and 15 in the agent for the
    /// benchmark's 2.9 MB policy). `tc-agent apply` sends this.
    ApplyRaw {
        /// The file name, for diagnostics.
        file: String,
        /// How many bytes of the file's text (UTF-8) follow the line's
        /// newline: exactly these, then the client closes its sending side
        /// (`shutdown(SHUT_WR)`), which tells the agent nothing follows.
        bytes: usize,
    },
    /// Per-channel counters and rates.
    Channels,
    /// Interfaces, hooks, kernel features, generation, uptime.
    Status,
    /// The interaction map over the last window.
    Map,
    /// Single sources by traffic over the last window.
    TopTalkers {
        /// Only traffic to this endpoint set or CIDR.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Only sources in this endpoint set or CIDR.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// How many talkers at most.
        n: usize,
    },
    /// One series of the metric history.
    History {
        /// A channel name, or `FROM->TO` (endpoint sets or addresses as `map` names them).
        name: String,
        /// How far back, seconds: up to 900 at 1 s steps, up to 86,400 at 60 s steps.
        since_s: u64,
    },
    /// The detectors' events: all of them, or what changed after a cursor.
    Events {
        /// The `cursor` of an earlier answer: only the events that started
        /// or ended after it. None: every event kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A policy file that answers one event.
    Suggest {
        /// The event's id (`dos-3`), as `events` lists it.
        id: String,
        /// The suggested channel's mode: `monitor` for a dry run first.
        #[serde(default)]
        mode: Mode,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The report, when `ok` is true.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// What an apply changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The policy version now live: it only grows, one per apply.
    pub version: u64,
    /// The datapath's generation slot (0 or 1) the version lives in.
    pub generation: u32,
    pub channels: usize,
    /// Channel names new in this policy.
    pub added: Vec<String>,
    /// Channel names gone from the policy.
    pub removed: Vec<String>,
    /// Channels whose match or limits changed.
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Non-fatal findings (e.g. shadowed channels).
    pub warnings: Vec<String>,
    /// Trie entries written.
    pub table_entries: usize,
    /// Time from request to the generation switch.
    pub took_ms: f64,
}

/// Rates between the last two samples of the agent's history.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Rates {
    pub passed_bps: f64,
    pub passed_pps: f64,
    pub dropped_bps: f64,
    pub dropped_pps: f64,
    pub would_drop_bps: f64,
    /// `mark`: CE marks per second.
    pub marked_pps: f64,
    /// `delay`: mean time a delayed packet waited, ms.
    pub delay_ms: f64,
}

/// Counters summed over CPUs and over generations.
pub type Totals = ChannelCounters;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelRow {
    pub name: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub mode: Mode,
    pub action: Action,
    pub limit: Limit,
    pub totals: Totals,
    pub rates: Rates,
    /// TCP connections (channels with connection limits; zeros and nulls
    /// for the others). Flattened: the field names are part of the
    /// channel's JSON.
    #[serde(flatten)]
    pub connections: ConnRow,
}

/// A channel's connections: open now, opened and refused since the
/// channel got connection limits, and their rates over the last window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ConnRow {
    /// TCP connections open in the channel now.
    pub open_connections: u64,
    /// `limit.connections`, repeated here beside the count.
    pub connection_limit: Option<u32>,
    /// Connections admitted per second over the rate window.
    pub new_connections_per_s: f64,
    /// Connections admitted in total.
    pub opened_connections: u64,
    /// New connections refused (their SYN dropped or reset), including
    /// those refused because the connection table was full.
    pub refused_connections: u64,
    /// Of those, refused because the connection table was full.
    pub table_full_connections: u64,
    /// Monitor mode: new connections that would have been refused.
    pub would_refuse_connections: u64,
    /// Refused (or would-be refused) connections per second over the window.
    pub refused_per_s: f64,
    /// Mean handshake time over the window, microseconds: from the
    /// client's first SYN until the handshake completes as seen by this
    /// node (the SYN-ACK on the client's side, the final ACK on the
    /// server's side). None without handshakes in the window.
    pub handshake_rtt_us: Option<f64>,
    /// Longest handshake time since the channel got connection limits.
    pub handshake_rtt_max_us: Option<f64>,
}

/// Node-wide counters, summed over CPUs.
pub type NodeCounters = GlobalCounters;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelsReport {
    /// The live policy version.
    pub version: u64,
    /// The datapath's generation slot (0 or 1) the version lives in.
    pub generation: u32,
    /// Seconds between the samples the rates come from (0 before two samples exist).
    pub rate_window_s: f64,
    /// When the counters were read, Unix time in ms: a busy agent answers
    /// `channels` with its last sample, and a script comparing two reports
    /// needs to know how old each is. 0 from agents before it.
    #[serde(default)]
    pub taken_unix_ms: u64,
    pub channels: Vec<ChannelRow>,
    /// Channels the kernel enforces that the agent cannot name (its saved
    /// state did not match the kernel at start): counted, never hidden.
    pub unnamed_channels: usize,
    pub node: NodeCounters,
}

/// The saved state checked against the kernel at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "kebab-case")]
pub enum StateCheck {
    /// Saved policy, version and table digest match the kernel's.
    Consistent,
    /// They disagree; the reason says how.
    Mismatch(String),
    /// The kernel held no policy (maps wiped, a new map layout) and the
    /// agent applied the saved one again before taking over any hook, so
    /// enforcement never lapsed; the reason says what happened.
    Recovered(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRow {
    pub iface: String,
    pub hook: HookKind,
    pub mechanism: Mechanism,
    /// Taken over from a previous agent without a gap.
    pub replaced: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Features {
    /// TCX links (Linux 6.6+); otherwise clsact via netlink.
    pub tcx: bool,
    /// Kernel BTF at /sys/kernel/btf/vmlinux.
    pub btf: bool,
    /// `delay` possible: the kernel has the fq qdisc (EDT pacing, 4.20+).
    pub delay: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub uptime_s: u64,
    pub kernel: String,
    pub features: Features,
    pub hooks: Vec<HookRow>,
    /// Interfaces where the agent installed fq for `delay`.
    pub fq_on: Vec<String>,
    /// The live policy version (0: no policy was ever applied).
    pub version: u64,
    /// The datapath's generation slot (0 or 1) the version lives in.
    pub generation: u32,
    /// Whether the agent's saved state agrees with what the kernel enforces,
    /// and if not, why (then the live channels cannot be named).
    pub state: StateCheck,
    /// Channels the kernel enforces that the agent cannot name.
    pub unnamed_channels: usize,
    pub channels: usize,
    /// The file the live policy came from, if any.
    pub policy_file: Option<String>,
    pub pin_dir: String,
    pub socket: String,
    /// The connection table and its collector.
    pub connections: ConnStatus,
}

/// The connection table and its collector, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnStatus {
    /// Entries the table can hold (`--conn-table-size` when it was created).
    pub table_size: u32,
    /// Entries at the collector's last pass.
    pub entries: usize,
    /// Idle timeout of a handshake that does not complete, seconds.
    pub timeout_syn_s: u64,
    /// Idle timeout of an established connection, seconds.
    pub timeout_established_s: u64,
    /// Idle timeout after a FIN or an RST, seconds.
    pub timeout_closing_s: u64,
    /// Time between collector passes now (it adapts to the churn), ms.
    pub collect_interval_ms: u64,
    /// Connections the collector released (timed out) since the agent started.
    pub released_by_timeout: u64,
    /// Pools of removed channels still draining.
    pub draining_pools: usize,
}
