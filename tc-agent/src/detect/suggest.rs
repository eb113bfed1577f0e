//! `suggest`: the policy that pushes back on an event (to be written).

use crate::{
    observe::history::History,
    policy::{Mode, Policy},
};

use super::Event;

/// Why no policy can be suggested for an event.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// Not written yet.
    #[error("suggest is not written yet")]
    NotYet,
}

/// A complete policy file: `policy` plus, ahead of its channels, an
/// endpoint set for the event's sources and a channel that holds them to
/// their baseline (from `history`), in `mode`.
pub fn suggest(
    _event: &Event,
    _policy: &Policy,
    _history: &History,
    _mode: Mode,
) -> Result<String, SuggestError> {
    Err(SuggestError::NotYet)
}
