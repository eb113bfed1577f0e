//! `dos`: a destination flooded by a few sources or a crowd (to be written).

use super::{Found, Sample};

/// The DoS detector's state.
#[derive(Debug, Default)]
pub struct Dos {}

impl Dos {
    /// Looks at one sample.
    pub fn observe(&mut self, _s: &Sample) -> Vec<Found> {
        Vec::new()
    }
}
