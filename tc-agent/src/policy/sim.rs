//! Test-only simulators shared by the policy tests and the policy fuzzer:
//! the first-match semantics a policy means ([`reference`]) and the
//! compiled tables looked up the way the datapath does ([`through_tables`]).
//! Every check that the compiler is right compares these two.

use std::net::IpAddr;

use tc_common::{ChannelSet, L4_ANY_PORT, L4_UNKNOWN};

use super::{
    compile::{AddrEntry, Compiled},
    Channel, Direction, Policy,
};

/// A packet as the classifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Pkt {
    /// Source address: the source trie's key.
    pub src: IpAddr,
    /// Destination address, same family as `src`.
    pub dst: IpAddr,
    /// IP protocol (IPv6: the upper-layer next header).
    pub proto: u8,
    /// Destination port, for TCP and UDP packets whose ports were read.
    pub port: Option<u16>,
    /// Which hook sees it: selects the channels of that direction.
    pub dir: Direction,
    /// What the datapath could not read: 0, `L4_ANY_PORT` (a fragment, a
    /// cut transport header) or `L4_UNKNOWN` (an over-long IPv6 chain).
    pub hidden: u8,
}

/// Whether channel `c` accepts protocol `proto` on some port.
fn proto_ok(c: &Channel, proto: u8) -> bool {
    match c.protocol.numbers() {
        None => c.ports.is_empty() || proto == 6 || proto == 17,
        Some(ps) => ps.contains(&proto),
    }
}

/// First match by scanning channels: the semantics the tables must implement.
/// A packet whose ports are hidden may belong to any channel of its
/// protocol, one whose protocol is hidden to any channel: it is held by the
/// first that could hold it, so hiding never escapes a port-specific limit.
pub fn reference(policy: &Policy, p: &Pkt) -> Option<usize> {
    policy.channels.iter().position(|c| {
        c.direction == p.dir
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

/// Longest-prefix match over one address table, as the kernel's LPM trie.
pub fn lpm<const N: usize>(c: &Compiled, t: &[AddrEntry<N>], addr: [u8; N]) -> Option<ChannelSet> {
    let a = u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[16 - N..].copy_from_slice(&addr);
        b
    });
    t.iter()
        .filter(|e| {
            let e_addr = u128::from_be_bytes({
                let mut b = [0u8; 16];
                b[16 - N..].copy_from_slice(&e.addr);
                b
            });
            let shift = (N * 8) as u32 - e.len as u32;
            e.len == 0 || (a >> shift) == (e_addr >> shift)
        })
        .max_by_key(|e| e.len)
        .map(|e| *c.set(e.set))
}

/// First match through the compiled tables, the way the datapath does it.
pub fn through_tables(c: &Compiled, p: &Pkt) -> Option<usize> {
    let (s, d) = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (
            lpm(c, &c.src_v4, s.octets())?,
            lpm(c, &c.dst_v4, d.octets())?,
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => (
            lpm(c, &c.src_v6, s.octets())?,
            lpm(c, &c.dst_v6, d.octets())?,
        ),
        _ => unreachable!("a packet has one family"),
    };
    let dir = if p.dir == Direction::Ingress { 0u8 } else { 1 } | p.hidden;
    let (maxbits, port) = match (p.hidden, p.port) {
        (L4_UNKNOWN, _) => (8, 0),
        (_, Some(x)) => (32, x),
        (_, None) => (16, 0),
    };
    let key = u32::from_be_bytes([dir, p.proto, (port >> 8) as u8, port as u8]);
    let l4 =
        c.l4.iter()
            .filter(|e| {
                e.bits <= maxbits && {
                    let k = u32::from_be_bytes(e.data);
                    let shift = 32 - e.bits;
                    (key >> shift) == (k >> shift)
                }
            })
            .max_by_key(|e| e.bits)?
            .set;
    let l4 = *c.set(l4);
    (0..c.words as usize * 64).find(|&i| s.contains(i) && d.contains(i) && l4.contains(i))
}
