//! `top`'s frame from synthetic reports, rendered into ratatui's
//! `TestBackend`: what an operator would read, checked as text.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{
    app::{App, Sort, Step},
    frame_text,
    poll::{EventsDelta, Round},
};
use crate::{
    control::{
        ChannelRow, ChannelsReport, ConnRow, Features, InteractionRow, InteractionTable, MapReport,
        NodeCounters, Rates, StateCheck, StatusReport,
    },
    detect::{Event, EventKind},
    policy::{Action, Direction, Limit, Mode, Protocol},
};

fn channel(name: &str, passed_bps: f64, passed_pps: f64) -> ChannelRow {
    ChannelRow {
        name: name.into(),
        direction: Direction::Ingress,
        protocol: Protocol::Udp,
        mode: Mode::Enforce,
        action: Action::Drop,
        limit: Limit {
            bandwidth_bps: Some(20_000_000),
            ..Limit::default()
        },
        totals: Default::default(),
        rates: Rates {
            passed_bps,
            passed_pps,
            ..Rates::default()
        },
        connections: ConnRow::default(),
    }
}

fn channels_report() -> ChannelsReport {
    let mut web = channel("web-frontend", 0.0, 0.0);
    web.protocol = Protocol::Tcp;
    web.limit = Limit {
        connections: Some(100),
        new_connections: Some(50),
        ..Limit::default()
    };
    web.connections = ConnRow {
        open_connections: 42,
        connection_limit: Some(100),
        refused_per_s: 3.5,
        ..ConnRow::default()
    };
    let mut flood = channel("udp-flood", 20_000_000.0, 2_400.0);
    flood.rates.dropped_bps = 60_000_000.0;
    flood.rates.dropped_pps = 7_200.0;
    let mut watch = channel("watch-only", 1_500.0, 2.0);
    watch.mode = Mode::Monitor;
    watch.rates.would_drop_bps = 2_500_000.0;
    ChannelsReport {
        version: 7,
        generation: 1,
        rate_window_s: 1.0,
        taken_unix_ms: 0,
        channels: vec![web, flood, watch],
        unnamed_channels: 0,
        node: NodeCounters {
            seen_pkts: 123_456,
            unclassified_pkts: 17,
            ..NodeCounters::default()
        },
    }
}

fn map_report() -> MapReport {
    MapReport {
        window_s: 5.0,
        interactions: vec![InteractionRow {
            from: "clients".into(),
            to: "web".into(),
            protocol: "tcp".into(),
            port: 443,
            request_bps: 1_250_000.0,
            request_pps: 300.0,
            response_bps: 48_000_000.0,
            response_pps: 4_000.0,
            open_connections: 12,
            new_connections_per_s: 8.5,
            handshake_rtt_us: Some(1_234.0),
            resets_per_s: 0.0,
        }],
        table: InteractionTable {
            size: 4096,
            entries: 1,
            ..InteractionTable::default()
        },
    }
}

fn status_report() -> StatusReport {
    StatusReport {
        pid: 4321,
        uptime_s: 3725,
        kernel: "6.12.0".into(),
        features: Features {
            tcx: true,
            btf: true,
            delay: true,
        },
        hooks: Vec::new(),
        fq_on: Vec::new(),
        version: 7,
        generation: 1,
        state: StateCheck::Consistent,
        unnamed_channels: 0,
        channels: 3,
        policy_file: Some("/etc/tc-agent/policy.yaml".into()),
        pin_dir: "/sys/fs/bpf/tc-agent".into(),
        socket: "/run/tc-agent/agent.sock".into(),
        connections: Default::default(),
    }
}

fn round(map: Result<MapReport, String>) -> Round {
    Round {
        at: Instant::now(),
        status: Ok(status_report()),
        channels: Ok(channels_report()),
        map,
        events: Ok(EventsDelta::default()),
    }
}

/// The line of `text` that holds `needle`, for cell checks.
fn line_with<'t>(text: &'t str, needle: &str) -> &'t str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
}

/// The whitespace-separated words of a table line, borders left out.
fn cells(line: &str) -> Vec<&str> {
    line.split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn the_frame_shows_channels_rates_interactions_and_node_counters() {
    let mut app = App::new(1000);
    app.apply(round(Ok(map_report())));
    let text = frame_text(&mut app, 160, 40).unwrap();
    println!("{text}");

    let header = line_with(&text, "tc-agent top");
    assert!(header.contains("agent pid 4321, up 1h2m"), "{header}");
    assert!(header.contains("policy v7 (generation 1)"), "{header}");
    assert!(
        header.contains("from /etc/tc-agent/policy.yaml"),
        "{header}"
    );
    assert!(header.contains("rates over 1.0s"), "{header}");

    for title in ["CHANNEL", "PASS bit/s", "PASS pps", "DROP bit/s", "CONNS"] {
        assert!(text.contains(title), "no column {title}");
    }
    assert_eq!(
        cells(line_with(&text, "udp-flood")),
        [
            "udp-flood",
            "ingress",
            "20.0Mbit",
            "20.0Mbit",
            "2400",
            "60.0Mbit",
            "7200",
            "-",
            "-"
        ]
    );
    assert_eq!(
        cells(line_with(&text, "web-frontend")),
        [
            "web-frontend",
            "ingress",
            "100conns",
            "50new/s",
            "0.0bit",
            "0",
            "0.0bit",
            "0",
            "42/100",
            "3.5"
        ]
    );
    // Monitor mode: what would have been dropped, marked, and no pps.
    let watch = cells(line_with(&text, "watch-only"));
    assert_eq!(watch[3..7], ["1.5kbit", "2", "2.5Mbit*", "-"], "{watch:?}");

    let flow = cells(line_with(&text, "clients -> web"));
    assert_eq!(
        flow,
        ["clients", "->", "web", "tcp/443", "1.2Mbit", "48.0Mbit", "12", "8.5", "1.23ms"]
    );
    assert!(text.contains("map: 1 over 5.0s, table 1 of 4096"), "{text}");
    assert!(!text.contains("not served"), "{text}");

    let node = line_with(&text, "seen");
    assert!(node.contains("seen 123456 (-)"), "{node}");
    assert!(node.contains("unclassified 17"), "{node}");
}

#[test]
fn an_agent_without_a_map_gets_a_one_line_notice_and_the_rest_stays() {
    let mut app = App::new(1000);
    app.apply(round(Err("not served yet".into())));
    let text = frame_text(&mut app, 160, 40).unwrap();
    let notices: Vec<_> = text.lines().filter(|l| l.contains("not served")).collect();
    assert_eq!(notices.len(), 1, "{text}");
    assert!(
        notices[0].contains("map: not served yet (no interactions to show)"),
        "{text}"
    );
    assert!(text.contains("udp-flood"), "{text}");

    // A map once answered stays under the notice when a later round fails,
    // so an agent that fails now and then does not make the pane flicker.
    app.apply(round(Ok(map_report())));
    app.apply(round(Err("busy".into())));
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(
        text.contains("map: busy (the last map shown below)"),
        "{text}"
    );
    assert!(text.contains("clients -> web"), "{text}");
    // The layout did not move: the channels pane starts on the same line.
    let first = frame_text(&mut App::new(1000), 160, 40).unwrap();
    let top_of = |t: &str| t.lines().position(|l| l.contains(" channels (")).unwrap();
    assert_eq!(top_of(&text), top_of(&first));
}

#[test]
fn an_unreachable_agent_is_shown_and_the_last_numbers_kept() {
    let mut app = App::new(1000);
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(
        text.contains("waiting for the agent's first answer"),
        "{text}"
    );

    app.apply(round(Ok(map_report())));
    let refused = "cannot reach the agent at /run/x.sock: Connection refused (os error 111)";
    app.apply(Round {
        at: Instant::now(),
        status: Err(refused.into()),
        channels: Err(refused.into()),
        map: Err(refused.into()),
        events: Err(refused.into()),
    });
    let text = frame_text(&mut app, 160, 40).unwrap();
    let header = line_with(&text, "cannot reach");
    assert!(
        header.starts_with("showing data from") && header.contains("s ago, retrying: "),
        "{header}"
    );
    // Said once, in the header, not again as a map notice.
    assert_eq!(text.matches("cannot reach").count(), 1, "{text}");
    assert!(text.contains("udp-flood"), "{text}");
}

#[test]
fn node_counters_become_rates_between_rounds() {
    let mut app = App::new(1000);
    let t0 = Instant::now();
    let mut r = round(Ok(map_report()));
    r.at = t0;
    app.apply(r);
    let mut r = round(Ok(map_report()));
    r.at = t0 + Duration::from_secs(2);
    if let Ok(c) = &mut r.channels {
        c.node.seen_pkts += 50_000;
    }
    app.apply(r);
    let text = frame_text(&mut app, 160, 40).unwrap();
    let node = line_with(&text, "seen");
    assert!(node.contains("seen 173456 (25.0k/s)"), "{node}");
    assert!(node.contains("unclassified 17 (0/s)"), "{node}");
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn keys_sort_scroll_and_quit() {
    let mut app = App::new(1000);
    let mut report = channels_report();
    for i in 0..60 {
        report
            .channels
            .push(channel(&format!("bulk-{i:02}"), f64::from(i) * 1e3, 1.0));
    }
    app.apply(Round {
        channels: Ok(report),
        ..round(Ok(map_report()))
    });
    let names = |app: &App| -> Vec<String> {
        app.sorted_channels()
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(names(&app)[0], "web-frontend");
    assert_eq!(app.on_key(key(KeyCode::Char('s'))), Step::Continue);
    assert_eq!(app.sort, Sort::Name);
    assert_eq!(names(&app)[0], "bulk-00");
    app.on_key(key(KeyCode::Char('s')));
    assert_eq!(app.sort, Sort::Rate);
    // 20 Mbit passed + 60 Mbit dropped is the busiest.
    // ... then what a monitor channel would drop counts as busy too.
    assert_eq!(names(&app)[..3], ["udp-flood", "watch-only", "bulk-59"]);
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(text.contains("channels by rate"), "{text}");

    // The frame had room for some rows: PgDn moves a page, End shows the
    // last row, and the scroll never runs past a full last page.
    let page = app.channels_scroll.page;
    assert!(page > 5 && page < 63, "page {page}");
    app.on_key(key(KeyCode::PageDown));
    assert_eq!(app.channels_scroll.offset, page);
    app.on_key(key(KeyCode::End));
    assert_eq!(app.channels_scroll.offset, 63 - page);
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(
        text.contains("web-frontend"),
        "the quietest row is last: {text}"
    );
    assert!(
        text.contains(&format!("channels ({}-63 of 63)", 64 - page)),
        "{text}"
    );
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.channels_scroll.offset, 63 - page);
    app.on_key(key(KeyCode::Home));
    assert_eq!(app.channels_scroll.offset, 0);
    // Tab: the arrows now move the (one-row) interactions table, not this one.
    app.on_key(key(KeyCode::Tab));
    app.on_key(key(KeyCode::PageDown));
    assert_eq!(app.channels_scroll.offset, 0);
    assert_eq!(app.interactions_scroll.offset, 0);

    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Step::Quit);
    assert_eq!(app.on_key(key(KeyCode::Esc)), Step::Quit);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Step::Quit
    );
}

#[test]
fn small_terminals_get_a_cut_frame_not_a_panic() {
    let mut app = App::new(1000);
    app.apply(round(Err("not served yet".into())));
    for (w, h) in [(80, 24), (40, 12), (10, 4), (1, 1)] {
        let text = frame_text(&mut app, w, h).unwrap();
        assert_eq!(text.lines().count(), usize::from(h), "{w}x{h}");
    }
    // At 80 columns whole columns give way; the numbers left are whole.
    let text = frame_text(&mut app, 80, 24).unwrap();
    println!("{text}");
    assert!(
        text.contains("columns hidden: widen the terminal"),
        "{text}"
    );
    let flood = cells(line_with(&text, "udp-flood"));
    assert_eq!(
        flood[..4],
        ["udp-flood", "20.0Mbit", "2400", "60.0Mbit"],
        "{text}"
    );
    assert!(text.contains("3 columns hidden"), "{text}");
}

#[test]
fn formats() {
    use super::view::{duration, millis, packets};
    assert_eq!(packets(0.4), "0");
    assert_eq!(packets(9_999.0), "9999");
    assert_eq!(packets(12_345.0), "12.3k");
    assert_eq!(packets(2_500_000.0), "2.5M");
    assert_eq!(duration(42), "42s");
    assert_eq!(duration(423), "7m3s");
    assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    assert_eq!(millis(1_234.0), "1.23ms");
}

/// An event that started `ago` seconds before now, ended `lasted` seconds
/// after it started if given.
fn event(id: &str, kind: EventKind, ago: u64, lasted: Option<u64>, from: &[&str]) -> Event {
    let now = crate::clock::unix_secs();
    Event {
        id: id.into(),
        kind,
        started: now - ago,
        ended: lasted.map(|l| now - ago + l),
        from: from.iter().map(|s| s.to_string()).collect(),
        to: vec!["web".into()],
        summary: format!("{id}: the summary"),
        evidence: Default::default(),
    }
}

fn with_events(full: bool, events: Vec<Event>) -> Round {
    Round {
        events: Ok(EventsDelta { full, events }),
        ..round(Ok(map_report()))
    }
}

#[test]
fn the_events_pane_shows_open_events_first_then_the_last_ended() {
    let mut app = App::new(1000);
    app.apply(round(Ok(map_report())));
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(text.contains(" events: 0 open, 0 ended "), "{text}");
    assert!(
        text.contains("none: the detectors found no spike, upstream collapse or flood"),
        "{text}"
    );

    app.apply(with_events(
        true,
        vec![
            event("dos-1", EventKind::Dos, 600, Some(60), &["198.18.0.7"]),
            event("spike-2", EventKind::Spike, 300, Some(20), &["clients"]),
            event(
                "dos-3",
                EventKind::Dos,
                42,
                None,
                &["198.18.0.7", "198.18.0.9", "198.18.0.11"],
            ),
        ],
    ));
    let text = frame_text(&mut app, 160, 40).unwrap();
    println!("{text}");
    assert!(text.contains(" events: 1 open, 2 ended "), "{text}");
    let open = line_with(&text, "dos-3");
    assert!(open.contains("198.18.0.7,+2 -> web"), "{open}");
    assert!(open.contains("ongoing 42s"), "{open}");
    assert!(open.contains("dos-3: the summary"), "{open}");
    let spike = line_with(&text, "spike-2");
    assert!(spike.contains("clients -> web"), "{spike}");
    assert!(spike.contains("ended 4m40s ago, lasted 20s"), "{spike}");
    // Open first, then the most recent end.
    let at = |id: &str| text.find(id).unwrap();
    assert!(
        at("dos-3") < at("spike-2") && at("spike-2") < at("dos-1"),
        "{text}"
    );
    // The node counters are still there, in their own pane.
    assert!(line_with(&text, "seen").contains("seen 123456"), "{text}");

    // A change: dos-3 ends. A new one opens.
    app.apply(with_events(
        false,
        vec![
            event("dos-3", EventKind::Dos, 42, Some(40), &["198.18.0.7"]),
            event(
                "upstream_collapse-4",
                EventKind::UpstreamCollapse,
                1,
                None,
                &["clients"],
            ),
        ],
    ));
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(text.contains(" events: 1 open, 3 ended "), "{text}");
    assert!(
        line_with(&text, "upstream_collapse-4").contains("ongoing 1s"),
        "{text}"
    );
    assert!(line_with(&text, "dos-3").contains("lasted 40s"), "{text}");
    assert_eq!(app.events.len(), 4);

    // A full answer (a new agent run) replaces everything.
    app.apply(with_events(true, Vec::new()));
    assert!(app.events.is_empty());
}

#[test]
fn more_open_events_than_lines_are_counted() {
    let mut app = App::new(1000);
    let many = (1..=9)
        .map(|i| {
            event(
                &format!("spike-{i}"),
                EventKind::Spike,
                100 - i,
                None,
                &["c"],
            )
        })
        .collect();
    app.apply(with_events(true, many));
    let text = frame_text(&mut app, 160, 40).unwrap();
    // Four lines: the three newest, and the count of the others.
    assert!(text.contains("spike-9"), "{text}");
    assert!(text.contains("spike-7"), "{text}");
    assert!(!text.contains("spike-6 "), "{text}");
    assert!(
        text.contains("+6 more open: tc-agent events lists them"),
        "{text}"
    );
}

#[test]
fn an_agent_failing_events_keeps_the_last_ones_under_a_notice() {
    let mut app = App::new(1000);
    app.apply(with_events(
        true,
        vec![event("dos-1", EventKind::Dos, 10, None, &["198.18.0.7"])],
    ));
    app.apply(Round {
        events: Err("unknown variant `events`".into()),
        ..round(Ok(map_report()))
    });
    let text = frame_text(&mut app, 160, 40).unwrap();
    assert!(text.contains("events: unknown variant `events`"), "{text}");
    assert!(text.contains("dos-1"), "{text}");
}
