//! `tc-agent map`: who talks to whom, at what rate, over the last seconds.

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::{
    control::{request, MapReport, Request},
    policy::units::Rate,
};

/// The interaction map: one row per (from, to, protocol, port) over the
/// last 5 seconds, busiest first.
///
/// `from` is the clients' side, `to` the servers': for TCP the side that
/// sent the SYN is the client; otherwise the side with the higher port
/// (the lower one is the well-known, listening one); without ports, the
/// sender. Each side is named by the most specific endpoint set of the live
/// policy that holds the address (ties: the first set in the file), else
/// shown as the address (IPv4) or its /64 (IPv6); `other` holds sources
/// the kernel did not track one by one (during a flood) and addresses past
/// `run --max-unnamed`. Rates are wire bits and packets per second, each
/// way; for TCP also open connections (answered handshakes minus closes as
/// this node saw them), new connections per second (client SYNs), the mean
/// handshake time (SYN to SYN-ACK as this node saw them) and resets per
/// second. A node that forwards counts each packet once.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract: window_s, interactions[].from, to, protocol,
    /// port, request_bps, request_pps, response_bps, response_pps,
    /// open_connections, new_connections_per_s, handshake_rtt_us,
    /// resets_per_s).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: MapArgs, socket: &std::path::Path) -> Result<()> {
    let data = request(socket, &Request::Map)?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: MapReport = serde_json::from_value(data)?;
    print!("{}", render(&r));
    Ok(())
}

/// The text table, also used by the demo.
pub fn render(r: &MapReport) -> String {
    let mut out = format!(
        "interactions over {:.1}s ({} of {} table entries{})\n{:<22} {:<22} {:<10} {:>13} {:>11} {:>13} {:>11} {:>6} {:>7} {:>9} {:>7}\n",
        r.window_s,
        r.table.entries,
        r.table.size,
        if r.table.admit_threshold_bytes > 0 {
            format!(
                ", admitting sources above {} B/s",
                r.table.admit_threshold_bytes
            )
        } else {
            String::new()
        },
        "FROM",
        "TO",
        "PROTO/PORT",
        "REQUEST",
        "REQ pps",
        "RESPONSE",
        "RESP pps",
        "OPEN",
        "NEW/s",
        "HANDSHAKE",
        "RST/s"
    );
    if r.interactions.is_empty() {
        out.push_str("(no traffic in the window)\n");
    }
    for i in &r.interactions {
        let port = if i.port == 0 {
            i.protocol.clone()
        } else {
            format!("{}/{}", i.protocol, i.port)
        };
        out.push_str(&format!(
            "{:<22} {:<22} {:<10} {:>13} {:>11.1} {:>13} {:>11.1} {:>6} {:>7.1} {:>9} {:>7.1}\n",
            i.from,
            i.to,
            port,
            format!("{}/s", Rate(i.request_bps)),
            i.request_pps,
            format!("{}/s", Rate(i.response_bps)),
            i.response_pps,
            i.open_connections,
            i.new_connections_per_s,
            i.handshake_rtt_us
                .map_or("-".to_string(), |us| format!("{:.0}us", us)),
            i.resets_per_s,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::InteractionRow;

    #[test]
    fn renders_rows_with_rates_and_handshake() {
        let r = MapReport {
            window_s: 5.0,
            interactions: vec![InteractionRow {
                from: "clients".into(),
                to: "web".into(),
                protocol: "tcp".into(),
                port: 80,
                request_bps: 12.5e6,
                request_pps: 1000.0,
                response_bps: 80e6,
                response_pps: 7000.0,
                open_connections: 12,
                new_connections_per_s: 40.0,
                handshake_rtt_us: Some(312.0),
                resets_per_s: 0.0,
            }],
            ..Default::default()
        };
        let t = render(&r);
        assert!(t.contains("clients"), "{t}");
        assert!(t.contains("tcp/80"), "{t}");
        assert!(t.contains("12.5Mbit/s"), "{t}");
        assert!(t.contains("312us"), "{t}");
    }
}
