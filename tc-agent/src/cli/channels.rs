//! `tc-agent channels`: per-channel counters, live rates and limits.

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::{
    control::{request, ChannelsReport, Request},
    policy::{units::Rate, Action, Mode},
};

/// List channels in policy order with their limits, live rates (from the
/// agent's last two counter samples) and total counters since they were
/// first applied. Channels with connection limits get a second table: open
/// connections against the limit, new and refused connections per second,
/// and the handshake time (from the client's first SYN until the handshake
/// completes as this node sees it).
#[derive(Debug, Args)]
pub struct ChannelsArgs {
    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: ChannelsArgs, socket: &std::path::Path) -> Result<()> {
    let data = request(socket, &Request::Channels)?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: ChannelsReport = serde_json::from_value(data)?;
    print!("{}", render(&r, crate::clock::unix_ms()));
    Ok(())
}

/// Says how old the counters are when they were read more than a second
/// before `now_ms` (Unix ms): a busy agent answers from its last sample (see
/// `taken_unix_ms`). Nothing for a fresh report or an agent without the stamp.
fn age_note(taken_unix_ms: u64, now_ms: u64) -> String {
    let age_ms = now_ms.saturating_sub(taken_unix_ms);
    if taken_unix_ms == 0 || age_ms <= 1000 {
        return String::new();
    }
    format!(
        ", counters read {:.1}s ago (the agent was busy)",
        age_ms as f64 / 1000.0
    )
}

/// The text table; `now_ms` (Unix ms) dates the report's counters.
pub fn render(r: &ChannelsReport, now_ms: u64) -> String {
    let mut out = format!(
        "policy version {}, rates over {:.1}s{}\n{:<20} {:<8} {:<22} {:<8} {:>11} {:>11} {:>11} {:>12} {:>12} {:>10}\n",
        r.version, r.rate_window_s, age_note(r.taken_unix_ms, now_ms), "CHANNEL", "DIR", "LIMIT", "MODE", "PASS", "DROP", "PASS pps", "PASSED pkts", "DROPPED pkts", "ACTION"
    );
    for c in &r.channels {
        let mut limit = Vec::new();
        if let Some(b) = c.limit.bandwidth_bps {
            limit.push(Rate(b as f64).to_string());
        }
        if let Some(p) = c.limit.packets {
            limit.push(format!("{p}pps"));
        }
        if let Some(n) = c.limit.connections {
            limit.push(format!("{n}conns"));
        }
        if let Some(n) = c.limit.new_connections {
            limit.push(format!("{n}new/s"));
        }
        let limit = if limit.is_empty() {
            "-".to_string()
        } else {
            limit.join(" ")
        };
        let (drop_rate, dropped) = match c.mode {
            Mode::Enforce => (c.rates.dropped_bps, c.totals.dropped_pkts),
            Mode::Monitor => (c.rates.would_drop_bps, c.totals.would_drop_pkts),
        };
        out.push_str(&format!(
            "{:<20} {:<8} {:<22} {:<8} {:>11} {:>11} {:>11.0} {:>12} {:>12} {:>10}\n",
            c.name,
            format!("{:?}", c.direction).to_lowercase(),
            limit,
            format!("{:?}", c.mode).to_lowercase(),
            Rate(c.rates.passed_bps).to_string(),
            Rate(drop_rate).to_string(),
            c.rates.passed_pps,
            c.totals.passed_pkts,
            dropped,
            match c.action {
                Action::Drop => "drop".to_string(),
                Action::Delay => format!("delay {:.1}ms", c.rates.delay_ms),
                Action::Mark => format!("mark {:.0}/s", c.rates.marked_pps),
            },
        ));
    }
    let limited: Vec<_> = r
        .channels
        .iter()
        .filter(|c| c.limit.limits_connections())
        .collect();
    if !limited.is_empty() {
        out.push_str(&format!(
            "connections:\n{:<20} {:>11} {:>8} {:>10} {:>10} {:>10} {:>22}\n",
            "CHANNEL", "OPEN/LIMIT", "NEW/s", "OPENED", "REFUSED", "REFUSED/s", "HANDSHAKE (max)"
        ));
        for c in limited {
            let k = &c.connections;
            let limit = k
                .connection_limit
                .map_or("-".to_string(), |l| l.to_string());
            let refused = match c.mode {
                Mode::Enforce => k.refused_connections,
                Mode::Monitor => k.would_refuse_connections,
            };
            let ms = |us: f64| format!("{:.2}ms", us / 1e3);
            let handshake = match (k.handshake_rtt_us, k.handshake_rtt_max_us) {
                (Some(now), Some(max)) => format!("{} ({})", ms(now), ms(max)),
                (None, Some(max)) => format!("- ({})", ms(max)),
                _ => "-".to_string(),
            };
            out.push_str(&format!(
                "{:<20} {:>11} {:>8.1} {:>10} {:>10} {:>10.1} {:>22}\n",
                c.name,
                format!("{}/{}", k.open_connections, limit),
                k.new_connections_per_s,
                k.opened_connections,
                refused,
                k.refused_per_s,
                handshake,
            ));
        }
    }
    if r.unnamed_channels > 0 {
        out.push_str(&format!(
            "WARNING: the kernel enforces {} channels the agent cannot name (see `tc-agent status`); apply a policy to take them over\n",
            r.unnamed_channels
        ));
    }
    let n = &r.node;
    out.push_str(&format!(
        "node: {} packets seen, {} unclassified, {} non-IP, {} malformed, {} fail-open\n",
        n.seen_pkts, n.unclassified_pkts, n.non_ip_pkts, n.malformed_pkts, n.fail_open_pkts
    ));
    out.push_str(&format!(
        "      {} later fragments ({} orphans), {} without readable ports (held conservatively)\n",
        n.fragment_pkts, n.fragment_orphan_pkts, n.no_ports_pkts
    ));
    out.push_str(&format!(
        "      flow cache: {} hits, {} misses, {} flows admitted\n",
        n.flow_hits, n.flow_misses, n.flow_inserts
    ));
    if n.conn_untracked_pkts + n.conn_after_close_pkts > 0 {
        out.push_str(&format!(
            "      {} packets of connections not tracked (opened before a limit, or timed out), {} dropped after a reset\n",
            n.conn_untracked_pkts, n.conn_after_close_pkts
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::age_note;

    #[test]
    fn only_a_report_older_than_a_second_says_its_age() {
        assert_eq!(age_note(10_000, 11_000), "");
        assert_eq!(age_note(0, 10_000), "", "an agent without the stamp");
        assert_eq!(age_note(10_000, 9_000), "", "a clock that stepped back");
        assert_eq!(
            age_note(10_000, 12_500),
            ", counters read 2.5s ago (the agent was busy)"
        );
    }
}
