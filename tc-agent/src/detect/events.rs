//! Events: what a detector found, as `tc-agent events` shows it (the JSON
//! field names are a contract for scripts), and the bounded log that keeps
//! them with a cursor for `events --follow`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Events the log keeps: when full, the oldest ended one is forgotten
/// first; an open one only when all are open (with a warning).
pub const MAX_EVENTS: usize = 1000;

/// Which pattern an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A request rate far above its own baseline.
    Spike,
    /// Demand into a destination rising while its responses stop keeping up.
    UpstreamCollapse,
    /// Traffic to a destination rising sharply, carried by a few sources or
    /// a crowd of new ones.
    Dos,
}

impl EventKind {
    /// Every kind, for counters that show zeros too.
    pub const ALL: [EventKind; 3] = [
        EventKind::Spike,
        EventKind::UpstreamCollapse,
        EventKind::Dos,
    ];

    /// The name in JSON, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Spike => "spike",
            EventKind::UpstreamCollapse => "upstream_collapse",
            EventKind::Dos => "dos",
        }
    }
}

/// One episode a detector found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique while the agent runs (`dos-3`): what `suggest` takes.
    pub id: String,
    /// The pattern.
    pub kind: EventKind,
    /// Unix seconds of the sample that opened it.
    pub started: u64,
    /// Unix seconds of the sample that closed it; `null` while it lasts.
    pub ended: Option<u64>,
    /// The sources that drive it: addresses or endpoint sets; `other` for
    /// the sources too small to be tracked one by one (a crowd of them).
    /// For a channel's spike, the endpoint sets (or CIDRs) the channel
    /// holds traffic from, as the live policy states them (empty when the
    /// channel matches any source). A `dos` that is still open adds the
    /// sources that take over ([`Change::Updated`]), at most
    /// [`MAX_FROM`](super::dos::MAX_FROM) by name.
    pub from: Vec<String>,
    /// The destinations it concerns: endpoint sets or addresses. For a
    /// channel's spike, the channel's destination sets (or CIDRs), empty
    /// when it matches any destination.
    pub to: Vec<String>,
    /// One line a person reads, with the numbers.
    pub summary: String,
    /// The numbers behind it: always `baseline` and `now` (of the metric
    /// named by `metric`), plus what the pattern adds.
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

/// What a detector reports about one episode in one sample. The log gives
/// new events their ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A new episode: `key` is the detector's own name for what it watches
    /// (unique per kind), so that it can end it later.
    Started { key: String, event: Event },
    /// The episode of `key`, still open, changed what it names (a flood
    /// that switched sources): `event` replaces its `from`, `summary` and
    /// `evidence` (its id, kind and start stay).
    Updated { key: String, event: Event },
    /// The episode of `key` is over at `t` (unix seconds).
    Ended { key: String, t: u64 },
}

/// A change the log recorded: the event as it is now.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new event, with its id.
    Started(Event),
    /// An open event changed what it names; `events --since` returns it
    /// again.
    Updated(Event),
    /// An event ended: `ended` is set.
    Ended(Event),
}

/// The events since the agent started, at most [`MAX_EVENTS`].
#[derive(Debug, Default)]
pub struct EventLog {
    /// Oldest first, with the version of their last change and their
    /// detector key.
    events: VecDeque<(u64, String, Event)>,
    /// Events opened so far, for ids.
    opened: u64,
    /// Events opened so far by kind ([`EventKind`] as index), for the
    /// Prometheus counter: counted at open time, so forgetting old events
    /// keeps it monotonic.
    opened_kind: [u64; 3],
    /// Changes so far: `events --follow` asks for what changed after the
    /// version it last saw.
    version: u64,
}

impl EventLog {
    /// Records what the detectors found; returns the changes.
    pub fn apply(&mut self, found: Vec<Found>) -> Vec<Change> {
        let mut changes = Vec::new();
        for f in found {
            match f {
                Found::Started { key, mut event } => {
                    self.opened += 1;
                    self.opened_kind[event.kind as usize] += 1;
                    self.version += 1;
                    event.id = format!("{}-{}", event.kind.as_str(), self.opened);
                    event.ended = None;
                    changes.push(Change::Started(event.clone()));
                    self.events.push_back((self.version, key, event));
                    self.evict();
                }
                Found::Updated { key, event } => {
                    let version = self.version + 1;
                    if let Some((v, _, e)) = self
                        .events
                        .iter_mut()
                        .rev()
                        .find(|(_, k, e)| *k == key && e.ended.is_none())
                    {
                        self.version = version;
                        *v = version;
                        e.from = event.from;
                        e.to = event.to;
                        e.summary = event.summary;
                        e.evidence = event.evidence;
                        changes.push(Change::Updated(e.clone()));
                    }
                }
                Found::Ended { key, t } => {
                    let version = self.version + 1;
                    if let Some((v, _, e)) = self
                        .events
                        .iter_mut()
                        .rev()
                        .find(|(_, k, e)| *k == key && e.ended.is_none())
                    {
                        self.version = version;
                        *v = version;
                        e.ended = Some(t);
                        changes.push(Change::Ended(e.clone()));
                    }
                }
            }
        }
        changes
    }

    /// Keeps at most [`MAX_EVENTS`]: the oldest ended event goes first (an
    /// open one is still news, and its end must find it); an open one only
    /// when every event kept is open.
    fn evict(&mut self) {
        while self.events.len() > MAX_EVENTS {
            match self.events.iter().position(|(_, _, e)| e.ended.is_some()) {
                Some(i) => {
                    self.events.remove(i);
                }
                None => {
                    if let Some((_, _, e)) = self.events.pop_front() {
                        warn!(
                            id = %e.id,
                            kept = MAX_EVENTS,
                            "every event kept is open: forgot the oldest open one (its end will not be logged)"
                        );
                    }
                }
            }
        }
    }

    /// Events still open by kind, for the Prometheus gauge and `top`.
    pub fn open_by_kind(&self) -> [(EventKind, u64); 3] {
        let mut out = EventKind::ALL.map(|k| (k, 0));
        for e in self.all().filter(|e| e.ended.is_none()) {
            out[e.kind as usize].1 += 1;
        }
        out
    }

    /// Every event kept, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().map(|(_, _, e)| e)
    }

    /// Events that started, changed or ended after `version`, oldest change first,
    /// and the version to ask from next time.
    pub fn since(&self, version: u64) -> (Vec<Event>, u64) {
        let mut changed: Vec<&(u64, String, Event)> = self
            .events
            .iter()
            .filter(|(v, _, _)| *v > version)
            .collect();
        changed.sort_by_key(|(v, _, _)| *v);
        (
            changed.into_iter().map(|(_, _, e)| e.clone()).collect(),
            self.version,
        )
    }

    /// The event with this id.
    pub fn get(&self, id: &str) -> Option<&Event> {
        self.all().find(|e| e.id == id)
    }

    /// Events opened so far by kind, for the Prometheus counter (forgotten
    /// events included).
    pub fn opened_by_kind(&self) -> [(EventKind, u64); 3] {
        let mut out = EventKind::ALL.map(|k| (k, 0));
        for (k, n) in out.iter_mut() {
            *n = self.opened_kind[*k as usize];
        }
        out
    }
}
