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
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_xdp_adjust_tail, bpf_xdp_store_bytes,
    },
    programs::{TcContext, XdpContext},
};

use crate::{
    maps::TC_SCRATCH,
    parse::{Addrs, Parsed},
};

const IPPROTO_TCP: u8 = 6;
/// TCP RST|ACK.
const RST_ACK: u8 = 0x14;

/// Offset of the TCP header in the scratch buffer: after the IPv4 or IPv6
/// header.
const TCP4: usize = 20;
const TCP6: usize = 40;
/// Offset of the pseudo-header's protocol and length word, `[0, 6, 0, 20]`
/// (for IPv6 its 32-bit length and next header sum the same).
const PSEUDO: usize = 60;

/// One's-complement sum of `len` bytes (a multiple of 4) at `at` in the
/// scratch buffer, added to `seed` (`bpf_csum_diff`, Linux 4.6). The helper
/// sums in the kernel: byte loops here would spill to the hook's stack.
#[inline(always)]
fn csum(h: &mut [u8; 64], at: usize, len: u32, seed: u32) -> u32 {
    // SAFETY: `at + len` lies within the 64-byte buffer (callers pass
    // constants), which the helper only reads.
    unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            h.as_mut_ptr().add(at).cast(),
            len,
            seed,
        ) as u32
    }
}

/// Folds a one's-complement sum into the checksum to store (in the byte
/// order the sum was taken in, which `bpf_csum_diff` keeps).
#[inline(always)]
fn fold(acc: u32) -> [u8; 2] {
    let mut x = acc as u64;
    x = (x & 0xffff) + (x >> 16);
    x = (x & 0xffff) + (x >> 16);
    (!(x as u16)).to_ne_bytes()
}

/// Writes the TCP header of the RST at `h[at..at + 20]`, and the
/// pseudo-header word.
#[inline(always)]
fn tcp_rst(p: &Parsed, h: &mut [u8; 64], at: usize) {
    let ack = p.seq.wrapping_add(1).to_be_bytes();
    let (sp, dp) = (p.dport.to_be_bytes(), p.sport.to_be_bytes());
    h[at] = sp[0];
    h[at + 1] = sp[1];
    h[at + 2] = dp[0];
    h[at + 3] = dp[1];
    for i in 4..8 {
        h[at + i] = 0;
    }
    for i in 0..4 {
        h[at + 8 + i] = ack[i];
    }
    h[at + 12] = 5 << 4;
    h[at + 13] = RST_ACK;
    for i in 14..20 {
        h[at + i] = 0;
    }
    h[PSEUDO] = 0;
    h[PSEUDO + 1] = IPPROTO_TCP;
    h[PSEUDO + 2] = 0;
    h[PSEUDO + 3] = 20;
}

/// Writes the IPv4 header + TCP RST answering `p` into `h[0..40]`.
#[inline(always)]
fn rst4(src: &[u8; 4], dst: &[u8; 4], p: &Parsed, h: &mut [u8; 64]) {
    // Version 4, IHL 5, length 40, DF, TTL 64, TCP; from the SYN's
    // destination back to its source.
    let head = [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0];
    for i in 0..12 {
        h[i] = head[i];
    }
    for i in 0..4 {
        h[12 + i] = dst[i];
        h[16 + i] = src[i];
    }
    let c = fold(csum(h, 0, 20, 0));
    h[10] = c[0];
    h[11] = c[1];
    tcp_rst(p, h, TCP4);
    let sum = csum(h, 12, 8, 0);
    let sum = csum(h, PSEUDO, 4, sum);
    let c = fold(csum(h, TCP4, 20, sum));
    h[TCP4 + 16] = c[0];
    h[TCP4 + 17] = c[1];
}

/// Writes the IPv6 header + TCP RST answering `p` into `h[0..60]`.
#[inline(always)]
fn rst6(src: &[u8; 16], dst: &[u8; 16], p: &Parsed, h: &mut [u8; 64]) {
    // Version 6, payload 20 bytes, next header TCP, hop limit 64.
    let head = [0x60, 0, 0, 0, 0, 20, IPPROTO_TCP, 64];
    for i in 0..8 {
        h[i] = head[i];
    }
    for i in 0..16 {
        h[8 + i] = dst[i];
        h[24 + i] = src[i];
    }
    tcp_rst(p, h, TCP6);
    let sum = csum(h, 8, 32, 0);
    let sum = csum(h, PSEUDO, 4, sum);
    let c = fold(csum(h, TCP6, 20, sum));
    h[TCP6 + 16] = c[0];
    h[TCP6 + 17] = c[1];
}

/// The scratch buffer the RST's Ethernet addresses are swapped into (XDP).
#[inline(always)]
fn scratch_macs() -> Option<&'static mut [u8; 12]> {
    // SAFETY: a per-CPU map value that only this program run uses.
    TC_SCRATCH
        .get_ptr_mut(0)
        .map(|s| unsafe { &mut (*s).rst_macs })
}

/// The scratch buffer the RST's headers are built in (the stack is too small).
#[inline(always)]
fn scratch() -> Option<&'static mut [u8; 64]> {
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
            // SAFETY: the first 40 bytes of a 64-byte array.
            ctx.store(l3, unsafe { &*(h.as_ptr() as *const [u8; 40]) }, 0)
        }
        Addrs::V6 { src, dst } => {
            rst6(src, dst, p, h);
            // SAFETY: the first 60 bytes of a 64-byte array.
            ctx.store(l3, unsafe { &*(h.as_ptr() as *const [u8; 60]) }, 0)
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
pub fn reset_xdp(ctx: &XdpContext, p: &Parsed) -> u32 {
    let l3 = (p.l3 & 0xff) as usize;
    let len = ctx.data_end() - ctx.data();
    let (Some(h), Some(m)) = (scratch(), scratch_macs()) else {
        return xdp_action::XDP_DROP;
    };
    // Swapped straight from the packet into the scratch value: the XDP
    // hook's stack frame has no room to spare (6.1 rounds each frame of the
    // call chain up to 32 bytes, and the chain must fit 512).
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    for i in 0..6 {
        // SAFETY: the 12 bytes were bounds-checked above.
        unsafe {
            m[i] = *((start + 6 + i) as *const u8);
            m[6 + i] = *((start + i) as *const u8);
        }
    }
    let (new_len, r) = match &p.addrs {
        Addrs::V4 { src, dst } => {
            rst4(src, dst, p, h);
            // SAFETY: the helper copies 40 bytes from the 64-byte buffer.
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
