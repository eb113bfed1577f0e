//! The agent's side of detecting: `events` and `suggest` are answered from
//! the observer alone (its detector's event log, its history and its copy
//! of the live policy), never behind the agent lock, like `map`.

use super::*;
use crate::{
    control::{EventsReport, SuggestReport},
    detect::{
        suggest::{suggest_from as suggest_policy, Window},
        Event, EventLog,
    },
    observe::Observer,
};

/// Longest id echoed back in an error: a hostile client's megabyte of id
/// is not worth repeating.
const MAX_ECHOED_ID: usize = 64;

/// This agent run's identity for [`EventsReport::run`]: the process id
/// and the time the first report was asked for (nanoseconds), which a
/// restarted agent cannot repeat.
fn run_id() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let ns = crate::clock::unix_ns();
        format!("{}-{ns}", std::process::id())
    })
}

/// `events`: every event kept, or what changed after `since`.
pub(super) fn events(obs: &Mutex<Observer>, since: Option<u64>) -> Result<EventsReport> {
    events_of(obs.lock().detector.log(), since)
}

/// `events` from one log.
fn events_of(log: &EventLog, since: Option<u64>) -> Result<EventsReport> {
    // The log's version: the cursor of an answer that holds everything.
    let (_, now) = log.since(u64::MAX);
    match since {
        None => Ok(EventsReport {
            events: log.all().cloned().collect(),
            cursor: now,
            run: run_id().to_string(),
        }),
        Some(c) if c > now => bail!(
            "cursor {c} is ahead of this agent's events (at {now}): the agent restarted since the cursor was given (ids and cursors are per agent run); ask again without a cursor"
        ),
        Some(c) => {
            let (events, cursor) = log.since(c);
            Ok(EventsReport {
                events,
                cursor,
                run: run_id().to_string(),
            })
        }
    }
}

/// `suggest`: the live policy plus a channel that holds the event's
/// sources to their baseline, in `mode`.
///
/// Under the observer's lock only what the suggestion reads is taken (the
/// event, the live policy's `Arc`, a copy of the history series it may
/// read, still encoded); decoding them, the render, the parse and the
/// compile (up to hundreds of milliseconds on a large policy) run after it
/// is released, so the sampler, `/metrics`,
/// `map` and `events` do not wait for them.
pub(super) fn suggest(obs: &Mutex<Observer>, id: &str, mode: Mode) -> Result<SuggestReport> {
    let (event, policy, window) = {
        let obs = obs.lock();
        let event = find(obs.detector.log(), id)?.clone();
        let window = Window::take(&event, &obs.policy, &obs.history);
        (event, Arc::clone(&obs.policy), window)
    };
    build(event, &policy, &window, mode)
}

/// `suggest` from one log, policy and history.
#[cfg(test)]
fn suggest_of(
    log: &EventLog,
    policy: &Policy,
    history: &crate::observe::history::History,
    id: &str,
    mode: Mode,
) -> Result<SuggestReport> {
    let event = find(log, id)?;
    build(
        event.clone(),
        policy,
        &Window::take(event, policy, history),
        mode,
    )
}

/// The suggestion for `event`, from what was taken under the lock.
fn build(event: Event, policy: &Policy, window: &Window, mode: Mode) -> Result<SuggestReport> {
    let text = suggest_policy(&event, policy, window, mode)
        .with_context(|| format!("cannot suggest a policy for {}", event.id))?;
    Ok(SuggestReport {
        id: event.id.clone(),
        mode,
        policy: text,
        event,
    })
}

/// The event `id` of `log`, or why there is none.
fn find<'l>(log: &'l EventLog, id: &str) -> Result<&'l Event> {
    let Some(event) = log.get(id) else {
        if id.len() > MAX_ECHOED_ID || id.chars().any(char::is_control) {
            bail!(
                "no event with that id ({} bytes): ids look like `dos-3`; see `tc-agent events`",
                id.len()
            );
        }
        bail!("no event {id}: ids are per agent run; see `tc-agent events`");
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        detect::{EventKind, Found},
        observe::history::History,
    };

    fn event(kind: EventKind, t: u64, from: &[&str], to: &str) -> Event {
        let mut evidence = serde_json::Map::new();
        evidence.insert("baseline".into(), 100.0.into());
        evidence.insert("now".into(), 8000.0.into());
        Event {
            id: String::new(),
            kind,
            started: t,
            ended: None,
            from: from.iter().map(|s| s.to_string()).collect(),
            to: vec![to.into()],
            summary: format!("{to}: 80x its baseline"),
            evidence,
        }
    }

    fn started(key: &str, e: Event) -> Found {
        Found::Started {
            key: key.into(),
            event: e,
        }
    }

    /// A log with a DoS that ended and a spike still open.
    fn log() -> EventLog {
        let mut log = EventLog::default();
        log.apply(vec![started(
            "web",
            event(EventKind::Dos, 1000, &["198.18.0.7", "198.18.0.9"], "web"),
        )]);
        log.apply(vec![started(
            "clients->api",
            event(EventKind::Spike, 1010, &["clients"], "api"),
        )]);
        log.apply(vec![Found::Ended {
            key: "web".into(),
            t: 1030,
        }]);
        log
    }

    #[test]
    fn events_without_a_cursor_are_every_event_in_start_order() {
        let r = events_of(&log(), None).unwrap();
        let ids: Vec<&str> = r.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["dos-1", "spike-2"]);
        assert_eq!(r.events[0].ended, Some(1030));
        assert_eq!(r.events[1].ended, None);
        assert_eq!(r.cursor, 3, "two starts and an end");
    }

    #[test]
    fn events_since_a_cursor_are_the_changes_after_it() {
        let mut log = log();
        let r = events_of(&log, Some(1)).unwrap();
        // The spike started after 1; the DoS ended after it.
        let ids: Vec<&str> = r.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["spike-2", "dos-1"]);
        assert_eq!(r.cursor, 3);
        // Nothing new: nothing, and the same cursor.
        let r = events_of(&log, Some(3)).unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.cursor, 3);
        // The spike ends: it comes again, with its end.
        log.apply(vec![Found::Ended {
            key: "clients->api".into(),
            t: 1040,
        }]);
        let r = events_of(&log, Some(3)).unwrap();
        assert_eq!(r.events.len(), 1);
        assert_eq!(r.events[0].id, "spike-2");
        assert_eq!(r.events[0].ended, Some(1040));
        assert_eq!(r.cursor, 4);
    }

    #[test]
    fn a_cursor_from_the_future_is_refused() {
        let e = events_of(&log(), Some(99)).unwrap_err().to_string();
        assert!(e.contains("cursor 99 is ahead"), "{e}");
        assert!(e.contains("without a cursor"), "{e}");
    }

    #[test]
    fn events_json_has_the_contracts_field_names() {
        let r = events_of(&log(), None).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cursor"], 3);
        let e = &v["events"][0];
        for field in [
            "id", "kind", "started", "ended", "from", "to", "summary", "evidence",
        ] {
            assert!(e.get(field).is_some(), "no {field} in {e}");
        }
        assert_eq!(e["kind"], "dos");
        assert_eq!(e["from"][1], "198.18.0.9");
        assert_eq!(e["evidence"]["baseline"], 100.0);
        assert!(v["events"][1]["ended"].is_null(), "{v}");
        assert_eq!(v["events"][1]["kind"], "spike");
    }

    #[test]
    fn suggest_for_an_unknown_id_says_ids_are_per_run() {
        let (policy, history) = (Policy::default(), History::new());
        let e = suggest_of(&log(), &policy, &history, "dos-9", Mode::Enforce)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no event dos-9: ids are per agent run; see `tc-agent events`"
        );
        let long = "x".repeat(10_000);
        let e = suggest_of(&log(), &policy, &history, &long, Mode::Enforce)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10000 bytes"), "{e}");
        assert!(e.len() < 200, "the id was echoed: {} bytes", e.len());
        let e = suggest_of(&log(), &policy, &history, "dos-1\n\x1b[2J", Mode::Enforce)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\x1b'), "{e:?}");
    }

    #[test]
    fn suggest_for_a_known_id_writes_a_policy_that_parses() {
        let policy = Policy::parse(
            "endpoints:\n  web: [198.18.0.2/32]\nchannels:\n  - name: udp-in\n    to: [web]\n    protocol: udp\n    limit:\n      bandwidth: 1Gbit\n    mode: monitor\n",
            "live.yaml",
        )
        .unwrap();
        let r = suggest_of(&log(), &policy, &History::new(), "dos-1", Mode::Monitor).unwrap();
        assert_eq!(r.id, "dos-1");
        assert_eq!(r.mode, Mode::Monitor);
        assert_eq!(r.event.kind, EventKind::Dos);
        assert!(r.policy.contains("198.18.0.7"), "{}", r.policy);
        let p = Policy::parse(&r.policy, "suggested.yaml").unwrap();
        assert!(p.channels.len() > policy.channels.len(), "{}", r.policy);
        assert!(
            p.channels.iter().any(|c| c.mode == Mode::Monitor),
            "{}",
            r.policy
        );
        // The live channel is still there, after the new one.
        assert_eq!(p.channels.last().unwrap().name, "udp-in");
        // A policy the suggestion cannot build on: the suggester's reason,
        // under the event's id.
        let e = suggest_of(
            &log(),
            &Policy::default(),
            &History::new(),
            "dos-1",
            Mode::Enforce,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").starts_with("cannot suggest a policy for dos-1: "),
            "{e:#}"
        );
    }
}
