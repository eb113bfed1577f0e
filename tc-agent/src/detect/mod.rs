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
//!
//! The detectors judge samples of about a second: an agent that samples
//! faster has its samples summed first (`bucket`), so every count of
//! samples below is a count of seconds, whatever `--sample-ms` is.
//!
//! Every series has a [`baseline`] (EWMA of the value and of its absolute
//! deviation, a time constant of a minute, no verdict in its first
//! [`baseline::WARMUP`] samples, frozen while an episode is open or
//! pending) and every episode hysteresis (a few hot samples in a row open
//! it, never one; ten calm ones in a row end it). Coherence: see [`Detector::observe`].
//!
//! ## Thresholds and what they give on synthetic traffic
//!
//! The constants are in each detector's module. Measured by the
//! `threshold_table` tests (`cargo test -p tc-agent --lib threshold_table
//! -- --nocapture`), 1 s samples, seeded; a delay counts samples from the
//! onset's first sample (1 = flagged at it; with real traffic the onset's
//! first sample is partial, add up to one).
//!
//! Wandering traffic: `Iid` uniform within ±30% each sample; `Walk` a
//! bounded random walk within ±30%; `Bursty` ±30% plus, in 2% of the
//! samples, a burst of 3x for one or two samples.
//!
//! | detector | traffic | false events per hour |
//! |---|---|---|
//! | spike (ratio 2.0, k 4, 3 samples, step 1.4x) | one interaction, Iid/Walk/Bursty ±30% (50 h each) | 0 / 0 / 0 |
//! | spike | Iid ±50%, Walk ±50%, Iid ±80% | 0 / 0 / 0 |
//! | spike, ratio 1.5 instead | Walk ±50% | 0 (0.06 before the step test; 1.5 still rejected: it would call 1.5x growth a spike) |
//! | upstream_collapse | a destination of 5 clients, Iid/Walk/Bursty ±30%, Iid ±50% (20 h each) | 0 |
//! | dos | a destination of 20 sources, Iid/Walk/Bursty ±30%, Iid/Walk ±50% (5 h each, any kind of event) | 0 |
//! | dos, stress: every source also bursts to 10x for 1-2 s, 7 times an hour | 10.8 on destinations of 5 sources, 0 of 20 (a 2 s burst of one of five is the pattern to the letter: a known weakness) |
//!
//! | onset | delay (samples) |
//! |---|---|
//! | spike 3x, 80x | 3 (all 20 seeds, both noises) |
//! | spike 2.5x | median 3 (max 3-8); 5 of 20 missed (Iid), 2 (Walk): a sample of the new level under the ratio lets the last minute's maximum learn it, and the step test then refuses |
//! | spike 2x (the threshold) | median 3; 15-16 of 20 missed |
//! | spike 1.5x | never (below the ratio) |
//! | spike: growth doubling every 1/2/3/5 s (from 100 pkt/s) | 4 / 5 / 6 / 13 (at 8x / 4x / 3.2x / 5.3x) |
//! | spike, dos, upstream_collapse: a new pair ramping linearly 0 to 1000 pkt/s over 20/30/60/120 s, to a new or a busy destination | none (without noise; with ±30% noise on every second one seed opens a spike at the ramp's 19th second, all slopes alike) |
//! | upstream_collapse: demand 2x/4x/6x, responses flat | 3 |
//! | upstream_collapse: the real squeezed nginx replayed (demand 1.6x, ratio 0.6x) | 3 |
//! | spike: the real tripled client set replayed | 3 (its first whole sample counted as 1) |
//! | dos: 3 of 200 sources 80x (55% of the traffic) | 2 (5 seeds; always two hot samples: one burst second is no flood) |
//! | dos: 10 of 200 sources 40x; 1 of 200 400x | 2 |
//! | dos: 10 of 200 sources 20x (51%, at the share threshold) | 2, once missed |
//! | dos: 3 of 20 sources 15x or 80x, or 1 of 20 at 160x (1 MB uploaded in a second at 50 kbit/s), for 1 sample / for 3 | none / 2 |
//! | dos: 3 of 200 sources 10x or 20x (13%, 23% of the traffic) | none: not dominated |
//!
//! An onset is a step, not a ramp: the sample that opens an episode (any
//! detector) must be at least [`baseline::STEP`] times the highest 1 s
//! value of its series over the last minute before the episode became
//! pending, and the pending samples [`baseline::STEP_MEAN`] times it on
//! average ([`baseline::RecentMax`]): a new service ramping up outruns its
//! lagging baseline but never its own recent maximum, without minutes of
//! warm-up.
//!
//! Cost (`tests::steady_state_does_not_grow`, `tests::state_is_bounded_and_pruned`,
//! release build, one core of the development machine): 1,000
//! interactions and 4,000 sources, the same every sample: 0.46 ms a sample
//! (median); 1,000 interactions and 3,000 sources all new every sample
//! (a random-source churn, the source cap reached and evicting): 2.0 ms
//! median, 6.4 ms at worst. State is bounded by caps (8,192 series per
//! kind in `spike`, 4,096 destinations, 1,024 clients each in
//! `upstream_collapse`, 65,536 sources in `dos`) and series idle for five
//! minutes (sources, clients, interactions) or an hour (destinations) are
//! forgotten.

pub mod baseline;
mod bucket;
pub mod collapse;
pub mod dos;
mod episode;
pub mod events;
mod evidence;
mod prune;
pub mod scope;
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
    /// Request (client to server) packets.
    pub req_pkts: u64,
    /// Request wire bytes.
    pub req_bytes: u64,
}

/// What a channel covers, as detection reads it. Made once per policy and
/// shared by every sample: a 1,024-channel policy of 128 prefixes each
/// names 131,072 CIDRs, which made per sample cost milliseconds and held
/// three copies of several MiB.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelSides {
    /// Its sources as an event names them ([`scope::Side`]): the endpoint
    /// set its `from` equals, else its CIDRs; nothing for `any`.
    pub from: scope::Side,
    /// Its destinations likewise.
    pub to: scope::Side,
    /// Its destination networks as the live policy holds them (`any`
    /// included), to tell which destinations its drops concern (shared
    /// with the policy: 65,536 networks are not copied).
    pub to_nets: std::sync::Arc<[ipnet::IpNet]>,
    /// The endpoint sets within its destinations ([`scope::sets_within`]),
    /// likewise.
    pub to_sets: Vec<String>,
}

/// One channel's rates over one sample, and what it covers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChannelSample {
    /// The channel's name.
    pub name: String,
    /// What it covers (shared: see [`ChannelSides`]).
    pub sides: std::sync::Arc<ChannelSides>,
    /// Bits per second the channel let through.
    pub passed_bps: f64,
    /// Packets per second the channel let through.
    pub passed_pps: f64,
    /// Bits per second it dropped (or, in monitor mode, would have).
    pub dropped_bps: f64,
    /// Packets per second it dropped (or would have).
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
    /// The agent's samples summed into the ~1 s ones the detectors judge.
    bucket: bucket::Bucket,
    /// Samples judged: the detectors' clock (warm-ups, idle series).
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
    /// `spike`: interactions watched.
    pub spike_pairs: usize,
    /// `spike`: channels watched.
    pub spike_channels: usize,
    /// `upstream_collapse`: destinations watched.
    pub collapse_dests: usize,
    /// `upstream_collapse`: clients watched, all destinations together.
    pub collapse_clients: usize,
    /// `dos`: destinations watched.
    pub dos_dests: usize,
    /// `dos`: sources watched, all destinations together.
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
    ///
    /// Samples shorter than a second are summed until they span one
    /// (`bucket`): what they return is empty until then.
    pub fn observe(&mut self, s: &Sample) -> Vec<Change> {
        let Some(s) = self.bucket.add(s) else {
            return Vec::new();
        };
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
