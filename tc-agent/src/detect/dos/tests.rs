use super::*;
use crate::detect::{
    testutil::{rng, sample, Flow, Noise, Run, Wander},
    Detector, PairSample, SourceSample,
};

/// `n` sources of `srv` at `pps` each, wandering ±30%; from sample `at`
/// on, the first `k` send `factor` times as much. Runs `at + after`
/// samples through the whole detector.
fn flood(n: usize, pps: f64, at: u64, after: u64, k: usize, factor: f64, seed: u8) -> Run {
    let flows: Vec<Flow> = (0..n)
        .map(|i| Flow::tcp(&format!("198.18.{}.{}", i / 250, i % 250 + 1), "srv", pps))
        .collect();
    let mut r = rng(seed);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..at + after {
        let pairs = flows
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(j, (f, w))| {
                let scale = if j < k && i >= at { factor } else { 1.0 };
                f.pair(scale * w.next(&mut r))
            })
            .collect();
        run.feed(&mut det, i, &sample(1000 + i, pairs, Vec::new()));
    }
    run
}

#[test]
fn three_of_two_hundred_sources_jump_eighty_times() {
    let run = flood(200, 10.0, 25, 60, 3, 80.0, 1);
    assert_eq!(
        run.started.len(),
        1,
        "one event, no spike: {:?}",
        run.started
    );
    let (i, e) = &run.started[0];
    assert_eq!(e.kind, EventKind::Dos);
    assert!(e.id.starts_with("dos-"));
    assert!(*i < 25 + u64::from(ONSET), "detected at {i}");
    let mut from = e.from.clone();
    from.sort();
    assert_eq!(from, ["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
    assert_eq!(e.to, ["srv"]);
    let ev = &e.evidence;
    assert_eq!(ev["distinct_sources"], 200);
    let base = ev["baseline_distinct_sources"].as_f64().unwrap();
    assert!((195.0..=200.0).contains(&base), "{base}");
    assert_eq!(ev["crowd"], false);
    assert_eq!(ev["protocol"], "tcp");
    assert_eq!(ev["port"], 80);
    let sources = ev["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    let mut total = 0.0;
    for s in sources {
        let share = s["share"].as_f64().unwrap();
        total += share;
        assert!((0.1..0.3).contains(&share), "{s}");
        assert!(s["bps"].as_f64().unwrap() > 20.0 * s["baseline_bps"].as_f64().unwrap());
        assert!(s["pps"].as_f64().unwrap() > 20.0 * s["baseline_pps"].as_f64().unwrap());
    }
    assert!(total > 0.5, "{total}");
    let factor = ev["factor"].as_f64().unwrap();
    assert!((1.8..2.8).contains(&factor), "{factor}");
    assert!(
        e.summary.starts_with("3 of 200 sources send ")
            && e.summary.contains("of the traffic to srv"),
        "{}",
        e.summary
    );
}

#[test]
fn untracked_quiet_sources_and_new_flooders() {
    // The datapath folds the quiet sources into `other`; the flooders are
    // admitted one by one as they grow: new sources, no baseline of their
    // own, far above the typical source.
    let mut det = Detector::default();
    let mut run = Run::default();
    let mut r = rng(2);
    let mut w = Wander::new(Noise::Iid(0.3));
    for i in 0..60u64 {
        let quiet = 2000.0 * w.next(&mut r);
        let mut sources = vec![SourceSample {
            source: "other".into(),
            to: "srv".into(),
            req_pkts: quiet as u64,
            req_bytes: quiet as u64 * 100,
        }];
        if i >= 30 {
            for k in 0..3 {
                sources.push(SourceSample {
                    source: format!("198.18.9.{k}"),
                    to: "srv".into(),
                    req_pkts: 800,
                    req_bytes: 80_000,
                });
            }
        }
        let s = crate::detect::Sample {
            t: i,
            dt: 1.0,
            pairs: Vec::new(),
            sources,
            channels: Vec::new(),
        };
        run.feed(&mut det, i, &s);
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert!(*i < 30 + u64::from(ONSET));
    let mut from = e.from.clone();
    from.sort();
    assert_eq!(from, ["198.18.9.0", "198.18.9.1", "198.18.9.2"]);
    assert_eq!(e.evidence["crowd"], false);
}

#[test]
fn a_random_source_crowd_in_other() {
    let mut det = Detector::default();
    let mut run = Run::default();
    let mut r = rng(3);
    let flows: Vec<Flow> = (0..20)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 50.0))
        .collect();
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    for i in 0..100u64 {
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .map(|(f, w)| f.pair(w.next(&mut r)))
            .collect();
        let mut s = sample(i, pairs, Vec::new());
        if i >= 60 {
            // Thousands of random addresses, each too small to track.
            s.sources.push(SourceSample {
                source: "other".into(),
                to: "srv".into(),
                req_pkts: 9000,
                req_bytes: 9000 * 60,
            });
        }
        run.feed(&mut det, i, &s);
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert!(*i < 60 + u64::from(ONSET));
    assert_eq!(e.kind, EventKind::Dos);
    assert_eq!(e.evidence["crowd"], true);
    let sources = e.evidence["sources"].as_array().unwrap();
    let other = sources.iter().find(|s| s["source"] == "other").unwrap();
    assert!(other["share"].as_f64().unwrap() > 0.8, "{other}");
    // The 20 regular clients send as usual: none of them is named.
    assert_eq!(e.from, ["other"], "a crowd all in `other` is named so");
    assert!(e.summary.starts_with("a crowd floods srv"), "{}", e.summary);
}

#[test]
fn a_crowd_of_new_tracked_sources() {
    let mut det = Detector::default();
    let mut run = Run::default();
    let mut r = rng(4);
    let quiet: Vec<Flow> = (0..20)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 50.0))
        .collect();
    let crowd: Vec<Flow> = (0..300)
        .map(|i| Flow::tcp(&format!("198.19.{}.{}", i / 200, i % 200), "srv", 20.0))
        .collect();
    let mut w = Wander::new(Noise::Iid(0.3));
    for i in 0..100u64 {
        let mut pairs: Vec<_> = quiet.iter().map(|f| f.pair(w.next(&mut r))).collect();
        if i >= 60 {
            pairs.extend(crowd.iter().map(|f| f.pair(w.next(&mut r))));
        }
        run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert!(*i < 60 + u64::from(ONSET));
    assert_eq!(e.evidence["crowd"], true);
    assert_eq!(e.evidence["distinct_sources"], 320);
    assert_eq!(e.from.len(), CROWD_NAMED);
    assert!(
        e.from.iter().all(|f| f.starts_with("198.19.")),
        "{:?}",
        e.from
    );
}

#[test]
fn a_flood_on_a_destination_gone_idle() {
    let flows: Vec<Flow> = (0..20)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 50.0))
        .collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..300u64 {
        let pairs = match i {
            0..60 => flows.iter().map(|f| f.pair(1.0)).collect(),
            60..180 => Vec::new(),
            _ => flows[..3].iter().map(|f| f.pair(10.0)).collect(),
        };
        run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
    }
    let d = run.of(EventKind::Dos);
    assert_eq!(d.len(), 1, "{:?}", run.started);
    assert!(d[0].0 < 180 + u64::from(ONSET));
    assert_eq!(d[0].1.from.len(), 3);
}

#[test]
fn a_new_destination_warms_up_first() {
    // A service first seen after the detector warmed up, busy from its
    // first sample: its load is learned, not called a flood.
    let f = Flow::tcp("198.18.1.1", "new", 5000.0);
    let g = Flow::tcp("198.18.1.2", "old", 50.0);
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..200u64 {
        let mut pairs = vec![g.pair(1.0)];
        if i >= 100 {
            pairs.push(f.pair(1.0));
        }
        run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
    }
    assert!(run.started.is_empty(), "{:?}", run.started);
}

#[test]
fn nothing_during_the_warm_up() {
    let run = flood(200, 10.0, 4, 60, 3, 80.0, 5);
    assert!(run.of(EventKind::Dos).is_empty(), "{:?}", run.started);
}

#[test]
fn a_flood_with_dips_is_one_event_and_ends_after_calm() {
    let flows: Vec<Flow> = (0..50)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 20.0))
        .collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..250u64 {
        let on = (60..120).contains(&i) && (i - 60) % 15 < 12;
        let pairs = flows
            .iter()
            .enumerate()
            .map(|(j, f)| f.pair(if j < 2 && on { 50.0 } else { 1.0 }))
            .collect();
        run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    assert_eq!(run.ended.len(), 1);
    // Last flood sample 116; calm from 117.
    let end = run.ended[0].0;
    assert!(
        (117 + u64::from(CALM) - 1..=117 + u64::from(CALM) + 1).contains(&end),
        "{end}"
    );
}

/// False events per destination-hour (destinations of 20 wandering
/// sources), and the delay of `k` of 200 sources jumping `factor` times
/// (samples from the onset, 1 = the first sample of the onset).
#[test]
fn threshold_table() {
    for noise in [
        Noise::Iid(0.3),
        Noise::Walk(0.3),
        Noise::Iid(0.5),
        Noise::Walk(0.5),
    ] {
        let flows: Vec<Flow> = (0..100)
            .map(|i| Flow::tcp(&format!("198.18.1.{i}"), &format!("s{}", i / 20), 50.0))
            .collect();
        let mut r = rng(8);
        let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(noise)).collect();
        let mut det = Detector::default();
        let mut events = 0;
        for i in 0..3600 {
            let pairs = flows
                .iter()
                .zip(&mut w)
                .map(|(f, w)| f.pair(w.next(&mut r)))
                .collect();
            events += det
                .observe(&sample(i, pairs, Vec::new()))
                .iter()
                .filter(|c| matches!(c, crate::detect::Change::Started(_)))
                .count();
        }
        eprintln!(
            "dos {noise:?}: {:.2} false events (any kind) per destination-hour (5 destinations, 20 sources each)",
            events as f64 / 5.0
        );
        if matches!(noise, Noise::Iid(a) | Noise::Walk(a) | Noise::Bursty(a) if a <= 0.3) {
            assert_eq!(events, 0);
        }
    }
    // Stress, printed for the record: every source bursts to 10x its rate
    // for 1-2 s about 7 times an hour. On destinations of few sources a
    // burst of one is, by this pattern's letter, a few sources dominating.
    for n_src in [5usize, 20] {
        let n = bursts_of_ten(n_src);
        eprintln!(
            "dos stress, 10x bursts of single sources, {n_src} sources a destination: {:.2} events per destination-hour",
            n as f64 / (100 / n_src) as f64
        );
    }
    for (k, factor) in [
        (3, 80.0),
        (3, 20.0),
        (3, 10.0),
        (10, 20.0),
        (10, 40.0),
        (1, 400.0),
    ] {
        let mut delays = Vec::new();
        for seed in 0..5 {
            let run = flood(200, 10.0, 30, 30, k, factor, seed);
            let d = run.of(EventKind::Dos);
            delays.push(d.first().map(|(i, e)| (i - 30 + 1, e.from.len())));
        }
        eprintln!("dos {k} of 200 sources x{factor}: (delay samples, named) {delays:?}");
        // Clear cases: the flooders carry well over SHARE of the traffic.
        let flood = factor * k as f64;
        if flood / (flood + 200.0 - k as f64) >= 0.54 {
            assert!(
                delays
                    .iter()
                    .all(|d| d.is_some_and(|(s, n)| s <= u64::from(ONSET) && n == k)),
                "{delays:?}"
            );
        }
    }
}

#[test]
fn the_main_client_sending_more_is_no_flood() {
    // One client (wrk) and a trickle from a second: the main one sends
    // twenty times as much. That is demand (a spike), not a flood.
    let main = Flow::tcp("198.18.0.1", "web", 200.0);
    let other = Flow::tcp("198.18.0.9", "web", 5.0);
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..120u64 {
        let scale = if i >= 60 { 20.0 } else { 1.0 };
        let pairs = vec![main.pair(scale), other.pair(1.0)];
        run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
    }
    assert!(run.of(EventKind::Dos).is_empty(), "{:?}", run.started);
    assert_eq!(run.of(EventKind::Spike).len(), 1, "{:?}", run.started);
}

/// `dos` events in an hour of 100 sources, `n_src` to a destination, each
/// wandering ±30% and bursting to 10x for 1-2 s at 0.2% a second.
fn bursts_of_ten(n_src: usize) -> usize {
    use proptest::prelude::RngExt;
    let flows: Vec<Flow> = (0..100)
        .map(|i| Flow::tcp(&format!("198.18.1.{i}"), &format!("s{}", i / n_src), 50.0))
        .collect();
    let mut r = rng(8);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let mut burst = vec![0u32; flows.len()];
    let mut det = Detector::default();
    let mut events = 0;
    for i in 0..3600 {
        let pairs = flows
            .iter()
            .zip(&mut w)
            .zip(&mut burst)
            .map(|((f, w), b)| {
                if *b == 0 && r.random_range(0.0..1.0) < 0.002 {
                    *b = r.random_range(1..=2);
                }
                let scale = if *b > 0 {
                    *b -= 1;
                    10.0
                } else {
                    1.0
                };
                f.pair(w.next(&mut r) * scale)
            })
            .collect();
        events += det
            .observe(&sample(i, pairs, Vec::new()))
            .iter()
            .filter(|c| matches!(c, crate::detect::Change::Started(e) if e.kind == EventKind::Dos))
            .count();
    }
    events
}

#[test]
fn a_one_sample_burst_is_no_flood_however_heavy() {
    // Three of 20 sources at 15x or 80x for one sample, or one of 20
    // clients at 50 kbit/s uploading 1 MB in one second (160x): nothing.
    // For three samples: a flood, at the second.
    for (k, factor) in [(3usize, 15.0), (3, 80.0), (1, 160.0)] {
        for (len, want) in [(1u64, 0usize), (3, 1)] {
            // 62.5 packets of 100 bytes a second: 50 kbit/s.
            let flows: Vec<Flow> = (0..20)
                .map(|i| Flow::tcp(&format!("198.18.1.{i}"), "srv", 62.5))
                .collect();
            let mut det = Detector::default();
            let mut run = Run::default();
            for i in 0..100u64 {
                let on = (60..60 + len).contains(&i);
                let pairs = flows
                    .iter()
                    .enumerate()
                    .map(|(j, f)| f.pair(if j < k && on { factor } else { 1.0 }))
                    .collect();
                run.feed(&mut det, i, &sample(i, pairs, Vec::new()));
            }
            assert_eq!(
                run.started.len(),
                want,
                "{k} x{factor} {len}: {:?}",
                run.started
            );
            if want == 1 {
                assert_eq!(run.started[0].0, 60 + u64::from(ONSET) - 1);
                assert_eq!(run.started[0].1.kind, EventKind::Dos);
            }
        }
    }
}

#[test]
fn a_flood_that_switches_sources_updates_its_event() {
    // 20 sources; from 30 on, three of them flood at 80x; from 50 on, three
    // others take over (the first three back to normal); then sets of
    // three keep switching every 3 s, 44 times (138 sources in all); the
    // flood stops at 200.
    let flows: Vec<Flow> = (0..200)
        .map(|i| Flow::tcp(&format!("198.18.{}.{}", i / 250, i % 250 + 1), "srv", 10.0))
        .collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..260u64 {
        let set = match i {
            30..50 => Some(0),
            50..70 => Some(1),
            70..200 => Some(2 + (i - 70) / 3),
            _ => None,
        };
        let pairs = flows
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let hot = set.is_some_and(|s| j as u64 / 3 == s);
                f.pair(if hot { 80.0 } else { 1.0 })
            })
            .collect();
        run.feed(&mut det, i, &sample(1000 + i, pairs, Vec::new()));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (_, first) = &run.started[0];
    let mut from = first.from.clone();
    from.sort();
    assert_eq!(from, ["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
    // The takeover at 50 is reported within two samples, with all six.
    let (i, e) = &run.updated[0];
    assert!((50..=51).contains(i), "updated at {i}");
    assert_eq!(e.id, first.id);
    assert_eq!(e.started, first.started);
    let mut from = e.from.clone();
    from.sort();
    assert_eq!(
        from,
        [
            "198.18.0.1",
            "198.18.0.2",
            "198.18.0.3",
            "198.18.0.4",
            "198.18.0.5",
            "198.18.0.6"
        ]
    );
    let sources = e.evidence["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 6);
    // Heavy now first, with their numbers of now.
    assert!(sources[0]["share"].as_f64().unwrap() > 0.1, "{sources:?}");
    assert!(e.summary.contains("switched sources"), "{}", e.summary);
    // Bounded: 138 sources flooded in turn, 64 are named, the rest counted.
    let (_, last) = run.updated.last().unwrap();
    assert_eq!(last.from.len(), MAX_FROM);
    assert!(last.evidence["sources"].as_array().unwrap().len() <= MAX_FROM);
    let more = last.evidence["more_sources"].as_u64().unwrap();
    assert_eq!(more, 138 - MAX_FROM as u64);
    // The log returns it as changed, once per change; it ends once.
    assert_eq!(run.ended.len(), 1);
    assert!(run.updated.len() >= 40, "{}", run.updated.len());
    let kept = det.log().get(&first.id).unwrap();
    assert_eq!(kept.from.len(), MAX_FROM);
    assert!(kept.ended.is_some());
}

#[test]
fn a_flood_starting_at_any_point_of_a_second_is_called() {
    // The agent samples every 200 ms and the detectors judge seconds: a
    // flood that starts mid-second gives a first second only partly up, in
    // which the three flooders carry under half of the traffic (not the
    // pattern yet). That second must not become the level the onset has
    // to step above (it did: 4 of 5 phases were never called).
    let flows: Vec<Flow> = (0..200)
        .map(|i| Flow::tcp(&format!("198.18.2.{}", i + 1), "srv", 10.0))
        .collect();
    for phase in 0..5u64 {
        let mut det = Detector::default();
        let mut run = Run::default();
        let onset = 150 + phase;
        for i in 0..60 * 5 {
            let pairs: Vec<PairSample> = flows
                .iter()
                .enumerate()
                .map(|(j, f)| f.pair(if j < 3 && i >= onset { 80.0 * 0.2 } else { 0.2 }))
                .collect();
            let sources: Vec<SourceSample> = pairs.iter().map(Flow::source).collect();
            let mut total = pairs[0].clone();
            total.from = "clients".into();
            for p in &pairs[1..] {
                total.d.add(&p.d);
            }
            let mut s = sample(1000 + i / 5, vec![total], Vec::new());
            s.sources = sources;
            s.dt = 0.2;
            run.feed(&mut det, i, &s);
        }
        assert_eq!(run.started.len(), 1, "phase {phase}: {:?}", run.started);
        let (i, e) = &run.started[0];
        assert_eq!(e.kind, EventKind::Dos, "phase {phase}");
        // Two whole seconds after the partial one at most.
        assert!(*i < onset + 15, "phase {phase}: called at sub-sample {i}");
        assert_eq!(e.from.len(), 3, "phase {phase}: {:?}", e.from);
    }
}
