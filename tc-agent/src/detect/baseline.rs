//! Robust baselines of a rate series: an exponentially weighted moving
//! average of the value and of its absolute deviation from that average,
//! with a warm-up, outlier clipping, freezing, and lazy decay over the
//! samples a series was absent (its rate was zero).
//!
//! Why EWMA and not Holt-Winters: the detectors judge rates over seconds to
//! minutes against the last few minutes; a daily season would need a day of
//! history before the first verdict and state per series that is hundreds
//! of times larger. The EWMA needs four numbers per series.
//!
//! Robustness: once warm, a sample is clipped to `mean + max(3·dev,
//! mean/4)` before it is learned, so one burst moves the mean by a bounded
//! step while a slow ramp is still followed. A detector freezes the
//! baseline while an episode is open (or about to open), so an attack does
//! not become the new normal.

/// Weight of a new sample once warm: a time constant of about 60 samples
/// (a minute at the agent's 1 s sample).
pub const ALPHA: f64 = 1.0 / 60.0;

/// Samples a series needs before a detector gives a verdict on it.
pub const WARMUP: u32 = 10;

/// A baseline of one rate series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    /// The smoothed value: what "normal" is.
    mean: f64,
    /// The smoothed absolute deviation from `mean`: how much normal wanders.
    dev: f64,
    /// Samples learned (absent samples included), saturating: the warm-up.
    n: u32,
    /// The detector tick of the last sample learned, for lazy decay over
    /// the ticks the series was absent.
    tick: u64,
}

impl Default for Baseline {
    fn default() -> Self {
        Self::new()
    }
}

impl Baseline {
    /// An empty baseline: nothing learned, not warm.
    pub const fn new() -> Self {
        Self {
            mean: 0.0,
            dev: 0.0,
            n: 0,
            tick: 0,
        }
    }

    /// A baseline of a series known to have been zero and warm: for a
    /// destination first seen after the detector warmed up, when zero is the
    /// truth (it had no traffic).
    pub const fn zero_warm(tick: u64) -> Self {
        Self {
            mean: 0.0,
            dev: 0.0,
            n: WARMUP,
            tick,
        }
    }

    /// The normal value.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// How much the value normally wanders (mean absolute deviation).
    pub fn dev(&self) -> f64 {
        self.dev
    }

    /// Whether it has seen enough samples for a verdict.
    pub fn warm(&self) -> bool {
        self.n >= WARMUP
    }

    /// Samples learned (saturating).
    pub fn samples(&self) -> u32 {
        self.n
    }

    /// The last tick learned.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// Learns the value `x` of tick `tick`: first the ticks since the last
    /// one learned count as zeros (the series was absent), then `x`.
    pub fn learn(&mut self, x: f64, tick: u64) {
        self.skip_to(tick);
        self.push(x);
        self.tick = tick;
    }

    /// Learns the ticks between the last one learned and `tick` as zeros
    /// (the series was absent), so that a verdict at `tick` sees them.
    pub fn skip_to(&mut self, tick: u64) {
        let gap = tick.saturating_sub(self.tick).saturating_sub(1);
        self.tick = self.tick.max(tick.saturating_sub(1));
        if self.n == 0 || gap == 0 {
            return;
        }
        let gap = gap.min(100_000) as u32;
        if !self.warm() {
            // A warm-up interrupted by absence: learn the zeros one by one
            // until warm (at most WARMUP steps), then decay the rest.
            let steps = gap.min(WARMUP - self.n.min(WARMUP));
            for _ in 0..steps {
                self.push(0.0);
            }
            let rest = gap - steps;
            if rest > 0 {
                self.decay(rest);
            }
        } else {
            self.decay(gap);
        }
    }

    /// `k` zeros at once: the mean decays geometrically, and the deviation
    /// moves towards the old mean (each zero is `mean` away from it).
    fn decay(&mut self, k: u32) {
        let keep = (1.0 - ALPHA).powi(k.min(i32::MAX as u32) as i32);
        let old = self.mean;
        self.mean *= keep;
        self.dev = self.dev * keep + (1.0 - keep) * old;
        self.n = self.n.saturating_add(k);
    }

    /// Marks `tick` as seen without learning it: a frozen series (an
    /// episode is open) keeps its baseline and does not treat the frozen
    /// ticks as absence later.
    pub fn hold(&mut self, tick: u64) {
        self.tick = tick;
    }

    /// Learns `x` as the next value of a sparse series (one that has a
    /// value only in some samples, like a handshake time): absent samples
    /// are not zeros and the tick is not used.
    pub fn learn_sparse(&mut self, x: f64) {
        self.push(x);
    }

    /// One sample.
    fn push(&mut self, x: f64) {
        let x = if x.is_finite() { x.max(0.0) } else { 0.0 };
        if self.n == 0 {
            self.mean = x;
            self.dev = 0.0;
            self.n = 1;
            return;
        }
        // During the warm-up, a plain running average (weight 1/n) gets to
        // the level fast; after it, the slow EWMA.
        let a = if self.warm() {
            ALPHA
        } else {
            1.0 / f64::from(self.n + 1)
        };
        let x = if self.warm() {
            x.min(self.mean + (3.0 * self.dev).max(self.mean / 4.0))
        } else {
            x
        };
        let d = (x - self.mean).abs();
        self.dev += a * (d - self.dev);
        self.mean += a * (x - self.mean);
        self.n = self.n.saturating_add(1);
    }

    /// Whether `x` is far above normal: at least `ratio` times the mean and
    /// `k` deviations above it. A zero baseline makes any positive `x` far
    /// above (the caller applies its absolute floor).
    pub fn far_above(&self, x: f64, ratio: f64, k: f64) -> bool {
        self.warm() && x >= ratio * self.mean && x >= self.mean + k * self.dev && x > 0.0
    }

    /// `x / mean`, `None` when the mean is zero.
    pub fn factor(&self, x: f64) -> Option<f64> {
        (self.mean > 0.0).then(|| x / self.mean)
    }
}

/// An onset is a step, not a ramp: the sample that opens an episode is at
/// least this many times the highest 1 s value of the series over the last
/// minute before the episode became pending ([`RecentMax`]). A ramp's next
/// values are barely above its recent maximum; a 2x-3x step is well above
/// the maximum of ±30% noise (1.3x the mean).
pub const STEP: f64 = 1.4;

/// ... and the samples of the pending episode, this one included, at
/// least this many times it on average: noise on a ramp can lift one
/// sample by 1.4x over the last minute's highest, hardly all of them.
pub const STEP_MEAN: f64 = 1.2;

/// Ticks one bin of [`RecentMax`] spans.
pub const MAX_BIN: u64 = 10;

/// Bins [`RecentMax`] keeps: with [`MAX_BIN`], a minute.
pub const MAX_BINS: usize = 6;

/// The highest value of a series over the last minute, per 10-tick bin in
/// a small ring (cheap: seven numbers per series). Like a [`Baseline`], it
/// learns only while no episode is open or pending, so it is the highest
/// value *before* the onset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RecentMax {
    /// The highest value of each bin; `bins[(tick / MAX_BIN) % MAX_BINS]`.
    bins: [f64; MAX_BINS],
    /// The bin index (`tick / MAX_BIN`) of the last value learned, to
    /// clear the bins the series skipped.
    bin: u64,
    /// Sum of the values held (the pending episode's), since the last one
    /// learned.
    held_sum: f64,
    /// How many values were held.
    held_n: u32,
}

impl RecentMax {
    /// Learns the value `x` of tick `tick`.
    pub fn learn(&mut self, x: f64, tick: u64) {
        let x = if x.is_finite() { x.max(0.0) } else { 0.0 };
        let bin = tick / MAX_BIN;
        if bin != self.bin {
            // The bins between the last one and this one saw nothing.
            let skipped = bin.saturating_sub(self.bin).min(MAX_BINS as u64);
            for i in 1..=skipped {
                self.bins[((self.bin + i) % MAX_BINS as u64) as usize] = 0.0;
            }
            self.bin = bin;
        }
        let b = &mut self.bins[(bin % MAX_BINS as u64) as usize];
        *b = b.max(x);
        self.held_sum = 0.0;
        self.held_n = 0;
    }

    /// Notes the value `x` of a sample not learned (an episode is pending
    /// or open): the step test averages the pending samples.
    pub fn hold(&mut self, x: f64) {
        if x.is_finite() {
            self.held_sum += x.max(0.0);
            self.held_n = self.held_n.saturating_add(1);
        }
    }

    /// The highest value learned over the last minute.
    pub fn max(&self) -> f64 {
        self.bins.iter().copied().fold(0.0, f64::max)
    }

    /// Whether `x` is a step above the last minute: at least [`STEP`]
    /// times its highest value, and the samples held since (the pending
    /// episode's) with `x` at least [`STEP_MEAN`] times it on average.
    pub fn stepped(&self, x: f64) -> bool {
        let max = self.max();
        let mean = (self.held_sum + x) / f64::from(self.held_n + 1);
        x >= STEP * max && mean >= STEP_MEAN * max
    }
}

#[cfg(test)]
mod tests;
