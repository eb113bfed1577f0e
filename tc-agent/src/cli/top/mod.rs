//! `tc-agent top`: a live terminal view of channels, interactions and the
//! node's counters.
//!
//! - `poll`: a thread that asks the agent for `channels`, `status`, `map`
//!   and `events` every interval, so a slow agent never freezes the keys;
//! - `app`: the state (last reports, errors, sort, focus, scroll) and keys;
//! - `view`: the frame drawn from that state; `events` and `node`: its
//!   bottom panes.
//!
//! The terminal is restored on every way out: `q`, Esc, Ctrl-C, SIGTERM,
//! SIGHUP, SIGINT, an error, a panic.

mod app;
mod events;
mod node;
mod poll;
mod view;

#[cfg(test)]
mod tests;

use std::{
    io::{stdout, IsTerminal},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;
use ratatui::{
    backend::TestBackend,
    crossterm::{
        cursor::Show,
        event::{self, Event},
        execute,
        terminal::{disable_raw_mode, LeaveAlternateScreen},
    },
    Terminal,
};

use self::app::{App, Step};

/// Live view of the agent, refreshed every interval: the channels with
/// their limits and live rates (passed and dropped, bits and packets per
/// second; open connections against the limit and refusals per second for
/// channels with connection limits), the interactions the agent's map
/// reports (who talks to whom, request and response rates, new connections
/// and handshake time), the events the agent's detectors found (open ones
/// first, then the last that ended: kind, sources -> destinations, the
/// summary and how long ago; `tc-agent events` lists them all), and the
/// node-wide counters (unclassified, non-IP, malformed, fail-open
/// packets).
///
/// Keys: `q`, Esc or Ctrl-C quit; `s` orders the channels by policy order,
/// name or rate; Tab switches the pane the arrows, PgUp/PgDn and Home/End
/// scroll. In monitor mode a channel's DROP column is what it would have
/// dropped, marked `*`.
///
/// An agent that is unreachable, or does not serve a report, is shown as
/// such in the view, which keeps the last numbers it had and retries every
/// interval. Read-only: it needs the socket access `channels` needs.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Milliseconds between two rounds of requests to the agent (200 to
    /// 60000). The agent's rates are over its own sampling window, whatever
    /// this is.
    #[arg(long, default_value_t = 1000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub interval_ms: u64,

    /// Print one frame as plain text to stdout and exit, instead of taking
    /// over the terminal: for scripts and logs. The frame is the terminal's
    /// size, or 160x50 when stdout is not a terminal.
    #[arg(long)]
    pub once: bool,
}

pub fn execute(args: TopArgs, socket: &Path) -> Result<()> {
    if args.once {
        return once(args.interval_ms, socket);
    }
    if !stdout().is_terminal() {
        anyhow::bail!("`top` needs a terminal on stdout; use `top --once` for plain text");
    }
    // Set by SIGTERM/SIGHUP/SIGINT: the loop sees it within a tick and
    // leaves through the same door as `q`, restoring the terminal.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("handling signal {sig}"))?;
    }
    // A terminal that went away (its tmux or ssh session killed) leaves
    // crossterm's reader spinning on end-of-file inside `event::poll`, where
    // the loop never sees the flag: a second after a signal, whatever the
    // loop is doing, the process ends (the terminal is gone or restored).
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(1));
            let _ = disable_raw_mode();
            let _ = execute!(stdout(), LeaveAlternateScreen, Show);
            std::process::exit(1);
        });
    }
    let rounds = poll::spawn(
        socket.to_path_buf(),
        Duration::from_millis(args.interval_ms),
    )?;
    let mut app = App::new(args.interval_ms);
    // Before init: init may fail half-way (raw mode on, no alternate
    // screen), and the guard undoes whatever it did.
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    // Redraw at least this often: the header's "updated ... ago" moves, and
    // the signal flag is read.
    let tick = Duration::from_millis(250);
    while !stop.load(Ordering::Relaxed) {
        while let Ok(round) = rounds.try_recv() {
            app.apply(round);
        }
        terminal
            .draw(|f| view::render(f, &mut app))
            .context("drawing")?;
        if event::poll(tick).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(key) if app.on_key(key) == Step::Quit => break,
                // Resizes and everything else: the next draw fits the new size.
                _ => {}
            }
        }
    }
    Ok(())
}

/// Leaves raw mode and the alternate screen and shows the cursor when
/// dropped: on return, on error (`?`) and while a panic unwinds (ratatui's
/// panic hook restores too, before the message is printed). Errors are
/// ignored: the terminal may be gone (SIGHUP).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        let _ = disable_raw_mode();
        let _ = execute!(stdout(), LeaveAlternateScreen, Show);
    }
}

/// `--once`: one round, one frame, as text.
fn once(interval_ms: u64, socket: &Path) -> Result<()> {
    let round = poll::Poller::default().fetch(socket);
    if let Err(e) = &round.channels {
        anyhow::bail!("{e}");
    }
    let mut app = App::new(interval_ms);
    app.apply(round);
    let (w, h) = if stdout().is_terminal() {
        ratatui::crossterm::terminal::size().unwrap_or((160, 50))
    } else {
        (160, 50)
    };
    print!("{}", frame_text(&mut app, w, h)?);
    Ok(())
}

/// Renders `app` into a `w` x `h` buffer and returns it as text, one line
/// per row, trailing spaces trimmed.
pub fn frame_text(app: &mut App, w: u16, h: u16) -> Result<String> {
    let mut terminal = Terminal::new(TestBackend::new(w, h))?;
    terminal.draw(|f| view::render(f, app))?;
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .filter_map(|x| buffer.cell((x, y)).map(|c| c.symbol()))
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}
