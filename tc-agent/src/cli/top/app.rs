//! `top`'s state: the last reports the agent gave, what went wrong since,
//! and what the operator chose (sort order, focused pane, scroll offsets).
//! No terminal here: the keys arrive as crossterm events and the view reads
//! this state, so both are tested without a terminal.

use std::time::Instant;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::poll::{EventsDelta, Round};
use crate::{
    control::{ChannelRow, ChannelsReport, MapReport, NodeCounters, StatusReport},
    detect::{events::MAX_EVENTS, Event},
};

/// How the channels table is ordered; `s` cycles through them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// As in the policy file: first match wins, so this is the order that
    /// explains which channel a packet lands in.
    #[default]
    Policy,
    /// By channel name, to find one among many.
    Name,
    /// Busiest first (passed plus dropped bits per second).
    Rate,
}

impl Sort {
    /// The next order `s` switches to.
    fn next(self) -> Self {
        match self {
            Sort::Policy => Sort::Name,
            Sort::Name => Sort::Rate,
            Sort::Rate => Sort::Policy,
        }
    }

    /// How the header names it.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Policy => "policy order",
            Sort::Name => "name",
            Sort::Rate => "rate",
        }
    }
}

/// The pane the scroll keys move.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Focus {
    /// The channels table (the first pane, focused at start).
    #[default]
    Channels,
    /// The interactions table from `map`.
    Interactions,
}

/// What a key asks of the UI loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep running (the state may have changed: draw again).
    Continue,
    /// Restore the terminal and exit.
    Quit,
}

/// One scrollable table: where it starts and how many rows fit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scroll {
    /// Index of the first row shown.
    pub offset: usize,
    /// Rows the last frame had room for: a page for PgUp/PgDn, and the
    /// bound that keeps the last page full. 0 before the first frame.
    pub page: usize,
}

impl Scroll {
    /// Moves by `delta` rows, within `0..=len - page`.
    fn by(&mut self, delta: isize, len: usize) {
        let max = len.saturating_sub(self.page.max(1));
        self.offset = self.offset.saturating_add_signed(delta).min(max);
    }

    /// Pulls the offset back after the table shrank or the pane grew, so
    /// the last page stays full; called by the view with the room it has.
    pub fn fit(&mut self, len: usize, page: usize) {
        self.page = page;
        self.offset = self.offset.min(len.saturating_sub(page));
    }
}

/// Node counters at one instant, to turn the next into per-second rates.
#[derive(Debug, Clone, Copy)]
pub struct NodeSample {
    /// When the round that carried them finished.
    pub at: Instant,
    /// The counters, summed over CPUs.
    pub counters: NodeCounters,
}

/// Everything the view draws.
#[derive(Debug, Default)]
pub struct App {
    /// The `tc-agent` version of this CLI: the agent reports none, and the
    /// two ship as one binary.
    pub version: &'static str,
    /// Milliseconds between rounds, for the header.
    pub interval_ms: u64,
    /// The last `status` the agent answered (kept when a round fails, so
    /// the header does not blank out while the agent restarts).
    pub status: Option<StatusReport>,
    /// The last `channels` the agent answered; kept like `status`.
    pub channels: Option<ChannelsReport>,
    /// The last `map` the agent answered; kept like `status`, so an agent
    /// that fails now and then does not make the pane flicker.
    pub map: Option<MapReport>,
    /// Why the last round got no channels (the agent unreachable, or
    /// failing): shown in the header until a round succeeds.
    pub agent_error: Option<String>,
    /// Why the last round got no map (e.g. an agent that does not serve
    /// it yet): one line at the top of the interactions pane.
    pub map_error: Option<String>,
    /// The agent's events as the rounds told them (every event, then the
    /// changes), oldest start first; kept like `map` when a round fails.
    pub events: Vec<Event>,
    /// Why the last round got no events: one line in the events pane.
    pub events_error: Option<String>,
    /// When the last round with channels arrived: the header says how old
    /// the numbers are.
    pub updated: Option<Instant>,
    /// The round before the last one's node counters, and the last one's:
    /// the events pane's per-second rates come from the two.
    pub node_samples: (Option<NodeSample>, Option<NodeSample>),
    /// Order of the channels table.
    pub sort: Sort,
    /// The pane arrows and PgUp/PgDn scroll; Tab switches.
    pub focus: Focus,
    /// The channels table's scroll position.
    pub channels_scroll: Scroll,
    /// The interactions table's scroll position.
    pub interactions_scroll: Scroll,
}

impl App {
    /// An empty view: "waiting for the agent" until the first round.
    pub fn new(interval_ms: u64) -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION"),
            interval_ms,
            ..Self::default()
        }
    }

    /// Takes in one round of reports.
    pub fn apply(&mut self, round: Round) {
        match round.channels {
            Ok(c) => {
                let sample = NodeSample {
                    at: round.at,
                    counters: c.node,
                };
                self.node_samples = (self.node_samples.1.take(), Some(sample));
                self.channels = Some(c);
                self.agent_error = None;
                self.updated = Some(round.at);
            }
            Err(e) => self.agent_error = Some(e),
        }
        if let Ok(s) = round.status {
            self.status = Some(s);
        }
        // An unreachable agent is said once, in the header; the map's
        // notice is for an agent that answers but not with a map.
        if self.agent_error.is_none() {
            match round.map {
                Ok(m) => {
                    self.map = Some(m);
                    self.map_error = None;
                }
                Err(e) => self.map_error = Some(e),
            }
            match round.events {
                Ok(d) => {
                    self.take_events(d);
                    self.events_error = None;
                }
                Err(e) => self.events_error = Some(e),
            }
        }
    }

    /// Takes in one round's events: all of them, or the changes.
    fn take_events(&mut self, d: EventsDelta) {
        if d.full {
            self.events = d.events;
            return;
        }
        for e in d.events {
            match self.events.iter_mut().find(|k| k.id == e.id) {
                Some(k) => *k = e,
                None => self.events.push(e),
            }
        }
        // As bounded as the agent's log: the oldest go first.
        let excess = self.events.len().saturating_sub(MAX_EVENTS);
        self.events.drain(..excess);
    }

    /// The channels in the chosen order.
    pub fn sorted_channels(&self) -> Vec<&ChannelRow> {
        let mut rows: Vec<&ChannelRow> = self
            .channels
            .as_ref()
            .map(|c| c.channels.iter().collect())
            .unwrap_or_default();
        match self.sort {
            Sort::Policy => {}
            Sort::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
            Sort::Rate => rows.sort_by(|a, b| {
                let busy = |c: &ChannelRow| {
                    c.rates.passed_bps + c.rates.dropped_bps + c.rates.would_drop_bps
                };
                busy(b)
                    .total_cmp(&busy(a))
                    .then_with(|| a.name.cmp(&b.name))
            }),
        }
        rows
    }

    /// Rows in the interactions table (0 without a map).
    pub fn interaction_count(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.interactions.len())
    }

    /// Acts on one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Step {
        // Terminals that report releases too would act twice per key.
        if key.kind == KeyEventKind::Release {
            return Step::Continue;
        }
        let (len, scroll) = match self.focus {
            Focus::Channels => (
                self.channels.as_ref().map_or(0, |c| c.channels.len()),
                &mut self.channels_scroll,
            ),
            Focus::Interactions => (
                self.map.as_ref().map_or(0, |m| m.interactions.len()),
                &mut self.interactions_scroll,
            ),
        };
        let page = scroll.page.max(1) as isize;
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Step::Quit,
            // Raw mode turns Ctrl-C into a key: it must still quit.
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                return Step::Quit
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.channels_scroll.offset = 0;
            }
            KeyCode::Tab | KeyCode::BackTab => {
                self.focus = match self.focus {
                    Focus::Channels => Focus::Interactions,
                    Focus::Interactions => Focus::Channels,
                }
            }
            KeyCode::Up | KeyCode::Char('k') => scroll.by(-1, len),
            KeyCode::Down | KeyCode::Char('j') => scroll.by(1, len),
            KeyCode::PageUp => scroll.by(-page, len),
            KeyCode::PageDown => scroll.by(page, len),
            KeyCode::Home => scroll.offset = 0,
            KeyCode::End => scroll.by(isize::MAX, len),
            _ => {}
        }
        Step::Continue
    }
}
