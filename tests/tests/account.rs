//! Interaction accounting on the real eBPF programs through
//! BPF_PROG_TEST_RUN: which side is the client (a SYN's sender, a
//! SYN-ACK's receiver, the higher port, the sender without ports),
//! request and response counters in wire bytes, the SYN to SYN-ACK time,
//! a forwarded packet skipped at egress, and admission folding new
//! clients into the all-zero client under a flood, also in a full table
//! before the agent sets a threshold.
//!
//! The node is the server's: the client's packets arrive at tc ingress
//! (or XDP), the server's leave at tc egress. Addresses are 198.18.1.5
//! (client) and 198.18.2.10 (server).

use std::{net::Ipv4Addr, time::Duration};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use tc_agent::datapath::{TC_EGRESS, TC_INGRESS, XDP_INGRESS};
use tc_common::{IxCounters, IxKey};
use tc_tests::packet::{self, ACK, FIN, ICMP, RST, SYN, TCP, UDP};

/// TC_ACT_UNSPEC as the kernel reports it: the verdict passes through
/// the accounting program unchanged.
const PASS: u32 = -1i32 as u32;
const XDP_PASS: u32 = 2;

const CLIENT: &str = "198.18.1.5";
const SERVER: &str = "198.18.2.10";

/// `struct __sk_buff` as BPF_PROG_TEST_RUN takes it (192 bytes since 5.16),
/// and the offset of `ingress_ifindex` in it.
const SKB_CTX_LEN: usize = 192;
const INGRESS_IFINDEX_AT: usize = 36;

/// An IPv4 address as the interaction table stores it (IPv4-mapped).
fn mapped(a: &str) -> [u8; 16] {
    let a: Ipv4Addr = a.parse().unwrap();
    a.to_ipv6_mapped().octets()
}

fn key(client: &str, server: &str, proto: u8, port: u16) -> IxKey {
    IxKey {
        client: mapped(client),
        server: mapped(server),
        port,
        proto,
        _pad: [0; 5],
    }
}

/// The untracked-clients key of an interaction.
fn other(server: &str, proto: u8, port: u16) -> IxKey {
    IxKey {
        client: [0; 16],
        ..key("0.0.0.0", server, proto, port)
    }
}

/// A UDP datagram `src:sport` -> `dst:dport` with `payload` bytes.
fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = packet::ipv4(src, dst, UDP, dport, payload);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f
}

/// A TCP segment `src` -> `dst` (`ip:port`) with `flags` and `payload` bytes.
fn tcp(src: &str, dst: &str, flags: u8, payload: usize) -> Vec<u8> {
    let f = packet::tcp(src, dst, flags, 1000, payload);
    if flags & ACK != 0 {
        packet::with_ack(f, 1)
    } else {
        f
    }
}

struct Node {
    /// The process's shared datapath (`tc_tests::shared`).
    dp: tc_tests::shared::Loaded,
}

impl Node {
    fn new() -> Self {
        // No policy: every packet is unclassified and passes, and is counted.
        Self {
            dp: tc_tests::shared::datapath(),
        }
    }

    /// A node of its own whose interaction table holds `entries`.
    fn with_table(entries: u32) -> Self {
        Self {
            dp: tc_tests::shared::own_interactions(entries),
        }
    }

    /// Runs tc `prog` on `frame`, with `ingress_ifindex` in the context if
    /// given; returns the verdict.
    fn run(&self, prog: &str, frame: &[u8], ingress_ifindex: Option<u32>) -> u32 {
        let p: &SchedClassifier = self.dp.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut ctx = [0u8; SKB_CTX_LEN];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        if let Some(i) = ingress_ifindex {
            ctx[INGRESS_IFINDEX_AT..INGRESS_IFINDEX_AT + 4].copy_from_slice(&i.to_ne_bytes());
            opts.ctx_in = Some(&ctx);
        }
        p.test_run(opts).expect("test run").return_value
    }

    /// A packet arriving (tc ingress).
    fn arrives(&self, frame: &[u8]) {
        assert_eq!(self.run(TC_INGRESS, frame, None), PASS);
    }

    /// A packet leaving (tc egress), generated on this node.
    fn leaves(&self, frame: &[u8]) {
        assert_eq!(self.run(TC_EGRESS, frame, None), PASS);
    }

    fn xdp(&self, frame: &[u8]) -> u32 {
        let p: &Xdp = self
            .dp
            .ebpf
            .program(XDP_INGRESS)
            .unwrap()
            .try_into()
            .unwrap();
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        p.test_run(opts).expect("test run").return_value
    }

    fn table(&mut self) -> Vec<(IxKey, IxCounters)> {
        let mut t = self.dp.interactions().unwrap();
        t.sort_by_key(|(k, _)| (k.client, k.server, k.port, k.proto));
        t
    }

    fn entry(&mut self, k: &IxKey) -> Option<IxCounters> {
        self.table()
            .into_iter()
            .find(|(x, _)| x == k)
            .map(|(_, c)| c)
    }

    /// Request packets of `client`'s UDP interaction with the server's
    /// port 9000 (the admission tests' clients), which must have an entry.
    fn requests(&mut self, client: &str) -> u64 {
        self.entry(&key(client, SERVER, UDP, 9000))
            .unwrap_or_else(|| panic!("{client} has an entry"))
            .req_pkts
    }

    fn folded(&mut self) -> u64 {
        self.dp.global_counters().unwrap().ix_folded_pkts
    }
}

fn len(f: &[u8]) -> u64 {
    f.len() as u64
}

/// A handshake seen whole: the SYN's sender is the client, its packets
/// count as requests and the server's as responses, in wire bytes (the
/// whole frame), SYN, SYN-ACK, FIN and RST are counted, and the SYN's
/// SYN-ACK, answered 20 ms later, records a time of at least 20 ms.
#[test]
fn a_handshake_counts_requests_responses_flags_and_the_syn_to_syn_ack_time() {
    let mut n = Node::new();
    let (c, s) = ("198.18.1.5:40001", "198.18.2.10:80");
    let syn = tcp(c, s, SYN, 0);
    let synack = tcp(s, c, SYN | ACK, 0);
    let ack = tcp(c, s, ACK, 300);
    let data = tcp(s, c, ACK, 1200);
    let fin = tcp(c, s, FIN | ACK, 0);
    let rst = tcp(s, c, RST, 0);
    n.arrives(&syn);
    std::thread::sleep(Duration::from_millis(20));
    n.leaves(&synack);
    n.arrives(&ack);
    n.leaves(&data);
    n.arrives(&fin);
    n.leaves(&rst);
    let t = n.table();
    assert_eq!(t.len(), 1, "one interaction: {t:?}");
    assert_eq!(t[0].0, key(CLIENT, SERVER, TCP, 80));
    let x = t[0].1;
    assert_eq!(
        (x.req_pkts, x.req_bytes),
        (3, len(&syn) + len(&ack) + len(&fin))
    );
    assert_eq!(
        (x.resp_pkts, x.resp_bytes),
        (3, len(&synack) + len(&data) + len(&rst))
    );
    assert_eq!((x.syns, x.synacks, x.fins, x.rsts), (1, 1, 1, 1));
    assert_eq!(x.rtt_count, 1, "the SYN-ACK closes one handshake: {x:?}");
    assert!(
        (20_000_000..1_000_000_000).contains(&x.rtt_sum_ns),
        "SYN to SYN-ACK took 20 ms and some: {} ns",
        x.rtt_sum_ns
    );
}

/// The SYN's sender is the client even from a lower port, the SYN-ACK's
/// receiver likewise; once a server has answered a SYN on a port above
/// its client's, the connection's later packets keep it the server.
/// A SYN-ACK whose SYN was not seen still names its receiver the client
/// and records no handshake time.
#[test]
fn syn_and_syn_ack_name_the_sides_whatever_the_ports() {
    let mut n = Node::new();
    // A server listening on 50000, its client on port 80.
    let (c, s) = ("198.18.1.5:80", "198.18.2.10:50000");
    let frames = [
        (true, tcp(c, s, SYN, 0)),
        (false, tcp(s, c, SYN | ACK, 0)),
        (true, tcp(c, s, ACK, 10)),
        (false, tcp(s, c, ACK, 700)),
    ];
    for (from_client, f) in &frames {
        if *from_client {
            n.arrives(f);
        } else {
            n.leaves(f);
        }
    }
    let x = n
        .entry(&key(CLIENT, SERVER, TCP, 50000))
        .expect("the SYN's sender is the client, the port the SYN's destination");
    let bytes = |client: bool| -> u64 {
        frames
            .iter()
            .filter(|(c, _)| *c == client)
            .map(|(_, f)| len(f))
            .sum()
    };
    assert_eq!((x.req_pkts, x.req_bytes), (2, bytes(true)));
    assert_eq!((x.resp_pkts, x.resp_bytes), (2, bytes(false)));
    assert_eq!((x.syns, x.synacks, x.rtt_count), (1, 1, 1));
    assert_eq!(n.table().len(), 1, "nothing counted elsewhere");

    // A SYN-ACK alone, from 443 to the client's 40000.
    n.leaves(&tcp("198.18.2.10:443", "198.18.1.5:40000", SYN | ACK, 0));
    let x = n
        .entry(&key(CLIENT, SERVER, TCP, 443))
        .expect("the SYN-ACK's receiver is the client");
    assert_eq!(
        (x.req_pkts, x.resp_pkts, x.syns, x.synacks, x.rtt_count),
        (0, 1, 0, 1, 0)
    );
}

/// Without a SYN the side with the higher port is the client (equal
/// ports: the receiver is the server), in either direction; without
/// ports the sender is the client and the port is 0.
#[test]
fn without_a_syn_the_higher_port_is_the_client_and_without_ports_the_sender() {
    let mut n = Node::new();
    let dns_q = udp(CLIENT, 40000, SERVER, 53, 40);
    let dns_a = udp(SERVER, 53, CLIENT, 40000, 200);
    n.arrives(&dns_q);
    n.leaves(&dns_a);
    // The server side sends first, from the lower port.
    let low_first = udp(SERVER, 5000, CLIENT, 6000, 100);
    n.leaves(&low_first);
    // Equal ports: the receiver is the server.
    let same = udp(CLIENT, 7000, SERVER, 7000, 10);
    n.arrives(&same);
    // A TCP segment mid-connection, the server's, without any SYN seen.
    let mid = tcp("198.18.2.10:80", "198.18.1.5:41000", ACK, 500);
    n.leaves(&mid);
    // ICMP both ways: two interactions, each named by its sender.
    let ping = packet::ipv4(CLIENT, SERVER, ICMP, 0, 56);
    let pong = packet::ipv4(SERVER, CLIENT, ICMP, 0, 56);
    n.arrives(&ping);
    n.leaves(&pong);

    let expect = [
        (
            key(CLIENT, SERVER, UDP, 53),
            [1, len(&dns_q), 1, len(&dns_a)],
        ),
        (key(CLIENT, SERVER, UDP, 5000), [0, 0, 1, len(&low_first)]),
        (key(CLIENT, SERVER, UDP, 7000), [1, len(&same), 0, 0]),
        (key(CLIENT, SERVER, TCP, 80), [0, 0, 1, len(&mid)]),
        (key(CLIENT, SERVER, ICMP, 0), [1, len(&ping), 0, 0]),
        (key(SERVER, CLIENT, ICMP, 0), [1, len(&pong), 0, 0]),
    ];
    let t = n.table();
    assert_eq!(t.len(), expect.len(), "{t:#?}");
    for (k, [rp, rb, sp, sb]) in expect {
        let x = t
            .iter()
            .find(|(x, _)| *x == k)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no entry {k:?} in {t:#?}"));
        assert_eq!(
            [x.req_pkts, x.req_bytes, x.resp_pkts, x.resp_bytes],
            [rp, rb, sp, sb],
            "{k:?}"
        );
        assert_eq!((x.syns, x.synacks, x.rtt_count), (0, 0, 0));
    }
}

/// A packet at egress that came in through an interface declared to have
/// our ingress hook was counted there: egress skips it (and still passes
/// it); one from another interface, or generated here, counts.
#[test]
fn egress_skips_a_packet_that_came_in_through_a_hooked_interface() {
    let mut n = Node::new();
    n.dp.set_ingress_ifaces(&[7]).unwrap();
    let f = udp(CLIENT, 40000, SERVER, 9000, 100);
    assert_eq!(n.run(TC_EGRESS, &f, Some(7)), PASS);
    assert!(
        n.table().is_empty(),
        "forwarded from a hooked interface: counted at its ingress, not here"
    );
    assert_eq!(n.run(TC_EGRESS, &f, Some(9)), PASS);
    assert_eq!(n.run(TC_EGRESS, &f, Some(0)), PASS);
    // At ingress the interface does not matter.
    assert_eq!(n.run(TC_INGRESS, &f, Some(7)), PASS);
    let x = n.entry(&key(CLIENT, SERVER, UDP, 9000)).unwrap();
    assert_eq!((x.req_pkts, x.req_bytes), (3, 3 * len(&f)));
    // Declared no more: counted at egress again.
    n.dp.set_ingress_ifaces(&[]).unwrap();
    assert_eq!(n.run(TC_EGRESS, &f, Some(7)), PASS);
    assert_eq!(
        n.entry(&key(CLIENT, SERVER, UDP, 9000)).unwrap().req_pkts,
        4
    );
}

/// XDP counts what it sees like tc ingress does, and keeps its verdict.
#[test]
fn xdp_counts_too() {
    let mut n = Node::new();
    let f = udp(CLIENT, 40000, SERVER, 9000, 300);
    for _ in 0..3 {
        assert_eq!(n.xdp(&f), XDP_PASS);
    }
    let x = n.entry(&key(CLIENT, SERVER, UDP, 9000)).unwrap();
    assert_eq!((x.req_pkts, x.req_bytes), (3, 3 * len(&f)));
}

/// Under admission a client already in the table keeps its entry, a new
/// one counts in the interaction's all-zero client (and in
/// `ix_folded_pkts`) until the sketch puts it at the threshold, then gets
/// its own; with admission off again a new client is admitted at once.
#[test]
fn admission_folds_new_small_clients_into_the_untracked_entry() {
    // The sketch is per CPU: every frame runs on the same one.
    tc_tests::pin_to_cpu(tc_tests::tcp::allowed_cpus()[0]).unwrap();
    let mut n = Node::new();
    let old = udp("198.18.1.1", 40000, SERVER, 9000, 100);
    // Its second packet puts its flow in the flow cache, with the hint to
    // its entry.
    n.arrives(&old);
    n.arrives(&old);
    // Nothing is ever heavy enough.
    n.dp.set_admission(u32::MAX).unwrap();
    let new = udp("198.18.1.2", 40000, SERVER, 9000, 100);
    for _ in 0..5 {
        n.arrives(&new);
    }
    n.arrives(&old);
    assert_eq!(
        n.requests("198.18.1.1"),
        3,
        "an admitted client keeps counting in its own entry"
    );
    assert!(n.entry(&key("198.18.1.2", SERVER, UDP, 9000)).is_none());
    // One untracked entry per server and protocol, all ports (0).
    let o = n.entry(&other(SERVER, UDP, 0)).expect("untracked entry");
    assert_eq!((o.req_pkts, o.req_bytes), (5, 5 * len(&new)));
    assert_eq!(n.folded(), 5);

    // A threshold of 16 units of 64 bytes: a client of 142-byte frames (3
    // units each) is admitted at its sixth frame in a window (about a
    // second; a window turning over mid-way restarts its count).
    n.dp.set_admission(16).unwrap();
    let heavy = udp("198.18.1.3", 40000, SERVER, 9000, 100);
    assert_eq!(len(&heavy), 142);
    let mut sent = 0;
    while n.entry(&key("198.18.1.3", SERVER, UDP, 9000)).is_none() {
        n.arrives(&heavy);
        sent += 1;
        assert!(sent <= 11, "not admitted after {sent} frames");
    }
    let folded = n.folded() - 5;
    assert!(
        (5..=10).contains(&folded) && folded + 1 == sent,
        "{folded} of {sent} frames folded before admission"
    );
    let o = n.entry(&other(SERVER, UDP, 0)).unwrap();
    assert_eq!(o.req_pkts, 5 + folded, "each folded frame counted once");
    assert_eq!(n.requests("198.18.1.3"), 1);

    n.dp.set_admission(0).unwrap();
    let later = udp("198.18.1.4", 40000, SERVER, 9000, 100);
    n.arrives(&later);
    assert_eq!(n.requests("198.18.1.4"), 1);
}

/// A flood fills the table faster than the agent samples it (and can
/// starve the agent of CPU meanwhile). With no free slot left and no
/// threshold set, the datapath weighs clients by the sketch at the lowest
/// threshold by itself, as the agent would: a small client without an
/// entry folds into the untracked entry, an admitted client's cached flow
/// keeps counting in its own entry, a small client with an entry but no
/// hint to it folds (it is weighed before any lookup), and a heavy client
/// without an entry counts as untracked too: the slot kept for untracked
/// entries holds them, nothing is lost. Once the agent removes entries, a
/// new client gets one at once.
#[test]
fn a_full_table_weighs_clients_before_the_agent_sets_a_threshold() {
    // The sketch is per CPU: every frame runs on the same one.
    tc_tests::pin_to_cpu(tc_tests::tcp::allowed_cpus()[0]).unwrap();
    const ENTRIES: u32 = 64;
    let mut n = Node::with_table(ENTRIES);
    // The first client's flow: its second packet puts it in the flow cache
    // with the hint to its entry.
    let old = udp("198.18.1.1", 40000, SERVER, 9000, 100);
    n.arrives(&old);
    n.arrives(&old);
    // A client that got an entry with its one packet: its flow is not in
    // the flow cache, so its next packet has no hint to its entry.
    let once = udp("198.18.1.2", 40000, SERVER, 9000, 100);
    n.arrives(&once);
    // Flood clients, one frame each, take every slot a client may take:
    // all but one (a 64th of the table), kept for untracked entries.
    let flooder = |i: u32| {
        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i);
        udp(&a.to_string(), 40000, SERVER, 9000, 0)
    };
    for i in 0..ENTRIES - 3 {
        n.arrives(&flooder(i));
    }
    assert_eq!(n.table().len(), ENTRIES as usize - 1);
    assert_eq!(n.folded(), 0, "every client so far got an entry");

    // More of the flood: folded, no entry, admission never set; the
    // untracked entry takes the kept slot, so nothing is lost.
    for i in ENTRIES..ENTRIES + 20 {
        n.arrives(&flooder(i));
    }
    assert_eq!(n.folded(), 20, "each new small client folds");
    let o = n.entry(&other(SERVER, UDP, 0)).expect("untracked entry");
    assert_eq!(o.req_pkts, 20);
    assert_eq!(
        n.table().len(),
        ENTRIES as usize,
        "the untracked entry fills it"
    );
    assert_eq!(n.dp.global_counters().unwrap().ix_lost_pkts, 0);

    // The admitted client's cached flow still counts in its own entry.
    n.arrives(&old);
    assert_eq!(n.requests("198.18.1.1"), 3);
    assert_eq!(n.folded(), 20);

    // The client without a hint is weighed before any lookup, and is
    // small: its packet folds, as under the agent's threshold (without
    // the fallback it would look its entry up and count there).
    n.arrives(&once);
    assert_eq!(n.folded(), 21);
    assert_eq!(n.requests("198.18.1.2"), 1);

    // A heavy new client passes the sketch's threshold (16 units; 142-byte
    // frames are 3 units each) but finds no slot for a client: it counts
    // in the untracked entry too, nothing lost.
    for _ in 0..8 {
        n.arrives(&udp("198.18.1.3", 40000, SERVER, 9000, 100));
    }
    assert_eq!(n.folded(), 29);
    let o = n.entry(&other(SERVER, UDP, 0)).unwrap();
    assert_eq!(o.req_pkts, 29);
    assert!(n.entry(&key("198.18.1.3", SERVER, UDP, 9000)).is_none());
    assert_eq!(n.dp.global_counters().unwrap().ix_lost_pkts, 0);

    // The agent removes idle entries (two of the flood's): their slots go
    // back to the ring, and a new client gets an entry at its first
    // packet again.
    let idle: Vec<IxKey> = (0..2)
        .map(|i| {
            let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i);
            key(&a.to_string(), SERVER, UDP, 9000)
        })
        .collect();
    assert_eq!(n.dp.remove_interactions(&idle).unwrap().len(), 2);
    let later = udp("198.18.1.4", 40000, SERVER, 9000, 100);
    n.arrives(&later);
    assert_eq!(n.requests("198.18.1.4"), 1);
    assert_eq!(n.folded(), 29);
}

/// The agent's look for stray slots (taken from the free ring, named by no
/// entry: a CPU that lost the race to enter its interaction) reads the
/// whole ring in one batched call. It finds none in a whole table, exactly
/// the slot an entry lost, also once the ring has wrapped, and none again
/// once that slot is reclaimed and taken.
#[test]
fn a_slot_no_entry_names_is_found_stray_and_reclaimed() {
    const ENTRIES: u32 = 64;
    let mut n = Node::with_table(ENTRIES);
    let client = |i: u32| {
        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i);
        udp(&a.to_string(), 40000, SERVER, 9000, 100)
    };
    let stray = |n: &mut Node| {
        let mut s = n.dp.stray_slots().unwrap();
        s.sort_unstable();
        s
    };
    // 40 clients take 40 slots, then leave: the ring's next 40 free slots
    // are past its end, so the ring has wrapped.
    for i in 0..40 {
        n.arrives(&client(i));
    }
    assert_eq!(n.table().len(), 40);
    assert_eq!(stray(&mut n), Vec::<u32>::new(), "a whole table");
    let keys: Vec<IxKey> = n.table().into_iter().map(|(k, _)| k).collect();
    assert_eq!(n.dp.remove_interactions(&keys).unwrap().len(), 40);
    assert_eq!(stray(&mut n), Vec::<u32>::new(), "every slot freed");

    // 30 more take slots from the wrapped ring; one entry then vanishes
    // without its slot going back, as when a CPU loses the race.
    for i in 100..130 {
        n.arrives(&client(i));
    }
    let (lost_key, lost_slot) = {
        let ix: aya::maps::HashMap<_, IxKey, u32> =
            aya::maps::HashMap::try_from(n.dp.ebpf.map(tc_common::IX).unwrap()).unwrap();
        let (k, slot) = ix.iter().next().unwrap().unwrap();
        (k, slot)
    };
    {
        let mut ix: aya::maps::HashMap<_, IxKey, u32> =
            aya::maps::HashMap::try_from(n.dp.ebpf.map_mut(tc_common::IX).unwrap()).unwrap();
        ix.remove(&lost_key).unwrap();
    }
    assert_eq!(stray(&mut n), vec![lost_slot], "exactly the lost slot");

    n.dp.reclaim_slots(&[lost_slot]).unwrap();
    assert_eq!(stray(&mut n), Vec::<u32>::new(), "reclaimed");
    // Every slot is usable: 34 new clients fill the table but the one
    // slot kept for untracked clients.
    for i in 200..234 {
        n.arrives(&client(i));
    }
    assert_eq!(n.table().len(), ENTRIES as usize - 1);
    assert_eq!(n.folded(), 0, "every client got an entry");
    assert_eq!(stray(&mut n), Vec::<u32>::new(), "a full table");
}
