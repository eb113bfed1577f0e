//! Differential packet fuzzing through BPF_PROG_TEST_RUN: random and
//! mutated frames (truncations at every length, bad IHL and versions,
//! random ethertypes, VLAN stacks of 0-3 tags, IPv6 extension chains of
//! 0-12 headers, first and later fragments, random ports and protocols) go
//! through the real programs (tc ingress, tc egress, XDP), and each one's
//! channel, counters and verdict are compared with the Rust reference in
//! `tc_tests::reference`. The program must never return anything but its
//! pass or drop code.
//!
//! Each frame runs once; its channel is read from the counters it moved
//! (the node-wide ones, and the `matched_pkts` of the channel the reference
//! expects; all of them only to explain a mismatch). Two phases:
//! - classification: [`DEFAULT_FRAMES`] frames against every channel but
//!   `tiny`, whose limits never bite, so every verdict is PASS except for
//!   later fragments following a dropped first;
//! - verdicts: short bursts at `tiny` (1 packet/s, burst 64) from a fresh
//!   bucket, mixed with other frames: its first 64 packets pass and the
//!   rest drop, later fragments follow their first fragment's verdict.
//!
//! Frames are checked against the documented rules; a frame they do not
//! explain fails the test with its bytes, what the reference expected and
//! every counter it moved. (The three departures this fuzzer found, an
//! IPv6 fragment keyed on a next header its later fragments need not
//! repeat, an IPv4 header shorter than its IHL, and a TCP header read from
//! 16 bytes behind extension headers, are fixed in the datapath.)
//!
//! `TC_FUZZ_FRAMES` scales the first phase, `TC_FUZZ_SEED` fixes the seed
//! (printed, and in every mismatch report).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use tc_agent::{
    datapath::{Datapath, TC_EGRESS, TC_INGRESS, XDP_INGRESS},
    policy::{compile::compile, Direction, Policy},
};
use tc_common::{
    BucketState, ChannelCounters, FragEntry, FragKey, GlobalCounters, BUCKETS, COUNTERS, FRAGS,
    GLOBAL, MAX_CHANNELS,
};
use tc_tests::reference::{Class, Expect, Frag, Parsed, Reference};

/// Frames of the classification phase in the bounded run (`cargo test`).
const DEFAULT_FRAMES: usize = 100_000;
/// Bursts of the verdict phase, and frames in each.
const BURSTS: usize = 24;
const BURST_FRAMES: usize = 300;

/// Channel 0: the only one whose limit bites (the verdict phase).
const TINY: usize = 0;
/// Its packet burst.
const TINY_BURST: u32 = 64;

const POLICY: &str = r#"
endpoints:
  tiny-src: [192.0.2.0/24, "2001:db8:ff::/48"]
  web: [198.18.1.0/24, "2001:db8:1::/64"]
  web-host: [198.18.1.7, "2001:db8:1::7"]
  db: [198.18.2.0/28, "2001:db8:2::/120"]
  lan: [198.18.0.0/16, "2001:db8::/32"]
  ext: [10.0.0.0/8, "fd00::/8"]
channels:
  - name: tiny
    from: tiny-src
    protocol: udp
    ports: ["7000-7100"]
    limit: {packets: 1, packet_burst: 64}
  - name: tiny-monitor
    from: tiny-src
    protocol: tcp
    limit: {packets: 1, packet_burst: 64}
    mode: monitor
  - name: host-tcp
    from: web-host
    to: db
    protocol: tcp
    ports: [22, 443, "8000-8100"]
  - name: web-db-tcp
    from: web
    to: db
    protocol: tcp
    ports: [5432, "1024-2047"]
    limit: {bandwidth: 400Gbit, burst: 1GiB, packets: 100000000, packet_burst: 100000000}
  - name: web-db-udp
    from: web
    to: db
    protocol: udp
    ports: [53, "5000-5999", 65535]
  - name: dns
    to: db
    ports: [53]
  - name: icmp-lan
    from: lan
    protocol: icmp
  - name: web-any
    from: web
    to: [lan, ext]
    limit: {packets: 100000000, packet_burst: 100000000}
  - name: lan-monitor
    from: lan
    to: lan
    limit: {packets: 1, packet_burst: 64}
    mode: monitor
  - name: ext-high
    from: ext
    protocol: tcp
    ports: ["32768-65535"]
  - name: ext-udp-v6
    from: "fd00::/8"
    to: "2001:db8::/32"
    protocol: udp
  - name: db-out-udp
    direction: egress
    from: db
    to: ext
    protocol: udp
    ports: ["1-1023"]
  - name: out-delay
    direction: egress
    from: lan
    protocol: tcp
    action: delay
    limit: {bandwidth: 400Gbit, burst: 1GiB}
  - name: out-mark
    direction: egress
    to: lan
    protocol: udp
    action: mark
    limit: {bandwidth: 400Gbit, burst: 1GiB}
  - name: out-icmp
    direction: egress
    to: ext
    protocol: icmp
  - name: out-half
    direction: egress
    to: [0.0.0.0/1, "::/1"]
"#;

/// TC_ACT_UNSPEC as the kernel reports it, and TC_ACT_SHOT.
const TC_PASS: u32 = -1i32 as u32;
const TC_DROP: u32 = 2;
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

/// A program entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// `tc_ingress`: ingress channels.
    TcIngress,
    /// `tc_egress`: egress channels.
    TcEgress,
    /// `xdp_ingress`: ingress channels; takes frames the skb runner refuses.
    Xdp,
}

impl Entry {
    fn dir(self) -> Direction {
        match self {
            Entry::TcEgress => Direction::Egress,
            _ => Direction::Ingress,
        }
    }

    /// (pass, drop) return codes.
    fn codes(self) -> (u32, u32) {
        match self {
            Entry::Xdp => (XDP_PASS, XDP_DROP),
            _ => (TC_PASS, TC_DROP),
        }
    }
}

/// splitmix64.
struct Rng(
    /// The state: the seed, advanced per draw.
    u64,
);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` percent.
    fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// Frames.

/// Where a generated frame is fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FragSpec {
    /// A whole datagram.
    None,
    /// Offset 0, more fragments to come.
    First,
    /// A later fragment at this offset (8-byte units, non-zero).
    Later(u16),
}

/// A frame before it is built: everything the generator chooses.
#[derive(Debug, Clone)]
struct Spec {
    /// Source address; the family decides IPv4 or IPv6.
    src: IpAddr,
    /// Destination address, same family.
    dst: IpAddr,
    /// Upper-layer protocol.
    proto: u8,
    /// TCP/UDP destination port.
    dport: u16,
    /// VLAN TPIDs, outermost first (a third tag makes it non-IP).
    vlans: Vec<u16>,
    /// IPv4 option words (IHL = 5 + this).
    opts: u8,
    /// Fragmentation: IPv4 flags, or an IPv6 fragment header.
    frag: FragSpec,
    /// IPv4 (low 16 bits) or IPv6 fragment identification.
    id: u32,
    /// IPv6 extension headers before the transport header: (next-header
    /// kind, its length byte). A fragment header (44) is placed by `frag`.
    ext: Vec<(u8, u8)>,
    /// Where in `ext` the IPv6 fragment header goes, when `frag` is not None.
    frag_at: usize,
    /// Payload bytes after the transport header.
    payload: usize,
    /// ECN bits.
    ecn: u8,
}

fn l4(proto: u8, dport: u16, rng: &mut Rng) -> Vec<u8> {
    match proto {
        6 => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[12] = 5 << 4;
            h
        }
        17 => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h
        }
        1 | 58 => vec![8, 0, 0, 0, 0, 1, 0, 1],
        _ => (0..8).map(|_| rng.next() as u8).collect(),
    }
}

/// Builds the frame `s` describes.
fn build(s: &Spec, rng: &mut Rng) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, tpid) in s.vlans.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    let later = matches!(s.frag, FragSpec::Later(_));
    match (s.src, s.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let l3 = f.len();
            let ihl = 5 + s.opts as usize;
            f.push(0x40 | ihl as u8);
            f.push(s.ecn & 3);
            f.extend_from_slice(&[0, 0]); // total length, below
            f.extend_from_slice(&(s.id as u16).to_be_bytes());
            let flags: u16 = match s.frag {
                FragSpec::None => 0x4000,
                FragSpec::First => 0x2000,
                // Later fragments: more to come, or the last.
                FragSpec::Later(off) => off | if rng.pct(50) { 0x2000 } else { 0 },
            };
            f.extend_from_slice(&flags.to_be_bytes());
            f.extend_from_slice(&[64, s.proto, 0, 0]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
            for _ in 0..s.opts {
                f.extend_from_slice(&[1, 1, 1, 1]); // NOP options
            }
            if !later {
                f.extend(l4(s.proto, s.dport, rng));
            }
            f.extend((0..s.payload).map(|_| rng.next() as u8));
            let total = (f.len() - l3) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let l3 = f.len();
            f.extend_from_slice(&[0x60 | (s.ecn >> 2), (s.ecn & 3) << 4, 0, 0, 0, 0]);
            // The chain: extension kinds, the fragment header spliced in.
            let mut chain: Vec<(u8, u8)> = s.ext.clone();
            if s.frag != FragSpec::None {
                chain.insert(s.frag_at.min(chain.len()), (44, 0));
            }
            let first_next = chain.first().map_or(s.proto, |e| e.0);
            f.push(first_next);
            f.push(64);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&dst.octets());
            for (i, &(kind, len)) in chain.iter().enumerate() {
                let next = chain.get(i + 1).map_or(s.proto, |e| e.0);
                match kind {
                    44 => {
                        let (off, m) = match s.frag {
                            FragSpec::Later(off) => (off << 3, rng.pct(50) as u16),
                            _ => (0, 1),
                        };
                        f.extend_from_slice(&[next, 0]);
                        f.extend_from_slice(&(off | m).to_be_bytes());
                        f.extend_from_slice(&s.id.to_be_bytes());
                        if later {
                            break;
                        }
                    }
                    51 => {
                        f.extend_from_slice(&[next, len]);
                        f.resize(f.len() + (len as usize + 2) * 4 - 2, 0);
                    }
                    _ => {
                        f.extend_from_slice(&[next, len]);
                        f.resize(f.len() + (len as usize + 1) * 8 - 2, 0);
                    }
                }
            }
            if !later {
                f.extend(l4(s.proto, s.dport, rng));
            }
            f.extend((0..s.payload).map(|_| rng.next() as u8));
            let plen = (f.len() - l3 - 40) as u16;
            f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
        }
        _ => unreachable!("one family"),
    }
    f
}

/// Frame generator: addresses around the policy's prefixes and their
/// edges, ports around its ranges, and the shapes the parser must survive.
struct Gen {
    /// Randomness, from the printed seed.
    rng: Rng,
    /// Next fragment identification: each datagram gets its own.
    next_id: u32,
    /// Recent first fragments, whose later fragments may follow.
    firsts: Vec<Spec>,
}

const PORTS: [u16; 24] = [
    0, 1, 22, 53, 443, 1023, 1024, 2047, 2048, 5000, 5432, 5999, 6000, 6999, 7000, 7100, 7101,
    8000, 8100, 8101, 32767, 32768, 65534, 65535,
];

impl Gen {
    fn v4(&mut self, tiny: bool) -> Ipv4Addr {
        let r = &mut self.rng;
        let x = r.next() as u8;
        if tiny {
            return Ipv4Addr::new(192, 0, 2, x);
        }
        match r.below(12) {
            0 | 1 => Ipv4Addr::new(198, 18, 1, x),
            2 => Ipv4Addr::new(198, 18, 1, 7),
            3 | 4 => Ipv4Addr::new(198, 18, 2, r.below(17) as u8),
            5 => Ipv4Addr::new(198, 18, x, r.next() as u8),
            6 => Ipv4Addr::new(198, r.pick(&[17, 19]), x, 1),
            7 | 8 => Ipv4Addr::new(10, x, 0, r.next() as u8),
            9 => r.pick(&[
                Ipv4Addr::new(0, 0, 0, 0),
                Ipv4Addr::new(127, 255, 255, 255),
                Ipv4Addr::new(128, 0, 0, 0),
                Ipv4Addr::new(255, 255, 255, 255),
                Ipv4Addr::new(11, 0, 0, 0),
                Ipv4Addr::new(9, 255, 255, 255),
            ]),
            _ => loop {
                // Anywhere but the verdict phase's sources.
                let a = Ipv4Addr::from(r.next() as u32);
                if a.octets()[..3] != [192, 0, 2] {
                    break a;
                }
            },
        }
    }

    fn v6(&mut self, tiny: bool) -> Ipv6Addr {
        let r = &mut self.rng;
        let x = r.next() as u16;
        if tiny {
            return Ipv6Addr::new(0x2001, 0xdb8, 0xff, x, 0, 0, 0, r.next() as u16);
        }
        match r.below(12) {
            0 | 1 => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, x, r.next() as u16),
            2 => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7),
            3 | 4 => Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, r.below(0x101) as u16),
            5 => Ipv6Addr::new(0x2001, 0xdb8, r.pick(&[x, 0xfe, 3]), 0, 0, 0, 0, 1),
            6 => Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, x),
            7 | 8 => Ipv6Addr::new(0xfd00 | (x & 0xff), x, 0, 0, 0, 0, 0, 1),
            9 => r.pick(&[
                Ipv6Addr::UNSPECIFIED,
                Ipv6Addr::LOCALHOST,
                Ipv6Addr::new(
                    0x7fff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
                ),
                Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0),
                Ipv6Addr::new(0xfe00, 0, 0, 0, 0, 0, 0, 1),
            ]),
            _ => loop {
                let a = Ipv6Addr::from((r.next() as u128) << 64 | r.next() as u128);
                if a.segments()[..3] != [0x2001, 0xdb8, 0xff] {
                    break a;
                }
            },
        }
    }

    /// A well-formed frame; `tiny` aims it at the `tiny` channel.
    fn spec(&mut self, tiny: bool) -> Spec {
        let v6 = self.rng.pct(50);
        let (src, dst) = if v6 {
            (IpAddr::V6(self.v6(tiny)), IpAddr::V6(self.v6(false)))
        } else {
            (IpAddr::V4(self.v4(tiny)), IpAddr::V4(self.v4(false)))
        };
        let r = &mut self.rng;
        let proto = if tiny && r.pct(80) {
            17
        } else {
            let other = r.next() as u8;
            r.pick(&[6, 6, 6, 17, 17, 17, 1, 58, 47, 132, 0, other])
        };
        let dport = if tiny && r.pct(80) {
            7000 + r.below(101) as u16
        } else if r.pct(80) {
            r.pick(&PORTS)
        } else {
            r.next() as u16
        };
        let vlans = match r.below(20) {
            0..=14 => vec![],
            15 | 16 => vec![r.pick(&[0x8100, 0x88a8])],
            17 | 18 => vec![0x88a8, 0x8100],
            _ => vec![0x88a8, 0x8100, r.pick(&[0x8100, 0x88a8])],
        };
        let ext_count = match r.below(10) {
            0..=5 => 0,
            6 | 7 => 1 + r.below(3),
            _ => r.below(13),
        };
        let ext = (0..ext_count)
            .map(|_| {
                let kind = r.pick(&[0, 43, 60, 60, 51]);
                let len = r.pick(&[0, 0, 0, 1, 1, 2, 5]);
                (kind, len)
            })
            .collect();
        let frag = match r.below(10) {
            0 => FragSpec::First,
            1 => FragSpec::Later(1 + r.below(0x1ffe) as u16),
            _ => FragSpec::None,
        };
        self.next_id = self.next_id.wrapping_add(1);
        let payload = match r.below(4) {
            0 => 0,
            1 => r.below(16),
            2 => r.below(200),
            _ => r.below(1400),
        };
        let frag_at = match r.below(4) {
            // Usually right before the transport header, as a stack sends it.
            0 => r.below(ext_count + 1),
            _ => ext_count,
        };
        Spec {
            src,
            dst,
            proto,
            dport,
            vlans,
            opts: if r.pct(15) { r.below(11) as u8 } else { 0 },
            frag,
            id: self.next_id,
            ext,
            frag_at,
            payload,
            ecn: r.below(4) as u8,
        }
    }

    /// A later fragment of a recent first fragment, if there is one.
    fn follower(&mut self) -> Option<Spec> {
        if self.firsts.is_empty() {
            return None;
        }
        let mut s = self.firsts[self.rng.below(self.firsts.len())].clone();
        s.frag = FragSpec::Later(1 + self.rng.below(0x1ffe) as u16);
        s.payload = self.rng.below(1400);
        Some(s)
    }

    /// A frame, well-formed or mutated.
    fn frame(&mut self, tiny: bool) -> Vec<u8> {
        let spec = if self.rng.pct(8) {
            self.follower().unwrap_or_else(|| self.spec(tiny))
        } else {
            self.spec(tiny)
        };
        if spec.frag == FragSpec::First {
            if self.firsts.len() >= 64 {
                let i = self.rng.below(64);
                self.firsts.swap_remove(i);
            }
            self.firsts.push(spec.clone());
        }
        let mut f = build(&spec, &mut self.rng);
        self.mutate(&mut f, &spec);
        f
    }

    /// Offset of the innermost ethertype of a built frame.
    fn ethertype_at(spec: &Spec) -> usize {
        12 + 4 * spec.vlans.len()
    }

    fn mutate(&mut self, f: &mut Vec<u8>, spec: &Spec) {
        let r = &mut self.rng;
        let l3 = Self::ethertype_at(spec) + 2;
        match r.below(100) {
            0..=44 => {}
            45..=59 => f.truncate(r.below(f.len())),
            60..=69 => {
                // A few random bytes, mostly in the headers.
                for _ in 0..1 + r.below(4) {
                    let span = if r.pct(80) {
                        f.len().min(l3 + 80)
                    } else {
                        f.len()
                    };
                    let at = r.below(span);
                    f[at] = r.next() as u8;
                }
            }
            70..=76 if f.len() > l3 => {
                // Bad IHL or version.
                let b = &mut f[l3];
                *b = if r.pct(60) {
                    (*b & 0xf0) | r.below(16) as u8
                } else {
                    (r.below(16) as u8) << 4 | (*b & 0x0f)
                };
            }
            77..=81 => {
                let at = if r.pct(50) { 12 } else { l3 - 2 };
                let other = r.next() as u16;
                let t: u16 = r.pick(&[0x8100, 0x88a8, 0x0806, 0x86dd, 0x0800, other]);
                f[at..at + 2].copy_from_slice(&t.to_be_bytes());
            }
            82..=85 if f.len() > l3 + 6 && spec.src.is_ipv6() => {
                let other = r.next() as u8;
                f[l3 + 6] = r.pick(&[0, 43, 44, 51, 60, 6, 17, 58, other]);
            }
            86..=88 => {
                // Random bytes, sometimes behind an IP ethertype.
                let n = r.below(120);
                *f = (0..n).map(|_| r.next() as u8).collect();
                if n >= 14 && r.pct(70) {
                    let t: u16 = r.pick(&[0x0800, 0x86dd]);
                    f[12..14].copy_from_slice(&t.to_be_bytes());
                    if n > 14 {
                        f[14] = (f[14] & 0x0f) | if t == 0x0800 { 0x40 } else { 0x60 };
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The datapath, observed.

struct Fixture {
    /// The loaded object with the policy applied.
    dp: Datapath,
    /// The live generation: channel `i` is counter slot `generation * MAX_CHANNELS + i`.
    generation: u32,
}

impl Fixture {
    fn new(policy: &Policy) -> Self {
        let compiled = compile(policy).expect("compiles");
        let mut dp = Datapath::load(None, 4096).expect("eBPF object loads and passes the verifier");
        let generation = dp
            .apply(&compiled, &vec![None; policy.channels.len()])
            .expect("applies")
            .generation;
        Self { dp, generation }
    }

    fn run(&self, entry: Entry, frame: &[u8]) -> Result<u32, ProgramError> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let prog = |name| self.dp.ebpf.program(name).expect("program");
        match entry {
            Entry::Xdp => {
                let p: &Xdp = prog(XDP_INGRESS).try_into().expect("xdp");
                p.test_run(opts)
            }
            Entry::TcIngress | Entry::TcEgress => {
                let name = if entry == Entry::TcIngress {
                    TC_INGRESS
                } else {
                    TC_EGRESS
                };
                let p: &SchedClassifier = prog(name).try_into().expect("tc");
                p.test_run(opts)
            }
        }
        .map(|r| r.return_value)
    }

    fn global(&self) -> GlobalCounters {
        let m: PerCpuArray<_, GlobalCounters> =
            PerCpuArray::try_from(self.dp.ebpf.map(GLOBAL).expect("map")).expect("percpu");
        m.get(&0, 0)
            .expect("global counters")
            .iter()
            .fold(GlobalCounters::default(), |mut a, c| {
                a.add(c);
                a
            })
    }

    fn channel(&self, i: usize) -> ChannelCounters {
        let m: PerCpuArray<_, ChannelCounters> =
            PerCpuArray::try_from(self.dp.ebpf.map(COUNTERS).expect("map")).expect("percpu");
        m.get(&(self.generation * MAX_CHANNELS + i as u32), 0)
            .expect("channel counters")
            .iter()
            .fold(ChannelCounters::default(), |mut a, c| {
                a.add(c);
                a
            })
    }

    /// A fresh bucket for channel `i`: its whole burst available.
    fn reset_bucket(&mut self, i: usize) {
        let slot = self.generation * MAX_CHANNELS + i as u32;
        let mut m: Array<_, BucketState> =
            Array::try_from(self.dp.ebpf.map_mut(BUCKETS).expect("map")).expect("array");
        m.set(slot, BucketState::default(), 0)
            .expect("bucket reset");
    }

    /// Empties the fragment table (before it fills: a full LRU table
    /// pushes out first fragments, which the reference does not model).
    fn clear_frags(&mut self) {
        let mut m: BpfHashMap<_, FragKey, FragEntry> =
            BpfHashMap::try_from(self.dp.ebpf.map_mut(FRAGS).expect("map")).expect("hash");
        let keys: Vec<FragKey> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
    }
}

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// The counters one frame may move, as the reference predicts them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// Every frame counts here, once.
    seen_pkts: u64,
    /// Its length (no GSO here).
    seen_bytes: u64,
    /// IP in no channel.
    unclassified_pkts: u64,
    /// Their lengths.
    unclassified_bytes: u64,
    /// Not IP.
    non_ip_pkts: u64,
    /// Headers cut short or inconsistent.
    malformed_pkts: u64,
    /// Later fragments.
    fragment_pkts: u64,
    /// Later fragments whose first was not seen.
    fragment_orphan_pkts: u64,
    /// Ports or protocol hidden (not later fragments).
    no_ports_pkts: u64,
    /// Must stay 0: a lookup failed.
    fail_open_pkts: u64,
}

impl From<GlobalCounters> for Seen {
    fn from(g: GlobalCounters) -> Self {
        Self {
            seen_pkts: g.seen_pkts,
            seen_bytes: g.seen_bytes,
            unclassified_pkts: g.unclassified_pkts,
            unclassified_bytes: g.unclassified_bytes,
            non_ip_pkts: g.non_ip_pkts,
            malformed_pkts: g.malformed_pkts,
            fragment_pkts: g.fragment_pkts,
            fragment_orphan_pkts: g.fragment_orphan_pkts,
            no_ports_pkts: g.no_ports_pkts,
            fail_open_pkts: g.fail_open_pkts,
        }
    }
}

/// What the verdict of a frame must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Passed (TC_ACT_UNSPEC / XDP_PASS).
    Pass,
    /// Dropped (TC_ACT_SHOT / XDP_DROP).
    Drop,
    /// Either (`tiny` outside the verdict phase, or a burst that took over
    /// a second, in which its bucket refilled).
    Any,
}

/// The differential run: datapath, references, and what they have counted.
struct Run {
    /// The real programs and maps.
    fx: Fixture,
    /// The reference by the documented rules.
    documented: Reference,
    /// Node-wide counters as last read (and checked).
    global: Seen,
    /// `matched_pkts` and `dropped_pkts` per channel as last checked.
    channels: Vec<(u64, u64)>,
    /// First fragments handed to the datapath since its table was emptied.
    firsts: usize,
    /// Packets `tiny`'s bucket has been charged since its reset; `None`
    /// outside the verdict phase.
    tiny_used: Option<u32>,
    /// The first mismatches, described in full.
    mismatches: Vec<String>,
    /// Mismatches by kind, and how many.
    kinds: HashMap<String, usize>,
    /// Frames run per entry point, and those the test runner refused.
    ran: HashMap<&'static str, usize>,
    /// Frames whose verdict was checked to be DROP.
    drops: usize,
    /// The seed, for reports.
    seed: u64,
}

impl Run {
    fn new(seed: u64) -> Self {
        let policy = Policy::parse(POLICY, "fuzz.yaml").expect("valid policy");
        let fx = Fixture::new(&policy);
        let global = fx.global().into();
        let channels = vec![(0, 0); policy.channels.len()];
        Self {
            fx,
            documented: Reference::new(policy),
            global,
            channels,
            firsts: 0,
            tiny_used: None,
            mismatches: Vec::new(),
            kinds: HashMap::new(),
            ran: HashMap::new(),
            drops: 0,
            seed,
        }
    }

    fn name(&self, c: Class) -> String {
        match c {
            Class::Channel(i) => format!("channel {}", self.documented.policy.channels[i].name),
            other => format!("{other:?}"),
        }
    }

    /// Runs one frame through `entry` (or XDP, where the skb runner refuses
    /// a frame shorter than its IP header) and checks it.
    fn frame(&mut self, frame: &[u8], entry: Entry, started: Option<Instant>) {
        let (entry, ret) = match self.fx.run(entry, frame) {
            Ok(r) => (entry, r),
            Err(_) if entry != Entry::Xdp => match self.fx.run(Entry::Xdp, frame) {
                Ok(r) => {
                    *self.ran.entry("tc refused, run as xdp").or_default() += 1;
                    (Entry::Xdp, r)
                }
                Err(e) => return self.refused(frame, e),
            },
            Err(e) => return self.refused(frame, e),
        };
        *self
            .ran
            .entry(match entry {
                Entry::TcIngress => "tc ingress",
                Entry::TcEgress => "tc egress",
                Entry::Xdp => "xdp",
            })
            .or_default() += 1;
        let dir = entry.dir();
        let doc = self.documented.expect(frame, dir);
        let (pass, drop) = entry.codes();
        let dropped = if ret == pass {
            false
        } else if ret == drop {
            true
        } else {
            let what = format!("{entry:?} returned {ret:#x}: neither pass nor drop (an abort?)");
            self.mismatch("unexpected return code", what, frame, &doc);
            false
        };
        let got: Seen = self.fx.global().into();
        let mut read = HashMap::new();
        let ok = self.agrees(&doc, frame, dropped, started, &got, &mut read);
        if !ok {
            self.explain(frame, entry, &doc, dropped, &got);
        }
        let e = &doc;
        if ok && self.want(e, started) == Want::Drop {
            self.drops += 1;
        }
        if ok {
            self.global = got;
            if let Class::Channel(i) = e.class {
                self.channels[i].0 += 1;
                self.channels[i].1 += dropped as u64;
                if let (Some(used), false) = (self.tiny_used.as_mut(), dropped || i != TINY) {
                    *used += 1;
                }
            }
        }
        if matches!(&e.parsed, Parsed::Ip(p) if p.frag == Frag::First) {
            self.firsts += 1;
        }
        self.documented.record(&doc, dir, dropped);
    }

    fn refused(&mut self, frame: &[u8], e: ProgramError) {
        // The runners need at least an Ethernet header.
        assert!(
            frame.len() < 14,
            "seed {}: the test runner refused {} ({e})",
            self.seed,
            hex(frame)
        );
        *self
            .ran
            .entry("refused (shorter than Ethernet)")
            .or_default() += 1;
    }

    fn want(&self, e: &Expect, started: Option<Instant>) -> Want {
        match (e.follows, e.class) {
            (Some(true), _) => Want::Drop,
            (Some(false), _) => Want::Pass,
            (None, Class::Channel(TINY)) => match self.tiny_used {
                None => Want::Any,
                // The bucket refills a packet a second: a burst that took
                // a second or more may pass more.
                Some(_) if started.is_some_and(|t| t.elapsed().as_millis() >= 900) => Want::Any,
                Some(used) if used < TINY_BURST => Want::Pass,
                Some(_) => Want::Drop,
            },
            _ => Want::Pass,
        }
    }

    /// Whether the verdict and the counters the frame moved (`got`, and
    /// its channel's, read into `read` once) are what `e` predicts.
    fn agrees(
        &self,
        e: &Expect,
        frame: &[u8],
        dropped: bool,
        started: Option<Instant>,
        got: &Seen,
        read: &mut HashMap<usize, ChannelCounters>,
    ) -> bool {
        match self.want(e, started) {
            Want::Pass if dropped => return false,
            Want::Drop if !dropped => return false,
            _ => {}
        }
        let mut want = self.global;
        want.seen_pkts += 1;
        want.seen_bytes += frame.len() as u64;
        match e.class {
            Class::NonIp => want.non_ip_pkts += 1,
            Class::Malformed => want.malformed_pkts += 1,
            Class::Unclassified => {
                want.unclassified_pkts += 1;
                want.unclassified_bytes += frame.len() as u64;
            }
            Class::Channel(_) => {}
        }
        if matches!(&e.parsed, Parsed::Ip(p) if p.frag == Frag::Later) {
            want.fragment_pkts += 1;
        }
        want.fragment_orphan_pkts += e.orphan as u64;
        want.no_ports_pkts += e.no_ports as u64;
        if *got != want {
            return false;
        }
        match e.class {
            Class::Channel(i) => {
                let c = *read.entry(i).or_insert_with(|| self.fx.channel(i));
                let (m, d) = self.channels[i];
                c.matched_pkts == m + 1 && c.dropped_pkts == d + dropped as u64
            }
            _ => true,
        }
    }

    /// Describes a frame neither reference predicted: every counter it
    /// moved. Then takes the counters as they are, to go on.
    fn explain(&mut self, frame: &[u8], entry: Entry, doc: &Expect, dropped: bool, got: &Seen) {
        let mut moved = Vec::new();
        for i in 0..self.channels.len() {
            let c = self.fx.channel(i);
            if c.matched_pkts != self.channels[i].0 {
                moved.push(format!(
                    "channel {} (+{})",
                    self.documented.policy.channels[i].name,
                    c.matched_pkts - self.channels[i].0
                ));
            }
            self.channels[i] = (c.matched_pkts, c.dropped_pkts);
        }
        let g = self.global;
        for (name, before, after) in [
            ("unclassified", g.unclassified_pkts, got.unclassified_pkts),
            ("malformed", g.malformed_pkts, got.malformed_pkts),
            ("non-ip", g.non_ip_pkts, got.non_ip_pkts),
            ("fragment", g.fragment_pkts, got.fragment_pkts),
            ("orphan", g.fragment_orphan_pkts, got.fragment_orphan_pkts),
            ("no-ports", g.no_ports_pkts, got.no_ports_pkts),
            ("fail-open", g.fail_open_pkts, got.fail_open_pkts),
        ] {
            if after != before {
                moved.push(format!("{name} (+{})", after - before));
            }
        }
        let describe = |e: &Expect| {
            format!(
                "{}{}{}{}",
                self.name(e.class),
                if e.orphan { ", orphan" } else { "" },
                if e.no_ports { ", no-ports" } else { "" },
                match e.follows {
                    Some(d) => format!(", follows a first fragment (dropped: {d})"),
                    None => String::new(),
                }
            )
        };
        let kind = format!(
            "expected {}, observed {}{}",
            describe(doc),
            moved.join(", "),
            if dropped { ", DROP" } else { "" }
        );
        let what = format!("{entry:?}");
        self.mismatch(&kind, what, frame, doc);
        self.global = *got;
    }

    fn mismatch(&mut self, kind: &str, what: String, frame: &[u8], e: &Expect) {
        *self.kinds.entry(kind.to_string()).or_default() += 1;
        if self.mismatches.len() < 12 {
            self.mismatches.push(format!(
                "{kind}: {what}\n  frame ({} bytes): {}\n  reference: {:?}",
                frame.len(),
                hex(frame),
                e.parsed
            ));
        }
    }

    /// Frames the programs ran (the runners refuse those shorter than Ethernet).
    fn executed(&self) -> usize {
        ["tc ingress", "tc egress", "xdp"]
            .iter()
            .map(|k| self.ran.get(k).copied().unwrap_or(0))
            .sum()
    }

    /// Keeps the fragment table far from full (see [`Fixture::clear_frags`]).
    fn maybe_clear_frags(&mut self) {
        if self.firsts >= 8_000 {
            self.fx.clear_frags();
            self.documented.clear_frags();
            self.firsts = 0;
        }
    }
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn datapath_agrees_with_the_reference_on_random_and_mutated_frames() {
    let seed = env_num("TC_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64
    });
    let frames: usize = env_num("TC_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    println!("seed {seed} (TC_FUZZ_SEED), {frames} frames (TC_FUZZ_FRAMES)");
    let start = Instant::now();
    let mut run = Run::new(seed);
    let mut gen = Gen {
        rng: Rng(seed),
        next_id: 0,
        firsts: Vec::new(),
    };
    let entry = |g: &mut Gen| g.rng.pick(&[Entry::TcIngress, Entry::TcEgress, Entry::Xdp]);

    // Classification.
    while run.executed() < frames {
        if gen.rng.below(1000) == 0 {
            // Every truncation of one frame, through XDP (the skb runner
            // refuses IP frames shorter than their header).
            let f = build(&gen.spec(false), &mut gen.rng);
            for len in 0..=f.len() {
                run.frame(&f[..len], Entry::Xdp, None);
            }
        } else {
            let f = gen.frame(false);
            let e = entry(&mut gen);
            run.frame(&f, e, None);
        }
        run.maybe_clear_frags();
    }
    let classified = start.elapsed();

    // Verdicts: bursts at `tiny` from a fresh bucket.
    let mut tiny_frames = 0;
    for _ in 0..BURSTS {
        run.fx.reset_bucket(TINY);
        run.tiny_used = Some(0);
        let t = Instant::now();
        for _ in 0..BURST_FRAMES {
            let tiny = gen.rng.pct(80);
            let f = gen.frame(tiny);
            let e = entry(&mut gen);
            run.frame(&f, e, Some(t));
        }
        tiny_frames += run.tiny_used.unwrap_or(0);
        run.maybe_clear_frags();
    }
    run.tiny_used = None;

    let total = run.executed();
    println!(
        "{total} frames run in {:.1?} (classification {:.1?}); verdicts: {tiny_frames} passed and {} dropped in {BURSTS} bursts at tiny; per entry: {:?}",
        start.elapsed(),
        classified,
        run.drops,
        run.ran
    );
    if !run.mismatches.is_empty() {
        let mut kinds: Vec<_> = run.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        panic!(
            "seed {seed}: the datapath and the reference disagree\n{}\n\nexamples:\n{}",
            kinds
                .iter()
                .map(|(k, n)| format!("  {n} x {k}"))
                .collect::<Vec<_>>()
                .join("\n"),
            run.mismatches.join("\n")
        );
    }
    assert!(total >= frames, "only {total} frames ran");
    assert!(
        tiny_frames >= BURSTS as u32 * TINY_BURST * 9 / 10 && run.drops >= BURSTS * 10,
        "the verdict phase hardly reached the limit: {tiny_frames} passed, {} dropped",
        run.drops
    );
}
