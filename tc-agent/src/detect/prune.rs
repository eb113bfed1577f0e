//! Bounded state: the detectors keep one entry per series they watch, and
//! a series nobody sends on any more must not stay forever.

use std::collections::HashMap;

/// Makes room for one more entry in `map` (at most `cap`): when full,
/// drops the tenth of the entries with the lowest `score` among those
/// `keep` does not protect. Allocates only when full.
pub fn make_room<V>(
    map: &mut HashMap<String, V>,
    cap: usize,
    score: impl Fn(&V) -> f64,
    keep: impl Fn(&V) -> bool,
) {
    if map.len() < cap {
        return;
    }
    let mut scores: Vec<f64> = map.values().filter(|v| !keep(v)).map(&score).collect();
    if scores.is_empty() {
        return;
    }
    let n = (cap / 10).clamp(1, scores.len());
    let (_, cut, _) = scores.select_nth_unstable_by(n - 1, f64::total_cmp);
    let cut = *cut;
    let mut dropped = 0;
    map.retain(|_, v| {
        if dropped < n && !keep(v) && score(v) <= cut {
            dropped += 1;
            false
        } else {
            true
        }
    });
}
