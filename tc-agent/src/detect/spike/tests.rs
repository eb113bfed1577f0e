use std::collections::HashSet;

use super::*;
use crate::detect::{
    testutil::{channel, rng, sample, Flow, Noise, Run, Wander},
    Detector,
};
use tc_common::IxCounters;

/// `n` clients of `srv` at `pps` each, wandering by `noise`; from sample
/// `at` on, client 0 sends `factor` times its rate. Returns the run.
fn pairs_run(n: usize, pps: f64, noise: Noise, at: u64, factor: impl Fn(u64) -> f64) -> Run {
    let flows: Vec<Flow> = (0..n)
        .map(|i| Flow::tcp(&format!("10.0.0.{i}"), "srv", pps))
        .collect();
    let mut r = rng(7);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(noise)).collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..at + 200 {
        let pairs = flows
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(k, (f, w))| {
                let scale = if k == 0 && i >= at { factor(i) } else { 1.0 };
                f.pair(w.next(&mut r) * scale)
            })
            .collect();
        run.feed(&mut det, i, &sample(1000 + i, pairs, Vec::new()));
    }
    run
}

#[test]
fn a_tripled_interaction_is_a_spike_within_three_samples() {
    let run = pairs_run(10, 100.0, Noise::Iid(0.3), 120, |_| 3.0);
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert_eq!(e.kind, EventKind::Spike);
    assert!(*i < 120 + u64::from(ONSET), "detected at {i}");
    assert_eq!(e.from, vec!["10.0.0.0".to_string()]);
    assert_eq!(e.to, vec!["srv".to_string()]);
    assert!(e.id.starts_with("spike-"));
    let ev = &e.evidence;
    assert_eq!(ev["protocol"], "tcp");
    assert_eq!(ev["port"], 80);
    assert_eq!(ev["metric"], "request_bps");
    let factor = ev["factor"].as_f64().unwrap();
    assert!((2.0..4.5).contains(&factor), "factor {factor}");
    for k in ["request_bps", "request_pps"] {
        let now = ev[k]["now"].as_f64().unwrap();
        let base = ev[k]["baseline"].as_f64().unwrap();
        assert!(now > 2.0 * base, "{k}: {now} vs {base}");
    }
    assert!(e.summary.contains("10.0.0.0 -> srv"), "{}", e.summary);
}

#[test]
fn nothing_during_the_warm_up() {
    // The client starts small and jumps tenfold during its warm-up: that
    // is its level, not a spike.
    let run = pairs_run(1, 100.0, Noise::Iid(0.3), 3, |_| 10.0);
    assert!(run.started.is_empty(), "{:?}", run.started);
}

#[test]
fn an_episode_with_dips_is_one_event_and_ends_after_calm() {
    // Three times the rate for 60 samples, dipping back to normal for 3
    // samples every 15; then normal again.
    let run = pairs_run(5, 200.0, Noise::Iid(0.3), 100, |i| {
        let k = i - 100;
        if k >= 60 || k % 15 >= 12 {
            1.0
        } else {
            3.0
        }
    });
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    assert_eq!(run.ended.len(), 1, "{:?}", run.ended);
    let (end, e) = &run.ended[0];
    // The last hot sample is 156 (k = 56); calm from 157 on.
    assert!(
        (157 + u64::from(CALM) - 1..=157 + u64::from(CALM) + 2).contains(end),
        "ended at {end}"
    );
    assert_eq!(e.ended, Some(1000 + end));
}

#[test]
fn tiny_flows_are_ignored() {
    let run = pairs_run(1, 1.0, Noise::Iid(0.3), 60, |_| 10.0);
    assert!(run.started.is_empty(), "{:?}", run.started);
}

#[test]
fn a_channel_spike_names_the_channel() {
    let mut r = rng(3);
    let mut w = Wander::new(Noise::Iid(0.3));
    let mut det = Detector::default();
    let mut run = Run::default();
    // As the agent names the channel's sides: a set, CIDRs, `any`; made
    // once per policy and shared by the samples.
    let sides = std::sync::Arc::new(crate::detect::ChannelSides {
        from: crate::detect::scope::Side::Set("clients".into()),
        to: crate::detect::scope::Side::Nets(vec!["198.18.5.0/24".parse().unwrap()].into()),
        ..Default::default()
    });
    for i in 0..200 {
        let scale = if i >= 100 { 3.0 } else { 1.0 };
        let mut c = channel("web", 10e6 * scale * w.next(&mut r));
        c.sides = sides.clone();
        run.feed(&mut det, i, &sample(i, Vec::new(), vec![c]));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert!(*i < 100 + u64::from(ONSET));
    assert_eq!(e.from, ["clients"]);
    assert_eq!(e.to, ["198.18.5.0/24"]);
    assert_eq!(e.evidence["channel"], "web");
    assert_eq!(e.evidence["metric"], "offered_bps");
    assert_eq!(e.evidence["protocol"], "mixed");
    assert!(e.evidence["port"].is_null());
}

#[test]
fn a_lasting_level_becomes_the_new_normal() {
    let run = pairs_run(1, 100.0, Noise::Iid(0.3), 60, |_| 3.0);
    // `pairs_run` runs 200 samples past the onset: shorter than
    // MAX_EPISODE, so the event is still open; run the long case here.
    assert_eq!(run.started.len(), 1);
    let f = Flow::tcp("a", "b", 100.0);
    let mut sp = Spike::default();
    let none = HashSet::new();
    let mut starts = 0;
    let mut ends = 0;
    for i in 1..=(60 + MAX_EPISODE + 300) {
        let scale = if i > 60 { 3.0 } else { 1.0 };
        let s = sample(i, vec![f.pair(scale)], Vec::new());
        for x in sp.observe(&s, i, &none) {
            match x {
                Found::Started { .. } => starts += 1,
                Found::Ended { .. } => ends += 1,
                Found::Updated { .. } => {}
            }
        }
    }
    assert_eq!((starts, ends), (1, 1));
}

/// Events of the spike detector alone (onset ratio `ratio`) on `series`
/// series at `pps` for `len` samples, each wandering by `noise`,
/// multiplied by `factor` from sample `at`; returns the start samples of
/// every event.
#[expect(clippy::too_many_arguments, reason = "one experiment's knobs")]
fn starts(
    ratio: f64,
    series: usize,
    pps: f64,
    noise: Noise,
    len: u64,
    at: u64,
    factor: f64,
    seed: u8,
) -> Vec<u64> {
    let flows: Vec<Flow> = (0..series)
        .map(|i| Flow::tcp(&format!("c{i}"), &format!("s{i}"), pps))
        .collect();
    let mut r = rng(seed);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(noise)).collect();
    let mut sp = Spike::with_ratio(ratio);
    let none = HashSet::new();
    let mut out = Vec::new();
    for i in 1..=len {
        let scale = if i >= at { factor } else { 1.0 };
        let pairs = flows
            .iter()
            .zip(&mut w)
            .map(|(f, w)| f.pair(scale * w.next(&mut r)))
            .collect();
        let s = sample(i, pairs, Vec::new());
        for x in sp.observe(&s, i, &none) {
            if let Found::Started { .. } = x {
                out.push(i);
            }
        }
    }
    out
}

/// The data the onset ratio was chosen on: for each candidate, false
/// events per series-hour of wandering traffic (50 series-hours per noise
/// model), and the delay in samples (1 = flagged at the first sample of
/// the onset; 20 seeds) on synthetic onsets. Printed with `--nocapture`;
/// the figures are in `detect/mod.rs`. Asserted for the chosen [`RATIO`]:
/// no false event at ±30%, and 3x and more within [`ONSET`] samples.
#[test]
fn threshold_table() {
    let hours = 50;
    for ratio in [1.5, 1.8, RATIO, 2.5] {
        for noise in [
            Noise::Iid(0.3),
            Noise::Walk(0.3),
            Noise::Iid(0.5),
            Noise::Walk(0.5),
            Noise::Iid(0.8),
            Noise::Bursty(0.3),
        ] {
            // The other candidates on fewer hours: they are context.
            let hours = if ratio == RATIO { hours } else { 10 };
            let n = starts(ratio, hours, 100.0, noise, 3600, u64::MAX, 1.0, 11).len();
            let per_hour = n as f64 / hours as f64;
            eprintln!("spike ratio {ratio} {noise:?}: {per_hour:.2} false events per hour");
            if ratio == RATIO
                && matches!(noise, Noise::Iid(a) | Noise::Walk(a) | Noise::Bursty(a) if a <= 0.3)
            {
                assert_eq!(n, 0, "{noise:?}: {n} false events in {hours} hours");
            }
        }
        for factor in [1.5, 2.0, 2.5, 3.0, 80.0] {
            for noise in [Noise::Iid(0.3), Noise::Walk(0.3)] {
                let mut delays = Vec::new();
                let mut missed = 0;
                for seed in 0..20 {
                    let s = starts(ratio, 1, 100.0, noise, 400, 300, factor, seed);
                    match s.iter().find(|&&i| i >= 300) {
                        Some(i) => delays.push(i - 300 + 1),
                        None => missed += 1,
                    }
                }
                delays.sort_unstable();
                let median = delays.get(delays.len() / 2);
                eprintln!(
                    "spike ratio {ratio} onset {factor}x {noise:?}: median delay {median:?} samples, max {:?}, missed {missed}/20",
                    delays.last()
                );
                if ratio == RATIO && factor >= 3.0 {
                    assert_eq!(missed, 0);
                    assert!(delays.iter().all(|&d| d <= u64::from(ONSET)), "{delays:?}");
                }
            }
        }
    }
}

#[test]
fn a_channel_rising_with_one_interaction_is_that_interaction_s_spike() {
    // Two client sets through one channel; one triples: one event, the
    // interaction's, not also the channel's (which doubles).
    let a = Flow::tcp("a", "srv", 200.0);
    let b = Flow::tcp("b", "srv", 200.0);
    let mut r = rng(4);
    let mut w = [Wander::new(Noise::Iid(0.1)), Wander::new(Noise::Iid(0.1))];
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..200 {
        let scale = if i >= 100 { 3.0 } else { 1.0 };
        let pairs = vec![a.pair(scale * w[0].next(&mut r)), b.pair(w[1].next(&mut r))];
        let bits: f64 = pairs.iter().map(|p| p.d.req_bytes as f64 * 8.0).sum();
        run.feed(
            &mut det,
            i,
            &sample(i, pairs, vec![channel("to-srv", bits * 1.2)]),
        );
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    assert_eq!(run.started[0].1.from, ["a"]);
}

#[test]
fn demand_spread_over_many_interactions_is_the_channel_s_spike() {
    // Forty clients each send a little more (1.5x, under the ratio) and
    // forty new ones join: the channel's offered rate triples.
    let old: Vec<Flow> = (0..40)
        .map(|i| Flow::tcp(&format!("o{i}"), &format!("s{}", i % 4), 20.0))
        .collect();
    let new: Vec<Flow> = (0..40)
        .map(|i| Flow::tcp(&format!("n{i}"), &format!("s{}", i % 4), 45.0))
        .collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..200 {
        let mut pairs: Vec<_> = old
            .iter()
            .map(|f| f.pair(if i >= 100 { 1.5 } else { 1.0 }))
            .collect();
        if i >= 100 {
            pairs.extend(new.iter().map(|f| f.pair(1.0)));
        }
        let bits: f64 = pairs.iter().map(|p| p.d.req_bytes as f64 * 8.0).sum();
        run.feed(&mut det, i, &sample(i, pairs, vec![channel("all", bits)]));
    }
    // Newcomers at about twice the typical client are a flash crowd, no
    // flood: one event, the channel's.
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let spikes = run.of(EventKind::Spike);
    assert_eq!(spikes.len(), 1, "{:?}", run.started);
    assert_eq!(spikes[0].1.evidence["channel"], "all");
}

/// The map of the real run (`tests/tests/detect.rs`, 2026-11-28): per
/// second, request bits/s and packets/s of `a -> srv` and `b -> srv` (UDP,
/// no answers, four sources each); `a` triples between the rows at -0.7 s
/// and +0.3 s.
const TRIPLED_A: [(f64, f64, f64, f64); 40] = [
    (502970.0, 142.0, 552558.0, 156.0),
    (675452.0, 191.0, 739108.0, 209.0),
    (696665.0, 197.0, 749711.0, 212.0),
    (703527.0, 199.0, 742415.0, 210.0),
    (700245.0, 198.0, 753294.0, 213.0),
    (689579.0, 195.0, 753233.0, 213.0),
    (689398.0, 195.0, 745964.0, 211.0),
    (700176.0, 198.0, 756756.0, 214.0),
    (692944.0, 196.0, 753046.0, 213.0),
    (721393.0, 204.0, 742611.0, 210.0),
    (714368.0, 202.0, 739123.0, 209.0),
    (731795.0, 207.0, 724725.0, 205.0),
    (728509.0, 206.0, 724973.0, 205.0),
    (714406.0, 202.0, 735626.0, 208.0),
    (717064.0, 203.0, 734726.0, 208.0),
    (703165.0, 199.0, 734966.0, 208.0),
    (693117.0, 196.0, 749698.0, 212.0),
    (703732.0, 199.0, 749705.0, 212.0),
    (699961.0, 198.0, 752989.0, 213.0),
    (682453.0, 193.0, 753174.0, 213.0),
    (1096352.0, 310.0, 763910.0, 216.0),
    (2041651.0, 577.0, 757216.0, 214.0),
    (2014570.0, 570.0, 752813.0, 213.0),
    (2039532.0, 577.0, 738756.0, 209.0),
    (2045904.0, 579.0, 736242.0, 208.0),
    (2053924.0, 581.0, 724706.0, 205.0),
    (2049283.0, 580.0, 731382.0, 207.0),
    (2097198.0, 593.0, 732074.0, 207.0),
    (2124073.0, 601.0, 731586.0, 207.0),
    (2143517.0, 606.0, 728654.0, 206.0),
    (2178643.0, 616.0, 732109.0, 207.0),
    (2207645.0, 624.0, 735882.0, 208.0),
    (2198480.0, 622.0, 738718.0, 209.0),
    (2191403.0, 620.0, 745784.0, 211.0),
    (2189528.0, 619.0, 735738.0, 208.0),
    (2184690.0, 618.0, 724695.0, 205.0),
    (2182131.0, 617.0, 725019.0, 205.0),
    (2171128.0, 614.0, 721352.0, 204.0),
    (2153679.0, 609.0, 724966.0, 205.0),
    (2140140.0, 605.0, 718097.0, 203.0),
];

/// The real run replayed, with the channel `to-srv` carrying both sets:
/// the first event is the spike of `a -> srv` within [`ONSET`] samples of
/// the row at +1.3 s (the first whole sample of the step), and it is the
/// only one (no collapse of a destination that never answers, no channel
/// spike beside the interaction's, no flood).
#[test]
fn a_tripled_client_set_as_measured() {
    let mut det = Detector::default();
    let mut run = Run::default();
    for (i, &(a_bps, a_pps, b_bps, b_pps)) in TRIPLED_A.iter().enumerate() {
        let mut pairs = Vec::new();
        let mut sources = Vec::new();
        for (set, bps, pps) in [("a", a_bps, a_pps), ("b", b_bps, b_pps)] {
            let d = IxCounters {
                req_pkts: pps as u64,
                req_bytes: (bps / 8.0) as u64,
                ..Default::default()
            };
            pairs.push(crate::detect::PairSample {
                from: set.into(),
                to: "srv".into(),
                proto: 17,
                port: 9000,
                d,
            });
            for k in 0..4 {
                sources.push(crate::detect::SourceSample {
                    source: format!("198.18.2.{set}{k}"),
                    to: "srv".into(),
                    req_pkts: d.req_pkts / 4,
                    req_bytes: d.req_bytes / 4,
                });
            }
        }
        let c = channel("to-srv", a_bps + b_bps);
        let s = crate::detect::Sample {
            t: i as u64,
            dt: 1.0,
            pairs,
            sources,
            channels: vec![c],
        };
        run.feed(&mut det, i as u64, &s);
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert_eq!(e.kind, EventKind::Spike);
    assert!((21..21 + u64::from(ONSET)).contains(i), "at {i}");
    assert_eq!(e.from, ["a"]);
    assert_eq!(e.to, ["srv"]);
    assert_eq!(e.evidence["protocol"], "udp");
    assert_eq!(e.evidence["port"], 9000);
    eprintln!("replayed step at row {i}: {}", e.summary);
}

#[test]
fn traffic_starting_on_a_silent_channel_is_no_spike() {
    // A fresh agent: the channel is idle past the warm-up, then its
    // clients start. Zero was its level, not a baseline to spike from.
    let mut r = rng(4);
    let mut w = Wander::new(Noise::Iid(0.3));
    let mut det = Detector::default();
    let mut run = Run::default();
    for i in 0..200 {
        let bps = if i >= 60 { 10e6 * w.next(&mut r) } else { 0.0 };
        run.feed(
            &mut det,
            i,
            &sample(i, Vec::new(), vec![channel("web", bps)]),
        );
    }
    assert!(run.started.is_empty(), "{:?}", run.started);
}
