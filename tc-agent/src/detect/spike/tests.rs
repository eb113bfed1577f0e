use std::collections::HashSet;

use super::*;
use crate::detect::{
    testutil::{channel, rng, sample, Flow, Noise, Run, Wander},
    Detector,
};

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
    for i in 0..200 {
        let scale = if i >= 100 { 3.0 } else { 1.0 };
        let c = channel("web", 10e6 * scale * w.next(&mut r));
        run.feed(&mut det, i, &sample(i, Vec::new(), vec![c]));
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert!(*i < 100 + u64::from(ONSET));
    assert!(e.from.is_empty() && e.to.is_empty());
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
            }
        }
    }
    assert_eq!((starts, ends), (1, 1));
}

/// Events of the spike detector alone on `series` series at `pps` for
/// `len` samples, each wandering by `noise`, multiplied by `factor` from
/// sample `at`; returns the start samples of every event.
fn starts(
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
    let mut sp = Spike::default();
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

/// The data the thresholds were chosen on: false events per series-hour
/// of wandering traffic, and the delay (samples from the onset sample, 1 =
/// flagged at the first sample of the onset) on synthetic onsets. Printed
/// with `--nocapture`; the figures are in `detect/mod.rs`.
#[test]
fn threshold_table() {
    let hours = 50;
    for noise in [
        Noise::Iid(0.3),
        Noise::Walk(0.3),
        Noise::Iid(0.5),
        Noise::Walk(0.5),
    ] {
        let n = starts(hours, 100.0, noise, 3600, u64::MAX, 1.0, 11).len();
        let per_hour = n as f64 / hours as f64;
        eprintln!("spike {noise:?}: {per_hour:.2} false events per hour");
        if matches!(noise, Noise::Iid(a) | Noise::Walk(a) if a <= 0.3) {
            assert_eq!(n, 0, "{noise:?}: {n} false events in {hours} hours");
        }
    }
    for factor in [1.5, 2.0, 2.5, 3.0, 80.0] {
        for noise in [Noise::Iid(0.3), Noise::Walk(0.3)] {
            let mut delays = Vec::new();
            let mut missed = 0;
            for seed in 0..20 {
                let s = starts(1, 100.0, noise, 400, 300, factor, seed);
                match s.iter().find(|&&i| i >= 300) {
                    Some(i) => delays.push(i - 300 + 1),
                    None => missed += 1,
                }
            }
            delays.sort_unstable();
            let median = delays.get(delays.len() / 2);
            eprintln!(
                "spike {factor}x {noise:?}: median delay {median:?} samples, max {:?}, missed {missed}/20",
                delays.last()
            );
            if factor >= 3.0 {
                assert_eq!(missed, 0);
                assert!(delays.iter().all(|&d| d <= u64::from(ONSET)), "{delays:?}");
            }
        }
    }
}
