//! `tc-agent top-talkers`: the single source addresses sending the most.

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::{
    control::{request, Request, TopTalkersReport},
    policy::units::Rate,
};

/// Single source addresses by the traffic they sent over the last 5
/// seconds, busiest first, with their share of all traffic to the same
/// destinations.
///
/// A source is a packet's sender: a client's requests and a server's
/// responses both count. The shares include sources too small to be
/// tracked one by one during a flood (shown together as `other`), so a
/// flood from 100,000 addresses still names its heavy sources and their
/// true share.
#[derive(Debug, Args)]
pub struct TopTalkersArgs {
    /// Only traffic to this endpoint set of the live policy, CIDR or address.
    #[arg(long, value_name = "SET|CIDR")]
    pub to: Option<String>,

    /// Only sources in this endpoint set, CIDR or address.
    #[arg(long, value_name = "SET|CIDR")]
    pub from: Option<String>,

    /// How many sources to list.
    #[arg(short = 'n', long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub n: u64,

    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract: window_s, talkers[].source, bps, pps, share).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: TopTalkersArgs, socket: &std::path::Path) -> Result<()> {
    let data = request(
        socket,
        &Request::TopTalkers {
            to: args.to,
            from: args.from,
            n: args.n as usize,
        },
    )?;
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: TopTalkersReport = serde_json::from_value(data)?;
    print!("{}", render(&r));
    Ok(())
}

/// The text table, also used by the demo.
pub fn render(r: &TopTalkersReport) -> String {
    let mut out = format!(
        "top talkers over {:.1}s\n{:<40} {:>13} {:>11} {:>7}\n",
        r.window_s, "SOURCE", "RATE", "pps", "SHARE"
    );
    if r.talkers.is_empty() {
        out.push_str("(no traffic in the window)\n");
    }
    for t in &r.talkers {
        out.push_str(&format!(
            "{:<40} {:>13} {:>11.1} {:>6.1}%\n",
            t.source,
            format!("{}/s", Rate(t.bps)),
            t.pps,
            100.0 * t.share
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Talker;

    #[test]
    fn renders_sources_with_shares() {
        let r = TopTalkersReport {
            window_s: 5.0,
            talkers: vec![Talker {
                source: "198.18.10.50".into(),
                bps: 40e6,
                pps: 3500.0,
                share: 0.42,
            }],
        };
        let t = render(&r);
        assert!(t.contains("198.18.10.50"), "{t}");
        assert!(t.contains("42.0%"), "{t}");
    }
}
