//! Packet rewriting for `mark`: ECN CE in the IP header.

use aya_ebpf::programs::{TcContext, XdpContext};

/// Sets ECN CE in the IP header at `l3`, fixing the IPv4 checksum by
/// RFC 1624 incremental update.
#[inline(always)]
pub fn mark_ce_xdp(ctx: &XdpContext, l3: usize, v6: bool) {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + l3 + 20 > end {
        return;
    }
    let p = (start + l3) as *mut u8;
    // SAFETY: the 20 bytes at p were bounds-checked above.
    unsafe {
        let old = *p.add(1);
        if v6 {
            *p.add(1) = old | 0x30;
            return;
        }
        let new = old | 0x03;
        *p.add(1) = new;
        let word = |tos: u8| u16::from_be_bytes([*p, tos]) as u32;
        let hc = u16::from_be_bytes([*p.add(10), *p.add(11)]) as u32;
        let mut sum = (!hc & 0xffff) + (!word(old) & 0xffff) + word(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let hc = (!sum & 0xffff) as u16;
        let [a, b] = hc.to_be_bytes();
        *p.add(10) = a;
        *p.add(11) = b;
    }
}

/// Sets ECN CE through the skb helpers (the header may not be writable in place).
#[inline(always)]
pub fn mark_ce_tc(ctx: &TcContext, l3: usize, v6: bool) {
    let Ok(w) = ctx.load::<[u8; 2]>(l3) else {
        return;
    };
    if v6 {
        let _ = ctx.store(l3 + 1, &(w[1] | 0x30), 0);
        return;
    }
    let new = [w[0], w[1] | 0x03];
    let _ = ctx.l3_csum_replace(
        l3 + 10,
        u16::from_ne_bytes(w) as u64,
        u16::from_ne_bytes(new) as u64,
        2,
    );
    let _ = ctx.store(l3 + 1, &new[1], 0);
}
