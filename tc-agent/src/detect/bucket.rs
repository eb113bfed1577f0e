//! The detectors judge samples of about a second: their thresholds (hot
//! samples in a row, warm-up, calm, idle) count such samples, and were
//! chosen on them. An agent that samples faster (`run --sample-ms 200`, as
//! the tests do) has its samples summed here into one of at least
//! [`BUCKET_S`] before the detectors see it; a slower one passes through.

use std::collections::HashMap;

use super::{ChannelSample, Sample};

/// Seconds a judged sample spans at least (less a little for jitter).
pub const BUCKET_S: f64 = 1.0;

/// Jitter allowed under [`BUCKET_S`]: a 1 s sampler that fires a few
/// milliseconds early still passes straight through.
const SLACK_S: f64 = 0.05;

/// The samples summed so far.
#[derive(Debug, Default)]
pub struct Bucket {
    /// The sum: deltas added, `dt` the seconds covered, `t` the last
    /// sample's time; channel rates as rate × seconds until [`Bucket::take`]
    /// divides them.
    sum: Sample,
    /// Where each interaction is in `sum.pairs`.
    pairs: HashMap<(String, String, u8, u16), usize>,
    /// Where each (source, destination) is in `sum.sources`.
    sources: HashMap<(String, String), usize>,
    /// Where each channel is in `sum.channels`.
    channels: HashMap<String, usize>,
}

impl Bucket {
    /// Adds `s`; returns the sample to judge when one is complete: `s`
    /// itself when it spans a second alone and nothing is pending, else
    /// the sum once it spans one.
    pub fn add<'a>(&'a mut self, s: &'a Sample) -> Option<&'a Sample> {
        if s.dt <= 0.0 {
            return None;
        }
        if self.sum.dt == 0.0 && s.dt >= BUCKET_S - SLACK_S {
            return Some(s);
        }
        if self.sum.dt >= BUCKET_S - SLACK_S {
            self.clear();
        }
        self.sum.t = s.t;
        self.sum.dt += s.dt;
        for p in &s.pairs {
            let key = (p.from.clone(), p.to.clone(), p.proto, p.port);
            match self.pairs.get(&key) {
                Some(&i) => self.sum.pairs[i].d.add(&p.d),
                None => {
                    self.pairs.insert(key, self.sum.pairs.len());
                    self.sum.pairs.push(p.clone());
                }
            }
        }
        for x in &s.sources {
            let key = (x.source.clone(), x.to.clone());
            match self.sources.get(&key) {
                Some(&i) => {
                    let y = &mut self.sum.sources[i];
                    y.req_pkts += x.req_pkts;
                    y.req_bytes += x.req_bytes;
                }
                None => {
                    self.sources.insert(key, self.sum.sources.len());
                    self.sum.sources.push(x.clone());
                }
            }
        }
        for c in &s.channels {
            let i = match self.channels.get(&c.name) {
                Some(&i) => i,
                None => {
                    self.channels
                        .insert(c.name.clone(), self.sum.channels.len());
                    self.sum.channels.push(ChannelSample {
                        name: c.name.clone(),
                        passed_bps: 0.0,
                        passed_pps: 0.0,
                        dropped_bps: 0.0,
                        dropped_pps: 0.0,
                    });
                    self.sum.channels.len() - 1
                }
            };
            let y = &mut self.sum.channels[i];
            y.passed_bps += c.passed_bps * s.dt;
            y.passed_pps += c.passed_pps * s.dt;
            y.dropped_bps += c.dropped_bps * s.dt;
            y.dropped_pps += c.dropped_pps * s.dt;
        }
        if self.sum.dt < BUCKET_S - SLACK_S {
            return None;
        }
        let dt = self.sum.dt;
        for y in &mut self.sum.channels {
            y.passed_bps /= dt;
            y.passed_pps /= dt;
            y.dropped_bps /= dt;
            y.dropped_pps /= dt;
        }
        Some(&self.sum)
    }

    /// Empties the bucket (keeping its allocations).
    fn clear(&mut self) {
        self.sum.dt = 0.0;
        self.sum.pairs.clear();
        self.sum.sources.clear();
        self.sum.channels.clear();
        self.pairs.clear();
        self.sources.clear();
        self.channels.clear();
    }
}

#[cfg(test)]
mod tests;
