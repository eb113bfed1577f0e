//! `tc-agent history`: one channel's or interaction's metrics over time.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::control::{request, HistoryReport, Request};

/// Sparkline columns when the terminal's width is unknown (and for the demo).
const DEFAULT_COLUMNS: usize = 60;
/// Sparkline bars, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// The agent keeps this much history, seconds.
const MAX_SINCE_S: u64 = 86_400;
/// Width of the `min … last … max` columns after a sparkline.
const STATS_WIDTH: usize = 50;

/// Show how a channel or an interaction behaved over time: one sparkline
/// per metric, oldest on the left, then its min, last and max.
///
/// NAME is a channel (as `tc-agent channels` lists it) or an interaction
/// `FROM->TO` between endpoint sets (as `tc-agent map` names them; quote it,
/// since the shell reads `>` as a redirection): `tc-agent history
/// 'clients->api' --since 2h`.
///
/// The agent keeps a point every second for the last 15 minutes and a point
/// every minute (the mean of its seconds) for the last 24 hours, each value
/// to 1%. A blank column is a gap: the agent recorded nothing then (the
/// channel was not in the policy, the interaction was idle, or the agent
/// was not running).
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// A channel name, or `FROM->TO` for an interaction between endpoint sets.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// How far back: e.g. `90s`, `5m`, `15m`, `2h`, `24h` (at most). Up to
    /// 15m the points are a second apart, beyond that a minute apart.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_since)]
    pub since: u64,

    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract: `{"step_s": 1, "points": [{"t": <unix
    /// seconds>, <metric>: <value or null>, ...}], ...}`).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: HistoryArgs, socket: &Path) -> Result<()> {
    let req = Request::History {
        name: args.name,
        since_s: args.since,
    };
    let data = request(socket, &req)?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: HistoryReport = serde_json::from_value(data)?;
    // As wide as the terminal allows; the default width when piped.
    let columns = terminal_columns()
        .map(|width| width.saturating_sub(label_width(&r) + STATS_WIDTH + 2))
        .filter(|&c| c >= 10);
    match columns {
        Some(columns) => print!("{}", render_columns(&r, columns)),
        None => print!("{}", render(&r)),
    }
    Ok(())
}

/// Parses `--since`: a whole number of seconds, minutes, hours (or `1d`).
fn parse_since(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{s}`: give a whole number and a unit (s, m, h or d), e.g. 90s, 15m, 2h or 24h"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` does not start with a whole number, e.g. 15m"))?;
    match n.checked_mul(unit_s) {
        Some(0) => Err(format!("`{s}` must be greater than zero")),
        Some(since) if since <= MAX_SINCE_S => Ok(since),
        _ => Err(format!(
            "`{s}` is more than the 24h the agent keeps; use at most 24h"
        )),
    }
}

/// The terminal's width on standard output, if it is a terminal.
fn terminal_columns() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, which points
    // to a live one; on a non-terminal it fails and writes nothing.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The text view at the default width, also used by the demo.
pub fn render(r: &HistoryReport) -> String {
    render_columns(r, DEFAULT_COLUMNS)
}

fn label_width(r: &HistoryReport) -> usize {
    r.metrics
        .iter()
        .map(|m| m.chars().count())
        .max()
        .unwrap_or(0)
}

/// The text view with sparklines of at most `columns` columns.
fn render_columns(r: &HistoryReport, columns: usize) -> String {
    let span = r.points.len() as u64 * r.step_s;
    let mut out = format!(
        "{}: last {}, a point every {} ({} points)\n",
        r.name,
        duration(span),
        if r.step_s == 1 { "second" } else { "minute" },
        r.points.len()
    );
    let label = label_width(r);
    for metric in &r.metrics {
        let values: Vec<Option<f64>> = r
            .points
            .iter()
            .map(|p| p.get(metric).and_then(|v| v.as_f64()))
            .collect();
        let line = sparkline(&values, columns);
        let present = values.iter().flatten().copied();
        let min = present.clone().reduce(f64::min);
        let max = present.clone().reduce(f64::max);
        let last = present.last();
        let stats = match (min, last, max) {
            (Some(min), Some(last), Some(max)) => format!(
                "min {:>11}  last {:>11}  max {:>11}",
                human(metric, min),
                human(metric, last),
                human(metric, max)
            ),
            _ => "no values".to_string(),
        };
        out.push_str(&format!("{metric:<label$}  {line}  {stats}\n"));
    }
    out.push_str(&format!(
        "(the agent's history holds {:.1} MiB, {:.2} bytes a point)\n",
        r.store_bytes as f64 / f64::from(1 << 20),
        r.bytes_per_point
    ));
    out
}

/// One bar per column: the points resampled to at most `columns` (each
/// column the mean of its points), scaled from the smallest to the largest;
/// a column without values is blank.
fn sparkline(values: &[Option<f64>], columns: usize) -> String {
    let n = values.len();
    let columns = columns.min(n).max(1);
    let cells: Vec<Option<f64>> = (0..columns)
        .map(|c| {
            let bucket = &values[c * n / columns..(c + 1) * n / columns];
            let present: Vec<f64> = bucket.iter().flatten().copied().collect();
            (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
        })
        .collect();
    let present = cells.iter().flatten().copied();
    let (Some(lo), Some(hi)) = (present.clone().reduce(f64::min), present.reduce(f64::max)) else {
        return " ".repeat(columns);
    };
    cells
        .iter()
        .map(|cell| match *cell {
            None => ' ',
            Some(_) if hi == lo => BARS[if hi == 0.0 { 0 } else { 3 }],
            Some(v) => BARS[((v - lo) / (hi - lo) * 7.0).round() as usize],
        })
        .collect()
}

/// A value with its unit, read from the metric's name: `_bps` bits per
/// second, `_pps` packets per second, `_per_s` per second, `_us`
/// microseconds; anything else a plain number.
fn human(metric: &str, v: f64) -> String {
    if metric.ends_with("_bps") {
        let (x, prefix) = si(v);
        format!("{x} {prefix}bit/s")
    } else if metric.ends_with("_pps") {
        let (x, prefix) = si(v);
        format!("{x}{prefix} pkt/s")
    } else if metric.ends_with("_per_s") {
        let (x, prefix) = si(v);
        format!("{x}{prefix}/s")
    } else if metric.ends_with("_us") {
        if v.abs() >= 1e6 {
            format!("{} s", three(v / 1e6))
        } else if v.abs() >= 1e3 {
            format!("{} ms", three(v / 1e3))
        } else {
            format!("{} µs", three(v))
        }
    } else {
        let (x, prefix) = si(v);
        format!("{x}{prefix}")
    }
}

/// `v` scaled to an SI prefix (k, M, G, T), to three significant digits.
fn si(v: f64) -> (String, &'static str) {
    const PREFIXES: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, prefix) in PREFIXES {
        if v.abs() >= scale {
            return (three(v / scale), prefix);
        }
    }
    (three(v), "")
}

/// Three significant digits (whole numbers as they are).
fn three(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 || (v == v.round() && a >= 1.0) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A span in the unit `--since` takes.
fn duration(s: u64) -> String {
    if s.is_multiple_of(3_600) {
        format!("{}h", s / 3_600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(step_s: u64, n: usize, value: impl Fn(usize) -> Option<f64>) -> HistoryReport {
        let points = (0..n)
            .map(|i| {
                let mut p = serde_json::Map::new();
                p.insert("t".into(), (1_700_000_000 + i as u64 * step_s).into());
                p.insert("passed_bps".into(), value(i).into());
                p.insert("handshake_rtt_us".into(), value(i).map(|v| v / 1e4).into());
                p.insert("dropped_pps".into(), 0.0.into());
                p
            })
            .collect();
        HistoryReport {
            name: "web".into(),
            step_s,
            metrics: vec![
                "passed_bps".into(),
                "handshake_rtt_us".into(),
                "dropped_pps".into(),
            ],
            points,
            store_bytes: 16 << 20,
            bytes_per_point: 0.6,
        }
    }

    #[test]
    fn renders_sparklines_with_units() {
        // A ramp from 1 to 12.3 Mbit/s over 15 minutes, with a 2-minute gap.
        let r = report(1, 900, |i| {
            (!(300..420).contains(&i)).then(|| 1e6 + 11.3e6 * i as f64 / 899.0)
        });
        let text = render(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "web: last 15m, a point every second (900 points)");
        let spark = |line: &str| -> String {
            line.chars()
                .skip("handshake_rtt_us  ".chars().count())
                .take(DEFAULT_COLUMNS)
                .collect()
        };
        let bps = spark(lines[1]);
        assert!(lines[1].starts_with("passed_bps        ▁"), "{text}");
        assert_eq!(bps.chars().last(), Some('█'));
        assert_eq!(
            bps.chars().filter(|&c| c == ' ').count(),
            8,
            "the gap: {bps:?}"
        );
        assert!(
            lines[1].ends_with("min    1 Mbit/s  last 12.3 Mbit/s  max 12.3 Mbit/s"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("min      100 µs  last     1.23 ms  max     1.23 ms"),
            "{}",
            lines[2]
        );
        assert_eq!(spark(lines[3]), "▁".repeat(DEFAULT_COLUMNS));
        assert!(
            lines[3].ends_with("min     0 pkt/s  last     0 pkt/s  max     0 pkt/s"),
            "{}",
            lines[3]
        );
        assert_eq!(
            lines[4],
            "(the agent's history holds 16.0 MiB, 0.60 bytes a point)"
        );

        // Fewer points than columns: one column a point; no values at all.
        let r = report(60, 20, |i| (i % 2 == 0).then_some(5.0));
        let text = render(&r);
        assert!(text.starts_with("web: last 20m, a point every minute (20 points)\n"));
        assert!(
            text.contains(
                "passed_bps        ▄ ▄ ▄ ▄ ▄ ▄ ▄ ▄ ▄ ▄   min     5 bit/s  last     5 bit/s"
            ),
            "{text}"
        );
        let r = report(60, 1440, |_| None);
        assert!(render(&r).contains(&format!("{}  no values", " ".repeat(60))));
    }

    #[test]
    fn since_takes_durations_up_to_a_day() {
        assert_eq!(parse_since("90s"), Ok(90));
        assert_eq!(parse_since("5m"), Ok(300));
        assert_eq!(parse_since("15m"), Ok(900));
        assert_eq!(parse_since("2h"), Ok(7_200));
        assert_eq!(parse_since("24h"), Ok(86_400));
        assert_eq!(parse_since("1d"), Ok(86_400));
        assert!(parse_since("2d").unwrap_err().contains("at most 24h"));
        assert!(parse_since("25h").unwrap_err().contains("at most 24h"));
        assert!(parse_since("0m").unwrap_err().contains("greater than zero"));
        assert!(parse_since("15").unwrap_err().contains("unit"));
        assert!(parse_since("1.5h").unwrap_err().contains("unit"));
        assert!(parse_since("h").unwrap_err().contains("whole number"));
        assert!(parse_since("99999999999999999999h").is_err());
    }

    #[test]
    fn units_follow_the_metric_name() {
        assert_eq!(human("request_bps", 12.3e6), "12.3 Mbit/s");
        assert_eq!(human("request_bps", 950.0), "950 bit/s");
        assert_eq!(human("request_pps", 1_234.0), "1.23k pkt/s");
        assert_eq!(human("resets_per_s", 0.5), "0.50/s");
        assert_eq!(human("handshake_rtt_us", 350.0), "350 µs");
        assert_eq!(human("handshake_rtt_us", 2.5e6), "2.50 s");
        assert_eq!(human("open_connections", 42.0), "42");
    }
}
