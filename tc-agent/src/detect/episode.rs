//! Hysteresis: when a series' verdicts make an episode. An episode opens
//! after a few consecutive hot samples and ends only after many consecutive
//! calm ones, so an episode with short dips stays one event.

/// Where one watched series stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Episode {
    /// Consecutive hot samples (before opening).
    hot: u32,
    /// Consecutive calm samples (while open).
    calm: u32,
    /// The tick the open episode started at, if one is open.
    since: Option<u64>,
    /// Whether the open episode is silent: it was opened while a more
    /// specific detector already had an event on the same destination, so
    /// no event of its own was logged (and none ends).
    shadow: bool,
}

/// What one sample did to an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to report.
    Nothing,
    /// It opens now: the caller logs an event (or calls
    /// [`Episode::shadow`]).
    Open,
    /// It ended now; `shadow` says whether it was silent.
    Close { shadow: bool },
}

impl Episode {
    /// Takes one sample's verdict: `hot` (the pattern holds) and `calm` (the
    /// series is back near its baseline). Opens after `onset` hot samples in
    /// a row, ends after `calm_for` calm samples in a row.
    pub fn step(&mut self, tick: u64, hot: bool, calm: bool, onset: u32, calm_for: u32) -> Step {
        match self.since {
            None => {
                if hot {
                    self.hot += 1;
                    if self.hot >= onset {
                        self.hot = 0;
                        self.calm = 0;
                        self.since = Some(tick);
                        self.shadow = false;
                        return Step::Open;
                    }
                } else {
                    self.hot = 0;
                }
                Step::Nothing
            }
            Some(_) => {
                if calm {
                    self.calm += 1;
                    if self.calm >= calm_for {
                        return self.close();
                    }
                } else {
                    self.calm = 0;
                }
                Step::Nothing
            }
        }
    }

    /// Ends the episode now (if one is open).
    pub fn close(&mut self) -> Step {
        let shadow = self.shadow;
        let was = self.since.take();
        self.hot = 0;
        self.calm = 0;
        self.shadow = false;
        match was {
            Some(_) => Step::Close { shadow },
            None => Step::Nothing,
        }
    }

    /// Makes the episode that just opened silent.
    pub fn shadow(&mut self) {
        self.shadow = true;
    }

    /// Whether an episode is open.
    pub fn open(&self) -> bool {
        self.since.is_some()
    }

    /// Whether the baseline must not learn: an episode is open or about to
    /// open (hot samples pending).
    pub fn frozen(&self) -> bool {
        self.since.is_some() || self.hot > 0
    }

    /// Ticks the open episode has lasted.
    pub fn age(&self, tick: u64) -> u64 {
        self.since.map_or(0, |s| tick.saturating_sub(s))
    }
}
