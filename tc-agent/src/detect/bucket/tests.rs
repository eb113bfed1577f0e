use super::*;
use crate::detect::{
    testutil::{channel, rng, sample, Flow, Noise, Run, Wander},
    Detector, EventKind,
};

#[test]
fn a_second_long_sample_passes_through() {
    let mut b = Bucket::default();
    let s = sample(
        7,
        vec![Flow::tcp("a", "b", 100.0).pair(1.0)],
        vec![channel("c", 1e6)],
    );
    let out = b.add(&s).expect("judged at once");
    assert!(std::ptr::eq(out, &s));
}

#[test]
fn fifths_of_a_second_are_summed() {
    let mut b = Bucket::default();
    let f = Flow::tcp("a", "b", 100.0);
    let g = Flow::tcp("c", "b", 50.0);
    let mut judged = Vec::new();
    for i in 0..10u64 {
        let mut s = sample(
            100 + i,
            vec![f.pair(0.2), g.pair(0.2)],
            vec![channel("c", 1e6 * (i % 5) as f64)],
        );
        s.dt = 0.2;
        if let Some(out) = b.add(&s) {
            judged.push((i, out.clone()));
        }
    }
    assert_eq!(judged.iter().map(|j| j.0).collect::<Vec<_>>(), [4, 9]);
    for (i, s) in &judged {
        assert_eq!(s.t, 100 + i);
        assert!((s.dt - 1.0).abs() < 1e-9);
        assert_eq!(s.pairs.len(), 2);
        assert_eq!(s.pairs[0].d.req_pkts, 100);
        assert_eq!(s.pairs[1].d.req_pkts, 50);
        assert_eq!(s.sources.len(), 2);
        assert_eq!(s.sources[0].req_pkts, 100);
        // The channel's rate averaged over the second: (0+1+2+3+4)/5 Mbit/s.
        assert!((s.channels[0].passed_bps - 2e6).abs() < 1.0);
    }
}

/// One second of `pairs` as five samples of 0.2 s, the packets spread
/// unevenly (some fifths get more than others, as with real pacing).
fn fifths(
    t: u64,
    pairs: &[crate::detect::PairSample],
    r: &mut proptest::test_runner::TestRng,
) -> Vec<crate::detect::Sample> {
    use proptest::prelude::RngExt;
    let mut out: Vec<_> = (0..5).map(|_| sample(t, Vec::new(), Vec::new())).collect();
    for p in pairs {
        let w: Vec<f64> = (0..5).map(|_| r.random_range(0.5..1.5)).collect();
        let total: f64 = w.iter().sum();
        let mut left = p.d;
        for (k, s) in out.iter_mut().enumerate() {
            let mut q = p.clone();
            if k < 4 {
                let share = w[k] / total;
                let part = |x: u64| (x as f64 * share) as u64;
                q.d.req_pkts = part(p.d.req_pkts);
                q.d.req_bytes = part(p.d.req_bytes);
                q.d.resp_pkts = part(p.d.resp_pkts);
                q.d.resp_bytes = part(p.d.resp_bytes);
                q.d.syns = 0;
                q.d.synacks = 0;
                q.d.rtt_sum_ns = 0;
                q.d.rtt_count = 0;
                left.req_pkts -= q.d.req_pkts;
                left.req_bytes -= q.d.req_bytes;
                left.resp_pkts -= q.d.resp_pkts;
                left.resp_bytes -= q.d.resp_bytes;
            } else {
                q.d = left;
            }
            s.sources.push(Flow::source(&q));
            s.pairs.push(q);
        }
    }
    for s in &mut out {
        s.dt = 0.2;
    }
    out
}

#[test]
fn the_dos_case_sampled_every_200_ms() {
    let flows: Vec<Flow> = (0..200)
        .map(|i| Flow::tcp(&format!("198.18.2.{i}"), "srv", 10.0))
        .collect();
    let mut r = rng(12);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    let mut n = 0;
    for sec in 0..60u64 {
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(j, (f, w))| f.pair(w.next(&mut r) * if j < 3 && sec >= 25 { 80.0 } else { 1.0 }))
            .collect();
        for s in fifths(sec, &pairs, &mut r) {
            run.feed(&mut det, n, &s);
            n += 1;
        }
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert_eq!(e.kind, EventKind::Dos);
    // The onset is at sample 125 (second 25); two judged seconds later.
    assert!((125..135).contains(i), "at sample {i}");
    eprintln!(
        "dos sampled every 200 ms: flagged {:.1} s after the onset",
        (*i + 1 - 125) as f64 * 0.2
    );
    assert_eq!(e.from.len(), 3);
}

#[test]
fn wandering_traffic_sampled_every_200_ms_is_quiet() {
    let flows: Vec<Flow> = (0..40)
        .map(|i| Flow::tcp(&format!("198.18.2.{i}"), &format!("s{}", i % 2), 30.0))
        .collect();
    let mut r = rng(13);
    let mut w: Vec<Wander> = flows
        .iter()
        .map(|_| Wander::new(Noise::Walk(0.3)))
        .collect();
    let mut det = Detector::default();
    let mut run = Run::default();
    let mut n = 0;
    for sec in 0..1800u64 {
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .map(|(f, w)| f.pair(w.next(&mut r)))
            .collect();
        for s in fifths(sec, &pairs, &mut r) {
            run.feed(&mut det, n, &s);
            n += 1;
        }
    }
    assert!(run.started.is_empty(), "{:?}", run.started);
}
