//! Synthetic traffic for the detectors' unit tests: seeded wandering rates
//! and the samples the agent would build from them.

use proptest::{
    prelude::RngExt,
    test_runner::{RngAlgorithm, TestRng},
};
use tc_common::IxCounters;

use super::{ChannelSample, Detector, Event, EventKind, PairSample, Sample, SourceSample};

/// A seeded generator.
pub fn rng(seed: u8) -> TestRng {
    TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32])
}

/// How a synthetic rate wanders around its level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Noise {
    /// Each sample independent, uniform within ±`amp`.
    Iid(f64),
    /// A random walk bounded to ±`amp` (steps of a fifth of it), plus
    /// independent jitter: the sum stays within ±`amp`.
    Walk(f64),
    /// Independent within ±`amp`, and in 2% of the samples a burst of
    /// three times the level lasting one or two samples (a transfer, a
    /// retransmission storm), never two bursts back to back: a burst of
    /// three samples or more is a spike by the detectors' definition.
    Bursty(f64),
}

/// One wandering rate.
#[derive(Debug, Clone)]
pub struct Wander {
    /// The model.
    noise: Noise,
    /// The walk's position, within ±1.
    pos: f64,
    /// Samples left in the current burst.
    burst: u32,
    /// Whether the previous sample was part of a burst.
    bursting: bool,
}

impl Wander {
    pub fn new(noise: Noise) -> Self {
        Self {
            noise,
            pos: 0.0,
            burst: 0,
            bursting: false,
        }
    }

    /// The next multiplier of the level: 1 ± amp.
    pub fn next(&mut self, rng: &mut TestRng) -> f64 {
        match self.noise {
            Noise::Iid(amp) => 1.0 + amp * rng.random_range(-1.0..=1.0),
            Noise::Walk(amp) => {
                self.pos = (self.pos + rng.random_range(-0.2..=0.2)).clamp(-1.0, 1.0);
                let jitter = rng.random_range(-1.0..=1.0);
                1.0 + amp * (0.7 * self.pos + 0.3 * jitter)
            }
            Noise::Bursty(amp) => {
                if self.burst == 0 && !self.bursting && rng.random_range(0.0..1.0) < 0.02 {
                    self.burst = rng.random_range(1..=2);
                }
                let x = 1.0 + amp * rng.random_range(-1.0..=1.0);
                self.bursting = self.burst > 0;
                if self.burst > 0 {
                    self.burst -= 1;
                    3.0 * x
                } else {
                    x
                }
            }
        }
    }
}

/// One interaction's traffic in one 1 s sample.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The client's name.
    pub from: String,
    /// The server's name.
    pub to: String,
    /// IP protocol number.
    pub proto: u8,
    /// Server port.
    pub port: u16,
    /// Request packets/s.
    pub pps: f64,
    /// Bytes per request packet.
    pub bpp: f64,
    /// Response bytes per request byte.
    pub resp_ratio: f64,
    /// SYNs per second.
    pub syns: f64,
    /// SYN-ACKs per second.
    pub synacks: f64,
    /// Handshake time, microseconds.
    pub rtt_us: f64,
    /// Resets per second.
    pub rsts: f64,
}

impl Flow {
    /// A TCP flow to port 80: `pps` requests of 100 bytes, answered with 8
    /// times the bytes, one handshake a second in 50 µs.
    pub fn tcp(from: &str, to: &str, pps: f64) -> Self {
        Self {
            from: from.to_string(),
            to: to.to_string(),
            proto: 6,
            port: 80,
            pps,
            bpp: 100.0,
            resp_ratio: 8.0,
            syns: 1.0,
            synacks: 1.0,
            rtt_us: 50.0,
            rsts: 0.0,
        }
    }

    /// The pair sample of this flow at `scale` times its request rate.
    pub fn pair(&self, scale: f64) -> PairSample {
        let req_pkts = (self.pps * scale).round() as u64;
        let req_bytes = (req_pkts as f64 * self.bpp).round() as u64;
        let resp_bytes = (req_bytes as f64 * self.resp_ratio).round() as u64;
        let syns = self.syns.round() as u64;
        let synacks = self.synacks.round() as u64;
        PairSample {
            from: self.from.clone(),
            to: self.to.clone(),
            proto: self.proto,
            port: self.port,
            d: IxCounters {
                req_pkts,
                req_bytes,
                resp_pkts: (resp_bytes / 1000).max(u64::from(resp_bytes > 0)),
                resp_bytes,
                syns,
                synacks,
                rsts: self.rsts.round() as u64,
                fins: 0,
                rtt_sum_ns: (self.rtt_us * 1000.0).round() as u64 * synacks,
                rtt_count: synacks,
            },
        }
    }

    /// The source sample of this flow (its `from` as the address).
    pub fn source(p: &PairSample) -> SourceSample {
        SourceSample {
            source: p.from.clone(),
            to: p.to.clone(),
            req_pkts: p.d.req_pkts,
            req_bytes: p.d.req_bytes,
        }
    }
}

/// A 1 s sample at second `t` of these pairs (each also a source).
pub fn sample(t: u64, pairs: Vec<PairSample>, channels: Vec<ChannelSample>) -> Sample {
    let sources = pairs.iter().map(Flow::source).collect();
    Sample {
        t,
        dt: 1.0,
        pairs,
        sources,
        channels,
    }
}

/// A channel offered `bps` (and 1 packet per 1000 bits), none dropped.
pub fn channel(name: &str, bps: f64) -> ChannelSample {
    ChannelSample {
        name: name.to_string(),
        passed_bps: bps,
        passed_pps: bps / 1000.0,
        dropped_bps: 0.0,
        dropped_pps: 0.0,
        sides: std::sync::Arc::new(super::ChannelSides {
            to_nets: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()].into(),
            ..Default::default()
        }),
    }
}

/// What a run of a detector saw: every event that started, with the
/// sample index it started at, and the index of every end.
#[derive(Debug, Default)]
pub struct Run {
    /// Events as they started, with the sample index.
    pub started: Vec<(u64, Event)>,
    /// Events as they ended, with the sample index.
    pub ended: Vec<(u64, Event)>,
    /// Open events as they changed, with the sample index.
    pub updated: Vec<(u64, Event)>,
}

impl Run {
    /// Feeds `s` (the `i`th sample) and records the changes.
    pub fn feed(&mut self, det: &mut Detector, i: u64, s: &Sample) {
        for c in det.observe(s) {
            match c {
                super::Change::Started(e) => self.started.push((i, e)),
                super::Change::Ended(e) => self.ended.push((i, e)),
                super::Change::Updated(e) => self.updated.push((i, e)),
            }
        }
    }

    /// The events of `kind` that started.
    pub fn of(&self, kind: EventKind) -> Vec<&(u64, Event)> {
        self.started
            .iter()
            .filter(|(_, e)| e.kind == kind)
            .collect()
    }
}
