//! Flood generator and baseline receivers for the XDP flood benchmark and
//! its real-traffic test (`tc_tests::flood`).
//!
//! - `flood_tx`, the generator, is run with `BPF_PROG_TEST_RUN` and
//!   `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux 5.18): every repetition is a real
//!   frame that leaves the veth named as the run's ingress interface, so
//!   its peer's XDP hook receives it. It draws each frame's IPv4 source
//!   (and, optionally, its UDP destination port) from
//!   `bpf_get_prandom_u32` inside the configured range, fixes the IPv4
//!   header checksum and returns `XDP_TX` (or, for the configured share of
//!   frames not sent, `XDP_DROP`).
//! - `bare_drop` and `read_drop`, the baseline receivers, are attached to
//!   the receiving veth in the agent's place. `bare_drop` returns
//!   `XDP_DROP` without reading the frame. `read_drop` reads the EtherType,
//!   the IPv4 header and the port bytes after it, as the agent's parser
//!   does for the benchmark's UDP frames, then drops the frame: the floor
//!   of a program that looks at the packet at all.
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// What `flood_tx` rewrites; one entry in [`FLOOD_CONFIG`]. The same
/// layout as `tc_tests::flood::FloodConfig`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FloodConfig {
    /// The source range's first address, host order; the bits outside
    /// `src_mask` are kept from it.
    pub src_base: u32,
    /// Source bits drawn at random for each frame; 0 leaves the frame's
    /// source as it is (a single-source flood).
    pub src_mask: u32,
    /// The UDP destination port range's first port; bits outside
    /// `dport_mask` are kept from it.
    pub dport_base: u16,
    /// Destination-port bits drawn at random for each frame (UDP only; the
    /// UDP checksum is then cleared); 0 leaves the port as it is.
    pub dport_mask: u16,
    /// The share of frames sent, out of 2^32 - 1 (`u32::MAX`: all): the
    /// rest are dropped here, which thins the flood to a rate below the
    /// generator's without a syscall per batch.
    pub send_share: u32,
}

/// The generator's configuration, written by the harness before a run.
#[map]
static FLOOD_CONFIG: Array<FloodConfig> = Array::with_max_entries(1, 0);

/// Ethernet header length, without VLAN tags.
const ETH_LEN: usize = 14;
/// Offset of the EtherType in the Ethernet header.
const ETHERTYPE: usize = 12;
/// The IPv4 EtherType, as on the wire.
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// IPv4 header length without options.
const IPV4_LEN: usize = 20;
/// Offset of the protocol in the IPv4 header.
const IPV4_PROTO: usize = 9;
/// Offset of the source address in the IPv4 header (the destination
/// follows it).
const IPV4_SRC: usize = 12;
/// The UDP protocol number.
const UDP: u8 = 17;

/// Rewrites the frame as configured and sends it back out of the
/// interface it came "in" on: under live frames, out of the veth.
#[xdp]
pub fn flood_tx(ctx: XdpContext) -> u32 {
    match try_rewrite(&ctx) {
        Ok(true) => xdp_action::XDP_TX,
        Ok(false) => xdp_action::XDP_DROP,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

/// The baseline receiver: drops every frame.
#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The floor of any classifier: reads the headers as [`try_read`] says
/// and drops the frame (passes one that is not IPv4, or is too short for
/// its headers). Bare `XDP_DROP` never
/// touches the frame's data; this program pays what the first read of the
/// headers costs, and nothing else.
#[xdp]
pub fn read_drop(ctx: XdpContext) -> u32 {
    match try_read(&ctx) {
        Ok(()) => xdp_action::XDP_DROP,
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// Returns a pointer to a `T` at `offset` if it lies wholly inside the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    if ctx.data() + offset + size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((ctx.data() + offset) as *const T)
}

/// The reads of [`read_drop`]: the EtherType, the IPv4 header without
/// options (version and header length, fragment offset, protocol,
/// addresses), then four bytes (the ports) where the header length puts
/// them, as the agent's parser reads a UDP frame (it reads a whole UDP or
/// TCP header there, in the same cache line for these frames). Fails on a
/// frame that is not IPv4 or is too short.
#[inline(always)]
fn try_read(ctx: &XdpContext) -> Result<(), ()> {
    // SAFETY (every read below): `ptr_at` checked that the bytes lie
    // inside the frame; volatile, so that no read is left out for its
    // unused value.
    let ethertype = unsafe { read_volatile(ptr_at::<[u8; 2]>(ctx, ETHERTYPE)?) };
    if ethertype != ETH_P_IP {
        return Err(());
    }
    let hdr = unsafe { read_volatile(ptr_at::<[u8; IPV4_LEN]>(ctx, ETH_LEN)?) };
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    if hdr[0] >> 4 != 4 || ihl < IPV4_LEN {
        return Err(());
    }
    unsafe { read_volatile(ptr_at::<[u8; 4]>(ctx, ETH_LEN + ihl)?) };
    Ok(())
}

/// Fails on a frame that is not IPv4 without options with a UDP or TCP
/// header in reach (the harness builds its frame; nothing else reaches
/// here). Returns whether to send the frame.
#[inline(always)]
fn try_rewrite(ctx: &XdpContext) -> Result<bool, ()> {
    let cfg = FLOOD_CONFIG.get(0).ok_or(())?;
    // SAFETY: the helper takes no arguments.
    if cfg.send_share != u32::MAX && unsafe { bpf_get_prandom_u32() } > cfg.send_share {
        return Ok(false);
    }
    let (src_base, src_mask) = (cfg.src_base, cfg.src_mask);
    let (dport_base, dport_mask) = (cfg.dport_base, cfg.dport_mask);
    let start = ctx.data();
    if start + ETH_LEN + IPV4_LEN + 8 > ctx.data_end() {
        return Err(());
    }
    let eth = start as *mut u8;
    let ip = (start + ETH_LEN) as *mut u8;
    let l4 = (start + ETH_LEN + IPV4_LEN) as *mut u8;
    // SAFETY: every access below is within the first 42 bytes, checked above.
    unsafe {
        if [*eth.add(ETHERTYPE), *eth.add(ETHERTYPE + 1)] != ETH_P_IP || *ip != 0x45 {
            return Err(());
        }
        if src_mask != 0 {
            let src = (src_base & !src_mask) | (bpf_get_prandom_u32() & src_mask);
            let b = src.to_be_bytes();
            *ip.add(IPV4_SRC) = b[0];
            *ip.add(IPV4_SRC + 1) = b[1];
            *ip.add(IPV4_SRC + 2) = b[2];
            *ip.add(IPV4_SRC + 3) = b[3];
        }
        if dport_mask != 0 {
            if *ip.add(IPV4_PROTO) != UDP {
                return Err(());
            }
            let port = (dport_base & !dport_mask) | (bpf_get_prandom_u32() as u16 & dport_mask);
            let b = port.to_be_bytes();
            *l4.add(2) = b[0];
            *l4.add(3) = b[1];
            // No UDP checksum (allowed over IPv4): the port changed under it.
            *l4.add(6) = 0;
            *l4.add(7) = 0;
        }
        // The header checksum, afresh over the ten 16-bit words.
        *ip.add(10) = 0;
        *ip.add(11) = 0;
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < IPV4_LEN {
            sum += u16::from_be_bytes([*ip.add(i), *ip.add(i + 1)]) as u32;
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let c = (!(sum as u16)).to_be_bytes();
        *ip.add(10) = c[0];
        *ip.add(11) = c[1];
    }
    Ok(true)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
