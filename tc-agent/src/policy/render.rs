//! A validated [`Policy`] back to a policy file: the text that
//! [`Policy::parse`] reads to an equal policy (same endpoint sets, same
//! channels in order with the same matches, limits, actions, modes,
//! horizons and directions).
//!
//! The agent keeps the validated model, not the operator's text, so what
//! it hands out (`suggest`) is written here. The text is meant to be read:
//! a channel's `from`/`to` is the name of a set when it is exactly that
//! set (the names of sets when it is exactly their union), prefixes
//! otherwise, and left out when it is any address; rates and sizes take the
//! largest unit that writes them exactly; defaults (burst, packet burst,
//! new-connection burst, ingress, enforce, drop) are left out. Comments
//! can be put above the file, a set or a channel ([`Notes`]).

use std::{collections::HashMap, fmt::Write};

use ipnet::IpNet;

use super::{
    model::{Action, Channel, ConnAction, Direction, Limit, Mode, Policy, Protocol},
    validate::{
        DEFAULT_BURST_MS, DEFAULT_MIN_BURST_BYTES, DEFAULT_MIN_NEW_CONNECTION_BURST,
        DEFAULT_PACKET_BURST_MS, MIN_BURST_BYTES, MIN_PACKET_BURST,
    },
};

/// Lists longer than this are written one item a line, not `[a, b]`.
const FLOW_ITEMS: usize = 8;

/// Comments to write into the file, each a list of lines (without `#`).
#[derive(Debug, Clone, Default)]
pub struct Notes {
    /// Above the whole file.
    pub header: Vec<String>,
    /// Above an endpoint set, by set name.
    pub sets: HashMap<String, Vec<String>>,
    /// Above a channel, by channel name.
    pub channels: HashMap<String, Vec<String>>,
}

/// The policy file of `policy`, without comments.
pub fn render(policy: &Policy) -> String {
    render_with(policy, &Notes::default())
}

/// The policy file of `policy`, with `notes` as comments.
pub fn render_with(policy: &Policy, notes: &Notes) -> String {
    let mut out = String::new();
    comment(&mut out, "", &notes.header);
    if !policy.endpoints.is_empty() {
        out.push_str("endpoints:\n");
        for (name, nets) in &policy.endpoints {
            comment(&mut out, "  ", notes.sets.get(name).map_or(&[][..], |v| v));
            let items: Vec<String> = nets.iter().map(cidr).collect();
            list(&mut out, "  ", &scalar(name), &items);
        }
    }
    if policy.channels.is_empty() {
        out.push_str("channels: []\n");
        return out;
    }
    out.push_str("channels:\n");
    for c in &policy.channels {
        comment(
            &mut out,
            "  ",
            notes.channels.get(&c.name).map_or(&[][..], |v| v),
        );
        channel(&mut out, c, &policy.endpoints);
    }
    out
}

/// Comment lines at `indent`. Every line break YAML knows (`\n`, `\r`,
/// NEL, LS, PS) inside a note starts a new comment line, and other control
/// characters become spaces, so no note (an event's summary) can end the
/// comment early or make the file unreadable.
fn comment(out: &mut String, indent: &str, lines: &[String]) {
    let breaks = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    for line in lines.iter().flat_map(|l| l.split(breaks)) {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
            .collect();
        let line = line.trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{indent}#");
        } else {
            let _ = writeln!(out, "{indent}# {line}");
        }
    }
}

/// `key: [a, b]`, or `key:` and one item a line when the list is long.
fn list(out: &mut String, indent: &str, key: &str, items: &[String]) {
    if items.len() <= FLOW_ITEMS {
        let _ = writeln!(out, "{indent}{key}: [{}]", items.join(", "));
    } else {
        let _ = writeln!(out, "{indent}{key}:");
        for it in items {
            let _ = writeln!(out, "{indent}  - {it}");
        }
    }
}

fn channel(out: &mut String, c: &Channel, sets: &[(String, Vec<IpNet>)]) {
    let _ = writeln!(out, "  - name: {}", scalar(&c.name));
    for (key, nets) in [("from", &c.from), ("to", &c.to)] {
        if is_any(nets) {
            continue;
        }
        match by_sets(nets, sets).as_deref() {
            Some([name]) => {
                let _ = writeln!(out, "    {key}: {}", scalar(name));
            }
            Some(names) => {
                let items: Vec<String> = names.iter().map(|n| scalar(n)).collect();
                list(out, "    ", key, &items);
            }
            None => {
                let items: Vec<String> = nets.iter().map(cidr).collect();
                list(out, "    ", key, &items);
            }
        }
    }
    match c.protocol {
        Protocol::Any => {}
        Protocol::Tcp => out.push_str("    protocol: tcp\n"),
        Protocol::Udp => out.push_str("    protocol: udp\n"),
        Protocol::Icmp => out.push_str("    protocol: icmp\n"),
    }
    if !c.ports.is_empty() {
        let items: Vec<String> = c
            .ports
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("\"{lo}-{hi}\"")
                }
            })
            .collect();
        list(out, "    ", "ports", &items);
    }
    if c.direction == Direction::Egress {
        out.push_str("    direction: egress\n");
    }
    limit(out, &c.limit, c.action == Action::Delay);
    match c.action {
        Action::Drop => {}
        Action::Delay => out.push_str("    action: delay\n"),
        Action::Mark => out.push_str("    action: mark\n"),
    }
    if c.connection_action == ConnAction::Reset {
        out.push_str("    connection_action: reset\n");
    }
    if let Some(h) = c.horizon_ns {
        // Written also at the default: a delay channel's queueing bound is
        // worth seeing.
        let _ = writeln!(out, "    horizon: {}", duration(h));
    }
    if c.mode == Mode::Monitor {
        out.push_str("    mode: monitor\n");
    }
}

/// The set names a side is written with: the set it equals, else sets
/// whose union it is exactly (`from: [web, db]`, also keeping a file that
/// names several large sets within the file size limit, where copying
/// their prefixes out would not be); `None` when no sets make it up.
fn by_sets<'s>(nets: &[IpNet], sets: &'s [(String, Vec<IpNet>)]) -> Option<Vec<&'s str>> {
    if let Some((name, _)) = sets.iter().find(|(_, s)| s == nets) {
        return Some(vec![name]);
    }
    // Sides are sorted and deduplicated by validation.
    let index = |n: &IpNet| nets.binary_search(n).ok();
    let mut parts: Vec<&(String, Vec<IpNet>)> = sets
        .iter()
        .filter(|(_, s)| {
            !s.is_empty() && s.len() < nets.len() && s.iter().all(|n| index(n).is_some())
        })
        .collect();
    if parts.len() < 2 {
        return None;
    }
    // Largest first (file order among equals): few names for the union.
    parts.sort_by_key(|(_, s)| std::cmp::Reverse(s.len()));
    let mut covered = vec![false; nets.len()];
    let mut names = Vec::new();
    for (name, s) in parts {
        let at: Vec<usize> = s.iter().filter_map(index).collect();
        if at.iter().any(|&i| !covered[i]) {
            at.iter().for_each(|&i| covered[i] = true);
            names.push(name.as_str());
        }
    }
    covered.iter().all(|c| *c).then_some(names)
}

/// The `limit:` map, only the keys that differ from what validation
/// fills in; nothing for an unlimited channel.
fn limit(out: &mut String, l: &Limit, pacing: bool) {
    if l.is_unlimited() && !l.limits_connections() {
        return;
    }
    out.push_str("    limit:\n");
    if let Some(bps) = l.bandwidth_bps {
        let _ = writeln!(out, "      bandwidth: {}", rate(bps));
        if l.burst_bytes != default_burst(bps, pacing) {
            let _ = writeln!(out, "      burst: {}", size(l.burst_bytes));
        }
    }
    if let Some(p) = l.packets {
        let _ = writeln!(out, "      packets: {p}");
        if l.packet_burst != default_packet_burst(p) {
            let _ = writeln!(out, "      packet_burst: {}", l.packet_burst);
        }
    }
    if let Some(n) = l.connections {
        let _ = writeln!(out, "      connections: {n}");
    }
    if let Some(n) = l.new_connections {
        let _ = writeln!(out, "      new_connections: {n}");
        if l.new_connection_burst != default_new_connection_burst(n) {
            let _ = writeln!(
                out,
                "      new_connection_burst: {}",
                l.new_connection_burst
            );
        }
    }
}

/// The byte burst validation gives a bandwidth of `bps` without `burst`.
pub fn default_burst(bps: u64, pacing: bool) -> u64 {
    if pacing {
        MIN_BURST_BYTES
    } else {
        (bps / 8 * DEFAULT_BURST_MS / 1000).max(DEFAULT_MIN_BURST_BYTES)
    }
}

/// The packet burst validation gives `packets` without `packet_burst`.
pub fn default_packet_burst(packets: u64) -> u64 {
    (packets * DEFAULT_PACKET_BURST_MS / 1000).max(MIN_PACKET_BURST)
}

/// The new-connection burst validation gives `new_connections` without
/// `new_connection_burst`.
pub fn default_new_connection_burst(new_connections: u32) -> u32 {
    (new_connections / 4).max(DEFAULT_MIN_NEW_CONNECTION_BURST)
}

/// Whether a side is "any address": what validation fills in for a
/// missing `from`/`to`.
fn is_any(nets: &[IpNet]) -> bool {
    matches!(nets, [IpNet::V4(a), IpNet::V6(b)] if a.prefix_len() == 0 && b.prefix_len() == 0)
}

/// A prefix: IPv6 quoted (a plain `::/0` or `a::b` is not safe YAML in
/// every position), IPv4 plain.
fn cidr(n: &IpNet) -> String {
    match n {
        IpNet::V4(_) => n.to_string(),
        IpNet::V6(_) => format!("\"{n}\""),
    }
}

/// A name as YAML: plain when YAML can only read it as that text (a
/// letter first, then the name charset, and no word YAML reads as a
/// boolean or null), double-quoted otherwise (`1.5`, `0x10`, `null`,
/// `-a`, `yes` would come back as another text, or as nothing).
pub fn scalar(s: &str) -> String {
    const WORDS: [&str; 16] = [
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "null",
        "nan",
        "inf",
        "infinity",
        "none",
        "nil",
        "undefined",
        "tilde",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !WORDS.contains(&s.to_ascii_lowercase().as_str());
    if plain {
        return s.to_string();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04x}", u32::from(c));
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// `n` over `unit` with at most three decimals, exactly; `None` when that
/// would lose digits or be under 1.
fn decimal(n: u64, unit: u64) -> Option<String> {
    if n < unit || !n.is_multiple_of((unit / 1000).max(1)) {
        return None;
    }
    let (int, frac) = (n / unit, n % unit);
    if frac == 0 {
        return Some(int.to_string());
    }
    let digits = format!("{:03}", frac / (unit / 1000));
    Some(format!("{int}.{}", digits.trim_end_matches('0')))
}

/// A bandwidth in the largest unit that writes it exactly (`20Mbit`,
/// `1.5Gbit`, `1234.567kbit`); `units::parse_rate` reads it back to the
/// same bits per second (three decimals of a unit stay far inside what an
/// `f64` holds exactly).
pub fn rate(bps: u64) -> String {
    for (unit, name) in [
        (1_000_000_000, "Gbit"),
        (1_000_000, "Mbit"),
        (1_000, "kbit"),
    ] {
        if let Some(d) = decimal(bps, unit) {
            return format!("{d}{name}");
        }
    }
    format!("{bps}bit")
}

/// A size in bytes: binary units when whole, else the bare number (read
/// exactly by validation).
fn size(bytes: u64) -> String {
    for (unit, name) in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A duration in the largest whole unit.
fn duration(ns: u64) -> String {
    for (unit, name) in [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")] {
        if ns >= unit && ns.is_multiple_of(unit) {
            return format!("{}{name}", ns / unit);
        }
    }
    format!("{ns}ns")
}

#[cfg(test)]
mod tests;
