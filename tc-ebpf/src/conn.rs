//! The connection table: TCP connections of channels with connection
//! limits, their state machine, the admission of new connections against
//! the limits (open connections at once, new connections per second), and
//! the handshake time.
//!
//! A connection counts in its channel's pool from its admitted SYN until
//! it closes (both FINs, an RST) or the agent's collector times it out.
//! The per-pool count is exact: see [`tc_common::ConnEntry`] for the rule
//! that keeps the datapath and the collector from releasing one
//! connection twice, and [`admit`] for the compare-and-swap
//! (`BPF_ATOMIC_CMPXCHG`, Linux 5.12) that keeps two CPUs from admitting
//! past the limit.

use core::{
    intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::bindings::BPF_NOEXIST;
use tc_common::{
    ChannelPolicy, ConnConfig, ConnEntry, ConnKey, GlobalCounters, CONN_CLOSED, CONN_CLOSING,
    CONN_ESTABLISHED, CONN_RESET, CONN_SYN_RECV, CONN_SYN_SENT, DIR_EGRESS, DIR_INGRESS,
    L4_UNKNOWN, MODE_MONITOR, NO_CHANNEL, SEQ_WINDOW,
};

use crate::{
    bucket::charge_once,
    clock::{coarse_ns, fine_ns},
    enforce::Frame,
    maps::{
        ConnHint, CONN_HINT_SLOTS, TC_CONNS, TC_CONN_CONF, TC_CONN_GC, TC_CONN_HINTS,
        TC_CONN_POOLS, TC_COUNTERS, TC_POLICIES, TC_SCRATCH,
    },
    parse::{Addrs, Parsed, IPPROTO_TCP},
};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// [`ConnEntry::fins`]: the client's FIN was seen.
const FIN_CLIENT: u32 = 1;
/// The server's FIN was seen.
const FIN_SERVER: u32 = 2;
/// The connection was reset: the client's later data is dropped (a
/// spoofed RST must not free a slot and keep its connection).
const RESET_SEEN: u32 = 4;

/// What [`connections`] decided: a packet of a limited channel that may
/// pass on to the buckets...
pub const CONN_PASS: u8 = 0;
/// ...a new connection over a limit (or with no room in the table):
/// drop its SYN...
pub const CONN_REFUSE: u8 = 1;
/// ...data from a client whose connection was reset: drop it...
pub const CONN_LATE: u8 = 2;
/// ...a refused SYN of a `reset` channel: answer it with an RST...
pub const CONN_REFUSE_RESET: u8 = 3;
/// ...a SYN on the addresses and ports of an entry idle past its timeout,
/// which the collector has not taken yet: dropped (never reset: it is over
/// no limit), the client's retransmission finds the way clear...
pub const CONN_STALE: u8 = 5;
/// ...or a packet of no limited channel.
pub const CONN_NONE: u8 = 4;
/// `-EEXIST` from a map insert: the key is there already.
const EEXIST: i32 = -17;

/// Connection limits for one packet: [`track`] for a TCP packet of a
/// channel that limits connections, [`observe`] for a SYN, FIN or RST
/// of any other TCP packet (the server's side of a tracked connection is
/// in no limited channel). `slot` is the packet's channel, [`NO_CHANNEL`]
/// when it has none or follows a first fragment; later fragments and
/// packets without readable ports are not tracked. A packet refused here is counted in its channel's counters
/// (matched and dropped) and never reaches the buckets: a refused SYN costs
/// no bandwidth.
#[inline(always)]
pub fn connections(
    p: &Parsed,
    slot: u32,
    dir: u8,
    frame: &Frame,
    global: &mut GlobalCounters,
) -> u8 {
    let tcp = p.proto == IPPROTO_TCP;
    let hook = frame.ifindex << 1 | dir as u32;
    if slot != NO_CHANNEL {
        if let Some(policy) = TC_POLICIES.get(slot) {
            if policy.active != 0 && policy.limits_connections() {
                let monitor = policy.mode == MODE_MONITOR;
                let c = if p.l4_flags == 0 {
                    if !tcp {
                        return CONN_NONE;
                    }
                    track(p, policy, dir, hook, &mut global.conn_untracked_pkts)
                } else if tcp || p.l4_flags & L4_UNKNOWN != 0 {
                    // A TCP segment (or possibly one) whose ports cannot be
                    // read: a first fragment cut inside the TCP header, a
                    // header cut short, an extension chain past the walk.
                    // It could be a SYN the table cannot follow, so a
                    // channel that limits connections refuses it (RFC 1858).
                    count_refusal(policy.conn_pool, monitor);
                    CONN_REFUSE
                } else {
                    return CONN_NONE;
                };
                if c == CONN_PASS || monitor {
                    return CONN_PASS;
                }
                if let Some(counters) = TC_COUNTERS.get_ptr_mut(slot) {
                    // SAFETY: per-CPU slot, only this CPU writes it while
                    // the program runs.
                    let counters = unsafe { &mut *counters };
                    counters.matched_pkts += frame.segs;
                    counters.matched_bytes += frame.len;
                    counters.dropped_pkts += frame.segs;
                    counters.dropped_bytes += frame.len;
                }
                if c == CONN_LATE {
                    global.conn_after_close_pkts += 1;
                    return CONN_LATE;
                }
                if c == CONN_REFUSE && policy.conn_action == CONN_RESET && p.l4_flags == 0 {
                    return CONN_REFUSE_RESET;
                }
                return CONN_REFUSE;
            }
        }
    }
    if tcp && p.l4_flags == 0 && p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
        observe(p, hook);
    }
    CONN_NONE
}

/// CAS attempts to take a slot under the concurrency limit before the SYN
/// is refused as contended (it is retransmitted).
const SLOT_TRIES: usize = 4;

/// Writes the connection-table key of a TCP packet into `k` (a per-CPU
/// scratch value: the stack is too small for it), and returns whether the
/// packet's sender is the key's `a` endpoint.
#[inline(always)]
fn key_of(p: &Parsed, k: &mut ConnKey) -> bool {
    // Any total order works, as long as both directions agree on it: the
    // addresses byte by byte, then the ports. Compared and copied a byte at
    // a time between map values, so nothing is spilled to the stack (the
    // hooks' frames have no room to spare).
    let sender_is_a = match &p.addrs {
        Addrs::V4 { src, dst } => lower(src, dst, p.sport, p.dport),
        Addrs::V6 { src, dst } => lower(src, dst, p.sport, p.dport),
    };
    k.a = [0; 16];
    k.b = [0; 16];
    match &p.addrs {
        Addrs::V4 { src, dst } => {
            let (a, b) = if sender_is_a { (src, dst) } else { (dst, src) };
            k.a[10] = 0xff;
            k.a[11] = 0xff;
            k.b[10] = 0xff;
            k.b[11] = 0xff;
            for i in 0..4 {
                k.a[12 + i] = a[i];
                k.b[12 + i] = b[i];
            }
        }
        Addrs::V6 { src, dst } => {
            let (a, b) = if sender_is_a { (src, dst) } else { (dst, src) };
            for i in 0..16 {
                k.a[i] = a[i];
                k.b[i] = b[i];
            }
        }
    }
    let (a_port, b_port) = if sender_is_a {
        (p.sport, p.dport)
    } else {
        (p.dport, p.sport)
    };
    k.a_port = a_port.to_be();
    k.b_port = b_port.to_be();
    k._pad = 0;
    sender_is_a
}

/// Whether endpoint (`a`, `a_port`) sorts at or before (`b`, `b_port`).
#[inline(always)]
fn lower<const N: usize>(a: &[u8; N], b: &[u8; N], a_port: u16, b_port: u16) -> bool {
    for i in 0..N {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    a_port <= b_port
}

/// The scratch slot for the packet's connection key.
#[inline(always)]
fn scratch_key() -> Option<&'static mut ConnKey> {
    // SAFETY: a per-CPU map value that only this program run uses.
    TC_SCRATCH
        .get_ptr_mut(0)
        .map(|s| unsafe { &mut (*s).conn_key })
}

/// Whether an entry has been idle past its state's timeout. Such an entry
/// belongs to the agent's collector: the datapath no longer writes to it.
#[inline(always)]
fn expired(conf: &ConnConfig, state: u8, last: u64, now: u64) -> bool {
    let timeout = conf.timeout(state);
    timeout != 0 && now > last && now - last > timeout
}

/// A packet of a channel with connection limits: admits or refuses a new
/// connection's SYN, and follows the connection's state.
#[inline(always)]
fn track(p: &Parsed, policy: &ChannelPolicy, dir: u8, hook: u32, untracked: &mut u64) -> u8 {
    let (Some(conf), Some(key)) = (TC_CONN_CONF.get(0), scratch_key()) else {
        return CONN_PASS;
    };
    let pure_syn = p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
    let now = coarse_ns();
    // An established client's segment seen on this CPU a moment ago
    // needs nothing from the table: skip the lookup.
    let plain = p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0;
    let fin_rst = p.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    // A SYN needs no hint: it moves nothing an established connection's
    // hint stands for.
    let tag = if plain || fin_rst { tuple_tag(p) } else { 0 };
    let hint = if plain {
        TC_CONN_HINTS.get_ptr_mut(tag as u32 & (CONN_HINT_SLOTS - 1))
    } else {
        None
    };
    if fin_rst {
        forget_hint(tag);
    } else if plain {
        if let Some(h) = hint {
            // SAFETY: per-CPU slot, only this CPU uses it while the
            // program runs.
            let h = unsafe { &*h };
            if h.tag == tag
                && now < h.until_ns
                && in_window_of(p.seq, h.seq, HINT_SEQ_WINDOW)
                && in_window_of(p.ack, h.ack, HINT_SEQ_WINDOW)
            {
                return CONN_PASS;
            }
        }
    }
    let sender_is_a = key_of(p, key);
    let key = &*key;
    match TC_CONNS.get_ptr_mut(key) {
        Some(e) => {
            // SAFETY: a value of the hash map (no prealloc: freed after an
            // RCU grace period), valid for this run; fields shared between
            // CPUs are read and written volatile or atomically.
            let (state, last, client_is_a, counted) = unsafe {
                (
                    read_volatile(&raw const (*e).state),
                    read_volatile(&raw const (*e).last_ns),
                    read_volatile(&raw const (*e).client_is_a),
                    read_volatile(&raw const (*e).counted),
                )
            };
            if expired(conf, state, last, now) {
                // The collector owns it now. A new connection on its
                // addresses and ports waits until it is collected (the SYN
                // is retransmitted); other packets pass uncounted.
                if pure_syn {
                    count_refusal(policy.conn_pool, policy.mode == MODE_MONITOR);
                    return CONN_STALE;
                }
                *untracked += 1;
                return CONN_PASS;
            }
            let from_client = sender_is_a == (client_is_a != 0);
            if pure_syn && from_client {
                if counted != 0 && (state == CONN_SYN_SENT || state == CONN_SYN_RECV) {
                    // A retransmitted SYN: the connection already counts.
                    // (A SYN with another sequence number, a client's new
                    // attempt or a forgery, changes nothing either: the
                    // server's answer to it moves the handshake on, and
                    // the client's acknowledgment shows the server's
                    // numbers; see `follow`.)
                    // SAFETY: as above.
                    unsafe { write_volatile(&raw mut (*e).last_ns, now) };
                    return CONN_PASS;
                }
                if counted != 0 {
                    // A new connection on the addresses and ports of one
                    // whose end this node did not see: that one is over.
                    // SAFETY: as above.
                    unsafe { close(e) };
                }
                // The addresses and ports of a closed connection, reused.
                if !admit(policy) {
                    return CONN_REFUSE;
                }
                let now = fine_ns();
                // The new connection's facts first, then its count: a late
                // close racing with this one then releases into the new
                // pool, never into the old one.
                // SAFETY: as above.
                unsafe {
                    write_volatile(&raw mut (*e).syn_ns, now);
                    write_volatile(&raw mut (*e).last_ns, now);
                    write_volatile(&raw mut (*e).pool, policy.conn_pool);
                    write_volatile(&raw mut (*e).fins, 0);
                    write_volatile(&raw mut (*e).syn_dir, dir);
                    write_volatile(&raw mut (*e).client_hook, hook);
                    write_volatile(&raw mut (*e).client_seq, p.seq);
                    write_volatile(&raw mut (*e).client_ack, 0);
                    write_volatile(&raw mut (*e).client_is_a, sender_is_a as u8);
                    write_volatile(&raw mut (*e).state, CONN_SYN_SENT);
                }
                // SAFETY: as above; the CAS makes one CPU the owner of
                // the new count.
                let (_, won) = unsafe {
                    atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                        &raw mut (*e).counted,
                        0,
                        1,
                    )
                };
                if !won {
                    // Another CPU reopened it first with the same SYN: ours
                    // was a duplicate.
                    release(policy.conn_pool);
                }
                return CONN_PASS;
            }
            // SAFETY: as above.
            let verdict = unsafe { follow(e, from_client, p, hook, now) };
            if plain && from_client && state == CONN_ESTABLISHED && verdict == CONN_PASS {
                if let Some(h) = hint {
                    // SAFETY: as above.
                    unsafe {
                        *h = ConnHint {
                            tag,
                            until_ns: now + HINT_NS,
                            seq: p.seq,
                            ack: p.ack,
                        }
                    };
                }
            }
            verdict
        }
        None => {
            if !pure_syn {
                // Mid-stream: opened before the limit, or collected.
                *untracked += 1;
                return CONN_PASS;
            }
            if !admit(policy) {
                return CONN_REFUSE;
            }
            let now = fine_ns();
            let Some(scratch) = TC_SCRATCH.get_ptr_mut(0) else {
                release(policy.conn_pool);
                return CONN_REFUSE;
            };
            // SAFETY: a per-CPU map value that only this program run uses
            // (the stack has no room for it).
            let entry = unsafe { &mut (*scratch).conn_entry };
            *entry = ConnEntry {
                syn_ns: now,
                last_ns: now,
                pool: policy.conn_pool,
                state: CONN_SYN_SENT,
                counted: 1,
                client_hook: hook,
                client_seq: p.seq,
                client_ack: 0,
                client_is_a: sender_is_a as u8,
                fins: 0,
                syn_dir: dir,
                _pad: [0; 5],
            };
            match TC_CONNS.insert(key, entry, BPF_NOEXIST as u64) {
                Ok(()) => CONN_PASS,
                Err(err) => {
                    release(policy.conn_pool);
                    // -EEXIST: the same SYN on the other CPU got there
                    // first and counts the connection. Otherwise the table
                    // is full: refused, never uncounted.
                    if err == EEXIST {
                        CONN_PASS
                    } else {
                        table_full(policy);
                        if policy.mode == MODE_MONITOR {
                            CONN_PASS
                        } else {
                            CONN_REFUSE
                        }
                    }
                }
            }
        }
    }
}

/// A TCP packet with SYN, FIN or RST outside a limited channel (the
/// server's side of a connection, usually): moves a tracked connection's
/// state. Nothing to do for connections that are not tracked.
#[inline(always)]
fn observe(p: &Parsed, hook: u32) {
    let (Some(conf), Some(key)) = (TC_CONN_CONF.get(0), scratch_key()) else {
        return;
    };
    let sender_is_a = key_of(p, key);
    let Some(e) = TC_CONNS.get_ptr_mut(&*key) else {
        return;
    };
    // Its state may move: the client's segments on this CPU see the table.
    forget_hint(tuple_tag(p));
    let now = coarse_ns();
    // SAFETY: as in `track`.
    unsafe {
        let state = read_volatile(&raw const (*e).state);
        if expired(conf, state, read_volatile(&raw const (*e).last_ns), now) {
            return;
        }
        let from_client = sender_is_a == (read_volatile(&raw const (*e).client_is_a) != 0);
        // A client's SYN seen here is one a limited channel already judged
        // (a forwarding node sees it on two hooks): not a new connection.
        if from_client && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            return;
        }
        follow(e, from_client, p, hook, now);
    }
}

/// How far behind what the client's packets last showed its FIN may lie.
/// The segments a client sends after its FIN (ACKs of the server's data
/// and FIN) lie one past the FIN and the data it carries: at most a GRO
/// super-packet at ingress, or a GSO one at egress, 512 KiB with BIG TCP.
/// A client's FIN alone closes nothing (both FINs or an RST do): a blind
/// forger's chance per guess to mark the client's half closed grows by
/// 2^20 / 2^32, from 1/256 to about 1/241.
const FIN_LAG: u32 = 1 << 20;

/// How far past the client's SYN a SYN-ACK (or the server's RST to the
/// SYN) may acknowledge and still answer it: one past the SYN, plus the
/// data a SYN carries with TCP Fast Open (at most one segment). A blind
/// forger has one chance in 65,536 per guess.
const SYN_DATA_WINDOW: u32 = 1 << 16;

/// Whether `ack` acknowledges the SYN whose sequence number is `syn`.
#[inline(always)]
fn acks_syn(ack: u32, syn: u32) -> bool {
    ack.wrapping_sub(syn.wrapping_add(1)) < SYN_DATA_WINDOW
}

/// Whether `seq` lies at or ahead of `near`, by less than [`SEQ_WINDOW`].
#[inline(always)]
fn ahead(seq: u32, near: u32) -> bool {
    seq.wrapping_sub(near) < SEQ_WINDOW
}

/// Whether `seq` lies within `window` of `near`, either way.
#[inline(always)]
fn in_window_of(seq: u32, near: u32, window: u32) -> bool {
    seq.wrapping_sub(near).wrapping_add(window) < 2 * window
}

/// How long a hint lets this CPU skip the table for a connection: its
/// idle time, sequence numbers and state are refreshed at least this often.
/// A reset on another CPU is seen by this one's hint this late at most.
const HINT_NS: u64 = 100_000_000;
/// How far a connection's sequence numbers may move before the table is
/// refreshed: a quarter of [`SEQ_WINDOW`], so the table's view never falls
/// behind by the window its FIN and RST checks allow.
const HINT_SEQ_WINDOW: u32 = SEQ_WINDOW / 4;

/// A 64-bit tag of the packet's connection for the per-CPU hints, the
/// same in both directions: each endpoint's address (IPv6 folded to 32
/// bits) and port, mixed, then combined. Two connections that share a tag
/// share a hint: one of them may skip the table for a moment on the
/// other's, which only delays its idle refresh (and, after a reset of its
/// own, its drops) by up to [`HINT_NS`].
#[inline(always)]
fn tuple_tag(p: &Parsed) -> u64 {
    let (s, d, family) = match &p.addrs {
        Addrs::V4 { src, dst } => (u32::from_ne_bytes(*src), u32::from_ne_bytes(*dst), 4u64),
        Addrs::V6 { src, dst } => (fold16(src), fold16(dst), 6u64),
    };
    let end = |addr: u32, port: u16| {
        let x =
            ((addr as u64) << 16 | port as u64 | family << 48).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^ (x >> 31)
    };
    (end(s, p.sport) ^ end(d, p.dport)) | 1
}

/// All 16 bytes of an IPv6 address folded into 32 bits.
#[inline(always)]
fn fold16(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4).rotate_left(8) ^ w(8).rotate_left(16) ^ w(12).rotate_left(24)
}

/// Forgets this CPU's hint for the packet's connection: its state moves
/// (a FIN, an RST), so its next segments must see the table.
#[inline(always)]
fn forget_hint(tag: u64) {
    if let Some(h) = TC_CONN_HINTS.get_ptr_mut(tag as u32 & (CONN_HINT_SLOTS - 1)) {
        // SAFETY: per-CPU slot, only this CPU uses it while the program runs.
        unsafe {
            if (*h).tag == tag {
                (*h).tag = 0;
            }
        }
    }
}

/// Follows a tracked connection's state on one of its packets: handshake
/// (and its time), FINs, RST. Returns [`CONN_LATE`] for client data after
/// a reset, else [`CONN_PASS`].
///
/// A FIN or RST moves the state only if its sequence number lies near what
/// its sender's packets showed ([`SEQ_WINDOW`] ahead; a client's FIN also
/// up to [`FIN_LAG`] behind), and a packet claiming to be the server's
/// moves nothing when it shows up at the hook that saw the client's SYN:
/// neither a client nor a blind forger (short of a lucky guess) can close
/// a connection in the table's eyes (and so free its slot) while the
/// connection lives on.
///
/// # Safety
/// `e` must point into a live value of the connection table.
#[inline(always)]
unsafe fn follow(e: *mut ConnEntry, from_client: bool, p: &Parsed, hook: u32, now: u64) -> u8 {
    let flags = p.tcp_flags;
    // SAFETY: caller guarantees `e` is valid.
    unsafe {
        let state = read_volatile(&raw const (*e).state);
        let fins = read_volatile(&raw const (*e).fins);
        if !from_client && hook == read_volatile(&raw const (*e).client_hook) {
            // The server's packets never pass the client's hook: forged.
            return CONN_PASS;
        }
        let client_seq = read_volatile(&raw const (*e).client_seq);
        let client_ack = read_volatile(&raw const (*e).client_ack);
        let closing = flags & (TCP_FIN | TCP_RST) != 0;
        // A FIN or RST must lie at or ahead of what its sender's packets
        // last showed (not behind: an old sequence number is one TCP
        // ignores), and within the window. A client's FIN may also lie up
        // to [`FIN_LAG`] behind: when both sides close at once, the ACK the
        // client sends after its FIN can pass this hook first, on the
        // other CPU (seen in a 6.1 guest: the FIN was ignored, and the
        // connection counted until the established timeout). Nothing the
        // client sends follows its RST, and the server's segments are
        // judged against the client's acknowledgments, which can only
        // come after them.
        let plausible = if from_client {
            ahead(p.seq, client_seq)
                || (flags & TCP_FIN != 0 && ahead(p.seq.wrapping_add(FIN_LAG), client_seq))
        } else if state == CONN_SYN_SENT {
            // An RST answering the SYN (a closed port): it must acknowledge
            // it. A server sends no FIN before its SYN-ACK.
            flags & (TCP_RST | TCP_ACK) == TCP_RST | TCP_ACK && acks_syn(p.ack, client_seq)
        } else {
            // Not before the server's numbers are known (0 until then).
            client_ack != 0 && ahead(p.seq, client_ack)
        };
        if closing && !plausible {
            return CONN_PASS;
        }
        if state == CONN_CLOSED {
            // Late ACKs and FINs of a closed connection pass; data from a
            // client that was reset does not.
            if fins & RESET_SEEN != 0 && from_client && flags & TCP_RST == 0 {
                return CONN_LATE;
            }
            return CONN_PASS;
        }
        // Only forward: a retransmission or a stale segment moves nothing.
        if from_client && ahead(p.seq, client_seq) {
            write_volatile(&raw mut (*e).client_seq, p.seq);
            // While the server's numbers are unknown (0: no SYN-ACK
            // acknowledged the SYN the table holds, as when the client
            // retried from the same port with another, or in a
            // simultaneous open), the client's acknowledgment of the
            // server's SYN shows them: only after that SYN, and only from
            // a segment in the client's window, like its FIN.
            let known = client_ack != 0;
            if flags & TCP_ACK != 0
                && (known && ahead(p.ack, client_ack) || !known && state != CONN_SYN_SENT)
            {
                write_volatile(&raw mut (*e).client_ack, p.ack);
            }
        }
        write_volatile(&raw mut (*e).last_ns, now);
        if flags & TCP_RST != 0 {
            atomic_or::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*e).fins, RESET_SEEN);
            close(e);
            return CONN_PASS;
        }
        let syn_dir = read_volatile(&raw const (*e).syn_dir);
        if !from_client && flags & TCP_SYN != 0 {
            // The server's SYN-ACK (or its SYN, in a simultaneous open)
            // moves the handshake on. The server's sequence numbers are
            // taken from a SYN-ACK that acknowledges the client's SYN (and
            // its data, with TCP Fast Open), the first one only: a blind
            // forger's, or an answer to another SYN on these addresses and
            // ports, leaves them unknown (0) for the real one, or for the
            // client's acknowledgment, to show.
            let answers = flags & TCP_ACK != 0 && acks_syn(p.ack, client_seq);
            if answers && client_ack == 0 {
                write_volatile(&raw mut (*e).client_ack, p.seq.wrapping_add(1));
                // On the client's side the handshake is done for this node.
                if syn_dir == DIR_EGRESS && (state == CONN_SYN_SENT || state == CONN_SYN_RECV) {
                    handshake(e);
                }
            }
            if state == CONN_SYN_SENT {
                write_volatile(&raw mut (*e).state, CONN_SYN_RECV);
            }
            return CONN_PASS;
        }
        if from_client && state == CONN_SYN_RECV && flags & TCP_ACK != 0 {
            write_volatile(&raw mut (*e).state, CONN_ESTABLISHED);
            // On the server's side the client's final ACK completes it.
            if syn_dir == DIR_INGRESS {
                handshake(e);
            }
        } else if state == CONN_SYN_RECV && flags & TCP_ACK != 0 && flags & TCP_SYN == 0 {
            // The server's first ACK after a simultaneous open.
            write_volatile(&raw mut (*e).state, CONN_ESTABLISHED);
        }
        if flags & TCP_FIN != 0 {
            let bit = if from_client { FIN_CLIENT } else { FIN_SERVER };
            // Atomic: the other side's FIN may be on the other CPU right now.
            let fins =
                atomic_or::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*e).fins, bit) | bit;
            if fins & (FIN_CLIENT | FIN_SERVER) == FIN_CLIENT | FIN_SERVER {
                close(e);
            } else {
                write_volatile(&raw mut (*e).state, CONN_CLOSING);
            }
        }
        CONN_PASS
    }
}

/// Records the handshake time of a connection in its pool.
///
/// # Safety
/// `e` must point into a live value of the connection table.
#[inline(always)]
unsafe fn handshake(e: *mut ConnEntry) {
    // SAFETY: caller guarantees `e` is valid.
    let (pool, syn) = unsafe {
        (
            read_volatile(&raw const (*e).pool),
            read_volatile(&raw const (*e).syn_ns),
        )
    };
    let Some(p) = TC_CONN_POOLS.get_ptr_mut(pool) else {
        return;
    };
    // The fine clock, as the SYN's time.
    let now = fine_ns();
    let rtt = now.saturating_sub(syn);
    // SAFETY: an array value, valid for this run; counters are atomic.
    // The maximum is a plain store: two handshakes finishing on two CPUs
    // in the same instant may keep the smaller one.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*p).rtt_count, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*p).rtt_sum_ns, rtt);
        if read_volatile(&raw const (*p).rtt_max_ns) < rtt {
            write_volatile(&raw mut (*p).rtt_max_ns, rtt);
        }
    }
}

/// Closes a connection: it stops counting, exactly once.
///
/// # Safety
/// `e` must point into a live value of the connection table.
#[inline(always)]
unsafe fn close(e: *mut ConnEntry) {
    // SAFETY: caller guarantees `e` is valid.
    unsafe {
        write_volatile(&raw mut (*e).state, CONN_CLOSED);
        let (_, won) = atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*e).counted,
            1,
            0,
        );
        if won {
            release(read_volatile(&raw const (*e).pool));
        }
    }
}

/// One connection of `pool` no longer counts.
#[inline(always)]
fn release(pool: u32) {
    if let Some(p) = TC_CONN_POOLS.get_ptr_mut(pool) {
        // SAFETY: an array value, valid for this run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*p).closed, 1) };
    }
}

/// The connection table had no room for an admitted connection.
#[inline(always)]
fn table_full(policy: &ChannelPolicy) {
    if let Some(p) = TC_CONN_POOLS.get_ptr_mut(policy.conn_pool) {
        // SAFETY: an array value, valid for this run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*p).table_full, 1) };
    }
}

/// A new connection refused (or, in monitor mode, one that would have been).
#[inline(always)]
fn count_refusal(pool: u32, monitor: bool) {
    if let Some(p) = TC_CONN_POOLS.get_ptr_mut(pool) {
        // SAFETY: an array value, valid for this run.
        unsafe {
            let counter = if monitor {
                &raw mut (*p).would_refuse
            } else {
                &raw mut (*p).refused
            };
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1);
        }
    }
}

/// Admits a new connection into the channel's pool, or refuses it: the
/// new-connection rate first (GCRA), then a slot under the concurrency
/// limit, taken by compare-and-swap on `opened` so that two CPUs cannot
/// both take the last one. In monitor mode every connection is admitted,
/// and those that would have been refused are counted.
#[inline(always)]
fn admit(policy: &ChannelPolicy) -> bool {
    let pool = policy.conn_pool;
    let Some(p) = TC_CONN_POOLS.get_ptr_mut(pool) else {
        // No pool: the agent always gives one; refuse rather than let a
        // connection past an uncounted limit.
        return false;
    };
    let monitor = policy.mode == MODE_MONITOR;
    // SAFETY (all accesses to `p`): an array value, valid for this run;
    // shared fields are read volatile and changed atomically.
    unsafe {
        let gc = match TC_CONN_GC.get(pool) {
            Some(g) => read_volatile(g),
            None => 0,
        };
        // Everything released was opened first: read the releases before
        // the openings, and the difference never runs below zero.
        let released = |p: *mut tc_common::ConnPool| read_volatile(&raw const (*p).closed) + gc;
        let mut refuse = false;
        if policy.conn_limit != 0 {
            let done = released(p);
            let open = read_volatile(&raw const (*p).opened).saturating_sub(done);
            refuse = open >= policy.conn_limit as u64;
        }
        let mut rate_charged = false;
        if !refuse && policy.conn_cost_ns != 0 {
            rate_charged = charge_once(
                &raw mut (*p).rate_tat,
                fine_ns(),
                policy.conn_cost_ns,
                policy.conn_tau_ns,
            );
            refuse = !rate_charged;
        }
        if !refuse && policy.conn_limit != 0 {
            refuse = true;
            let mut opened = read_volatile(&raw const (*p).opened);
            for _ in 0..SLOT_TRIES {
                // The CAS succeeds only if `opened` has not moved since it
                // was read, and then every release read here is one of
                // those openings: the count is exact, never past the limit.
                let open = opened.saturating_sub(released(p));
                if open >= policy.conn_limit as u64 {
                    break;
                }
                let (seen, ok) = atomic_cxchg::<
                    u64,
                    { AtomicOrdering::SeqCst },
                    { AtomicOrdering::SeqCst },
                >(&raw mut (*p).opened, opened, opened + 1);
                if ok {
                    return true;
                }
                opened = seen;
            }
            if rate_charged {
                // Refused after all: the connection costs no rate.
                atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
                    &raw mut (*p).rate_tat,
                    policy.conn_cost_ns.wrapping_neg(),
                );
            }
        }
        if refuse {
            count_refusal(pool, monitor);
            if !monitor {
                return false;
            }
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*p).opened, 1);
        true
    }
}
