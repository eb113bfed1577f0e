//! The metric history (being written).
