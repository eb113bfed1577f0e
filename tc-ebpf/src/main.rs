//! The kernel datapath: classify every packet into a channel and hold the
//! channel to its limits.
//!
//! - `tc_ingress` / `tc_egress`: tc classifiers (TCX on 6.6+, clsact before),
//!   the default hooks.
//! - `xdp_ingress`: opt-in early-drop hook for floods, same classifier and maps.
//! - `tc_pass` / `xdp_pass`: bare programs, the floor the benchmark measures against.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_cxchg is the only CAS that lowers to BPF_CMPXCHG on bpfel"
)]

mod account;
mod bucket;
mod classify;
mod clock;
mod conn;
mod ecn;
mod enforce;
mod maps;
mod parse;
mod pipeline;
mod reset;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_get_hash_recalc, bpf_xdp_load_bytes},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use tc_common::{ACCOUNT_TC_EGRESS, ACCOUNT_TC_INGRESS, ACCOUNT_XDP, DIR_EGRESS, DIR_INGRESS};

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{maps::ProgramArray, EbpfContext};

use crate::{
    account::account,
    ecn::{mark_ce_tc, mark_ce_xdp},
    enforce::{Frame, DELAY, DROP, MARK, RESET},
    maps::{TC_ACCOUNT, TC_ACCOUNT_XDP, TC_SCRATCH},
    parse::Load,
    pipeline::handle,
    reset::{reset_tc, reset_xdp},
};

// Inlined into the entry point aya's macro wraps it in: the tail call to
// the accounting program must be made from the program's main function
// (a subprogram may only tail-call with BTF).
#[classifier]
#[inline(always)]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_INGRESS)
}

// Inlined into the entry point aya's macro wraps it in: the tail call to
// the accounting program must be made from the program's main function
// (a subprogram may only tail-call with BTF).
#[classifier]
#[inline(always)]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc_verdict(&ctx, DIR_EGRESS)
}

// Inlined into the entry point aya's macro wraps it in: the tail call to
// the accounting program must be made from the program's main function
// (a subprogram may only tail-call with BTF). The judging stays a
// subprogram, as before accounting: inlined, Linux 6.1's verifier walks
// the XDP path past its one million instructions (this host's needs 92k).
#[xdp]
#[inline(always)]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let ret = xdp_judge(&ctx);
    then_account(&ctx, &TC_ACCOUNT_XDP, ACCOUNT_XDP, ret as u64) as u32
}

/// The XDP verdict of a frame.
#[inline(never)]
fn xdp_judge(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len,
        segs: 1,
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        in_ifindex: 0,
    };
    let ld = XdpLoad(ctx);
    let v = handle(
        &frame,
        &ld,
        DIR_INGRESS,
        || 0,
        #[inline(always)]
        |p| reset_xdp(ctx, p),
    );
    match v.action {
        DROP => xdp_action::XDP_DROP,
        RESET => v.tstamp as u32,
        MARK => {
            mark_ce_xdp(ctx, v.l3 as usize, v.v6);
            xdp_action::XDP_PASS
        }
        // Delay is refused for ingress channels at validation.
        _ => xdp_action::XDP_PASS,
    }
}

/// The accounting program of tc ingress: counts the packet in its
/// interaction, then returns the hook's verdict.
#[classifier]
pub fn tc_account_ingress(_ctx: TcContext) -> i32 {
    account(DIR_INGRESS, 0);
    parked(TC_ACT_UNSPEC as u64) as i32
}

/// The accounting program of tc egress (a forwarded packet was counted at
/// its ingress).
#[classifier]
pub fn tc_account_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context pointer is valid for the whole program run.
    account(DIR_EGRESS, unsafe { (*ctx.skb.skb).ingress_ifindex });
    parked(TC_ACT_UNSPEC as u64) as i32
}

/// The accounting program of XDP.
#[xdp]
pub fn xdp_account(_ctx: XdpContext) -> u32 {
    account(DIR_INGRESS, 0);
    parked(xdp_action::XDP_PASS as u64) as u32
}

/// Parks the hook's return code and tail-calls its accounting program
/// (`slot` of `progs`), which returns it. Returns it itself if the
/// tail call fails (no program in the slot): the verdict never depends on
/// the accounting.
#[inline(always)]
fn then_account<C: EbpfContext>(ctx: &C, progs: &ProgramArray, slot: u32, ret: u64) -> u64 {
    if let Some(s) = TC_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch; the tail-called program runs on this CPU
        // right after.
        unsafe { write_volatile(&raw mut (*s).ret, ret) };
        // SAFETY: a tail call either jumps (never returns) or fails.
        let _ = unsafe { progs.tail_call(ctx, slot) };
    }
    ret
}

/// The return code [`then_account`] parked (`pass` if the scratch value
/// cannot be had, which cannot happen: the hook parked it there).
#[inline(always)]
fn parked(pass: u64) -> u64 {
    match TC_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU scratch, written by the hook that tail-called us.
        Some(s) => unsafe { read_volatile(&raw const (*s).ret) },
        None => pass,
    }
}

/// Packet bytes through `bpf_skb_load_bytes`, also outside the linear area.
struct TcLoad<'a>(&'a TcContext);

impl Load for TcLoad<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}

/// Packet bytes through `bpf_xdp_load_bytes` (Linux 5.18+).
struct XdpLoad<'a>(&'a XdpContext);

impl Load for XdpLoad<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: the helper writes at most N bytes into `buf`.
        let r = unsafe {
            bpf_xdp_load_bytes(self.0.ctx, offset as u32, buf.as_mut_ptr().cast(), N as u32)
        };
        (r == 0).then_some(buf)
    }
}

/// Floor for the per-packet cost benchmark: a tc program that only passes.
#[classifier]
pub fn tc_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Floor for XDP: only passes.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Bytes of headers the parser may need in the linear area: Ethernet, two
/// VLAN tags, IPv6 with eight short extension headers, and a TCP header.
const PULL_LEN: u32 = 256;

#[inline(always)]
fn tc_verdict(ctx: &TcContext, dir: u8) -> i32 {
    let len = ctx.len();
    // Headers of locally generated or GRO'd packets can sit outside the linear
    // area; pull them in once so direct packet access sees them.
    if ((ctx.data_end() - ctx.data()) as u32) < len
        && ((ctx.data_end() - ctx.data()) as u32) < PULL_LEN
    {
        let want = if len < PULL_LEN { len } else { PULL_LEN };
        let _ = ctx.pull_data(want);
    }
    // SAFETY: the context pointer is valid for the whole program run.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        len: len as u64,
        segs: if gso_segs == 0 { 1 } else { gso_segs },
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        // SAFETY: as above.
        in_ifindex: unsafe { (*ctx.skb.skb).ingress_ifindex },
    };
    // SAFETY: the context pointer is valid for the whole program run.
    // Usually a read of the hash the stack already set (TCP's txhash, the
    // RX hash); computed once otherwise.
    let v = handle(
        &frame,
        &TcLoad(ctx),
        dir,
        || unsafe { bpf_get_hash_recalc(ctx.skb.skb) },
        #[inline(always)]
        |p| reset_tc(ctx, p, dir == DIR_EGRESS) as u32,
    );
    let ret = match v.action {
        DROP => TC_ACT_SHOT,
        RESET => v.tstamp as i32,
        DELAY => {
            // fq releases the packet at skb->tstamp; keep a later departure
            // the sender (TCP's own EDT pacing) already chose.
            // SAFETY: the context pointer is valid for the whole program run.
            unsafe {
                if (*ctx.skb.skb).tstamp < v.tstamp {
                    (*ctx.skb.skb).tstamp = v.tstamp;
                }
            }
            TC_ACT_UNSPEC
        }
        MARK => {
            mark_ce_tc(ctx, v.l3 as usize, v.v6);
            TC_ACT_UNSPEC
        }
        _ => TC_ACT_UNSPEC,
    };
    let slot = if dir == DIR_EGRESS {
        ACCOUNT_TC_EGRESS
    } else {
        ACCOUNT_TC_INGRESS
    };
    then_account(ctx, &TC_ACCOUNT, slot, ret as u64) as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
