//! Prometheus metrics: `tc-agent run --metrics-addr ADDR` serves
//! `GET /metrics` in the Prometheus text format (off by default).
//!
//! - [`exposition`]: the metric families, rendered by `prometheus-client`
//!   from the agent's latest reports on every scrape;
//! - [`http`]: the HTTP server, bounded against hostile clients.
//!
//! A scrape never takes the agent lock: it reads the published `channels`
//! report (see `agent/snapshot.rs`), and the observer's interaction totals
//! and event counts, through a [`MetricsSource`]. Channels, node counters,
//! events and interactions are labelled by names the agent bounds (channel
//! names, fixed lists of kinds, endpoint sets), never by raw addresses.
//!
//! The Grafana dashboard `deploy/grafana/tc-agent.json` plots these
//! families.

pub mod exposition;
pub mod http;

pub use self::exposition::{
    EventCounts, Exporter, MetricsSource, MetricsView, CONTENT_TYPE, MAX_INTERACTIONS,
};
