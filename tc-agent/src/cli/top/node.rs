//! `top`'s node pane, at the bottom of the frame: the node-wide counters
//! that `channels` carries (what the datapath saw that no channel
//! explains: unclassified, non-IP, malformed, fail-open packets...), with
//! per-second rates between the last two rounds.

use ratatui::{
    layout::Rect,
    style::{Color, Stylize},
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::{app::App, view::packets};

/// Lines the pane takes, borders included.
pub const HEIGHT: u16 = 6;

/// Draws the pane into `area`.
pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let block = Block::bordered().title(" node counters ");
    let Some(now) = app.node_samples.1 else {
        frame.render_widget(Paragraph::new("no counters yet").block(block), area);
        return;
    };
    let n = now.counters;
    // Per second since the previous round; `-` until there is one (or if
    // the agent restarted and its counters went back).
    let rate = |pick: fn(&crate::control::NodeCounters) -> u64| -> String {
        let Some(before) = app.node_samples.0 else {
            return "-".into();
        };
        let secs = now.at.duration_since(before.at).as_secs_f64();
        match pick(&n).checked_sub(pick(&before.counters)) {
            Some(d) if secs > 0.0 => format!("{}/s", packets(d as f64 / secs)),
            _ => "-".into(),
        }
    };
    let item = |label: &'static str, total: u64, per_s: String| {
        let style = if total > 0 && label != "seen" {
            Color::Yellow
        } else {
            Color::Reset
        };
        vec![
            Span::from(format!("{label} ")),
            Span::from(format!("{total} ({per_s})")).fg(style),
            Span::from("   "),
        ]
    };
    let lines = vec![
        Line::from(
            [
                item("seen", n.seen_pkts, rate(|c| c.seen_pkts)),
                item(
                    "unclassified",
                    n.unclassified_pkts,
                    rate(|c| c.unclassified_pkts),
                ),
                item("non-IP", n.non_ip_pkts, rate(|c| c.non_ip_pkts)),
                item("malformed", n.malformed_pkts, rate(|c| c.malformed_pkts)),
            ]
            .concat(),
        ),
        Line::from(
            [
                item("fail-open", n.fail_open_pkts, rate(|c| c.fail_open_pkts)),
                item("fragments", n.fragment_pkts, rate(|c| c.fragment_pkts)),
                item(
                    "orphan fragments",
                    n.fragment_orphan_pkts,
                    rate(|c| c.fragment_orphan_pkts),
                ),
                item("no ports", n.no_ports_pkts, rate(|c| c.no_ports_pkts)),
            ]
            .concat(),
        ),
        Line::from(
            [
                item("contended", n.contended_pkts, rate(|c| c.contended_pkts)),
                item(
                    "conn untracked",
                    n.conn_untracked_pkts,
                    rate(|c| c.conn_untracked_pkts),
                ),
                item(
                    "after reset",
                    n.conn_after_close_pkts,
                    rate(|c| c.conn_after_close_pkts),
                ),
            ]
            .concat(),
        ),
        Line::from(
            [
                item("flow-cache hits", n.flow_hits, rate(|c| c.flow_hits)),
                item("misses", n.flow_misses, rate(|c| c.flow_misses)),
                item("inserts", n.flow_inserts, rate(|c| c.flow_inserts)),
            ]
            .concat(),
        ),
    ];
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
