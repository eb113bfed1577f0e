//! Crafted frames for BPF_PROG_TEST_RUN. Checksums are left zero: the
//! datapath never reads them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// L4 header: TCP (20 bytes) or UDP (8 bytes) with the given destination
/// port, or an 8-byte ICMP echo header.
fn l4(proto: u8, dport: u16) -> Vec<u8> {
    match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&40000u16.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&8u16.to_be_bytes());
            h
        }
        _ => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

/// An Ethernet + IPv4 frame with a TCP/UDP/ICMP header and `payload` bytes.
pub fn ipv4(src: &str, dst: &str, proto: u8, dport: u16, payload: usize) -> Vec<u8> {
    let src: Ipv4Addr = src.parse().expect("IPv4 source");
    let dst: Ipv4Addr = dst.parse().expect("IPv4 destination");
    let l4 = l4(proto, dport);
    let total = 20 + l4.len() + payload;
    let mut f = eth(0x0800);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f.resize(f.len() + payload, 0xab);
    set_ipv4_checksum(&mut f);
    f
}

/// One's-complement sum of the IPv4 header at offset 14.
fn ipv4_sum(f: &[u8]) -> u16 {
    let ihl = (f[14] & 0x0f) as usize * 4;
    let mut sum: u32 = f[14..14 + ihl]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Rewrites the source address of an IPv4 frame from [`ipv4`], and its
/// header checksum (a UDP checksum of 0 means none; a TCP one goes stale).
pub fn set_ipv4_source(f: &mut [u8], src: Ipv4Addr) {
    f[26..30].copy_from_slice(&src.octets());
    set_ipv4_checksum(f);
}

fn set_ipv4_checksum(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let c = !ipv4_sum(f);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Whether the IPv4 header checksum of `f` is valid.
pub fn ipv4_checksum_ok(f: &[u8]) -> bool {
    ipv4_sum(f) == 0xffff
}

/// The ECN field of an IPv4 or IPv6 frame: 0 not-ECT, 1 ECT(1), 2 ECT(0), 3 CE.
pub fn ecn(f: &[u8]) -> u8 {
    if f[12..14] == [0x08, 0x00] {
        f[15] & 3
    } else {
        (f[15] >> 4) & 3
    }
}

/// Sets the ECN field of an IPv4 (fixing its checksum) or IPv6 frame.
pub fn with_ecn(mut f: Vec<u8>, ecn: u8) -> Vec<u8> {
    if f[12..14] == [0x08, 0x00] {
        f[15] = (f[15] & !3) | ecn;
        set_ipv4_checksum(&mut f);
    } else {
        f[15] = (f[15] & !0x30) | (ecn << 4);
    }
    f
}

/// A non-first IPv4 fragment (offset 1480 bytes): no L4 header to read.
pub fn ipv4_fragment(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    let mut f = ipv4(src, dst, proto, 0, 64);
    let off = (1480u16 / 8).to_be_bytes();
    f[14 + 6] = off[0];
    f[14 + 7] = off[1];
    set_ipv4_checksum(&mut f);
    f
}

/// Fragment `offset` (bytes, a multiple of 8) of IPv4 datagram `id`, more to
/// come: the first (offset 0) carries the transport header, later ones
/// 1,480 bytes of payload.
pub fn ipv4_fragment_of(
    src: &str,
    dst: &str,
    proto: u8,
    dport: u16,
    id: u16,
    offset: u16,
) -> Vec<u8> {
    let mut f = if offset == 0 {
        ipv4(src, dst, proto, dport, 1480 - 8)
    } else {
        let mut f = ipv4(src, dst, proto, dport, 0);
        f.truncate(14 + 20);
        f.resize(14 + 20 + 1480, 0xcd);
        let total = (20 + 1480) as u16;
        f[14 + 2..14 + 4].copy_from_slice(&total.to_be_bytes());
        f
    };
    f[14 + 4..14 + 6].copy_from_slice(&id.to_be_bytes());
    let flags = 0x2000 | (offset / 8);
    f[14 + 6..14 + 8].copy_from_slice(&flags.to_be_bytes());
    set_ipv4_checksum(&mut f);
    f
}

/// Fragment `offset` (bytes, a multiple of 8) of IPv6 datagram `id`, more
/// to come, with a fragment header; the first carries the transport header.
pub fn ipv6_fragment(src: &str, dst: &str, proto: u8, dport: u16, id: u32, offset: u16) -> Vec<u8> {
    let mut f = ipv6(src, dst, proto, dport, 0);
    let l4 = f.split_off(14 + 40);
    f[14 + 6] = 44; // next header: fragment
    f.push(proto);
    f.push(0);
    f.extend_from_slice(&(offset | 1).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    if offset == 0 {
        f.extend_from_slice(&l4);
        f.resize(14 + 40 + 8 + 1448, 0xab);
    } else {
        f.resize(14 + 40 + 8 + 1448, 0xcd);
    }
    let plen = (f.len() - 14 - 40) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f
}

/// IPv6 with `n` destination-options headers (8 bytes each) before the L4 header.
pub fn ipv6_ext_chain(src: &str, dst: &str, proto: u8, dport: u16, n: usize) -> Vec<u8> {
    let mut f = ipv6(src, dst, proto, dport, 0);
    let l4 = f.split_off(14 + 40);
    f[14 + 6] = 60; // next header: destination options
    for i in 0..n {
        let next = if i + 1 == n { proto } else { 60 };
        f.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]); // PadN
    }
    f.extend_from_slice(&l4);
    let plen = (f.len() - 14 - 40) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f
}

/// `frame` (IPv6) with `n` more payload bytes, its payload length fixed.
pub fn with_payload(mut f: Vec<u8>, n: usize) -> Vec<u8> {
    f.resize(f.len() + n, 0xab);
    let plen = (f.len() - 14 - 40) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f
}

/// `frame` with VLAN tags (outermost first, by their TPIDs) after the MAC addresses.
pub fn with_vlans(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// An Ethernet + IPv6 frame with a TCP/UDP/ICMPv6 header.
pub fn ipv6(src: &str, dst: &str, proto: u8, dport: u16, payload: usize) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().expect("IPv6 source");
    let dst: Ipv6Addr = dst.parse().expect("IPv6 destination");
    let l4 = l4(proto, dport);
    let mut f = eth(0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((l4.len() + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f.resize(f.len() + payload, 0xab);
    f
}

/// IPv6 with a hop-by-hop options header before the L4 header.
pub fn ipv6_hbh(src: &str, dst: &str, proto: u8, dport: u16) -> Vec<u8> {
    let mut f = ipv6(src, dst, proto, dport, 0);
    let l4 = f.split_off(14 + 40);
    f[14 + 6] = 0; // next header: hop-by-hop
    f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]); // PadN
    f.extend_from_slice(&l4);
    let plen = (f.len() - 14 - 40) as u16;
    f[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
    f
}

/// An ARP request: not IP.
pub fn arp() -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.resize(14 + 28, 0);
    f
}

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;

/// A TCP segment from `src` (`ip:port`, IPv4 or IPv6) to `dst` with the
/// given flags and sequence number, 20 bytes of options (as a Linux SYN
/// carries) and `payload` bytes.
pub fn tcp(src: &str, dst: &str, flags: u8, seq: u32, payload: usize) -> Vec<u8> {
    let src: std::net::SocketAddr = src.parse().expect("source ip:port");
    let dst: std::net::SocketAddr = dst.parse().expect("destination ip:port");
    let mut f = match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            ipv4(&s.to_string(), &d.to_string(), TCP, dst.port(), 0)
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            ipv6(&s.to_string(), &d.to_string(), TCP, dst.port(), 0)
        }
        _ => panic!("mixed families"),
    };
    let v6 = src.is_ipv6();
    let l4 = if v6 { 14 + 40 } else { 14 + 20 };
    f[l4..l4 + 2].copy_from_slice(&src.port().to_be_bytes());
    f[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    f[l4 + 12] = 10 << 4;
    f[l4 + 13] = flags;
    // MSS, SACK permitted, timestamps, NOP, window scale: 20 bytes.
    f.extend_from_slice(&[
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ]);
    f.resize(f.len() + payload, 0xab);
    let ip_payload = (f.len() - l4) as u16;
    if v6 {
        f[14 + 4..14 + 6].copy_from_slice(&ip_payload.to_be_bytes());
    } else {
        f[16..18].copy_from_slice(&(ip_payload + 20).to_be_bytes());
        set_ipv4_checksum(&mut f);
    }
    f
}

/// `f` (from [`tcp`]) with acknowledgment number `ack`.
pub fn with_ack(mut f: Vec<u8>, ack: u32) -> Vec<u8> {
    let l4 = if u16::from_be_bytes([f[12], f[13]]) == 0x86DD {
        14 + 40
    } else {
        14 + 20
    };
    f[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
    f
}

/// Whether the TCP checksum of the IPv4 or IPv6 segment in `f` is valid.
pub fn tcp_checksum_ok(f: &[u8]) -> bool {
    let v6 = u16::from_be_bytes([f[12], f[13]]) == 0x86DD;
    let (l4, mut sum) = if v6 {
        let len = u16::from_be_bytes([f[18], f[19]]) as u32;
        (14 + 40, words(&f[22..54]) + len + TCP as u32)
    } else {
        let len = u16::from_be_bytes([f[16], f[17]]) as u32 - 20;
        (14 + 20, words(&f[26..34]) + len + TCP as u32)
    };
    sum += words(&f[l4..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Sum of the big-endian 16-bit words of `b` (a last odd byte padded).
fn words(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32)
        .sum()
}
