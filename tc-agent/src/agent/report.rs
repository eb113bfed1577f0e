//! What the agent reports: counter samples, `channels`, `status`, and the
//! request dispatch.

use super::*;

impl Agent {
    /// Live channels the kernel enforces beyond those the agent can name:
    /// non-zero only when the saved state did not match the kernel.
    fn unnamed_channels(&self) -> usize {
        if !matches!(self.state_check, StateCheck::Mismatch(_)) {
            0
        } else {
            self.live_slots.saturating_sub(self.policy.channels.len())
        }
    }

    pub(super) fn sample(&mut self) -> Result<()> {
        // Stale bits of evicted flows out of the flow cache's filter: a
        // failure only costs speed, and must not stop the sample.
        if let Err(e) = self
            .dp
            .global_counters()
            .and_then(|g| self.dp.tidy_flow_filter(g.flow_inserts))
        {
            tracing::warn!(error = %e, "cannot tidy the flow cache's filter");
        }
        let totals = self.totals()?;
        let conns = self.pool_counts()?;
        let totals = self
            .policy
            .channels
            .iter()
            .map(|c| c.name.clone())
            .zip(totals)
            .collect();
        self.history.push_back(Sample {
            at: Instant::now(),
            totals,
            conns,
        });
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        self.observe()
    }

    pub(super) fn channels(&mut self) -> Result<ChannelsReport> {
        let taken_unix_ms = crate::clock::unix_ms();
        let totals = self.totals()?;
        let conns = self.pool_counts()?;
        let g = self.dp.global_counters()?;
        let n = self.history.len();
        let window = if n >= 2 {
            Some((&self.history[n - 2], &self.history[n - 1]))
        } else {
            None
        };
        let rows = self
            .policy
            .channels
            .iter()
            .zip(totals)
            .map(|(c, t)| {
                let rates = window
                    .and_then(|(a, b)| {
                        let (ta, tb) = (a.totals.get(&c.name)?, b.totals.get(&c.name)?);
                        let dt = (b.at - a.at).as_secs_f64();
                        let r = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
                        let delayed = tb.delayed_pkts.saturating_sub(ta.delayed_pkts);
                        Some(Rates {
                            passed_bps: 8.0 * r(ta.passed_bytes, tb.passed_bytes),
                            passed_pps: r(ta.passed_pkts, tb.passed_pkts),
                            dropped_bps: 8.0 * r(ta.dropped_bytes, tb.dropped_bytes),
                            dropped_pps: r(ta.dropped_pkts, tb.dropped_pkts),
                            would_drop_bps: 8.0 * r(ta.would_drop_bytes, tb.would_drop_bytes),
                            marked_pps: r(ta.marked_pkts, tb.marked_pkts),
                            delay_ms: if delayed == 0 {
                                0.0
                            } else {
                                tb.delay_ns.saturating_sub(ta.delay_ns) as f64
                                    / delayed as f64
                                    / 1e6
                            },
                        })
                    })
                    .unwrap_or_default();
                let connections = conn_row(c, conns.get(&c.name), window);
                ChannelRow {
                    connections,
                    name: c.name.clone(),
                    direction: c.direction,
                    protocol: c.protocol,
                    mode: c.mode,
                    action: c.action,
                    limit: c.limit,
                    totals: t,
                    rates,
                }
            })
            .collect();
        Ok(ChannelsReport {
            version: self.version,
            generation: self.generation,
            rate_window_s: window.map_or(0.0, |(a, b)| (b.at - a.at).as_secs_f64()),
            taken_unix_ms,
            channels: rows,
            unnamed_channels: self.unnamed_channels(),
            node: g,
        })
    }

    pub(super) fn status(&self) -> StatusReport {
        StatusReport {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            kernel: sys::kernel_release(),
            features: self.features.clone(),
            fq_on: self.fq_installed.clone(),
            hooks: self
                .hooks
                .iter()
                .map(|h| HookRow {
                    iface: h.iface.clone(),
                    hook: h.kind,
                    mechanism: h.mechanism,
                    replaced: h.replaced,
                })
                .collect(),
            version: self.version,
            generation: self.generation,
            state: self.state_check.clone(),
            unnamed_channels: self.unnamed_channels(),
            channels: self.policy.channels.len(),
            policy_file: self.policy_file.clone(),
            pin_dir: self.config.pin_dir.display().to_string(),
            socket: self.config.socket.display().to_string(),
            connections: self
                .pools
                .status(self.conn_table_size, &self.config.conn_timeouts),
        }
    }
}

/// A channel's connection row: counts now, rates over the window.
fn conn_row(
    c: &crate::policy::Channel,
    now: Option<&PoolCounts>,
    window: Option<(&Sample, &Sample)>,
) -> ConnRow {
    let Some(n) = now else {
        return ConnRow {
            connection_limit: c.limit.connections,
            ..Default::default()
        };
    };
    let p = &n.pool;
    let mut row = ConnRow {
        open_connections: n.open(),
        connection_limit: c.limit.connections,
        opened_connections: p.opened,
        // In monitor mode a full table refuses nothing: not a refusal.
        refused_connections: p.refused
            + if c.mode == crate::policy::Mode::Enforce {
                p.table_full
            } else {
                0
            },
        table_full_connections: p.table_full,
        would_refuse_connections: p.would_refuse,
        handshake_rtt_max_us: (p.rtt_count > 0).then(|| p.rtt_max_ns as f64 / 1e3),
        ..Default::default()
    };
    if let Some((a, b)) = window {
        if let (Some(x), Some(y)) = (a.conns.get(&c.name), b.conns.get(&c.name)) {
            let dt = (b.at - a.at).as_secs_f64();
            let (x, y) = (&x.pool, &y.pool);
            let d = |u: u64, v: u64| v.saturating_sub(u);
            row.new_connections_per_s = d(x.opened, y.opened) as f64 / dt;
            row.refused_per_s = (d(
                x.refused + x.table_full + x.would_refuse,
                y.refused + y.table_full + y.would_refuse,
            )) as f64
                / dt;
            let count = d(x.rtt_count, y.rtt_count);
            if count > 0 {
                row.handshake_rtt_us =
                    Some(d(x.rtt_sum_ns, y.rtt_sum_ns) as f64 / count as f64 / 1e3);
            }
        }
    }
    row
}
