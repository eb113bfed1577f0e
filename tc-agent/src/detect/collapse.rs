//! `upstream_collapse`: demand up, responses not keeping up (to be written).

use super::{Found, Sample};

/// The collapse detector's state.
#[derive(Debug, Default)]
pub struct Collapse {}

impl Collapse {
    /// Looks at one sample.
    pub fn observe(&mut self, _s: &Sample) -> Vec<Found> {
        Vec::new()
    }
}
