//! The agent's pinned connection table as a test reads it when a count
//! does not come out as expected: which connections still count, in what
//! state, idle for how long. A failure message then says why.

use std::{fmt::Write, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use tc_agent::datapath::{conn::monotonic_ns, MAPS_LAYOUT};
use tc_common::{
    ConnEntry, ConnKey, CONNS, CONN_CLOSED, CONN_CLOSING, CONN_ESTABLISHED, CONN_SYN_RECV,
    CONN_SYN_SENT,
};

/// The entries of the connection table pinned under `pin_dir` that still
/// count as open, one line each (at most `max`), after a line with the
/// table's size and how many count.
pub fn counted(pin_dir: &Path, max: usize) -> Result<String> {
    let path = pin_dir.join(MAPS_LAYOUT).join(CONNS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let table: HashMap<MapData, ConnKey, ConnEntry> = HashMap::try_from(Map::HashMap(data))?;
    let now = monotonic_ns();
    let (mut total, mut open, mut out) = (0usize, 0usize, String::new());
    for item in table.iter() {
        let (k, e) = item?;
        total += 1;
        if e.counted == 0 {
            continue;
        }
        open += 1;
        if open <= max {
            let (client, server) = if e.client_is_a != 0 {
                ((k.a, k.a_port), (k.b, k.b_port))
            } else {
                ((k.b, k.b_port), (k.a, k.a_port))
            };
            let _ = writeln!(
                out,
                "  {} -> {} pool {} {} fins {:#x} client_seq {} client_ack {} idle {:.1}s age {:.1}s",
                endpoint(client),
                endpoint(server),
                e.pool,
                state_name(e.state),
                e.fins,
                e.client_seq,
                e.client_ack,
                now.saturating_sub(e.last_ns) as f64 / 1e9,
                now.saturating_sub(e.syn_ns) as f64 / 1e9,
            );
        }
    }
    Ok(format!(
        "{total} entries, {open} counted{}\n{out}",
        if open > max {
            format!(" (first {max})")
        } else {
            String::new()
        }
    ))
}

fn endpoint((addr, port): ([u8; 16], u16)) -> String {
    let ip = IpAddr::from(addr).to_canonical();
    let port = u16::from_be(port);
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        CONN_SYN_SENT => "SYN_SENT",
        CONN_SYN_RECV => "SYN_RECV",
        CONN_ESTABLISHED => "ESTABLISHED",
        CONN_CLOSING => "CLOSING",
        CONN_CLOSED => "CLOSED",
        _ => "?",
    }
}
