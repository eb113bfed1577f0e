//! `connection_action: reset`: a refused SYN is turned, in place, into the
//! TCP RST that answers it and sent back to the client, so the client's
//! connect fails at once (ECONNREFUSED) instead of waiting for SYN
//! retransmissions. The kernel-level equivalent of a 503.
//!
//! The RST is rebuilt from scratch after the link-layer header (IP options
//! and IPv6 extension headers of the SYN are left out): addresses and ports
//! swapped, `seq` 0, `ack` = the SYN's sequence number + 1 (RFC 9293: the
//! answer to a segment without ACK), flags RST|ACK, full checksums.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_INGRESS, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    programs::{TcContext, XdpContext},
};

use crate::{
    maps::TC_SCRATCH,
    parse::{Addrs, Load, Parsed},
};

const IPPROTO_TCP: u8 = 6;
/// TCP RST|ACK.
const RST_ACK: u8 = 0x14;

/// Adds big-endian 16-bit words of `b` to a one's-complement sum.
#[inline(always)]
fn sum<const N: usize>(mut acc: u32, b: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        acc += u16::from_be_bytes([b[i], b[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// Folds a one's-complement sum and complements it.
#[inline(always)]
fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Writes the TCP header of the RST at `t[0..20]`, checksummed with
/// `pseudo` (the sum of the pseudo-header's addresses).
#[inline(always)]
fn tcp_rst(p: &Parsed, pseudo: u32, t: &mut [u8; 20]) {
    let ack = p.seq.wrapping_add(1).to_be_bytes();
    let (sp, dp) = (p.dport.to_be_bytes(), p.sport.to_be_bytes());
    *t = [
        sp[0], sp[1], dp[0], dp[1], 0, 0, 0, 0, ack[0], ack[1], ack[2], ack[3], 5 << 4, RST_ACK,
        0, 0, 0, 0, 0, 0,
    ];
    let c = fold(sum(pseudo + IPPROTO_TCP as u32 + 20, t)).to_be_bytes();
    t[16] = c[0];
    t[17] = c[1];
}

/// Writes the IPv4 header + TCP RST answering `p` into `h[0..40]`.
#[inline(always)]
fn rst4(src: &[u8; 4], dst: &[u8; 4], p: &Parsed, h: &mut [u8; 60]) {
    let (ip, tcp) = h.split_at_mut(20);
    let ip: &mut [u8; 20] = ip.try_into().unwrap_or_else(|_| unreachable());
    // Version 4, IHL 5, length 40, DF, TTL 64, TCP; from the SYN's
    // destination back to its source.
    *ip = [
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0, dst[0], dst[1], dst[2], dst[3],
        src[0], src[1], src[2], src[3],
    ];
    let c = fold(sum(0, ip)).to_be_bytes();
    ip[10] = c[0];
    ip[11] = c[1];
    let pseudo = sum(sum(0, src), dst);
    tcp_rst(p, pseudo, (&mut tcp[..20]).try_into().unwrap_or_else(|_| unreachable()));
}

/// Writes the IPv6 header + TCP RST answering `p` into `h`.
#[inline(always)]
fn rst6(src: &[u8; 16], dst: &[u8; 16], p: &Parsed, h: &mut [u8; 60]) {
    // Version 6, payload 20 bytes, next header TCP, hop limit 64.
    h[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64]);
    h[8..24].copy_from_slice(dst);
    h[24..40].copy_from_slice(src);
    let pseudo = sum(sum(0, src), dst);
    tcp_rst(p, pseudo, (&mut h[40..60]).try_into().unwrap_or_else(|_| unreachable()));
}

/// Slices of fixed-size arrays of the right length: never reached.
#[inline(always)]
fn unreachable() -> ! {
    loop {}
}

/// The scratch buffer the RST's headers are built in (the stack is too small).
#[inline(always)]
fn scratch() -> Option<&'static mut [u8; 60]> {
    // SAFETY: a per-CPU map value that only this program run uses.
    TC_SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut (*s).rst })
}

/// Swaps the Ethernet addresses of 12 header bytes.
#[inline(always)]
fn swap_macs(m: [u8; 12]) -> [u8; 12] {
    let mut s = [0u8; 12];
    s[..6].copy_from_slice(&m[6..]);
    s[6..].copy_from_slice(&m[..6]);
    s
}

/// Rewrites the SYN in `ctx` into its RST (`bpf_skb_change_tail`, Linux
/// 4.9) and redirects it to the client (`bpf_redirect`, with
/// `BPF_F_INGRESS` since 4.5):
/// out of the interface it came in on (ingress hook), or into the local
/// stack that sent it (egress hook). Returns the tc verdict; a packet that
/// cannot be rewritten is dropped, the refusal `drop` would give.
#[inline(always)]
pub fn reset_tc(ctx: &TcContext, p: &Parsed, egress: bool) -> i32 {
    let l3 = (p.l3 & 0xff) as usize;
    let ip_len = match p.addrs {
        Addrs::V4 { .. } => 20,
        Addrs::V6 { .. } => 40,
    };
    // SAFETY: the context pointer is valid for the whole program run.
    let ok = unsafe { bpf_skb_change_tail(ctx.skb.skb, (l3 + ip_len + 20) as u32, 0) } == 0;
    if !ok {
        return TC_ACT_SHOT;
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return TC_ACT_SHOT;
    };
    if ctx.store(0, &swap_macs(macs), 0).is_err() {
        return TC_ACT_SHOT;
    }
    let Some(h) = scratch() else {
        return TC_ACT_SHOT;
    };
    let stored = match &p.addrs {
        Addrs::V4 { src, dst } => {
            rst4(src, dst, p, h);
            // SAFETY: the first 40 bytes of a 60-byte array.
            ctx.store(l3, unsafe { &*(h.as_ptr() as *const [u8; 40]) }, 0)
        }
        Addrs::V6 { src, dst } => {
            rst6(src, dst, p, h);
            ctx.store(l3, &*h, 0)
        }
    };
    if stored.is_err() {
        return TC_ACT_SHOT;
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let flags = if egress { BPF_F_INGRESS as u64 } else { 0 };
    // SAFETY: bpf_redirect has no memory preconditions.
    unsafe { bpf_redirect(ifindex, flags) as i32 }
}

/// The same at XDP: rewritten in place (`bpf_xdp_store_bytes`, Linux
/// 5.18; the agent needs 5.18 anyway) and sent back out (`XDP_TX`).
#[inline(always)]
pub fn reset_xdp(ctx: &XdpContext, ld: &impl Load, p: &Parsed) -> u32 {
    let l3 = (p.l3 & 0xff) as usize;
    let len = ctx.data_end() - ctx.data();
    let Some(macs) = ld.load::<12>(0) else {
        return xdp_action::XDP_DROP;
    };
    let m = swap_macs(macs);
    let Some(h) = scratch() else {
        return xdp_action::XDP_DROP;
    };
    let (new_len, r) = match &p.addrs {
        Addrs::V4 { src, dst } => {
            rst4(src, dst, p, h);
            // SAFETY: the helper copies 40 bytes from the 60-byte buffer.
            (l3 + 40, unsafe {
                bpf_xdp_store_bytes(ctx.ctx, l3 as u32, h.as_mut_ptr().cast(), 40)
            })
        }
        Addrs::V6 { src, dst } => {
            rst6(src, dst, p, h);
            // SAFETY: as above, 60 bytes.
            (l3 + 60, unsafe {
                bpf_xdp_store_bytes(ctx.ctx, l3 as u32, h.as_mut_ptr().cast(), 60)
            })
        }
    };
    // SAFETY: as above.
    let r2 = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, m.as_ptr() as *mut _, 12) };
    if r != 0 || r2 != 0 || new_len > len {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: shrinking the frame; the context pointer is valid.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - len as i32) } != 0 {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_TX
}
