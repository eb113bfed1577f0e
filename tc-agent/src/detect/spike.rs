//! `spike`: a request rate far above its own baseline (to be written).

use super::{Found, Sample};

/// The spike detector's state.
#[derive(Debug, Default)]
pub struct Spike {}

impl Spike {
    /// Looks at one sample.
    pub fn observe(&mut self, _s: &Sample) -> Vec<Found> {
        Vec::new()
    }
}
