//! Property-based fuzzing of the policy parser and compiler (proptest).
//!
//! Four properties, each over generated policy files:
//! - structured policies within the rules are accepted, and compile to
//!   tables that agree with a plain first-match scan ([`sim::reference`])
//!   on random packets;
//! - structured policies with values in and slightly outside the rules
//!   never panic, are refused with a file and line for every error, or
//!   agree with the first-match scan like the valid ones;
//! - byte and line mutations of valid files (truncation, inserted YAML
//!   punctuation, duplicated and moved lines, deep nesting, anchors and
//!   aliases): the same;
//! - a valid file, then edits of it: each read reusing the channels of the
//!   reading before ([`super::reuse`]) gives what reading it whole gives,
//!   the same policy or the same diagnostics, and each compile reusing the
//!   address tables of the one before equals a fresh compile.
//!
//! `cargo test` runs [`DEFAULT_CASES`] files per property with
//! [`DEFAULT_PACKETS`] packets each; `TC_FUZZ_CASES` and `TC_FUZZ_PACKETS`
//! scale them (`cargo xtask fuzz`), `TC_FUZZ_SEED` fixes the random seed.
//! A failure is shrunk to a minimal file, printed with the packet.

use std::{
    cell::Cell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use proptest::{
    prelude::*,
    sample::{select, Index},
    test_runner::{Config, RngSeed, TestRunner},
};
use tc_common::{L4_ANY_PORT, L4_UNKNOWN};

use crate::datapath::held::{AddressRecord, Tables};

use super::{
    compile::{compile, compile_reusing, Addresses},
    sim::{reference, through_tables, Pkt},
    yaml::{self, Lines},
    Direction, Policy, Protocol, Reuse,
};

/// The name every generated file is parsed under; each error must carry it.
const FILE: &str = "fuzz.yaml";
/// Files per property in the bounded run (`cargo test`).
const DEFAULT_CASES: u32 = 256;
/// Random packets checked against each accepted file in the bounded run.
const DEFAULT_PACKETS: usize = 200;

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The runner for one property: case count and seed from the environment,
/// no regression files written into the source tree.
fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: env_num("TC_FUZZ_CASES").unwrap_or(DEFAULT_CASES),
        failure_persistence: None,
        rng_seed: env_num("TC_FUZZ_SEED").map_or(RngSeed::Random, RngSeed::Fixed),
        ..Config::default()
    })
}

/// What one file came to, for the summary a property prints.
#[derive(Clone, Copy)]
enum Outcome {
    /// Refused, every error with file and line.
    Refused,
    /// Accepted; this many packets agreed with first match.
    Accepted(usize),
}

/// Runs `check` on every case of `strategy`; a failure panics with the
/// minimal failing input. Prints how many files were accepted and refused,
/// so a generator that stops producing valid files shows.
fn run<S: Strategy>(
    what: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<Outcome, TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let (refused, accepted, packets) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let result = runner().run(&strategy, |v| {
        match check(v)? {
            Outcome::Refused => refused.set(refused.get() + 1),
            Outcome::Accepted(n) => {
                accepted.set(accepted.get() + 1);
                packets.set(packets.get() + n);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
    println!(
        "{what}: {} files accepted ({} packets agreed with first match), {} refused with lines",
        accepted.get(),
        packets.get(),
        refused.get()
    );
}

/// splitmix64: the packets of one case come from its seed, so a shrunk
/// failure replays with the same packets.
pub(crate) struct Rng(
    /// The state: the case's seed, advanced per draw.
    pub(crate) u64,
);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Structured policies.

/// One `from`/`to` item as generated.
#[derive(Debug, Clone)]
enum Ref {
    /// An endpoint set by name: a defined one (valid mode), or any name
    /// from the pools (wild mode: maybe undefined, maybe address-like).
    Set(String),
    /// An inline CIDR, bare address or garbage.
    Cidr(String),
}

/// A generated `limit:` map; each field as text, `None` = key left out.
#[derive(Debug, Clone, Default)]
struct GenLimit {
    /// `bandwidth:`.
    bandwidth: Option<String>,
    /// `burst:`.
    burst: Option<String>,
    /// `packets:`.
    packets: Option<String>,
    /// `packet_burst:`.
    packet_burst: Option<String>,
    /// `connections:`.
    connections: Option<String>,
    /// `new_connections:`.
    new_connections: Option<String>,
    /// `new_connection_burst:`.
    new_connection_burst: Option<String>,
}

impl GenLimit {
    /// Whether a connection key is written (valid or not).
    fn conn(&self) -> bool {
        self.connections.is_some() || self.new_connections.is_some()
    }
}

/// A generated channel; `None` = key left out (the default applies).
#[derive(Debug, Clone)]
struct GenChannel {
    /// `name:` (wild mode: possibly repeated or invalid).
    name: String,
    /// `from:`: `Some(one item)` may be written as a scalar.
    from: Option<Vec<Ref>>,
    /// `to:`.
    to: Option<Vec<Ref>>,
    /// `protocol:`.
    protocol: Option<String>,
    /// `ports:` items as written (`80`, `"8000-8100"`, or garbage).
    ports: Option<Vec<String>>,
    /// `direction:`.
    direction: Option<String>,
    /// `limit:`.
    limit: Option<GenLimit>,
    /// `action:`.
    action: Option<String>,
    /// `connection_action:`.
    connection_action: Option<String>,
    /// `horizon:`.
    horizon: Option<String>,
    /// `mode:`.
    mode: Option<String>,
    /// Written as a flow map (`- {name: c0, ...}`) rather than a block.
    flow: bool,
}

/// A generated policy file.
#[derive(Debug, Clone)]
pub(crate) struct GenPolicy {
    /// `endpoints:` sets in order, each a name and its items.
    sets: Vec<(String, Vec<String>)>,
    /// `channels:` in order.
    channels: Vec<GenChannel>,
    /// Quote every scalar that may be quoted (`"..."`), else only where YAML needs it.
    quote: bool,
}

/// Octets that make generated prefixes overlap and nest often.
const V4_HI: [u8; 4] = [10, 198, 192, 0];
const V4_SECOND: [u8; 4] = [0, 18, 19, 168];

fn v4_net(valid: bool) -> impl Strategy<Value = String> {
    (
        select(&V4_HI[..]),
        select(&V4_SECOND[..]),
        prop_oneof![Just(0u8), Just(1), Just(2), Just(255), any::<u8>()],
        prop_oneof![
            Just(0u8),
            Just(1),
            Just(7),
            Just(128),
            Just(255),
            any::<u8>()
        ],
        prop_oneof![1 => 0u8..=8, 4 => 8u8..=32],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(a, b, c, d, len, keep_host, bare)| {
            let addr = Ipv4Addr::new(a, b, c, d);
            let net = ipnet::Ipv4Net::new(addr, len).expect("length <= 32");
            let shown = if valid || !keep_host {
                net.network()
            } else {
                addr
            };
            if len == 32 && bare {
                shown.to_string()
            } else {
                format!("{shown}/{len}")
            }
        })
}

fn v6_net(valid: bool) -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(0x2001u16), Just(0xfd00), Just(0)],
        prop_oneof![Just(0xdb8u16), Just(0), any::<u16>()],
        prop_oneof![Just(0u16), Just(1), Just(2), Just(0xffff), any::<u16>()],
        prop_oneof![Just(0u16), Just(1), Just(0x10), any::<u16>()],
        prop_oneof![1 => 0u8..=16, 2 => 16u8..=64, 2 => 64u8..=128],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(a, b, c, last, len, keep_host, bare)| {
            let addr = Ipv6Addr::new(a, b, c, 0, 0, 0, 0, last);
            let net = ipnet::Ipv6Net::new(addr, len).expect("length <= 128");
            let shown = if valid || !keep_host {
                net.network()
            } else {
                addr
            };
            if len == 128 && bare {
                shown.to_string()
            } else {
                format!("{shown}/{len}")
            }
        })
}

/// A CIDR item: valid (host bits clear), or in wild mode also host bits
/// set and a few things that are no CIDR at all.
fn cidr(valid: bool) -> BoxedStrategy<String> {
    let good = prop_oneof![v4_net(valid), v6_net(valid)];
    if valid {
        good.boxed()
    } else {
        prop_oneof![
            24 => good,
            1 => select(
                &[
                    "198.18.0.0/33",
                    "300.1.2.3/8",
                    "10.0.0.0/",
                    "::/129",
                    "2001:db8::1::/64",
                    "10.0.0.0/-1",
                    "",
                    "0.0.0.0/0",
                    "::/0",
                ][..]
            )
            .prop_map(String::from),
        ]
        .boxed()
    }
}

/// Set names: valid ones, and in wild mode address-like and bad ones.
const SET_NAMES: [&str; 8] = ["web", "db", "lan", "ext", "a", "b_2", "set.x", "n-1"];
const BAD_NAMES: [&str; 7] = [
    "10.0.0.1",
    "1.2.3",
    "2001:db8::",
    "198.18.0.0/15",
    "bad name",
    "",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

fn set_name(valid: bool) -> BoxedStrategy<String> {
    let good = select(&SET_NAMES[..]).prop_map(String::from);
    if valid {
        good.boxed()
    } else {
        prop_oneof![12 => good, 1 => select(&BAD_NAMES[..]).prop_map(String::from)].boxed()
    }
}

fn sets(valid: bool) -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    let items = if valid { 1..4usize } else { 0..4usize };
    prop::collection::vec(
        (set_name(valid), prop::collection::vec(cidr(valid), items)),
        0..4,
    )
    .prop_map(move |mut sets| {
        if valid {
            let mut seen = std::collections::HashSet::new();
            sets.retain(|(n, _)| seen.insert(n.clone()));
        }
        sets
    })
}

/// Ports that make generated ranges overlap and touch.
const PORTS: [u16; 14] = [
    1, 22, 53, 80, 443, 1023, 1024, 5000, 8000, 8080, 8100, 32768, 65534, 65535,
];

fn port_item(valid: bool) -> BoxedStrategy<String> {
    let port = prop_oneof![3 => select(&PORTS[..]), 1 => 1u16..=65535];
    let good = prop_oneof![
        port.clone().prop_map(|p| p.to_string()),
        (port.clone(), port).prop_map(|(a, b)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            format!("{lo}-{hi}")
        }),
    ];
    if valid {
        good.boxed()
    } else {
        prop_oneof![
            12 => good,
            1 => select(&["0", "65536", "100-50", "-5", "80-", "abc", "1-65536", "0-10", "8080.5"][..])
                .prop_map(String::from),
        ]
        .boxed()
    }
}

/// A text field: one of `good`, or in wild mode one of `bad` too; `None`
/// leaves the key out.
fn field(
    valid: bool,
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> BoxedStrategy<Option<String>> {
    rare_field(0.5, valid, good, bad)
}

/// [`field`], written with probability `p` only: for keys that, when
/// written, constrain the rest of the channel (connection limits need
/// `protocol: tcp`) and would otherwise crowd out the other protocols.
fn rare_field(
    p: f64,
    valid: bool,
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> BoxedStrategy<Option<String>> {
    let s = if valid || bad.is_empty() {
        select(good).prop_map(String::from).boxed()
    } else {
        prop_oneof![12 => select(good).prop_map(String::from), 1 => select(bad).prop_map(String::from)]
            .boxed()
    };
    prop::option::weighted(p, s).boxed()
}

fn limit(valid: bool) -> impl Strategy<Value = GenLimit> {
    (
        field(
            valid,
            &["8kbit", "20Mbit", "100Mbit", "1Gbit", "400Gbit"],
            &["7kbit", "401Gbit", "0Mbit", "10bps", "100", "fast"],
        ),
        field(
            valid,
            &["64KiB", "256KiB", "1MiB", "1GiB"],
            &["63KiB", "2GiB", "0", "big"],
        ),
        field(
            valid,
            &["1", "1000", "5000", "100000000"],
            &["0", "100000001", "-1", "1.5"],
        ),
        field(valid, &["64", "100", "100000"], &["63", "0", "many"]),
        rare_field(
            0.2,
            valid,
            &["1", "20", "1000000"],
            &["0", "1000001", "-1", "lots"],
        ),
        rare_field(
            0.2,
            valid,
            &["1", "50", "1000000"],
            &["0", "1000001", "2.5"],
        ),
        field(valid, &["1", "10", "1000000"], &["0", "1000001", "x"]),
    )
        .prop_map(
            move |(
                bandwidth,
                burst,
                packets,
                packet_burst,
                connections,
                new_connections,
                new_connection_burst,
            )| {
                let mut l = GenLimit {
                    bandwidth,
                    burst,
                    packets,
                    packet_burst,
                    connections,
                    new_connections,
                    new_connection_burst,
                };
                if valid {
                    // A limit needs a rate or a connection limit; a burst
                    // only sizes a bucket that has a rate.
                    if l.bandwidth.is_none() && l.packets.is_none() && !l.conn() {
                        l.packets = Some("1000".into());
                    }
                    if l.bandwidth.is_none() {
                        l.burst = None;
                    }
                    if l.packets.is_none() {
                        l.packet_burst = None;
                    }
                    if l.new_connections.is_none() {
                        l.new_connection_burst = None;
                    }
                }
                l
            },
        )
}

fn refs(valid: bool, defined: Vec<String>) -> BoxedStrategy<Option<Vec<Ref>>> {
    let set = if valid && !defined.is_empty() {
        select(defined).prop_map(Ref::Set).boxed()
    } else if valid {
        cidr(true).prop_map(Ref::Cidr).boxed()
    } else {
        set_name(false).prop_map(Ref::Set).boxed()
    };
    let item = prop_oneof![set, cidr(valid).prop_map(Ref::Cidr)];
    let len = if valid { 1..4usize } else { 0..4usize };
    prop::option::of(prop::collection::vec(item, len)).boxed()
}

fn channel(valid: bool, defined: Vec<String>) -> impl Strategy<Value = GenChannel> {
    (
        (
            prop_oneof![Just(None), (0u8..4).prop_map(Some)],
            refs(valid, defined.clone()),
            refs(valid, defined),
            field(valid, &["tcp", "udp", "icmp", "any"], &["TCP", "sctp", "6"]),
            prop::option::of(prop::collection::vec(
                port_item(valid),
                if valid { 1..4 } else { 0..4 },
            )),
        ),
        (
            field(valid, &["ingress", "egress"], &["both", "in"]),
            prop::option::of(limit(valid)),
            field(valid, &["drop", "delay", "mark"], &["reject", "Drop"]),
            field(valid, &["drop", "reset"], &["rst", "Reset"]),
            field(valid, &["1ms", "50ms", "10s"], &["0ms", "11s", "soon"]),
            field(valid, &["enforce", "monitor"], &["dry", "count"]),
            any::<bool>(),
        ),
    )
        .prop_map(
            move |(
                (name, from, to, protocol, ports),
                (direction, limit, action, connection_action, horizon, mode, flow),
            )| {
                let mut c = GenChannel {
                    // Valid names are made unique by position when rendered.
                    name: name.map_or_else(String::new, |n| {
                        ["dup", "bad name", "c0", "x"][n as usize].to_string()
                    }),
                    from,
                    to,
                    protocol,
                    ports,
                    direction,
                    limit,
                    action,
                    connection_action,
                    horizon,
                    mode,
                    flow,
                };
                if valid {
                    c.name.clear();
                    if c.protocol.as_deref() == Some("icmp") {
                        c.ports = None;
                    }
                    match c.action.as_deref() {
                        Some("delay") => {
                            c.direction = Some("egress".into());
                            let l = c.limit.get_or_insert_with(GenLimit::default);
                            // Connection limits alone give `delay` nothing to act on.
                            if l.bandwidth.is_none() && l.packets.is_none() {
                                l.bandwidth = Some("100Mbit".into());
                            }
                        }
                        Some("mark") => {
                            let l = c.limit.get_or_insert_with(GenLimit::default);
                            if l.bandwidth.is_none() && l.packets.is_none() {
                                l.packets = Some("1000".into());
                            }
                            c.horizon = None;
                        }
                        _ => c.horizon = None,
                    }
                    // Connection limits count TCP connections; their
                    // action needs them.
                    if c.limit.as_ref().is_some_and(GenLimit::conn) {
                        c.protocol = Some("tcp".into());
                    } else {
                        c.connection_action = None;
                    }
                }
                c
            },
        )
}

pub(crate) fn policy(valid: bool) -> impl Strategy<Value = GenPolicy> {
    // Now and then past 64 channels: a second word in every channel set.
    let count = prop_oneof![7 => 0..8usize, 1 => 60..80usize];
    (sets(valid), any::<bool>(), count).prop_flat_map(move |(sets, quote, count)| {
        let defined: Vec<String> = sets.iter().map(|(n, _)| n.clone()).collect();
        prop::collection::vec(channel(valid, defined), count).prop_map(move |channels| GenPolicy {
            sets: sets.clone(),
            channels,
            quote,
        })
    })
}

/// A scalar as YAML text: quoted when asked, or where a plain scalar
/// would not survive (empty, leading `-`, trailing `:`, `:` inside a
/// flow collection).
fn scalar(s: &str, quote: bool, in_flow: bool) -> String {
    let needs = s.is_empty()
        || s.starts_with('-')
        || s.contains(' ')
        || s.ends_with(':')
        || (in_flow && (s.contains(':') || s.contains(',')));
    if quote || needs {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

impl GenPolicy {
    pub(crate) fn render(&self) -> String {
        let q = self.quote;
        let mut out = String::new();
        if !self.sets.is_empty() {
            out.push_str("endpoints:\n");
            for (i, (name, items)) in self.sets.iter().enumerate() {
                let items: Vec<String> = items.iter().map(|s| scalar(s, q, true)).collect();
                if i % 2 == 0 {
                    out.push_str(&format!(
                        "  {}: [{}]\n",
                        scalar(name, q, false),
                        items.join(", ")
                    ));
                } else {
                    out.push_str(&format!("  {}:\n", scalar(name, q, false)));
                    for it in items {
                        out.push_str(&format!("    - {it}\n"));
                    }
                    if self.sets[i].1.is_empty() {
                        out.push_str("    []\n");
                    }
                }
            }
        }
        if self.channels.is_empty() {
            out.push_str("channels: []\n");
            return out;
        }
        out.push_str("channels:\n");
        for (i, c) in self.channels.iter().enumerate() {
            let name = if c.name.is_empty() {
                format!("c{i}")
            } else {
                c.name.clone()
            };
            let mut fields: Vec<(String, String)> = vec![("name".into(), scalar(&name, q, c.flow))];
            let refs = |r: &[Ref]| -> String {
                let items: Vec<String> = r
                    .iter()
                    .map(|x| match x {
                        Ref::Set(s) | Ref::Cidr(s) => scalar(s, q, true),
                    })
                    .collect();
                if items.len() == 1 && !c.flow {
                    let (Ref::Set(s) | Ref::Cidr(s)) = &r[0];
                    scalar(s, q, false)
                } else {
                    format!("[{}]", items.join(", "))
                }
            };
            if let Some(r) = &c.from {
                fields.push(("from".into(), refs(r)));
            }
            if let Some(r) = &c.to {
                fields.push(("to".into(), refs(r)));
            }
            for (k, v) in [
                ("protocol", &c.protocol),
                ("direction", &c.direction),
                ("action", &c.action),
                ("connection_action", &c.connection_action),
                ("horizon", &c.horizon),
                ("mode", &c.mode),
            ] {
                if let Some(v) = v {
                    fields.push((k.into(), scalar(v, q, c.flow)));
                }
            }
            if let Some(p) = &c.ports {
                let items: Vec<String> = p.iter().map(|s| scalar(s, q, true)).collect();
                fields.push(("ports".into(), format!("[{}]", items.join(", "))));
            }
            if let Some(l) = &c.limit {
                let mut parts = Vec::new();
                for (k, v) in [
                    ("bandwidth", &l.bandwidth),
                    ("burst", &l.burst),
                    ("packets", &l.packets),
                    ("packet_burst", &l.packet_burst),
                    ("connections", &l.connections),
                    ("new_connections", &l.new_connections),
                    ("new_connection_burst", &l.new_connection_burst),
                ] {
                    if let Some(v) = v {
                        parts.push(format!("{k}: {}", scalar(v, q, true)));
                    }
                }
                fields.push(("limit".into(), format!("{{{}}}", parts.join(", "))));
            }
            if c.flow {
                let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out.push_str(&format!("  - {{{}}}\n", parts.join(", ")));
            } else {
                for (j, (k, v)) in fields.iter().enumerate() {
                    let lead = if j == 0 { "  - " } else { "    " };
                    out.push_str(&format!("{lead}{k}: {v}\n"));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Mutations of valid files.

/// Valid files the mutations start from, beside generated ones.
pub(super) const CORPUS: [&str; 3] = [
    r#"
endpoints:                       # named endpoint sets
  web: [198.18.1.0/24, "2001:db8:1::/64"]
  db:  [198.18.2.10/32]
channels:                        # first match wins, in file order
  - name: web-to-db
    from: web
    to: db
    protocol: tcp
    ports: [5432, "8000-8100"]
    direction: ingress
    limit:
      bandwidth: 20Mbit
      burst: 256KiB
      packets: 5000
      packet_burst: 100
    action: drop
    mode: enforce
  - name: paced
    direction: egress
    limit: {bandwidth: 1Gbit}
    action: delay
    horizon: 50ms
  - name: api-connections
    to: db
    protocol: tcp
    ports: [443]
    limit:
      connections: 20
      new_connections: 50
      new_connection_burst: 10
    connection_action: reset
    mode: monitor
"#,
    r#"
endpoints:
  a: [198.18.0.0/16, "2001:db8::/32"]
  b: [198.18.1.0/24, 198.18.1.128/25, "2001:db8:1::/48"]
  c: [198.18.1.7/32, 198.18.3.0/24]
channels:
  - {name: c1, from: b, to: c, protocol: tcp, ports: [80, "8000-8100"]}
  - {name: c2, from: a, protocol: udp, ports: ["53-60"]}
  - {name: c3, from: c, to: a, protocol: icmp}
  - {name: c4, to: b, ports: ["70-90"], direction: egress}
  - {name: c5, from: b, protocol: tcp}
  - {name: c6, from: a, to: a}
  - {name: c7, direction: egress, protocol: udp}
"#,
    r#"
endpoints:
  lan: &lan [10.0.0.0/8, "fd00::/8"]
  dmz: [192.0.2.0/24]
channels:
  - name: in
    from: lan
    to: [dmz, 198.51.100.0/24]
    limit: &std {bandwidth: 100Mbit, packets: 10000}
    action: mark
  - name: out
    direction: egress
    protocol: udp
    ports: [53, "1024-65535"]
    limit: *std
    mode: monitor
"#,
];

/// One edit of a file's bytes or lines. Positions are taken modulo the
/// current length, so every edit applies to every file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the file at a byte.
    Truncate(Index),
    /// Insert a piece of YAML syntax or an odd character at a byte.
    Insert(Index, &'static str),
    /// Overwrite one byte (non-UTF-8 results are read lossily).
    Byte(Index, u8),
    /// Repeat a line right after itself.
    DupLine(Index),
    /// Remove a line.
    DelLine(Index),
    /// Exchange two lines.
    SwapLines(Index, Index),
    /// Indent a line by more spaces.
    Indent(Index, u8),
    /// Wrap a line's value in `depth` flow lists.
    Nest(Index, u8),
    /// Anchor the value of one `key: value` line and alias it at another.
    Alias(Index, Index),
}

const INSERTS: [&str; 30] = [
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "!!str ",
    "!!binary ",
    "# ",
    "'",
    "\"",
    "\n",
    "  ",
    "\t",
    "|",
    ">",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "? ",
    ",",
    "<<: *a\n",
    "~",
    "é",
    "\u{0}",
    "\u{feff}",
    "99999999999999999999999",
    "\\",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), select(&INSERTS[..])).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<Index>().prop_map(Mutation::DupLine),
        any::<Index>().prop_map(Mutation::DelLine),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), 1u8..8).prop_map(|(i, n)| Mutation::Indent(i, n)),
        (any::<Index>(), 1u8..40).prop_map(|(i, n)| Mutation::Nest(i, n)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Alias(a, b)),
    ]
}

impl Mutation {
    fn apply(&self, text: String) -> String {
        let mut bytes = text.into_bytes();
        let mut lines: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .map(String::from)
            .collect();
        let by_line = |lines: Vec<String>| lines.join("\n") + "\n";
        match self {
            Mutation::Truncate(i) => {
                bytes.truncate(i.index(bytes.len() + 1));
            }
            Mutation::Insert(i, s) => {
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, s.bytes());
            }
            Mutation::Byte(i, b) => {
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = *b;
                }
            }
            _ if lines.is_empty() => {}
            Mutation::DupLine(i) => {
                let at = i.index(lines.len());
                lines.insert(at, lines[at].clone());
                return by_line(lines);
            }
            Mutation::DelLine(i) => {
                lines.remove(i.index(lines.len()));
                return by_line(lines);
            }
            Mutation::SwapLines(a, b) => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
                return by_line(lines);
            }
            Mutation::Indent(i, n) => {
                let at = i.index(lines.len());
                lines[at].insert_str(0, &" ".repeat(*n as usize));
                return by_line(lines);
            }
            Mutation::Nest(i, depth) => {
                let at = i.index(lines.len());
                let d = *depth as usize;
                let line = &mut lines[at];
                if let Some(k) = line.find(": ") {
                    let value = line[k + 2..].to_string();
                    *line = format!("{}: {}{value}{}", &line[..k], "[".repeat(d), "]".repeat(d));
                } else {
                    line.push_str(&format!(" {}{}", "[".repeat(d), "]".repeat(d)));
                }
                return by_line(lines);
            }
            Mutation::Alias(a, b) => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                if let Some(k) = lines[a].find(": ") {
                    lines[a].insert_str(k + 2, "&x ");
                }
                if let Some(k) = lines[b].find(": ") {
                    lines[b].truncate(k + 2);
                    lines[b].push_str("*x");
                }
                return by_line(lines);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn mutated() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            select(&CORPUS[..]).prop_map(String::from),
            policy(true).prop_map(|p| p.render()),
        ],
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(text, muts)| muts.iter().fold(text, |t, m| m.apply(t)))
}

// ---------------------------------------------------------------------------
// The checks.

/// Random packets aimed at the policy's prefixes, ports and their edges.
pub(crate) fn packets(policy: &Policy, rng: &mut Rng, n: usize) -> Vec<Pkt> {
    let nets: Vec<IpNet> = policy
        .channels
        .iter()
        .flat_map(|c| c.from.iter().chain(c.to.iter()))
        .copied()
        .collect();
    let mut ports: Vec<u16> = vec![0, 1, 53, 80, 443, 65535];
    for c in &policy.channels {
        for &(a, b) in &c.ports {
            ports.extend([a.wrapping_sub(1), a, b, b.wrapping_add(1)]);
        }
    }
    let addr = |rng: &mut Rng, v6: bool| -> IpAddr {
        let family: Vec<&IpNet> = nets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .collect();
        let random = |rng: &mut Rng| -> u128 {
            if v6 {
                (rng.next() as u128) << 64 | rng.next() as u128
            } else {
                rng.next() as u32 as u128
            }
        };
        let bits = if v6 { 128 } else { 32 };
        let value = if family.is_empty() || rng.below(10) == 9 {
            random(rng)
        } else {
            let net = family[rng.below(family.len() as u64) as usize];
            let (base, len) = match net {
                IpNet::V4(n) => (u32::from(n.network()) as u128, n.prefix_len() as u32),
                IpNet::V6(n) => (u128::from(n.network()), n.prefix_len() as u32),
            };
            let host = if len == bits {
                0
            } else {
                u128::MAX >> (128 - (bits - len))
            };
            match rng.below(4) {
                0 => base,
                1 => base | host,
                // Just past the prefix (wraps at the top of the space).
                2 => (base | host).wrapping_add(1) & (u128::MAX >> (128 - bits)),
                _ => base | (random(rng) & host),
            }
        };
        if v6 {
            IpAddr::V6(Ipv6Addr::from(value))
        } else {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        }
    };
    (0..n)
        .map(|_| {
            let v6 = rng.below(2) == 1;
            let src = addr(rng, v6);
            let dst = addr(rng, v6);
            let other = rng.next() as u8;
            let proto = rng.pick(&[6u8, 6, 17, 17, 1, 58, 47, 0, 132, other]);
            let hidden = match rng.below(10) {
                0 => L4_ANY_PORT,
                1 => L4_UNKNOWN,
                _ => 0,
            };
            let port = (hidden == 0 && (proto == 6 || proto == 17)).then(|| {
                if rng.below(4) == 0 {
                    rng.next() as u16
                } else {
                    rng.pick(&ports)
                }
            });
            let dir = if rng.below(2) == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            Pkt {
                src,
                dst,
                proto,
                port,
                dir,
                hidden,
            }
        })
        .collect()
}

/// Every property's check of one file: no panic; refused with file and
/// line on each error; or accepted, compiled, and equal to first match.
fn check_text(text: &str, seed: u64, must_accept: bool) -> Result<Outcome, TestCaseError> {
    // Read with or without the lines of list items (`Policy::parse`'s
    // first reading), the file gives the same policy or is refused alike.
    match (
        Policy::parse_with(text, FILE, Lines::MapsOnly),
        Policy::parse_with(text, FILE, Lines::All),
    ) {
        (Ok(maps), Ok(all)) => {
            prop_assert_eq!(&maps.channels, &all.channels, "{}", text);
            prop_assert_eq!(&maps.endpoints, &all.endpoints, "{}", text);
            prop_assert_eq!(maps.warnings.len(), all.warnings.len(), "{}", text);
        }
        (Err(_), Err(_)) => {}
        (maps, all) => prop_assert!(
            false,
            "the readings disagree: without item lines {:?}, with {:?}\n--- file ---\n{}",
            maps.is_ok(),
            all.is_ok(),
            text
        ),
    }
    let policy = match Policy::parse(text, FILE) {
        Ok(p) => p,
        Err(e) => {
            prop_assert!(!must_accept, "a valid policy was refused:\n{text}\n{e}");
            prop_assert!(!e.errors.is_empty(), "an error without diagnostics");
            for d in &e.errors {
                let shown = d.to_string();
                prop_assert_eq!(&d.file, FILE, "{}", shown);
                // Two diagnostics have no line to name: a file without a
                // document (empty, or only comments) and the count of
                // errors past the first hundred.
                let lineless = d.message.starts_with("the file holds no policy")
                    || (d.message.starts_with("... and ")
                        && d.message.ends_with(" more errors not shown"));
                prop_assert!(
                    lineless
                        || d.line
                            .is_some_and(|l| shown.starts_with(&format!("{FILE}:{l}: "))),
                    "error without a line: {shown}\n--- file ---\n{text}"
                );
            }
            return Ok(Outcome::Refused);
        }
    };
    let tables = match compile(&policy) {
        Ok(t) => t,
        // Generated files are far from the table limits, but a refusal
        // here would be an answer, not a crash.
        Err(_) => return Ok(Outcome::Accepted(0)),
    };
    // Connection limits: only on TCP channels, and compiled so that the
    // datapath tracks exactly the channels that have them, with a burst of
    // whole costs (see `compile::channel_policy`) and no pool yet.
    for (c, p) in policy.channels.iter().zip(&tables.policies) {
        prop_assert_eq!(p.limits_connections(), c.limit.limits_connections());
        prop_assert_eq!(p.conn_pool, tc_common::NO_POOL);
        if c.limit.limits_connections() {
            prop_assert_eq!(c.protocol, Protocol::Tcp, "{}", text);
        }
        prop_assert_eq!(
            p.conn_tau_ns,
            u64::from(c.limit.new_connection_burst) * p.conn_cost_ns
        );
        prop_assert_eq!(
            c.limit.new_connections.is_some(),
            c.limit.new_connection_burst > 0
        );
    }
    let shadowed: Vec<usize> = policy
        .warnings
        .iter()
        .filter_map(|w| {
            w.field
                .strip_prefix("channels[")
                .and_then(|f| f.strip_suffix(']'))
                .and_then(|i| i.parse().ok())
        })
        .collect();
    let n = env_num("TC_FUZZ_PACKETS").unwrap_or(DEFAULT_PACKETS);
    for p in packets(&policy, &mut Rng(seed), n) {
        let want = reference(&policy, &p);
        let got = through_tables(&tables, &p);
        prop_assert_eq!(got, want, "packet {:?}\n--- file ---\n{}", p, text);
        // Shadowing is about packets whose ports and protocol are read: a
        // packet that hides them passes over earlier channels that enforce
        // nothing (`Channel::holds_hidden`) and may reach a shadowed one.
        if let (Some(i), 0) = (want, p.hidden) {
            prop_assert!(
                !shadowed.contains(&i),
                "channel {} was warned shadowed but matches {:?}\n--- file ---\n{}",
                i,
                p,
                text
            );
        }
    }
    Ok(Outcome::Accepted(n))
}

#[test]
fn valid_generated_policies_are_accepted_and_compile_to_first_match() {
    run("valid", (policy(true), any::<u64>()), |(p, seed)| {
        check_text(&p.render(), seed, true)
    });
}

#[test]
fn wild_generated_policies_are_refused_with_lines_or_compile_to_first_match() {
    run("wild", (policy(false), any::<u64>()), |(p, seed)| {
        check_text(&p.render(), seed, false)
    });
}

#[test]
fn mutated_policies_are_refused_with_lines_or_compile_to_first_match() {
    run("mutated", (mutated(), any::<u64>()), |(text, seed)| {
        check_text(&text, seed, false)
    });
}

/// The plain YAML reader (`yaml::events`) gives exactly serde-saphyr's
/// tree, lines and event count wherever it takes a file, and it takes
/// every valid generated policy, quoted or plain (the files policies are
/// written as).
#[test]
fn the_plain_reader_reads_as_serde_saphyr_or_declines() {
    let taken = Cell::new(0usize);
    let texts = prop_oneof![
        policy(true).prop_map(|p| (p.render(), true)),
        policy(false).prop_map(|p| (p.render(), false)),
        mutated().prop_map(|t| (t, false)),
    ];
    let result = runner().run(&texts, |(text, valid)| {
        for lines in [Lines::All, Lines::MapsOnly] {
            let took = yaml::plain_reads_as_serde(&text, lines)
                .map_err(|e| TestCaseError::fail(format!("{e}\n--- file ---\n{text}")))?;
            prop_assert!(
                took || !valid,
                "the plain reader declined a valid policy ({lines:?}):\n{text}"
            );
            taken.set(taken.get() + usize::from(took));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("plain reader: {e}");
    }
    println!("plain reader: took {} readings", taken.get());
}

/// One edit of a generated policy's channels, as an operator makes them.
#[derive(Debug, Clone)]
enum Edit {
    /// A channel replaced by another.
    Replace(Index, GenChannel),
    /// A channel removed.
    Remove(Index),
    /// Two channels swapped.
    Swap(Index, Index),
    /// A channel added.
    Insert(Index, GenChannel),
}

impl Edit {
    fn apply(&self, p: &mut GenPolicy) {
        let n = p.channels.len();
        match self {
            Edit::Replace(i, c) if n > 0 => p.channels[i.index(n)] = c.clone(),
            Edit::Remove(i) if n > 0 => {
                p.channels.remove(i.index(n));
            }
            Edit::Swap(a, b) if n > 0 => p.channels.swap(a.index(n), b.index(n)),
            Edit::Insert(i, c) => p.channels.insert(i.index(n + 1), c.clone()),
            _ => {}
        }
    }
}

/// A valid policy and two rounds of edits of its channels (channels of
/// its own endpoint sets).
fn edited() -> impl Strategy<Value = (GenPolicy, Vec<Edit>, Vec<Edit>)> {
    policy(true).prop_flat_map(|p| {
        let defined: Vec<String> = p.sets.iter().map(|(n, _)| n.clone()).collect();
        let edit = prop_oneof![
            (any::<Index>(), channel(true, defined.clone())).prop_map(|(i, c)| Edit::Replace(i, c)),
            any::<Index>().prop_map(Edit::Remove),
            (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
            (any::<Index>(), channel(true, defined)).prop_map(|(i, c)| Edit::Insert(i, c)),
        ];
        (
            Just(p),
            prop::collection::vec(edit.clone(), 1..3),
            prop::collection::vec(edit, 1..3),
        )
    })
}

/// A valid file, then edits of it, one after the other (two rounds of
/// its channels edited, then byte and line mutations): each read reusing
/// the channels of the reading before (`reuse`, whose memo after the first
/// edit may come from a reading that itself reused) gives what reading it
/// whole gives, the same policy or the same diagnostics.
#[test]
fn edited_policies_read_reusing_channels_as_they_read_whole() {
    let reused = Cell::new(0u64);
    let cases = (edited(), prop::collection::vec(mutation(), 1..3));
    run("edited", cases, |((p, first, second), mutations)| {
        let base = p.render();
        let reuse = Reuse::eager();
        prop_assert!(reuse.parse(base.clone(), FILE).is_ok(), "{}", base);
        reuse.settle();
        let mut q = p.clone();
        first.iter().for_each(|e| e.apply(&mut q));
        let once = q.render();
        second.iter().for_each(|e| e.apply(&mut q));
        let twice = q.render();
        let mutated = mutations.iter().fold(twice.clone(), |t, m| m.apply(t));
        let mut outcome = Outcome::Refused;
        // The agent's compile keeps the live policy's address tables for
        // the next one: compiled so along the edits, each must equal a
        // fresh compile.
        // The record of their tables is kept too (`Tables::of_with_addresses`).
        let mut addresses: Option<Addresses> = None;
        let mut record: Option<AddressRecord> = None;
        for edited in [once, twice, mutated] {
            let before = reuse.reused();
            let got = reuse.parse(edited.clone(), FILE);
            reuse.settle();
            reused.set(reused.get() + reuse.reused() - before);
            outcome = match (got, Policy::parse(&edited, FILE)) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(&a, &b, "{}", edited);
                    if let Ok(fresh) = compile(&a) {
                        let (mut c, same) =
                            compile_reusing(&a, addresses.take()).expect("compiles");
                        prop_assert_eq!(&c, &fresh, "{}", edited);
                        let mut tables = Tables::of(&c);
                        if let (true, Some(kept)) = (same, &record) {
                            // Kept along the edits, as the agent keeps it.
                            let reused = Tables::of_with_addresses(&c, kept);
                            prop_assert_eq!(&reused, &tables, "{}", edited);
                            tables = reused;
                        }
                        record = Some(tables.addresses());
                        addresses = Some(Addresses::take(&a, &mut c));
                    }
                    Outcome::Accepted(0)
                }
                (Err(a), Err(b)) => {
                    prop_assert_eq!(a.to_string(), b.to_string(), "{}", edited);
                    Outcome::Refused
                }
                (a, b) => {
                    prop_assert!(
                        false,
                        "reusing: {:?}\nwhole: {:?}\n--- file ---\n{}",
                        a,
                        b,
                        edited
                    );
                    unreachable!()
                }
            };
        }
        Ok(outcome)
    });
    println!("edited: {} files read reusing channels", reused.get());
    assert!(reused.get() > 0, "no edit was read reusing channels");
}
