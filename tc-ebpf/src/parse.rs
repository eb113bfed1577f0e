//! Bounds-checked header parsing. Every read goes through [`ptr_at`], so a
//! truncated packet ends as [`Skip::Malformed`], never as an out-of-bounds read.

use core::mem::size_of;

use tc_common::{L4_PORT_BITS, L4_PROTO_BITS};

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
/// Extension headers walked before giving up and classifying without ports.
const IPV6_MAX_EXT: usize = 4;

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
    /// Bytes of headers before the L4 payload (0 when unknown): a GSO
    /// super-packet carries them once, each of its segments on the wire.
    pub hdr_len: u32,
    /// A non-first fragment: it carries no L4 header.
    pub fragment: bool,
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

/// Parses Ethernet (with at most one VLAN tag), IPv4/IPv6 and the TCP/UDP
/// destination port of the frame between `start` and `end`.
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Result<Parsed, Skip> {
    if start + ETH_HLEN > end {
        return Err(Skip::Malformed);
    }
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16_at(start, end, 12)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(start, end, 16)?;
        l3 += 4;
    }
    match ethertype {
        ETH_P_IP => parse_v4(start, end, l3),
        ETH_P_IPV6 => parse_v6(start, end, l3),
        _ => Err(Skip::NonIp),
    }
}

#[inline(always)]
fn parse_v4(start: usize, end: usize, l3: usize) -> Result<Parsed, Skip> {
    // SAFETY: ptr_at checked the 20-byte fixed header lies inside the packet.
    let hdr = unsafe { *ptr_at::<[u8; 20]>(start, end, l3)? };
    let version = hdr[0] >> 4;
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    if version != 4 || ihl < 20 {
        return Err(Skip::Malformed);
    }
    let ecn = hdr[1] & 3;
    let frag_off = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let proto = hdr[9];
    let addrs = Addrs::V4 {
        src: [hdr[12], hdr[13], hdr[14], hdr[15]],
        dst: [hdr[16], hdr[17], hdr[18], hdr[19]],
    };
    if frag_off != 0 {
        return Ok(Parsed {
            addrs,
            l3: l3 as u32,
            ecn,
            proto,
            l4_bits: L4_PROTO_BITS,
            dport: 0,
            hdr_len: 0,
            fragment: true,
        });
    }
    let (l4_bits, dport, hdr_len) = l4_dport(start, end, l3 + ihl, proto)?;
    Ok(Parsed {
        addrs,
        l3: l3 as u32,
        ecn,
        proto,
        l4_bits,
        dport,
        hdr_len,
        fragment: false,
    })
}

#[inline(always)]
fn parse_v6(start: usize, end: usize, l3: usize) -> Result<Parsed, Skip> {
    // SAFETY: ptr_at checked the 40-byte fixed header lies inside the packet.
    let hdr = unsafe { &*ptr_at::<[u8; 40]>(start, end, l3)? };
    if hdr[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let ecn = (hdr[1] >> 4) & 3;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    dst.copy_from_slice(&hdr[24..40]);
    let addrs = Addrs::V6 { src, dst };

    let mut next = hdr[6];
    let mut off = l3 + 40;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let [nh, len] = bytes_at::<2>(start, end, off)?;
                next = nh;
                off += (len as usize + 1) * 8;
            }
            IPV6_AH => {
                let [nh, len] = bytes_at::<2>(start, end, off)?;
                next = nh;
                off += (len as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h = bytes_at::<4>(start, end, off)?;
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok(Parsed {
                        addrs,
                        l3: l3 as u32,
                        ecn,
                        proto: next,
                        l4_bits: L4_PROTO_BITS,
                        dport: 0,
                        hdr_len: 0,
                        fragment: true,
                    });
                }
            }
            _ => break,
        }
    }
    // A chain deeper than we walk: classify on addresses and the last
    // header seen, without ports.
    let (l4_bits, dport, hdr_len) = match next {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => {
            (L4_PROTO_BITS, 0, 0)
        }
        _ => l4_dport(start, end, off, next)?,
    };
    Ok(Parsed {
        addrs,
        l3: l3 as u32,
        ecn,
        proto: next,
        l4_bits,
        dport,
        hdr_len,
        fragment: false,
    })
}

/// Destination port of a TCP or UDP header at `l4`; the whole fixed header
/// must be present, or the packet is malformed.
#[inline(always)]
/// Also returns where the L4 payload starts (0 when unknown), so GSO
/// packets can be charged for the headers each segment carries on the wire.
fn l4_dport(start: usize, end: usize, l4: usize, proto: u8) -> Result<(u32, u16, u32), Skip> {
    match proto {
        IPPROTO_TCP => {
            let h = bytes_at::<20>(start, end, l4)?;
            let doff = (h[12] >> 4) as usize * 4;
            Ok((
                L4_PORT_BITS,
                u16::from_be_bytes([h[2], h[3]]),
                (l4 + doff) as u32,
            ))
        }
        IPPROTO_UDP => {
            let h = bytes_at::<8>(start, end, l4)?;
            Ok((
                L4_PORT_BITS,
                u16::from_be_bytes([h[2], h[3]]),
                (l4 + 8) as u32,
            ))
        }
        _ => Ok((L4_PROTO_BITS, 0, 0)),
    }
}
