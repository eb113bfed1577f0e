//! What every event's evidence shares: the protocol and port of the
//! traffic concerned, the `{"baseline","now"}` pairs, and the rates as a
//! person reads them in a summary.

use serde_json::{json, Map, Value};

use super::baseline::Baseline;

/// Distinct (protocol, port) kept per series and sample; past it the bytes
/// count as unattributed, which can only make the verdict `mixed`.
const MAX_KINDS: usize = 8;

/// Share of the bytes one protocol (or protocol and port) must carry for
/// the evidence to name it rather than `mixed` (or a null port).
const DOMINANT: f64 = 0.9;

/// The protocol mix of one series in the current sample.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mix {
    /// Request bytes by (IP protocol, server port), at most [`MAX_KINDS`].
    kinds: Vec<(u8, u16, u64)>,
    /// Bytes of kinds past [`MAX_KINDS`].
    extra: u64,
}

impl Mix {
    /// Forgets the previous sample (keeps the allocation).
    pub fn clear(&mut self) {
        self.kinds.clear();
        self.extra = 0;
    }

    /// Adds `bytes` of `proto`/`port`.
    pub fn add(&mut self, proto: u8, port: u16, bytes: u64) {
        if let Some(k) = self
            .kinds
            .iter_mut()
            .find(|(p, q, _)| *p == proto && *q == port)
        {
            k.2 += bytes;
        } else if self.kinds.len() < MAX_KINDS {
            self.kinds.push((proto, port, bytes));
        } else {
            self.extra += bytes;
        }
    }

    /// `protocol` ("tcp", "udp", "icmp", "other" or "mixed") and `port`
    /// (null unless one port carries nearly all the bytes).
    pub fn describe(&self) -> (&'static str, Option<u16>) {
        let total: u64 = self.kinds.iter().map(|k| k.2).sum::<u64>() + self.extra;
        if total == 0 {
            return ("mixed", None);
        }
        let dominant = |b: u64| b as f64 >= DOMINANT * total as f64;
        let Some(&(proto, _, _)) = self.kinds.iter().max_by_key(|k| k.2) else {
            return ("mixed", None);
        };
        let proto_bytes: u64 = self
            .kinds
            .iter()
            .filter(|k| k.0 == proto)
            .map(|k| k.2)
            .sum();
        if !dominant(proto_bytes) {
            return ("mixed", None);
        }
        let port = self
            .kinds
            .iter()
            .filter(|k| k.0 == proto && k.1 != 0 && dominant(k.2))
            .map(|k| k.1)
            .next();
        (proto_name(proto), port)
    }

    /// Sets `protocol` and `port` in `ev`.
    pub fn put(&self, ev: &mut Map<String, Value>) {
        let (protocol, port) = self.describe();
        ev.insert("protocol".into(), json!(protocol));
        ev.insert("port".into(), json!(port));
    }
}

/// The evidence name of an IP protocol number.
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        1 | 58 => "icmp",
        _ => "other",
    }
}

/// `{"baseline": mean, "now": now}`.
pub fn pair(b: &Baseline, now: f64) -> Value {
    json!({ "baseline": round(b.mean()), "now": round(now) })
}

/// `{"baseline": mean, "now": now}` where `now` may be unknown (null).
pub fn pair_opt(b: &Baseline, now: Option<f64>) -> Value {
    json!({ "baseline": round(b.mean()), "now": now.map(round) })
}

/// The fields every event has: `metric`, `baseline`, `now`, `factor`.
pub fn headline(metric: &str, b: &Baseline, now: f64) -> Map<String, Value> {
    let mut ev = Map::new();
    ev.insert("metric".into(), json!(metric));
    ev.insert("baseline".into(), json!(round(b.mean())));
    ev.insert("now".into(), json!(round(now)));
    ev.insert("factor".into(), json!(b.factor(now).map(round)));
    ev
}

/// Three significant decimals at most: evidence meant for reading.
pub fn round(x: f64) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    (x * 1000.0).round() / 1000.0
}

/// A rate in bits per second as a person reads it (`4.1 Mbit/s`).
pub fn bps(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.1} Gbit/s", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} Mbit/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} kbit/s", x / 1e3)
    } else {
        format!("{x:.0} bit/s")
    }
}

/// A rate in packets (or anything) per second (`1.2k pkt/s`).
pub fn pps(x: f64, unit: &str) -> String {
    if x >= 1e6 {
        format!("{:.1}M {unit}/s", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k {unit}/s", x / 1e3)
    } else {
        format!("{x:.0} {unit}/s")
    }
}

/// `now / baseline` as a person reads it (`3.0x`, or `new` from zero).
pub fn factor(b: &Baseline, now: f64) -> String {
    match b.factor(now) {
        Some(f) => format!("{f:.1}x"),
        None => "up from zero".to_string(),
    }
}
