//! The interaction view on synthetic kernel reads.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::*;
use crate::observe::naming::mapped;

fn key(client: &str, server: &str, port: u16) -> IxKey {
    IxKey {
        client: if client.is_empty() {
            [0; 16]
        } else {
            mapped(client.parse::<Ipv4Addr>().unwrap())
        },
        server: mapped(server.parse::<Ipv4Addr>().unwrap()),
        port,
        proto: 17,
        _pad: [0; 5],
    }
}

fn counters(req_bytes: u64, resp_bytes: u64) -> IxCounters {
    IxCounters {
        req_pkts: req_bytes / 100,
        req_bytes,
        resp_pkts: resp_bytes / 100,
        resp_bytes,
        ..Default::default()
    }
}

fn sets() -> Vec<(String, Vec<ipnet::IpNet>)> {
    vec![
        ("clients".into(), vec!["198.18.0.0/24".parse().unwrap()]),
        ("server".into(), vec!["198.18.1.1/32".parse().unwrap()]),
    ]
}

/// Feeds `samples` reads one second apart, where client i has sent
/// `rate(i)` bytes per second since the start.
fn run(ix: &mut Interactions, clients: &[(&str, u64)], samples: u64) -> Vec<Housekeeping> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    for s in 1..=samples {
        let entries = clients
            .iter()
            .map(|(c, rate)| (key(c, "198.18.1.1", 53), counters(rate * s, rate * s / 2)))
            .collect();
        let (_, hk) = ix.sample(entries, t0 + Duration::from_secs(s), 0);
        out.push(hk);
    }
    out
}

#[test]
fn map_rows_are_named_by_set_and_rated_over_the_window() {
    let mut ix = Interactions::new(1024, 100);
    ix.set_policy(&sets());
    run(
        &mut ix,
        &[
            ("198.18.0.1", 1000),
            ("198.18.0.2", 3000),
            ("198.18.9.9", 500),
        ],
        8,
    );
    let m = ix.map();
    assert!((m.window_s - 5.0).abs() < 1e-9, "{}", m.window_s);
    assert_eq!(m.interactions.len(), 2, "{:?}", m.interactions);
    let r = &m.interactions[0];
    assert_eq!(
        (r.from.as_str(), r.to.as_str(), r.protocol.as_str(), r.port),
        ("clients", "server", "udp", 53)
    );
    assert!(
        (r.request_bps - 8.0 * 4000.0).abs() < 1e-6,
        "{}",
        r.request_bps
    );
    assert!(
        (r.response_bps - 8.0 * 2000.0).abs() < 1e-6,
        "{}",
        r.response_bps
    );
    let r = &m.interactions[1];
    assert_eq!(r.from, "198.18.9.9");
    assert!((r.request_pps - 5.0).abs() < 1e-9, "{}", r.request_pps);
    let totals = ix.totals();
    let t = totals.iter().find(|t| t.from == "clients").unwrap();
    // The first read is the baseline (a restarted agent shows no spike):
    // seven of the eight seconds count.
    assert_eq!(t.request_bytes, 4000 * 7);
}

#[test]
fn top_talkers_rank_single_sources_and_shares_include_untracked_traffic() {
    let mut ix = Interactions::new(1024, 100);
    ix.set_policy(&sets());
    run(
        &mut ix,
        &[("198.18.0.1", 1000), ("198.18.0.2", 3000), ("", 6000)],
        6,
    );
    let to = Filter::parse("server", ix.namer()).unwrap();
    let t = ix.top_talkers(Some(&to), None, 10);
    let names: Vec<&str> = t.talkers.iter().map(|t| t.source.as_str()).collect();
    assert_eq!(names, ["other", "198.18.0.2", "198.18.0.1"]);
    assert!((t.talkers[1].share - 0.3).abs() < 1e-9, "{:?}", t.talkers);
    assert!((t.talkers[1].bps - 24_000.0).abs() < 1e-6);
    // Responses go to the clients: with --to clients the server is the talker.
    let to = Filter::parse("clients", ix.namer()).unwrap();
    let t = ix.top_talkers(Some(&to), None, 1);
    assert_eq!(t.talkers[0].source, "198.18.1.1");
}

#[test]
fn past_the_bound_the_quietest_unnamed_addresses_fold_into_other() {
    let mut ix = Interactions::new(1024, 2);
    ix.set_policy(&[]);
    run(
        &mut ix,
        &[
            ("198.19.0.1", 100),
            ("198.19.0.2", 200),
            ("198.19.0.3", 300),
            ("198.19.0.4", 400),
        ],
        3,
    );
    let m = ix.map();
    let froms: Vec<&str> = m.interactions.iter().map(|r| r.from.as_str()).collect();
    // The server 198.18.1.1 is one unnamed address; one client is kept.
    assert!(froms.contains(&"other"), "{froms:?}");
    assert!(froms.contains(&"198.19.0.4"), "{froms:?}");
    assert_eq!(m.interactions.len(), 2, "{:?}", m.interactions);
    let total: f64 = m.interactions.iter().map(|r| r.request_bps).sum();
    assert!((total - 8.0 * 1000.0).abs() < 1e-6, "{total}");
}

#[test]
fn a_filling_table_sheds_its_smallest_and_raises_the_admission_threshold() {
    let mut ix = Interactions::new(8, 100);
    ix.set_policy(&sets());
    let clients: Vec<(String, u64)> = (1..=7)
        .map(|i| (format!("198.18.0.{i}"), i * 100))
        .collect();
    let refs: Vec<(&str, u64)> = clients.iter().map(|(c, r)| (c.as_str(), *r)).collect();
    let hk = run(&mut ix, &refs, 2);
    let last = hk.last().unwrap();
    // 7 of 8: past three quarters, shed down to half, the quietest first.
    assert_eq!(last.remove.len(), 3, "{last:?}");
    for k in &last.remove {
        let a = addr_of(&k.client).to_string();
        assert!(
            ["198.18.0.1", "198.18.0.2", "198.18.0.3"].contains(&a.as_str()),
            "{a}"
        );
    }
    assert!(last.admit_units >= MIN_ADMIT, "{last:?}");
    // Emptied: the threshold falls back to zero.
    let t0 = Instant::now();
    let mut units = last.admit_units;
    for s in 0..20 {
        let (_, hk) = ix.sample(Vec::new(), t0 + Duration::from_secs(10 + s), 0);
        units = hk.admit_units;
    }
    assert_eq!(units, 0);
}

#[test]
fn the_admission_threshold_holds_once_the_table_stops_filling() {
    // 600 of 1024 entries, all busy: past half, but after the first read
    // none is new. The threshold rises once and then holds: doubling on
    // would soon shut out any heavy source that starts later.
    let mut ix = Interactions::new(1024, 100);
    ix.set_policy(&sets());
    let clients: Vec<(String, u64)> = (0..600u32)
        .map(|i| (Ipv4Addr::from(0xc613_0000 + i).to_string(), 100))
        .collect();
    let refs: Vec<(&str, u64)> = clients.iter().map(|(c, r)| (c.as_str(), *r)).collect();
    let hk = run(&mut ix, &refs, 20);
    let units: Vec<u32> = hk.iter().map(|h| h.admit_units).collect();
    assert_eq!(units[0], MIN_ADMIT, "{units:?}");
    assert!(units.iter().all(|u| *u == MIN_ADMIT), "{units:?}");
}

#[test]
fn idle_entries_are_removed() {
    let mut ix = Interactions::new(1024, 100);
    ix.set_policy(&sets());
    let t0 = Instant::now();
    let entry = vec![(key("198.18.0.1", "198.18.1.1", 53), counters(100, 0))];
    let mut removed = Vec::new();
    for s in 0..(IDLE_SAMPLES as u64 + 2) {
        // The kernel no longer holds what was removed.
        let read = if removed.is_empty() {
            entry.clone()
        } else {
            Vec::new()
        };
        let (_, hk) = ix.sample(read, t0 + Duration::from_secs(s), 0);
        let finals = hk.remove.iter().map(|k| (*k, entry[0].1)).collect();
        ix.removed(finals);
        removed.extend(hk.remove);
    }
    assert_eq!(removed.len(), 1);
    assert_eq!(ix.table().entries, 0);
}

#[test]
fn removed_entries_final_counts_reach_the_next_detector_sample() {
    // An entry counts 100 bytes a second; the kernel removes it with 150
    // more counted since the last read: the next sample's detector view
    // has those 150 bytes, for the pair and for the source.
    let mut ix = Interactions::new(1024, 100);
    ix.set_policy(&sets());
    let t0 = Instant::now();
    let k = key("198.18.0.1", "198.18.1.1", 53);
    for s in 1..=3u64 {
        ix.sample(
            vec![(k, counters(100 * s, 0))],
            t0 + Duration::from_secs(s),
            0,
        );
    }
    let (pairs, sources) = ix.detect_view();
    assert_eq!(pairs[0].d.req_bytes, 100);
    assert_eq!(sources[0].req_bytes, 100);
    ix.removed(vec![(k, counters(450, 0))]);
    ix.sample(Vec::new(), t0 + Duration::from_secs(4), 0);
    let (pairs, sources) = ix.detect_view();
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    assert_eq!(
        (pairs[0].from.as_str(), pairs[0].to.as_str()),
        ("clients", "server")
    );
    assert_eq!(pairs[0].d.req_bytes, 150);
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].source, "198.18.0.1");
    assert_eq!(sources[0].to, "server");
    assert_eq!((sources[0].req_bytes, sources[0].req_pkts), (150, 1));
    // Counted once: the sample after has nothing.
    ix.sample(Vec::new(), t0 + Duration::from_secs(5), 0);
    let (pairs, sources) = ix.detect_view();
    assert!(
        pairs.is_empty() && sources.is_empty(),
        "{pairs:?} {sources:?}"
    );
}

#[test]
fn shares_stay_honest_when_the_table_sheds_entries() {
    // A heavy client sends 1,000 B/s from the first read; six light ones
    // 100 B/s each from the second. The table (8 entries) then sheds three
    // light ones, whose traffic goes on untracked: what they sent in the
    // window while tracked still counts (under their addresses), so the
    // heavy one's share does not move.
    let mut ix = Interactions::new(8, 100);
    ix.set_policy(&sets());
    let t0 = Instant::now();
    let to = Filter::parse("server", ix.namer()).unwrap();
    let heavy = key("198.18.0.100", "198.18.1.1", 53);
    let mut light: Vec<IxKey> = (1..=6)
        .map(|i| key(&format!("198.18.0.{i}"), "198.18.1.1", 53))
        .collect();
    let mut shares = Vec::new();
    let mut shed = 0;
    for s in 1..=(WINDOW as u64 + 3) {
        let read = |light: &[IxKey], s: u64| {
            let mut e = vec![(heavy, counters(1000 * s, 0))];
            if s >= 2 {
                e.extend(light.iter().map(|k| (*k, counters(100 * (s - 1), 0))));
            }
            if s >= 4 {
                // The shed ones, from the read after their final counts.
                let untracked = key("", "198.18.1.1", 53);
                e.push((untracked, counters(300 * (s - 3), 0)));
            }
            e
        };
        let (_, hk) = ix.sample(read(&light, s), t0 + Duration::from_secs(s), 0);
        assert!(!hk.remove.contains(&heavy), "{hk:?}");
        // Removed a second after the read, with that second's bytes.
        let finals: Vec<(IxKey, IxCounters)> = read(&light, s + 1)
            .into_iter()
            .filter(|(k, _)| hk.remove.contains(k))
            .collect();
        shed += finals.len();
        light.retain(|k| !hk.remove.contains(k));
        ix.removed(finals);
        if s >= 2 {
            let t = ix.top_talkers(Some(&to), None, 10);
            let sum: f64 = t.talkers.iter().map(|t| t.share).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{t:?}");
            let h = t.talkers.iter().find(|t| t.source == "198.18.0.100");
            shares.push(h.map(|t| t.share).unwrap_or(0.0));
        }
    }
    assert_eq!(shed, 3, "7 of 8 entries: shed down to half");
    // The heavy one holds 1000 / 1600 of every second, so of every window.
    for share in &shares {
        assert!((share - 1000.0 / 1600.0).abs() < 1e-9, "{shares:?}");
    }
}
