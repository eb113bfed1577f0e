//! `tc-agent events`: what the agent's detectors found, and, with
//! `--follow`, every start, change and end as it happens.

use std::{
    io::Write,
    os::fd::AsFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::poll::{poll, PollFd, PollFlags};

use super::Output;
use crate::{
    control::{request, EventsReport, Request},
    detect::Event,
};

/// Time between two polls of the agent with `--follow`: an event shows
/// within half a second of the sample that opened it.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Width of the FROM -> TO column; longer lists end in `+N`.
const FLOW_WIDTH: usize = 44;

/// The events the agent's detectors opened since it started (the last
/// 1,000): one row per event, oldest first.
///
/// Every sample (a second), the agent compares each interaction's, each
/// channel's and each destination's traffic with its own recent baseline
/// and opens an event when it leaves it in one of three patterns:
///
/// - `spike`: an interaction's (FROM -> TO) or a channel's request rate far
///   above its baseline;
///
/// - `upstream_collapse`: demand into a destination rises while its
///   responses stop keeping up (fewer responses per request, unanswered
///   SYNs, slower handshakes, resets); FROM names the clients that drive
///   the demand;
///
/// - `dos`: traffic to a destination rises sharply and a few sources carry
///   most of it (FROM names them; the summary gives their shares and the
///   number of distinct sources).
///
/// An event ends when its series has been back near its baseline for a
/// while: one event per episode. Ids (`dos-3`) count from 1 in each agent
/// run; `tc-agent suggest ID` writes the policy that answers one.
///
/// Examples: `tc-agent events`; `tc-agent events --follow -o json | jq
/// 'select(.kind == "dos" and .ended == null)'`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep running: print the events there are, then every change as it
    /// happens (an event's start, again when an open `dos` names sources
    /// that took over, and its end again with `ended` set),
    /// polling the agent twice a second, until interrupted (Ctrl-C,
    /// SIGTERM, or the reader of a pipe going away). An agent that stops
    /// or restarts ends it with an error.
    #[arg(short, long)]
    pub follow: bool,

    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract: `{"events": [{"id", "kind", "started",
    /// "ended", "from", "to", "summary", "evidence"}], "cursor", "run"}`, times in
    /// unix seconds, `ended` null while the event lasts). With `--follow`,
    /// JSON Lines: one event object per line, each time it starts, changes
    /// or ends.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: EventsArgs, socket: &Path) -> Result<()> {
    if args.follow {
        return follow(socket, args.output);
    }
    let data = request(socket, &Request::Events { since: None })?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: EventsReport = serde_json::from_value(data)?;
    print!("{}", render(&r.events, crate::clock::unix_secs()));
    Ok(())
}

/// `--follow`: the events there are, then each change, until a signal.
fn follow(socket: &Path, output: Output) -> Result<()> {
    // SIGINT and SIGTERM set the flag: the loop ends within a tenth of a
    // second and the process exits 0. So does the reader of a pipe going
    // away (`| head -3`): a write would meet SIGPIPE (restored to its
    // default in `main`), but with no event to write the loop would never
    // learn it, so it asks the pipe itself.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("handling signal {sig}"))?;
    }
    let done = || stop.load(Ordering::Relaxed) || reader_gone();
    let ask = |since| -> Result<EventsReport> {
        let data = request(socket, &Request::Events { since })?;
        Ok(serde_json::from_value(data)?)
    };
    let first = ask(None)?;
    let mut out = std::io::stdout().lock();
    if output == Output::Text {
        write!(out, "{}", header())?;
    }
    print_events(&mut out, &first.events, output)?;
    let mut cursor = first.cursor;
    while !done() {
        // Sleep in short steps so a signal ends the loop promptly.
        let mut slept = Duration::ZERO;
        while slept < FOLLOW_EVERY && !done() {
            std::thread::sleep(Duration::from_millis(100));
            slept += Duration::from_millis(100);
        }
        if done() {
            break;
        }
        let r = ask(Some(cursor))
            .context("the agent stopped answering while `events --follow` watched it")?;
        if r.run != first.run {
            bail!(
                "the agent restarted while `events --follow` watched it: event ids and cursors are per agent run; follow again"
            );
        }
        print_events(&mut out, &r.events, output)?;
        cursor = r.cursor;
    }
    Ok(())
}

/// Whether standard output's reader has gone: a pipe whose reading end
/// closed (or a terminal that hung up) reports an error or a hang-up.
fn reader_gone() -> bool {
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, 0u8), Ok(1..))
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Writes events as table rows or JSON Lines, flushed at once so a reader
/// at the other end of a pipe sees each as it happens.
fn print_events(out: &mut impl Write, events: &[Event], output: Output) -> Result<()> {
    let now = crate::clock::unix_secs();
    for e in events {
        match output {
            Output::Json => writeln!(out, "{}", serde_json::to_string(e)?)?,
            Output::Text => write!(out, "{}", row(e, now))?,
        }
    }
    out.flush()?;
    Ok(())
}

/// The text table, also used by the demo: `now` is unix seconds, for the
/// duration of ongoing events.
pub fn render(events: &[Event], now: u64) -> String {
    let mut out = header();
    if events.is_empty() {
        out.push_str("(no events since the agent started)\n");
    }
    for e in events {
        out.push_str(&row(e, now));
    }
    out
}

/// The table's header line.
fn header() -> String {
    format!(
        "{:<20} {:<17} {:<9} {:<19} {:<FLOW_WIDTH$} SUMMARY\n",
        "ID", "KIND", "STARTED", "ENDED", "FROM -> TO"
    )
}

/// One event as a table row.
fn row(e: &Event, now: u64) -> String {
    let ended = match e.ended {
        Some(t) => format!("{} ({})", clock(t), duration(t.saturating_sub(e.started))),
        None => format!("ongoing ({})", duration(now.saturating_sub(e.started))),
    };
    format!(
        "{:<20} {:<17} {:<9} {:<19} {:<FLOW_WIDTH$} {}\n",
        e.id,
        e.kind.as_str(),
        clock(e.started),
        ended,
        flow(e, FLOW_WIDTH),
        e.summary
    )
}

/// An event's sources and destinations as `FROM -> TO`, each side cut to
/// half of `width` (see [`names`]); a channel's event, which has neither,
/// as `channel NAME`.
pub fn flow(e: &Event, width: usize) -> String {
    if e.from.is_empty() && e.to.is_empty() {
        if let Some(c) = e.evidence.get("channel").and_then(|c| c.as_str()) {
            return format!("channel {c}");
        }
    }
    format!(
        "{} -> {}",
        names(&e.from, width / 2),
        names(&e.to, width / 2)
    )
}

/// Unix seconds as the UTC time of day, `21:40:12Z`.
pub fn clock(t: u64) -> String {
    format!("{:02}:{:02}:{:02}Z", t / 3600 % 24, t / 60 % 60, t % 60)
}

/// Seconds as `42s`, `3m20s`, `2h05m`, `3d04h`.
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// A list of names, comma-separated, as many as fit in `width` characters
/// and then `+N` for the rest; `-` for none.
pub fn names(list: &[String], width: usize) -> String {
    if list.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, n) in list.iter().enumerate() {
        let rest = list.len() - i - 1;
        let more = if rest > 0 {
            format!(",+{rest}")
        } else {
            String::new()
        };
        let sep = if out.is_empty() { "" } else { "," };
        // The first name always shows, whole: a cut address is another one.
        if !out.is_empty() && out.len() + sep.len() + n.len() + more.len() > width {
            out.push_str(&format!(",+{}", list.len() - i));
            return out;
        }
        out.push_str(sep);
        out.push_str(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::EventKind;

    fn event(id: &str, kind: EventKind, ended: Option<u64>, from: &[&str]) -> Event {
        Event {
            id: id.into(),
            kind,
            started: 1_764_366_012,
            ended,
            from: from.iter().map(|s| s.to_string()).collect(),
            to: vec!["web".into()],
            summary: "web: 3 sources carry 96% of 41.2 Mbit/s (baseline 0.5 Mbit/s)".into(),
            evidence: Default::default(),
        }
    }

    #[test]
    fn rows_show_kind_times_flow_and_summary() {
        let events = [
            event(
                "dos-1",
                EventKind::Dos,
                Some(1_764_366_012 + 200),
                &["198.18.0.7", "198.18.0.9", "198.18.0.11"],
            ),
            event("spike-2", EventKind::Spike, None, &["clients"]),
        ];
        let t = render(&events, 1_764_366_012 + 75);
        let mut lines = t.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("ID "), "{t}");
        let dos = lines.next().unwrap();
        assert!(dos.starts_with("dos-1 "), "{t}");
        assert!(dos.contains(" dos "), "{t}");
        // 1764366012 is 21:40:12 UTC.
        assert!(dos.contains("21:40:12Z"), "{t}");
        assert!(dos.contains("21:43:32Z (3m20s)"), "{t}");
        assert!(
            dos.contains("198.18.0.7,+2 -> web"),
            "the sources that do not fit are counted: {t}"
        );
        assert!(dos.ends_with("(baseline 0.5 Mbit/s)"), "{t}");
        let spike = lines.next().unwrap();
        assert!(spike.contains("ongoing (1m15s)"), "{t}");
        assert!(spike.contains("clients -> web"), "{t}");
        // Columns line up: SUMMARY starts at the same place on every line.
        let col = header.find("SUMMARY").unwrap();
        assert_eq!(&dos[col..col + 4], "web:", "{t}");
        assert_eq!(&spike[col..col + 4], "web:", "{t}");
    }

    #[test]
    fn a_channels_event_names_the_channel() {
        let mut e = event("spike-4", EventKind::Spike, None, &[]);
        e.to.clear();
        e.evidence.insert("channel".into(), "udp-in".into());
        assert_eq!(flow(&e, FLOW_WIDTH), "channel udp-in");
        e.evidence.clear();
        assert_eq!(flow(&e, FLOW_WIDTH), "- -> -");
    }

    #[test]
    fn no_events_says_so() {
        assert!(render(&[], 0).contains("(no events since the agent started)"));
    }

    #[test]
    fn names_fit_their_width_and_count_the_rest() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&[], 10), "-");
        assert_eq!(names(&l(&["a", "b"]), 10), "a,b");
        assert_eq!(names(&l(&["aaaa", "bbbb", "cccc"]), 10), "aaaa,+2");
        assert_eq!(
            names(&l(&["a-very-long-set-name"]), 5),
            "a-very-long-set-name"
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(200), "3m20s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn follow_json_is_one_event_per_line() {
        let mut out = Vec::new();
        let events = [
            event("dos-1", EventKind::Dos, None, &["198.18.0.7"]),
            event(
                "dos-1",
                EventKind::Dos,
                Some(1_764_366_100),
                &["198.18.0.7"],
            ),
        ];
        print_events(&mut out, &events, Output::Json).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(first["id"], "dos-1");
        assert!(first["ended"].is_null());
        assert_eq!(second["ended"], 1_764_366_100);
    }
}
