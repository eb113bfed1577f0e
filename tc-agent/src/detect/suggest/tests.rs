//! `suggest` on hand-built events of every kind, against a history of
//! 1 s points: what it builds validates, leaves the live policy as it was,
//! and holds what the event names to a limit derived from the numbers.

use serde_json::json;

use super::{baseline::round_up, hold::enforces, *};
use crate::{
    detect::EventKind,
    observe::{CHANNEL_METRICS, INTERACTION_METRICS},
    policy::render::render,
};

/// When the test events open (unix seconds).
const STARTED: u64 = 1_764_369_000;

const LIVE: &str = r#"
endpoints:
  clients: [198.18.1.0/24, "2001:db8:1::/64"]
  service: [198.18.10.2/32]
channels:
  - name: web
    from: clients
    to: service
    protocol: tcp
    ports: [80]
  - name: dns
    to: service
    protocol: udp
    ports: [53]
    limit: {packets: 5000}
  - name: rest
"#;

fn live() -> Policy {
    Policy::parse(LIVE, "live.yaml").unwrap()
}

/// The value of a wandering series at second `i`: `level` ±30%.
fn wander(level: f64, i: u64) -> f64 {
    level * (1.0 + 0.3 * ((i as f64) * 0.7).sin())
}

/// The p95 the history should give for `wander(level, ..)` over the
/// window before the onset (the history keeps 1%).
fn expected_p95(level: f64) -> f64 {
    let end = STARTED - ONSET_S;
    let mut v: Vec<f64> = (end + 1 - WINDOW_S..=end)
        .map(|t| wander(level, t))
        .collect();
    v.sort_by(f64::total_cmp);
    v[(v.len() as f64 * 0.95).ceil() as usize - 1]
}

/// A pair's history: `bps`/`pps`/`conns` wandering for 10 minutes before
/// `STARTED`, then 80 times that (the flood, after the onset).
fn record_pair(h: &mut History, key: &str, bps: f64, pps: f64, conns: f64) {
    for t in STARTED - 600..STARTED + 5 {
        let k = if t >= STARTED - 5 { 80.0 } else { 1.0 };
        let (b, p, c) = (k * wander(bps, t), k * wander(pps, t), k * wander(conns, t));
        h.record(
            key,
            INTERACTION_METRICS,
            t,
            &[b, p, b / 4.0, p / 2.0, c, 300.0, 0.0],
        );
    }
}

fn event(kind: EventKind, from: &[&str], to: &[&str], evidence: Value) -> Event {
    Event {
        id: format!("{}-3", kind.as_str()),
        kind,
        started: STARTED,
        ended: None,
        from: from.iter().map(|s| s.to_string()).collect(),
        to: to.iter().map(|s| s.to_string()).collect(),
        summary: "test event: 3 sources carry 96% of 198.18.10.2's requests".into(),
        evidence: evidence.as_object().unwrap().clone(),
    }
}

fn dos_event(from: &[&str], crowd: bool) -> Event {
    let sources: Vec<Value> = from
        .iter()
        .map(|s| {
            json!({"source": s, "share": 0.32, "bps": 3.2e6, "pps": 800.0,
                   "baseline_bps": 40_000.0, "baseline_pps": 10.0})
        })
        .collect();
    event(
        EventKind::Dos,
        from,
        &["service"],
        json!({
            "metric": "request_bps", "baseline": 2.0e6, "now": 11.6e6, "factor": 5.8,
            "protocol": "tcp", "port": 80,
            "request_bps": {"baseline": 2.0e6, "now": 11.6e6},
            "request_pps": {"baseline": 500.0, "now": 2900.0},
            "distinct_sources": 200, "baseline_distinct_sources": 200,
            "sources": sources, "crowd": crowd,
        }),
    )
}

/// Parses a suggestion, checks that the live policy is in it unchanged
/// (same channels after the new ones, same sets after the new one, and
/// rendered alone it is the live policy's text), and returns it.
fn check(text: &str, live: &Policy, new_sets: usize, new_channels: usize) -> Policy {
    let p = Policy::parse(text, "suggested.yaml")
        .unwrap_or_else(|e| panic!("the suggestion does not validate: {e}\n{text}"));
    assert_eq!(
        p.channels.len(),
        live.channels.len() + new_channels,
        "{text}"
    );
    assert_eq!(p.channels[new_channels..], live.channels[..], "{text}");
    assert_eq!(p.endpoints[new_sets..], live.endpoints[..], "{text}");
    let rest = Policy {
        channels: p.channels[new_channels..].to_vec(),
        endpoints: p.endpoints[new_sets..].to_vec(),
        warnings: Vec::new(),
    };
    assert_eq!(
        render(&rest),
        render(live),
        "the live part renders differently"
    );
    p
}

fn within(got: u64, want: f64, rel: f64) -> bool {
    (got as f64 - want).abs() <= want * rel
}

#[test]
fn dos_holds_the_named_sources_together_to_their_baseline() {
    let live = live();
    let mut h = History::new();
    let flooders = ["198.18.1.7", "198.18.1.8", "198.18.1.9"];
    for f in flooders {
        record_pair(&mut h, &format!("{f}->service"), 40_000.0, 10.0, 1.0);
    }
    // A quiet source with history: not held.
    record_pair(&mut h, "198.18.1.20->service", 40_000.0, 10.0, 1.0);
    let e = dos_event(&flooders, false);
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    println!("{text}");
    let p = check(&text, &live, 1, 1);
    let (set, nets) = &p.endpoints[0];
    assert_eq!(set, "dos-3-sources");
    let want: Vec<IpNet> = flooders
        .iter()
        .map(|a| format!("{a}/32").parse().unwrap())
        .collect();
    assert_eq!(nets, &want);
    let c = &p.channels[0];
    assert_eq!(c.name, "hold-dos-3");
    assert_eq!(c.from.to_vec(), *nets);
    assert_eq!(c.to.to_vec(), live.endpoints[1].1);
    assert_eq!((c.protocol, &c.ports[..]), (Protocol::Tcp, &[(80, 80)][..]));
    // `web` (ingress) carries this traffic now: the hold is on ingress.
    assert_eq!(c.direction, Direction::Ingress);
    assert_eq!(c.mode, Mode::Enforce);
    assert_eq!(c.action, Action::Drop);
    // Three sources' p95 together, times the headroom, rounded up to 3 digits.
    let bps = 3.0 * expected_p95(40_000.0) * HEADROOM;
    let pps = 3.0 * expected_p95(10.0) * HEADROOM;
    let got = c.limit.bandwidth_bps.unwrap();
    assert!(within(got, bps, 0.02), "{got} vs {bps}\n{text}");
    assert!(
        within(c.limit.packets.unwrap(), pps, 0.05),
        "{:?} vs {pps}",
        c.limit
    );
    // Held far below the flood (80x the baseline).
    assert!((got as f64) < 3.0 * 40_000.0 * 80.0 / 10.0);
    // Another source does not match the hold: it goes on to `web`.
    let quiet: IpNet = "198.18.1.20/32".parse().unwrap();
    assert!(!c.from.iter().any(|n| n.contains(&quiet)));
    // The comment says why, with the numbers.
    for needle in [
        "# Why: event dos-3 (dos), started at unix second 1764369000:",
        "#   test event: 3 sources carry 96%",
        "#   198.18.1.7: ",
        "p95 of 300 s of `198.18.1.7->service` history before the onset",
        "x 1.5 headroom",
        "# The sources of dos-3 (dos): 198.18.1.7, 198.18.1.8, 198.18.1.9.",
        "The other sources do not match this channel",
        "tc-agent apply FILE",
    ] {
        assert!(text.contains(needle), "missing {needle:?}:\n{text}");
    }
    assert!(
        text.contains(&format!("bandwidth: {}", render::rate(got))),
        "{text}"
    );
    // The new set and channel come first.
    let set_at = text.find("  dos-3-sources:").unwrap();
    assert!(set_at < text.find("  clients:").unwrap());
    assert!(text.find("- name: hold-dos-3").unwrap() < text.find("- name: web").unwrap());
}

#[test]
fn without_history_the_evidence_gives_the_baseline_and_the_comment_says_so() {
    let live = live();
    let e = dos_event(&["198.18.1.7", "2001:db8:1::9"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    let c = &p.channels[0];
    let v6: IpNet = "2001:db8:1::9/128".parse().unwrap();
    assert!(c.from.contains(&v6), "{text}");
    // 2 x 40 kbit/s x 1.5; 2 x 10 packets/s x 1.5.
    assert_eq!(c.limit.bandwidth_bps, Some(120_000));
    assert_eq!(c.limit.packets, Some(30));
    // Both addresses are in `clients`: the map names them by it, so their
    // history is the set's.
    assert!(text.contains("#   198.18.1.7: 40.0kbit/s, 10.0 packets/s (the event's baseline for this source; its history is the whole set's, `clients->service`)"), "{text}");
    let mut lone = dos_event(&["198.18.77.7"], false);
    lone.evidence.insert(
        "sources".into(),
        json!([{"source": "198.18.77.7", "baseline_bps": 1e5}]),
    );
    let text = suggest(&lone, &live, &History::new(), Mode::Enforce).unwrap();
    assert!(
        text.contains("the history has no 30 s of `198.18.77.7->service` before the onset"),
        "{text}"
    );
}

#[test]
fn a_new_source_without_any_baseline_is_held_to_the_floor() {
    let live = live();
    let mut e = dos_event(&["198.18.1.7"], false);
    e.evidence.insert("sources".into(), json!([]));
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.channels[0].limit.bandwidth_bps, Some(MIN_RATE_BPS));
    assert!(text.contains("a new source, held to the floor"), "{text}");
}

#[test]
fn a_crowd_is_held_as_a_whole_and_the_comment_says_it_holds_everyone() {
    let live = live();
    for (from, crowd) in [
        (&["other"][..], true),
        (&["other"][..], false),
        (&["198.18.1.7", "other"][..], true),
    ] {
        let e = dos_event(from, crowd);
        let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
        println!("{text}");
        // No set: the channel is from any address.
        let p = check(&text, &live, 0, 1);
        let c = &p.channels[0];
        assert_eq!(c.from.len(), 2, "{text}");
        assert!(c.from.iter().all(|n| n.prefix_len() == 0));
        // The destination's baseline (2 Mbit/s, 500 packets/s) x 1.5.
        assert_eq!(c.limit.bandwidth_bps, Some(3_000_000), "{text}");
        assert_eq!(c.limit.packets, Some(750), "{text}");
        assert!(text.contains("the detector's baseline (its moving mean) of request_bps and request_pps: 2.0Mbit/s, 500.0 packets/s"), "{text}");
        assert!(text.contains("Holds EVERYONE toward service"), "{text}");
        let reason = if crowd {
            "a crowd of sources"
        } else {
            "they are `other`"
        };
        assert!(text.contains(reason), "{text}");
        assert!(!text.contains("dos-3-sources"), "{text}");
        let partial = "the event names 1 of the crowd (198.18.1.7): holding those alone";
        assert_eq!(text.contains(partial), from.len() == 2, "{text}");
    }
}

#[test]
fn names_do_not_collide() {
    let mut live = live();
    let mut taken = Policy::parse(
        "endpoints:\n  dos-3-sources: [198.18.99.0/24]\nchannels:\n  - name: hold-dos-3\n    from: dos-3-sources\n  - name: hold-dos-3-2\n    from: dos-3-sources\n",
        "t.yaml",
    )
    .unwrap();
    taken.channels.extend(live.channels.clone());
    taken.endpoints.extend(live.endpoints.clone());
    live = taken;
    let e = dos_event(&["198.18.1.7"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.endpoints[0].0, "dos-3-sources-2");
    assert_eq!(p.channels[0].name, "hold-dos-3-3");
    // An id outside the name charset becomes a valid name.
    let mut e = dos_event(&["198.18.1.7"], false);
    e.id = "dos 4/x".into();
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.channels[0].name, "hold-dos-4-x");
}

#[test]
fn monitor_mode_is_a_dry_run() {
    let live = live();
    let e = dos_event(&["198.18.1.7"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Monitor).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.channels[0].mode, Mode::Monitor);
    assert!(
        text.contains("mode: monitor: counts what this would drop"),
        "{text}"
    );
    assert!(text.contains("    mode: monitor\n"), "{text}");
}

#[test]
fn a_full_policy_is_refused_clearly() {
    let mut text = String::from("endpoints:\n  service: [198.18.10.2/32]\nchannels:\n");
    for i in 0..tc_common::MAX_CHANNELS {
        text.push_str(&format!(
            "  - {{name: c{i}, to: 198.18.10.2, protocol: tcp}}\n"
        ));
    }
    let full = Policy::parse(&text, "full.yaml").unwrap();
    let e = dos_event(&["198.18.1.7"], false);
    let err = suggest(&e, &full, &History::new(), Mode::Enforce).unwrap_err();
    assert!(
        matches!(
            err,
            SuggestError::PolicyFull {
                have: 1024,
                add: 1,
                max: 1024
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the live policy has 1024 channels and the suggestion adds 1; a policy holds at most 1024: remove a channel first, or limit the sources by hand"
    );
    // One free slot, but no live channel says the hook: two are needed.
    let mut one_free = Policy::parse(&text, "full.yaml").unwrap();
    one_free.channels.truncate(1023);
    for c in &mut one_free.channels {
        c.to = any().into();
    }
    one_free.channels[0].direction = Direction::Egress;
    let err = suggest(&e, &one_free, &History::new(), Mode::Enforce).unwrap_err();
    assert!(
        matches!(
            err,
            SuggestError::PolicyFull {
                have: 1023,
                add: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn the_hook_follows_the_live_channels_or_is_both() {
    let e = dos_event(&["198.18.1.7"], false);
    // No live channel carries it: ingress and egress, held together.
    let none = Policy::parse(
        "endpoints:\n  service: [198.18.10.2/32]\nchannels: []\n",
        "e.yaml",
    )
    .unwrap();
    let text = suggest(&e, &none, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &none, 1, 2);
    assert_eq!(p.channels[0].name, "hold-dos-3");
    assert_eq!(p.channels[0].direction, Direction::Ingress);
    assert_eq!(p.channels[1].name, "hold-dos-3-egress");
    assert_eq!(p.channels[1].direction, Direction::Egress);
    assert_eq!(p.channels[0].limit, p.channels[1].limit);
    assert!(text.contains("a packet is charged once"), "{text}");
    // Only egress channels carry it (a router): egress.
    let egress = Policy::parse(
        "endpoints:\n  service: [198.18.10.0/24]\nchannels:\n  - name: out\n    to: service\n    direction: egress\n",
        "e.yaml",
    )
    .unwrap();
    let text = suggest(&e, &egress, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &egress, 1, 1);
    assert_eq!(p.channels[0].direction, Direction::Egress);
}

#[test]
fn a_spike_on_a_channel_sets_its_limit_in_place() {
    let live = live();
    let mut h = History::new();
    for t in STARTED - 600..STARTED {
        h.record(
            "web",
            CHANNEL_METRICS,
            t,
            // 3/4 passed, 1/4 dropped: offered is their sum.
            &[
                0.75 * wander(8e6, t),
                0.75 * wander(1000.0, t),
                0.25 * wander(8e6, t),
                0.25 * wander(1000.0, t),
            ],
        );
    }
    let e = event(
        EventKind::Spike,
        &[],
        &[],
        json!({"metric": "offered_bps", "baseline": 8e6, "now": 25e6, "factor": 3.1,
               "protocol": "mixed", "port": null, "channel": "web",
               "offered_bps": {"baseline": 8e6, "now": 25e6},
               "offered_pps": {"baseline": 1000.0, "now": 3100.0}}),
    );
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    println!("{text}");
    let p = Policy::parse(&text, "s.yaml").unwrap();
    assert_eq!(p.endpoints, live.endpoints);
    assert_eq!(p.channels.len(), live.channels.len());
    assert_eq!(p.channels[1..], live.channels[1..]);
    let web = &p.channels[0];
    let (a, b) = (&live.channels[0], web);
    assert_eq!(
        (&a.from, &a.to, a.protocol, &a.ports),
        (&b.from, &b.to, b.protocol, &b.ports)
    );
    let bps = expected_p95(8e6) * HEADROOM;
    assert!(
        within(web.limit.bandwidth_bps.unwrap(), bps, 0.02),
        "{text}"
    );
    assert!(
        text.contains("set in place: a copy ahead with the same match"),
        "{text}"
    );
    assert!(
        text.contains("of the channel's history (passed + dropped)"),
        "{text}"
    );
    // Applied, the same event finds nothing to tighten.
    let err = suggest(&e, &p, &h, Mode::Enforce).unwrap_err();
    assert!(matches!(err, SuggestError::AlreadyHeld { .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!(
            "channel `web` already holds its traffic at or below its baseline's limit (bandwidth {}, packets ",
            render::rate(web.limit.bandwidth_bps.unwrap())
        )),
        "{err}"
    );
    // `dns` enforces a limit: monitor mode would stop that.
    let mut dns = e.clone();
    dns.evidence.insert("channel".into(), json!("dns"));
    let err = suggest(&dns, &live, &History::new(), Mode::Monitor).unwrap_err();
    assert!(
        matches!(err, SuggestError::MonitorWouldRelax { .. }),
        "{err}"
    );
    // `web` has no limit: a dry run of one is fine.
    let text = suggest(&e, &live, &h, Mode::Monitor).unwrap();
    let p = Policy::parse(&text, "s.yaml").unwrap();
    assert_eq!(p.channels[0].mode, Mode::Monitor);
    // Without history: the detector's offered baselines.
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = Policy::parse(&text, "s.yaml").unwrap();
    let l = &p.channels[0].limit;
    assert_eq!(
        (l.bandwidth_bps, l.packets),
        (Some(12_000_000), Some(1500)),
        "{text}"
    );
    assert!(text.contains("of offered_bps and offered_pps"), "{text}");
    // A channel gone since.
    let mut gone = e.clone();
    gone.evidence.insert("channel".into(), json!("removed"));
    let err = suggest(&gone, &live, &h, Mode::Enforce).unwrap_err();
    assert!(matches!(err, SuggestError::ChannelGone { .. }), "{err}");
}

#[test]
fn a_spike_on_an_interaction_reuses_a_named_set() {
    let live = live();
    let mut h = History::new();
    record_pair(&mut h, "clients->service", 4e6, 600.0, 20.0);
    let e = event(
        EventKind::Spike,
        &["clients"],
        &["service"],
        json!({"metric": "request_bps", "baseline": 4e6, "now": 12e6, "factor": 3.0,
               "protocol": "tcp", "port": 80,
               "request_bps": {"baseline": 4e6, "now": 12e6},
               "request_pps": {"baseline": 600.0, "now": 1800.0}}),
    );
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    let c = &p.channels[0];
    assert_eq!(c.from.to_vec(), live.endpoints[0].1);
    assert!(
        text.contains("    from: clients\n    to: service\n"),
        "{text}"
    );
    assert!(within(
        c.limit.bandwidth_bps.unwrap(),
        expected_p95(4e6) * HEADROOM,
        0.02
    ));
    // Without history: the evidence's figure for the interaction.
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    assert_eq!(p.channels[0].limit.bandwidth_bps, Some(6_000_000));
    assert_eq!(p.channels[0].limit.packets, Some(900));
    assert!(
        text.contains("the event's baseline of the whole interaction"),
        "{text}"
    );
}

#[test]
fn a_spike_from_other_only_holds_everyone_toward_the_destination() {
    let live = live();
    let mut h = History::new();
    record_pair(&mut h, "other->service", 1e6, 100.0, 5.0);
    record_pair(&mut h, "clients->service", 2e6, 200.0, 5.0);
    let e = event(
        EventKind::Spike,
        &["other"],
        &["service"],
        json!({"metric": "request_bps", "baseline": 1e6, "now": 3e6, "factor": 3.0,
               "protocol": "udp", "port": 53,
               "request_bps": {"baseline": 1e6, "now": 3e6},
               "request_pps": {"baseline": 100.0, "now": 300.0}}),
    );
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    let c = &p.channels[0];
    assert!(c.from.iter().all(|n| n.prefix_len() == 0), "{text}");
    assert_eq!((c.protocol, &c.ports[..]), (Protocol::Udp, &[(53, 53)][..]));
    // Everyone toward `service`: the sets' pairs and `other`'s, summed.
    let want = (expected_p95(1e6) + expected_p95(2e6)) * HEADROOM;
    assert!(within(c.limit.bandwidth_bps.unwrap(), want, 0.02), "{text}");
    assert!(text.contains("Holds EVERYONE toward service"), "{text}");
    assert!(text.contains("not in this sum"), "{text}");
    // `dns` (udp 53 to service, ingress) carries it: ingress only.
    assert_eq!(c.direction, Direction::Ingress);
}

#[test]
fn an_upstream_collapse_holds_the_driving_clients_and_their_new_connections() {
    let live = live();
    let mut h = History::new();
    record_pair(&mut h, "198.18.1.7->service", 2e6, 300.0, 40.0);
    let e = event(
        EventKind::UpstreamCollapse,
        &["198.18.1.7", "198.18.1.8"],
        &["service"],
        json!({"metric": "response_ratio", "baseline": 0.9, "now": 0.3, "factor": 0.33,
               "protocol": "tcp", "port": 80,
               "response_ratio": {"baseline": 0.9, "now": 0.3},
               "handshake_rtt_us": {"baseline": 200.0, "now": 90000.0},
               "resets_per_s": {"baseline": 0.0, "now": 30.0},
               "new_connections_per_s": {"baseline": 80.0, "now": 320.0},
               "unanswered_syns": 900,
               "clients": [
                   {"from": "198.18.1.7", "request_bps": 8e6, "baseline_request_bps": 2e6,
                    "request_pps": 1200.0, "baseline_request_pps": 300.0},
                   {"from": "198.18.1.8", "request_bps": 8e6, "baseline_request_bps": 1e6,
                    "request_pps": 1200.0, "baseline_request_pps": 150.0}]}),
    );
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    println!("{text}");
    let p = check(&text, &live, 1, 1);
    let c = &p.channels[0];
    assert_eq!(c.from.len(), 2);
    // .7 from its history, .8 from the evidence (no history).
    let bps = (expected_p95(2e6) + 1e6) * HEADROOM;
    assert!(within(c.limit.bandwidth_bps.unwrap(), bps, 0.02), "{text}");
    // New connections: .7's p95 plus the destination's 80/s for .8.
    let conns = (expected_p95(40.0) + 80.0) * HEADROOM;
    let got = c.limit.new_connections.unwrap();
    assert!(
        within(u64::from(got), conns, 0.03),
        "{got} vs {conns}\n{text}"
    );
    assert!(text.contains("new connections the destination's"), "{text}");
}

#[test]
fn unknown_destinations_and_empty_events_are_refused() {
    let live = live();
    let mut e = dos_event(&["198.18.1.7"], false);
    e.to = vec!["other".into(), "gone-set".into()];
    let err = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap_err();
    assert!(matches!(err, SuggestError::NoDestination { .. }), "{err}");
    assert!(err.to_string().contains("other, gone-set"), "{err}");
    // One destination known, one not: held toward the known one, and said.
    e.to = vec!["service".into(), "gone-set".into()];
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    check(&text, &live, 1, 1);
    assert!(
        text.contains("not held toward gone-set: no address or set of the live policy names it"),
        "{text}"
    );
    let e = event(
        EventKind::Spike,
        &[],
        &["service"],
        json!({"metric": "request_bps"}),
    );
    let err = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap_err();
    assert!(matches!(err, SuggestError::NothingToHold { .. }), "{err}");
}

#[test]
fn rounding() {
    assert_eq!(round_up(0.0), 0);
    assert_eq!(round_up(2.1), 3);
    assert_eq!(round_up(999.0), 999);
    assert_eq!(round_up(1001.0), 1010);
    assert_eq!(round_up(123_456.0), 124_000);
}

#[test]
fn a_set_that_is_exactly_the_sources_is_reused() {
    let live = Policy::parse(
        "endpoints:\n  service: [198.18.10.2/32]\n  suspects: [198.18.1.7, 198.18.1.8]\nchannels:\n  - name: all\n",
        "l.yaml",
    )
    .unwrap();
    let e = dos_event(&["198.18.1.8", "198.18.1.7"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    assert!(text.contains("    from: suspects\n"), "{text}");
    assert_eq!(p.channels[0].from.to_vec(), live.endpoints[1].1);
}

#[test]
fn many_sources_are_counted_not_listed() {
    let live = live();
    let names: Vec<String> = (1..=50).map(|i| format!("198.18.1.{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let e = dos_event(&refs, false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.endpoints[0].1.len(), 50);
    // 50 x 40 kbit/s x 1.5.
    assert_eq!(p.channels[0].limit.bandwidth_bps, Some(3_000_000));
    assert!(text.contains("#   ... and 40 more sources\n"), "{text}");
    assert!(text.contains("    - 198.18.1.50/32\n"), "{text}");
}

#[test]
fn a_spike_from_several_sources_without_history_counts_the_interaction_once() {
    let live = live();
    let e = event(
        EventKind::Spike,
        &["198.18.1.7", "198.18.1.8"],
        &["service"],
        json!({"metric": "request_pps", "baseline": 600.0, "now": 1800.0, "factor": 3.0,
               "protocol": "mixed", "port": null,
               "request_bps": {"baseline": 4e6, "now": 12e6},
               "request_pps": {"baseline": 600.0, "now": 1800.0}}),
    );
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    let c = &p.channels[0];
    assert_eq!((c.protocol, c.ports.is_empty()), (Protocol::Any, true));
    assert_eq!(c.limit.bandwidth_bps, Some(6_000_000));
    assert_eq!(c.limit.packets, Some(900));
    assert!(
        text.contains("counted in the interaction's baseline above"),
        "{text}"
    );
}

#[test]
fn the_hold_is_never_looser_than_the_live_channel_that_carried_the_traffic() {
    let live = Policy::parse(
        r#"
endpoints:
  clients: [198.18.1.0/24]
  service: [198.18.10.2/32]
channels:
  - name: web
    from: clients
    to: service
    protocol: tcp
    ports: ["1-1024"]
    limit: {bandwidth: 100kbit, connections: 20, new_connections: 2}
    connection_action: reset
"#,
        "l.yaml",
    )
    .unwrap();
    let e = dos_event(&["198.18.1.7", "198.18.1.8", "198.18.1.9"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    let c = &p.channels[0];
    // The baseline gives 180 kbit/s and 45 packets/s; `web` held all of
    // it at 100 kbit/s and 20 connections: kept.
    assert_eq!(c.limit.bandwidth_bps, Some(100_000), "{text}");
    assert_eq!(c.limit.packets, Some(45));
    assert_eq!(
        (c.limit.connections, c.limit.new_connections),
        (Some(20), Some(2))
    );
    assert_eq!(c.connection_action, ConnAction::Reset);
    assert!(text.contains("Never looser than `web`"), "{text}");
    // A monitor-mode channel enforced nothing: no cap.
    let mut monitor = live.clone();
    monitor.channels[0].mode = Mode::Monitor;
    let text = suggest(&e, &monitor, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &monitor, 1, 1);
    assert_eq!(p.channels[0].limit.bandwidth_bps, Some(180_000), "{text}");
}

#[test]
fn ipv6_sources_and_destinations() {
    let live = Policy::parse("channels:\n  - name: all\n", "l.yaml").unwrap();
    let mut e = dos_event(&["2001:db8:1::7", "2001:db8:2::/64"], false);
    e.to = vec!["2001:db8:10::/64".into()];
    e.evidence.insert("protocol".into(), json!("udp"));
    e.evidence.insert("port".into(), json!(443));
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    let c = &p.channels[0];
    let nets = |v: &[&str]| -> Vec<IpNet> { v.iter().map(|s| s.parse().unwrap()).collect() };
    assert_eq!(
        c.from.to_vec(),
        nets(&["2001:db8:1::7/128", "2001:db8:2::/64"])
    );
    assert_eq!(c.to.to_vec(), nets(&["2001:db8:10::/64"]));
    assert_eq!(
        (c.protocol, &c.ports[..]),
        (Protocol::Udp, &[(443, 443)][..])
    );
    assert!(text.contains("    to: [\"2001:db8:10::/64\"]\n"), "{text}");
    // `all` carries everything on ingress: one channel, on ingress.
    assert_eq!(c.direction, Direction::Ingress);
}

#[test]
fn a_baseline_in_packets_only_limits_packets_only() {
    let live = live();
    let mut e = dos_event(&["other"], true);
    e.evidence.remove("request_bps");
    e.evidence.remove("request_pps");
    e.evidence.insert("metric".into(), json!("request_pps"));
    e.evidence.insert("baseline".into(), json!(4000.0));
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    let l = &p.channels[0].limit;
    // No bandwidth floor of 8 kbit on a destination whose bandwidth is
    // unknown. The baseline gives 6000 packets/s; `dns` (udp/53, 5000
    // packets/s) would hold the packets whose protocol the datapath
    // cannot read, which the hold (tcp) takes first: its limit is kept.
    assert_eq!((l.bandwidth_bps, l.packets), (None, Some(5000)), "{text}");
    assert!(
        text.contains("Never looser than `dns` (its protocol differs"),
        "{text}"
    );
    assert!(
        text.contains("the event's baseline request_pps: 4000.0 packets/s"),
        "{text}"
    );
}

/// End to end on synthetic traffic: 200 quiet sources, then three of them
/// jump 80x; the detectors' own `dos` event, with the history the agent
/// records every second, gives a hold on exactly the three, at their
/// baseline, far below the flood, and no other source matches it.
#[test]
fn the_detectors_dos_event_becomes_a_hold_on_the_flooders() {
    use crate::{
        detect::{
            testutil::{rng, sample, Flow, Noise, Run, Wander},
            Detector,
        },
        observe::interaction_point,
    };
    let live = Policy::parse(
        "endpoints:\n  service: [198.18.10.2/32]\nchannels:\n  - name: web\n    to: service\n    protocol: tcp\n",
        "live.yaml",
    )
    .unwrap();
    let flows: Vec<Flow> = (0..200)
        .map(|i| {
            Flow::tcp(
                &format!("198.18.{}.{}", 1 + i / 100, i % 100),
                "service",
                50.0,
            )
        })
        .collect();
    let flooders = [7usize, 58, 142];
    let (onset, t0) = (420u64, STARTED - 420);
    let mut r = rng(3);
    let mut w: Vec<Wander> = flows.iter().map(|_| Wander::new(Noise::Iid(0.3))).collect();
    let (mut det, mut run, mut h) = (Detector::default(), Run::default(), History::new());
    for i in 0..onset + 30 {
        let pairs: Vec<_> = flows
            .iter()
            .zip(&mut w)
            .enumerate()
            .map(|(j, (f, w))| {
                let k = if i >= onset && flooders.contains(&j) {
                    80.0
                } else {
                    1.0
                };
                f.pair(w.next(&mut r) * k)
            })
            .collect();
        for p in &pairs {
            let key = format!("{}->{}", p.from, p.to);
            h.record(
                &key,
                INTERACTION_METRICS,
                t0 + i,
                &interaction_point(&p.d, 1.0),
            );
        }
        run.feed(&mut det, i, &sample(t0 + i, pairs, Vec::new()));
    }
    let dos = run.of(EventKind::Dos);
    assert_eq!(dos.len(), 1, "{:?}", run.started);
    let (at, e) = dos[0];
    assert!(*at >= onset && *at < onset + 10, "detected at {at}");
    let text = suggest(e, &live, &h, Mode::Enforce).unwrap();
    println!("{}\n{text}", serde_json::to_string(e).unwrap());
    let p = check(&text, &live, 1, 1);
    let hold = &p.channels[0];
    let want: Vec<IpNet> = flooders
        .iter()
        .map(|&j| format!("{}/32", flows[j].from).parse().unwrap())
        .collect();
    let mut want = want;
    want.sort();
    assert_eq!(hold.from.to_vec(), want, "{text}");
    assert_eq!(
        (hold.protocol, &hold.ports[..]),
        (Protocol::Tcp, &[(80, 80)][..])
    );
    // Each source's baseline: 50 packets/s of 100 bytes (40 kbit/s) ±30%,
    // so a p95 within 1.2-1.3x of the level; three of them, times 1.5.
    let level = 3.0 * 40_000.0 * HEADROOM;
    let bw = hold.limit.bandwidth_bps.unwrap() as f64;
    assert!(
        (1.15 * level..=1.35 * level).contains(&bw),
        "{bw} vs {level}"
    );
    // The flood offers 80x the level: the hold passes under 2.5% of it.
    let flood = 3.0 * 40_000.0 * 80.0;
    assert!(bw / flood < 0.025, "{bw} of {flood}");
    // No other source matches the hold: they go on to `web`, as before.
    for (j, f) in flows
        .iter()
        .enumerate()
        .filter(|(j, _)| !flooders.contains(j))
    {
        let a: IpNet = format!("{}/32", f.from).parse().unwrap();
        assert!(!hold.from.iter().any(|n| n.contains(&a)), "source {j}");
    }
    assert!(text.contains("history before the onset"), "{text}");
}

/// Random live policies (the policy fuzzer's) and random events of every
/// kind, with evidence whole, partial, or wrong, names that are sets,
/// addresses, `other` or nothing known: `suggest` either hands out a file
/// that validates and keeps the live policy, or refuses with one of the
/// errors an operator can act on, never one that says it built something
/// wrong, and never panics; and no packet a hold takes escapes a limit
/// the live policy held it to ([`no_limit_escapes`]).
#[test]
fn random_events_on_random_policies() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };
    let names = prop::sample::select(
        &[
            "web",
            "db",
            "lan",
            "ext",
            "a",
            "b_2",
            "set.x",
            "n-1",
            "other",
            "gone",
            "198.18.1.7",
            "198.18.1.8",
            "10.0.0.1",
            "2001:db8::1",
            "2001:db8:5::/64",
            "not an address",
            "",
        ][..],
    );
    let evidence = (
        prop::sample::select(&["request_bps", "request_pps", "offered_bps", "response_ratio", "x"][..]),
        prop::option::of(0.0..1e9f64),
        prop::sample::select(&["tcp", "udp", "icmp", "other", "mixed", "TCP", ""][..]),
        prop::option::of(0u32..70_000),
        any::<bool>(),
        prop::option::of(prop::sample::select(&["c0", "c1", "c5", "x", ""][..])),
        prop::collection::vec((prop::sample::select(&["198.18.1.7", "other", "web", "198.18.1.9"][..]), prop::option::of(0.0..1e8f64)), 0..4),
    )
        .prop_map(|(metric, baseline, protocol, port, crowd, channel, sources)| {
            let mut ev = json!({
                "metric": metric, "baseline": baseline, "now": 1e9, "factor": 3.0,
                "protocol": protocol, "port": port, "crowd": crowd,
                "request_bps": {"baseline": baseline, "now": 1e9},
                "sources": sources.iter().map(|(s, b)| json!({"source": s, "baseline_bps": b, "baseline_pps": b.map(|b| b / 1000.0)})).collect::<Vec<_>>(),
                "clients": sources.iter().map(|(s, b)| json!({"from": s, "baseline_request_bps": b})).collect::<Vec<_>>(),
                "new_connections_per_s": {"baseline": 12.0, "now": 100.0},
            });
            if let Some(c) = channel {
                ev["channel"] = json!(c);
            }
            ev
        });
    let case = (
        crate::policy::fuzz::policy(true),
        prop::sample::select(&EventKind::ALL[..]),
        prop::collection::vec(names.clone(), 0..4),
        prop::collection::vec(names, 0..3),
        evidence,
        any::<bool>(),
        any::<u64>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let (ok, refused, held) = (
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
    );
    runner
        .run(&case, |(g, kind, from, to, ev, monitor, seed)| {
            let live = Policy::parse(&g.render(), "fuzz.yaml").expect("valid");
            let from: Vec<&str> = from.iter().map(|s| &**s).collect();
            let to: Vec<&str> = to.iter().map(|s| &**s).collect();
            let e = event(kind, &from, &to, ev);
            let mode = if monitor {
                Mode::Monitor
            } else {
                Mode::Enforce
            };
            match suggest(&e, &live, &History::new(), mode) {
                Ok(text) => {
                    let p = Policy::parse(&text, "s.yaml")
                        .unwrap_or_else(|err| panic!("{err}\n{text}"));
                    // Everything live is there (a channel spike changes one
                    // channel's limit and mode in place).
                    let added = p.channels.len() - live.channels.len();
                    for (a, b) in p.channels[added..].iter().zip(&live.channels) {
                        assert_eq!(
                            (&a.name, &a.from, &a.to, a.protocol, &a.ports),
                            (&b.name, &b.from, &b.to, b.protocol, &b.ports)
                        );
                        if e.evidence.get("channel").and_then(Value::as_str)
                            != Some(b.name.as_str())
                            || kind != EventKind::Spike
                        {
                            assert_eq!(a, b, "{text}");
                        }
                    }
                    assert!(p.channels[..added].iter().all(|c| c.mode == mode));
                    held.set(held.get() + no_limit_escapes(&live, &p, added, seed));
                    ok.set(ok.get() + 1);
                }
                Err(
                    err @ (SuggestError::Invalid(_)
                    | SuggestError::Changed(_)
                    | SuggestError::TooLarge(_)),
                ) => panic!("{err}\n{e:?}\n{}", g.render()),
                Err(_) => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{} suggestions, {} refused with a reason, {} packets taken by a hold from an enforcing live channel checked",
        ok.get(),
        refused.get(),
        held.get()
    );
    assert!(ok.get() > 50, "{} suggestions only", ok.get());
}

/// Random packets through the suggestion and the live policy, by the
/// policy simulator's first match: every packet that a new channel (a
/// hold, the first `added`) takes and that an enforcing live channel held
/// before is held at least as strictly: the hold enforces, and each limit
/// the live channel had (bandwidth, packets; connections for a TCP packet
/// whose protocol the datapath reads) the hold has too, no larger.
/// Returns how many such packets were checked.
fn no_limit_escapes(live: &Policy, suggested: &Policy, added: usize, seed: u64) -> usize {
    use crate::policy::{
        fuzz::{packets, Rng},
        sim::reference,
    };
    use tc_common::L4_UNKNOWN;
    let mut checked = 0;
    let mut rng = Rng(seed);
    // Packets aimed anywhere in the file, and packets aimed at the holds'
    // own prefixes (with the live channels' ports and their edges).
    let aimed = Policy {
        channels: suggested.channels[..added]
            .iter()
            .cloned()
            .chain(suggested.channels[added..].iter().map(|c| Channel {
                from: suggested.channels[0].from.clone(),
                to: suggested.channels[0].to.clone(),
                ..c.clone()
            }))
            .collect(),
        ..Policy::default()
    };
    let mut all = packets(suggested, &mut rng, 200);
    if added > 0 {
        all.extend(packets(&aimed, &mut rng, 1500));
    }
    for p in all {
        let Some(h) = reference(suggested, &p).filter(|i| *i < added) else {
            continue;
        };
        let Some(l) = reference(live, &p) else {
            continue;
        };
        let (hold, was) = (&suggested.channels[h], &live.channels[l]);
        if !enforces(was) {
            continue;
        }
        checked += 1;
        let why = || {
            format!(
                "{p:?}: hold `{}` {hold:?}\nlive `{}` {was:?}",
                hold.name, was.name
            )
        };
        assert_eq!(hold.mode, Mode::Enforce, "{}", why());
        let (hl, wl) = (hold.limit, was.limit);
        let tighter = |h: Option<u64>, w: Option<u64>| w.is_none_or(|w| h.is_some_and(|h| h <= w));
        assert!(
            tighter(hl.bandwidth_bps, wl.bandwidth_bps),
            "bandwidth: {}",
            why()
        );
        assert!(tighter(hl.packets, wl.packets), "packets: {}", why());
        if p.proto == 6 && p.hidden != L4_UNKNOWN {
            let c = |x: Option<u32>| x.map(u64::from);
            assert!(
                tighter(c(hl.connections), c(wl.connections)),
                "connections: {}",
                why()
            );
            assert!(
                tighter(c(hl.new_connections), c(wl.new_connections)),
                "new connections: {}",
                why()
            );
        }
    }
    checked
}

/// The reviewer's case: `vip` (from .7) at 10 kbit and `web` (tcp/80)
/// with a connection limit; a flood from .7, .8, .9 of mixed protocols.
/// The hold would have been protocol any at 180 kbit, ahead of both: .7
/// from 10 kbit to 180 kbit, and past web's connection limit.
const VIP_WEB: &str = r#"
endpoints:
  vip: [198.18.1.7/32]
  service: [198.18.10.2/32]
channels:
  - name: vip
    from: vip
    limit: {bandwidth: 10kbit}
  - name: web
    to: service
    protocol: tcp
    ports: [80]
    limit: {connections: 20}
"#;

#[test]
fn a_hold_never_loosens_or_bypasses_a_live_limit() {
    let live = Policy::parse(VIP_WEB, "l.yaml").unwrap();
    let mut e = dos_event(&["198.18.1.7", "198.18.1.8", "198.18.1.9"], false);
    e.evidence.insert("protocol".into(), json!("mixed"));
    // Protocol any cannot carry web's connection limit: refused, saying why.
    let err = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap_err();
    assert!(
        matches!(&err, SuggestError::CannotCap { channel, .. } if channel == "web"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("connections 20"), "{msg}");
    assert!(msg.contains("need `protocol: tcp`"), "{msg}");
    // The same flood on TCP: the hold keeps vip's 10 kbit (.7 is among
    // the sources) and web's 20 connections, not the baseline's 180 kbit.
    e.evidence.insert("protocol".into(), json!("tcp"));
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    let h = &p.channels[0];
    assert_eq!(h.protocol, Protocol::Tcp);
    assert_eq!(h.limit.bandwidth_bps, Some(10_000), "{text}");
    assert_eq!(h.limit.connections, Some(20), "{text}");
    assert!(text.contains("Never looser than `vip`, `web`"), "{text}");
    assert!(
        text.contains("may pass up to their limit plus this one"),
        "{text}"
    );
    // Without .7: vip holds none of the hold's packets, web still does.
    let e = dos_event(&["198.18.1.8", "198.18.1.9"], false);
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert_eq!(p.channels[0].limit.bandwidth_bps, Some(120_000), "{text}");
    assert_eq!(p.channels[0].limit.connections, Some(20), "{text}");
    // And packet by packet, through the simulator.
    let mut e = dos_event(&["198.18.1.7", "198.18.1.8", "198.18.1.9"], false);
    e.evidence.insert("protocol".into(), json!("tcp"));
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &live, 1, 1);
    assert!(no_limit_escapes(&live, &p, 1, 7) > 0);
}

#[test]
fn a_monitor_hold_over_enforced_traffic_is_refused() {
    let live = Policy::parse(VIP_WEB, "l.yaml").unwrap();
    let e = dos_event(&["198.18.1.8"], false);
    let err = suggest(&e, &live, &History::new(), Mode::Monitor).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, SuggestError::MonitorWouldBypass { channels } if channels == "`web`"),
        "{err:?}"
    );
    assert!(
        msg.contains("would stop enforcing the limits of `web`"),
        "{msg}"
    );
    assert!(msg.contains("`--mode enforce`"), "{msg}");
    // In enforce mode, the same event is held.
    suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    // Live channels that enforce nothing there: the dry run is fine.
    let mut relaxed = live.clone();
    relaxed.channels[1].mode = Mode::Monitor;
    let text = suggest(&e, &relaxed, &History::new(), Mode::Monitor).unwrap();
    assert_eq!(check(&text, &relaxed, 1, 1).channels[0].mode, Mode::Monitor);
}

#[test]
fn two_hooks_split_the_limit() {
    let none = Policy::parse(
        "endpoints:\n  service: [198.18.10.2/32]\nchannels: []\n",
        "e.yaml",
    )
    .unwrap();
    let e = dos_event(&["198.18.1.7", "198.18.1.8", "198.18.1.9"], false);
    let text = suggest(&e, &none, &History::new(), Mode::Enforce).unwrap();
    let p = check(&text, &none, 1, 2);
    // The baseline gives 180 kbit/s and 45 packets/s: half on each hook.
    for c in &p.channels[..2] {
        assert_eq!(c.limit.bandwidth_bps, Some(90_000), "{text}");
        assert_eq!(c.limit.packets, Some(23), "{text}");
    }
    assert!(
        text.contains("Each holds HALF of the limit above"),
        "{text}"
    );
}

#[test]
fn a_destination_baseline_comes_from_the_history_first() {
    let live = live();
    let mut h = History::new();
    record_pair(&mut h, "clients->service", 1.0e6, 200.0, 5.0);
    // A crowd: everyone toward service, from the history of `clients`,
    // not the evidence's 2 Mbit/s mean.
    let e = dos_event(&["198.18.1.7"], true);
    let text = suggest(&e, &live, &h, Mode::Enforce).unwrap();
    let p = check(&text, &live, 0, 1);
    let want = expected_p95(1.0e6) * HEADROOM;
    let got = p.channels[0].limit.bandwidth_bps.unwrap();
    assert!(within(got, want, 0.02), "{got} vs {want}\n{text}");
    assert!(text.contains("`clients->service`"), "{text}");
    // Without history: the evidence, and the comment says why.
    let text = suggest(&e, &live, &History::new(), Mode::Enforce).unwrap();
    assert!(
        text.contains("no 30 s of history toward the destination"),
        "{text}"
    );
    assert!(text.contains("bandwidth 3Mbit"), "{text}");
}

#[test]
fn the_history_window_is_taken_once_and_enough() {
    // What the agent takes under its lock gives the same file as the
    // history itself.
    let live = live();
    let mut h = History::new();
    record_pair(&mut h, "198.18.1.7->service", 40_000.0, 10.0, 1.0);
    record_pair(&mut h, "clients->service", 1.0e6, 200.0, 5.0);
    for e in [
        dos_event(&["198.18.1.7"], false),
        dos_event(&["198.18.1.7"], true),
    ] {
        let w = Window::take(&e, &live, &h);
        assert_eq!(
            suggest_from(&e, &live, &w, Mode::Enforce).unwrap(),
            suggest(&e, &live, &h, Mode::Enforce).unwrap()
        );
        assert_eq!(w.history.len(), 2);
    }
}

/// The property on policies and events built to meet: live channels over a
/// few overlapping prefixes, protocols, ports, hooks, modes and limits, and
/// events of every kind from sources among them, toward them. For each
/// suggestion, random packets through the simulator: none that a hold
/// takes escapes a limit (or sees one grow) that the live policy held it
/// to ([`no_limit_escapes`]).
#[test]
fn no_packet_a_hold_takes_escapes_a_live_limit() {
    use proptest::{
        prelude::*,
        test_runner::{Config, TestRunner},
    };
    let channel = (
        prop::sample::select(
            &[
                "",
                "198.18.1.7/32",
                "198.18.1.0/24",
                "198.18.1.0/29",
                "198.18.2.0/24",
                "clients",
            ][..],
        ),
        prop::sample::select(&["", "198.18.10.2/32", "198.18.10.0/24", "service"][..]),
        prop::sample::select(&["any", "tcp", "udp", "icmp"][..]),
        prop::sample::select(&["", "[80]", "[53]", "[\"1-1024\"]"][..]),
        any::<bool>(),
        prop::option::of(prop::sample::select(&["10kbit", "500kbit", "20Mbit"][..])),
        prop::option::of(prop::sample::select(&[5u32, 100, 5000][..])),
        prop::option::of((1u32..50, any::<bool>())),
        // Mostly enforcing: those are the limits a hold could undo.
        prop::sample::select(&[false, false, false, true][..]),
    )
        .prop_map(|(from, to, proto, ports, egress, bw, pk, conns, monitor)| {
            let mut c = String::new();
            if !from.is_empty() {
                c += &format!("    from: {from}\n");
            }
            if !to.is_empty() {
                c += &format!("    to: {to}\n");
            }
            c += &format!("    protocol: {proto}\n");
            if !ports.is_empty() && proto != "icmp" {
                c += &format!("    ports: {ports}\n");
            }
            if egress {
                c += "    direction: egress\n";
            }
            let mut limit = Vec::new();
            if let Some(b) = bw {
                limit.push(format!("bandwidth: {b}"));
            }
            if let Some(p) = pk {
                limit.push(format!("packets: {p}"));
            }
            if let Some((n, new)) = conns.filter(|_| proto == "tcp") {
                limit.push(if new {
                    format!("new_connections: {n}")
                } else {
                    format!("connections: {n}")
                });
            }
            if !limit.is_empty() {
                c += &format!("    limit: {{{}}}\n", limit.join(", "));
            }
            if monitor {
                c += "    mode: monitor\n";
            }
            c
        });
    let sources =
        prop::sample::select(&["198.18.1.7", "198.18.1.8", "198.18.2.9", "clients", "other"][..]);
    let case = (
        prop::collection::vec(channel, 0..6),
        prop::sample::select(&EventKind::ALL[..]),
        prop::collection::vec(sources, 0..4),
        prop::sample::select(&["service", "198.18.10.2"][..]),
        prop::sample::select(&["tcp", "udp", "icmp", "mixed"][..]),
        prop::option::of(prop::sample::select(&[80u16, 53][..])),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let (ok, refused, held) = (
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
        std::cell::Cell::new(0),
    );
    runner
        .run(&case, |(channels, kind, from, to, protocol, port, crowd, monitor, seed)| {
            let mut text = String::from(
                "endpoints:\n  clients: [198.18.1.0/24]\n  service: [198.18.10.2/32]\nchannels:\n",
            );
            for (i, c) in channels.iter().enumerate() {
                text += &format!("  - name: c{i}\n{c}");
            }
            if channels.is_empty() {
                text = text.replace("channels:\n", "channels: []\n");
            }
            let live = Policy::parse(&text, "live.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
            let ev = json!({
                "metric": "request_bps", "baseline": 2.0e6, "now": 2.0e7, "factor": 10.0,
                "protocol": protocol, "port": port, "crowd": crowd,
                "request_bps": {"baseline": 2.0e6, "now": 2.0e7},
                "request_pps": {"baseline": 500.0, "now": 5000.0},
                "new_connections_per_s": {"baseline": 12.0, "now": 100.0},
                "sources": from.iter().map(|s| json!({"source": s, "baseline_bps": 40_000.0, "baseline_pps": 10.0})).collect::<Vec<_>>(),
                "clients": from.iter().map(|s| json!({"from": s, "baseline_request_bps": 40_000.0})).collect::<Vec<_>>(),
            });
            let e = event(kind, &from, &[to], ev);
            let mode = if monitor { Mode::Monitor } else { Mode::Enforce };
            match suggest(&e, &live, &History::new(), mode) {
                Ok(out) => {
                    let p = Policy::parse(&out, "s.yaml").unwrap_or_else(|err| panic!("{err}\n{out}"));
                    let added = p.channels.len() - live.channels.len();
                    held.set(held.get() + no_limit_escapes(&live, &p, added, seed));
                    ok.set(ok.get() + 1);
                }
                Err(
                    err @ (SuggestError::Invalid(_)
                    | SuggestError::Changed(_)
                    | SuggestError::TooLarge(_)),
                ) => panic!("{err}\n{e:?}\n{text}"),
                Err(_) => refused.set(refused.get() + 1),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{} suggestions, {} refused with a reason, {} packets taken by a hold from an enforcing live channel checked",
        ok.get(),
        refused.get(),
        held.get()
    );
    assert!(ok.get() > 100, "{} suggestions only", ok.get());
    assert!(held.get() > 500, "{} packets checked only", held.get());
}
