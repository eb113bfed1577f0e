//! `top`'s poller: one thread that asks the agent for its reports every
//! interval and hands each round to the UI over a channel.
//!
//! Events come by cursor: the first round asks for every event, later
//! ones for what changed since the last answer; a failed round, or a new
//! agent pid (ids and cursors are per agent run), starts over with every
//! event.
//!
//! Requests block (a Unix socket, up to the control client's read
//! timeout), so they never run on the thread that reads keys and draws: a
//! slow or stuck agent leaves the view answering keys and showing how old
//! its data is. The thread is detached; it ends at its next send after the
//! UI has gone (the receiver dropped), or with the process.

use std::{
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, Sender},
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::de::DeserializeOwned;

use crate::{
    control::{request, ChannelsReport, EventsReport, MapReport, Request, StatusReport},
    detect::Event,
};

/// One round of requests: each report, or the error the agent (or the
/// socket) gave instead, as one line.
#[derive(Debug, Clone)]
pub struct Round {
    /// When the round finished: the view shows how old its data is.
    pub at: Instant,
    /// `status`: the header's pid, uptime and policy file.
    pub status: Result<StatusReport, String>,
    /// `channels`: the channels table and the node counters.
    pub channels: Result<ChannelsReport, String>,
    /// `map`: the interactions table. An agent that does not serve it yet
    /// answers with an error, which the view shows as a one-line notice.
    pub map: Result<MapReport, String>,
    /// `events`: what changed since the last round, or everything.
    pub events: Result<EventsDelta, String>,
}

/// The events of one round.
#[derive(Debug, Clone, Default)]
pub struct EventsDelta {
    /// True: `events` is every event the agent keeps, and replaces what
    /// the view had. False: each event started or ended since the last
    /// round, as it is now.
    pub full: bool,
    /// The events, oldest change first.
    pub events: Vec<Event>,
}

/// What the poller remembers between rounds: where it is in the agent's
/// events.
#[derive(Debug, Default)]
pub struct Poller {
    /// The cursor of the last events answer; None: ask for every event.
    cursor: Option<u64>,
    /// The agent's pid in the last round: another pid is another run, whose
    /// cursors and ids start again.
    pid: Option<u32>,
}

impl Poller {
    /// Asks the agent at `socket` for everything the view shows, in one
    /// round. When the agent cannot be reached, the other requests are not
    /// tried: they would only repeat the same error.
    pub fn fetch(&mut self, socket: &Path) -> Round {
        let channels = ask::<ChannelsReport>(socket, &Request::Channels);
        let (status, map, events) = match &channels {
            Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone())),
            Ok(_) => {
                let status = ask::<StatusReport>(socket, &Request::Status);
                let map = ask::<MapReport>(socket, &Request::Map);
                let pid = status.as_ref().ok().map(|s| s.pid);
                if pid != self.pid {
                    self.cursor = None;
                    self.pid = pid;
                }
                (status, map, self.events(socket))
            }
        };
        if events.is_err() {
            self.cursor = None;
        }
        Round {
            at: Instant::now(),
            status,
            channels,
            map,
            events,
        }
    }

    /// The events since the last cursor, or all of them.
    fn events(&mut self, socket: &Path) -> Result<EventsDelta, String> {
        let since = self.cursor;
        let r = ask::<EventsReport>(socket, &Request::Events { since })?;
        self.cursor = Some(r.cursor);
        Ok(EventsDelta {
            full: since.is_none(),
            events: r.events,
        })
    }
}

/// One request, decoded, with any error flattened to one line (the whole
/// context chain: "cannot reach the agent at ...: Connection refused").
fn ask<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, String> {
    let decode = |v| serde_json::from_value::<T>(v).map_err(anyhow::Error::from);
    request(socket, req)
        .and_then(decode)
        .map_err(|e| format!("{e:#}").replace('\n', " "))
}

/// Starts the poller thread: a round at once, then one every `interval`
/// (measured from the start of the previous round; a round that took
/// longer is followed by the next at once).
pub fn spawn(socket: PathBuf, interval: Duration) -> Result<Receiver<Round>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("top-poller".into())
        .spawn(move || poll_loop(&socket, interval, &tx))?;
    Ok(rx)
}

fn poll_loop(socket: &Path, interval: Duration, tx: &Sender<Round>) {
    let mut poller = Poller::default();
    loop {
        let started = Instant::now();
        if tx.send(poller.fetch(socket)).is_err() {
            return;
        }
        if let Some(rest) = interval.checked_sub(started.elapsed()) {
            thread::sleep(rest);
        }
    }
}
