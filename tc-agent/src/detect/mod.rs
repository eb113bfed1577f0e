//! Detection: the seed's emergent behaviours, found in what `observe/`
//! sampled, and the backpressure that answers each.
//!
//! Data flows one way: every sample, the agent hands the detector a
//! [`Sample`] (this sample's deltas by interaction between names, and by
//! single source per destination, plus the channels' rates); each detector
//! keeps robust baselines of its series ([`baseline`]) and opens an
//! [`Event`] when a series leaves its baseline in its own pattern, and ends
//! it when the series has been back for a while (hysteresis: one event per
//! episode). [`suggest`] turns an event into a complete policy file.
//!
//! - [`spike`]: an interaction's or a channel's request rate far above its
//!   own baseline;
//! - [`collapse`]: demand into a destination rises while its responses stop
//!   keeping up (`upstream_collapse`);
//! - [`dos`]: traffic to a destination rises sharply and a few sources, or
//!   a sudden crowd of new ones, carry it.
//!
//! Nothing here does I/O: the agent feeds samples in and reads events out,
//! so every detector is tested on synthetic series.

pub mod baseline;
pub mod collapse;
pub mod dos;
pub mod events;
pub mod spike;
pub mod suggest;

use tc_common::IxCounters;

pub use self::events::{Change, Event, EventKind, EventLog, Found};

/// One interaction between names in one sample, as `map` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSample {
    /// The clients' endpoint set, address (IPv4) or /64 (IPv6), or `other`.
    pub from: String,
    /// The servers' name, likewise.
    pub to: String,
    /// IP protocol number (6 TCP, 17 UDP, 1/58 ICMP).
    pub proto: u8,
    /// The server's port (0 without ports).
    pub port: u16,
    /// What the sample added: both directions, TCP flags, handshake times.
    pub d: IxCounters,
}

/// One source address's traffic to one destination in one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSample {
    /// The client address as text (IPv4 dotted, IPv6 full), or `other` for
    /// the sources too small to be tracked one by one.
    pub source: String,
    /// The destination's name, as [`PairSample::to`].
    pub to: String,
    /// Request (client to server) packets and wire bytes.
    pub req_pkts: u64,
    pub req_bytes: u64,
}

/// One channel's rates over one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSample {
    /// The channel's name.
    pub name: String,
    /// Traffic the channel let through (bits and packets per second).
    pub passed_bps: f64,
    pub passed_pps: f64,
    /// Traffic it dropped (or, in monitor mode, would have).
    pub dropped_bps: f64,
    pub dropped_pps: f64,
}

/// What the agent saw in one sample period.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// When the sample was taken, unix seconds.
    pub t: u64,
    /// Seconds since the previous sample: deltas divided by it are rates.
    pub dt: f64,
    /// Every interaction between names with traffic in the sample.
    pub pairs: Vec<PairSample>,
    /// Per destination, every tracked source with traffic in the sample,
    /// and `other` for the untracked ones.
    pub sources: Vec<SourceSample>,
    /// Every channel of the live policy.
    pub channels: Vec<ChannelSample>,
}

/// The detectors and the events they opened.
#[derive(Debug, Default)]
pub struct Detector {
    /// Demand spikes on interactions and channels.
    spike: spike::Spike,
    /// Upstreams that stop keeping up with their demand.
    collapse: collapse::Collapse,
    /// Destinations flooded by a few sources or a crowd of new ones.
    dos: dos::Dos,
    /// Every event since the agent started (bounded), with a cursor for
    /// `events --follow`.
    log: EventLog,
}

impl Detector {
    /// Feeds one sample to every detector; returns what started or ended,
    /// also recorded in [`Detector::log`].
    pub fn observe(&mut self, s: &Sample) -> Vec<Change> {
        let mut found = Vec::new();
        found.extend(self.spike.observe(s));
        found.extend(self.collapse.observe(s));
        found.extend(self.dos.observe(s));
        self.log.apply(found)
    }

    /// The events, for `events` and `suggest`.
    pub fn log(&self) -> &EventLog {
        &self.log
    }
}
