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

#[cfg(test)]
mod tests;
