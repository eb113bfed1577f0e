//! From the file as written to a [`Policy`]: every rule a policy is held to,
//! every error with file, line and field.
//!
//! [`Policy::parse`] reads the text (`yaml`), checks its shape (`raw`), then
//! the meaning of each value here, and finally looks for shadowed channels
//! (`shadow`). Sizes are counted before anything is expanded: the number of
//! channels before any channel is read, and the prefixes per side and family
//! before endpoint sets are copied into channels.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Read,
    net::IpAddr,
    path::Path,
};

use ipnet::IpNet;

use super::{
    diagnostic::{Diagnostic, PolicyError},
    model::{Action, Channel, ConnAction, Direction, Limit, Mode, Policy, Protocol},
    raw::{self, RawChannel, RawEndpoints, RawLimit, RawPolicy, RawSet, Text, TextList},
    shadow, units,
    yaml::{self, Lines},
};

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
/// Shortest `horizon`: below this, timer slack alone would drop packets.
pub const MIN_HORIZON_NS: u64 = 1_000_000;
/// Longest `horizon`: past this a queue is a buffer, not a delay.
pub const MAX_HORIZON_NS: u64 = 10_000_000_000;
/// A GSO super-packet counts as up to ~45 segments; the packet burst must hold one.
pub const MIN_PACKET_BURST: u64 = 64;
/// Packet-rate ceiling.
pub const MAX_PACKETS: u64 = 100_000_000;
/// Default packet burst: this much time at the channel's packet rate, at least [`MIN_PACKET_BURST`].
pub const DEFAULT_PACKET_BURST_MS: u64 = 20;
/// Most open TCP connections a channel may allow at once (`connections`).
/// A bound on what the file may say, not on what the node can track: the
/// connection table ([`tc_common::DEFAULT_MAX_CONNS`] entries for both
/// families by default, `--conn-table-size`) bounds that.
pub const MAX_CONNECTIONS: u32 = 1_000_000;
/// New-connection rate ceiling, per second (`new_connections`). At it a
/// connection costs 1,000 ns, so costs in whole nanoseconds (rounded down)
/// keep every allowed rate within 0.1 % of what the file says.
pub const MAX_NEW_CONNECTIONS: u32 = 1_000_000;
/// Deepest new-connection burst (`new_connection_burst`).
pub const MAX_NEW_CONNECTION_BURST: u32 = 1_000_000;
/// Default new-connection burst: a quarter second at the rate, and never
/// less than this, so a client that opens a small pool at once (a browser
/// opens 6 per host) is not refused at a low rate.
pub const DEFAULT_MIN_NEW_CONNECTION_BURST: u32 = 8;
/// Distinct prefixes per side (`from`, `to`) and family: what one
/// generation of an address trie holds.
pub const MAX_PREFIXES: usize = 65_536;
/// Prefixes per side and family counting each channel's copy of the sets it
/// names: bounds the memory of the validated policy (and of its saved
/// state), so that a large set can be shared by a few channels, not by all
/// 1,024.
pub const MAX_PREFIX_COPIES: usize = 4 * MAX_PREFIXES;
/// Port ranges in all channels together: what one generation of the
/// protocol/port trie holds at best.
pub const MAX_PORT_RANGES: usize = super::compile::MAX_L4_ENTRIES;
/// Errors reported for one file; past this, only their count.
pub const MAX_ERRORS: usize = 100;

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let label = path.display().to_string();
        let cannot = |e: std::io::Error| {
            PolicyError::whole_file(&label, None, format!("cannot read the file: {e}"))
        };
        // Reads one byte past the cap, so a larger file is refused without
        // being read whole.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(cannot)?
            .take(yaml::MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(cannot)?;
        if bytes.len() > yaml::MAX_FILE_BYTES {
            return Err(PolicyError::whole_file(
                &label,
                None,
                format!(
                    "the file is larger than {} bytes ({} MiB), the most a policy file may hold",
                    yaml::MAX_FILE_BYTES,
                    yaml::MAX_FILE_BYTES >> 20
                ),
            ));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            PolicyError::whole_file(&label, None, format!("the file is not UTF-8 text: {e}"))
        })?;
        Self::parse(&text, &label)
    }

    /// Validates policy text; `file` names it in diagnostics.
    ///
    /// Most files are valid and warn of nothing: they are read once,
    /// without the line of each list item (a large policy's prefixes),
    /// which no valid policy keeps. A file that validation refuses or that
    /// draws a warning is read again with every line, so that each
    /// diagnostic names its own; one the YAML parser refuses is not.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        read(text, file).map(|r| r.policy)
    }

    /// [`Policy::parse`], with `lines` as the parser gives them.
    #[cfg(test)]
    pub(super) fn parse_with(text: &str, file: &str, lines: Lines) -> Result<Policy, PolicyError> {
        check(read_tree(text, file, lines)?.0, file).map(|(policy, _)| policy)
    }
}

/// What [`read`] made of a file.
pub(super) struct Reading {
    /// The policy.
    pub policy: Policy,
    /// Each channel's [`Footprint`], in policy order.
    pub footprints: Vec<Footprint>,
    /// Parser events the file produced ([`yaml::MAX_EVENTS`] bounds them).
    pub events: usize,
}

/// [`Policy::parse`], with what a later reading of an edited file needs to
/// reuse this one's channels (`reuse`).
pub(super) fn read(text: &str, file: &str) -> Result<Reading, PolicyError> {
    // A file the parser refuses is refused alike in both readings (the
    // error's line is the parser's own): it is not read again.
    let (root, events) = read_tree(text, file, Lines::MapsOnly)?;
    match check(root, file) {
        Ok((policy, footprints)) if policy.warnings.is_empty() => Ok(Reading {
            policy,
            footprints,
            events,
        }),
        _ => {
            let (policy, footprints) = check(read_tree(text, file, Lines::All)?.0, file)?;
            Ok(Reading {
                policy,
                footprints,
                events,
            })
        }
    }
}

/// The file's node tree, with `lines` as the parser gives them, and the
/// parser events it took.
fn read_tree(text: &str, file: &str, lines: Lines) -> Result<(yaml::Node, usize), PolicyError> {
    let (root, events) = yaml::parse_counted(text, lines)
        .map_err(|e| PolicyError::whole_file(file, e.line, e.message))?;
    let root = root.ok_or_else(|| {
        PolicyError::whole_file(
            file,
            None,
            "the file holds no policy (it is empty, or only comments); a policy without channels says `channels: []`".into(),
        )
    })?;
    Ok((root, events))
}

/// Checks a file's node tree: the policy and each channel's footprint, or
/// every error found.
fn check(root: yaml::Node, file: &str) -> Result<(Policy, Vec<Footprint>), PolicyError> {
    let mut ck = Checker {
        file,
        errors: Vec::new(),
        dropped: 0,
        warnings: Vec::new(),
    };
    // The node tree is the largest thing parsing holds: reading
    // consumes it; what is checked from here on is in `raw`.
    let (raw, problems) = raw::read(root);
    // A file of the wrong shape would mostly produce follow-on errors
    // (an unknown `bandwith` would also be a limit without a rate): the
    // shape is reported alone.
    if !problems.is_empty() {
        for p in problems {
            ck.error(p.line, &p.field, p.message);
        }
        return Err(ck.into_error());
    }
    let checked = check_policy(&mut ck, raw);
    if ck.errors.is_empty() {
        for w in shadow::shadowed(&checked.channels) {
            let line = checked.lines.get(w.channel).copied();
            ck.warnings.push(ck.diag(
                line,
                &format!("channels[{}]", w.channel),
                format!(
                    "channel `{}` can never match: `{}` comes first and matches all of its traffic",
                    checked.channels[w.channel].name, checked.channels[w.by].name
                ),
            ));
        }
    }
    if !ck.errors.is_empty() {
        return Err(ck.into_error());
    }
    Ok((
        Policy {
            channels: checked.channels,
            endpoints: checked.endpoints,
            warnings: ck.warnings,
        },
        checked.footprints,
    ))
}

/// Collects diagnostics.
struct Checker<'a> {
    /// The file as the operator named it, for every diagnostic.
    file: &'a str,
    /// Errors in file order, at most [`MAX_ERRORS`].
    errors: Vec<Diagnostic>,
    /// Errors found past [`MAX_ERRORS`], counted only.
    dropped: usize,
    /// Non-fatal findings.
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn diag(&self, line: Option<usize>, field: &str, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.to_string(),
            line,
            field: field.to_string(),
            message,
        }
    }

    fn error(&mut self, line: usize, field: &str, message: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            let d = self.diag(Some(line), field, message.into());
            self.errors.push(d);
        } else {
            self.dropped += 1;
        }
    }

    fn into_error(mut self) -> PolicyError {
        if self.dropped > 0 {
            let d = self.diag(
                None,
                "",
                format!("... and {} more errors not shown", self.dropped),
            );
            self.errors.push(d);
        }
        PolicyError {
            errors: self.errors,
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether a set name would read as an address: `from: 10.0.0.1` must not
/// depend on whether a set of that name exists.
fn looks_like_address(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
        || name.parse::<IpNet>().is_ok()
        || (name.contains('.') && name.chars().all(|c| c.is_ascii_digit() || c == '.'))
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

/// What [`check_policy`] found: everything but shadowing.
#[derive(Default)]
struct Checked {
    /// The channels, in file order.
    channels: Vec<Channel>,
    /// The line of each channel's item, for diagnostics about it.
    lines: Vec<usize>,
    /// The endpoint sets in file order.
    endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each channel's [`Footprint`].
    footprints: Vec<Footprint>,
}

fn check_policy(ck: &mut Checker<'_>, raw: RawPolicy) -> Checked {
    let sets = check_endpoints(ck, &raw.endpoints);
    let mut seen = std::collections::BTreeSet::new();
    let in_order = raw
        .endpoints
        .iter()
        .filter(|s| seen.insert(s.name.clone()))
        .filter_map(|s| Some((s.name.clone(), sets.get(&s.name)?.clone())))
        .collect();
    let Some((line, channels)) = raw.channels else {
        ck.error(
            raw.line,
            "channels",
            "missing: every policy lists its channels; a policy without channels says `channels: []`",
        );
        return Checked {
            endpoints: in_order,
            ..Checked::default()
        };
    };
    let Some((footprints, inline)) = fits(ck, line, &channels, &sets) else {
        return Checked {
            endpoints: in_order,
            ..Checked::default()
        };
    };
    let lines = channels.iter().map(|c| c.line).collect();
    Checked {
        channels: check_channels(ck, channels, &sets, inline),
        lines,
        endpoints: in_order,
        footprints,
    }
}

fn check_endpoints(ck: &mut Checker<'_>, raw: &[RawSet]) -> BTreeMap<String, Vec<IpNet>> {
    let mut sets = BTreeMap::new();
    for set in raw {
        let name = &set.name;
        let field = format!("endpoints.{name}");
        if looks_like_address(name) {
            ck.error(
                set.line,
                &field,
                format!("`{name}` looks like an address; a set name must not, or `from: {name}` would be ambiguous: use letters, e.g. `net-{name}`"),
            );
        } else if !valid_name(name) {
            ck.error(
                set.line,
                &field,
                format!(
                    "`{name}` is not a valid set name: use 1-63 letters, digits, `-`, `_` or `.`"
                ),
            );
        }
        if set.cidrs.is_empty() {
            ck.error(set.line, &field, "an endpoint set needs at least one CIDR");
        }
        let mut nets = Vec::new();
        for (i, c) in set.cidrs.iter().enumerate() {
            match parse_cidr(&c.text) {
                Ok(n) => nets.push(n),
                Err(m) => ck.error(c.line, &format!("{field}[{i}]"), m),
            }
        }
        nets.sort();
        nets.dedup();
        sets.insert(name.clone(), nets);
    }
    sets
}

/// The items of `from` / `to`, each with its index in the list (`None`:
/// the field is a single value), from which [`item_field`] makes its
/// field path when a diagnostic needs it.
fn endpoint_items(raw: &RawEndpoints) -> Vec<(Option<usize>, &Text)> {
    match raw {
        RawEndpoints::One(t) => vec![(None, t)],
        RawEndpoints::Many(l) => l
            .items
            .iter()
            .enumerate()
            .map(|(i, t)| (Some(i), t))
            .collect(),
    }
}

/// The field path of item `i` of `field`.
fn item_field(field: &str, i: Option<usize>) -> String {
    match i {
        None => field.to_string(),
        Some(i) => format!("{field}[{i}]"),
    }
}

/// Each channel's `from` and `to` items as [`fits`] read them, in order:
/// the prefix an item names inline, or `None` (a set's name, or an item
/// that is no prefix). [`resolve`] takes the prefixes from here rather
/// than parsing 131,072 of them twice.
type Inline = Vec<[Vec<Option<IpNet>>; 2]>;

/// Counts the prefixes of each side and family, with each channel's copy
/// of its sets and (where the copies could exceed the bound, see
/// [`bounded_distinct`]) distinct, and the port ranges, before any set is
/// copied into a channel: a policy that names a 65,536-prefix set in 1,024
/// channels is refused here, not expanded. Also each channel's inline
/// prefixes, parsed ([`Inline`]).
fn fits(
    ck: &mut Checker<'_>,
    line: usize,
    channels: &[RawChannel],
    sets: &BTreeMap<String, Vec<IpNet>>,
) -> Option<(Vec<Footprint>, Inline)> {
    let family = |n: &IpNet| usize::from(matches!(n, IpNet::V6(_)));
    let per_family: HashMap<&str, [usize; 2]> = sets
        .iter()
        .map(|(name, nets)| {
            let mut c = [0, 0];
            for n in nets {
                c[family(n)] += 1;
            }
            (name.as_str(), c)
        })
        .collect();
    // Per side, the sets named at least once (their prefixes count once).
    let mut named_sets: [HashSet<&str>; 2] = Default::default();
    let mut footprints = Vec::with_capacity(channels.len());
    let mut inline: Inline = Vec::with_capacity(channels.len());
    for c in channels {
        let mut f = Footprint::default();
        let mut parsed: [Vec<Option<IpNet>>; 2] = Default::default();
        for (side, raw) in [(0, &c.from), (1, &c.to)] {
            let Some(raw) = raw else { continue };
            f.named[side] = true;
            let items = endpoint_items(raw);
            parsed[side].reserve_exact(items.len());
            for (_, t) in items {
                let mut prefix = None;
                if let Some((name, c)) = per_family.get_key_value(t.text.as_str()) {
                    f.copies[side][0] += c[0];
                    f.copies[side][1] += c[1];
                    named_sets[side].insert(name);
                } else if let Ok(n) = parse_cidr(&t.text) {
                    f.copies[side][family(&n)] += 1;
                    prefix = Some(n);
                }
                parsed[side].push(prefix);
            }
        }
        f.port_ranges = c.ports.as_ref().map_or(0, |p| p.items.len());
        footprints.push(f);
        inline.push(parsed);
    }
    let distinct: [[usize; 2]; 2] = std::array::from_fn(|side| {
        let copies =
            std::array::from_fn(|fam| footprints.iter().map(|f| f.copies[side][fam]).sum());
        bounded_distinct(copies, || {
            let in_sets = named_sets[side].iter().flat_map(|s| &sets[*s]);
            in_sets.chain(inline.iter().flat_map(|p| p[side].iter().flatten()))
        })
    });
    let over = over_limits(&footprints, distinct);
    for message in &over {
        ck.error(line, "channels", message.clone());
    }
    over.is_empty().then_some((footprints, inline))
}

/// The distinct IPv4 and IPv6 prefixes of one side, as far as the bound
/// needs them, given the side's `copies` per family (each channel's own
/// and its copy of each set it names): a family whose copies are within
/// [`MAX_PREFIXES`] is not counted (a sort of the side's prefixes), its
/// copies bounding its distinct prefixes; the others are counted from
/// `nets()`, the side's prefixes (repeats are counted once).
pub(super) fn bounded_distinct<'a, I: IntoIterator<Item = &'a IpNet>>(
    copies: [usize; 2],
    nets: impl FnOnce() -> I,
) -> [usize; 2] {
    let over = copies.map(|c| c > MAX_PREFIXES);
    if !over.contains(&true) {
        return copies;
    }
    let counted = distinct_per_family(
        nets()
            .into_iter()
            .filter(|n| over[usize::from(matches!(n, IpNet::V6(_)))]),
    );
    std::array::from_fn(|fam| if over[fam] { counted[fam] } else { copies[fam] })
}

/// How many distinct IPv4 and IPv6 prefixes `nets` holds (sorted and
/// deduplicated: a sort is several times faster than hashing 131,072
/// prefixes).
fn distinct_per_family<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> [usize; 2] {
    let mut by_family: [Vec<&IpNet>; 2] = Default::default();
    for n in nets {
        by_family[usize::from(matches!(n, IpNet::V6(_)))].push(n);
    }
    by_family.map(|mut d| {
        d.sort_unstable();
        d.dedup();
        d.len()
    })
}

/// What one channel adds to the policy-wide counts that [`fits`] bounds,
/// as the file writes it (before its sets are copied in): kept per
/// channel, so that a file read again with a few channels changed
/// (`reuse`) is held to the same bounds without reading the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Footprint {
    /// Per side (`from`, `to`): whether the file names addresses; a side
    /// it leaves out matches any address and counts nothing.
    pub named: [bool; 2],
    /// Per side and family (IPv4, IPv6): prefixes, counting the channel's
    /// copy of each set it names. Per family so that a reading that reuses
    /// channels (`reuse`) knows when the copies alone keep each family's
    /// distinct prefixes within bounds, and need not count them.
    pub copies: [[usize; 2]; 2],
    /// Port ranges.
    pub port_ranges: usize,
}

/// The bounds a whole policy is held to, given each channel's
/// [`Footprint`] and the distinct prefixes per side and family: one
/// message per bound exceeded.
pub(super) fn over_limits(footprints: &[Footprint], distinct: [[usize; 2]; 2]) -> Vec<String> {
    let mut over = Vec::new();
    for (side, name) in ["source", "destination"].iter().enumerate() {
        for (fam, d) in ["IPv4", "IPv6"].iter().zip(distinct[side]) {
            if d > MAX_PREFIXES {
                over.push(format!(
                    "{d} distinct {name} {fam} prefixes; the datapath holds at most {MAX_PREFIXES} per side and family"
                ));
            }
        }
        // Copies are counted for both families together: the bound is on
        // memory, and the sum bounds each family too.
        let copies: usize = footprints.iter().flat_map(|f| f.copies[side]).sum();
        if copies > MAX_PREFIX_COPIES {
            over.push(format!(
                "{copies} {name} prefixes counting each channel's copy of the sets it names; at most {MAX_PREFIX_COPIES}: share a large set among fewer channels"
            ));
        }
    }
    let port_ranges: usize = footprints.iter().map(|f| f.port_ranges).sum();
    if port_ranges > MAX_PORT_RANGES {
        over.push(format!(
            "{port_ranges} port ranges in all; the datapath holds at most {MAX_PORT_RANGES}"
        ));
    }
    over
}

/// The defined set names for "not defined" errors, the first few only.
fn defined_sets(sets: &BTreeMap<String, Vec<IpNet>>) -> String {
    const SHOWN: usize = 20;
    if sets.is_empty() {
        return "none".into();
    }
    let mut s: Vec<&str> = sets.keys().take(SHOWN).map(String::as_str).collect();
    let more = format!("and {} more", sets.len().saturating_sub(SHOWN));
    if sets.len() > SHOWN {
        s.push(&more);
    }
    s.join(", ")
}

/// A channel side's prefixes, sorted and distinct: each item of `raw` is
/// a set's name, whose prefixes are copied in, or a prefix, taken from
/// `inline` (the item's parse by [`fits`], item for item as
/// [`endpoint_items`] lists them) or, when that has none, parsed here for
/// its error; an item that is neither is an undefined set. No `raw`: any
/// address.
fn resolve(
    ck: &mut Checker<'_>,
    field: &str,
    raw: Option<RawEndpoints>,
    inline: &[Option<IpNet>],
    sets: &BTreeMap<String, Vec<IpNet>>,
    defined: &str,
) -> Vec<IpNet> {
    let Some(raw) = raw else {
        return any_prefixes();
    };
    if let RawEndpoints::Many(l) = &raw {
        if l.items.is_empty() {
            ck.error(
                l.line,
                field,
                "an empty list matches nothing; omit the field to match any address",
            );
        }
    }
    let mut out = Vec::new();
    for (k, (i, item)) in endpoint_items(&raw).into_iter().enumerate() {
        if let Some(set) = sets.get(&item.text) {
            out.extend_from_slice(set);
        } else if let Some(Some(n)) = inline.get(k) {
            out.push(*n);
        } else if item.text.contains('/') || item.text.parse::<IpAddr>().is_ok() {
            match parse_cidr(&item.text) {
                Ok(n) => out.push(n),
                Err(m) => ck.error(item.line, &item_field(field, i), m),
            }
        } else {
            ck.error(
                item.line,
                &item_field(field, i),
                format!(
                    "endpoint set `{}` is not defined under `endpoints` (defined: {defined})",
                    item.text,
                ),
            );
        }
    }
    // Equal prefixes are alike: an unstable sort loses nothing.
    out.sort_unstable();
    out.dedup();
    // Kept for the policy's life: no slack from growing it.
    out.shrink_to_fit();
    out
}

fn check_ports(ck: &mut Checker<'_>, field: &str, raw: TextList) -> Vec<(u16, u16)> {
    if raw.items.is_empty() {
        ck.error(
            raw.line,
            field,
            "an empty port list matches nothing; omit `ports` to match any port",
        );
    }
    let mut out = Vec::new();
    for (i, p) in raw.items.into_iter().enumerate() {
        let f = format!("{field}[{i}]");
        let s = p.text.as_str();
        let bad = || {
            format!("`{s}` is not a port or range; write e.g. `5432` or `\"8000-8100\"` (1-65535)")
        };
        let port = |s: &str| -> Option<u16> { s.trim().parse::<u16>().ok().filter(|p| *p != 0) };
        let range = match s.split_once('-').filter(|(a, _)| !a.is_empty()) {
            Some((a, b)) => port(a).zip(port(b)),
            None => port(s).map(|p| (p, p)),
        }
        .ok_or_else(bad)
        .and_then(|(a, b)| {
            if a <= b {
                Ok((a, b))
            } else {
                Err(format!("`{s}`: the range runs backwards; write `{b}-{a}`"))
            }
        });
        match range {
            Ok(r) => out.push(r),
            Err(m) => ck.error(p.line, &f, m),
        }
    }
    out.sort();
    out
}

/// A whole number, for `packets`, `packet_burst` and the connection keys.
fn number(ck: &mut Checker<'_>, field: &str, t: &Text) -> Option<i64> {
    let n = t.text.trim().parse::<i64>().ok();
    if n.is_none() {
        ck.error(t.line, field, format!("`{}` is not a whole number", t.text));
    }
    n
}

/// `delay` paces instead of passing bursts: its default burst is the
/// smallest that never holds a GSO super-packet back for being large.
fn check_limit(ck: &mut Checker<'_>, field: &str, raw: Option<RawLimit>, pacing: bool) -> Limit {
    let Some(raw) = raw else {
        return Limit::default();
    };
    let mut limit = Limit::default();
    if raw.bandwidth.is_none()
        && raw.packets.is_none()
        && raw.connections.is_none()
        && raw.new_connections.is_none()
    {
        ck.error(raw.line, field, "a limit needs `bandwidth`, `packets`, `connections` or `new_connections` (one or more); omit `limit` for an unlimited (counting-only) channel");
    }
    if let Some(bw) = &raw.bandwidth {
        match units::parse_rate(&bw.text) {
            Ok(bps) => limit.bandwidth_bps = Some(bps),
            Err(m) => ck.error(bw.line, &format!("{field}.bandwidth"), m),
        }
    }
    if let Some(bps) = limit.bandwidth_bps {
        limit.burst_bytes = if pacing {
            MIN_BURST_BYTES
        } else {
            (bps / 8 * DEFAULT_BURST_MS / 1000).max(DEFAULT_MIN_BURST_BYTES)
        };
    }
    if let Some(burst) = &raw.burst {
        let f = format!("{field}.burst");
        let parsed = match burst.text.trim().parse::<u64>() {
            Ok(n) => Ok(n),
            Err(_) => units::parse_size(&burst.text),
        };
        match parsed {
            Err(m) => ck.error(burst.line, &f, m),
            Ok(_) if raw.bandwidth.is_none() => {
                ck.error(burst.line, &f, "`burst` sizes the bandwidth bucket; set `bandwidth` too (or use `packet_burst` with `packets`)")
            }
            Ok(b) if !(MIN_BURST_BYTES..=MAX_BURST_BYTES).contains(&b) => ck.error(
                burst.line,
                &f,
                format!("{b} bytes is out of range: a burst must be between 64KiB (one GSO super-packet, charged whole) and 1GiB"),
            ),
            Ok(b) => limit.burst_bytes = b,
        }
    }
    if let Some(t) = &raw.packets {
        let f = format!("{field}.packets");
        if let Some(p) = number(ck, &f, t) {
            match u64::try_from(p)
                .ok()
                .filter(|p| (1..=MAX_PACKETS).contains(p))
            {
                Some(p) => {
                    limit.packets = Some(p);
                    limit.packet_burst = (p * DEFAULT_PACKET_BURST_MS / 1000).max(MIN_PACKET_BURST);
                }
                None => ck.error(
                    t.line,
                    &f,
                    format!("{p} is out of range: packets/s must be between 1 and {MAX_PACKETS}"),
                ),
            }
        }
    }
    if let Some(t) = &raw.packet_burst {
        let f = format!("{field}.packet_burst");
        if raw.packets.is_none() {
            ck.error(
                t.line,
                &f,
                "`packet_burst` sizes the packet bucket; set `packets` too",
            );
        } else if let Some(pb) = number(ck, &f, t) {
            match u64::try_from(pb).ok().filter(|b| (MIN_PACKET_BURST..=MAX_PACKETS).contains(b)) {
                Some(b) => limit.packet_burst = b,
                None => ck.error(t.line, &f, format!("{pb} is out of range: a packet burst must be between {MIN_PACKET_BURST} (one GSO super-packet) and {MAX_PACKETS}")),
            }
        }
    }
    check_connections(ck, field, &raw, &mut limit);
    limit
}

/// A whole number in `1..=max`, for the connection keys; `None` when it is
/// not one (reported). `what` names the value in the out-of-range message.
fn count(ck: &mut Checker<'_>, field: &str, t: &Text, max: u32, what: &str) -> Option<u32> {
    let n = number(ck, field, t)?;
    let v = u32::try_from(n).ok().filter(|v| (1..=max).contains(v));
    if v.is_none() {
        ck.error(
            t.line,
            field,
            format!("{n} is out of range: {what} must be between 1 and {max}"),
        );
    }
    v
}

/// The connection keys of a limit: `connections`, `new_connections` and
/// `new_connection_burst`. Whether the channel may have them (TCP only)
/// is checked with the channel, which knows its protocol.
fn check_connections(ck: &mut Checker<'_>, field: &str, raw: &RawLimit, limit: &mut Limit) {
    if let Some(t) = &raw.connections {
        let f = format!("{field}.connections");
        limit.connections = count(ck, &f, t, MAX_CONNECTIONS, "open connections");
    }
    if let Some(t) = &raw.new_connections {
        let f = format!("{field}.new_connections");
        if let Some(n) = count(ck, &f, t, MAX_NEW_CONNECTIONS, "new connections/s") {
            limit.new_connections = Some(n);
            limit.new_connection_burst = (n / 4).max(DEFAULT_MIN_NEW_CONNECTION_BURST);
        }
    }
    if let Some(t) = &raw.new_connection_burst {
        let f = format!("{field}.new_connection_burst");
        if raw.new_connections.is_none() {
            ck.error(
                t.line,
                &f,
                "`new_connection_burst` sizes the new-connection bucket; set `new_connections` too",
            );
        } else if let Some(b) = count(
            ck,
            &f,
            t,
            MAX_NEW_CONNECTION_BURST,
            "a new-connection burst",
        ) {
            limit.new_connection_burst = b;
        }
    }
}

/// One of a fixed set of words (`protocol`, `direction`, `action`,
/// `connection_action`, `mode`); the default when the key is absent or
/// the word is wrong (reported).
fn choice<T: Copy + Default>(
    ck: &mut Checker<'_>,
    field: &str,
    raw: &Option<Text>,
    words: &[(&str, T)],
) -> T {
    let Some(t) = raw else {
        return T::default();
    };
    match words.iter().find(|(w, _)| *w == t.text) {
        Some((_, v)) => *v,
        None => {
            let valid: Vec<String> = words.iter().map(|(w, _)| format!("`{w}`")).collect();
            ck.error(
                t.line,
                field,
                format!("`{}` is not one of {}", t.text, valid.join(", ")),
            );
            T::default()
        }
    }
}

fn check_channels(
    ck: &mut Checker<'_>,
    raw: Vec<RawChannel>,
    sets: &BTreeMap<String, Vec<IpNet>>,
    inline: Inline,
) -> Vec<Channel> {
    let defined = defined_sets(sets);
    let mut names = HashSet::new();
    let mut out = Vec::new();
    // One per channel (`fits`); a channel without is read as before.
    let mut inline = inline.into_iter();
    for (i, rc) in raw.into_iter().enumerate() {
        let [inline_from, inline_to] = inline.next().unwrap_or_default();
        let field = format!("channels[{i}]");
        let name = rc.name.clone().unwrap_or(Text {
            line: rc.line,
            text: String::new(),
        });
        if rc.name.is_none() {
            // Missing: reported with the file's shape.
        } else if !valid_name(&name.text) {
            ck.error(
                name.line,
                &format!("{field}.name"),
                format!(
                    "`{}` is not a valid channel name: use 1-63 letters, digits, `-`, `_` or `.`",
                    name.text
                ),
            );
        } else if !names.insert(name.text.clone()) {
            ck.error(
                name.line,
                &format!("{field}.name"),
                format!(
                    "channel `{}` is defined twice; names must be unique",
                    name.text
                ),
            );
        }
        let protocol = choice(
            ck,
            &format!("{field}.protocol"),
            &rc.protocol,
            &[
                ("tcp", Protocol::Tcp),
                ("udp", Protocol::Udp),
                ("icmp", Protocol::Icmp),
                ("any", Protocol::Any),
            ],
        );
        let direction = choice(
            ck,
            &format!("{field}.direction"),
            &rc.direction,
            &[
                ("ingress", Direction::Ingress),
                ("egress", Direction::Egress),
            ],
        );
        let action = choice(
            ck,
            &format!("{field}.action"),
            &rc.action,
            &[
                ("drop", Action::Drop),
                ("delay", Action::Delay),
                ("mark", Action::Mark),
            ],
        );
        let mode = choice(
            ck,
            &format!("{field}.mode"),
            &rc.mode,
            &[("enforce", Mode::Enforce), ("monitor", Mode::Monitor)],
        );
        let from = resolve(
            ck,
            &format!("{field}.from"),
            rc.from,
            &inline_from,
            sets,
            &defined,
        );
        let to = resolve(
            ck,
            &format!("{field}.to"),
            rc.to,
            &inline_to,
            sets,
            &defined,
        );
        let ports = match rc.ports {
            None => Vec::new(),
            Some(p) => {
                if protocol == Protocol::Icmp {
                    ck.error(
                        p.line,
                        &format!("{field}.ports"),
                        "ICMP has no ports; drop `ports` or use protocol tcp, udp or any",
                    );
                }
                check_ports(ck, &format!("{field}.ports"), p)
            }
        };
        let limit_line = rc.limit.as_ref().map(|l| l.line);
        // The first connection key in the file, and whether a bandwidth or
        // packet rate is: the rules below go by the keys, so a key whose
        // value is wrong (reported with the limit) brings no second error.
        let conn_key = rc.limit.as_ref().and_then(|l| {
            [
                ("connections", &l.connections),
                ("new_connections", &l.new_connections),
            ]
            .into_iter()
            .filter_map(|(k, t)| t.as_ref().map(|t| (k, t.line)))
            .min_by_key(|(_, line)| *line)
        });
        let has_rate = rc
            .limit
            .as_ref()
            .is_some_and(|l| l.bandwidth.is_some() || l.packets.is_some());
        let limit = check_limit(
            ck,
            &format!("{field}.limit"),
            rc.limit,
            action == Action::Delay,
        );
        let action_line = rc.action.as_ref().map_or(rc.line, |t| t.line);
        let mut horizon_ns = None;
        if action == Action::Delay {
            if direction == Direction::Ingress {
                ck.error(
                    action_line,
                    &format!("{field}.action"),
                    "`delay` holds packets in the egress queue (fq releases them on time); an ingress packet has no queue to wait in: use `direction: egress`, or `drop`/`mark` on ingress",
                );
            }
            let (h, line) = rc
                .horizon
                .as_ref()
                .map_or((DEFAULT_HORIZON, action_line), |t| {
                    (t.text.as_str(), t.line)
                });
            match units::parse_duration(h) {
                Ok(ns) if (MIN_HORIZON_NS..=MAX_HORIZON_NS).contains(&ns) => horizon_ns = Some(ns),
                Ok(_) => ck.error(
                    line,
                    &format!("{field}.horizon"),
                    format!("`{h}` is out of range: a horizon must be between 1ms and 10s"),
                ),
                Err(m) => ck.error(line, &format!("{field}.horizon"), m),
            }
        }
        if action != Action::Drop && limit_line.is_none() {
            ck.error(
                action_line,
                &format!("{field}.action"),
                "`delay` and `mark` act on traffic over a limit: add `limit`",
            );
        } else if action != Action::Drop && !has_rate && conn_key.is_some() {
            // As without a limit: connection limits refuse SYNs, which
            // cannot be delayed or marked, so the action would act on nothing.
            ck.error(
                action_line,
                &format!("{field}.action"),
                "`delay` and `mark` act on traffic over `bandwidth` or `packets`; a connection limit refuses new connections as `connection_action` says: add `bandwidth` or `packets`, or remove `action`",
            );
        }
        let connection_action =
            check_connection_action(ck, &field, &rc.connection_action, conn_key.is_some());
        if let Some((key, key_line)) = conn_key {
            // A wrong word was reported and fell back to `any`.
            let wrong_word =
                protocol == Protocol::Any && rc.protocol.as_ref().is_some_and(|t| t.text != "any");
            if protocol != Protocol::Tcp && !wrong_word {
                let (line, f, found) = match &rc.protocol {
                    Some(t) => (
                        t.line,
                        format!("{field}.protocol"),
                        format!("`protocol: {}`", t.text),
                    ),
                    None => (
                        key_line,
                        format!("{field}.limit.{key}"),
                        "no `protocol`, so any".to_string(),
                    ),
                };
                ck.error(
                    line,
                    &f,
                    format!("connection limits (`connections`, `new_connections`) count TCP connections: set `protocol: tcp` (the channel has {found})"),
                );
            }
        }
        if let Some(h) = rc.horizon.as_ref().filter(|_| action != Action::Delay) {
            ck.error(
                h.line,
                &format!("{field}.horizon"),
                "`horizon` bounds the queueing of `action: delay`; remove it or set the action",
            );
        }
        out.push(Channel {
            name: name.text,
            from: from.into(),
            to: to.into(),
            protocol,
            ports,
            direction,
            limit,
            action,
            connection_action,
            horizon_ns,
            mode,
        });
    }
    out
}

/// `connection_action`: only on a channel with connection limits
/// (`limited`), where it is one of `drop`, `reset`. `Drop` otherwise.
fn check_connection_action(
    ck: &mut Checker<'_>,
    field: &str,
    raw: &Option<Text>,
    limited: bool,
) -> ConnAction {
    let f = format!("{field}.connection_action");
    match raw {
        Some(t) if !limited => {
            ck.error(
                t.line,
                &f,
                "`connection_action` says what a new TCP connection over a connection limit gets; set `limit.connections` or `limit.new_connections`, or remove it",
            );
            ConnAction::Drop
        }
        _ => choice(
            ck,
            &f,
            raw,
            &[("drop", ConnAction::Drop), ("reset", ConnAction::Reset)],
        ),
    }
}
