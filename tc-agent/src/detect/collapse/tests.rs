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
    for noise in [
        Noise::Iid(0.3),
        Noise::Walk(0.3),
        Noise::Bursty(0.3),
        Noise::Iid(0.5),
    ] {
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
        if matches!(noise, Noise::Iid(a) | Noise::Walk(a) | Noise::Bursty(a) if a <= 0.3) {
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

#[test]
fn one_way_traffic_has_no_ratio_to_fall() {
    // UDP with no answers: a ratio of zero all along, and demand up.
    let run = run(|_, f| {
        f.pps *= 2.0;
    });
    assert!(run.of(EventKind::UpstreamCollapse).is_empty());
    let mut det = Detector::default();
    let mut out = Run::default();
    let mut f = Flow::tcp("c", "srv", 500.0);
    f.proto = 17;
    f.resp_ratio = 0.0;
    f.syns = 0.0;
    f.synacks = 0.0;
    for i in 0..200 {
        let scale = if i >= 100 { 2.0 } else { 1.0 };
        out.feed(&mut det, i, &sample(i, vec![f.pair(scale)], Vec::new()));
    }
    assert!(
        out.of(EventKind::UpstreamCollapse).is_empty(),
        "{:?}",
        out.started
    );
}

/// The map of the real run (`tests/tests/detect.rs`, agent on the clients'
/// side, 2026-11-28): per second, request and response bits/s, request and
/// response packets/s, new connections/s of `clients -> web`; the squeeze
/// and the surge start between the rows at -0.0 s and +1.0 s.
const SQUEEZED_NGINX: [(f64, f64, f64, f64, f64); 50] = [
    (506135.0, 457598.0, 846.0, 638.0, 289.0),
    (683624.0, 822087.0, 1081.0, 1061.0, 214.0),
    (623812.0, 753832.0, 986.0, 974.0, 196.0),
    (643314.0, 777614.0, 1016.0, 1004.0, 202.0),
    (668867.0, 807613.0, 1057.0, 1043.0, 210.0),
    (623381.0, 754073.0, 985.0, 974.0, 195.0),
    (658626.0, 797866.0, 1040.0, 1031.0, 208.0),
    (626681.0, 759669.0, 990.0, 982.0, 197.0),
    (659654.0, 795207.0, 1042.0, 1026.0, 207.0),
    (644826.0, 775942.0, 1019.0, 1001.0, 202.0),
    (613289.0, 736311.0, 970.0, 950.0, 192.0),
    (648475.0, 786254.0, 1024.0, 1016.0, 204.0),
    (654269.0, 787461.0, 1034.0, 1016.0, 205.0),
    (681367.0, 822861.0, 1077.0, 1063.0, 214.0),
    (632010.0, 760313.0, 999.0, 981.0, 198.0),
    (650855.0, 784465.0, 1029.0, 1013.0, 204.0),
    (607961.0, 734499.0, 961.0, 949.0, 191.0),
    (643655.0, 769828.0, 1018.0, 992.0, 201.0),
    (613093.0, 737239.0, 969.0, 951.0, 192.0),
    (676461.0, 815056.0, 1069.0, 1052.0, 212.0),
    (1151396.0, 812361.0, 1869.0, 1089.0, 787.0),
    (1074806.0, 799428.0, 1657.0, 1017.0, 660.0),
    (1017081.0, 799580.0, 1633.0, 1011.0, 666.0),
    (1001147.0, 800927.0, 1608.0, 1020.0, 641.0),
    (1003903.0, 799866.0, 1609.0, 1017.0, 633.0),
    (1003261.0, 798949.0, 1601.0, 1023.0, 618.0),
    (758343.0, 801163.0, 1191.0, 1014.0, 221.0),
    (970366.0, 799458.0, 1558.0, 1011.0, 593.0),
    (741829.0, 799915.0, 1175.0, 1016.0, 216.0),
    (754040.0, 799149.0, 1186.0, 1015.0, 218.0),
    (736035.0, 800788.0, 1158.0, 997.0, 226.0),
    (946441.0, 798777.0, 1522.0, 1017.0, 569.0),
    (733053.0, 801370.0, 1166.0, 1005.0, 224.0),
    (762283.0, 798818.0, 1198.0, 1014.0, 217.0),
    (736822.0, 801067.0, 1177.0, 1002.0, 224.0),
    (746679.0, 799875.0, 1179.0, 1029.0, 210.0),
    (737947.0, 800012.0, 1173.0, 1008.0, 219.0),
    (741841.0, 798826.0, 1185.0, 1007.0, 220.0),
    (745874.0, 801196.0, 1177.0, 1020.0, 216.0),
    (953291.0, 798999.0, 1536.0, 1009.0, 568.0),
    (748325.0, 800825.0, 1186.0, 1017.0, 216.0),
    (759290.0, 799846.0, 1197.0, 1016.0, 216.0),
    (725635.0, 800584.0, 1161.0, 1013.0, 217.0),
    (738264.0, 799767.0, 1180.0, 1009.0, 220.0),
    (741117.0, 799882.0, 1179.0, 1020.0, 215.0),
    (747856.0, 800086.0, 1188.0, 1010.0, 219.0),
    (746658.0, 800069.0, 1194.0, 1016.0, 216.0),
    (742699.0, 799147.0, 1180.0, 1019.0, 215.0),
    (745041.0, 800879.0, 1195.0, 1018.0, 217.0),
    (733741.0, 799632.0, 1170.0, 1009.0, 218.0),
];

/// The real run replayed: demand up 1.6x (bits) and 3x (connections),
/// the responses flat at the squeeze, the ratio at 0.6-0.66 of its
/// baseline, no handshake time after the onset, no resets, no unanswered
/// SYNs: an `upstream_collapse` naming `web` and `clients` within
/// [`ONSET`] samples, and nothing before.
#[test]
fn a_squeezed_nginx_as_measured() {
    let mut det = Detector::default();
    let mut run = Run::default();
    for (i, &(req_bps, resp_bps, req_pps, resp_pps, conns)) in SQUEEZED_NGINX.iter().enumerate() {
        let before = i < 20;
        let d = IxCounters {
            req_pkts: req_pps as u64,
            req_bytes: (req_bps / 8.0) as u64,
            resp_pkts: resp_pps as u64,
            resp_bytes: (resp_bps / 8.0) as u64,
            syns: conns as u64,
            synacks: conns as u64,
            rsts: 0,
            fins: conns as u64,
            rtt_sum_ns: if before { 7_000 * conns as u64 } else { 0 },
            rtt_count: if before { conns as u64 } else { 0 },
        };
        let p = crate::detect::PairSample {
            from: "clients".into(),
            to: "web".into(),
            proto: 6,
            port: 80,
            d,
        };
        let mut s = sample(i as u64, vec![p], Vec::new());
        s.sources[0].source = "198.18.0.1".into();
        run.feed(&mut det, i as u64, &s);
    }
    assert_eq!(run.started.len(), 1, "{:?}", run.started);
    let (i, e) = &run.started[0];
    assert_eq!(e.kind, EventKind::UpstreamCollapse);
    assert!((20..20 + u64::from(ONSET)).contains(i), "at {i}");
    assert_eq!(e.to, ["web"]);
    assert_eq!(e.from, ["clients"]);
    eprintln!("replayed squeeze: {}", e.summary);
}

#[test]
fn refusals_by_the_agent_s_own_connection_limit_are_no_collapse() {
    // A capped client retries: more SYNs, a reset for each refused one,
    // and the channel counts the refused SYNs as drops. Only the drops of
    // a channel toward `db` (its set, or `any`) are `db`'s: a channel
    // dropping as much toward another set hides nothing.
    let any = || vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let web = || vec!["198.18.5.0/24".parse().unwrap()];
    for (drops, to_nets, to_sets, want) in [
        (0.0, any(), vec![], 1usize),
        (60.0, any(), vec![], 0),
        (60.0, web(), vec!["web".to_string()], 1),
        (60.0, web(), vec!["db".to_string()], 0),
    ] {
        let f = Flow::tcp("batch", "db", 500.0);
        let mut det = Detector::default();
        let mut out = Run::default();
        for i in 0..200 {
            let mut f = f.clone();
            let mut c = crate::detect::testutil::channel("batch-to-db", 400_000.0);
            if i >= 100 {
                f.syns = 80.0;
                f.synacks = 20.0;
                f.rsts = 60.0;
                c.dropped_pps = drops;
            }
            c.sides = std::sync::Arc::new(crate::detect::ChannelSides {
                to_nets: to_nets.clone().into(),
                to_sets: to_sets.clone(),
                ..Default::default()
            });
            out.feed(&mut det, i, &sample(i, vec![f.pair(1.0)], vec![c]));
        }
        let got = out.of(EventKind::UpstreamCollapse).len();
        assert_eq!(got, want, "drops {drops} {to_sets:?}: {:?}", out.started);
    }
}
