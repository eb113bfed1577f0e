//! Robust baselines of a rate series (to be written: EWMA of mean and
//! deviation with a warm-up).
