//! `top`'s frame: header, channels, interactions, the events and node
//! panes and a key line, drawn from [`App`] alone (so a `TestBackend`
//! renders exactly what a terminal would).
//!
//! The layout never depends on what the agent answered: a pane that has no
//! data says so inside its own border, and the others stay where they
//! were, so a failing request does not make the screen jump.

use std::time::Instant;

use ratatui::{
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
    Frame,
};

use super::{
    app::{App, Focus},
    events, node,
};
use crate::{
    control::{ChannelRow, InteractionRow},
    policy::{units::Rate, Mode},
};

/// Draws the whole frame.
pub fn render(frame: &mut Frame, app: &mut App) {
    let [header, channels, interactions, events_area, node_area, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(3),
        Constraint::Fill(2),
        Constraint::Length(events::HEIGHT),
        Constraint::Length(node::HEIGHT),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    render_header(frame, header, app);
    render_channels(frame, channels, app);
    render_interactions(frame, interactions, app);
    events::render(frame, events_area, app);
    node::render(frame, node_area, app);
    frame.render_widget(
        Paragraph::new(
            " q quit   s sort (policy order/name/rate)   Tab switch pane   Up/Down PgUp/PgDn Home/End scroll",
        )
        .dim(),
        keys,
    );
}

fn render_header(frame: &mut Frame, area: Rect, app: &App) {
    let mut first = vec![Span::from(format!("tc-agent top {}", app.version)).bold()];
    if let Some(s) = &app.status {
        first.push(Span::from(format!(
            " | agent pid {}, up {}",
            s.pid,
            duration(s.uptime_s)
        )));
    }
    match &app.channels {
        Some(c) if c.version == 0 => first.push(" | no policy applied".into()),
        Some(c) => {
            first.push(Span::from(format!(
                " | policy v{} (generation {})",
                c.version, c.generation
            )));
            if let Some(file) = app.status.as_ref().and_then(|s| s.policy_file.as_ref()) {
                first.push(Span::from(format!(" from {file}")));
            }
            first.push(Span::from(format!(" | rates over {:.1}s", c.rate_window_s)));
        }
        None => {}
    }
    let second = match (&app.agent_error, app.updated) {
        // What the operator must know first, the error's tail last: a
        // narrow terminal cuts the line on the right.
        (Some(e), updated) => Line::from(vec![
            Span::from(match updated {
                Some(t) => format!("showing data from {} ago, retrying: ", ago(t)),
                None => "retrying: ".into(),
            }),
            Span::from(e.clone()).fg(Color::Red),
        ]),
        (None, Some(t)) => {
            let line = Line::from(format!(
                "updated {} ago, every {:.1}s | channels by {}",
                ago(t),
                app.interval_ms as f64 / 1e3,
                app.sort.label()
            ));
            // A round still waiting on a slow agent: the numbers age.
            if t.elapsed().as_millis() > 3 * u128::from(app.interval_ms) {
                line.fg(Color::Yellow)
            } else {
                line
            }
        }
        (None, None) => Line::from("waiting for the agent's first answer..."),
    };
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

/// A pane's border: highlighted when the scroll keys move it.
fn pane(title: String, focused: bool) -> Block<'static> {
    let block = Block::bordered().title(title);
    if focused {
        block.border_style(Style::new().fg(Color::Cyan))
    } else {
        block
    }
}

/// A table column: its title, its width, whether it holds numbers, and
/// when it gives way in a narrow terminal.
#[derive(Clone, Copy)]
struct Column {
    /// The title in the header row.
    title: &'static str,
    /// Width in cells.
    width: u16,
    /// Numbers are right-aligned, so magnitudes line up; text is
    /// left-aligned.
    numeric: bool,
    /// 0: always shown. Otherwise, when the columns do not fit, the highest
    /// goes first: a column is hidden whole, never squeezed, because a
    /// right-aligned number cut on its left reads as another number
    /// (`20.0Mbit` as `0.0Mbit`).
    shed: u8,
}

/// A text column, always shown.
const fn text(title: &'static str, width: u16) -> Column {
    Column {
        title,
        width,
        numeric: false,
        shed: 0,
    }
}

/// A number column, always shown.
const fn num(title: &'static str, width: u16) -> Column {
    Column {
        title,
        width,
        numeric: true,
        shed: 0,
    }
}

impl Column {
    /// The same column, hidden in order `order` when space runs out.
    const fn shed(self, order: u8) -> Self {
        Self {
            shed: order,
            ..self
        }
    }
}

/// Spaces between two columns.
const SPACING: u16 = 2;

/// Which of `columns` fit in `width` cells (by index, in order), shedding
/// columns as [`Column::shed`] says.
fn fitting(columns: &[Column], width: u16) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..columns.len()).collect();
    let need = |kept: &[usize]| -> u32 {
        kept.iter()
            .map(|&i| u32::from(columns[i].width))
            .sum::<u32>()
            + u32::from(SPACING) * kept.len().saturating_sub(1) as u32
    };
    while need(&kept) > u32::from(width) {
        let Some(pos) = kept
            .iter()
            .enumerate()
            .filter(|(_, &i)| columns[i].shed > 0)
            .max_by_key(|(_, &i)| columns[i].shed)
            .map(|(pos, _)| pos)
        else {
            break;
        };
        kept.remove(pos);
    }
    kept
}

/// One table row: its cells, in column order, and whether it stands out.
struct Cells {
    /// The text of each cell.
    cells: Vec<String>,
    /// Drawn in the warning colour (a channel that drops, or would).
    warn: bool,
}

/// A table of `rows` under the titles of `columns`, showing only the
/// columns in `kept` ([`fitting`]), packed to the left.
fn table(columns: &[Column], kept: &[usize], rows: Vec<Cells>) -> Table<'static> {
    let cell = |c: &Column, s: String| {
        let line = Line::from(s);
        Cell::from(if c.numeric {
            line.right_aligned()
        } else {
            line
        })
    };
    let header = Row::new(
        kept.iter()
            .map(|&i| cell(&columns[i], columns[i].title.to_string())),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|mut r| {
            let row = Row::new(
                kept.iter()
                    .map(|&i| cell(&columns[i], std::mem::take(&mut r.cells[i]))),
            );
            if r.warn {
                row.style(Style::new().fg(Color::Yellow))
            } else {
                row
            }
        })
        .collect();
    Table::new(
        rows,
        kept.iter().map(|&i| Constraint::Length(columns[i].width)),
    )
    .header(header)
    .column_spacing(SPACING)
    .flex(Flex::Start)
}

/// The title's note when columns were hidden.
fn hidden_note(columns: &[Column], kept: &[usize]) -> String {
    match columns.len() - kept.len() {
        0 => String::new(),
        1 => "| 1 column hidden: widen the terminal ".into(),
        n => format!("| {n} columns hidden: widen the terminal "),
    }
}

/// Width for a column titled `title` holding `values`, within `min..=max`.
fn fit_width(title: &str, values: impl Iterator<Item = usize>, min: u16, max: u16) -> u16 {
    let widest = values.chain([title.len()]).max().unwrap_or(0);
    u16::try_from(widest).unwrap_or(max).clamp(min, max)
}

/// Rows that fit in a bordered pane of `area` under one header line.
fn rows_fitting(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

fn render_channels(frame: &mut Frame, area: Rect, app: &mut App) {
    let total = app.channels.as_ref().map_or(0, |c| c.channels.len());
    app.channels_scroll.fit(total, rows_fitting(area));
    let offset = app.channels_scroll.offset;
    let inner_width = area.width.saturating_sub(2);
    let sorted = app.sorted_channels();
    let name_width = fit_width("CHANNEL", sorted.iter().map(|c| c.name.len()), 12, 40);
    let limit_width = fit_width("LIMIT", sorted.iter().map(|c| limit_text(c).len()), 8, 32);
    let columns = [
        text("CHANNEL", name_width),
        text("DIR", 7).shed(6),
        text("LIMIT", limit_width).shed(5),
        num("PASS bit/s", 10),
        num("PASS pps", 8).shed(3),
        num("DROP bit/s", 10),
        num("DROP pps", 8).shed(4),
        num("CONNS", 11).shed(1),
        num("REFUSED/s", 9).shed(2),
    ];
    let kept = fitting(&columns, inner_width);
    let mut title = format!(" channels ({total}) ");
    if total > app.channels_scroll.page {
        title = format!(
            " channels ({}-{} of {total}) ",
            offset + 1,
            (offset + app.channels_scroll.page).min(total)
        );
    }
    if let Some(n) = app.channels.as_ref().map(|c| c.unnamed_channels) {
        if n > 0 {
            title.push_str(&format!(
                "| {n} channels the kernel enforces cannot be named (see `tc-agent status`) "
            ));
        }
    }
    title.push_str(&hidden_note(&columns, &kept));
    let block = pane(title, app.focus == Focus::Channels);
    if app.channels.is_none() {
        frame.render_widget(Paragraph::new("no channels report yet").block(block), area);
        return;
    }
    let rows = sorted
        .into_iter()
        .skip(offset)
        .take(app.channels_scroll.page)
        .map(channel_row)
        .collect();
    frame.render_widget(table(&columns, &kept, rows).block(block), area);
}

/// The limits, short: `20.0Mbit 1000pps 100conns 50new/s`, or `-`.
pub fn limit_text(c: &ChannelRow) -> String {
    let mut parts = Vec::new();
    if let Some(b) = c.limit.bandwidth_bps {
        parts.push(Rate(b as f64).to_string());
    }
    if let Some(p) = c.limit.packets {
        parts.push(format!("{p}pps"));
    }
    if let Some(n) = c.limit.connections {
        parts.push(format!("{n}conns"));
    }
    if let Some(n) = c.limit.new_connections {
        parts.push(format!("{n}new/s"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

/// One channel's cells. Monitor channels drop nothing: their DROP column
/// is what enforce mode would have dropped, marked `*`; their per-packet
/// would-drop rate is not reported, so DROP pps shows `-`.
fn channel_row(c: &ChannelRow) -> Cells {
    let (drop_bps, drop_pps) = match c.mode {
        Mode::Enforce => (
            Rate(c.rates.dropped_bps).to_string(),
            packets(c.rates.dropped_pps),
        ),
        Mode::Monitor => (format!("{}*", Rate(c.rates.would_drop_bps)), "-".into()),
    };
    let k = &c.connections;
    let (conns, refused) = if c.limit.limits_connections() {
        let limit = k.connection_limit.map_or("-".into(), |l| l.to_string());
        (
            format!("{}/{limit}", k.open_connections),
            format!("{:.1}", k.refused_per_s),
        )
    } else {
        ("-".into(), "-".into())
    };
    Cells {
        cells: vec![
            c.name.clone(),
            format!("{:?}", c.direction).to_lowercase(),
            limit_text(c),
            Rate(c.rates.passed_bps).to_string(),
            packets(c.rates.passed_pps),
            drop_bps,
            drop_pps,
            conns,
            refused,
        ],
        warn: c.rates.dropped_bps > 0.0 || c.rates.would_drop_bps > 0.0,
    }
}

fn render_interactions(frame: &mut Frame, area: Rect, app: &mut App) {
    let total = app.interaction_count();
    // The notice takes a line of the pane when there is one.
    let notice_lines = usize::from(app.map_error.is_some());
    app.interactions_scroll
        .fit(total, rows_fitting(area).saturating_sub(notice_lines));
    let offset = app.interactions_scroll.offset;
    let pairs: Vec<String> = app
        .map
        .iter()
        .flat_map(|m| &m.interactions)
        .map(|r| format!("{} -> {}", r.from, r.to))
        .collect();
    let columns = [
        text(
            "FROM -> TO",
            fit_width("FROM -> TO", pairs.iter().map(String::len), 20, 60),
        ),
        text("PROTO", 9),
        num("REQ bit/s", 10),
        num("RESP bit/s", 10),
        num("OPEN", 7).shed(3),
        num("NEW/s", 8).shed(2),
        num("HANDSHAKE", 10).shed(1),
    ];
    let kept = fitting(&columns, area.width.saturating_sub(2));
    let mut title = match &app.map {
        Some(m) => format!(
            " interactions (map: {total} over {:.1}s, table {} of {}) ",
            m.window_s, m.table.entries, m.table.size
        ),
        None => " interactions (map) ".into(),
    };
    if app.map.is_some() {
        title.push_str(&hidden_note(&columns, &kept));
    }
    let block = pane(title, app.focus == Focus::Interactions);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [notice_area, table_area] =
        Layout::vertical([Constraint::Length(notice_lines as u16), Constraint::Fill(1)])
            .areas(inner);
    if let Some(e) = &app.map_error {
        let what = if app.map.is_some() {
            "the last map shown below"
        } else {
            "no interactions to show"
        };
        frame.render_widget(
            Paragraph::new(format!("map: {e} ({what})")).fg(Color::Yellow),
            notice_area,
        );
    }
    let Some(map) = &app.map else {
        return;
    };
    let rows = map
        .interactions
        .iter()
        .zip(pairs)
        .skip(offset)
        .take(app.interactions_scroll.page)
        .map(|(r, pair)| interaction_row(r, pair))
        .collect();
    frame.render_widget(table(&columns, &kept, rows), table_area);
}

/// `tcp/443`, or the protocol alone where there are no ports.
pub fn proto_port(r: &InteractionRow) -> String {
    if r.port == 0 {
        r.protocol.clone()
    } else {
        format!("{}/{}", r.protocol, r.port)
    }
}

fn interaction_row(r: &InteractionRow, pair: String) -> Cells {
    Cells {
        cells: vec![
            pair,
            proto_port(r),
            Rate(r.request_bps).to_string(),
            Rate(r.response_bps).to_string(),
            r.open_connections.to_string(),
            format!("{:.1}", r.new_connections_per_s),
            r.handshake_rtt_us.map_or("-".into(), millis),
        ],
        warn: false,
    }
}

/// Microseconds as `1.23ms`.
pub fn millis(us: f64) -> String {
    format!("{:.2}ms", us / 1e3)
}

/// A packet (or event) rate, short: `950`, `12.3k`, `1.5M`.
pub fn packets(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.1}M", pps / 1e6)
    } else if pps >= 1e4 {
        format!("{:.1}k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

/// Seconds as `3d4h`, `5h12m`, `7m3s` or `42s`: two units at most.
pub fn duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// How long ago `t` was, to a tenth of a second.
fn ago(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}
