//! Bounds-checked header parsing. Every read goes through [`ptr_at`], so a
//! truncated packet ends as [`Skip::Malformed`], never as an out-of-bounds read.

use core::{
    mem::size_of,
    ptr::{read_volatile, write_volatile},
};

use tc_common::{L4_ANY_PORT, L4_DIR_BITS, L4_PORT_BITS, L4_PROTO_BITS, L4_UNKNOWN};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up; a packet whose transport
/// header lies further is classified conservatively ([`L4_UNKNOWN`]).
const IPV6_MAX_EXT: usize = 8;
/// Largest header offset the IPv6 walk follows.
const MAX_L3_OFFSET: usize = 0x3fff;
/// VLAN tags skipped: an 802.1ad outer tag and an 802.1Q inner one.
const VLAN_MAX_TAGS: usize = 2;

/// Why a frame is not classified.
pub enum Skip {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    /// Truncated or inconsistent headers.
    Malformed,
}

/// Network-layer addresses of a packet.
pub enum Addrs {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What the classifier needs from a packet.
pub struct Parsed {
    pub addrs: Addrs,
    /// Offset of the IP header from the start of the frame.
    pub l3: u32,
    /// The ECN field: 0 not-ECT, 1 ECT(1), 2 ECT(0), 3 CE.
    pub ecn: u8,
    /// IP protocol (IPv4) or the upper-layer next header (IPv6).
    pub proto: u8,
    /// L4 prefix bits to look up: `L4_PORT_BITS` with a port, `L4_PROTO_BITS`
    /// for port-less protocols and non-first fragments. (A plain integer,
    /// not an `Option`: LLVM fills the payload of a `None` with whatever
    /// register is handy, a packet pointer included, and the verifier then
    /// rejects the program for arithmetic on it.)
    pub l4_bits: u32,
    /// Destination port, 0 when there is none.
    pub dport: u16,
    /// Source port, 0 when there is none.
    pub sport: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 when
    /// not TCP or the header was not read.
    pub tcp_flags: u8,
    /// TCP sequence number (host order): a reset answering a SYN acks it.
    pub seq: u32,
    /// TCP acknowledgment number (host order).
    pub ack: u32,
    /// Bytes of headers before the L4 payload (0 when unknown): a GSO
    /// super-packet carries them once, each of its segments on the wire.
    pub hdr_len: u32,
    /// OR'ed into the direction byte of the L4 lookup: 0 for a packet whose
    /// ports were read, [`L4_ANY_PORT`] for one of a known protocol without
    /// readable ports (a fragment, a truncated transport header),
    /// [`L4_UNKNOWN`] when not even the protocol is known (an IPv6 chain
    /// longer than the walk). Both look up tables that hold every channel
    /// the packet could belong to, so no packet escapes a port-specific
    /// channel by hiding its ports.
    pub l4_flags: u8,
    /// `FRAG_*`: whether this is part of a fragmented datagram.
    pub frag: u8,
    /// Fragment identification (IPv4: 16 bits, IPv6: 32), when `frag != FRAG_NONE`.
    pub frag_id: u32,
}

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment (offset 0, more to come): it carries the ports.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no transport header; it follows its first fragment.
pub const FRAG_LATER: u8 = 2;

/// Transport facts of a packet: see the fields of [`Parsed`] of the same names.
struct L4 {
    l4_bits: u32,
    dport: u16,
    sport: u16,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    hdr_len: u32,
    l4_flags: u8,
}

impl L4 {
    /// A known protocol whose ports cannot be read.
    const NO_PORTS: Self = Self {
        l4_bits: L4_PROTO_BITS,
        dport: 0,
        sport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        hdr_len: 0,
        l4_flags: L4_ANY_PORT,
    };
    /// A protocol without ports.
    const PORTLESS: Self = Self {
        l4_bits: L4_PROTO_BITS,
        dport: 0,
        sport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        hdr_len: 0,
        l4_flags: 0,
    };
    /// A TCP header.
    #[inline(always)]
    fn tcp(h: &[u8; 20], l4: usize) -> Self {
        Self {
            l4_bits: L4_PORT_BITS,
            dport: u16::from_be_bytes([h[2], h[3]]),
            sport: u16::from_be_bytes([h[0], h[1]]),
            tcp_flags: h[13],
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            hdr_len: (l4 + (h[12] >> 4) as usize * 4) as u32,
            l4_flags: 0,
        }
    }
    /// A UDP header.
    #[inline(always)]
    fn udp(h: &[u8; 8], l4: usize) -> Self {
        Self {
            l4_bits: L4_PORT_BITS,
            dport: u16::from_be_bytes([h[2], h[3]]),
            sport: u16::from_be_bytes([h[0], h[1]]),
            tcp_flags: 0,
            seq: 0,
            ack: 0,
            hdr_len: (l4 + 8) as u32,
            l4_flags: 0,
        }
    }
}

/// Returns a pointer to a `T` at `offset` if it lies wholly inside the packet.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, Skip> {
    if start + offset + size_of::<T>() > end {
        return Err(Skip::Malformed);
    }
    Ok((start + offset) as *const T)
}

/// Copies `N` bytes at `offset`. Read every field of a header through one
/// call: two checks of which one implies the other get merged by LLVM, and
/// the verifier then sees an access through a pointer it never checked.
#[inline(always)]
fn bytes_at<const N: usize>(start: usize, end: usize, offset: usize) -> Result<[u8; N], Skip> {
    // SAFETY: ptr_at checked that all N bytes lie inside the packet.
    Ok(unsafe { *ptr_at::<[u8; N]>(start, end, offset)? })
}

#[inline(always)]
fn be16_at(start: usize, end: usize, offset: usize) -> Result<u16, Skip> {
    Ok(u16::from_be_bytes(bytes_at::<2>(start, end, offset)?))
}

/// Parses Ethernet (with up to two VLAN tags), IPv4/IPv6 and the TCP/UDP
/// destination port of the frame between `start` and `end`.
#[inline(always)]
pub fn parse(start: usize, end: usize, ld: &impl Load, walk: *mut Walk) -> Result<Parsed, Skip> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16_at(start, end, 12)?;
    for _ in 0..VLAN_MAX_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = be16_at(start, end, l3 + 2)?;
        l3 += 4;
    }
    match ethertype {
        ETH_P_IP => parse_v4(start, end, l3),
        ETH_P_IPV6 => parse_v6(start, end, l3, ld, walk),
        // Still a VLAN tag after two: a stack deeper than any real network
        // uses. Not IP as far as we can tell; passed and counted.
        _ => Err(Skip::NonIp),
    }
}

#[inline(always)]
fn parse_v4(start: usize, end: usize, l3: usize) -> Result<Parsed, Skip> {
    let hdr = bytes_at::<20>(start, end, l3)?;
    let version = hdr[0] >> 4;
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    // The whole header, options included, must be there: a shorter one is
    // malformed, as the kernel's IP layer also finds.
    if version != 4 || ihl < 20 || start + l3 + ihl > end {
        return Err(Skip::Malformed);
    }
    let ecn = hdr[1] & 3;
    let flags_off = u16::from_be_bytes([hdr[6], hdr[7]]);
    let more_fragments = flags_off & 0x2000 != 0;
    let offset = flags_off & 0x1fff;
    let proto = hdr[9];
    let addrs = Addrs::V4 {
        src: [hdr[12], hdr[13], hdr[14], hdr[15]],
        dst: [hdr[16], hdr[17], hdr[18], hdr[19]],
    };
    let frag = if offset != 0 {
        FRAG_LATER
    } else if more_fragments {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    let l4 = if frag == FRAG_LATER {
        L4::NO_PORTS
    } else {
        l4_ports(start, end, l3 + ihl, proto)
    };
    Ok(Parsed {
        addrs,
        l3: l3 as u32,
        ecn,
        proto,
        l4_bits: l4.l4_bits,
        dport: l4.dport,
        sport: l4.sport,
        tcp_flags: l4.tcp_flags,
        seq: l4.seq,
        ack: l4.ack,
        hdr_len: l4.hdr_len,
        l4_flags: l4.l4_flags,
        frag,
        frag_id: u16::from_be_bytes([hdr[4], hdr[5]]) as u32,
    })
}

#[inline(always)]
fn parse_v6(
    start: usize,
    end: usize,
    l3: usize,
    ld: &impl Load,
    walk: *mut Walk,
) -> Result<Parsed, Skip> {
    let hdr = bytes_at::<40>(start, end, l3)?;
    if hdr[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let ecn = (hdr[1] >> 4) & 3;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let mut p = Parsed {
        addrs: Addrs::V6 { src, dst },
        l3: l3 as u32,
        ecn,
        proto: hdr[6],
        l4_bits: L4_DIR_BITS,
        dport: 0,
        sport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        hdr_len: 0,
        l4_flags: L4_UNKNOWN,
        frag: FRAG_NONE,
        frag_id: 0,
    };

    let next = hdr[6];
    if !is_extension(next) {
        // The common case: the transport header right after the fixed one.
        let l4 = l4_ports(start, end, l3 + 40, next);
        p.proto = next;
        p.l4_bits = l4.l4_bits;
        p.dport = l4.dport;
        p.sport = l4.sport;
        p.tcp_flags = l4.tcp_flags;
        p.seq = l4.seq;
        p.ack = l4.ack;
        p.hdr_len = l4.hdr_len;
        p.l4_flags = l4.l4_flags;
        return Ok(p);
    }
    // Extension headers are read through the load helper rather than direct
    // packet access, and the walk keeps what it carries from one header to
    // the next (offset, next header, fragment facts) in a map value
    // (`walk`), which the verifier cannot see into. Each step then starts
    // from the same abstract state whatever kinds of header came before, so
    // the verifier checks eight steps, not every combination of header
    // kinds (which exhausts its budget of a million instructions, on 6.1
    // long before eight headers). It also reads headers outside the linear
    // area.
    // SAFETY (every access to `walk` below): the caller passes a pointer
    // into a per-CPU map value that only this program run uses; volatile,
    // so LLVM keeps each value in the map rather than in a register.
    unsafe {
        write_volatile(&raw mut (*walk).off, (l3 + 40) as u32);
        write_volatile(&raw mut (*walk).next, next);
        write_volatile(&raw mut (*walk).frag, FRAG_NONE);
        write_volatile(&raw mut (*walk).frag_id, 0);
    }
    let finish = move |p: &mut Parsed| unsafe {
        p.frag = read_volatile(&raw const (*walk).frag);
        p.frag_id = read_volatile(&raw const (*walk).frag_id);
    };
    let mut i = 0;
    // At most IPV6_MAX_EXT headers and the transport header after them: a
    // bounded loop, which the verifier accepts since Linux 5.3.
    while i <= IPV6_MAX_EXT {
        i += 1;
        let (next, off) = unsafe {
            (
                read_volatile(&raw const (*walk).next),
                read_volatile(&raw const (*walk).off) as usize,
            )
        };
        if off > MAX_L3_OFFSET {
            break;
        }
        if !is_extension(next) {
            let l4 = l4_ports_loaded(ld, off, next);
            p.proto = next;
            p.l4_bits = l4.l4_bits;
            p.dport = l4.dport;
            p.sport = l4.sport;
            p.tcp_flags = l4.tcp_flags;
            p.seq = l4.seq;
            p.ack = l4.ack;
            p.hdr_len = l4.hdr_len;
            p.l4_flags = l4.l4_flags;
            finish(&mut p);
            return Ok(p);
        }
        if i > IPV6_MAX_EXT {
            // A chain longer than the walk: the protocol stays unknown.
            break;
        }
        let Some(h) = ld.load::<8>(off) else {
            // The chain runs past the packet: the protocol stays unknown.
            break;
        };
        let len = match next {
            IPV6_AH => (h[1] as usize + 2) * 4,
            IPV6_FRAGMENT => {
                unsafe {
                    write_volatile(
                        &raw mut (*walk).frag_id,
                        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    )
                };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    // A later fragment: its transport header is in the
                    // first. Its own next-header says nothing (Linux
                    // reassembles on addresses and id alone, and a sender
                    // may put anything there), so an orphan is held as a
                    // packet of unknown protocol.
                    finish(&mut p);
                    p.frag = FRAG_LATER;
                    p.proto = 0;
                    p.l4_bits = L4_DIR_BITS;
                    p.l4_flags = L4_UNKNOWN;
                    return Ok(p);
                }
                if h[3] & 1 != 0 {
                    unsafe { write_volatile(&raw mut (*walk).frag, FRAG_FIRST) };
                }
                8
            }
            _ => (h[1] as usize + 1) * 8,
        };
        unsafe {
            write_volatile(&raw mut (*walk).next, h[0]);
            write_volatile(&raw mut (*walk).off, (off + len) as u32);
        }
    }
    finish(&mut p);
    Ok(p)
}

/// What the IPv6 extension-header walk carries from one header to the
/// next, kept in a per-CPU map value (see [`parse`]).
#[repr(C)]
pub struct Walk {
    /// Offset of the next header to read.
    pub off: u32,
    /// Fragment identification, once a fragment header was seen.
    pub frag_id: u32,
    /// Type of the next header.
    pub next: u8,
    /// `FRAG_FIRST` once a first-fragment header was seen.
    pub frag: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Whether an IPv6 next-header value is an extension header we walk.
#[inline(always)]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT
    )
}

/// Reads packet bytes through a helper (`bpf_skb_load_bytes`,
/// `bpf_xdp_load_bytes`) instead of direct access.
pub trait Load {
    /// `N` bytes at `offset` from the start of the frame, if all are there.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

/// [`l4_ports`] for a transport header found behind extension headers.
#[inline(always)]
fn l4_ports_loaded(ld: &impl Load, l4: usize, proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => match ld.load::<20>(l4) {
            Some(h) => L4::tcp(&h, l4),
            None => L4::NO_PORTS,
        },
        IPPROTO_UDP => match ld.load::<8>(l4) {
            Some(h) => L4::udp(&h, l4),
            None => L4::NO_PORTS,
        },
        _ => L4::PORTLESS,
    }
}

/// Destination port of a TCP or UDP header at `l4`, and where its payload
/// starts, so GSO packets can be charged for the headers each segment
/// carries on the wire. A TCP or UDP header cut short is classified like a
/// fragment ([`L4::NO_PORTS`]): it may belong to any channel of its protocol.
#[inline(always)]
fn l4_ports(start: usize, end: usize, l4: usize, proto: u8) -> L4 {
    match proto {
        IPPROTO_TCP => match bytes_at::<20>(start, end, l4) {
            Ok(h) => L4::tcp(&h, l4),
            Err(_) => L4::NO_PORTS,
        },
        IPPROTO_UDP => match bytes_at::<8>(start, end, l4) {
            Ok(h) => L4::udp(&h, l4),
            Err(_) => L4::NO_PORTS,
        },
        _ => L4::PORTLESS,
    }
}
