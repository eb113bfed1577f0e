//! Writing only what changed: a policy applied over a generation that held
//! another (the diff path: stale entries removed, new and changed ones
//! written) must leave the kernel exactly as a full rewrite would, and
//! classify every packet as the first-match reference says. Also after a
//! restart: a new `Datapath` over the pinned maps knows only the live
//! generation it read back, and rewrites the other whole once.
//!
//! Policies of 96 channels (two bit-vector words) with random overlapping
//! prefixes of both families, protocols and port ranges; each step changes
//! one channel. After every apply: the tables read back from the kernel
//! equal the record of a fresh compilation, and random TCP/UDP packets (each
//! sent twice, the second through the flow cache) land in the channel
//! `tc_tests::reference::first_match` names.
//!
//! A second run uses prefixes of few lengths, so that the address and L4
//! tables go to the prefix hash maps, and moves them to their tries and
//! back (a few channels with prefixes of other lengths and a port range):
//! the diff within the hash maps, a table moved either way out of a
//! generation the agent knows, and a restart over hash-placed tables.
//!
//! Some steps first prune the standby generation as the agent does after
//! a switch (`datapath/prune.rs`), and check the pruned record against
//! the kernel's tables and the live generation's entries; the apply after
//! a prune writes from the pruned record.

use std::path::PathBuf;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use tc_agent::{
    datapath::{held::Tables, prefixes::in_trie, Datapath, TC_INGRESS},
    policy::{compile::compile, Direction, Policy},
};
use tc_common::{TABLE_DST_V4, TABLE_DST_V6, TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6};
use tc_tests::{
    packet::{self, TCP, UDP},
    reference::{self, Parsed},
};

const CHANNELS: usize = 96;
const PACKETS: usize = 400;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random IPv4 prefix inside 198.18.0.0/22, or an IPv6 one inside
/// 2001:db8::/46 (small spaces, so prefixes overlap often). `few`: of two
/// lengths per family only, so a table of them goes to the hash maps.
fn prefix(rng: &mut Rng, few: bool) -> String {
    let (lens4, lens6): (&[u32], &[u32]) = if few {
        (&[24, 32], &[64, 128])
    } else {
        (
            &[22, 23, 24, 26, 28, 30, 32],
            &[46, 47, 48, 56, 64, 120, 128],
        )
    };
    if rng.below(2) == 0 {
        let len = lens4[rng.below(lens4.len() as u64) as usize];
        let a = (198u32 << 24) | (18 << 16) | (rng.below(1 << 10) as u32);
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        format!("{}/{len}", std::net::Ipv4Addr::from(a & mask))
    } else {
        let len = lens6[rng.below(lens6.len() as u64) as usize];
        let a = (0x2001_0db8u128 << 96) | ((rng.below(4) as u128) << 80) | (rng.below(256) as u128);
        let mask = u128::MAX << (128 - len);
        format!("\"{}/{len}\"", std::net::Ipv6Addr::from(a & mask))
    }
}

/// One random channel named `ch{i}`.
fn channel(rng: &mut Rng, i: usize) -> String {
    channel_of(rng, i, false)
}

/// One random channel named `ch{i}`; `few`: its prefixes of two lengths
/// per family and at most one port.
fn channel_of(rng: &mut Rng, i: usize, few: bool) -> String {
    let mut c = format!("  - name: ch{i}\n");
    let from: Vec<String> = (0..1 + rng.below(3)).map(|_| prefix(rng, few)).collect();
    c.push_str(&format!("    from: [{}]\n", from.join(", ")));
    if rng.below(3) == 0 {
        let to: Vec<String> = (0..1 + rng.below(2)).map(|_| prefix(rng, few)).collect();
        c.push_str(&format!("    to: [{}]\n", to.join(", ")));
    }
    match rng.below(3) {
        0 => c.push_str("    protocol: tcp\n"),
        1 => c.push_str("    protocol: udp\n"),
        _ => {}
    }
    if rng.below(2) == 0 {
        let lo = 1000 + rng.below(100);
        let hi = if few { lo } else { lo + rng.below(30) };
        c.push_str(&format!("    ports: [\"{lo}-{hi}\"]\n"));
    }
    c.push_str("    limit: {packets: 100000000}\n");
    c
}

fn text(channels: &[String]) -> String {
    format!("channels:\n{}", channels.concat())
}

/// A random TCP or UDP packet inside the policies' address spaces.
fn random_packet(rng: &mut Rng) -> Vec<u8> {
    let proto = if rng.below(2) == 0 { TCP } else { UDP };
    let port = 990 + rng.below(150) as u16;
    if rng.below(2) == 0 {
        let a = |rng: &mut Rng| format!("198.18.{}.{}", rng.below(4), rng.below(256));
        packet::ipv4(&a(rng), &a(rng), proto, port, 8)
    } else {
        let a = |rng: &mut Rng| format!("2001:db8:{}::{:x}", rng.below(4), rng.below(256));
        packet::ipv6(&a(rng), &a(rng), proto, port, 8)
    }
}

/// Removes the test's pinned maps, also when it fails.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        Datapath::unpin_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `frame` once through the tc ingress program.
fn run_ingress(dp: &Datapath, frame: &[u8]) {
    let prog: &SchedClassifier = dp
        .ebpf
        .program(TC_INGRESS)
        .expect("program")
        .try_into()
        .expect("tc program");
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    prog.test_run(opts).expect("test run");
}

/// Applies `text` and checks the kernel's tables and verdicts against it.
fn apply_and_check(dp: &mut Datapath, text: &str, rng: &mut Rng, step: &str) {
    let policy = Policy::parse(text, "diff.yaml").expect("valid policy");
    let compiled = compile(&policy).expect("compiles");
    let was_live = dp.config().expect("config").generation;
    let was_active = dp.active_channels(was_live).expect("policy slots");
    let live = dp
        .apply(&compiled, &vec![None; policy.channels.len()])
        .expect("applies");
    // The write went into the other generation only: the one live until
    // the switch keeps its policy slots (an unknown generation's slots are
    // deactivated before its write, never the live one's), and the new one
    // has exactly the policy's.
    assert_eq!(
        dp.active_channels(was_live).expect("policy slots"),
        was_active,
        "{step}: the generation live until the switch lost policy slots"
    );
    assert_eq!(
        dp.active_channels(live.generation).expect("policy slots"),
        policy.channels.len(),
        "{step}: the new generation's active policy slots"
    );
    // Exactly what a full rewrite of this policy leaves.
    let held = dp.read_generation(live.generation).expect("reads back");
    assert!(
        held == Tables::of(&compiled),
        "{step}: the kernel's tables differ from a full rewrite of the policy"
    );
    let mut mismatches = Vec::new();
    let mut before = dp
        .channel_counters(live.generation, CHANNELS)
        .expect("counters");
    for n in 0..PACKETS {
        let frame = random_packet(rng);
        let Parsed::Ip(p) = reference::parse(&frame) else {
            panic!("{step}: the reference cannot parse a plain packet");
        };
        let want = reference::first_match(&policy, &p, Direction::Ingress);
        for pass in ["uncached", "cached"] {
            run_ingress(dp, &frame);
            let after = dp
                .channel_counters(live.generation, CHANNELS)
                .expect("counters");
            let got = (0..CHANNELS).find(|&i| after[i].matched_pkts != before[i].matched_pkts);
            if got != want {
                mismatches.push(format!(
                    "packet {n} ({pass}) {p:?}: datapath {got:?}, reference {want:?}"
                ));
            }
            before = after;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{step}: {} of {} verdicts differ from the reference:\n{}",
        mismatches.len(),
        2 * PACKETS,
        mismatches.join("\n")
    );
}

/// Tidies and prunes the standby generation as the agent does after a
/// switch's grace period (`datapath/prune.rs`: it keeps only the entries
/// the live generation holds alike, in the same place), and checks the
/// result: the record the datapath keeps of it is what the kernel holds,
/// each table kept exactly the entries the live one holds alike, and the
/// live generation is untouched. The next apply writes from that record.
/// Returns how many entries the prune removed.
fn prune_and_check(dp: &mut Datapath, step: &str) -> usize {
    let live_gen = dp.config().expect("config").generation;
    let standby = live_gen ^ 1;
    let before = dp
        .known_tables(standby)
        .cloned()
        .expect("the standby is known");
    let live = dp
        .known_tables(live_gen)
        .cloned()
        .expect("the live one is known");
    dp.tidy_standby().expect("tidies");
    let removed = dp.prune_standby().expect("prunes");
    let pruned = dp.known_tables(standby).cloned().expect("still known");
    assert!(
        dp.read_generation(standby).expect("reads back") == pruned,
        "{step}: the pruned standby's record differs from the kernel's tables"
    );
    assert!(
        dp.read_generation(live_gen).expect("reads back") == live,
        "{step}: the prune changed the live generation"
    );
    // Alike places: both in the tries, or both in the prefix hash maps
    // (whatever lengths each probes, a key is the same).
    let place = |t: u8| in_trie(&before.probes[t as usize]) == in_trie(&live.probes[t as usize]);
    let mut counted = 0;
    counted += kept_alike(
        step,
        "IPv4 sources",
        &before.src_v4,
        &pruned.src_v4,
        &live.src_v4,
        place(TABLE_SRC_V4),
    );
    counted += kept_alike(
        step,
        "IPv4 destinations",
        &before.dst_v4,
        &pruned.dst_v4,
        &live.dst_v4,
        place(TABLE_DST_V4),
    );
    counted += kept_alike(
        step,
        "IPv6 sources",
        &before.src_v6,
        &pruned.src_v6,
        &live.src_v6,
        place(TABLE_SRC_V6),
    );
    counted += kept_alike(
        step,
        "IPv6 destinations",
        &before.dst_v6,
        &pruned.dst_v6,
        &live.dst_v6,
        place(TABLE_DST_V6),
    );
    counted += kept_alike(
        step,
        "L4",
        &before.l4,
        &pruned.l4,
        &live.l4,
        place(TABLE_L4),
    );
    assert_eq!(
        removed, counted,
        "{step}: entries the prune says it removed"
    );
    removed
}

/// Checks one pruned table against the live generation's, by a set of the
/// live entries (not by the prune's own merge): it kept exactly the
/// entries of `was` that `live` holds with the same value, or none if one
/// is in its trie and the other in the hash maps. Returns how many it
/// removed.
fn kept_alike<K: Ord + Copy + std::hash::Hash + std::fmt::Debug>(
    step: &str,
    name: &str,
    was: &[(K, u64)],
    now: &[(K, u64)],
    live: &[(K, u64)],
    same_place: bool,
) -> usize {
    let live: std::collections::HashSet<&(K, u64)> = live.iter().collect();
    let want: Vec<(K, u64)> = was
        .iter()
        .filter(|e| same_place && live.contains(e))
        .copied()
        .collect();
    assert_eq!(now, &want[..], "{step}: {name}: the entries kept");
    was.len() - now.len()
}

/// The seed of a run: `TC_DIFF_SEED`, or the clock.
fn seed() -> u64 {
    let seed = std::env::var("TC_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("seed {seed} (TC_DIFF_SEED reproduces it)");
    seed
}

/// Channel `i` with prefixes of lengths no few-length channel has, and a
/// port range: with a few of them the source tables (more than four
/// lengths) and the L4 table go to their tries.
fn spread(i: usize) -> String {
    let l4 = [22, 23, 26, 28, 30][i % 5];
    let l6 = [46, 47, 48, 56, 120][i % 5];
    format!(
        "  - name: ch{i}\n    from: [198.18.0.0/{l4}, \"2001:db8::/{l6}\"]\n    protocol: tcp\n    ports: [\"1000-1099\"]\n    limit: {{packets: 100000000}}\n"
    )
}

/// Where the tables of `text` go: (source IPv4, source IPv6, L4) in tries.
fn in_tries(text: &str) -> (bool, bool, bool) {
    let compiled = compile(&Policy::parse(text, "diff.yaml").expect("valid")).expect("compiles");
    let p = tc_agent::datapath::prefixes::plan(&compiled);
    let trie = |t: u8| p[t as usize].count == tc_common::PROBE_TRIE;
    (
        trie(tc_common::TABLE_SRC_V4),
        trie(tc_common::TABLE_SRC_V6),
        trie(tc_common::TABLE_L4),
    )
}

#[test]
fn tables_moved_between_tries_and_hash_maps_classify_like_a_full_rewrite() {
    let mut rng = Rng(seed());
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/tc-agent-test-diff-moves-{}",
        std::process::id()
    )));
    let mut few: Vec<String> = (0..CHANNELS)
        .map(|i| channel_of(&mut rng, i, true))
        .collect();
    let change_one = |chans: &mut Vec<String>, rng: &mut Rng| {
        let k = 8 + rng.below(CHANNELS as u64 - 8) as usize;
        chans[k] = channel_of(rng, k, true);
    };
    let moved = |few: &[String]| -> String {
        let mut c = few.to_vec();
        for (i, ch) in c.iter_mut().enumerate().take(8) {
            *ch = spread(i);
        }
        text(&c)
    };
    assert_eq!(
        in_tries(&text(&few)),
        (false, false, false),
        "few lengths: hash maps"
    );
    assert_eq!(in_tries(&moved(&few)), (true, true, true), "spread: tries");
    let mut dp = Datapath::load(Some(&pins.0), 4096).expect("loads");
    dp.reset_generations().expect("fresh maps");
    // Generation 1, then 0: hash maps, written whole into empty ones.
    apply_and_check(&mut dp, &text(&few), &mut rng, "hash 1");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "hash 2");
    // Generation 1: hash to trie, out of a known generation.
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &moved(&few), &mut rng, "to the tries");
    // Generation 0: a diff within the hash maps.
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "hash diff");
    // Generation 1: a diff within the tries.
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &moved(&few), &mut rng, "trie diff");
    // Generation 0: a diff within the hash maps again; generation 1: trie
    // to hash.
    dp.tidy_standby().expect("tidies");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "hash diff again");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "back to the hash maps");
    // The prune between applies, as the agent runs it: with both
    // generations in the hash maps the standby keeps what the live one
    // holds alike, and the next apply writes the difference from there;
    // with one in the tries and the other in the hash maps, the standby's
    // tables go whole, and the next apply writes them whole.
    let mut pruned = prune_and_check(&mut dp, "both in the hash maps");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "hash diff after a prune");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &moved(&few), &mut rng, "to the tries again");
    pruned += prune_and_check(&mut dp, "hash maps, live in the tries");
    change_one(&mut few, &mut rng);
    apply_and_check(&mut dp, &text(&few), &mut rng, "back after a prune");
    // A channel changed between the generations, and some tables are
    // placed apart: the prunes removed entries, which the applies after
    // them wrote back.
    assert!(pruned > 0, "the prunes removed nothing");
    drop(dp);
    // A restart over hash-placed tables: the live generation read back
    // from the hash maps; the other rewritten whole, then diffs.
    let mut dp = Datapath::load(Some(&pins.0), 4096).expect("reloads");
    let live = dp.config().expect("config").generation;
    let tables = dp.read_generation(live).expect("reads back");
    assert_eq!(tables.misplaced, 0, "nothing outside its place");
    dp.adopt(live, tables);
    for step in [
        "after restart: into the unknown generation, to the tries",
        "after restart: over the read-back one, hash diff",
        "after restart: trie diff",
    ] {
        change_one(&mut few, &mut rng);
        let t = if step.contains("hash") {
            text(&few)
        } else {
            moved(&few)
        };
        apply_and_check(&mut dp, &t, &mut rng, step);
    }
}

#[test]
fn a_diff_write_classifies_like_a_full_rewrite_also_after_a_restart() {
    let mut rng = Rng(seed());
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/tc-agent-test-diff-{}",
        std::process::id()
    )));
    let mut chans: Vec<String> = (0..CHANNELS).map(|i| channel(&mut rng, i)).collect();
    let change_one = |chans: &mut Vec<String>, rng: &mut Rng| {
        let k = rng.below(CHANNELS as u64) as usize;
        chans[k] = channel(rng, k);
    };
    {
        let mut dp = Datapath::load(Some(&pins.0), 4096).expect("loads");
        dp.reset_generations().expect("fresh maps");
        // A, then B (one channel changed) into the other, empty generation.
        apply_and_check(&mut dp, &text(&chans), &mut rng, "A");
        let a = chans.clone();
        change_one(&mut chans, &mut rng);
        apply_and_check(&mut dp, &text(&chans), &mut rng, "B");
        // A' over A: the diff path, with the flow cache of A's era purged
        // by the apply itself.
        chans = a;
        change_one(&mut chans, &mut rng);
        apply_and_check(&mut dp, &text(&chans), &mut rng, "A'");
        // B' over B, the old generation's cache tidied beforehand (as the
        // agent does after the grace period).
        let pruned = prune_and_check(&mut dp, "B before B'");
        // B and A' differ in the channels changed in each.
        assert!(pruned > 0, "the prune removed nothing");
        change_one(&mut chans, &mut rng);
        apply_and_check(&mut dp, &text(&chans), &mut rng, "B'");
        // The datapath is dropped: the maps stay pinned, as when an agent
        // stops.
    }
    {
        // A new agent over the pinned maps reads the live generation back
        // (as `tc-agent run` does to check its saved state); the other
        // generation is unknown and rewritten whole once.
        let mut dp = Datapath::load(Some(&pins.0), 4096).expect("reloads");
        let live = dp.config().expect("config").generation;
        let tables = dp.read_generation(live).expect("reads back");
        dp.adopt(live, tables);
        for step in [
            "after restart: into the unknown generation",
            "after restart: over the read-back one",
            "after restart: diff again",
        ] {
            change_one(&mut chans, &mut rng);
            apply_and_check(&mut dp, &text(&chans), &mut rng, step);
        }
        // And a restart that adopts nothing: both generations unknown.
        drop(dp);
        let mut dp = Datapath::load(Some(&pins.0), 4096).expect("reloads");
        for step in [
            "restart, nothing adopted: first",
            "restart, nothing adopted: second",
        ] {
            change_one(&mut chans, &mut rng);
            apply_and_check(&mut dp, &text(&chans), &mut rng, step);
        }
    }
}
