use super::*;
use crate::detect::{
    testutil::{rng, sample, Flow, Noise, Run, Wander},
    Detector,
};

/// The sample the onset happens at.
const AT: u64 = 120;

/// Four clients of `srv` at 500 requests/s each (rates wandering ±30%, the
/// response ratio ±20%); from [`AT`] on, `change` rewrites client `k`'s
/// flow. Runs [`AT`] + 100 samples through the whole detector.
fn run(change: impl Fn(usize, &mut Flow)) -> Run {
    let base: Vec<Flow> = (0..4)
        .map(|i| Flow::tcp(&format!("10.0.1.{i}"), "srv", 500.0))
        .collect();
    let mut r = rng(5);
    let mut w: Vec<(Wander, Wander)> = base
        .iter()
        .map(|_| (Wander::new(Noise::Iid(0.3)), Wander::new(Noise::Iid(0.2))))
        .collect();
    let mut det = Detector::default();
    let mut out = Run::default();
    for i in 0..AT + 100 {
        let pairs = base
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(k, (f, (wr, wq)))| {
                let mut f = f.clone();
                if i >= AT {
                    change(k, &mut f);
                }
                f.resp_ratio *= wq.next(&mut r);
                f.pair(wr.next(&mut r))
            })
            .collect();
        out.feed(&mut det, i, &sample(1000 + i, pairs, Vec::new()));
    }
    out
}

/// Clients 0 and 1 send four times as much.
fn demand(k: usize, f: &mut Flow) {
    if k < 2 {
        f.pps *= 4.0;
    }
}

/// The one collapse event, checked for what every collapse names.
fn the_collapse(run: &Run) -> &Event {
    let c = run.of(EventKind::UpstreamCollapse);
    assert_eq!(c.len(), 1, "{:?}", run.started);
    assert_eq!(
        run.started.len(),
        1,
        "one event per episode: {:?}",
        run.started
    );
    let (i, e) = c[0];
    assert!(*i < AT + u64::from(ONSET), "detected at {i}");
    assert_eq!(e.to, vec!["srv".to_string()]);
    assert_eq!(e.from, vec!["10.0.1.0".to_string(), "10.0.1.1".to_string()]);
    let ev = &e.evidence;
    for k in [
        "response_ratio",
        "handshake_rtt_us",
        "resets_per_s",
        "new_connections_per_s",
    ] {
        assert!(ev[k].get("baseline").is_some(), "{k}: {ev:?}");
        assert!(ev[k].get("now").is_some(), "{k}: {ev:?}");
    }
    assert!(ev.contains_key("unanswered_syns"));
    assert_eq!(ev["protocol"], "tcp");
    assert_eq!(ev["port"], 80);
    let clients = ev["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    for c in clients {
        let now = c["request_bps"].as_f64().unwrap();
        let base = c["baseline_request_bps"].as_f64().unwrap();
        assert!(now > 2.5 * base, "{c}");
        assert!(
            c["request_pps"].as_f64().unwrap() > 2.5 * c["baseline_request_pps"].as_f64().unwrap()
        );
    }
    e
}

#[test]
fn responses_that_stop_keeping_up_in_bytes() {
    // Demand quadruples, the responses stay what they were.
    let run = run(|k, f| {
        if k < 2 {
            f.pps *= 4.0;
            f.resp_ratio /= 4.0;
        }
    });
    let e = the_collapse(&run);
    let ratio = &e.evidence["response_ratio"];
    assert!(ratio["now"].as_f64().unwrap() < 0.6 * ratio["baseline"].as_f64().unwrap());
    assert!(
        e.summary.starts_with("srv is not keeping up"),
        "{}",
        e.summary
    );
}

#[test]
fn keep_alive_clients_without_handshakes() {
    // wrk on kept-alive connections: no handshake at all, so only the
    // response ratio tells.
    let run = run(|k, f| {
        f.syns = 0.0;
        f.synacks = 0.0;
        if k < 2 {
            f.pps *= 4.0;
            f.resp_ratio /= 4.0;
        }
    });
    let e = the_collapse(&run);
    assert!(e.evidence["unanswered_syns"].is_null());
}

#[test]
fn unanswered_handshakes() {
    let run = run(|k, f| {
        if k < 2 {
            f.pps *= 4.0;
            f.syns = 20.0;
            f.synacks = 2.0;
        }
    });
    let e = the_collapse(&run);
    assert!(e.evidence["unanswered_syns"].as_f64().unwrap() > 0.5);
}

#[test]
fn slow_handshakes() {
    let run = run(|k, f| {
        if k < 2 {
            f.pps *= 4.0;
            f.rtt_us = 20_000.0;
        }
    });
    let e = the_collapse(&run);
    assert!(e.evidence["handshake_rtt_us"]["now"].as_f64().unwrap() > 3000.0);
}

#[test]
fn resets() {
    let run = run(|k, f| {
        if k < 2 {
            f.pps *= 4.0;
            f.rsts = 30.0;
        }
    });
    let e = the_collapse(&run);
    assert!(e.evidence["resets_per_s"]["now"].as_f64().unwrap() >= 50.0);
}

#[test]
fn more_connections_are_demand_too() {
    // Demand as new connections (the rate in bytes barely moves) while
    // their handshakes go unanswered.
    let run = run(|_, f| {
        f.syns = 30.0;
        f.synacks = 3.0;
    });
    let e = the_collapse_any(&run);
    assert_eq!(e.evidence["metric"], "new_connections_per_s");
}

/// The one collapse event, whoever it names.
fn the_collapse_any(run: &Run) -> &Event {
    let c = run.of(EventKind::UpstreamCollapse);
    assert_eq!(c.len(), 1, "{:?}", run.started);
    assert!(c[0].0 < AT + u64::from(ONSET));
    &c[0].1
}

#[test]
fn demand_that_is_served_is_no_collapse() {
    let run = run(demand);
    assert!(
        run.of(EventKind::UpstreamCollapse).is_empty(),
        "{:?}",
        run.started
    );
    // It is two spikes (clients 0 and 1), and nothing else.
    assert_eq!(run.of(EventKind::Spike).len(), 2, "{:?}", run.started);
    assert_eq!(run.started.len(), 2);
}

#[test]
fn a_slow_server_without_more_demand_is_no_collapse() {
    let run = run(|_, f| {
        f.resp_ratio /= 4.0;
        f.rtt_us = 20_000.0;
        f.rsts = 30.0;
    });
    assert!(run.started.is_empty(), "{:?}", run.started);
}

#[test]
fn the_episode_ends_after_calm() {
    let base = Flow::tcp("c", "srv", 500.0);
    let mut det = Detector::default();
    let mut out = Run::default();
    for i in 0..300 {
        let mut f = base.clone();
        if (100..160).contains(&i) {
            f.pps *= 4.0;
            // A dip in the middle: the responses keep up for 3 samples.
            if !(130..133).contains(&i) {
                f.resp_ratio /= 4.0;
            }
        }
        out.feed(&mut det, i, &sample(i, vec![f.pair(1.0)], Vec::new()));
    }
    assert_eq!(out.started.len(), 1, "{:?}", out.started);
    assert_eq!(out.started[0].1.kind, EventKind::UpstreamCollapse);
    assert_eq!(out.ended.len(), 1);
    let end = out.ended[0].0;
    assert!(
        (160 + u64::from(CALM) - 1..=160 + u64::from(CALM) + 1).contains(&end),
        "{end}"
    );
}

/// False events per hour on destinations whose clients wander (collapse
/// needs demand and a response signal at once), and delays on onsets of
/// demand times 2, 4 and 6 with the response ratio falling in proportion.
#[test]
fn threshold_table() {
    for noise in [Noise::Iid(0.3), Noise::Walk(0.3), Noise::Iid(0.5)] {
        let mut det = Detector::default();
        let mut r = rng(9);
        let flows: Vec<Flow> = (0..100)
            .map(|i| Flow::tcp(&format!("c{i}"), &format!("s{}", i / 5), 300.0))
            .collect();
        let mut w: Vec<(Wander, Wander, Wander)> = flows
            .iter()
            .map(|_| (Wander::new(noise), Wander::new(noise), Wander::new(noise)))
            .collect();
        let mut events = 0;
        for i in 0..3600 {
            let pairs = flows
                .iter()
                .zip(&mut w)
                .map(|(f, (a, b, c))| {
                    let mut f = f.clone();
                    f.resp_ratio *= b.next(&mut r);
                    f.rtt_us *= c.next(&mut r);
                    f.syns = f64::from(i % 3 == 0) * 3.0;
                    f.synacks = f.syns;
                    f.pair(a.next(&mut r))
                })
                .collect();
            events += det
                .observe(&sample(i, pairs, Vec::new()))
                .iter()
                .filter(|c| matches!(c, crate::detect::Change::Started(e) if e.kind == EventKind::UpstreamCollapse))
                .count();
        }
        eprintln!("collapse {noise:?}: {:.2} false events per destination-hour (20 destinations, 5 clients each)", events as f64 / 20.0);
        if matches!(noise, Noise::Iid(a) | Noise::Walk(a) if a <= 0.3) {
            assert_eq!(events, 0);
        }
    }
    // At 8 times their baseline or more, a few clients that carry the
    // destination's traffic are a `dos` (the more specific finding).
    for factor in [2.0, 4.0, 6.0] {
        let run = run(|_, f| {
            f.pps *= factor;
            f.resp_ratio /= factor;
        });
        let c = run.of(EventKind::UpstreamCollapse);
        let delay = c.first().map(|(i, _)| i - AT + 1);
        eprintln!("collapse demand {factor}x, responses flat: delay {delay:?} samples");
        if factor >= 4.0 {
            assert_eq!(delay, Some(u64::from(ONSET)));
        } else {
            assert!(delay.is_some_and(|d| d <= 5), "{delay:?}");
        }
    }
}
