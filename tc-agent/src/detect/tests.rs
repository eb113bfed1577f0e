use std::time::Instant;

use super::*;
use crate::detect::testutil::{channel, rng, sample, Flow, Noise, Run, Wander};

#[test]
fn a_flood_is_one_dos_event_and_no_spike() {
    // One of 20 sources floods, through a channel: the pair, the channel
    // and the destination all jump, and only `dos` says so, also after it
    // ends while the traffic stays up a little.
    let flows: Vec<Flow> = (0..20)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 50.0))
        .collect();
    let mut r = rng(1);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..400u64 {
        let scale = match i {
            100..200 => 80.0,
            _ => 1.0,
        };
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(j, (f, w))| f.pair(w.next(&mut r) * if j == 0 { scale } else { 1.0 }))
            .collect();
        let bits: f64 = pairs.iter().map(|p| p.d.req_bytes as f64 * 8.0).sum();
        run.feed(&mut det, i, &sample(i, pairs, vec![channel("all", bits)]));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    assert_eq!(run.started[0].1.kind, EventKind::Dos);
    assert_eq!(run.started[0].1.id, "dos-1");
    assert_eq!(run.started[0].1.from, ["198.18.1.0"]);
    assert_eq!(run.ended.len(), 1);
    assert_eq!(det.log().open_by_kind().iter().map(|k| k.1).sum::<u64>(), 0);
}

#[test]
fn ids_count_every_event() {
    let mut log = EventLog::default();
    let mk = |kind| Event {
        id: String::new(),
        kind,
        started: 1,
        ended: None,
        from: Vec::new(),
        to: Vec::new(),
        summary: String::new(),
        evidence: serde_json::Map::new(),
    };
    let changes = log.apply(vec![
        Found::Started {
            key: "a".into(),
            event: mk(EventKind::Spike),
        },
        Found::Started {
            key: "b".into(),
            event: mk(EventKind::Dos),
        },
    ]);
    let ids: Vec<_> = changes
        .iter()
        .map(|c| match c {
            Change::Started(e) | Change::Ended(e) => e.id.clone(),
        })
        .collect();
    assert_eq!(ids, ["spike-1", "dos-2"]);
}

/// 1,000 interactions and 3,000 sources a sample, the sources all new
/// every sample (a random-source churn): the state stays under its caps,
/// and what goes idle is forgotten.
#[test]
fn state_is_bounded_and_pruned() {
    let flows: Vec<Flow> = (0..1000)
        .map(|i| {
            Flow::tcp(
                &format!("10.1.{}.{}", i / 250, i % 250),
                &format!("s{}", i % 50),
                30.0,
            )
        })
        .collect();
    let mut det = Detector::default();
    let mut max = det.state_size();
    let mut times = Vec::new();
    let churn = 600u64;
    for i in 0..churn + spike::IDLE + 40 {
        let pairs: Vec<_> = if i < churn {
            flows.iter().map(|f| f.pair(1.0)).collect()
        } else {
            flows[..10].iter().map(|f| f.pair(1.0)).collect()
        };
        let mut s = sample(i, pairs, Vec::new());
        if i < churn {
            for k in 0..3000u64 {
                let n = i * 3000 + k;
                s.sources.push(SourceSample {
                    source: format!("2001:db8::{:x}:{:x}", n >> 16, n & 0xffff),
                    to: format!("s{}", k % 50),
                    req_pkts: 3,
                    req_bytes: 300,
                });
            }
        }
        let at = Instant::now();
        det.observe(&s);
        if i < churn {
            times.push(at.elapsed().as_secs_f64());
        }
        let now = det.state_size();
        max = StateSize {
            spike_pairs: max.spike_pairs.max(now.spike_pairs),
            spike_channels: max.spike_channels.max(now.spike_channels),
            collapse_dests: max.collapse_dests.max(now.collapse_dests),
            collapse_clients: max.collapse_clients.max(now.collapse_clients),
            dos_dests: max.dos_dests.max(now.dos_dests),
            dos_sources: max.dos_sources.max(now.dos_sources),
        };
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "largest state {max:?}; observe with 1,000 interactions and 3,000 new sources: median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} build)",
        times[times.len() / 2] * 1e3,
        times[times.len() * 99 / 100] * 1e3,
        times[times.len() - 1] * 1e3,
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    assert!(max.spike_pairs <= spike::MAX_SERIES);
    assert!(max.collapse_dests <= collapse::MAX_DESTS);
    assert!(max.dos_dests <= dos::MAX_DESTS);
    // Every source was new: the cap held them, not their number (1.8M).
    assert!(max.dos_sources <= dos::MAX_SOURCES, "{max:?}");
    assert!(max.dos_sources >= dos::MAX_SOURCES / 2, "{max:?}");
    let end = det.state_size();
    assert_eq!(end.spike_pairs, 10, "{end:?}");
    assert_eq!(end.collapse_clients, 10, "{end:?}");
    assert_eq!(end.dos_sources, 10, "{end:?}");
    assert_eq!(end.dos_dests, 50, "destinations are kept longer: {end:?}");
}

/// 1,000 interactions and 3,000 sources a sample, the same ones every
/// sample: the state is exactly what is watched, and stays so.
#[test]
fn steady_state_does_not_grow() {
    let flows: Vec<Flow> = (0..1000)
        .map(|i| {
            Flow::tcp(
                &format!("10.1.{}.{}", i / 250, i % 250),
                &format!("s{}", i % 50),
                30.0,
            )
        })
        .collect();
    let mut r = rng(6);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let mut det = Detector::default();
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..300u64 {
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .map(|(f, w)| f.pair(w.next(&mut r)))
            .collect();
        let mut s = sample(i, pairs, Vec::new());
        for k in 0..3000u64 {
            s.sources.push(SourceSample {
                source: format!("2001:db8::{k:x}"),
                to: format!("s{}", k % 50),
                req_pkts: 3,
                req_bytes: 300,
            });
        }
        let at = Instant::now();
        let changes = det.observe(&s);
        times.push(at.elapsed().as_secs_f64());
        assert!(changes.is_empty(), "{changes:?}");
        sizes.push(det.state_size());
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "observe with 1,000 steady interactions and 4,000 sources: median {:.2} ms, p99 {:.2} ms ({} build)",
        times[times.len() / 2] * 1e3,
        times[times.len() * 99 / 100] * 1e3,
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    let want = StateSize {
        spike_pairs: 1000,
        spike_channels: 0,
        collapse_dests: 50,
        collapse_clients: 1000,
        dos_dests: 50,
        dos_sources: 4000,
    };
    assert!(sizes.iter().all(|s| *s == want), "{:?}", sizes.last());
}
