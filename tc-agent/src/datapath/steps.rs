//! Where an apply's time goes: named steps with their durations, logged
//! once per apply (`RUST_LOG=tc_agent=debug`) so a slow step shows by name.

use std::time::Instant;

/// Durations of the steps of one operation, in the order they ran.
#[derive(Debug)]
pub struct Steps {
    /// The operation, for the log line.
    what: &'static str,
    /// When the current step began.
    mark: Instant,
    /// Finished steps: name and milliseconds.
    done: Vec<(&'static str, f64)>,
}

impl Steps {
    /// Starts timing `what`; the first step begins now.
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            mark: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Ends the current step as `name` and begins the next.
    pub fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done
            .push((name, (now - self.mark).as_secs_f64() * 1e3));
        self.mark = now;
    }

    /// Logs every step at debug level, as one line.
    pub fn log(&self) {
        let steps: Vec<String> = self
            .done
            .iter()
            .map(|(n, ms)| format!("{n}={ms:.1}ms"))
            .collect();
        tracing::debug!(what = self.what, steps = %steps.join(" "), "timings");
    }
}
