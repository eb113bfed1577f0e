//! The metric families, rendered with `prometheus-client` from the latest
//! reports on every scrape (a [`Collector`], so nothing is kept between
//! scrapes and nothing can go stale).
//!
//! Cardinality is bounded by what the agent bounds: channels by the policy
//! (at most [`tc_common::MAX_CHANNELS`]), node counters by a fixed list of
//! kinds, and interactions by endpoint-set names (never raw addresses)
//! from the observer, capped again here at [`MAX_INTERACTIONS`].

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{
        prometheus_text, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
        MetricEncoder,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info, MetricType},
    registry::{Registry, Unit},
};

use crate::{control::ChannelsReport, detect::EventKind, observe::InteractionTotals};

/// `Content-Type` of what [`Exporter::render`] produces: the Prometheus
/// text format 0.0.4, which Prometheus and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Interactions exported at most per scrape. The observer already names
/// interactions by endpoint sets (bounded by the policy); this is the
/// last guard of the time-series count. Past it, the interactions that sort
/// last by (from, to, protocol, port) are left out and counted in
/// `tc_interactions_omitted`.
pub const MAX_INTERACTIONS: usize = 4096;

/// What one scrape exports: the agent's latest reports.
#[derive(Debug, Clone)]
pub struct MetricsView {
    /// The last `channels` report (per-channel and node counters, policy
    /// version), as the agent published it without taking its lock.
    pub channels: Arc<ChannelsReport>,
    /// Cumulative interaction counters between endpoint sets, from the
    /// observer (empty until it is wired in).
    pub interactions: Arc<[InteractionTotals]>,
    /// Time since the agent started, for `tc_agent_uptime_seconds`.
    pub uptime: Duration,
    /// The detectors' events by kind, from the observer's event log.
    pub events: EventCounts,
}

/// Events by kind, every kind present (zeros included), so a rate or an
/// alert on a kind that never fired still has a series.
#[derive(Debug, Clone, Copy)]
pub struct EventCounts {
    /// Events opened since the agent started (`tc_agent_events_total`):
    /// counted when they open, so forgetting old ones keeps it monotonic.
    pub opened: [(EventKind, u64); 3],
    /// Events open now (`tc_agent_events_open`).
    pub open: [(EventKind, u64); 3],
}

impl Default for EventCounts {
    fn default() -> Self {
        Self {
            opened: EventKind::ALL.map(|k| (k, 0)),
            open: EventKind::ALL.map(|k| (k, 0)),
        }
    }
}

impl EventCounts {
    /// The counts of an event log now.
    pub fn of(log: &crate::detect::EventLog) -> Self {
        Self {
            opened: log.opened_by_kind(),
            open: log.open_by_kind(),
        }
    }
}

/// Where each scrape gets its view: called once per scrape, so it must be
/// cheap and must never wait for the agent lock.
pub type MetricsSource = Arc<dyn Fn() -> MetricsView + Send + Sync>;

/// Renders the metrics of the view its source gives, one scrape at a time.
#[derive(Debug)]
pub struct Exporter {
    /// Holds the one collector that reads the source on every encode.
    registry: Registry,
}

impl Exporter {
    /// An exporter reading `source` on every [`render`](Exporter::render).
    pub fn new(source: MetricsSource) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ViewCollector { source }));
        Self { registry }
    }

    /// The Prometheus text exposition of the source's current view.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The collector behind [`Exporter`]: one view per scrape.
struct ViewCollector {
    /// Called at the start of every encode.
    source: MetricsSource,
}

impl fmt::Debug for ViewCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewCollector").finish_non_exhaustive()
    }
}

impl Collector for ViewCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let view = (self.source)();
        encode_agent(&mut enc, &view)?;
        encode_channels(&mut enc, &view.channels)?;
        encode_node(&mut enc, &view.channels)?;
        encode_events(&mut enc, &view.events)?;
        encode_interactions(&mut enc, &view.interactions)
    }
}

/// Labels of one sample: static names, values borrowed from the report
/// where they can be (escaping is the encoder's).
type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// A family's name, help and unit; the encoder appends the unit and, for
/// counters, `_total`.
struct Desc {
    /// Name without unit and `_total` suffixes.
    name: &'static str,
    /// HELP text.
    help: &'static str,
    /// Base unit, appended to the name (`_bytes`, `_seconds`).
    unit: Option<Unit>,
}

/// A [`Desc`], short enough for the tables below.
const fn desc(name: &'static str, help: &'static str, unit: Option<Unit>) -> Desc {
    Desc { name, help, unit }
}

/// Writes a counter family; nothing at all when it has no samples (an
/// empty family is noise to every reader).
fn counters<N: EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    d: &Desc,
    samples: Vec<(Labels, N)>,
) -> fmt::Result {
    family(enc, d, MetricType::Counter, samples, |v, m| {
        ConstCounter::new(v).encode(m)
    })
}

/// Writes a gauge family; nothing when it has no samples.
fn gauges<N: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    d: &Desc,
    samples: Vec<(Labels, N)>,
) -> fmt::Result {
    family(enc, d, MetricType::Gauge, samples, |v, m| {
        ConstGauge::new(v).encode(m)
    })
}

/// Writes one family of `kind`: its HELP and TYPE, then each sample
/// through `write`; nothing when it has no samples.
fn family<V>(
    enc: &mut DescriptorEncoder,
    d: &Desc,
    kind: MetricType,
    samples: Vec<(Labels, V)>,
    write: impl Fn(V, MetricEncoder) -> fmt::Result,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(d.name, d.help, d.unit.as_ref(), kind)?;
    for (labels, v) in samples {
        write(v, m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One unlabelled gauge.
fn gauge<N: EncodeGaugeValue>(enc: &mut DescriptorEncoder, d: &Desc, v: N) -> fmt::Result {
    gauges(enc, d, vec![(Vec::new(), v)])
}

/// The agent and its policy: info, uptime, version, channel counts.
fn encode_agent(enc: &mut DescriptorEncoder, view: &MetricsView) -> fmt::Result {
    let info = Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]);
    info.encode(enc.encode_descriptor(
        "tc_agent",
        "The running tc-agent: its version as a label, value 1.",
        None,
        MetricType::Info,
    )?)?;
    gauge(
        enc,
        &desc(
            "tc_agent_uptime",
            "Time since the agent started.",
            Some(Unit::Seconds),
        ),
        view.uptime.as_secs_f64(),
    )?;
    let r = &view.channels;
    gauge(
        enc,
        &desc(
            "tc_policy_version",
            "Version of the live policy (grows by one per apply; 0: none ever applied).",
            None,
        ),
        r.version,
    )?;
    gauge(
        enc,
        &desc(
            "tc_policy_channels",
            "Channels of the live policy the agent names (and exports).",
            None,
        ),
        r.channels.len() as u64,
    )?;
    gauge(
        enc,
        &desc(
            "tc_policy_unnamed_channels",
            "Channels the kernel enforces that the agent cannot name (its saved state did not match the kernel at start); not exported per channel.",
            None,
        ),
        r.unnamed_channels as u64,
    )
}

/// The `channel` label.
fn channel(name: &str) -> Labels<'_> {
    vec![("channel", Cow::Borrowed(name))]
}

/// `l` with one more label of a fixed value.
fn with<'a>(mut l: Labels<'a>, k: &'static str, v: &'static str) -> Labels<'a> {
    l.push((k, Cow::Borrowed(v)));
    l
}

/// Per-channel families, one series per channel (and verdict or outcome).
fn encode_channels(enc: &mut DescriptorEncoder, r: &ChannelsReport) -> fmt::Result {
    let rows = &r.channels;
    let lower = |x: &dyn fmt::Debug| format!("{x:?}").to_lowercase();
    gauges(
        enc,
        &desc(
            "tc_channel_info",
            "A channel of the live policy, value 1: its direction, protocol, mode and action as labels.",
            None,
        ),
        rows.iter()
            .map(|c| {
                let mut l = channel(&c.name);
                l.push(("direction", lower(&c.direction).into()));
                l.push(("protocol", lower(&c.protocol).into()));
                l.push(("mode", lower(&c.mode).into()));
                l.push(("action", lower(&c.action).into()));
                (l, 1u64)
            })
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_channel_packets",
            "Packets of a channel by verdict: passed, dropped (over the limit, enforce mode), delayed (`delay`: paced), marked (`mark`: ECN CE set over the limit), would_drop (monitor mode: over the limit, let through). Delayed and marked packets are also passed.",
            None,
        ),
        rows.iter()
            .flat_map(|c| {
                let t = &c.totals;
                [
                    ("passed", t.passed_pkts),
                    ("dropped", t.dropped_pkts),
                    ("delayed", t.delayed_pkts),
                    ("marked", t.marked_pkts),
                    ("would_drop", t.would_drop_pkts),
                ]
                .map(|(v, n)| (with(channel(&c.name), "verdict", v), n))
            })
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_channel",
            "Wire bytes (L2 frame length) of a channel by verdict: passed, dropped, would_drop (the datapath counts no bytes for delayed and marked packets).",
            Some(Unit::Bytes),
        ),
        rows.iter()
            .flat_map(|c| {
                let t = &c.totals;
                [
                    ("passed", t.passed_bytes),
                    ("dropped", t.dropped_bytes),
                    ("would_drop", t.would_drop_bytes),
                ]
                .map(|(v, n)| (with(channel(&c.name), "verdict", v), n))
            })
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_channel_delay",
            "`delay`: sum over delayed packets of the time each was held; divided by the rate of delayed packets it is the mean pacing delay.",
            Some(Unit::Seconds),
        ),
        rows.iter()
            .map(|c| (channel(&c.name), c.totals.delay_ns as f64 / 1e9))
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_channel_horizon_dropped_packets",
            "`delay`: packets dropped because they would have left beyond the pacing horizon (also counted as dropped).",
            None,
        ),
        rows.iter()
            .map(|c| (channel(&c.name), c.totals.horizon_drop_pkts))
            .collect(),
    )?;
    gauges(
        enc,
        &desc(
            "tc_channel_bandwidth_limit_bytes_per_second",
            "A channel's bandwidth limit (only channels with one).",
            None,
        ),
        rows.iter()
            .filter_map(|c| Some((channel(&c.name), c.limit.bandwidth_bps? as f64 / 8.0)))
            .collect(),
    )?;
    gauges(
        enc,
        &desc(
            "tc_channel_open_connections",
            "TCP connections open in a channel now (0 for channels without connection limits).",
            None,
        ),
        rows.iter()
            .map(|c| (channel(&c.name), c.connections.open_connections))
            .collect(),
    )?;
    gauges(
        enc,
        &desc(
            "tc_channel_connection_limit",
            "A channel's limit on open TCP connections (only channels with one).",
            None,
        ),
        rows.iter()
            .filter_map(|c| Some((channel(&c.name), u64::from(c.connections.connection_limit?))))
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_channel_connections",
            "New TCP connections of a channel with connection limits, by outcome: opened (admitted), refused (SYN dropped or reset, including table_full), table_full (refused because the connection table was full), would_refuse (monitor mode).",
            None,
        ),
        rows.iter()
            .flat_map(|c| {
                let k = &c.connections;
                [
                    ("opened", k.opened_connections),
                    ("refused", k.refused_connections),
                    ("table_full", k.table_full_connections),
                    ("would_refuse", k.would_refuse_connections),
                ]
                .map(|(o, n)| (with(channel(&c.name), "outcome", o), n))
            })
            .collect(),
    )?;
    gauges(
        enc,
        &desc(
            "tc_channel_handshake_rtt",
            "Mean TCP handshake time over the agent's rate window (channels with connection limits and handshakes in the window).",
            Some(Unit::Seconds),
        ),
        rows.iter()
            .filter_map(|c| Some((channel(&c.name), c.connections.handshake_rtt_us? / 1e6)))
            .collect(),
    )
}

/// Node-wide counters by kind.
fn encode_node(enc: &mut DescriptorEncoder, r: &ChannelsReport) -> fmt::Result {
    let n = &r.node;
    let kind = |k: &'static str| vec![("kind", Cow::Borrowed(k))];
    counters(
        enc,
        &desc(
            "tc_node_packets",
            "Packets the datapath saw on this node, by kind: seen (all) and subsets of it: unclassified (IP, no channel), non_ip, malformed, fragment (non-first fragments), fragment_orphan, no_ports, fail_open (a map lookup failed: passed), contended, conn_untracked, conn_after_close (dropped), ix_folded (counted in an interaction's untracked-clients entry), ix_lost (no interaction entry could count them: the table full). Kinds overlap: do not sum them.",
            None,
        ),
        [
            ("seen", n.seen_pkts),
            ("unclassified", n.unclassified_pkts),
            ("non_ip", n.non_ip_pkts),
            ("malformed", n.malformed_pkts),
            ("fragment", n.fragment_pkts),
            ("fragment_orphan", n.fragment_orphan_pkts),
            ("no_ports", n.no_ports_pkts),
            ("fail_open", n.fail_open_pkts),
            ("contended", n.contended_pkts),
            ("conn_untracked", n.conn_untracked_pkts),
            ("conn_after_close", n.conn_after_close_pkts),
            ("ix_folded", n.ix_folded_pkts),
            ("ix_lost", n.ix_lost_pkts),
        ]
        .map(|(k, v)| (kind(k), v))
        .into(),
    )?;
    counters(
        enc,
        &desc(
            "tc_node_flow_cache",
            "Flow-cache classifications on this node, by result: hit (answered by the cache), miss (the tries walked), insert (a missed flow admitted on its second packet in a row; a subset of miss). hit / (hit + miss) is the hit rate; under a random-source flood misses rise while established flows keep hitting.",
            None,
        ),
        [
            ("hit", n.flow_hits),
            ("miss", n.flow_misses),
            ("insert", n.flow_inserts),
        ]
        .map(|(k, v)| (vec![("result", Cow::Borrowed(k))], v))
        .into(),
    )?;
    counters(
        enc,
        &desc(
            "tc_node",
            "Wire bytes the datapath saw on this node, by kind: seen (all), unclassified (IP, no channel; a subset of seen).",
            Some(Unit::Bytes),
        ),
        vec![
            (kind("seen"), n.seen_bytes),
            (kind("unclassified"), n.unclassified_bytes),
        ],
    )
}

/// An interaction's labels: endpoint sets, protocol and port.
fn interaction_labels(i: &InteractionTotals) -> Labels<'_> {
    vec![
        ("from", Cow::Borrowed(i.from.as_str())),
        ("to", Cow::Borrowed(i.to.as_str())),
        ("protocol", Cow::Borrowed(i.protocol.as_str())),
        ("port", Cow::Owned(i.port.to_string())),
    ]
}

/// The detectors' events by kind: opened since start, and open now.
fn encode_events(enc: &mut DescriptorEncoder, e: &EventCounts) -> fmt::Result {
    let by_kind = |counts: &[(EventKind, u64); 3]| -> Vec<(Labels<'static>, u64)> {
        counts
            .iter()
            .map(|(k, n)| (vec![("kind", Cow::Borrowed(k.as_str()))], *n))
            .collect()
    };
    counters(
        enc,
        &desc(
            "tc_agent_events",
            "Events the agent's detectors opened since it started, by kind: spike (a request rate far above its baseline), upstream_collapse (demand rising while responses stop keeping up), dos (traffic to a destination rising sharply, carried by a few sources).",
            None,
        ),
        by_kind(&e.opened),
    )?;
    gauges(
        enc,
        &desc(
            "tc_agent_events_open",
            "Events open now (started and not yet ended), by kind.",
            None,
        ),
        by_kind(&e.open),
    )
}

/// Interaction families, at most [`MAX_INTERACTIONS`] interactions.
fn encode_interactions(enc: &mut DescriptorEncoder, all: &[InteractionTotals]) -> fmt::Result {
    let mut rows: Vec<&InteractionTotals> = all.iter().collect();
    rows.sort_by(|a, b| {
        (&a.from, &a.to, &a.protocol, a.port).cmp(&(&b.from, &b.to, &b.protocol, b.port))
    });
    let omitted = rows.len().saturating_sub(MAX_INTERACTIONS);
    rows.truncate(MAX_INTERACTIONS);
    gauge(
        enc,
        &desc(
            "tc_interactions_omitted",
            "Interactions left out of this scrape because there were more than the exporter's cap.",
            None,
        ),
        omitted as u64,
    )?;
    counters(
        enc,
        &desc(
            "tc_interaction_packets",
            "Packets between two endpoint sets (from: the clients' set, to: the servers'), by direction: request (client to server) or response.",
            None,
        ),
        rows.iter()
            .flat_map(|i| {
                [
                    (with(interaction_labels(i), "direction", "request"), i.request_pkts),
                    (with(interaction_labels(i), "direction", "response"), i.response_pkts),
                ]
            })
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_interaction",
            "Wire bytes between two endpoint sets, by direction: request (client to server) or response.",
            Some(Unit::Bytes),
        ),
        rows.iter()
            .flat_map(|i| {
                [
                    (with(interaction_labels(i), "direction", "request"), i.request_bytes),
                    (with(interaction_labels(i), "direction", "response"), i.response_bytes),
                ]
            })
            .collect(),
    )?;
    counters(
        enc,
        &desc(
            "tc_interaction_tcp_flags",
            "TCP packets between two endpoint sets by flag: syn (client connection attempts), synack (server answers), rst and fin (either side).",
            None,
        ),
        rows.iter()
            .filter(|i| i.protocol == "tcp")
            .flat_map(|i| {
                [
                    ("syn", i.syns),
                    ("synack", i.synacks),
                    ("rst", i.resets),
                    ("fin", i.fins),
                ]
                .map(|(f, n)| (with(interaction_labels(i), "flag", f), n))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ChannelRow, ConnRow, Rates};
    use crate::policy::{Action, Direction, Limit, Mode, Protocol};

    fn row(name: &str, passed: u64) -> ChannelRow {
        let totals = crate::control::Totals {
            passed_pkts: passed,
            passed_bytes: passed * 100,
            dropped_pkts: 3,
            dropped_bytes: 300,
            ..Default::default()
        };
        ChannelRow {
            name: name.into(),
            direction: Direction::Ingress,
            protocol: Protocol::Udp,
            mode: Mode::Enforce,
            action: Action::Drop,
            limit: Limit::default(),
            totals,
            rates: Rates::default(),
            connections: ConnRow::default(),
        }
    }

    fn report(channels: Vec<ChannelRow>) -> ChannelsReport {
        ChannelsReport {
            version: 7,
            generation: 1,
            rate_window_s: 1.0,
            taken_unix_ms: 0,
            channels,
            unnamed_channels: 0,
            node: Default::default(),
        }
    }

    fn render(channels: Vec<ChannelRow>, interactions: Vec<InteractionTotals>) -> String {
        let view = MetricsView {
            channels: Arc::new(report(channels)),
            interactions: interactions.into(),
            uptime: Duration::from_secs(5),
            events: EventCounts::default(),
        };
        Exporter::new(Arc::new(move || view.clone()))
            .render()
            .expect("rendering")
    }

    #[test]
    fn channel_counters_carry_channel_and_verdict_labels() {
        let text = render(vec![row("web", 42)], Vec::new());
        for line in [
            "# TYPE tc_channel_packets_total counter",
            r#"tc_channel_packets_total{channel="web",verdict="passed"} 42"#,
            r#"tc_channel_packets_total{channel="web",verdict="dropped"} 3"#,
            r#"tc_channel_packets_total{channel="web",verdict="would_drop"} 0"#,
            "# TYPE tc_channel_bytes_total counter",
            r#"tc_channel_bytes_total{channel="web",verdict="passed"} 4200"#,
            r#"tc_channel_open_connections{channel="web"} 0"#,
            r#"tc_channel_connections_total{channel="web",outcome="refused"} 0"#,
            r#"tc_channel_info{channel="web",direction="ingress",protocol="udp",mode="enforce",action="drop"} 1"#,
            "tc_policy_version 7",
            "tc_agent_uptime_seconds 5.0",
            r#"tc_node_packets_total{kind="seen"} 0"#,
            r#"tc_node_bytes_total{kind="unclassified"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(text.contains("tc_agent_info{version=\""), "{text}");
        // Optional families stay out when nothing has them.
        assert!(!text.contains("tc_channel_connection_limit"), "{text}");
        assert!(!text.contains("tc_interaction_packets_total"), "{text}");
    }

    #[test]
    fn odd_channel_names_are_escaped() {
        let text = render(vec![row("a\"b\\c\nd", 1)], Vec::new());
        assert!(
            text.contains(r#"tc_channel_packets_total{channel="a\"b\\c\nd",verdict="passed"} 1"#),
            "{text}"
        );
        // Every sample stays on one line: the newline is escaped.
        assert!(!text.lines().any(|l| l.starts_with("d\"")), "{text}");
    }

    #[test]
    fn connection_limits_and_handshakes_show_where_set() {
        let mut c = row("db", 1);
        c.connections.connection_limit = Some(100);
        c.connections.open_connections = 12;
        c.connections.opened_connections = 50;
        c.connections.handshake_rtt_us = Some(1500.0);
        c.limit.bandwidth_bps = Some(8_000_000);
        let text = render(vec![c, row("other", 1)], Vec::new());
        for line in [
            r#"tc_channel_connection_limit{channel="db"} 100"#,
            r#"tc_channel_open_connections{channel="db"} 12"#,
            r#"tc_channel_connections_total{channel="db",outcome="opened"} 50"#,
            r#"tc_channel_handshake_rtt_seconds{channel="db"} 0.0015"#,
            r#"tc_channel_bandwidth_limit_bytes_per_second{channel="db"} 1000000.0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        assert!(!text.contains(r#"tc_channel_connection_limit{channel="other"}"#));
    }

    fn interaction(from: &str, to: &str, protocol: &str, port: u16) -> InteractionTotals {
        InteractionTotals {
            from: from.into(),
            to: to.into(),
            protocol: protocol.into(),
            port,
            request_pkts: 10,
            request_bytes: 1000,
            response_pkts: 8,
            response_bytes: 8000,
            syns: 2,
            synacks: 2,
            resets: 0,
            fins: 4,
        }
    }

    #[test]
    fn interactions_are_labelled_by_endpoint_sets() {
        let text = render(
            Vec::new(),
            vec![
                interaction("clients", "web", "tcp", 80),
                interaction("clients", "dns", "udp", 53),
            ],
        );
        for line in [
            r#"tc_interaction_packets_total{from="clients",to="web",protocol="tcp",port="80",direction="request"} 10"#,
            r#"tc_interaction_packets_total{from="clients",to="web",protocol="tcp",port="80",direction="response"} 8"#,
            r#"tc_interaction_bytes_total{from="clients",to="dns",protocol="udp",port="53",direction="response"} 8000"#,
            r#"tc_interaction_tcp_flags_total{from="clients",to="web",protocol="tcp",port="80",flag="syn"} 2"#,
            r#"tc_interaction_tcp_flags_total{from="clients",to="web",protocol="tcp",port="80",flag="fin"} 4"#,
            "tc_interactions_omitted 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        // TCP flags only for TCP interactions.
        assert!(
            !text.contains(r#"to="dns",protocol="udp",port="53",flag"#),
            "{text}"
        );
    }

    #[test]
    fn interactions_past_the_cap_are_counted_not_exported() {
        let many: Vec<_> = (0..MAX_INTERACTIONS + 5)
            .map(|i| interaction("c", &format!("s{i:05}"), "udp", 1))
            .collect();
        let text = render(Vec::new(), many);
        assert!(
            text.lines().any(|l| l == "tc_interactions_omitted 5"),
            "omitted count"
        );
        let series = text
            .lines()
            .filter(|l| l.starts_with("tc_interaction_packets_total{"))
            .count();
        assert_eq!(series, 2 * MAX_INTERACTIONS);
        // The ones that sort last are left out, the same ones every scrape.
        assert!(!text.contains(&format!("to=\"s{:05}\"", MAX_INTERACTIONS)));
    }

    #[test]
    fn each_scrape_reads_the_source_again() {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(1));
        let source = {
            let n = n.clone();
            Arc::new(move || MetricsView {
                channels: Arc::new(report(vec![row(
                    "c",
                    n.load(std::sync::atomic::Ordering::Relaxed),
                )])),
                interactions: Arc::from(Vec::new()),
                uptime: Duration::ZERO,
                events: EventCounts::default(),
            })
        };
        let e = Exporter::new(source);
        let passed = |t: &str| {
            t.lines()
                .find(|l| {
                    l.starts_with(r#"tc_channel_packets_total{channel="c",verdict="passed"}"#)
                })
                .map(str::to_owned)
        };
        assert!(passed(&e.render().unwrap()).unwrap().ends_with(" 1"));
        n.store(99, std::sync::atomic::Ordering::Relaxed);
        assert!(passed(&e.render().unwrap()).unwrap().ends_with(" 99"));
    }

    #[test]
    fn events_are_counted_by_kind_with_zeros() {
        use crate::detect::{Event, EventLog, Found};
        let text = render(Vec::new(), Vec::new());
        for k in ["spike", "upstream_collapse", "dos"] {
            for family in ["tc_agent_events_total", "tc_agent_events_open"] {
                let line = format!(r#"{family}{{kind="{k}"}} 0"#);
                assert!(
                    text.lines().any(|l| l == line),
                    "missing `{line}` in:\n{text}"
                );
            }
        }
        assert!(
            text.contains("# TYPE tc_agent_events_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE tc_agent_events_open gauge"), "{text}");
        // From a log: two DoS opened, one of them ended; a spike open.
        let mut log = EventLog::default();
        let started = |key: &str, kind| Found::Started {
            key: key.into(),
            event: Event {
                id: String::new(),
                kind,
                started: 1,
                ended: None,
                from: vec![],
                to: vec![],
                summary: String::new(),
                evidence: Default::default(),
            },
        };
        log.apply(vec![
            started("a", EventKind::Dos),
            started("b", EventKind::Dos),
            started("c", EventKind::Spike),
        ]);
        log.apply(vec![Found::Ended {
            key: "a".into(),
            t: 2,
        }]);
        let view = MetricsView {
            channels: Arc::new(report(Vec::new())),
            interactions: Arc::from(Vec::new()),
            uptime: Duration::ZERO,
            events: EventCounts::of(&log),
        };
        let text = Exporter::new(Arc::new(move || view.clone()))
            .render()
            .unwrap();
        for line in [
            r#"tc_agent_events_total{kind="dos"} 2"#,
            r#"tc_agent_events_total{kind="spike"} 1"#,
            r#"tc_agent_events_total{kind="upstream_collapse"} 0"#,
            r#"tc_agent_events_open{kind="dos"} 1"#,
            r#"tc_agent_events_open{kind="spike"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
    }

    /// Every query of the shipped dashboard names only families this
    /// exporter writes (with all optional families present).
    #[test]
    fn the_grafana_dashboard_queries_exported_metrics() {
        let mut c = row("db", 1);
        c.connections.connection_limit = Some(10);
        c.connections.handshake_rtt_us = Some(100.0);
        c.limit.bandwidth_bps = Some(1_000_000);
        let text = render(vec![c], vec![interaction("a", "b", "tcp", 443)]);
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana/tc-agent.json"))
                .expect("the dashboard is valid JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        let mut queried = 0;
        for p in panels.iter().filter(|p| p["type"] != "row") {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().expect("expr");
                let names: Vec<&str> = expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("tc_"))
                    .collect();
                assert!(
                    !names.is_empty(),
                    "panel {}: `{expr}` names no tc_ metric",
                    p["title"]
                );
                for n in names {
                    assert!(
                        exported.contains(n),
                        "panel {}: `{n}` is not exported",
                        p["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried > 10, "{queried}");
        // The data source is a variable, so the dashboard imports anywhere.
        let vars = dashboard["templating"]["list"]
            .as_array()
            .expect("variables");
        assert!(vars
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    }
}
