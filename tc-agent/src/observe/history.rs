//! The metric history: per series (a channel, or an interaction between
//! endpoint sets), every metric at 1 s resolution for the last 15 minutes
//! and at 1 min resolution for the last 24 hours, in bounded memory.
//!
//! # What is kept, and how precisely
//!
//! Values are kept to **1% relative precision**: each is stored as the
//! nearest power of 1.02 (so a value comes back within ±0.995% of what was
//! recorded), with exact codes for 0 and for "no value" (NaN: a metric
//! without a reading that second, such as a handshake time without
//! handshakes). Magnitudes from 1e-140 to 1e140 are kept; beyond that they
//! are clamped. Negative values keep their sign. A minute point is the mean
//! of the seconds recorded in that minute (seconds without a value do not
//! count; a minute without any is a gap), computed from the exact values and
//! then stored like any other point.
//!
//! # How it fits in memory
//!
//! 2,000 series x 7 metrics x 2,340 points as plain `f64` would be 150 MB.
//! Here a series holds its points in blocks of 60 slots (a minute of
//! seconds, an hour of minutes). The open block keeps one 16-bit code per
//! metric and slot; when time moves past it, it is sealed into a compact
//! byte string, per metric:
//!
//! - a header byte: an all-gap, all-zero or all-value block costs nothing
//!   more than it; a block mixing them adds two 60-bit masks (which slots
//!   have a value, which of those are non-zero);
//! - the non-zero codes bit-packed at the narrowest width that holds either
//!   their differences from one to the next (good for a rate that drifts) or
//!   their offsets from the block's smallest (good for a rate that jitters
//!   around a level), whichever is shorter.
//!
//! A rate jittering ±30% around its level costs about 5 bits a second; a
//! minute mean is steadier and costs 2 to 3 bits; an idle series costs a
//! byte per metric per block. Sealed blocks form two rings (15 minutes of
//! seconds, 24 hours of minutes) from which the oldest block drops whole.
//! With 1,024 channels (4 metrics) and 1,000 interactions (7 metrics) at
//! full retention the store measures 15.3 MiB (0.6 bytes a point, overheads
//! included), under the 32 MiB target; the memory test in `history/tests.rs`
//! prints the figure.
//!
//! Callers record each live series about once a second with a unix second;
//! the first sample of a second wins. A sample older than the open minute
//! is ignored, unless it is more than 15 minutes older (the clock was set
//! back): then the series starts over.
//!
//! Metric names are shown as given; `tc-agent history` formats them by
//! suffix (`_bps` bits per second, `_pps` packets per second, `_per_s` per
//! second, `_us` microseconds).

use std::collections::{HashMap, VecDeque};

use crate::control::HistoryReport;

/// Slots per block: a minute of seconds, an hour of minutes.
const BLOCK: u64 = 60;
/// Points the 1 s ring answers for: 15 minutes.
pub const SECOND_POINTS: u64 = 900;
/// Points the 1 min ring answers for: 24 hours.
pub const MINUTE_POINTS: u64 = 1_440;
/// Sealed blocks kept behind the open one, per ring: enough to cover the
/// ring's points whatever the open block's fill.
const SECOND_BLOCKS: u64 = SECOND_POINTS / BLOCK;
const MINUTE_BLOCKS: u64 = MINUTE_POINTS / BLOCK;
/// A series not recorded for this long is forgotten.
const IDLE_S: u64 = 86_400;

/// Stored codes: 0 is zero, `GAP` is no value, `1..=0x7ffe` positive and
/// `0x8001..=0xfffe` negative values (`POS`/`NEG` plus the power of 1.02).
const ZERO: u16 = 0;
const GAP: u16 = 0xffff;
const POS: i32 = 0x4000;
const NEG: i32 = 0xc000;
/// Exponents of 1.02 that fit the code space.
const EXP_MIN: f64 = -16_383.0;
const EXP_MAX: f64 = 16_382.0;
/// ln(1.02): one code step is 2%, so rounding keeps 1%.
const LN_STEP: f64 = 0.019_802_627_296_179_712;

/// Block header shapes (two low bits).
const SHAPE_GAP: u8 = 0;
const SHAPE_ZERO: u8 = 1;
const SHAPE_VALUES: u8 = 2;
const SHAPE_MIXED: u8 = 3;
/// Header bit: values are offsets from the smallest, not differences.
const OFFSETS: u8 = 4;
/// Every slot of a block, as a mask.
const FULL: u64 = (1 << BLOCK) - 1;

/// The metric history of every series the agent tracks.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Series by key: a channel name, or `FROM->TO` for an interaction
    /// between endpoint sets (the caller chooses).
    series: HashMap<String, Series>,
    /// Where blocks are encoded before being copied out at their exact
    /// size: one allocation a sealed block, no slack, little fragmentation.
    scratch: Vec<u8>,
}

/// One series: its metrics at both resolutions.
#[derive(Debug, Clone)]
struct Series {
    /// The metric names, in the order values are recorded and shown.
    metrics: &'static [&'static str],
    /// Last unix second recorded: for `forget_idle`.
    last_t: u64,
    /// Slot = second, block = minute. The open block is the minute being
    /// recorded, whose mean goes to `minutes` once time moves past it.
    seconds: Ring,
    /// Slot = minute, block = hour.
    minutes: Ring,
    /// Per metric, the exact sum of the open minute's values: its mean
    /// becomes the minute point without compounding the seconds' rounding.
    sums: Box<[f64]>,
}

/// One resolution of a series: an open block of raw codes, and the sealed
/// blocks before it.
#[derive(Debug, Clone)]
struct Ring {
    /// Index of the open block (its first slot over `BLOCK`).
    open_block: u64,
    /// The open block's codes, metric-major: `open[m * BLOCK + slot]`.
    open: Box<[u16]>,
    /// Slots of the open block up to the last one written: the points it
    /// covers, for `bytes_per_point`.
    filled: u8,
    /// Sealed blocks, oldest first, none older than the ring's reach.
    sealed: VecDeque<Sealed>,
}

/// A sealed block: `BLOCK` slots of every metric, encoded.
#[derive(Debug, Clone)]
struct Sealed {
    /// Its index (first slot over `BLOCK`): blocks of gaps are not kept, so
    /// the ring is not contiguous.
    block: u64,
    /// Every metric's encoding, one after the other.
    bytes: Box<[u8]>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample of series `key` at unix second `t`: `metrics`
    /// names the series' metrics (fixed per series: other names start it
    /// over), `values` holds one per metric (NaN: no value). Called about
    /// once a second for every live series; seconds not recorded are gaps.
    pub fn record(&mut self, key: &str, metrics: &'static [&'static str], t: u64, values: &[f64]) {
        debug_assert_eq!(metrics.len(), values.len(), "one value per metric");
        series_mut(&mut self.series, key, metrics, t).record(t, values, &mut self.scratch);
    }

    /// A copy of the series of `keys` that exist (encoded as they are:
    /// a copy of their bytes, no decoding), for a reader that wants to
    /// query them after letting go of a lock on this history.
    pub fn subset<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> History {
        let mut series = HashMap::new();
        for key in keys {
            if let Some(s) = self.series.get(key) {
                series.insert(key.to_string(), s.clone());
            }
        }
        History {
            series,
            scratch: Vec::new(),
        }
    }

    /// The points of `key` over the `since_s` seconds up to `now`
    /// (inclusive), oldest first: every second if `since_s` <= 900, else
    /// every minute (up to 24 hours). Slots without a value are nulls.
    /// `None` if the key is unknown.
    pub fn query(&self, key: &str, now: u64, since_s: u64) -> Option<HistoryReport> {
        let s = self.series.get(key)?;
        let since_s = since_s.clamp(1, MINUTE_POINTS * BLOCK);
        let (step_s, count) = if since_s <= SECOND_POINTS {
            (1, since_s)
        } else {
            (BLOCK, since_s.div_ceil(BLOCK))
        };
        let last = now / step_s;
        let first = (last + 1).saturating_sub(count);
        let n = s.metrics.len();
        let mut codes = vec![GAP; n * (last + 1 - first) as usize];
        let ring = if step_s == 1 { &s.seconds } else { &s.minutes };
        ring.window(n, first, last, &mut codes);
        // The open minute has no minute point yet: its mean so far.
        let pending = (step_s == BLOCK && (first..=last).contains(&s.seconds.open_block))
            .then(|| s.open_minute());
        let width = (last + 1 - first) as usize;
        let points = (first..=last)
            .enumerate()
            .map(|(i, slot)| {
                let mut p = serde_json::Map::new();
                p.insert("t".into(), (slot * step_s).into());
                for (m, name) in s.metrics.iter().enumerate() {
                    let v = match &pending {
                        Some(means) if slot == s.seconds.open_block => means[m],
                        _ => decode(codes[m * width + i]),
                    };
                    p.insert((*name).into(), significant(v).into());
                }
                p
            })
            .collect();
        let bytes = self.bytes();
        Some(HistoryReport {
            name: key.to_string(),
            step_s,
            metrics: s.metrics.iter().map(|m| m.to_string()).collect(),
            points,
            store_bytes: bytes,
            bytes_per_point: per_point(bytes, self.points()),
        })
    }

    /// Heap bytes the store holds, counted by capacity and malloc chunk
    /// (see `chunk`), the table's own slots included.
    pub fn bytes(&self) -> u64 {
        let slot = std::mem::size_of::<(String, Series)>() as u64 + 1;
        let buckets = (self.series.capacity() as u64 * 8)
            .div_ceil(7)
            .next_power_of_two();
        let table = if self.series.capacity() == 0 {
            0
        } else {
            chunk(buckets * slot + 16)
        };
        table
            + chunk(self.scratch.capacity() as u64)
            + self
                .series
                .iter()
                .map(|(k, s)| chunk(k.capacity() as u64) + s.bytes())
                .sum::<u64>()
    }

    /// Points the store covers (metrics x slots of its blocks, gaps inside
    /// a block included since they cost their bits too).
    pub fn points(&self) -> u64 {
        self.series
            .values()
            .map(|s| s.metrics.len() as u64 * (s.seconds.points() + s.minutes.points()))
            .sum()
    }

    /// `bytes()` over `points()`: the encoding's cost, overheads included.
    pub fn bytes_per_point(&self) -> f64 {
        per_point(self.bytes(), self.points())
    }

    /// Forgets series not recorded in the 24 hours before `now`.
    pub fn forget_idle(&mut self, now: u64) {
        self.series.retain(|_, s| s.last_t + IDLE_S > now);
        if self.series.len() < self.series.capacity() / 4 {
            self.series.shrink_to_fit();
        }
    }

    /// Whether series `key` is tracked.
    pub fn has(&self, key: &str) -> bool {
        self.series.contains_key(key)
    }

    /// Series tracked.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

/// `bytes` over `points`, 0 without points.
fn per_point(bytes: u64, points: u64) -> f64 {
    match points {
        0 => 0.0,
        p => bytes as f64 / p as f64,
    }
}

/// The series `key`, created (or started over) for `metrics` as of `t`.
fn series_mut<'a>(
    series: &'a mut HashMap<String, Series>,
    key: &str,
    metrics: &'static [&'static str],
    t: u64,
) -> &'a mut Series {
    if !series.contains_key(key) {
        series.insert(key.to_string(), Series::new(metrics, t));
    }
    let s = series.get_mut(key).expect("inserted above");
    let set_back = t / BLOCK + SECOND_BLOCKS < s.seconds.open_block;
    if set_back || !(std::ptr::eq(s.metrics, metrics) || s.metrics == metrics) {
        *s = Series::new(metrics, t);
    }
    s
}

impl Series {
    fn new(metrics: &'static [&'static str], t: u64) -> Self {
        Self {
            metrics,
            last_t: t,
            seconds: Ring::new(metrics.len(), t / BLOCK),
            minutes: Ring::new(metrics.len(), t / BLOCK / BLOCK),
            sums: vec![0.0; metrics.len()].into_boxed_slice(),
        }
    }

    fn record(&mut self, t: u64, values: &[f64], scratch: &mut Vec<u8>) {
        let block = t / BLOCK;
        if block < self.seconds.open_block {
            return;
        }
        if block > self.seconds.open_block {
            self.close_minute(scratch);
            self.seconds
                .advance(block, SECOND_BLOCKS, self.metrics.len(), scratch);
            self.sums.fill(0.0);
        }
        self.last_t = self.last_t.max(t);
        let slot = (t % BLOCK) as usize;
        if (0..self.metrics.len()).any(|m| self.seconds.code(m, slot) != GAP) {
            return;
        }
        for m in 0..self.metrics.len() {
            let v = values.get(m).copied().unwrap_or(f64::NAN);
            self.seconds.set(m, slot, encode(v));
            if !v.is_nan() {
                self.sums[m] += v;
            }
        }
    }

    /// Per metric, the mean of the open minute's values so far (NaN without
    /// any).
    fn open_minute(&self) -> Vec<f64> {
        (0..self.metrics.len())
            .map(|m| {
                let n = (0..BLOCK as usize)
                    .filter(|&s| self.seconds.code(m, s) != GAP)
                    .count();
                if n == 0 {
                    f64::NAN
                } else {
                    self.sums[m] / n as f64
                }
            })
            .collect()
    }

    /// Writes the open minute's means to the minute ring.
    fn close_minute(&mut self, scratch: &mut Vec<u8>) {
        let means = self.open_minute();
        if means.iter().all(|v| v.is_nan()) {
            return;
        }
        self.write_minute(self.seconds.open_block, &means, scratch);
    }

    /// Writes one minute point (`minute` = unix second / 60).
    fn write_minute(&mut self, minute: u64, means: &[f64], scratch: &mut Vec<u8>) {
        let hour = minute / BLOCK;
        if hour < self.minutes.open_block {
            return;
        }
        if hour > self.minutes.open_block {
            self.minutes
                .advance(hour, MINUTE_BLOCKS, self.metrics.len(), scratch);
        }
        let slot = (minute % BLOCK) as usize;
        for (m, v) in means.iter().enumerate() {
            self.minutes.set(m, slot, encode(*v));
        }
    }

    fn bytes(&self) -> u64 {
        self.seconds.bytes() + self.minutes.bytes() + chunk(8 * self.sums.len() as u64)
    }
}

impl Ring {
    fn new(metrics: usize, block: u64) -> Self {
        Self {
            open_block: block,
            open: vec![GAP; metrics * BLOCK as usize].into_boxed_slice(),
            filled: 0,
            sealed: VecDeque::new(),
        }
    }

    fn code(&self, m: usize, slot: usize) -> u16 {
        self.open[m * BLOCK as usize + slot]
    }

    fn set(&mut self, m: usize, slot: usize, code: u16) {
        self.open[m * BLOCK as usize + slot] = code;
        self.filled = self.filled.max(slot as u8 + 1);
    }

    /// Seals the open block (unless it holds only gaps), opens `block`
    /// (later than the open one) and drops blocks more than `keep` before it.
    fn advance(&mut self, block: u64, keep: u64, metrics: usize, scratch: &mut Vec<u8>) {
        let reach = block.saturating_sub(keep);
        while self.sealed.front().is_some_and(|b| b.block < reach) {
            self.sealed.pop_front();
        }
        if self.open_block >= reach && self.open.iter().any(|&c| c != GAP) {
            if self.sealed.capacity() == 0 {
                self.sealed.reserve_exact(keep as usize);
            }
            scratch.clear();
            for m in 0..metrics {
                let at = m * BLOCK as usize;
                encode_block(&self.open[at..at + BLOCK as usize], scratch);
            }
            self.sealed.push_back(Sealed {
                block: self.open_block,
                bytes: Box::from(&scratch[..]),
            });
        }
        self.open.fill(GAP);
        self.filled = 0;
        self.open_block = block;
    }

    /// Fills `out` (metric-major, `last - first + 1` slots a metric, gaps
    /// already) with the codes of slots `first..=last`.
    fn window(&self, metrics: usize, first: u64, last: u64, out: &mut [u16]) {
        let width = (last + 1 - first) as usize;
        let mut copy = |block: u64, codes: &[u16]| {
            let start = block * BLOCK;
            let (lo, hi) = (first.max(start), last.min(start + BLOCK - 1));
            if lo > hi {
                return;
            }
            for m in 0..metrics {
                for slot in lo..=hi {
                    out[m * width + (slot - first) as usize] =
                        codes[m * BLOCK as usize + (slot - start) as usize];
                }
            }
        };
        let mut codes = vec![GAP; metrics * BLOCK as usize];
        for b in &self.sealed {
            if (b.block + 1) * BLOCK > first && b.block * BLOCK <= last {
                let mut at = 0;
                for m in 0..metrics {
                    let block = m * BLOCK as usize;
                    at += decode_block(&b.bytes[at..], &mut codes[block..block + BLOCK as usize]);
                }
                copy(b.block, &codes);
            }
        }
        copy(self.open_block, &self.open);
    }

    /// Slots this ring covers: its sealed blocks, and the open one so far.
    fn points(&self) -> u64 {
        self.sealed.len() as u64 * BLOCK + u64::from(self.filled)
    }

    fn bytes(&self) -> u64 {
        chunk(2 * self.open.len() as u64)
            + chunk((self.sealed.capacity() * std::mem::size_of::<Sealed>()) as u64)
            + self
                .sealed
                .iter()
                .map(|b| chunk(b.bytes.len() as u64))
                .sum::<u64>()
    }
}

/// What an allocation of `n` bytes takes from glibc's malloc: a chunk of
/// `n` plus an 8-byte header, 16-byte aligned, 32 bytes at least.
fn chunk(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        ((n + 8).div_ceil(16) * 16).max(32)
    }
}

/// The code of a value: see the module docs.
fn encode(v: f64) -> u16 {
    if v.is_nan() {
        return GAP;
    }
    if v == 0.0 {
        return ZERO;
    }
    let e = (v.abs().ln() / LN_STEP).round().clamp(EXP_MIN, EXP_MAX) as i32;
    (if v > 0.0 { POS + e } else { NEG + e }) as u16
}

/// The value of a code.
fn decode(c: u16) -> f64 {
    match c {
        GAP => f64::NAN,
        ZERO => 0.0,
        c if c < 0x8000 => (f64::from(i32::from(c) - POS) * LN_STEP).exp(),
        c => -(f64::from(i32::from(c) - NEG) * LN_STEP).exp(),
    }
}

/// `v` to 6 significant digits, so JSON does not claim precision the store
/// does not keep (and the rounding stays well inside the 1%).
fn significant(v: f64) -> f64 {
    if !v.is_finite() || v == 0.0 {
        return v;
    }
    format!("{v:.5e}").parse().unwrap_or(v)
}

/// Appends the encoding of one metric's block (`BLOCK` codes).
fn encode_block(codes: &[u16], out: &mut Vec<u8>) {
    let mut present = 0u64;
    let mut nonzero = 0u64;
    let mut buf = [0i32; BLOCK as usize];
    let mut n = 0;
    for (i, &c) in codes.iter().enumerate() {
        if c != GAP {
            present |= 1 << i;
            if c != ZERO {
                nonzero |= 1 << i;
                buf[n] = i32::from(c);
                n += 1;
            }
        }
    }
    let values = &buf[..n];
    let shape = match (present, nonzero) {
        (0, _) => SHAPE_GAP,
        (FULL, 0) => SHAPE_ZERO,
        (FULL, FULL) => SHAPE_VALUES,
        _ => SHAPE_MIXED,
    };
    if values.is_empty() && shape != SHAPE_MIXED {
        out.push(shape);
        return;
    }
    let bits = |x: u32| u32::BITS - x.leading_zeros();
    let diffs = values
        .windows(2)
        .map(|w| zigzag(w[1] - w[0]))
        .max()
        .unwrap_or(0);
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let (diff_w, off_w) = (bits(diffs), bits((max - min) as u32));
    let n = values.len() as u32;
    let offsets = !values.is_empty() && n * off_w < (n - 1) * diff_w;
    let width = if offsets { off_w } else { diff_w };
    out.push(shape | if offsets { OFFSETS } else { 0 } | (width as u8) << 3);
    if shape == SHAPE_MIXED {
        out.extend_from_slice(&present.to_le_bytes());
        out.extend_from_slice(&nonzero.to_le_bytes());
    }
    let Some(&first) = values.first() else {
        return;
    };
    let base = if offsets { min } else { first };
    out.extend_from_slice(&(base as u16).to_le_bytes());
    let mut w = BitWriter { out, acc: 0, n: 0 };
    if offsets {
        for v in values {
            w.put((v - min) as u32, width);
        }
    } else {
        for pair in values.windows(2) {
            w.put(zigzag(pair[1] - pair[0]), width);
        }
    }
    w.finish();
}

/// Decodes one metric's block from the front of `bytes` into `codes`
/// (`BLOCK` of them); returns the bytes it took.
fn decode_block(bytes: &[u8], codes: &mut [u16]) -> usize {
    let header = bytes[0];
    let (shape, offsets, width) = (header & 3, header & OFFSETS != 0, u32::from(header >> 3));
    let (present, nonzero, mut at) = match shape {
        SHAPE_GAP => (0, 0, 1),
        SHAPE_ZERO => (FULL, 0, 1),
        SHAPE_VALUES => (FULL, FULL, 1),
        _ => {
            let mask = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            (mask(1), mask(9), 17)
        }
    };
    let n = nonzero.count_ones();
    let mut values = Vec::with_capacity(n as usize);
    if n > 0 {
        let base = i32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        at += 2;
        let mut r = BitReader {
            bytes: &bytes[at..],
            acc: 0,
            n: 0,
            used: 0,
        };
        if offsets {
            for _ in 0..n {
                values.push(base + r.get(width) as i32);
            }
        } else {
            values.push(base);
            for _ in 1..n {
                let prev = *values.last().expect("pushed base");
                values.push(prev + unzigzag(r.get(width)));
            }
        }
        at += r.used;
    }
    let mut next = values.into_iter();
    for (i, c) in codes.iter_mut().enumerate() {
        *c = if nonzero & 1 << i != 0 {
            next.next().expect("one value per non-zero slot") as u16
        } else if present & 1 << i != 0 {
            ZERO
        } else {
            GAP
        };
    }
    at
}

fn zigzag(d: i32) -> u32 {
    ((d << 1) ^ (d >> 31)) as u32
}

fn unzigzag(z: u32) -> i32 {
    (z >> 1) as i32 ^ -((z & 1) as i32)
}

/// Appends bit fields, least significant first.
struct BitWriter<'a> {
    /// Where whole bytes go.
    out: &'a mut Vec<u8>,
    /// Bits not yet written out, in the low `n` bits.
    acc: u64,
    /// How many bits `acc` holds (under 8 between calls).
    n: u32,
}

impl BitWriter<'_> {
    fn put(&mut self, v: u32, width: u32) {
        self.acc |= u64::from(v) << self.n;
        self.n += width;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn finish(self) {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// Reads what `BitWriter` wrote.
struct BitReader<'a> {
    /// The bytes after the block's header.
    bytes: &'a [u8],
    /// Bits read in but not yet returned, in the low `n` bits.
    acc: u64,
    /// How many bits `acc` holds.
    n: u32,
    /// Bytes read in so far: the packed field's length once done.
    used: usize,
}

impl BitReader<'_> {
    fn get(&mut self, width: u32) -> u32 {
        while self.n < width {
            self.acc |= u64::from(self.bytes[self.used]) << self.n;
            self.used += 1;
            self.n += 8;
        }
        let v = (self.acc & ((1u64 << width) - 1)) as u32;
        self.acc >>= width;
        self.n -= width;
        v
    }
}

#[cfg(test)]
mod tests;
