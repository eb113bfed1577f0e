//! `top`'s events pane: what the agent's detectors found, open events
//! first (newest first), then the last ones that ended, one line each:
//! id, kind, sources -> destinations, how long ago, the summary.

use std::cmp::Reverse;

use ratatui::{
    layout::Rect,
    style::{Color, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Paragraph},
    Frame,
};

use super::{app::App, view::duration};
use crate::{cli::events::flow, detect::Event};

/// Lines the pane takes, borders included: four events.
pub const HEIGHT: u16 = 6;
/// Width of the sources -> destinations cell.
const FLOW_WIDTH: usize = 40;

/// Draws the pane into `area`.
pub fn render(frame: &mut Frame, area: Rect, app: &App) {
    let now = crate::clock::unix_secs();
    let mut open: Vec<&Event> = app.events.iter().filter(|e| e.ended.is_none()).collect();
    open.sort_by_key(|e| Reverse(e.started));
    let mut ended: Vec<&Event> = app.events.iter().filter(|e| e.ended.is_some()).collect();
    ended.sort_by_key(|e| Reverse(e.ended));
    let title = format!(
        " events: {} open, {} ended (tc-agent events; tc-agent suggest ID) ",
        open.len(),
        ended.len()
    );
    let block = if open.is_empty() {
        Block::bordered().title(title)
    } else {
        Block::bordered()
            .title(title)
            .border_style(Style::new().fg(Color::Red))
    };
    let rows = usize::from(area.height.saturating_sub(2));
    let mut lines = Vec::new();
    if let Some(e) = &app.events_error {
        lines.push(Line::from(format!("events: {e}")).fg(Color::Yellow));
    }
    if app.events.is_empty() && app.events_error.is_none() {
        lines.push(Line::from(
            "none: the detectors found no spike, upstream collapse or flood since the agent started",
        ));
    }
    let room = rows.saturating_sub(lines.len());
    // Open events first; if they do not all fit, the last line counts the rest.
    let shown_open = if open.len() > room {
        room.saturating_sub(1)
    } else {
        open.len()
    };
    for e in &open[..shown_open] {
        lines.push(line(
            e,
            format!("ongoing {}", duration(now.saturating_sub(e.started))),
            true,
        ));
    }
    if shown_open < open.len() {
        lines.push(
            Line::from(format!(
                "+{} more open: tc-agent events lists them",
                open.len() - shown_open
            ))
            .fg(Color::Red),
        );
    }
    let left = rows.saturating_sub(lines.len());
    for e in ended.iter().take(left) {
        let end = e.ended.unwrap_or(e.started);
        lines.push(line(
            e,
            format!(
                "ended {} ago, lasted {}",
                duration(now.saturating_sub(end)),
                duration(end.saturating_sub(e.started))
            ),
            false,
        ));
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// One event: open ones stand out, ended ones are dim.
fn line(e: &Event, age: String, open: bool) -> Line<'static> {
    let flow = flow(e, FLOW_WIDTH);
    let spans = vec![
        Span::from(format!("{:<16} ", e.id)),
        Span::from(format!("{:<17} ", e.kind.as_str())),
        Span::from(format!("{flow:<FLOW_WIDTH$} ")),
        Span::from(format!("{age:<28} ")),
        Span::from(e.summary.clone()),
    ];
    if open {
        Line::from(spans).fg(Color::Red)
    } else {
        Line::from(spans).dim()
    }
}
