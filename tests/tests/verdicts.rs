//! Verdicts of the real eBPF programs on crafted packets, through
//! BPF_PROG_TEST_RUN: build the packet, seed the maps with a compiled
//! policy, assert on the return value and on the counters.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use tc_agent::{
    datapath::{Datapath, TC_EGRESS, TC_INGRESS, XDP_INGRESS},
    policy::{compile::compile, Policy},
};
use tc_common::{ChannelCounters, GlobalCounters};
use tc_tests::packet::{self, ICMP, ICMPV6, TCP, UDP};

/// TC_ACT_UNSPEC as the kernel reports it: pass on to the next program.
const PASS: u32 = -1i32 as u32;
/// TC_ACT_SHOT.
const DROP: u32 = 2;
const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

const POLICY: &str = r#"
endpoints:
  web: [198.18.1.0/24, "2001:db8:1::/64"]
  db:  [198.18.2.10/32, "2001:db8:2::10/128"]
channels:
  - name: web-to-db
    from: web
    to: db
    protocol: tcp
    ports: [5432, "8000-8100"]
    limit: {packets: 1, packet_burst: 64}
  - name: web-udp-monitor
    from: web
    protocol: udp
    limit: {packets: 1, packet_burst: 64}
    mode: monitor
  - name: icmp
    protocol: icmp
  - name: web-any
    from: web
  - name: egress-all
    direction: egress
"#;

struct Fixture {
    /// The process's shared datapath (`tc_tests::shared`), or one of the
    /// test's own.
    dp: tc_tests::shared::Loaded,
    /// The live generation, whose counters the test reads.
    generation: u32,
    /// The channels' names, in policy order.
    names: Vec<String>,
}

impl Fixture {
    /// `policy` applied to the process's shared datapath, its maps fresh.
    fn new(policy: &str) -> Self {
        Self::with(tc_tests::shared::datapath(), policy)
    }

    /// `policy` applied to a datapath of the test's own: one whose tables
    /// are too large to clear entry by entry for the next test.
    fn alone(policy: &str) -> Self {
        Self::with(tc_tests::shared::own(tc_tests::shared::CONN_TABLE), policy)
    }

    fn with(mut dp: tc_tests::shared::Loaded, policy: &str) -> Self {
        let policy = Policy::parse(policy, "test.yaml").expect("valid policy");
        let compiled = compile(&policy).expect("compiles");
        let generation = dp
            .apply(&compiled, &vec![None; policy.channels.len()])
            .expect("applies")
            .generation;
        let names = policy.channels.iter().map(|c| c.name.clone()).collect();
        Self {
            dp,
            generation,
            names,
        }
    }

    fn run_tc(&self, prog: &str, frame: &[u8], repeat: u32) -> u32 {
        let p: &SchedClassifier = self.dp.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        p.test_run(opts).expect("test run").return_value
    }

    fn ingress(&self, frame: &[u8]) -> u32 {
        self.run_tc(TC_INGRESS, frame, 1)
    }

    fn run_xdp(&self, frame: &[u8], repeat: u32) -> u32 {
        let p: &Xdp = self
            .dp
            .ebpf
            .program(XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        p.test_run(opts).expect("test run").return_value
    }

    fn counters(&mut self, name: &str) -> ChannelCounters {
        let i = self.names.iter().position(|n| n == name).unwrap();
        self.dp
            .channel_counters(self.generation, self.names.len())
            .unwrap()[i]
    }

    fn global(&mut self) -> GlobalCounters {
        self.dp.global_counters().unwrap()
    }
}

#[test]
fn tcp_to_port_range_matches_first_channel_v4_and_v6() {
    let mut f = Fixture::new(POLICY);
    for frame in [
        packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 100),
        packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 8050, 100),
        packet::ipv6("2001:db8:1::5", "2001:db8:2::10", TCP, 8100, 100),
        packet::ipv6_hbh("2001:db8:1::5", "2001:db8:2::10", TCP, 8000),
    ] {
        assert_eq!(f.ingress(&frame), PASS);
    }
    let c = f.counters("web-to-db");
    assert_eq!(c.matched_pkts, 4);
    assert_eq!(c.passed_pkts, 4);
    assert_eq!(c.dropped_pkts, 0);
    // Outside the port range: the next matching channel, web-any.
    assert_eq!(
        f.ingress(&packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 8101, 0)),
        PASS
    );
    assert_eq!(f.counters("web-any").matched_pkts, 1);
    assert_eq!(f.counters("web-to-db").matched_pkts, 4);
}

#[test]
fn over_the_packet_limit_is_dropped_and_counted() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 58);
    // 70 packets at once at 1 packet/s with a burst of 64: the last 6 drop.
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 70), DROP);
    let c = f.counters("web-to-db");
    assert_eq!(c.matched_pkts, 70);
    assert_eq!(c.passed_pkts, 64);
    assert_eq!(c.dropped_pkts, 6);
    assert_eq!(c.dropped_bytes, 6 * frame.len() as u64);
    assert_eq!(c.would_drop_pkts, 0);
}

#[test]
fn a_bucket_under_50_ms_refills_on_the_fine_clock() {
    // 16,000 packets/s with the smallest burst (64 packets): a bucket 4 ms
    // deep, under the coarse clock's 50 ms, so it is judged on the fine
    // clock (`ChannelPolicy::coarse_clock`). Emptied, it lets a packet
    // through 300 µs later (a packet costs 62.5 µs), every time; on the
    // coarse clock, which stands still within a tick (4 ms at 250 Hz, 1 ms
    // at 1000), most would drop: at 250 Hz ten in a row pass by chance
    // with a likelihood under 1e-10, at 1000 Hz under 1e-3 (tried here,
    // 250 Hz: it fails in the first round). Under emulation a sleep may
    // cross a tick, which only makes the check weaker, never wrong.
    let mut f =
        Fixture::new("channels:\n  - name: tight\n    limit: {packets: 16000, packet_burst: 64}\n");
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    let mut dropped = 0;
    for round in 0..10 {
        // Faster than the rate (a test run's repeats take well under the
        // 62.5 µs a packet costs, even under emulation): some drop.
        f.run_tc(TC_INGRESS, &frame, 1000);
        let now = f.counters("tight").dropped_pkts;
        assert!(now > dropped, "round {round}: nothing dropped");
        dropped = now;
        std::thread::sleep(std::time::Duration::from_micros(300));
        assert_eq!(
            f.ingress(&frame),
            PASS,
            "round {round}: not refilled after 300 µs"
        );
    }
}

#[test]
fn monitor_mode_counts_would_drops_and_drops_nothing() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv6("2001:db8:1::9", "2001:db8:9::1", UDP, 53, 30);
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 70), PASS);
    let c = f.counters("web-udp-monitor");
    assert_eq!(c.matched_pkts, 70);
    assert_eq!(c.passed_pkts, 70);
    assert_eq!(c.dropped_pkts, 0);
    assert_eq!(c.would_drop_pkts, 6);
}

#[test]
fn icmp_matches_on_both_families() {
    let mut f = Fixture::new(POLICY);
    assert_eq!(
        f.ingress(&packet::ipv4("198.19.0.1", "198.19.0.2", ICMP, 0, 56)),
        PASS
    );
    assert_eq!(
        f.ingress(&packet::ipv6(
            "2001:db8:5::1",
            "2001:db8:5::2",
            ICMPV6,
            0,
            56
        )),
        PASS
    );
    assert_eq!(f.counters("icmp").matched_pkts, 2);
}

#[test]
fn direction_selects_channels() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv4("198.19.0.1", "198.19.0.2", UDP, 9, 10);
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.counters("egress-all").matched_pkts, 0);
    assert_eq!(f.global().unclassified_pkts, 1);
    assert_eq!(f.run_tc(TC_EGRESS, &frame, 1), PASS);
    assert_eq!(f.counters("egress-all").matched_pkts, 1);
}

#[test]
fn truncated_and_non_ip_pass_and_are_counted() {
    let mut f = Fixture::new(POLICY);
    let full = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 0);
    // Cut inside the IPv4 header: no addresses, passed as malformed. The
    // kernel's skb test runner refuses IP frames shorter than their header,
    // so the truncated frames go through the XDP entry point (same parser).
    assert_eq!(f.run_xdp(&full[..14 + 10], 1), XDP_PASS);
    // Bad IPv4 header length.
    let mut bad = full.clone();
    bad[14] = 0x43;
    assert_eq!(f.ingress(&bad), PASS);
    assert_eq!(f.ingress(&packet::arp()), PASS);
    let g = f.global();
    assert_eq!(g.malformed_pkts, 2);
    assert_eq!(g.non_ip_pkts, 1);
    assert_eq!(g.no_ports_pkts, 0);
    assert_eq!(f.counters("web-to-db").matched_pkts, 0);
}

#[test]
fn a_cut_transport_header_cannot_escape_a_port_channel() {
    let mut f = Fixture::new(POLICY);
    // A TCP header cut short hides the port: the packet still falls into
    // the port-specific channel its addresses and protocol allow.
    let full = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 9999, 0);
    assert_eq!(f.run_xdp(&full[..14 + 20 + 10], 1), XDP_PASS);
    let v6 = packet::ipv6("2001:db8:1::5", "2001:db8:2::10", TCP, 9999, 0);
    assert_eq!(f.run_xdp(&v6[..14 + 40 + 4], 1), XDP_PASS);
    assert_eq!(f.counters("web-to-db").matched_pkts, 2);
    assert_eq!(f.global().no_ports_pkts, 2);
    assert_eq!(f.global().malformed_pkts, 0);
}

#[test]
fn an_orphan_fragment_cannot_escape_a_port_channel() {
    let mut f = Fixture::new(POLICY);
    // A later TCP fragment whose first fragment was never seen: no ports,
    // so it is held by the first channel that could hold its datagram,
    // the port-specific one, and counted as an orphan.
    assert_eq!(
        f.ingress(&packet::ipv4_fragment("198.18.1.5", "198.18.2.10", TCP)),
        PASS
    );
    assert_eq!(f.counters("web-to-db").matched_pkts, 1);
    assert_eq!(f.counters("web-any").matched_pkts, 0);
    let g = f.global();
    assert_eq!(g.fragment_pkts, 1);
    assert_eq!(g.fragment_orphan_pkts, 1);
}

const FRAG_POLICY: &str = r#"
channels:
  - name: udp-5201
    from: [198.18.1.0/24, "2001:db8:1::/64"]
    protocol: udp
    ports: [5201]
    limit: {bandwidth: 8kbit, burst: 64KiB}
  - name: rest
"#;

/// Sends `datagrams` fragmented UDP datagrams to port 5201 (each a first
/// fragment plus `later` later fragments of 1,480 bytes) and returns how
/// many datagrams arrived whole and how many were cut.
fn send_datagrams(f: &Fixture, v6: bool, datagrams: u32, later: u16) -> (u32, u32) {
    let (mut whole, mut cut) = (0, 0);
    for id in 0..datagrams {
        let mut passed = 0;
        for i in 0..=later {
            let frame = if v6 {
                packet::ipv6_fragment("2001:db8:1::5", "2001:db8:2::10", UDP, 5201, id, i * 1448)
            } else {
                packet::ipv4_fragment_of(
                    "198.18.1.5",
                    "198.18.2.10",
                    UDP,
                    5201,
                    id as u16,
                    i * 1480,
                )
            };
            if f.ingress(&frame) == PASS {
                passed += 1;
            }
        }
        if passed == later + 1 {
            whole += 1;
        } else if passed != 0 {
            cut += 1;
        }
    }
    (whole, cut)
}

#[test]
fn fragments_follow_their_first_fragment_whole() {
    for v6 in [false, true] {
        let mut f = Fixture::new(FRAG_POLICY);
        // 40 datagrams of ~60 KB against a 64 KiB burst at 8 kbit/s. The
        // first datagram fits; the second's first fragment still finds room
        // in the burst, and its later fragments follow it into debt; every
        // later datagram finds the bucket over and drops whole. Charged
        // per fragment, a datagram costs its full size, not 1/41 of it.
        let (whole, cut) = send_datagrams(&f, v6, 40, 40);
        assert_eq!(cut, 0, "v6={v6}: a datagram was cut");
        assert_eq!(whole, 2, "v6={v6}: only the burst passes");
        let c = f.counters("udp-5201");
        // Every fragment of every datagram was charged to the port channel.
        assert_eq!(c.matched_pkts, 40 * 41, "v6={v6}");
        assert_eq!(c.passed_pkts, 2 * 41, "v6={v6}");
        assert_eq!(c.dropped_pkts, 38 * 41, "v6={v6}");
        assert_eq!(f.counters("rest").matched_pkts, 0, "v6={v6}");
        let g = f.global();
        assert_eq!(g.fragment_pkts, 40 * 40, "v6={v6}");
        assert_eq!(g.fragment_orphan_pkts, 0, "v6={v6}");
    }
}

#[test]
fn ipv6_later_fragments_cannot_hide_behind_another_next_header() {
    let mut f = Fixture::new(FRAG_POLICY);
    let (src, dst) = ("2001:db8:1::5", "2001:db8:2::10");
    // A first fragment to the port channel, then later fragments whose
    // fragment header claims another next header (60: destination
    // options). Linux reassembles them all the same, so they must follow
    // the first fragment's channel.
    assert_eq!(
        f.ingress(&packet::ipv6_fragment(src, dst, UDP, 5201, 7, 0)),
        PASS
    );
    for i in 1..4u16 {
        let mut later = packet::ipv6_fragment(src, dst, UDP, 5201, 7, i * 1448);
        later[14 + 40] = 60;
        assert_eq!(f.ingress(&later), PASS);
    }
    // An orphan with a made-up next header: of unknown protocol, so held by
    // the first channel of its addresses, the port channel.
    let mut orphan = packet::ipv6_fragment(src, dst, UDP, 5201, 8, 1448);
    orphan[14 + 40] = 47;
    assert_eq!(f.ingress(&orphan), PASS);
    assert_eq!(f.counters("udp-5201").matched_pkts, 5);
    assert_eq!(f.counters("rest").matched_pkts, 0);
    let g = f.global();
    assert_eq!(g.fragment_pkts, 4);
    assert_eq!(g.fragment_orphan_pkts, 1);
}

#[test]
fn a_passed_first_fragment_opens_one_datagram_not_more() {
    for v6 in [false, true] {
        let mut f = Fixture::new(FRAG_POLICY);
        // One first fragment within the burst, then far more "later
        // fragments" of the same id than one datagram can hold: those past
        // one datagram's worth of bytes drop.
        let frame = |i: u16| {
            if v6 {
                packet::ipv6_fragment("2001:db8:1::5", "2001:db8:2::10", UDP, 5201, 9, i * 1448)
            } else {
                packet::ipv4_fragment_of("198.18.1.5", "198.18.2.10", UDP, 5201, 9, i * 1480)
            }
        };
        let mut passed = 0;
        for i in 0..100u16 {
            if f.ingress(&frame(i % 44)) == PASS {
                passed += 1;
            }
        }
        let per = frame(1).len() as u32;
        let most = tc_common::FRAG_BUDGET / per + 1;
        assert!(
            (most - 2..=most).contains(&passed),
            "v6={v6}: {passed} fragments passed, one datagram is at most {most}"
        );
        let c = f.counters("udp-5201");
        assert_eq!(c.dropped_pkts, 100 - passed as u64, "v6={v6}");
    }
}

#[test]
fn hidden_ports_skip_an_earlier_channel_that_enforces_nothing() {
    // An unlimited channel for another port comes first: a packet whose
    // ports are hidden cannot be shown to belong to it, and must not
    // escape the limited channel after it through it.
    let mut f = Fixture::new(
        "channels:\n  - name: dns\n    protocol: udp\n    ports: [53]\n  - name: capped\n    protocol: udp\n    ports: [5201]\n    limit: {packets: 1, packet_burst: 64}\n  - name: rest\n",
    );
    let long = packet::ipv6_ext_chain("2001:db8:1::5", "2001:db8:2::10", UDP, 5201, 12);
    assert_eq!(f.ingress(&long), PASS);
    assert_eq!(
        f.ingress(&packet::ipv4_fragment("198.18.1.5", "198.18.2.10", UDP)),
        PASS
    );
    assert_eq!(f.counters("capped").matched_pkts, 2);
    assert_eq!(f.counters("dns").matched_pkts, 0);
    // A packet whose port is known still goes where its port says.
    assert_eq!(
        f.ingress(&packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10)),
        PASS
    );
    assert_eq!(f.counters("dns").matched_pkts, 1);
}

#[test]
fn vlan_stacks_are_skipped() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 10);
    for tags in [&[0x8100u16][..], &[0x88a8, 0x8100]] {
        assert_eq!(f.ingress(&packet::with_vlans(&frame, tags)), PASS);
    }
    let v6 = packet::ipv6("2001:db8:1::5", "2001:db8:2::10", TCP, 5432, 10);
    assert_eq!(f.ingress(&packet::with_vlans(&v6, &[0x88a8, 0x8100])), PASS);
    assert_eq!(f.counters("web-to-db").matched_pkts, 3);
}

#[test]
fn long_extension_chains_are_walked_or_held_conservatively() {
    let mut f = Fixture::new(POLICY);
    // Eight extension headers: the walk reaches the TCP header and its port.
    let eight = packet::ipv6_ext_chain("2001:db8:1::5", "2001:db8:2::10", TCP, 8000, 8);
    assert_eq!(f.ingress(&eight), PASS);
    assert_eq!(f.counters("web-to-db").matched_pkts, 1);
    // Past the walk, to a port no channel names: the packet cannot fall
    // out of the port-specific channel its addresses allow.
    let long = packet::ipv6_ext_chain("2001:db8:1::5", "2001:db8:2::10", TCP, 9999, 12);
    assert_eq!(f.ingress(&long), PASS);
    assert_eq!(f.run_xdp(&long, 1), XDP_PASS);
    assert_eq!(f.counters("web-to-db").matched_pkts, 3);
    assert_eq!(f.counters("web-any").matched_pkts, 0);
    assert_eq!(f.global().no_ports_pkts, 2);
}

#[test]
fn xdp_shares_the_classifier_and_buckets() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 0);
    assert_eq!(f.run_xdp(&frame, 70), XDP_DROP);
    let c = f.counters("web-to-db");
    assert_eq!((c.passed_pkts, c.dropped_pkts), (64, 6));
    // The bucket is shared: tc now drops too.
    assert_eq!(f.ingress(&frame), DROP);
}

#[test]
fn bandwidth_limit_charges_bytes() {
    // 800 kbit/s = 1 byte every 10 us; burst 64 KiB: 65536 / 1000 = 65
    // frames of 1000 bytes. The slow rate refills one frame every 10 ms, so
    // the milliseconds the runs take under emulation (and a guest clock
    // that steps) seldom add a frame; the bound allows what they took.
    let mut f =
        Fixture::new("channels:\n  - name: bw\n    limit: {bandwidth: 800kbit, burst: 64KiB}\n");
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 9, 1000 - 42);
    assert_eq!(frame.len(), 1000);
    let t0 = std::time::Instant::now();
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 100), DROP);
    let refill = t0.elapsed().as_millis() as u64;
    let c = f.counters("bw");
    assert_eq!(c.matched_pkts, 100);
    // Exactly the burst (65 frames), plus the refill while the 100 runs
    // execute: one frame per 10 ms.
    assert!(
        (65..=66 + refill / 10).contains(&c.passed_pkts),
        "{c:?} ({refill} ms of refill)"
    );
    assert_eq!(c.passed_pkts + c.dropped_pkts, 100);
}

#[test]
fn policy_swap_is_a_new_generation() {
    let mut f = Fixture::new(POLICY);
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 5432, 0);
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 70), DROP);
    // New policy: the same traffic is now unlimited.
    let p = Policy::parse("channels:\n  - name: open\n", "t").unwrap();
    let first = f.dp.config().unwrap().version;
    let live = f.dp.apply(&compile(&p).unwrap(), &[None]).unwrap();
    assert_ne!(live.generation, f.generation);
    // The version operators see only grows.
    assert_eq!(live.version, first + 1);
    f.generation = live.generation;
    f.names = vec!["open".into()];
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 10), PASS);
    assert_eq!(f.counters("open").matched_pkts, 10);
    // And back: the old generation's stale entries are purged first.
    let p = Policy::parse(POLICY, "t").unwrap();
    let live =
        f.dp.apply(&compile(&p).unwrap(), &vec![None; p.channels.len()])
            .unwrap();
    assert_eq!(live.generation, f.generation ^ 1);
    assert_eq!(live.version, first + 2);
    f.generation = live.generation;
    f.names = p.channels.iter().map(|c| c.name.clone()).collect();
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.counters("web-to-db").matched_pkts, 1);
}

#[test]
fn a_carried_bucket_hands_out_no_fresh_burst() {
    // `capped` spends its burst in slot 1, then moves to slot 0 with its
    // bucket carried (same limits): still empty. Applied again without
    // carrying, it starts full.
    let two = "channels:\n  - name: pad\n    from: [198.19.0.0/16]\n  - name: capped\n    limit: {packets: 1, packet_burst: 64}\n";
    let one = "channels:\n  - name: capped\n    limit: {packets: 1, packet_burst: 64}\n";
    let mut f = Fixture::new(two);
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    assert_eq!(f.run_tc(TC_INGRESS, &frame, 64), PASS);
    assert_eq!(f.ingress(&frame), DROP);
    let p = Policy::parse(one, "t").unwrap();
    let carry = [Some(Datapath::slot(f.generation, 1))];
    let live = f.dp.apply(&compile(&p).unwrap(), &carry).unwrap();
    f.generation = live.generation;
    f.names = vec!["capped".into()];
    assert_eq!(f.ingress(&frame), DROP, "the carried bucket refilled");
    let live = f.dp.apply(&compile(&p).unwrap(), &[None]).unwrap();
    f.generation = live.generation;
    assert_eq!(
        f.run_tc(TC_INGRESS, &frame, 64),
        PASS,
        "a bucket not carried starts full"
    );
    assert_eq!(f.ingress(&frame), DROP);
    let c = f.counters("capped");
    assert_eq!((c.matched_pkts, c.passed_pkts), (65, 64), "{c:?}");
    // Back in the generation where `capped` counted one drop in slot 0:
    // the slot's counters start at zero.
    let live = f.dp.apply(&compile(&p).unwrap(), &[None]).unwrap();
    f.generation = live.generation;
    assert_eq!(f.ingress(&frame), PASS);
    let c = f.counters("capped");
    assert_eq!((c.matched_pkts, c.passed_pkts), (1, 1), "{c:?}");
}

#[test]
fn the_flow_cache_never_serves_a_previous_policy() {
    // P1 puts the flow in channel 0. P3 lives in the same generation slot
    // as P1 (two applies later) and puts it in channel 1: a stale cache
    // entry from P1 would send it to channel 0 (`z`).
    let mut f = Fixture::new("channels:\n  - name: a\n    to: [198.18.2.10/32]\n  - name: b\n");
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    // A flow enters the cache on its second packet.
    tc_tests::pin_to_cpu(0).expect("pin to a CPU");
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.counters("a").matched_pkts, 2);
    assert_eq!(f.global().flow_inserts, 1);
    for text in [
        "channels:\n  - name: x\n",
        "channels:\n  - name: z\n    from: [198.19.0.0/16]\n  - name: b2\n  - name: a2\n    to: [198.18.2.10/32]\n",
    ] {
        let p = Policy::parse(text, "t").unwrap();
        f.generation = f
            .dp
            .apply(&compile(&p).unwrap(), &vec![None; p.channels.len()])
            .unwrap()
            .generation;
        f.names = p.channels.iter().map(|c| c.name.clone()).collect();
        assert_eq!(f.ingress(&frame), PASS);
    }
    assert_eq!(f.counters("z").matched_pkts, 0);
    assert_eq!(f.counters("b2").matched_pkts, 1);
}

#[test]
fn the_destination_memo_never_serves_a_previous_policy() {
    // With the flow cache off, each packet is classified afresh, behind
    // the per-CPU destination memo. Under P1 the packet's L4 and
    // destination leave channels 0 and 1 possible. P3 lives in the same
    // generation slot as P1 (two applies later): there they leave only
    // channel 2 (`c`) possible, and the source rules out `z`. A memo kept
    // from P1 would send it to `w`.
    let mut f = Fixture::new("channels:\n  - name: a\n    to: [198.18.2.10/32]\n  - name: b\n");
    f.dp.set_flow_cache(false).unwrap();
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    tc_tests::pin_to_cpu(0).expect("pin to a CPU");
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.counters("a").matched_pkts, 2);
    for text in [
        "channels:\n  - name: x\n",
        "channels:\n  - name: z\n    from: [198.19.0.0/16]\n  - name: w\n    to: [198.18.9.9/32]\n  - name: c\n",
    ] {
        let p = Policy::parse(text, "t").unwrap();
        f.generation = f
            .dp
            .apply(&compile(&p).unwrap(), &vec![None; p.channels.len()])
            .unwrap()
            .generation;
        f.names = p.channels.iter().map(|c| c.name.clone()).collect();
    }
    // No packet in between: the memo still holds what P1 left possible.
    assert_eq!(f.ingress(&frame), PASS);
    assert_eq!(f.counters("w").matched_pkts, 0);
    assert_eq!(f.counters("c").matched_pkts, 1);
    // And a packet the memo holds is classified by its own source: the
    // same destination from inside `z`'s sources.
    assert_eq!(
        f.ingress(&packet::ipv4("198.19.0.7", "198.18.2.10", UDP, 53, 10)),
        PASS
    );
    assert_eq!(f.counters("z").matched_pkts, 1);
    assert_eq!(f.counters("c").matched_pkts, 1);
}

/// More distinct flood flows than the flow cache holds (`MAX_FLOWS`).
const FLOOD_FLOWS: u32 = tc_common::MAX_FLOWS + 14_464;

#[test]
fn a_random_source_flood_neither_enters_nor_empties_the_flow_cache() {
    let mut f = Fixture::new(
        "channels:\n  - name: legit\n    from: [198.18.1.5/32]\n  - name: flood\n    to: [198.18.2.20/32]\n    limit: {packets: 10}\n",
    );
    // The doorkeeper is per CPU: the test's packets must all run on one.
    tc_tests::pin_to_cpu(0).expect("pin to a CPU");
    let legit = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    // First packet: classified, not cached. Second: cached. Third: a hit.
    for _ in 0..3 {
        assert_eq!(f.ingress(&legit), PASS);
    }
    let g = f.global();
    assert_eq!(
        (g.flow_misses, g.flow_inserts, g.flow_hits),
        (2, 1, 1),
        "{g:?}"
    );
    // Traffic in no channel is admitted the same way (its entry carries
    // the interaction hint).
    let stray = packet::ipv4("198.18.9.9", "198.18.2.30", UDP, 53, 10);
    for _ in 0..3 {
        assert_eq!(f.ingress(&stray), PASS);
    }
    let g = f.global();
    assert_eq!(
        (g.flow_misses, g.flow_inserts, g.flow_hits),
        (4, 2, 2),
        "{g:?}"
    );
    // A flood from a new source per packet, more flows than the cache
    // holds: judged by its channel, and not one of them cached.
    let mut frame = packet::ipv4("198.18.128.0", "198.18.2.20", UDP, 53, 10);
    for i in 0..FLOOD_FLOWS {
        packet::set_ipv4_source(&mut frame, (0xc612_8000 + i).into());
        f.ingress(&frame);
    }
    let flood = f.counters("flood");
    assert_eq!(flood.matched_pkts, FLOOD_FLOWS as u64);
    assert!(flood.dropped_pkts > FLOOD_FLOWS as u64 / 2, "{flood:?}");
    let g = f.global();
    assert_eq!(g.flow_inserts, 2, "the flood entered the cache: {g:?}");
    assert_eq!(g.flow_misses, 4 + FLOOD_FLOWS as u64, "{g:?}");
    // The legitimate flow is still cached.
    assert_eq!(f.ingress(&legit), PASS);
    assert_eq!(f.global().flow_hits, g.flow_hits + 1);
    assert_eq!(f.counters("legit").matched_pkts, 4);
}

/// The flow cache's filter ages: a cached flow that sends between two
/// agings keeps its bit; one idle for two loses it, is not looked up, is
/// classified afresh into the same channel, and is taken again on its next
/// packet. The agent ages the filter only every `FLOW_BITS_AGE_AFTER`
/// inserts.
#[test]
fn a_flow_aged_out_of_the_cache_filter_is_classified_afresh_and_cached_again() {
    let mut f = Fixture::new(
        "channels:\n  - name: a\n    from: [198.18.1.5/32]\n  - name: b\n    to: [198.18.2.0/24]\n",
    );
    // The doorkeeper is per CPU: the test's packets must all run on one.
    tc_tests::pin_to_cpu(0).expect("pin to a CPU");
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    // (misses, inserts, hits) after `n` more packets of the flow.
    let send = |f: &mut Fixture, n: usize| {
        for _ in 0..n {
            assert_eq!(f.ingress(&frame), PASS);
        }
        let g = f.global();
        (g.flow_misses, g.flow_inserts, g.flow_hits)
    };
    assert_eq!(send(&mut f, 3), (2, 1, 1));

    // Aged once: the bit is in the older half, the flow is found, and the
    // hit sets its bit in the newer half, so the next aging keeps it too.
    f.dp.age_flow_filter().unwrap();
    assert_eq!(send(&mut f, 1), (2, 1, 2), "a live flow kept its bit");
    f.dp.age_flow_filter().unwrap();
    assert_eq!(send(&mut f, 1), (2, 1, 3), "a live flow kept its bit");

    // Idle through two agings: a miss (not looked up), then the doorkeeper
    // admits it again: the insert finds its entry and keeps it (no insert
    // counted) and sets its bit; then hits.
    f.dp.age_flow_filter().unwrap();
    f.dp.age_flow_filter().unwrap();
    assert_eq!(send(&mut f, 4), (4, 1, 5));
    assert_eq!(
        f.counters("a").matched_pkts,
        9,
        "every packet in its channel"
    );
    assert_eq!(f.counters("b").matched_pkts, 0);

    // The agent's rule: the first look only notes the count, and it ages
    // the filter once per `FLOW_BITS_AGE_AFTER` inserts. A look that does
    // not age it must leave it be: the hits below would miss after two
    // agings in a row.
    let after = tc_common::FLOW_BITS_AGE_AFTER;
    assert!(!f.dp.tidy_flow_filter(1_000).unwrap());
    assert!(!f.dp.tidy_flow_filter(1_000 + after - 1).unwrap());
    assert!(f.dp.tidy_flow_filter(1_000 + after).unwrap());
    assert_eq!(send(&mut f, 1), (4, 1, 6), "aged once");
    assert!(!f.dp.tidy_flow_filter(1_000 + 2 * after - 1).unwrap());
    assert!(f.dp.tidy_flow_filter(1_000 + 2 * after).unwrap());
    assert_eq!(send(&mut f, 1), (4, 1, 7), "aged once since the last hit");
    assert!(f.dp.tidy_flow_filter(1_000 + 3 * after).unwrap());
    assert!(f.dp.tidy_flow_filter(1_000 + 4 * after).unwrap());
    assert_eq!(send(&mut f, 1), (5, 1, 7), "aged out by the agent's rule");
}

#[test]
fn both_cpus_charge_one_bucket_exactly() {
    // A bucket of 10,000 packets refilling at 1 packet/s, hammered from both
    // CPUs at once: exactly the burst passes. A per-CPU split would pass
    // twice as much; a lost update would pass more too.
    let mut f =
        Fixture::new("channels:\n  - name: shared\n    limit: {packets: 1, packet_burst: 10000}\n");
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 53, 10);
    let prog: &SchedClassifier = f.dp.ebpf.program(TC_INGRESS).unwrap().try_into().unwrap();
    std::thread::scope(|s| {
        for cpu in [0usize, 1] {
            let frame = &frame;
            s.spawn(move || {
                tc_tests::pin_to_cpu(cpu).expect("pin to a CPU");
                for _ in 0..10 {
                    let mut opts = TestRunOptions::new();
                    opts.data_in = Some(frame);
                    opts.repeat = 2_000;
                    prog.test_run(opts).expect("test run");
                }
            });
        }
    });
    let c = f.counters("shared");
    let g = f.global();
    assert_eq!(c.matched_pkts, 40_000);
    // Under emulation a CAS can lose many times in a row; the fetch-and-add
    // fallback must keep the count exact all the same.
    println!("contended: {}", g.contended_pkts);
    // The burst, plus at most a few packets refilled while the test ran.
    assert!((10_000..=10_005).contains(&c.passed_pkts), "{c:?}");
    assert_eq!(c.passed_pkts + c.dropped_pkts, 40_000);
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns` and of `skb->tstamp` for fq.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
}

/// Offset of `tstamp` in `struct __sk_buff` (uapi), and the struct's size.
const SKB_TSTAMP: usize = 152;
const SKB_SIZE: usize = 192;

impl Fixture {
    /// Runs tc egress `repeat` times and returns (verdict, skb->tstamp of the last run).
    fn egress_tstamp(&self, frame: &[u8], repeat: u32) -> (u32, u64) {
        let p: &SchedClassifier = self.dp.ebpf.program(TC_EGRESS).unwrap().try_into().unwrap();
        let ctx_in = [0u8; SKB_SIZE];
        let mut ctx_out = [0u8; SKB_SIZE];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx_in);
        opts.ctx_out = Some(&mut ctx_out);
        opts.repeat = repeat;
        let r = p.test_run(opts).expect("test run").return_value;
        let ts = u64::from_ne_bytes(ctx_out[SKB_TSTAMP..SKB_TSTAMP + 8].try_into().unwrap());
        (r, ts)
    }

    /// Runs tc ingress once and returns (verdict, the frame as the program left it).
    fn ingress_out(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let p: &SchedClassifier = self
            .dp
            .ebpf
            .program(TC_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = p.test_run(opts).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

#[test]
fn delay_sets_the_earliest_departure_time() {
    // 800 kbit/s = 1 byte every 10 us; burst 64 KiB. 100 frames of 1000
    // bytes: the first 65 leave now, then each departs 10 ms after the
    // previous. The slow rate keeps the test exact under emulation, where
    // the 100 runs take milliseconds: that refills the bucket by a fraction
    // of a frame, not by frames.
    let mut f = Fixture::new(
        "channels:\n  - name: paced\n    direction: egress\n    action: delay\n    horizon: 1s\n    limit: {bandwidth: 800kbit, burst: 64KiB}\n",
    );
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 9, 1000 - 42);
    let before = monotonic_ns();
    let (verdict, ts) = f.egress_tstamp(&frame, 100);
    let after = monotonic_ns();
    assert_eq!(verdict, PASS);
    // 100 * 1000 - 65536 bytes at 0.1 byte/us: 344.6 ms after the first run,
    // which started somewhere between `before` and `after` (milliseconds
    // apart under emulation).
    let (lo, hi) = (before + 344_000_000, after + 346_000_000);
    assert!(
        (lo..=hi).contains(&ts),
        "departure {:.2} ms after the start, {:.2} ms before its end",
        (ts as i64 - before as i64) as f64 / 1e6,
        (after as i64 - ts as i64) as f64 / 1e6
    );
    let c = f.counters("paced");
    assert_eq!((c.passed_pkts, c.dropped_pkts), (100, 0));
    assert!((34..=36).contains(&c.delayed_pkts), "{c:?}");
    // Mean wait of the delayed packets. The d delayed ones depart 10 ms
    // apart, the last at `ts`, so their mean departure is (d - 1) / 2 x 10
    // ms before it; each waited from its own run, somewhere between `before`
    // and `after`; the bounds come from the clock, not a constant.
    let d = c.delayed_pkts as f64;
    let mean_departure = ts as f64 - (d - 1.0) / 2.0 * 10e6;
    let mean_ms = c.delay_ns as f64 / d / 1e6;
    let (lo, hi) = (
        (mean_departure - after as f64) / 1e6 - 0.5,
        (mean_departure - before as f64) / 1e6 + 0.5,
    );
    eprintln!("mean delay {mean_ms:.2} ms, bounds {lo:.2}..={hi:.2} ms");
    assert!(
        (lo..=hi).contains(&mean_ms) && mean_ms > 0.0,
        "mean delay {mean_ms:.2} ms, outside {lo:.2}..={hi:.2} ms"
    );
}

#[test]
fn mark_signals_only_while_over_the_rate() {
    // 1,000 packets/s with a 1 s burst: each packet costs 1 ms, marking may
    // start once 250 ms of the burst is used, and the rate signal holds
    // 90 ms (90 packets at the packet rate).
    let mut f = Fixture::new(
        "channels:\n  - name: ecn\n    action: mark\n    limit: {packets: 1000, packet_burst: 1000}\n",
    );
    let ect = packet::with_ecn(packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 80, 100), 2);
    // Sends `n` fresh ECT(0) packets; returns the indexes of those marked.
    let send = |f: &Fixture, n: usize| -> Vec<usize> {
        (0..n)
            .filter(|_| {
                let (v, out) = f.ingress_out(&ect);
                assert_eq!(v, PASS);
                packet::ecn(&out) == 3
            })
            .collect()
    };
    // 600 back to back: over the rate after about 90, past the depth after
    // about 250 (later by whatever refilled while the test ran).
    let first = send(&f, 600);
    assert!(
        first.first().is_some_and(|&i| i >= 250),
        "marked early: {first:?}"
    );
    assert!(first.len() >= 100, "only {} marked", first.len());
    // 100 ms of silence: the channel is under its rate again, but still owes
    // a good part of its burst. The next packet is not marked: a sender that
    // already slowed down is not told again (marking on depth alone would
    // halve it every round trip until the debt is repaid).
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(send(&f, 1).is_empty(), "marked while under the rate");
    // Over the rate again, still past the depth: marks resume.
    assert!(!send(&f, 200).is_empty(), "no marks over the rate");
    let c = f.counters("ecn");
    assert_eq!((c.passed_pkts, c.dropped_pkts), (801, 0));
}

#[test]
fn delay_lets_a_sparse_flow_leave_ahead_of_the_backlog() {
    // 8 Mbit/s = 1 byte/us; burst 64 KiB. A bulk flow builds a backlog of
    // about 35 ms; a flow with nothing waiting leaves now, like fq's new
    // flows, and is charged to the channel all the same.
    let mut f = Fixture::new(
        "channels:\n  - name: paced\n    direction: egress\n    action: delay\n    horizon: 1s\n    limit: {bandwidth: 8Mbit, burst: 64KiB}\n",
    );
    let bulk = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 9, 1000 - 42);
    let (v, bulk_ts) = f.egress_tstamp(&bulk, 100);
    assert_eq!(v, PASS);
    assert!(bulk_ts > monotonic_ns() + 10_000_000, "no backlog built");
    let us = |t: u64| (t as i64 - bulk_ts as i64) as f64 / 1e3;
    // A packet of another flow: not held (skb->tstamp stays 0), charged
    // its 1 ms all the same.
    let sparse = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 10, 1000 - 42);
    assert_eq!(f.egress_tstamp(&sparse, 1), (PASS, 0));
    // A third flow sends two packets back to back (one test run, repeat 2):
    // the first leaves now, the second is no longer sparse and takes its
    // turn after the backlog, which the two sparse packets lengthened.
    let pair = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 11, 1000 - 42);
    let (v, ts) = f.egress_tstamp(&pair, 2);
    assert_eq!(v, PASS);
    assert!((2995.0..=3005.0).contains(&us(ts)), "{:.1} us", us(ts));
    // The bulk flow's next packet leaves after all of them: the rate holds.
    let (_, next) = f.egress_tstamp(&bulk, 1);
    assert!((3995.0..=4005.0).contains(&us(next)), "{:.1} us", us(next));
    let c = f.counters("paced");
    assert_eq!((c.passed_pkts, c.dropped_pkts), (104, 0));
}

#[test]
fn delay_drops_beyond_the_horizon() {
    let mut f = Fixture::new(
        "channels:\n  - name: paced\n    direction: egress\n    action: delay\n    horizon: 100ms\n    limit: {bandwidth: 800kbit, burst: 64KiB}\n",
    );
    let frame = packet::ipv4("198.18.1.5", "198.18.2.10", UDP, 9, 1000 - 42);
    let t0 = std::time::Instant::now();
    let (verdict, _) = f.egress_tstamp(&frame, 100);
    // The bucket refills one frame per 10 ms while the runs execute
    // (microseconds here, milliseconds under emulation).
    let refill = t0.elapsed().as_millis() as u64;
    assert_eq!(verdict, DROP);
    let c = f.counters("paced");
    // 65 now, about 10 more within 100 ms, the rest beyond the horizon.
    assert!(
        (74..=77 + refill / 10).contains(&c.passed_pkts),
        "{c:?} ({refill} ms of refill)"
    );
    assert_eq!(c.horizon_drop_pkts, c.dropped_pkts);
    assert_eq!(c.passed_pkts + c.dropped_pkts, 100);
}

#[test]
fn mark_sets_ce_on_ect_packets_and_drops_the_rest() {
    let policy =
        "channels:\n  - name: ecn\n    action: mark\n    limit: {packets: 1, packet_burst: 64}\n";
    let mut f = Fixture::new(policy);
    let ect = packet::with_ecn(packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 80, 100), 2);
    assert!(packet::ipv4_checksum_ok(&ect));
    // Back to back, the channel runs over its rate from the start, but the
    // rate signal holds at most half the burst, and marking waits until a
    // quarter is used: the first half of the burst passes untouched...
    for _ in 0..32 {
        let (v, out) = f.ingress_out(&ect);
        assert_eq!((v, packet::ecn(&out)), (PASS, 2));
    }
    // ...the second half, over the rate and past a quarter, is marked early,
    // with a valid checksum...
    for _ in 0..32 {
        let (v, out) = f.ingress_out(&ect);
        assert_eq!((v, packet::ecn(&out)), (PASS, 3));
        assert!(packet::ipv4_checksum_ok(&out), "checksum not updated");
    }
    // ...and over the limit, ECN-capable packets may use one more burst, marked.
    let (v, out) = f.ingress_out(&ect);
    assert_eq!(v, PASS);
    assert_eq!(packet::ecn(&out), 3);
    assert!(packet::ipv4_checksum_ok(&out), "checksum not updated");
    let v6 = packet::with_ecn(
        packet::ipv6("2001:db8:1::5", "2001:db8:2::10", TCP, 80, 100),
        1,
    );
    let (v, out) = f.ingress_out(&v6);
    assert_eq!((v, packet::ecn(&out)), (PASS, 3));
    // Marked upstream (CE): still ECN-capable, passes as it is, not counted
    // as this channel's mark.
    let ce = packet::with_ecn(packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 80, 100), 3);
    assert_eq!(f.ingress_out(&ce), (PASS, ce.clone()));
    // Not ECN-capable: dropped.
    let plain = packet::ipv4("198.18.1.5", "198.18.2.10", TCP, 80, 100);
    assert_eq!(f.ingress_out(&plain).0, DROP);
    let c = f.counters("ecn");
    assert_eq!(c.marked_pkts, 34);
    assert_eq!(c.dropped_pkts, 1);
    assert_eq!(c.passed_pkts, 67);
}

#[test]
fn loading_removes_maps_pinned_by_another_layout() {
    // A pin directory as an older agent left it: its maps under an older
    // layout, and something else of ours beside them.
    let dir =
        std::path::PathBuf::from(format!("/sys/fs/bpf/tc-test-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A fresh machine may not have bpffs mounted yet; the agent mounts it.
    tc_agent::datapath::sys::ensure_bpffs(&dir).unwrap();
    std::fs::create_dir_all(dir.join("maps-v1")).unwrap();
    std::fs::create_dir_all(dir.join("links")).unwrap();
    // An older object's accounting arrays: its programs may still be in
    // the hooks, so they stay.
    let older = dir
        .join(tc_agent::datapath::accounting::ACCOUNTING_PINS)
        .join("1");
    std::fs::create_dir_all(&older).unwrap();
    let loaded = Datapath::load(Some(&dir), 4096);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let older_kept = older.exists();
    drop(loaded);
    let _ = std::fs::remove_dir_all(&dir);
    let mut left = left;
    left.sort();
    assert_eq!(
        left,
        [
            tc_agent::datapath::accounting::ACCOUNTING_PINS,
            "links",
            tc_agent::datapath::MAPS_LAYOUT
        ]
    );
    assert!(older_kept, "an older object's accounting pins were removed");
}

#[test]
fn the_programs_leave_headroom_in_the_verifier_budget() {
    // The verifier walks every path of a program up to one million
    // instructions, and kernels prune differently: with the hash probes
    // and tries of classification, the reach check and the flow cache's
    // doorkeeper, this host (6.18) walked tc_ingress in 371k instructions
    // and 6.1 in 195k (without the reach check: 309k and 166k; tries only:
    // 224k here, several times that on 6.1); with the destination memo,
    // 478k here, 161k on 6.1 and 424k on 6.12 (its key written before the
    // lookups, which keeps 6.1's stack within 512 bytes; written after
    // them: 399k here, and 6.1 refused a 544-byte stack); with the
    // zero-length tables read from `GenInfo` (a check per address table
    // before its probes), 437k here, 273k on 6.1 and 425k on 6.12 (a form
    // before the clock's choice became a `ChannelPolicy` method: 560k,
    // 179k, 477k; a check per probed length took 590k here); with the
    // source's set ANDed in the search for the first channel, which the
    // verifier then walks once per map the set came from: 447k here, 223k
    // on 6.1 and 446k on 6.12; with the flow cache's filter (its word and
    // bit kept across the classification), 520k here (tc_egress 464k); aged
    // in two halves, its words read again where a bit is set and only
    // whether the newer half lacks the bit kept to a hit, 375k here, 223k
    // on 6.1 and 363k on 6.12 (tc_egress 403k, 261k, 385k; with the words
    // kept across the classification, the halves took tc_egress to 741k
    // here). A later build walked tc_ingress in 295k here (tc_egress
    // 312k, xdp_ingress 123k), and aligning `Parsed` to 8 bytes and
    // nothing else took tc_ingress to 546k: a branch the verifier decides
    // from the wire size (one segment or a GSO super-packet) marked the
    // size precise, and every state after it stayed apart from the other
    // paths'. Read back from the scratch value (`pipeline::join_wire`),
    // and with the buckets' checks rid of a saturating subtraction that
    // did the same, 81k here (tc_egress 96k, xdp_ingress 83k), 81k on 6.1
    // (87k, 76k) and 76k on 6.12 (82k, 69k; README, "The verifier's walk
    // and the wire size"). The bound was 600k before that; at 300k it
    // still leaves every kernel three times its walk, and catches a split
    // like the one above. Show the figures and keep room: a change that
    // eats the headroom fails here before it fails in the VM.
    let dp = tc_tests::shared::datapath();
    for name in [TC_INGRESS, TC_EGRESS, XDP_INGRESS] {
        let n = dp
            .ebpf
            .program(name)
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count()
            .expect("the kernel reports the instructions it verified (5.16+)");
        println!("{name}: {n} instructions verified");
        assert!(n < 300_000, "{name}: {n} instructions verified");
    }
}

/// splitmix64: the same seed gives the same packets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d4_9bb7_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether channel `i` of the hash-probed [`wide_policy`] names only a
/// /24 and a /120 (the block holding its neighbours' host prefixes), on a
/// port of its own: its packets' longest match is a neighbour's host
/// prefix, whose probe the datapath skips (no channel still possible
/// after the port is added there, see `GenInfo::reach`).
fn wide_only(i: usize) -> bool {
    i % 16 == 8
}

/// 1,024 channels whose sources are host prefixes (and, every 8th
/// channel, a /24 over them; every 16th, the /24 alone, see [`wide_only`]), whose destinations are a /16 or open
/// (with `open`, sources host prefixes alone, destinations each open or
/// the zero-length prefix of one family: the destination tables hold that
/// prefix alone, which the datapath reads without a lookup, and the source
/// tables one length), on
/// one UDP or TCP port each (`hash`): few prefix lengths, so the datapath
/// probes them by hash. Or (`!hash`) sources and destinations of 6 lengths
/// and port ranges, which go to the LPM tries.
fn wide_policy(hash: bool, open: bool) -> String {
    let mut t = String::from("channels:\n");
    for i in 0..1024usize {
        let mut from = Vec::new();
        for j in 0..4 {
            let n = i * 4 + j;
            if hash && !open && wide_only(i) {
                break;
            }
            from.push(format!("198.18.{}.{}/32", n >> 8, n & 0xff));
            from.push(format!("2001:db8::{n:x}/128"));
        }
        if hash {
            if i % 8 == 0 && !open {
                from.push(format!("198.18.{}.0/24", (i * 4) >> 8));
                from.push(format!("2001:db8::{:x}00/120", (i * 4) >> 8));
            }
        } else {
            let len = 24 + (i % 6) as u32;
            from.push(format!("198.18.{}.0/{len}", i % 16));
            from.push(format!("2001:db8::{:x}00/{}", i % 16, 96 + len));
        }
        let to = match (hash, i % 3) {
            // A third open, a third to every IPv4 address, a third to every
            // IPv6 one: each family's table holds its zero-length prefix
            // alone, with a set that leaves out a third of the channels.
            _ if open => match i % 3 {
                0 => String::new(),
                1 => "    to: [0.0.0.0/0]\n".into(),
                _ => "    to: [\"::/0\"]\n".into(),
            },
            (_, 0) => String::new(),
            (true, _) => "    to: [198.19.0.0/16, \"2001:db8:1::/48\"]\n".into(),
            (false, k) => format!(
                "    to: [198.19.{}.0/{}, \"2001:db8:1000::/{}\"]\n",
                (i % 4) * 64,
                18 + k * 2 + i % 5,
                36 + i % 7
            ),
        };
        let proto = if i % 2 == 0 { "udp" } else { "tcp" };
        let ports = if hash && !open && wide_only(i) {
            format!("{}", 1100 + i)
        } else if hash {
            format!("{}", 1000 + i % 100)
        } else {
            let lo = 2000 + (i % 50) * 100;
            format!("\"{lo}-{}\"", lo + 10 + i % 37)
        };
        t.push_str(&format!(
            "  - name: c{i}\n    from: [{}]\n{to}    protocol: {proto}\n    ports: [{ports}]\n    limit: {{packets: 100000000, bandwidth: 400Gbit}}\n",
            from.iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    t
}

/// Random packets through the uncached path at 1,024 channels land in the
/// channel a plain first-match scan of the policy names (or in none), for
/// both families, with the tables probed by hash (the destinations' also
/// reduced to the zero-length prefix alone) and with them in the tries.
#[test]
fn classification_at_1024_channels_is_first_match() {
    use aya::maps::PerCpuArray;
    use std::net::IpAddr;
    use tc_agent::policy::Direction;
    use tc_common::{PROBE_TRIE, TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6};
    use tc_tests::reference::{first_match, Packet};

    // One datapath for the three policies (loading it, which runs the
    // verifier, is most of the test's time under emulation): each apply
    // writes the other generation, the last with its tables in the tries.
    let mut fixture: Option<Fixture> = None;
    for (hash, open) in [(true, false), (true, true), (false, false)] {
        let text = wide_policy(hash, open);
        let policy = Policy::parse(&text, "wide.yaml").expect("valid policy");
        let compiled = compile(&policy).expect("compiles");
        // The policy exercises the path it is meant to.
        let plan = tc_agent::datapath::prefixes::plan(&compiled);
        for t in [TABLE_SRC_V4, TABLE_SRC_V6, TABLE_L4] {
            assert_eq!(
                plan[t as usize].count == PROBE_TRIE,
                !hash,
                "table {t}: {:?}",
                plan[t as usize]
            );
        }
        if open {
            // The destinations' zero-length prefix alone, read without a
            // lookup; the sources' host prefixes alone, probed at their one
            // length (which the zero-length shortcut must not take).
            for (t, len) in [
                (TABLE_DST_V4, 0),
                (TABLE_DST_V6, 0),
                (TABLE_SRC_V4, 32),
                (TABLE_SRC_V6, 128),
            ] {
                let p = plan[t as usize];
                assert_eq!((p.count, p.lens[0]), (1, len), "table {t}: {p:?}");
            }
        }
        if hash && !open {
            // The skipped probes are exercised: a wide-only channel is in
            // no host length's reach, so its packets skip their longest
            // match's probe (a neighbour's host prefix).
            let reach = tc_agent::datapath::reach::reach(&compiled, &plan);
            let src = plan[TABLE_SRC_V4 as usize];
            let host = src.lens[..src.count as usize]
                .iter()
                .position(|&l| l == 32)
                .expect("a /32 length");
            assert!(src.count >= 2, "{src:?}");
            assert!(!reach[TABLE_SRC_V4 as usize][host].contains(8));
            assert!(reach[TABLE_SRC_V4 as usize][host].contains(9));
        }
        let f = match &mut fixture {
            None => fixture.insert(Fixture::alone(&text)),
            Some(f) => {
                f.generation =
                    f.dp.apply(&compiled, &vec![None; policy.channels.len()])
                        .expect("applies")
                        .generation;
                f
            }
        };
        f.dp.set_flow_cache(false).unwrap();
        let mut rng = Rng(0x7c1a_55f1 + hash as u64);
        let (mut matched, mut unmatched) = (0, 0);
        let read = |f: &mut Fixture, slot: u32| -> u64 {
            let m: PerCpuArray<_, ChannelCounters> =
                PerCpuArray::try_from(f.dp.ebpf.map(tc_common::COUNTERS).unwrap()).unwrap();
            m.get(&slot, 0)
                .unwrap()
                .iter()
                .map(|c| c.matched_pkts)
                .sum()
        };
        let mut counted = std::collections::HashMap::new();
        let mut unclassified = f.global().unclassified_pkts;
        // Fewer under emulation, where the guests run each packet's
        // test run and counter read some hundred times slower.
        // The open variant differs in one table: half as many.
        let packets = if tc_tests::netns::in_vm() { 1200 } else { 3000 } / (1 + open as u32);
        // Packets come in fours on one CPU, each sharing part of the
        // per-CPU destination memo's key with the packet before: the first
        // is drawn afresh; the second differs from it only in its source
        // (a memo hit); the third may also differ in its destination, the
        // fourth in its protocol and port instead (a miss when they do).
        tc_tests::pin_to_cpu(0).expect("pin to a CPU");
        let mut i = 0;
        let mut group = (String::new(), UDP, 0u16);
        for n in 0..packets {
            let v6 = (n / 4) % 2 == 1;
            let first = n % 4 == 0;
            let (keep_dst, keep_l4) = match n % 4 {
                0 => (false, false),
                1 => (true, true),
                2 => (false, true),
                _ => (true, false),
            };
            // Aimed at a random channel: each field is its own most of
            // the time (an earlier channel may take the packet first), and
            // else anything nearby.
            if first {
                i = rng.below(1024) as usize;
            }
            let k = if rng.below(8) == 0 {
                rng.below(4096 + 512) as usize
            } else if hash && !open && wide_only(i) {
                // Anywhere in its block: mostly other channels' hosts.
                ((i * 4) & !0xff) + rng.below(256) as usize
            } else {
                i * 4 + rng.below(4) as usize
            };
            let src = if v6 {
                format!("2001:db8::{k:x}")
            } else {
                format!("198.18.{}.{}", k >> 8, k & 0xff)
            };
            let own = rng.below(8) != 0;
            let dst = match (v6, own, hash) {
                _ if keep_dst => group.0.clone(),
                (false, true, true) => format!("198.19.{}.1", i % 4),
                (false, true, false) => format!("198.19.{}.1", (i % 4) * 64),
                (true, true, true) => "2001:db8:1::1".into(),
                (true, true, false) => "2001:db8:1000::1".into(),
                (false, false, _) => format!("198.19.{}.{}", rng.below(256), rng.below(256)),
                (true, false, _) => format!("2001:db8:{:x}::1", rng.below(0x2000)),
            };
            let proto = match (rng.below(8) != 0, i % 2) {
                _ if keep_l4 => group.1,
                (true, 0) | (false, 1) => UDP,
                _ => TCP,
            };
            let port = match (rng.below(8) != 0, hash) {
                _ if keep_l4 => group.2,
                (true, true) if !open && wide_only(i) => 1100 + i as u16,
                (true, true) => 1000 + (i % 100) as u16,
                (true, false) => {
                    (2000 + (i % 50) * 100) as u16 + rng.below(11 + (i % 37) as u64) as u16
                }
                (false, true) => 990 + rng.below(120) as u16,
                (false, false) => 1990 + rng.below(5100) as u16,
            };
            let frame = if v6 {
                packet::ipv6(&src, &dst, proto, port, 8)
            } else {
                packet::ipv4(&src, &dst, proto, port, 8)
            };
            group = (dst.clone(), proto, port);
            let p = Packet {
                src: src.parse::<IpAddr>().unwrap(),
                dst: dst.parse::<IpAddr>().unwrap(),
                proto,
                port: Some(port),
                hidden: 0,
                frag: tc_tests::reference::Frag::None,
                datagram: None,
            };
            let want = first_match(&policy, &p, Direction::Ingress);
            let slot = want.map(|c| Datapath::slot(f.generation, c));
            // One counter read per packet (the guest kernels run under
            // emulation, where each system call counts): only this test
            // sends, so the counts before are the ones last read or seen.
            let before = match slot {
                Some(s) => *counted.entry(s).or_insert_with(|| read(f, s)),
                None => unclassified,
            };
            assert_eq!(f.ingress(&frame), PASS, "{p:?}");
            match slot {
                Some(s) => {
                    let now = read(f, s);
                    assert_eq!(
                        now,
                        before + 1,
                        "hash={hash} open={open}: {p:?} belongs to channel {want:?}, which did not count it"
                    );
                    counted.insert(s, now);
                    matched += 1;
                }
                None => {
                    let now = f.global().unclassified_pkts;
                    assert_eq!(
                        now,
                        before + 1,
                        "hash={hash} open={open}: {p:?} matches no channel, yet was classified"
                    );
                    unclassified = now;
                    unmatched += 1;
                }
            }
        }
        // Both outcomes were exercised, many times.
        assert!(
            matched > packets / 6 && unmatched > packets / 10,
            "{matched} / {unmatched}"
        );
    }
}
