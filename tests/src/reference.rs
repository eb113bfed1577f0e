//! A reference of the datapath's classification, written from its
//! documented rules rather than from its code, for differential fuzzing
//! (`tests/tests/fuzz.rs`): parse a raw frame, then take the first channel
//! of the policy that matches, as a plain scan.
//!
//! The rules (README "How the datapath works", `tc-ebpf/src/parse.rs`):
//! - Ethernet, then up to two VLAN tags (0x8100, 0x88a8); a tag cut short
//!   is malformed; a third tag, or any ethertype but IPv4 and IPv6, is
//!   not IP. Neither is classified; both pass.
//! - IPv4: a header cut short (fewer than 20 bytes, or than its IHL says),
//!   a version other than 4 or an IHL under 5 is malformed. A fragment with
//!   a non-zero offset is a later fragment: no ports (`L4_ANY_PORT`); offset
//!   0 with more-fragments set is a first fragment, which carries ports.
//! - IPv6: a fixed header cut short or a version other than 6 is malformed.
//!   Up to eight extension headers (hop-by-hop 0, routing 43, destination
//!   options 60, AH 51, fragment 44) are walked; a longer chain, or one cut
//!   short, leaves the protocol unknown (`L4_UNKNOWN`). A fragment header
//!   with a non-zero offset makes a later fragment; its own next header
//!   says nothing (Linux reassembles on addresses and identification), so
//!   an orphan later fragment is of unknown protocol (`L4_UNKNOWN`).
//! - TCP and UDP give their destination port; a TCP (20 bytes) or UDP
//!   (8 bytes) header cut short hides it (`L4_ANY_PORT`). Other protocols
//!   have no port.
//! - A packet whose ports are hidden belongs to the first channel that
//!   accepts its protocol on some port; one whose protocol is unknown to
//!   the first channel its addresses and direction allow.
//! - A later fragment whose first fragment was seen (same family,
//!   direction, addresses, identification, and for IPv4 protocol) follows
//!   it: same channel, and dropped if it was dropped. One whose first was
//!   not seen (an orphan) is classified on its own, without ports.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use tc_agent::policy::{Channel, Direction, Policy};
use tc_common::{L4_ANY_PORT, L4_UNKNOWN};

/// Whether a packet is part of a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// A whole datagram.
    None,
    /// Offset 0, more to come: carries the transport header.
    First,
    /// Offset past 0: no transport header.
    Later,
}

/// The classification-relevant facts of an IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source address: matched against `from`.
    pub src: IpAddr,
    /// Destination address: matched against `to`.
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 upper-layer next header (meaningless when
    /// `hidden` is `L4_UNKNOWN`).
    pub proto: u8,
    /// Destination port of a TCP or UDP packet whose header was read.
    pub port: Option<u16>,
    /// 0, `L4_ANY_PORT` (ports hidden) or `L4_UNKNOWN` (protocol hidden).
    pub hidden: u8,
    /// Fragment kind: later fragments follow their first.
    pub frag: Frag,
    /// The datagram's identity in the fragment table, for fragments.
    pub datagram: Option<Datagram>,
}

/// What a frame is, before any policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6: passed, counted as non-IP.
    NonIp,
    /// Truncated or inconsistent headers: passed, counted as malformed.
    Malformed,
    /// An IP packet to classify.
    Ip(Packet),
}

/// One fragmented datagram as one hook direction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Datagram {
    /// The packet's addresses (their family keeps v4 and v6 identifications apart).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4: the protocol field; IPv6: 0 (Linux reassembles IPv6 on
    /// addresses and identification alone).
    pub proto: u8,
    /// IPv4 (16 bits) or IPv6 (32 bits) identification.
    pub id: u32,
}

const ETH_HLEN: usize = 14;
/// Extension headers walked before the protocol counts as unknown.
pub const IPV6_MAX_EXT: usize = 8;
/// Largest extension-header offset from the frame start the walk follows.
const MAX_L3_OFFSET: usize = 0x3fff;

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

fn is_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

/// Port and hidden flag of the transport header of `proto` at `l4`; a
/// TCP header needs `tcp` bytes.
fn transport(f: &[u8], l4: usize, proto: u8, tcp: usize) -> (Option<u16>, u8) {
    let need = match proto {
        6 => tcp,
        17 => 8,
        _ => return (None, 0),
    };
    if f.len() >= l4 + need {
        (be16(f, l4 + 2), 0)
    } else {
        (None, L4_ANY_PORT)
    }
}

/// Parses a frame by the documented rules.
pub fn parse(f: &[u8]) -> Parsed {
    let Some(mut ethertype) = be16(f, 12) else {
        return Parsed::Malformed;
    };
    let mut l3 = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let Some(inner) = be16(f, l3 + 2) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        l3 += 4;
    }
    match ethertype {
        0x0800 => parse_v4(f, l3),
        0x86dd => parse_v6(f, l3),
        _ => Parsed::NonIp,
    }
}

fn parse_v4(f: &[u8], l3: usize) -> Parsed {
    if f.len() < l3 + 20 {
        return Parsed::Malformed;
    }
    let h = &f[l3..];
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    if f.len() < l3 + ihl {
        return Parsed::Malformed;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
    let proto = h[9];
    let flags = u16::from_be_bytes([h[6], h[7]]);
    let frag = if flags & 0x1fff != 0 {
        Frag::Later
    } else if flags & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    let (port, hidden) = if frag == Frag::Later {
        (None, L4_ANY_PORT)
    } else {
        transport(f, l3 + ihl, proto, 20)
    };
    let datagram = (frag != Frag::None).then(|| Datagram {
        src,
        dst,
        proto,
        id: u16::from_be_bytes([h[4], h[5]]) as u32,
    });
    Parsed::Ip(Packet {
        src,
        dst,
        proto,
        port,
        hidden,
        frag,
        datagram,
    })
}

fn parse_v6(f: &[u8], l3: usize) -> Parsed {
    if f.len() < l3 + 40 {
        return Parsed::Malformed;
    }
    let h = &f[l3..];
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&h[8..24]);
    let src = IpAddr::V6(Ipv6Addr::from(a));
    a.copy_from_slice(&h[24..40]);
    let dst = IpAddr::V6(Ipv6Addr::from(a));
    let mut p = Packet {
        src,
        dst,
        proto: h[6],
        port: None,
        hidden: L4_UNKNOWN,
        frag: Frag::None,
        datagram: None,
    };
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut walked = 0;
    loop {
        if !is_extension(next) {
            let (port, hidden) = transport(f, off, next, 20);
            p.proto = next;
            p.port = port;
            p.hidden = hidden;
            return Parsed::Ip(p);
        }
        if walked == IPV6_MAX_EXT || f.len() < off + 8 {
            // Past the walk, or cut short: the protocol stays unknown.
            return Parsed::Ip(p);
        }
        walked += 1;
        let e = &f[off..off + 8];
        let len = match next {
            51 => (e[1] as usize + 2) * 4,
            44 => {
                let datagram = Datagram {
                    src,
                    dst,
                    proto: 0,
                    id: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                };
                let offset = u16::from_be_bytes([e[2], e[3]]) & 0xfff8;
                if offset != 0 {
                    p.frag = Frag::Later;
                    p.datagram = Some(datagram);
                    p.proto = 0;
                    p.hidden = L4_UNKNOWN;
                    return Parsed::Ip(p);
                }
                if e[3] & 1 != 0 {
                    p.frag = Frag::First;
                    p.datagram = Some(datagram);
                }
                8
            }
            _ => (e[1] as usize + 1) * 8,
        };
        next = e[0];
        off += len;
        if off > MAX_L3_OFFSET {
            return Parsed::Ip(p);
        }
    }
}

/// Whether channel `c` accepts protocol `proto` on some port.
fn proto_ok(c: &Channel, proto: u8) -> bool {
    match c.protocol.numbers() {
        None => c.ports.is_empty() || proto == 6 || proto == 17,
        Some(ps) => ps.contains(&proto),
    }
}

/// The first channel of `policy` that matches `p` seen in direction `dir`
/// (the same semantics as the policy tests' first-match reference).
pub fn first_match(policy: &Policy, p: &Packet, dir: Direction) -> Option<usize> {
    policy.channels.iter().position(|c| {
        c.direction == dir
            && c.from.iter().any(|n| n.contains(&p.src))
            && c.to.iter().any(|n| n.contains(&p.dst))
            && match p.hidden {
                L4_UNKNOWN => c.holds_hidden(true),
                L4_ANY_PORT => proto_ok(c, p.proto) && c.holds_hidden(false),
                _ => {
                    proto_ok(c, p.proto)
                        && (c.ports.is_empty()
                            || p.port
                                .is_some_and(|x| c.ports.iter().any(|(a, b)| *a <= x && x <= *b)))
                }
            }
    })
}

/// Where a frame ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Not IP (counted `non_ip_pkts`).
    NonIp,
    /// Malformed (counted `malformed_pkts`).
    Malformed,
    /// IP, in no channel (counted `unclassified_pkts`).
    Unclassified,
    /// In this channel (its `matched_pkts`).
    Channel(usize),
}

/// What the reference expects of one frame.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The frame as parsed.
    pub parsed: Parsed,
    /// Where it goes.
    pub class: Class,
    /// A later fragment following its first: whether that first was dropped.
    pub follows: Option<bool>,
    /// A later fragment whose first was not seen (`fragment_orphan_pkts`).
    pub orphan: bool,
    /// Ports or protocol hidden, not a later fragment (`no_ports_pkts`).
    pub no_ports: bool,
}

/// The reference classifier: the policy plus the fragment table's state.
pub struct Reference {
    /// The policy the datapath was given.
    pub policy: Policy,
    /// Each first fragment seen, per direction: its channel and whether it
    /// was dropped. Later fragments look themselves up here.
    frags: HashMap<(Direction, Datagram), (Option<usize>, bool)>,
}

impl Reference {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            frags: HashMap::new(),
        }
    }

    /// What the datapath should do with `frame` seen in direction `dir`.
    pub fn expect(&self, frame: &[u8], dir: Direction) -> Expect {
        let parsed = parse(frame);
        let mut e = Expect {
            parsed: parsed.clone(),
            class: Class::NonIp,
            follows: None,
            orphan: false,
            no_ports: false,
        };
        let p = match parsed {
            Parsed::NonIp => return e,
            Parsed::Malformed => {
                e.class = Class::Malformed;
                return e;
            }
            Parsed::Ip(p) => p,
        };
        e.no_ports = p.hidden != 0 && p.frag != Frag::Later;
        let first = match (p.frag, p.datagram) {
            (Frag::Later, Some(d)) => self.frags.get(&(dir, d)).copied(),
            _ => None,
        };
        e.orphan = p.frag == Frag::Later && first.is_none();
        let channel = match first {
            Some((channel, dropped)) => {
                e.follows = Some(dropped);
                channel
            }
            None => first_match(&self.policy, &p, dir),
        };
        e.class = channel.map_or(Class::Unclassified, Class::Channel);
        e
    }

    /// Records the fate of a frame the datapath handled as `e` said: a
    /// first fragment's channel and verdict, for its later fragments.
    pub fn record(&mut self, e: &Expect, dir: Direction, dropped: bool) {
        if let Parsed::Ip(p) = &e.parsed {
            if let (Frag::First, Some(d)) = (p.frag, p.datagram) {
                let channel = match e.class {
                    Class::Channel(c) => Some(c),
                    _ => None,
                };
                self.frags.insert((dir, d), (channel, dropped));
            }
        }
    }

    /// First fragments remembered (the datapath's table holds at most
    /// `MAX_FRAGS`, least recently used out first).
    pub fn frags(&self) -> usize {
        self.frags.len()
    }

    /// Forgets every first fragment, as when the datapath's table is emptied.
    pub fn clear_frags(&mut self) {
        self.frags.clear();
    }
}
