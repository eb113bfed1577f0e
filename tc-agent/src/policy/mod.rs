//! The policy file: the operator's contract.
//!
//! [`Policy::parse`] validates a whole file before anything is applied and
//! reports every problem with file, line and field; [`compile`] turns a valid
//! policy into the datapath's lookup tables.

pub mod compile;
pub mod lines;
pub mod units;

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use self::lines::LineIndex;

/// A GSO super-packet is charged whole, so a burst smaller than the largest
/// one (64 KiB without BIG TCP) would refuse it forever.
pub const MIN_BURST_BYTES: u64 = 64 * 1024;
/// Burst ceiling: past this a "limit" no longer limits anything in practice.
pub const MAX_BURST_BYTES: u64 = 1 << 30;
/// Default byte burst: this much time at the channel's rate. A policer
/// cannot give TCP an operating point on a low-RTT path (even one segment
/// per RTT exceeds most limits), so TCP meets it with losses, some of them
/// lost retransmissions that end in a 200 ms retransmission timeout. A
/// bucket that holds more than one timeout's worth of tokens keeps the
/// channel's long-run rate through those stalls (measured on veth: TCP goodput
/// at the TCP ceiling of the limit from 10 Mbit/s to 1 Gbit/s, against 0.64 with 50 ms).
pub const DEFAULT_BURST_MS: u64 = 250;
/// ...and never less than this, comfortably above one 64 KiB GSO super-packet.
pub const DEFAULT_MIN_BURST_BYTES: u64 = 256 * 1024;
/// Default `horizon` of a `delay` channel.
pub const DEFAULT_HORIZON: &str = "50ms";
pub const MIN_HORIZON_NS: u64 = 1_000_000;
pub const MAX_HORIZON_NS: u64 = 10_000_000_000;
/// A GSO super-packet counts as up to ~45 segments; the packet burst must hold one.
pub const MIN_PACKET_BURST: u64 = 64;
/// Packet-rate ceiling.
pub const MAX_PACKETS: u64 = 100_000_000;
/// Default packet burst: this much time at the channel's packet rate, at least [`MIN_PACKET_BURST`].
pub const DEFAULT_PACKET_BURST_MS: u64 = 20;

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as the operator named it.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Field path, e.g. `channels[1].limit.bandwidth`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A policy file that failed validation: every error found, in file order.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
pub struct PolicyError {
    /// All errors; never empty.
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy ({} error", self.errors.len())?;
        if self.errors.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp,
    #[default]
    Any,
}

impl Protocol {
    /// IP protocol numbers this matches; `None` = every protocol.
    pub fn numbers(self) -> Option<&'static [u8]> {
        match self {
            Protocol::Tcp => Some(&[6]),
            Protocol::Udp => Some(&[17]),
            Protocol::Icmp => Some(&[1, 58]),
            Protocol::Any => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets arriving on the node's interfaces (tc ingress, or XDP).
    #[default]
    Ingress,
    /// Packets leaving the node's interfaces (tc egress).
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Drop,
    Delay,
    Mark,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// A channel's limits after validation, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limit {
    /// Bits per second; `None` = no bandwidth limit.
    pub bandwidth_bps: Option<u64>,
    /// Byte bucket depth; meaningful only with a bandwidth.
    pub burst_bytes: u64,
    /// Packets per second; `None` = no packet-rate limit.
    pub packets: Option<u64>,
    /// Packet bucket depth; meaningful only with a packet rate.
    pub packet_burst: u64,
}

impl Limit {
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth_bps.is_none() && self.packets.is_none()
    }
}

/// A validated channel: who talks to whom, and how much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Unique name, the key the operator and the counters use.
    pub name: String,
    /// Source prefixes; `0.0.0.0/0` + `::/0` when the file says nothing.
    pub from: Vec<IpNet>,
    /// Destination prefixes; likewise.
    pub to: Vec<IpNet>,
    pub protocol: Protocol,
    /// Destination port ranges, inclusive; empty = any port.
    pub ports: Vec<(u16, u16)>,
    pub direction: Direction,
    pub limit: Limit,
    pub action: Action,
    /// `delay` only: a packet that would wait longer is dropped (bounds queueing delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_ns: Option<u64>,
    pub mode: Mode,
}

/// A validated policy, ready to compile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Channels in file order: the first match wins.
    pub channels: Vec<Channel>,
    /// Non-fatal findings, such as shadowed channels.
    #[serde(skip)]
    pub warnings: Vec<Diagnostic>,
}

// ---- The file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    endpoints: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    channels: Vec<RawChannel>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawEndpoints {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Range(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    bandwidth: Option<String>,
    burst: Option<RawSize>,
    packets: Option<i64>,
    packet_burst: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: String,
    from: Option<RawEndpoints>,
    to: Option<RawEndpoints>,
    #[serde(default)]
    protocol: Protocol,
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    direction: Direction,
    limit: Option<RawLimit>,
    #[serde(default)]
    action: Action,
    horizon: Option<String>,
    #[serde(default)]
    mode: Mode,
}

// ---- Validation ----------------------------------------------------------

/// Collects diagnostics with their lines.
struct Checker<'a> {
    file: &'a str,
    index: LineIndex,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn diag(&self, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line: self.index.line(field),
            field: field.to_string(),
            message,
        }
    }

    fn error(&mut self, field: &str, message: impl Into<String>) {
        let d = self.diag(field, message.into());
        self.errors.push(d);
    }

    fn warn(&mut self, field: &str, message: impl Into<String>) {
        let d = self.diag(field, message.into());
        self.warnings.push(d);
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses `198.18.1.0/24`, `2001:db8::/64`, or a bare address (a host prefix).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "`{s}` is not a CIDR; write e.g. `198.18.1.0/24` or `2001:db8:1::/64`"
                ))
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn any_prefixes() -> Vec<IpNet> {
    vec![
        "0.0.0.0/0".parse().expect("valid"),
        "::/0".parse().expect("valid"),
    ]
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            errors: vec![Diagnostic {
                file: label.clone(),
                line: None,
                field: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Self::parse(&text, &label)
    }

    /// Validates policy text; `file` names it in diagnostics.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        let mut ck = Checker {
            file,
            index: LineIndex::new(text),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        // serde_yaml lets a repeated key in a map silently replace the first.
        let duplicates: Vec<Diagnostic> = ck
            .index
            .duplicates
            .iter()
            .map(|(path, line)| Diagnostic {
                file: file.to_string(),
                line: Some(*line),
                field: path.clone(),
                message: "defined twice; each key may appear once (rename one, or merge the lists)"
                    .into(),
            })
            .collect();
        if !duplicates.is_empty() {
            return Err(PolicyError { errors: duplicates });
        }
        let raw: RawPolicy = match serde_yaml::from_str(text) {
            Ok(r) => r,
            // An empty file is an empty policy: no channels, everything passes.
            Err(_) if text.trim().is_empty() => RawPolicy {
                endpoints: BTreeMap::new(),
                channels: Vec::new(),
            },
            Err(e) => {
                let line = e.location().map(|l| l.line());
                let mut message = e.to_string();
                // serde_yaml appends " at line L column C"; the line leads our format already.
                if let Some(cut) = message.rfind(" at line ") {
                    message.truncate(cut);
                }
                return Err(PolicyError {
                    errors: vec![Diagnostic {
                        file: file.to_string(),
                        line,
                        field: String::new(),
                        message,
                    }],
                });
            }
        };

        let sets = check_endpoints(&mut ck, &raw.endpoints);
        let channels = check_channels(&mut ck, raw.channels, &sets);
        if ck.errors.is_empty() {
            check_shadowing(&mut ck, &channels);
        }
        if !ck.errors.is_empty() {
            return Err(PolicyError { errors: ck.errors });
        }
        Ok(Policy {
            channels,
            warnings: ck.warnings,
        })
    }
}

fn check_endpoints(
    ck: &mut Checker<'_>,
    raw: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<IpNet>> {
    let mut sets = BTreeMap::new();
    for (name, cidrs) in raw {
        let field = format!("endpoints.{name}");
        if !valid_name(name) {
            ck.error(
                &field,
                format!(
                    "`{name}` is not a valid set name: use 1-63 letters, digits, `-`, `_` or `.`"
                ),
            );
        }
        if cidrs.is_empty() {
            ck.error(&field, "an endpoint set needs at least one CIDR");
        }
        let mut nets = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            match parse_cidr(c) {
                Ok(n) => nets.push(n),
                Err(m) => ck.error(&format!("{field}[{i}]"), m),
            }
        }
        sets.insert(name.clone(), nets);
    }
    sets
}

fn resolve(
    ck: &mut Checker<'_>,
    field: &str,
    raw: Option<RawEndpoints>,
    sets: &BTreeMap<String, Vec<IpNet>>,
) -> Vec<IpNet> {
    let items = match raw {
        None => return any_prefixes(),
        Some(RawEndpoints::One(s)) => vec![(field.to_string(), s)],
        Some(RawEndpoints::Many(v)) => {
            if v.is_empty() {
                ck.error(
                    field,
                    "an empty list matches nothing; omit the field to match any address",
                );
            }
            v.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("{field}[{i}]"), s))
                .collect()
        }
    };
    let mut out = Vec::new();
    for (f, item) in items {
        if let Some(set) = sets.get(&item) {
            out.extend_from_slice(set);
        } else if item.contains('/') || item.parse::<IpAddr>().is_ok() {
            match parse_cidr(&item) {
                Ok(n) => out.push(n),
                Err(m) => ck.error(&f, m),
            }
        } else {
            let defined: Vec<&str> = sets.keys().map(String::as_str).collect();
            ck.error(
                &f,
                format!(
                    "endpoint set `{item}` is not defined under `endpoints` (defined: {})",
                    if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    }
                ),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

fn check_ports(ck: &mut Checker<'_>, field: &str, raw: Vec<RawPort>) -> Vec<(u16, u16)> {
    if raw.is_empty() {
        ck.error(
            field,
            "an empty port list matches nothing; omit `ports` to match any port",
        );
    }
    let mut out = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        let bad = |s: &str| {
            format!("`{s}` is not a port or range; write e.g. `5432` or `\"8000-8100\"` (1-65535)")
        };
        let port = |s: &str| -> Option<u16> { s.trim().parse::<u16>().ok().filter(|p| *p != 0) };
        let range = match p {
            RawPort::Number(n) => match u16::try_from(n).ok().filter(|p| *p != 0) {
                Some(p) => Some((p, p)),
                None => {
                    ck.error(&f, bad(&n.to_string()));
                    continue;
                }
            },
            RawPort::Range(s) => match s.split_once('-') {
                Some((a, b)) => port(a).zip(port(b)),
                None => port(&s).map(|p| (p, p)),
            }
            .ok_or_else(|| bad(&s))
            .and_then(|(a, b)| {
                if a <= b {
                    Ok((a, b))
                } else {
                    Err(format!("`{s}`: the range runs backwards; write `{b}-{a}`"))
                }
            })
            .map_err(|m| ck.error(&f, m))
            .ok(),
        };
        out.extend(range);
    }
    out.sort();
    out
}

/// `delay` paces instead of passing bursts: its default burst is the
/// smallest that never holds a GSO super-packet back for being large.
fn check_limit(ck: &mut Checker<'_>, field: &str, raw: Option<RawLimit>, pacing: bool) -> Limit {
    let Some(raw) = raw else {
        return Limit::default();
    };
    let mut limit = Limit::default();
    if raw.bandwidth.is_none() && raw.packets.is_none() {
        ck.error(field, "a limit needs `bandwidth`, `packets`, or both; omit `limit` for an unlimited (counting-only) channel");
    }
    if let Some(bw) = &raw.bandwidth {
        match units::parse_rate(bw) {
            Ok(bps) => limit.bandwidth_bps = Some(bps),
            Err(m) => ck.error(&format!("{field}.bandwidth"), m),
        }
    }
    if let Some(bps) = limit.bandwidth_bps {
        limit.burst_bytes = if pacing {
            MIN_BURST_BYTES
        } else {
            (bps / 8 * DEFAULT_BURST_MS / 1000).max(DEFAULT_MIN_BURST_BYTES)
        };
    }
    if let Some(burst) = raw.burst {
        let f = format!("{field}.burst");
        let parsed = match burst {
            RawSize::Number(n) => Ok(n),
            RawSize::Text(s) => units::parse_size(&s),
        };
        match parsed {
            Err(m) => ck.error(&f, m),
            Ok(_) if raw.bandwidth.is_none() => {
                ck.error(&f, "`burst` sizes the bandwidth bucket; set `bandwidth` too (or use `packet_burst` with `packets`)")
            }
            Ok(b) if !(MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b) => ck.error(
                &f,
                format!("{b} bytes is out of range: a burst must be between 64KiB (one GSO super-packet, charged whole) and 1GiB"),
            ),
            Ok(b) => limit.burst_bytes = b,
        }
    }
    if let Some(p) = raw.packets {
        match u64::try_from(p)
            .ok()
            .filter(|p| (1..=MAX_PACKETS).contains(p))
        {
            Some(p) => {
                limit.packets = Some(p);
                limit.packet_burst = (p * DEFAULT_PACKET_BURST_MS / 1000).max(MIN_PACKET_BURST);
            }
            None => ck.error(
                &format!("{field}.packets"),
                format!("{p} is out of range: packets/s must be between 1 and {MAX_PACKETS}"),
            ),
        }
    }
    if let Some(pb) = raw.packet_burst {
        let f = format!("{field}.packet_burst");
        if raw.packets.is_none() {
            ck.error(
                &f,
                "`packet_burst` sizes the packet bucket; set `packets` too",
            );
        } else {
            match u64::try_from(pb).ok().filter(|b| (MIN_PACKET_BURST..=MAX_PACKETS).contains(b)) {
                Some(b) => limit.packet_burst = b,
                None => ck.error(&f, format!("{pb} is out of range: a packet burst must be between {MIN_PACKET_BURST} (one GSO super-packet) and {MAX_PACKETS}")),
            }
        }
    }
    limit
}

fn check_channels(
    ck: &mut Checker<'_>,
    raw: Vec<RawChannel>,
    sets: &BTreeMap<String, Vec<IpNet>>,
) -> Vec<Channel> {
    if raw.len() > tc_common::MAX_CHANNELS as usize {
        ck.error(
            "channels",
            format!(
                "{} channels; at most {} fit in the datapath",
                raw.len(),
                tc_common::MAX_CHANNELS
            ),
        );
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, rc) in raw.into_iter().enumerate() {
        let field = format!("channels[{i}]");
        if !valid_name(&rc.name) {
            ck.error(
                &format!("{field}.name"),
                format!(
                    "`{}` is not a valid channel name: use 1-63 letters, digits, `-`, `_` or `.`",
                    rc.name
                ),
            );
        } else if !names.insert(rc.name.clone()) {
            ck.error(
                &format!("{field}.name"),
                format!(
                    "channel `{}` is defined twice; names must be unique",
                    rc.name
                ),
            );
        }
        let from = resolve(ck, &format!("{field}.from"), rc.from, sets);
        let to = resolve(ck, &format!("{field}.to"), rc.to, sets);
        let ports = match rc.ports {
            None => Vec::new(),
            Some(p) => {
                if rc.protocol == Protocol::Icmp {
                    ck.error(
                        &format!("{field}.ports"),
                        "ICMP has no ports; drop `ports` or use protocol tcp, udp or any",
                    );
                }
                check_ports(ck, &format!("{field}.ports"), p)
            }
        };
        let has_limit = rc.limit.is_some();
        let limit = check_limit(
            ck,
            &format!("{field}.limit"),
            rc.limit,
            rc.action == Action::Delay,
        );
        let mut horizon_ns = None;
        match rc.action {
            Action::Drop => {}
            Action::Delay => {
                if rc.direction == Direction::Ingress {
                    ck.error(
                        &format!("{field}.action"),
                        "`delay` holds packets in the egress queue (fq releases them on time); an ingress packet has no queue to wait in: use `direction: egress`, or `drop`/`mark` on ingress",
                    );
                }
                let h = rc.horizon.as_deref().unwrap_or(DEFAULT_HORIZON);
                match units::parse_duration(h) {
                    Ok(ns) if (MIN_HORIZON_NS..=MAX_HORIZON_NS).contains(&ns) => {
                        horizon_ns = Some(ns)
                    }
                    Ok(_) => ck.error(
                        &format!("{field}.horizon"),
                        format!("`{h}` is out of range: a horizon must be between 1ms and 10s"),
                    ),
                    Err(m) => ck.error(&format!("{field}.horizon"), m),
                }
            }
            Action::Mark => {}
        }
        if rc.action != Action::Drop && !has_limit {
            ck.error(
                &format!("{field}.action"),
                "`delay` and `mark` act on traffic over a limit: add `limit`",
            );
        }
        if rc.horizon.is_some() && rc.action != Action::Delay {
            ck.error(
                &format!("{field}.horizon"),
                "`horizon` bounds the queueing of `action: delay`; remove it or set the action",
            );
        }
        out.push(Channel {
            name: rc.name,
            from,
            to,
            protocol: rc.protocol,
            ports,
            direction: rc.direction,
            limit,
            action: rc.action,
            horizon_ns,
            mode: rc.mode,
        });
    }
    out
}

/// Whether every prefix of `inner` lies inside some prefix of `outer`.
fn covers(outer: &[IpNet], inner: &[IpNet]) -> bool {
    inner.iter().all(|i| outer.iter().any(|o| o.contains(i)))
}

/// Warns about channels that an earlier channel matches entirely: with first
/// match wins, they can never see a packet.
fn check_shadowing(ck: &mut Checker<'_>, channels: &[Channel]) {
    for (j, later) in channels.iter().enumerate() {
        let shadow = channels[..j].iter().find(|earlier| {
            earlier.direction == later.direction
                && covers(&earlier.from, &later.from)
                && covers(&earlier.to, &later.to)
                && match (earlier.protocol.numbers(), later.protocol.numbers()) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(e), Some(l)) => l.iter().all(|p| e.contains(p)),
                }
                && (earlier.ports.is_empty()
                    || (!later.ports.is_empty()
                        && later
                            .ports
                            .iter()
                            .all(|(a, b)| earlier.ports.iter().any(|(c, d)| c <= a && b <= d))))
        });
        if let Some(earlier) = shadow {
            ck.warn(
                &format!("channels[{j}]"),
                format!(
                    "channel `{}` can never match: `{}` comes first and matches all of its traffic",
                    later.name, earlier.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests;
