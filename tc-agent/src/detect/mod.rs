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
mod episode;
pub mod events;
mod evidence;
mod prune;
pub mod spike;
pub mod suggest;
#[cfg(test)]
mod testutil;

use std::collections::HashSet;

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
    /// Samples seen: the detectors' clock (warm-ups, idle series).
    tick: u64,
    /// Demand spikes on interactions and channels.
    spike: spike::Spike,
    /// Upstreams that stop keeping up with their demand.
    collapse: collapse::Collapse,
    /// Destinations flooded by a few sources or a crowd of new ones.
    dos: dos::Dos,
    /// Destinations where a more specific detector has an episode open or
    /// pending, rebuilt every sample (kept for its allocation).
    busy: HashSet<String>,
    /// Every event since the agent started (bounded), with a cursor for
    /// `events --follow`.
    log: EventLog,
}

/// How much state the detectors keep, for tests and metrics: every count
/// is bounded by a cap in its detector's module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// `spike`: interactions and channels watched.
    pub spike_pairs: usize,
    pub spike_channels: usize,
    /// `upstream_collapse`: destinations and their clients.
    pub collapse_dests: usize,
    pub collapse_clients: usize,
    /// `dos`: destinations and their sources.
    pub dos_dests: usize,
    pub dos_sources: usize,
}

impl Detector {
    /// Feeds one sample to every detector; returns what started or ended,
    /// also recorded in [`Detector::log`].
    ///
    /// Coherence, one event per episode: the most specific pattern wins.
    /// `dos` is decided first; `upstream_collapse` then opens no event on
    /// a destination where `dos` has an episode open or pending, and
    /// `spike` none on an interaction into a destination where either has
    /// one (nor on a channel while any destination has one). The detector
    /// that stands back keeps a silent episode, so that it does not fire
    /// when the louder one ends while the traffic is still up. `spike` and
    /// `upstream_collapse` need one more hot sample than `dos`, so the more
    /// specific one wins when all see the same onset.
    pub fn observe(&mut self, s: &Sample) -> Vec<Change> {
        self.tick += 1;
        let tick = self.tick;
        let mut found = self.dos.observe(s, tick);
        self.busy.clear();
        self.dos.busy(&mut self.busy);
        found.extend(self.collapse.observe(s, tick, &self.busy));
        self.collapse.busy(&mut self.busy);
        found.extend(self.spike.observe(s, tick, &self.busy));
        self.log.apply(found)
    }

    /// The events, for `events` and `suggest`.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// How much state the detectors keep.
    pub fn state_size(&self) -> StateSize {
        let (spike_pairs, spike_channels) = self.spike.len();
        let (collapse_dests, collapse_clients) = self.collapse.len();
        let (dos_dests, dos_sources) = self.dos.len();
        StateSize {
            spike_pairs,
            spike_channels,
            collapse_dests,
            collapse_clients,
            dos_dests,
            dos_sources,
        }
    }
}

#[cfg(test)]
mod tests;
