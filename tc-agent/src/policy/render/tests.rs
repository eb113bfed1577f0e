//! Round trips: a policy rendered and parsed again is the same policy.

use std::{net::IpAddr, path::Path};

use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::policy::{fuzz, Policy};

/// Renders `p`, parses the text, and checks that it reads back to `p` and
/// renders to the same text again. Returns the text.
fn round_trip(p: &Policy) -> String {
    let text = render(p);
    let back = Policy::parse(&text, "rendered.yaml")
        .unwrap_or_else(|e| panic!("the rendered policy does not validate: {e}\n{text}"));
    assert_eq!(back.endpoints, p.endpoints, "endpoints differ:\n{text}");
    assert_eq!(back.channels.len(), p.channels.len(), "{text}");
    for (a, b) in back.channels.iter().zip(&p.channels) {
        assert_eq!(a, b, "channel `{}` differs:\n{text}", b.name);
    }
    assert_eq!(render(&back), text, "rendering is not stable");
    text
}

/// Parses `text` (which must be valid) and checks its round trip.
fn text_round_trip(text: &str) -> String {
    let p = Policy::parse(text, "given.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    round_trip(&p)
}

#[test]
fn the_documented_example_and_the_fuzz_corpus() {
    for text in fuzz::CORPUS {
        text_round_trip(text);
    }
    let readme = include_str!("../../../../README.md");
    let block = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README shows a policy file");
    // The README shows every key at once, `horizon` beside `action: drop`
    // to document it; without that line the example is a valid policy.
    let block = block.replace("    horizon: 50ms", "    #");
    let out = text_round_trip(&block);
    // Sets by name, defaults left out, units as an operator writes them.
    assert!(out.contains("    from: web\n    to: db\n"), "{out}");
    assert!(
        out.contains("  web: [198.18.1.0/24, \"2001:db8:1::/64\"]\n"),
        "{out}"
    );
    assert!(out.contains("      bandwidth: 20Mbit\n"), "{out}");
    assert!(out.contains("    ports: [5432, \"8000-8100\"]\n"), "{out}");
    assert!(!out.contains("direction: ingress"), "{out}");
}

/// The string literals of a Rust file (plain and raw), unescaped.
fn literals(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            '/' if b.get(i + 1) == Some(&'/') => {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            }
            '\'' => {
                // A char literal ('"', '\\', '\'') or a lifetime.
                if b.get(i + 1) == Some(&'\\') {
                    i += 3;
                    while i < b.len() && b[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            'r' if matches!(b.get(i + 1), Some('#' | '"'))
                && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_')) =>
            {
                let hashes = b[i + 1..].iter().take_while(|c| **c == '#').count();
                if b.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = i + 2 + hashes;
                let close: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let rest: String = b[start..].iter().collect();
                let Some(end) = rest.find(&close) else { break };
                out.push(rest[..end].to_string());
                i = start + rest[..end].chars().count() + close.len();
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != '"' {
                    if b[i] == '\\' {
                        i += 1;
                        match b.get(i) {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some('0') => s.push('\0'),
                            Some('\n') => {
                                while b.get(i + 1).is_some_and(|c| c.is_whitespace()) {
                                    i += 1;
                                }
                            }
                            Some(c) => s.push(*c),
                            None => {}
                        }
                    } else {
                        s.push(b[i]);
                    }
                    i += 1;
                }
                i += 1;
                out.push(s);
            }
            _ => i += 1,
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every policy the repository writes in its tests, benchmarks and demo
/// (string literals holding `channels:` that validate): each renders back
/// to itself.
#[test]
fn every_policy_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["tc-agent/src", "tests", "xtask/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "the repository's sources were not found");
    let (mut seen, mut accepted) = (0, 0);
    for f in &files {
        let src = std::fs::read_to_string(f).expect("readable source");
        for lit in literals(&src) {
            if !lit.contains("channels:") {
                continue;
            }
            seen += 1;
            if let Ok(p) = Policy::parse(&lit, "repo.yaml") {
                round_trip(&p);
                accepted += 1;
            }
        }
    }
    println!(
        "{seen} policy texts in the repository, {accepted} valid, each rendered back to itself"
    );
    // Most texts are valid policies; the rest are the refusal tests' bad
    // files and format strings. A scanner that found none would pass vacuously.
    assert!(accepted >= 40, "only {accepted} of {seen} policies found");
}

#[test]
fn edge_cases() {
    let cases = [
        "channels: []\n",
        // IPv6, bare addresses, port ranges, egress, monitor.
        r#"
endpoints:
  v6: ["2001:db8::/32", "2001:db8:1::1"]
  mixed: [198.18.0.1, "::/0", 0.0.0.0/0]
  everything: ["::/0", 0.0.0.0/0]
channels:
  - name: six
    from: v6
    to: ["2001:db8:2::/48", 198.19.0.0/16]
    protocol: udp
    ports: [53, "1-1024", "1000-2000", 65535]
    direction: egress
    limit: {bandwidth: 1234567bit, packets: 3, packet_burst: 64}
    mode: monitor
  - name: any-via-set
    from: everything
  - name: almost-any
    from: mixed
  - name: union
    from: [v6, 198.18.0.1]
    to: [198.19.0.0/16, v6]
"#,
        // Delay with a horizon, mark, default and odd bursts.
        r#"
channels:
  - name: paced
    direction: egress
    action: delay
    horizon: 1500us
    limit: {bandwidth: 1.5Gbit, burst: 100000}
  - name: paced-default
    direction: egress
    action: delay
    limit: {bandwidth: 8kbit}
  - name: marked
    action: mark
    limit: {packets: 100000000, packet_burst: 100000000, bandwidth: 400Gbit, burst: 1GiB}
"#,
        // Connection limits with reset; connection limits alone.
        r#"
channels:
  - name: conns
    protocol: tcp
    ports: [443]
    limit: {connections: 20, new_connections: 50, new_connection_burst: 1}
    connection_action: reset
  - name: conns-only
    protocol: tcp
    limit: {new_connections: 1000000}
  - name: "1.5"
    protocol: icmp
  - name: "null"
  - name: "yes"
  - name: "-dash"
  - name: 0x10
  - name: "1e3"
"#,
    ];
    for text in cases {
        text_round_trip(text);
    }
    let out = text_round_trip(cases[1]);
    assert!(out.contains("    from: v6\n"), "{out}");
    // A set holding both "any" prefixes is any: left out, not named.
    assert!(
        out.contains("  - name: any-via-set\n  - name: almost-any\n    from: mixed\n"),
        "{out}"
    );
    assert!(out.contains("bandwidth: 1234.567kbit"), "{out}");
    // A union of sets is written with their names; with a prefix no set
    // holds, as prefixes.
    assert!(out.contains("  - name: union\n    from: [198.18.0.1/32, \"2001:db8::/32\", \"2001:db8:1::1/128\"]\n    to: [198.19.0.0/16, \"2001:db8::/32\", \"2001:db8:1::1/128\"]\n"), "{out}");
    let out = text_round_trip(cases[2]);
    assert!(out.contains("    horizon: 1500us\n"), "{out}");
    assert!(out.contains("    horizon: 50ms\n"), "{out}");
    assert!(out.contains("burst: 100000\n"), "{out}");
}

#[test]
fn unions_of_sets_are_written_by_name() {
    let out = text_round_trip(
        r#"
endpoints:
  web: [198.18.1.0/24, "2001:db8:1::/64"]
  db: [198.18.2.10/32]
  inner: [198.18.1.0/24]
channels:
  - name: both
    from: [db, web]
    to: [inner, db]
"#,
    );
    assert!(
        out.contains("    from: [web, db]\n    to: [db, inner]\n"),
        "{out}"
    );
}

#[test]
fn units_are_exact() {
    for (bps, text) in [
        (8_000, "8kbit"),
        (20_000_000, "20Mbit"),
        (1_500_000_000, "1.5Gbit"),
        (400_000_000_000, "400Gbit"),
        (1_234_567, "1234.567kbit"),
        (8_001, "8.001kbit"),
        (999_999_999, "999999.999kbit"),
        (1_000_500_000, "1000.5Mbit"),
    ] {
        let r = rate(bps);
        assert_eq!(r, text);
        assert_eq!(crate::policy::units::parse_rate(&r), Ok(bps), "{r}");
    }
    assert_eq!(size(262_144), "256KiB");
    assert_eq!(size(100_000), "100000");
    assert_eq!(duration(50_000_000), "50ms");
    assert_eq!(duration(1_000_000_001), "1000000001ns");
}

/// Policies the fuzzer generates (every key, set references, flow and
/// block style, quoted and plain): parsed, rendered, parsed again.
#[test]
fn generated_policy_files_round_trip() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&fuzz::policy(true), |g| {
            let text = g.render();
            let p =
                Policy::parse(&text, "fuzz.yaml").expect("the fuzzer's valid policies are valid");
            round_trip(&p);
            Ok(())
        })
        .unwrap();
}

/// splitmix64, for models drawn from a proptest seed.
struct Rng(
    /// The state, advanced per draw.
    u64,
);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Names YAML would misread if written plain, and ordinary ones.
const TRICKY: [&str; 14] = [
    "null", "true", "No", "on", "1.5", "0x10", "1e3", "-a", ".inf", "~x", "web", "a.b-c_d", "123",
    "y",
];

fn name(rng: &mut Rng, set: bool) -> String {
    loop {
        let n = if rng.chance(40) {
            TRICKY[rng.range(0, TRICKY.len() as u64 - 1) as usize].to_string()
        } else {
            const CHARS: &[u8] = b"abcXYZ019._-";
            (0..rng.range(1, 12))
                .map(|_| CHARS[rng.range(0, CHARS.len() as u64 - 1) as usize] as char)
                .collect()
        };
        let valid = n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let address = n.parse::<IpAddr>().is_ok()
            || n.parse::<IpNet>().is_ok()
            || (n.contains('.') && n.chars().all(|c| c.is_ascii_digit() || c == '.'));
        if valid && !(set && address) {
            return n;
        }
    }
}

fn prefixes(rng: &mut Rng) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = (0..rng.range(1, 4))
        .map(|_| {
            let n: IpNet = if rng.chance(50) {
                let len = rng.range(0, 32) as u8;
                ipnet::Ipv4Net::new((rng.next() as u32).into(), len)
                    .expect("length")
                    .trunc()
                    .into()
            } else {
                let len = rng.range(0, 128) as u8;
                let a = u128::from(rng.next()) << 64 | u128::from(rng.next());
                ipnet::Ipv6Net::new(a.into(), len)
                    .expect("length")
                    .trunc()
                    .into()
            };
            n
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// A random validated policy model, every value drawn over its whole range.
fn model(rng: &mut Rng) -> Policy {
    let mut p = Policy::default();
    for _ in 0..rng.range(0, 3) {
        let n = name(rng, true);
        if !p.endpoints.iter().any(|(m, _)| *m == n) {
            let nets = prefixes(rng);
            p.endpoints.push((n, nets));
        }
    }
    let any = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    for _ in 0..rng.range(0, 6) {
        let n = name(rng, false);
        if p.channels.iter().any(|c| c.name == n) {
            continue;
        }
        let side = |rng: &mut Rng| match rng.range(0, 2) {
            0 => any.clone(),
            1 if !p.endpoints.is_empty() => p.endpoints
                [rng.range(0, p.endpoints.len() as u64 - 1) as usize]
                .1
                .clone(),
            _ => prefixes(rng),
        };
        let (from, to) = (side(rng), side(rng));
        let protocol =
            [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Any][rng.range(0, 3) as usize];
        let mut ports = Vec::new();
        if protocol != Protocol::Icmp && rng.chance(50) {
            for _ in 0..rng.range(1, 3) {
                let (a, b) = (rng.range(1, 65535) as u16, rng.range(1, 65535) as u16);
                ports.push(if rng.chance(50) {
                    (a, a)
                } else {
                    (a.min(b), a.max(b))
                });
            }
            ports.sort();
        }
        let action = [Action::Drop, Action::Delay, Action::Mark][rng.range(0, 2) as usize];
        let pacing = action == Action::Delay;
        let mut limit = Limit::default();
        let limited = action != Action::Drop || rng.chance(70);
        if limited {
            if rng.chance(60) || action != Action::Drop {
                let bps = rng.range(8_000, 400_000_000_000);
                // Round numbers too, as operators write them.
                let bps = if rng.chance(50) {
                    (bps / 1_000_000).max(1) * 1_000_000
                } else {
                    bps
                };
                limit.bandwidth_bps = Some(bps);
                limit.burst_bytes = if rng.chance(50) {
                    default_burst(bps, pacing)
                } else {
                    rng.range(MIN_BURST_BYTES, 1 << 30)
                };
            }
            if rng.chance(50) {
                let p = rng.range(1, 100_000_000);
                limit.packets = Some(p);
                limit.packet_burst = if rng.chance(50) {
                    default_packet_burst(p)
                } else {
                    rng.range(MIN_PACKET_BURST, 100_000_000)
                };
            }
            if protocol == Protocol::Tcp && rng.chance(50) {
                limit.connections = Some(rng.range(1, 1_000_000) as u32);
            }
            if protocol == Protocol::Tcp && rng.chance(50) {
                let n = rng.range(1, 1_000_000) as u32;
                limit.new_connections = Some(n);
                limit.new_connection_burst = if rng.chance(50) {
                    default_new_connection_burst(n)
                } else {
                    rng.range(1, 1_000_000) as u32
                };
            }
            if limit.is_unlimited() && !limit.limits_connections() {
                limit.packets = Some(1000);
                limit.packet_burst = default_packet_burst(1000);
            }
        }
        let connection_action = if limit.limits_connections() && rng.chance(50) {
            ConnAction::Reset
        } else {
            ConnAction::Drop
        };
        p.channels.push(Channel {
            name: n,
            from: from.into(),
            to: to.into(),
            protocol,
            ports,
            direction: if pacing || rng.chance(30) {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            limit,
            action,
            connection_action,
            horizon_ns: pacing.then(|| rng.range(1_000_000, 10_000_000_000)),
            mode: if rng.chance(30) {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
        });
    }
    p
}

/// Random models over every value's whole range (names YAML would
/// misread, rates to the bit, bursts, horizons to the nanosecond):
/// rendered and parsed back to the same model.
#[test]
fn random_models_round_trip() {
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&proptest::prelude::any::<u64>(), |seed| {
            let p = model(&mut Rng(seed));
            round_trip(&p);
            Ok(())
        })
        .unwrap();
}

#[test]
fn notes_are_comments() {
    let p = Policy::parse(
        "endpoints:\n  web: [198.18.1.0/24]\nchannels:\n  - name: c\n    from: web\n",
        "n.yaml",
    )
    .unwrap();
    let mut notes = Notes {
        header: vec!["top".into(), "two\nlines".into()],
        ..Notes::default()
    };
    notes.sets.insert("web".into(), vec!["the web tier".into()]);
    notes
        .channels
        .insert("c".into(), vec!["why: # not a key".into(), String::new()]);
    let text = render_with(&p, &notes);
    assert_eq!(
        text,
        "# top\n# two\n# lines\nendpoints:\n  # the web tier\n  web: [198.18.1.0/24]\nchannels:\n  # why: # not a key\n  #\n  - name: c\n    from: web\n"
    );
    let back = Policy::parse(&text, "n.yaml").unwrap();
    assert_eq!(back.channels, p.channels);
    // Whatever a note holds, it stays a comment.
    let nasty = "a\rchannels: []\u{2028}b\u{85}c\u{7}d\u{1b}[2J\n  - name: x";
    let mut notes = Notes {
        header: vec![nasty.into()],
        ..Notes::default()
    };
    notes.channels.insert("c".into(), vec![nasty.into()]);
    let text = render_with(&p, &notes);
    assert!(
        text.starts_with("# a\n# channels: []\n# b\n# c d [2J\n#   - name: x\n"),
        "{text:?}"
    );
    let back = Policy::parse(&text, "n.yaml").unwrap();
    assert_eq!(back.channels, p.channels);
}

/// Four channels naming two 32,000-prefix sets together (as many copies
/// as a policy may hold): written out as prefixes that would be 256,000
/// more lines, past the file size limit; by name it is the sets once.
#[test]
fn large_sets_named_together_stay_within_the_file_limit() {
    let mut text = String::from("endpoints:\n");
    for (name, hi) in [("a", 18), ("b", 19)] {
        text.push_str(&format!("  {name}:\n"));
        for i in 0..32_000u32 {
            text.push_str(&format!("    - 198.{hi}.{}.{}\n", i >> 8, i & 255));
        }
    }
    text.push_str("channels:\n");
    for i in 0..4 {
        text.push_str(&format!(
            "  - name: c{i}\n    from: [a, b]\n    ports: [{}]\n",
            80 + i
        ));
    }
    let p = Policy::parse(&text, "big.yaml").unwrap();
    let out = round_trip(&p);
    assert!(out.contains("    from: [a, b]\n"));
    // The sets' lines, and each channel's copy of their prefixes.
    let line = "    - 198.18.0.0/32\n".len();
    let sets: usize = p.endpoints.iter().map(|(_, n)| n.len() * line).sum();
    let inline: usize = sets
        + p.channels
            .iter()
            .map(|c| c.from.len() * line)
            .sum::<usize>();
    assert!(inline > crate::policy::MAX_FILE_BYTES, "{inline}");
    assert!(
        out.len() < crate::policy::MAX_FILE_BYTES / 4,
        "{}",
        out.len()
    );
}
