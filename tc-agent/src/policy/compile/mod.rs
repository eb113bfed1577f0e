//! Compiles a validated [`Policy`] into the datapath's tables.
//!
//! Each table maps a packet field to the set of channels that accept it:
//! the datapath ANDs the sets of the three fields and takes the lowest bit.
//! The tables are longest-prefix-match tries, so each entry must carry the
//! union of every channel that accepts *any* packet it is the longest match
//! for; the functions here compute those unions.

mod addresses;

use std::collections::BTreeSet;

use ipnet::IpNet;
use tc_common::{
    ChannelPolicy, ChannelSet, ACTION_DELAY, ACTION_DROP, ACTION_MARK, CONN_DROP, CONN_RESET,
    DIR_EGRESS, DIR_INGRESS, L4_ANY_PORT, L4_UNKNOWN, MODE_ENFORCE, MODE_MONITOR, NO_POOL,
};

use super::{
    cover::{Cover, Family, V4, V6},
    interner::Interner,
    Action, Channel, ConnAction, Direction, Mode, Policy,
};

/// Address-trie entries one generation may use per side and family.
pub const MAX_ADDR_ENTRIES: usize = 65_536 + 512;
/// L4-trie entries one generation may use.
pub const MAX_L4_ENTRIES: usize = (tc_common::MAX_L4_ENTRIES / 2) as usize;

/// One address-trie entry: `len` address bits of `addr`. Two entries
/// compare equal only within one [`Compiled`] (their sets are indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrEntry<const N: usize> {
    pub len: u8,
    pub addr: [u8; N],
    /// Its channel set, as an index into [`Compiled::sets`].
    pub set: u32,
}

/// One L4-trie entry: `bits` bits (after the generation byte) of
/// `[direction, protocol, port_hi, port_lo]`. Comparable within one
/// [`Compiled`] only, as [`AddrEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4Entry {
    pub bits: u32,
    pub data: [u8; 4],
    /// Its channel set, as an index into [`Compiled::sets`].
    pub set: u32,
}

/// Everything the datapath needs for one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    pub src_v4: Vec<AddrEntry<4>>,
    pub dst_v4: Vec<AddrEntry<4>>,
    pub src_v6: Vec<AddrEntry<16>>,
    pub dst_v6: Vec<AddrEntry<16>>,
    pub l4: Vec<L4Entry>,
    /// One per channel, in channel order.
    pub policies: Vec<ChannelPolicy>,
    /// `ChannelSet` words in use.
    pub words: u32,
    /// The distinct channel sets the entries name, each once (see
    /// `policy::interner`), the address tables' first: a policy's entries
    /// share a few sets (one per channel, where channels name disjoint
    /// prefixes), and 131,072 entries of 128-byte sets held 17 MiB while
    /// an apply ran.
    pub sets: Vec<ChannelSet>,
}

impl Compiled {
    /// The channel set an entry names.
    pub fn set(&self, id: u32) -> &ChannelSet {
        &self.sets[id as usize]
    }

    /// Trie entries in all tables, for reports.
    pub fn entries(&self) -> usize {
        self.src_v4.len()
            + self.dst_v4.len()
            + self.src_v6.len()
            + self.dst_v6.len()
            + self.l4.len()
    }
}

/// The policy does not fit the datapath's tables.
#[derive(Debug, thiserror::Error)]
#[error("policy too large: {table} needs {needed} entries, the datapath holds {max}")]
pub struct CapacityError {
    pub table: &'static str,
    pub needed: usize,
    pub max: usize,
}

pub fn compile(policy: &Policy) -> Result<Compiled, CapacityError> {
    compile_reusing(policy, None).map(|(c, _)| c)
}

/// [`compile`], with `previous`'s address tables moved in when they fit
/// the policy (see [`Addresses`]); says whether they were.
pub fn compile_reusing(
    policy: &Policy,
    previous: Option<Addresses>,
) -> Result<(Compiled, bool), CapacityError> {
    let ch = &policy.channels;
    let check = |table: &'static str, needed: usize, max: usize| {
        if needed > max {
            Err(CapacityError { table, needed, max })
        } else {
            Ok(())
        }
    };
    let previous = previous.filter(|a| a.fit(ch));
    let reused = previous.is_some();
    let (mut sets, src_v4, dst_v4, src_v6, dst_v6) = match previous {
        Some(a) => a.into_parts(),
        None => {
            // The IPv6 tables on a second thread, with sets of their own.
            let ((mut sets, mut src_v4, mut dst_v4), v6) = crate::families::both(
                "compile-ipv6",
                || family_tables::<4>(ch, &V4),
                || family_tables::<16>(ch, &V6),
            );
            let (sets_v6, mut src_v6, mut dst_v6) =
                v6.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let ids: Vec<u32> = sets_v6
                .into_sets()
                .into_iter()
                .map(|s| sets.id(s))
                .collect();
            for e in src_v6.iter_mut().chain(&mut dst_v6) {
                e.set = ids[e.set as usize];
            }
            // The address tables' sets first, each named by an entry (as
            // `Addresses` keeps them), numbered in table order.
            let sets = sets.keep_named(
                src_v4
                    .iter_mut()
                    .chain(&mut dst_v4)
                    .map(|e| &mut e.set)
                    .chain(src_v6.iter_mut().chain(&mut dst_v6).map(|e| &mut e.set)),
            );
            (sets, src_v4, dst_v4, src_v6, dst_v6)
        }
    };
    let out = Compiled {
        src_v4,
        dst_v4,
        src_v6,
        dst_v6,
        l4: l4_table(ch, &mut sets),
        policies: ch.iter().map(channel_policy).collect(),
        words: ch.len().div_ceil(64) as u32,
        sets: sets.into_sets(),
    };
    check("source IPv4 prefixes", out.src_v4.len(), MAX_ADDR_ENTRIES)?;
    check(
        "destination IPv4 prefixes",
        out.dst_v4.len(),
        MAX_ADDR_ENTRIES,
    )?;
    check("source IPv6 prefixes", out.src_v6.len(), MAX_ADDR_ENTRIES)?;
    check(
        "destination IPv6 prefixes",
        out.dst_v6.len(),
        MAX_ADDR_ENTRIES,
    )?;
    check("protocol/port entries", out.l4.len(), MAX_L4_ENTRIES)?;
    Ok((out, reused))
}

/// Builds one address trie. For every prefix P some channels name, the
/// entry holds each channel that names P or any prefix containing P: those
/// are exactly the channels whose prefixes contain an address whose longest
/// match is P (see [`Cover`]). Sorted by length, then address.
fn addr_table<const N: usize>(
    channels: &[Channel],
    side: impl Fn(&Channel) -> &[IpNet],
    family: &Family,
    sets: &mut Interner,
) -> Vec<AddrEntry<N>> {
    let cover = Cover::build(channels.iter().map(side), family, sets);
    cover
        .prefixes
        .iter()
        .zip(cover.items)
        .map(|(&(len, addr), set)| {
            let be = addr.to_be_bytes();
            let mut a = [0u8; N];
            a.copy_from_slice(&be[16 - N..]);
            AddrEntry { len, addr: a, set }
        })
        .collect()
}

/// The source and destination tables of one family, their sets in an
/// interner of their own.
fn family_tables<const N: usize>(
    channels: &[Channel],
    family: &Family,
) -> (Interner, Vec<AddrEntry<N>>, Vec<AddrEntry<N>>) {
    let mut sets = Interner::default();
    let src = addr_table(channels, |c| &c.from, family, &mut sets);
    let dst = addr_table(channels, |c| &c.to, family, &mut sets);
    (sets, src, dst)
}

pub use self::addresses::Addresses;

fn dir_byte(d: Direction) -> u8 {
    match d {
        Direction::Ingress => DIR_INGRESS,
        Direction::Egress => DIR_EGRESS,
    }
}

fn proto_matches(c: &Channel, proto: u8) -> bool {
    match c.protocol.numbers() {
        None => c.ports.is_empty() || proto == 6 || proto == 17,
        Some(ps) => ps.contains(&proto),
    }
}

fn port_matches(c: &Channel, port: Option<u16>) -> bool {
    c.ports.is_empty() || port.is_some_and(|p| c.ports.iter().any(|(a, b)| *a <= p && p <= *b))
}

fn set_of(channels: &[Channel], pred: impl Fn(&Channel) -> bool) -> ChannelSet {
    let mut s = ChannelSet::EMPTY;
    for (i, c) in channels.iter().enumerate() {
        if pred(c) {
            s.insert(i);
        }
    }
    s
}

/// Splits the inclusive port range `lo..=hi` into aligned power-of-two blocks,
/// as `(first port, prefix length over 16 bits)`.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (lo as u32, hi as u32);
    let mut out = Vec::new();
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// Builds the direction/protocol/port trie: one entry per direction for
/// any-protocol channels, one per protocol some channel names, and for TCP
/// and UDP one set of port prefixes per elementary port interval. Beside
/// them, the conservative entries for packets whose ports are hidden
/// ([`L4_ANY_PORT`]: per protocol, every channel that accepts it on any
/// port) or whose protocol is ([`L4_UNKNOWN`]: every channel of the
/// direction), less those that could only let such a packet escape a
/// limit (see [`Channel::holds_hidden`]).
fn l4_table(channels: &[Channel], sets: &mut Interner) -> Vec<L4Entry> {
    let mut out = Vec::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let d = dir_byte(dir);
        let in_dir: Vec<&Channel> = channels.iter().filter(|c| c.direction == dir).collect();
        if in_dir.is_empty() {
            continue;
        }
        out.push(L4Entry {
            bits: 8,
            data: [d | L4_UNKNOWN, 0, 0, 0],
            set: sets.id(set_of(channels, |c| {
                c.direction == dir && c.holds_hidden(true)
            })),
        });
        let matches = |c: &Channel, proto: Option<u8>, port: Option<u16>| {
            c.direction == dir
                && match proto {
                    None => c.protocol.numbers().is_none() && c.ports.is_empty(),
                    Some(p) => proto_matches(c, p) && port_matches(c, port),
                }
        };
        let any = set_of(channels, |c| matches(c, None, None));
        if any != ChannelSet::EMPTY {
            // Any-protocol channels without ports name nothing more
            // specific than a hidden-port packet shows: the same set.
            for flag in [0, L4_ANY_PORT] {
                out.push(L4Entry {
                    bits: 8,
                    data: [d | flag, 0, 0, 0],
                    set: sets.id(any),
                });
            }
        }
        let mut protos: BTreeSet<u8> = BTreeSet::new();
        for c in &in_dir {
            protos.extend(c.protocol.numbers().unwrap_or(&[]));
            if !c.ports.is_empty() {
                protos.extend([6, 17].iter().filter(|p| proto_matches(c, **p)));
            }
        }
        for &p in &protos {
            let any_port = set_of(channels, |c| {
                c.direction == dir && proto_matches(c, p) && c.holds_hidden(false)
            });
            out.push(L4Entry {
                bits: 16,
                data: [d | L4_ANY_PORT, p, 0, 0],
                set: sets.id(any_port),
            });
            let set = set_of(channels, |c| matches(c, Some(p), None));
            if set != ChannelSet::EMPTY {
                out.push(L4Entry {
                    bits: 16,
                    data: [d, p, 0, 0],
                    set: sets.id(set),
                });
            }
            if p != 6 && p != 17 {
                continue;
            }
            // A sweep over the ports where some channel's ranges start or
            // end: between two such points the same channels match. Each
            // range adds its channel where it starts and takes it away
            // past its end (a channel's ranges may overlap: counted).
            let mut edges: Vec<(u32, usize, bool)> = Vec::new();
            for (i, c) in channels.iter().enumerate() {
                if c.direction == dir && proto_matches(c, p) {
                    for (a, b) in &c.ports {
                        edges.push((*a as u32, i, true));
                        edges.push((*b as u32 + 1, i, false));
                    }
                }
            }
            edges.sort_unstable();
            // Channels of any port match in every window.
            let any_port = set_of(channels, |c| {
                c.direction == dir && proto_matches(c, p) && c.ports.is_empty()
            });
            let mut open = vec![0u32; channels.len()];
            let (mut ranged, mut ranged_open) = (ChannelSet::EMPTY, 0usize);
            let mut next = 0;
            while next < edges.len() {
                let lo = edges[next].0;
                while next < edges.len() && edges[next].0 == lo {
                    let (_, i, starts) = edges[next];
                    if starts {
                        open[i] += 1;
                        if open[i] == 1 {
                            ranged.insert(i);
                            ranged_open += 1;
                        }
                    } else {
                        open[i] -= 1;
                        if open[i] == 0 {
                            ranged.remove(i);
                            ranged_open -= 1;
                        }
                    }
                    next += 1;
                }
                // No port range covers this window, or it is past the last.
                if ranged_open == 0 || next == edges.len() {
                    continue;
                }
                let (lo, hi) = (lo as u16, (edges[next].0 - 1) as u16);
                let mut set = any_port;
                for (w, r) in set.words.iter_mut().zip(ranged.words) {
                    *w |= r;
                }
                for (base, len) in port_prefixes(lo, hi) {
                    let b = base.to_be_bytes();
                    out.push(L4Entry {
                        bits: 16 + len as u32,
                        data: [d, p, b[0], b[1]],
                        set: sets.id(set),
                    });
                }
            }
        }
    }
    out
}

/// Turns a channel's limits into GCRA parameters (see [`ChannelPolicy`]).
///
/// `conn_pool` stays [`NO_POOL`]: the agent gives a pool to each channel
/// with connection limits ([`super::Limit::limits_connections`]) when it
/// applies the policy, since a pool outlives one compilation.
pub fn channel_policy(c: &Channel) -> ChannelPolicy {
    let mut p = ChannelPolicy {
        action: match c.action {
            Action::Drop => ACTION_DROP,
            Action::Delay => ACTION_DELAY,
            Action::Mark => ACTION_MARK,
        },
        horizon_ns: c.horizon_ns.unwrap_or(0),
        mode: match c.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Monitor => MODE_MONITOR,
        },
        conn_action: match c.connection_action {
            ConnAction::Drop => CONN_DROP,
            ConnAction::Reset => CONN_RESET,
        },
        conn_limit: c.limit.connections.unwrap_or(0),
        active: 1,
        conn_pool: NO_POOL,
        ..Default::default()
    };
    if let Some(bps) = c.limit.bandwidth_bps {
        let bps = bps as u128;
        p.byte_cost_q16 = ((8_000_000_000u128 << 16) / bps) as u64;
        p.byte_tau_ns = (c.limit.burst_bytes as u128 * 8_000_000_000 / bps) as u64;
    }
    if let Some(pps) = c.limit.packets {
        let pps = pps as u128;
        p.pkt_cost_q16 = ((1_000_000_000u128 << 16) / pps) as u64;
        p.pkt_tau_ns = (c.limit.packet_burst as u128 * 1_000_000_000 / pps) as u64;
    }
    if let Some(rate) = c.limit.new_connections {
        // Whole nanoseconds, rounded down (the rate is at most 1,000,000/s,
        // so the cost is at least 1,000 ns and off by under 0.1 %).
        p.conn_cost_ns = 1_000_000_000 / u64::from(rate);
        // The datapath admits a SYN while `max(tat, now) + cost - now <=
        // tau` and then sets `tat` to that sum: the k-th of SYNs arriving
        // at once from idle (`tat <= now`) needs `k * cost <= tau`. So
        // `tau = burst * cost` admits exactly `burst` at once, not one
        // more (GCRA's other form, which tests `tat - now <= tau` before
        // adding the cost, would need `(burst - 1) * cost`); and it is
        // the product of the rounded cost, so rounding cannot lose the
        // last of them. At most 1,000,000 * 1e9 ns: no overflow.
        p.conn_tau_ns = u64::from(c.limit.new_connection_burst) * p.conn_cost_ns;
    }
    p
}
