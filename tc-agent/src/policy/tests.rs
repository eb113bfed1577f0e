//! Policy parsing, validation, shadow detection and compilation.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use tc_common::{L4_ANY_PORT, L4_UNKNOWN};

use super::{
    compile::*,
    sim::{reference, through_tables, Pkt},
    *,
};

const GOOD: &str = r#"
endpoints:
  web: [198.18.1.0/24, "2001:db8:1::/64"]
  db:  [198.18.2.10/32]
channels:
  - name: web-to-db
    from: web
    to: db
    protocol: tcp
    ports: [5432, "8000-8100"]
    direction: ingress
    limit:
      bandwidth: 20Mbit
      burst: 256KiB
      packets: 5000
    action: drop
    mode: enforce
  - name: rest
    limit:
      bandwidth: 1Gbit
    mode: monitor
"#;

fn errors(text: &str) -> Vec<String> {
    Policy::parse(text, "p.yaml")
        .expect_err("policy should be rejected")
        .errors
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn parses_the_documented_example() {
    let p = Policy::parse(GOOD, "p.yaml").unwrap();
    assert_eq!(p.channels.len(), 2);
    let c = &p.channels[0];
    assert_eq!(c.from.len(), 2);
    assert_eq!(c.ports, vec![(5432, 5432), (8000, 8100)]);
    assert_eq!(c.limit.bandwidth_bps, Some(20_000_000));
    assert_eq!(c.limit.burst_bytes, 256 * 1024);
    assert_eq!(c.limit.packets, Some(5000));
    assert_eq!(c.limit.packet_burst, 100);
    // Defaults: any address, any protocol, ingress, burst from the rate.
    let r = &p.channels[1];
    assert_eq!(r.from.len(), 2);
    assert_eq!(r.protocol, Protocol::Any);
    assert_eq!(
        r.limit.burst_bytes,
        1_000_000_000 / 8 * DEFAULT_BURST_MS / 1000
    );
    assert_eq!(r.mode, Mode::Monitor);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn empty_and_truncated_files_are_errors() {
    for text in ["", "\n\n", "# only a comment\n", "---\n", "...\n", "~\n"] {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{text:?}: {e:?}");
        assert!(
            e[0].starts_with("p.yaml: the file holds no policy") && e[0].contains("`channels: []`"),
            "{text:?}: {e:?}"
        );
    }
    // GOOD cut at a few places: each is an error, never a smaller policy.
    let cut_after = |s: &str| &GOOD[..GOOD.find(s).unwrap() + s.len()];
    for (cut, expect) in [
        ("endpoints:", "p.yaml:2: endpoints: has no value"),
        ("2001:db8", "p.yaml:3:"),
        ("db:  [198.18.2.10/32]\n", "p.yaml:2: channels: missing"),
        (
            "channels:",
            "p.yaml:5: channels: has no value; a policy without channels says `channels: []`",
        ),
        ("from:", "p.yaml:7: channels[0].from: has no value"),
        ("limit:", "p.yaml:12: channels[0].limit: has no value"),
        ("bandw", "p.yaml:13: channels[0].limit: expected a map"),
    ] {
        let e = errors(cut_after(cut));
        assert!(e[0].starts_with(expect), "cut after {cut:?}: {e:?}");
    }
}

#[test]
fn an_empty_policy_says_so() {
    for text in ["channels: []\n", "endpoints: {}\nchannels: []\n"] {
        let p = Policy::parse(text, "p.yaml").unwrap();
        assert!(p.channels.is_empty() && p.warnings.is_empty());
    }
}

#[test]
fn unknown_keys_name_line_and_field() {
    let e = errors("channels:\n  - name: a\n    limit:\n      bandwith: 1Mbit\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("p.yaml:4: "), "{e:?}");
    assert!(e[0].contains("unknown field `bandwith`"), "{e:?}");
    assert!(e[0].contains("bandwidth"), "should list valid keys: {e:?}");
}

#[test]
fn bad_cidrs_and_host_bits() {
    let e = errors("endpoints:\n  a: [198.18.1.1/24, 300.1.1.1/8]\nchannels: []\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("p.yaml:2: endpoints.a[0]"), "{e:?}");
    assert!(e[0].contains("did you mean `198.18.1.0/24`"), "{e:?}");
    assert!(e[1].contains("is not a CIDR"), "{e:?}");
}

/// A channel's items mix set names, prefixes and addresses: each error
/// names its own item, and the prefixes parsed for the bounds land in
/// the channel beside the sets' (`fits` and `resolve` walk the items
/// alike).
#[test]
fn a_mixed_endpoint_list_resolves_and_errs_item_by_item() {
    let ok = "endpoints:\n  web: [198.18.1.0/24]\nchannels:\n  - name: a\n    from: [web, 198.18.9.0/24, 198.18.7.7, \"2001:db8::1\"]\n    to: 198.18.3.0/24\n";
    let p = Policy::parse(ok, "p.yaml").unwrap();
    let from: Vec<String> = p.channels[0].from.iter().map(ToString::to_string).collect();
    assert_eq!(
        from,
        [
            "198.18.1.0/24",
            "198.18.7.7/32",
            "198.18.9.0/24",
            "2001:db8::1/128"
        ]
    );
    assert_eq!(p.channels[0].to[0].to_string(), "198.18.3.0/24");
    let bad = "endpoints:\n  web: [198.18.1.0/24]\nchannels:\n  - name: a\n    from: [web, 198.18.9.1/24, 198.18.7.7, nope, 300.1.1.1/8]\n    to: 198.18.3.1/24\n";
    let e = errors(bad);
    let want = [
        "channels[0].from[1]: `198.18.9.1/24` has host bits set",
        "channels[0].from[3]: endpoint set `nope` is not defined",
        "channels[0].from[4]: `300.1.1.1/8` is not a CIDR",
        "channels[0].to: `198.18.3.1/24` has host bits set",
    ];
    assert_eq!(e.len(), want.len(), "{e:?}");
    for (got, want) in e.iter().zip(want) {
        assert!(got.contains(want), "{want}: {e:?}");
    }
}

#[test]
fn rates_out_of_range() {
    let e = errors("channels:\n  - name: a\n    limit:\n      bandwidth: 0Mbit\n  - name: b\n    limit:\n      bandwidth: 900Gbit\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:4: channels[0].limit.bandwidth"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:7: channels[1].limit.bandwidth"),
        "{e:?}"
    );
}

#[test]
fn duplicate_and_undefined_names() {
    let e = errors(
        "endpoints:\n  web: [198.18.1.0/24]\nchannels:\n  - name: a\n    from: wbe\n  - name: a\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("p.yaml:5: channels[0].from: endpoint set `wbe` is not defined"),
        "{e:?}"
    );
    assert!(e[0].contains("(defined: web)"), "{e:?}");
    assert!(
        e[1].contains("p.yaml:6: channels[1].name: channel `a` is defined twice"),
        "{e:?}"
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let e = errors("endpoints:\n  web: [198.18.1.0/24]\n  web: [198.18.2.0/24]\n");
    assert_eq!(e, vec!["p.yaml:3: endpoints.web: defined twice; each key may appear once (rename one, or merge the lists)"]);
}

#[test]
fn limits_and_ports_are_checked() {
    let e = errors(
        "channels:\n  - name: a\n    protocol: icmp\n    ports: [80]\n  - name: b\n    ports: [\"90-80\", 0, 70000]\n  - name: c\n    limit:\n      burst: 1MiB\n  - name: d\n    limit:\n      bandwidth: 10Mbit\n      burst: 1KiB\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("channels[0].ports: ICMP has no ports"),
        "{all}"
    );
    assert!(
        all.contains("channels[1].ports[0]: `90-80`: the range runs backwards"),
        "{all}"
    );
    assert!(all.contains("channels[1].ports[1]"), "{all}");
    assert!(all.contains("channels[1].ports[2]"), "{all}");
    assert!(
        all.contains("channels[2].limit: a limit needs `bandwidth`"),
        "{all}"
    );
    assert!(
        all.contains("channels[3].limit.burst: 1024 bytes is out of range"),
        "{all}"
    );
}

#[test]
fn delay_is_egress_only_and_gets_a_horizon() {
    let e = errors("channels:\n  - name: a\n    action: delay\n    limit: {bandwidth: 1Mbit}\n");
    assert!(
        e[0].contains("p.yaml:3: channels[0].action: `delay` holds packets in the egress queue"),
        "{e:?}"
    );
    let e = errors("channels:\n  - name: a\n    direction: egress\n    action: delay\n    horizon: 20s\n    limit: {bandwidth: 1Mbit}\n  - name: b\n    action: mark\n  - name: c\n    horizon: 5ms\n");
    let all = e.join("\n");
    assert!(
        all.contains("channels[0].horizon: `20s` is out of range"),
        "{all}"
    );
    assert!(
        all.contains("channels[1].action: `delay` and `mark` act on traffic over a limit"),
        "{all}"
    );
    assert!(
        all.contains("channels[2].horizon: `horizon` bounds the queueing"),
        "{all}"
    );
    let p = Policy::parse(
        "channels:\n  - name: a\n    direction: egress\n    action: delay\n    limit: {bandwidth: 100Mbit}\n  - name: b\n    action: mark\n    limit: {bandwidth: 1Mbit}\n",
        "p",
    )
    .unwrap();
    assert_eq!(p.channels[0].horizon_ns, Some(50_000_000));
    // Pacing needs no room for bursts beyond one GSO packet.
    assert_eq!(p.channels[0].limit.burst_bytes, MIN_BURST_BYTES);
    assert_eq!(p.channels[1].horizon_ns, None);
    let c = channel_policy(&p.channels[0]);
    assert_eq!(
        (c.action, c.horizon_ns),
        (tc_common::ACTION_DELAY, 50_000_000)
    );
    assert_eq!(
        channel_policy(&p.channels[1]).action,
        tc_common::ACTION_MARK
    );
}

#[test]
fn shadowed_channels_warn() {
    let p = Policy::parse(
        "channels:\n  - name: all-tcp\n    protocol: tcp\n  - name: web\n    to: [198.18.2.0/24]\n    protocol: tcp\n    ports: [80]\n  - name: udp\n    protocol: udp\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    let w = p.warnings[0].to_string();
    assert!(
        w.starts_with("p.yaml:4: channels[1]: channel `web` can never match: `all-tcp`"),
        "{w}"
    );
}

#[test]
fn port_prefix_decomposition() {
    assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
    assert_eq!(
        port_prefixes(8000, 8100),
        vec![(8000, 10), (8064, 11), (8096, 14), (8100, 16)]
    );
    assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
    // Every port in the range is covered exactly once.
    for (lo, hi) in [(1u16, 65535u16), (8000, 8100), (1023, 1025)] {
        let mut count = 0u32;
        for (base, len) in port_prefixes(lo, hi) {
            count += 1 << (16 - len);
            assert_eq!(base as u32 % (1 << (16 - len)), 0, "aligned");
        }
        assert_eq!(count, (hi - lo) as u32 + 1);
    }
}

#[test]
fn rates_become_gcra_parameters() {
    let p = Policy::parse(
        "channels:\n  - name: a\n    limit: {bandwidth: 8Mbit, burst: 100000, packets: 1000}\n",
        "p",
    )
    .unwrap();
    let c = channel_policy(&p.channels[0]);
    // 8 Mbit/s = 1 byte per microsecond.
    assert_eq!(c.byte_cost_q16, 1000 << 16);
    assert_eq!(c.byte_tau_ns, 100_000_000);
    assert_eq!(c.pkt_cost_q16, 1_000_000 << 16);
    assert_eq!(c.pkt_tau_ns, 64 * 1_000_000);
}

#[test]
fn compiled_tables_agree_with_first_match_semantics() {
    let policy = Policy::parse(
        r#"
endpoints:
  a: [198.18.0.0/16, "2001:db8::/32"]
  b: [198.18.1.0/24, 198.18.1.128/25, "2001:db8:1::/48"]
  c: [198.18.1.7/32, 198.18.3.0/24]
channels:
  - {name: c1, from: b, to: c, protocol: tcp, ports: [80, "8000-8100"]}
  - {name: c2, from: a, protocol: udp, ports: ["53-60"]}
  - {name: c3, from: c, to: a, protocol: icmp}
  - {name: c4, to: b, ports: ["70-90"], direction: egress}
  - {name: c5, from: b, protocol: tcp}
  - {name: c6, from: a, to: a}
  - {name: c7, direction: egress, protocol: udp}
"#,
        "p",
    )
    .unwrap();
    let compiled = compile(&policy).unwrap();
    let addrs: Vec<IpAddr> = [
        "198.18.1.7",
        "198.18.1.200",
        "198.18.2.1",
        "198.18.3.9",
        "198.19.0.1",
        "10.0.0.1",
        "2001:db8:1::5",
        "2001:db8:2::1",
        "2001:db9::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut checked = 0;
    for &src in &addrs {
        for &dst in &addrs {
            if src.is_ipv4() != dst.is_ipv4() {
                continue;
            }
            for proto in [1u8, 6, 17, 47, 58] {
                let ports: &[Option<u16>] = if proto == 6 || proto == 17 {
                    &[
                        Some(53),
                        Some(61),
                        Some(70),
                        Some(80),
                        Some(81),
                        Some(8050),
                        Some(8101),
                        None,
                    ]
                } else {
                    &[None]
                };
                for (&port, hidden) in ports
                    .iter()
                    .map(|p| (p, 0))
                    .chain([(&None, L4_ANY_PORT), (&None, L4_UNKNOWN)])
                {
                    // The datapath looks up a TCP or UDP packet without its
                    // port only under the hidden-ports flag.
                    if hidden == 0 && port.is_none() && (proto == 6 || proto == 17) {
                        continue;
                    }
                    for dir in [Direction::Ingress, Direction::Egress] {
                        let p = Pkt {
                            src,
                            dst,
                            proto,
                            port,
                            dir,
                            hidden,
                        };
                        assert_eq!(
                            through_tables(&compiled, &p),
                            reference(&policy, &p),
                            "{src} -> {dst} proto {proto} port {port:?} {dir:?} hidden {hidden:#x}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 1000);
}

#[test]
fn scale_1024_channels_and_65536_prefixes_compile() {
    let mut text = String::from("channels:\n");
    for i in 0..1024u32 {
        text.push_str(&format!("  - name: ch{i}\n    from: ["));
        for j in 0..64u32 {
            let n = i * 64 + j;
            text.push_str(&format!(
                "\"198.{}.{}.{}/32\",",
                18 + (n >> 16),
                (n >> 8) & 0xff,
                n & 0xff
            ));
        }
        text.push_str("]\n    protocol: udp\n    ports: [");
        text.push_str(&format!("{}]\n", 1000 + i));
    }
    let p = Policy::parse(&text, "big").unwrap();
    let c = compile(&p).unwrap();
    assert_eq!(c.src_v4.len(), 65_536);
    assert_eq!(c.policies.len(), 1024);
    assert_eq!(c.words, 16);
}

/// Runs `f`, and checks it took less than `release` (more under a debug build).
fn quickly<T>(what: &str, release: Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    eprintln!("{what}: {took:?}");
    let bound = if cfg!(debug_assertions) {
        release * 30
    } else {
        release
    };
    assert!(took < bound, "{what} took {took:?}, bound {bound:?}");
    out
}

/// The single error `text` gets, within `release` time.
fn refused_quickly(what: &str, text: &str, release: Duration) -> String {
    let e = quickly(what, release, || errors(text));
    assert_eq!(e.len(), 1, "{what}: {e:?}");
    e.into_iter().next().unwrap()
}

#[test]
fn nesting_50000_deep_is_refused_quickly() {
    let flow = format!("channels: {}{}\n", "[".repeat(50_000), "]".repeat(50_000));
    let e = refused_quickly("flow nesting", &flow, Duration::from_millis(200));
    assert!(
        e.starts_with("p.yaml:1: nested deeper than 16 levels"),
        "{e}"
    );
    // Block style: compact nested sequences, `- - - ... x`.
    let block = format!("channels:\n{}x\n", "- ".repeat(50_000));
    let e = refused_quickly("block nesting", &block, Duration::from_millis(200));
    assert!(
        e.starts_with("p.yaml:2: nested deeper than 16 levels"),
        "{e}"
    );
    // And a map nested in the ordinary indented way.
    let mut indented = String::from("channels:\n");
    for i in 0..1000 {
        indented.push_str(&format!("{}- a:\n", "  ".repeat(i)));
    }
    let e = refused_quickly("indented nesting", &indented, Duration::from_millis(200));
    assert!(e.contains(": nested deeper than 16 levels"), "{e}");
}

#[test]
fn billion_laughs_is_refused_quickly() {
    let mut text = String::from("endpoints:\n  l0: &l0 [198.18.0.0/32, 198.18.0.1/32]\n");
    for i in 1..=30 {
        text.push_str(&format!(
            "  l{i}: &l{i} [{}]\n",
            vec![format!("*l{}", i - 1); 9].join(", ")
        ));
    }
    text.push_str("channels:\n  - {name: a, from: l30}\n");
    let e = refused_quickly("billion laughs", &text, Duration::from_millis(200));
    assert!(
        e.contains(": aliases (`*name`) would expand to more than 262144 values"),
        "{e}"
    );
}

/// `endpoints: {big: [65,536 prefixes]}`, and 1,024 channels naming it, by
/// YAML alias (`*big`) or by set name (`big`).
fn alias_bomb(by_alias: bool) -> String {
    let mut text = String::from("endpoints:\n  big: &big [");
    for n in 0..65_536u32 {
        text.push_str(&format!(
            "198.{}.{}.{}/32,",
            18 + (n >> 16),
            (n >> 8) & 0xff,
            n & 0xff
        ));
    }
    text.push_str("]\nchannels:\n");
    for i in 0..1024 {
        let from = if by_alias { "*big" } else { "big" };
        text.push_str(&format!("  - {{name: c{i}, from: {from}}}\n"));
    }
    text
}

#[test]
fn alias_bomb_of_1024_channels_by_65536_prefixes_is_refused_quickly() {
    let e = refused_quickly("alias bomb", &alias_bomb(true), Duration::from_millis(500));
    assert!(
        e.contains(": aliases (`*name`) would expand to more than 262144 values"),
        "{e}"
    );
    // The same through the set's name: counted before it is copied into
    // 1,024 channels, and refused.
    let e = refused_quickly("set bomb", &alias_bomb(false), Duration::from_millis(500));
    assert!(
        e.starts_with("p.yaml:3: channels: 67108864 source prefixes counting each channel's copy"),
        "{e}"
    );
}

#[test]
fn files_over_the_size_limit_are_refused_quickly() {
    let mut text = String::from("channels: []\n");
    while text.len() <= MAX_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let e = refused_quickly("6 MiB", &text, Duration::from_millis(50));
    assert!(e.contains("at most 6291456 bytes (6 MiB)"), "{e}");
    // Through `load` too, without reading the file whole.
    let path = std::env::temp_dir().join(format!("tc-agent-big-{}.yaml", std::process::id()));
    std::fs::write(&path, &text).unwrap();
    let e = Policy::load(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(e.contains("larger than 6291456 bytes"), "{e}");
}

#[test]
fn anchors_still_share_values() {
    let p = Policy::parse(
        "endpoints:\n  web: &web [198.18.1.0/24]\nchannels:\n  - name: a\n    to: *web\n    protocol: tcp\n    limit: &std {bandwidth: 10Mbit}\n  - name: b\n    protocol: udp\n    limit: *std\n",
        "p.yaml",
    )
    .unwrap();
    assert_eq!(
        p.channels[0].to.to_vec(),
        vec!["198.18.1.0/24".parse().unwrap()]
    );
    assert_eq!(p.channels[1].limit, p.channels[0].limit);
}

#[test]
fn set_names_must_not_look_like_addresses() {
    let e = errors(
        "endpoints:\n  10.0.0.1: [198.18.0.0/24]\n  \"2001:db8::\": [198.18.1.0/24]\n  198.18.0.0/15: [198.18.2.0/24]\n  1.2.3: [198.18.3.0/24]\n  v1.2: [198.18.4.0/24]\nchannels: []\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    for (i, name) in ["10.0.0.1", "2001:db8::", "198.18.0.0/15", "1.2.3"]
        .iter()
        .enumerate()
    {
        assert!(
            e[i].starts_with(&format!(
                "p.yaml:{}: endpoints.{name}: `{name}` looks like an address",
                i + 2
            )),
            "{e:?}"
        );
    }
}

#[test]
fn keys_with_no_value_and_wrong_shapes_are_errors() {
    let e = errors("channels:\n  - name: a\n    to:\n    ports: 80\n  - [b]\n");
    assert_eq!(
        e,
        vec![
            "p.yaml:3: channels[0].to: has no value; give one, or remove the key for the default",
            "p.yaml:4: channels[0].ports: expected a list, found a single value",
            "p.yaml:5: channels[1]: expected a map of `name`, `from`, `to`, `protocol`, `ports`, `direction`, `limit`, `action`, `connection_action`, `horizon`, `mode`, found a list",
        ]
    );
    let e = errors("channels:\n  - name: a\n    name: b\n    protocol: sctp\n");
    assert_eq!(e, vec!["p.yaml:3: channels[0].name: defined twice; each key may appear once (rename one, or merge the lists)"]);
    let e = errors("channels:\n  - name: a\n    protocol: sctp\n");
    assert_eq!(
        e,
        vec!["p.yaml:3: channels[0].protocol: `sctp` is not one of `tcp`, `udp`, `icmp`, `any`"]
    );
}

/// 1,024 channels of 64 /32s each (65,536 distinct source prefixes), or
/// 1,024 channels all naming one 64-prefix set: every pair of channels has
/// covering addresses, the worst case for comparing prefixes pairwise.
fn wide_policy(shared: bool) -> String {
    let mut text = String::from("endpoints:\n  shared: [");
    for n in 0..64 {
        text.push_str(&format!("198.18.0.{n}/32,"));
    }
    text.push_str("]\nchannels:\n");
    for i in 0..1024u32 {
        text.push_str(&format!("  - name: ch{i}\n    from: "));
        if shared {
            text.push_str("shared");
        } else {
            text.push('[');
            for j in 0..64u32 {
                let n = i * 64 + j;
                text.push_str(&format!(
                    "\"198.{}.{}.{}/32\",",
                    18 + (n >> 16),
                    (n >> 8) & 0xff,
                    n & 0xff
                ));
            }
            text.push(']');
        }
        text.push_str(&format!("\n    protocol: udp\n    ports: [{}]\n", 1000 + i));
    }
    text
}

#[test]
fn validating_1024_channels_and_65536_prefixes_is_fast() {
    for shared in [false, true] {
        let text = wide_policy(shared);
        let p = quickly("1,024 channels", Duration::from_secs(1), || {
            Policy::parse(&text, "big").unwrap()
        });
        assert_eq!(p.channels.len(), 1024);
        assert!(p.warnings.is_empty(), "{:?}", &p.warnings[..1]);
    }
    // One channel more is refused before any channel is checked.
    let mut text = wide_policy(true);
    text.push_str("  - name: late\n    from: [198.18.0.7/32]\n");
    let e = errors(&text);
    assert_eq!(
        e,
        vec!["p.yaml:3: channels: 1025 channels; at most 1024 fit in the datapath"]
    );
    // Shadowing is still found at that size: the last channel, which the
    // first matches entirely.
    let text = wide_policy(true).replace("ports: [2023]", "ports: [1000]");
    let p = Policy::parse(&text, "big").unwrap();
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0]
            .to_string()
            .contains("channels[1023]: channel `ch1023` can never match: `ch0` comes first"),
        "{}",
        p.warnings[0]
    );
}

#[test]
fn distinct_prefixes_are_bounded_whatever_their_copies() {
    // 2 x 33,000 copies of a side's IPv4 prefixes: over the bound, but
    // 33,000 distinct (a set, named twice) fit.
    let set: Vec<String> = (0..33_000u32)
        .map(|n| format!("198.18.{}.{}/32", n >> 8, n & 0xff))
        .collect();
    let text = format!(
        "endpoints:\n  many: [{}]\nchannels:\n  - {{name: a, from: many, protocol: udp}}\n  - {{name: b, from: many, protocol: tcp}}\n",
        set.join(",")
    );
    assert_eq!(Policy::parse(&text, "p.yaml").unwrap().channels.len(), 2);
    // 65,537 distinct, one copy each (inline, over two channels); then the
    // same in IPv6, with an IPv4 prefix beside them within the bound: only
    // the family over it is named. (Exactly 65,536 are taken:
    // `validating_1024_channels_and_65536_prefixes_is_fast`.)
    let v4: fn(u32) -> String =
        |n| format!("198.{}.{}.{}/32", 18 + (n >> 16), (n >> 8) & 0xff, n & 0xff);
    let v6 = |n: u32| format!("\"2001:db8::{:x}:{:x}/128\"", n >> 16, n & 0xffff);
    for (prefix, beside, family) in [(v4, "", "IPv4"), (v6, ",198.18.0.1/32", "IPv6")] {
        let mut text = String::from("channels:\n");
        for (name, range) in [("a", 0..33_000u32), ("b", 33_000..65_537)] {
            let from: Vec<String> = range.map(prefix).collect();
            let from = from.join(",");
            text.push_str(&format!("  - {{name: {name}, from: [{from}{beside}]}}\n"));
        }
        let e = errors(&text);
        let want =
            format!("65537 distinct source {family} prefixes; the datapath holds at most 65536");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains(&want), "{}", e[0]);
    }
}

/// A one-channel policy: `fields` are the channel's lines after `name`,
/// each indented under the list item.
fn one_channel(fields: &[&str]) -> String {
    let mut text = String::from("channels:\n  - name: a\n");
    for f in fields {
        text.push_str(&format!("    {f}\n"));
    }
    text
}

#[test]
fn connection_limits_parse_with_defaults() {
    let p = Policy::parse(
        &one_channel(&[
            "protocol: tcp",
            "ports: [443]",
            "limit:",
            "  connections: 20",
            "  new_connections: 50",
            "  new_connection_burst: 10",
            "connection_action: reset",
        ]),
        "p.yaml",
    )
    .unwrap();
    let c = &p.channels[0];
    assert_eq!(c.limit.connections, Some(20));
    assert_eq!(c.limit.new_connections, Some(50));
    assert_eq!(c.limit.new_connection_burst, 10);
    assert_eq!(c.connection_action, ConnAction::Reset);
    // Connection limits alone are a limit: no bandwidth or packets needed.
    assert!(c.limit.limits_connections());
    assert!(c.limit.is_unlimited());
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);

    // The burst's default is max(new_connections / 4, 8).
    for (rate, burst) in [
        (1, 8),
        (31, 8),
        (32, 8),
        (36, 9),
        (50, 12),
        (1_000_000, 250_000),
    ] {
        let p = Policy::parse(
            &one_channel(&[
                "protocol: tcp",
                &format!("limit: {{new_connections: {rate}}}"),
            ]),
            "p.yaml",
        )
        .unwrap();
        let l = &p.channels[0].limit;
        assert_eq!(
            (l.new_connections, l.new_connection_burst, l.connections),
            (Some(rate), burst, None),
            "rate {rate}"
        );
        assert_eq!(p.channels[0].connection_action, ConnAction::Drop);
    }

    // `connections` alone, with the ends of its range, in monitor mode, on
    // egress, beside a bandwidth limit, and with `connection_action: drop`.
    for n in [1, MAX_CONNECTIONS] {
        let p = Policy::parse(
            &one_channel(&[
                "protocol: tcp",
                "direction: egress",
                "mode: monitor",
                &format!("limit: {{connections: {n}, bandwidth: 10Mbit}}"),
                "connection_action: drop",
            ]),
            "p.yaml",
        )
        .unwrap();
        let c = &p.channels[0];
        assert_eq!(
            (c.limit.connections, c.limit.new_connections),
            (Some(n), None)
        );
        assert_eq!(c.limit.new_connection_burst, 0, "no rate, no burst");
        assert_eq!(c.limit.bandwidth_bps, Some(10_000_000));
        assert_eq!((c.mode, c.direction), (Mode::Monitor, Direction::Egress));
        assert_eq!(c.connection_action, ConnAction::Drop);
        assert!(c.limit.limits_connections() && !c.limit.is_unlimited());
    }

    // Without connection keys: none, and `drop`.
    let p = Policy::parse(GOOD, "p.yaml").unwrap();
    for c in &p.channels {
        assert!(!c.limit.limits_connections());
        assert_eq!(c.limit.new_connection_burst, 0);
        assert_eq!(c.connection_action, ConnAction::Drop);
    }
}

#[test]
fn connection_limits_need_protocol_tcp() {
    for (protocol, line, field, found) in [
        ("udp", 3, "protocol", "`protocol: udp`"),
        ("icmp", 3, "protocol", "`protocol: icmp`"),
        ("any", 3, "protocol", "`protocol: any`"),
    ] {
        let e = errors(&one_channel(&[
            &format!("protocol: {protocol}"),
            "limit: {connections: 5}",
        ]));
        assert_eq!(
            e,
            vec![format!("p.yaml:{line}: channels[0].{field}: connection limits (`connections`, `new_connections`) count TCP connections: set `protocol: tcp` (the channel has {found})")]
        );
    }
    // No `protocol` at all: the error points at the first connection key.
    let e = errors(&one_channel(&[
        "limit:",
        "  bandwidth: 1Mbit",
        "  new_connections: 5",
        "  connections: 5",
    ]));
    assert_eq!(
        e,
        vec!["p.yaml:5: channels[0].limit.new_connections: connection limits (`connections`, `new_connections`) count TCP connections: set `protocol: tcp` (the channel has no `protocol`, so any)"]
    );
    let e = errors(&one_channel(&["limit: {new_connections: 5}"]));
    assert_eq!(
        e,
        vec!["p.yaml:3: channels[0].limit.new_connections: connection limits (`connections`, `new_connections`) count TCP connections: set `protocol: tcp` (the channel has no `protocol`, so any)"]
    );
    // A wrong protocol word is reported once, as a wrong word.
    let e = errors(&one_channel(&["protocol: TCP", "limit: {connections: 5}"]));
    assert_eq!(
        e,
        vec!["p.yaml:3: channels[0].protocol: `TCP` is not one of `tcp`, `udp`, `icmp`, `any`"]
    );
    // A connection key with a wrong value still needs TCP.
    let e = errors(&one_channel(&["protocol: udp", "limit: {connections: 0}"]));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("p.yaml:4: channels[0].limit.connections: 0 is out of range"),
        "{e:?}"
    );
    assert!(e[1].contains("set `protocol: tcp`"), "{e:?}");
}

#[test]
fn connection_key_errors_name_file_line_and_field() {
    let tcp = |limit: &str| one_channel(&["protocol: tcp", limit]);
    for (limit, want) in [
        (
            "limit: {connections: 0}",
            "p.yaml:4: channels[0].limit.connections: 0 is out of range: open connections must be between 1 and 1000000",
        ),
        (
            "limit: {connections: 1000001}",
            "p.yaml:4: channels[0].limit.connections: 1000001 is out of range: open connections must be between 1 and 1000000",
        ),
        (
            "limit: {connections: -3}",
            "p.yaml:4: channels[0].limit.connections: -3 is out of range: open connections must be between 1 and 1000000",
        ),
        (
            "limit: {connections: many}",
            "p.yaml:4: channels[0].limit.connections: `many` is not a whole number",
        ),
        (
            "limit: {connections: 2.5}",
            "p.yaml:4: channels[0].limit.connections: `2.5` is not a whole number",
        ),
        (
            "limit: {new_connections: 0}",
            "p.yaml:4: channels[0].limit.new_connections: 0 is out of range: new connections/s must be between 1 and 1000000",
        ),
        (
            "limit: {new_connections: 1000001}",
            "p.yaml:4: channels[0].limit.new_connections: 1000001 is out of range: new connections/s must be between 1 and 1000000",
        ),
        (
            "limit: {new_connections: 10/s}",
            "p.yaml:4: channels[0].limit.new_connections: `10/s` is not a whole number",
        ),
        (
            "limit: {new_connections: 10, new_connection_burst: 0}",
            "p.yaml:4: channels[0].limit.new_connection_burst: 0 is out of range: a new-connection burst must be between 1 and 1000000",
        ),
        (
            "limit: {new_connections: 10, new_connection_burst: 1000001}",
            "p.yaml:4: channels[0].limit.new_connection_burst: 1000001 is out of range: a new-connection burst must be between 1 and 1000000",
        ),
        (
            "limit: {new_connections: 10, new_connection_burst: lots}",
            "p.yaml:4: channels[0].limit.new_connection_burst: `lots` is not a whole number",
        ),
        (
            "limit: {connections: 10, new_connection_burst: 5}",
            "p.yaml:4: channels[0].limit.new_connection_burst: `new_connection_burst` sizes the new-connection bucket; set `new_connections` too",
        ),
    ] {
        assert_eq!(errors(&tcp(limit)), vec![want], "{limit}");
    }
    // A burst alone is no limit either.
    let e = errors(&tcp("limit: {new_connection_burst: 5}"));
    assert_eq!(
        e,
        vec![
            "p.yaml:4: channels[0].limit: a limit needs `bandwidth`, `packets`, `connections` or `new_connections` (one or more); omit `limit` for an unlimited (counting-only) channel",
            "p.yaml:4: channels[0].limit.new_connection_burst: `new_connection_burst` sizes the new-connection bucket; set `new_connections` too",
        ]
    );
    // Unknown keys stay errors, and list the new ones.
    let e = errors(&tcp("limit: {new_connection: 5}"));
    assert_eq!(
        e,
        vec!["p.yaml:4: channels[0].limit: unknown field `new_connection`, expected one of `bandwidth`, `burst`, `packets`, `packet_burst`, `connections`, `new_connections`, `new_connection_burst`"]
    );
    // And a key without a value.
    let e = errors(&one_channel(&[
        "protocol: tcp",
        "limit: {connections: 5}",
        "connection_action:",
    ]));
    assert_eq!(
        e,
        vec!["p.yaml:5: channels[0].connection_action: has no value; give one, or remove the key for the default"]
    );
}

#[test]
fn connection_action_needs_connection_limits() {
    let want = "channels[0].connection_action: `connection_action` says what a new TCP connection over a connection limit gets; set `limit.connections` or `limit.new_connections`, or remove it";
    // Without a limit, with a bandwidth limit only, on TCP or not.
    for fields in [
        &["connection_action: reset"][..],
        &[
            "protocol: tcp",
            "limit: {bandwidth: 1Mbit}",
            "connection_action: drop",
        ],
    ] {
        let e = errors(&one_channel(fields));
        let line = 3 + fields.len() - 1;
        assert_eq!(e, vec![format!("p.yaml:{line}: {want}")], "{fields:?}");
    }
    // A wrong word, on a channel with connection limits.
    let e = errors(&one_channel(&[
        "protocol: tcp",
        "limit: {connections: 5}",
        "connection_action: rst",
    ]));
    assert_eq!(
        e,
        vec!["p.yaml:5: channels[0].connection_action: `rst` is not one of `drop`, `reset`"]
    );
}

#[test]
fn delay_and_mark_need_a_bandwidth_or_packet_limit_beside_connection_limits() {
    for action in ["mark", "delay"] {
        let e = errors(&one_channel(&[
            "protocol: tcp",
            "direction: egress",
            "limit: {connections: 5, new_connections: 10}",
            &format!("action: {action}"),
        ]));
        assert_eq!(
            e,
            vec!["p.yaml:6: channels[0].action: `delay` and `mark` act on traffic over `bandwidth` or `packets`; a connection limit refuses new connections as `connection_action` says: add `bandwidth` or `packets`, or remove `action`"],
            "{action}"
        );
        let p = Policy::parse(
            &one_channel(&[
                "protocol: tcp",
                "direction: egress",
                "limit: {connections: 5, packets: 1000}",
                &format!("action: {action}"),
                "connection_action: reset",
            ]),
            "p.yaml",
        )
        .unwrap();
        assert_eq!(p.channels[0].connection_action, ConnAction::Reset);
    }
    // `action: drop` said out loud is fine: it is the default.
    Policy::parse(
        &one_channel(&["protocol: tcp", "limit: {connections: 5}", "action: drop"]),
        "p.yaml",
    )
    .unwrap();
}

#[test]
fn connection_limits_become_datapath_parameters() {
    let p = Policy::parse(
        &one_channel(&[
            "protocol: tcp",
            "limit: {connections: 20, new_connections: 50, new_connection_burst: 10}",
            "connection_action: reset",
        ]),
        "p",
    )
    .unwrap();
    let c = channel_policy(&p.channels[0]);
    assert_eq!(c.conn_limit, 20);
    assert_eq!(c.conn_cost_ns, 20_000_000);
    assert_eq!(c.conn_tau_ns, 200_000_000);
    assert_eq!(c.conn_action, tc_common::CONN_RESET);
    assert_eq!(c.conn_pool, tc_common::NO_POOL, "the agent assigns pools");
    assert!(c.limits_connections());
    assert_eq!((c.byte_cost_q16, c.pkt_cost_q16), (0, 0));
    // A rate whose cost is not whole: rounded down, the depth its multiple.
    let p = Policy::parse(
        &one_channel(&["protocol: tcp", "limit: {new_connections: 3}"]),
        "p",
    )
    .unwrap();
    let c = channel_policy(&p.channels[0]);
    assert_eq!(
        (c.conn_limit, c.conn_cost_ns, c.conn_tau_ns),
        (0, 333_333_333, 8 * 333_333_333)
    );
    assert_eq!(c.conn_action, tc_common::CONN_DROP);
    assert!(c.limits_connections());
    // Connections only: no rate.
    let p = Policy::parse(
        &one_channel(&["protocol: tcp", "limit: {connections: 7}"]),
        "p",
    )
    .unwrap();
    let c = channel_policy(&p.channels[0]);
    assert_eq!((c.conn_limit, c.conn_cost_ns, c.conn_tau_ns), (7, 0, 0));
    assert!(c.limits_connections());
    // No connection limits: nothing set, and the datapath tracks nothing.
    for ch in &Policy::parse(GOOD, "p").unwrap().channels {
        let c = channel_policy(ch);
        assert_eq!(
            (
                c.conn_limit,
                c.conn_cost_ns,
                c.conn_tau_ns,
                c.conn_action,
                c.conn_pool
            ),
            (0, 0, 0, tc_common::CONN_DROP, tc_common::NO_POOL)
        );
        assert!(!c.limits_connections());
    }
}

/// The datapath's GCRA test (`tc-ebpf/src/bucket.rs`, `charge`): conforms
/// while `max(tat, now) + cost - now <= tau`, and then advances `tat`.
fn gcra_admits(tat: &mut u64, now: u64, cost: u64, tau: u64) -> bool {
    let new = (*tat).max(now) + cost;
    if new - now > tau {
        return false;
    }
    *tat = new;
    true
}

#[test]
fn new_connection_burst_admits_exactly_that_many_syns_at_once() {
    for (rate, burst) in [
        (1u32, 1u32),
        (1, 8),
        (3, 8),
        (7, 3),
        (50, 10),
        (999_999, 1),
        (1_000_000, 250_000),
    ] {
        let p = Policy::parse(
            &one_channel(&[
                "protocol: tcp",
                &format!("limit: {{new_connections: {rate}, new_connection_burst: {burst}}}"),
            ]),
            "p",
        )
        .unwrap();
        let c = channel_policy(&p.channels[0]);
        // From idle: a long time since the last SYN.
        let now = 1_000_000_000_000u64;
        let mut tat = 0;
        let at_once = (0..=burst)
            .take_while(|_| gcra_admits(&mut tat, now, c.conn_cost_ns, c.conn_tau_ns))
            .count();
        assert_eq!(at_once, burst as usize, "rate {rate} burst {burst}");
        // Then one per cost: not before, and at it.
        let next = now + c.conn_cost_ns;
        assert!(!gcra_admits(
            &mut tat,
            next - 1,
            c.conn_cost_ns,
            c.conn_tau_ns
        ));
        assert!(gcra_admits(&mut tat, next, c.conn_cost_ns, c.conn_tau_ns));
    }
}

#[test]
fn connection_limited_channels_hold_hidden_packets() {
    // A TCP segment whose ports are hidden could be a SYN the connection
    // table cannot follow: a channel that limits connections must hold it
    // (and refuses it), or it would slip past the limit.
    let p = Policy::parse(
        &one_channel(&["protocol: tcp", "ports: [443]", "limit: {connections: 5}"]),
        "p",
    )
    .unwrap();
    assert!(p.channels[0].holds_hidden(false));
    assert!(p.channels[0].holds_hidden(true));
    // In monitor mode it enforces nothing, and is passed over as before.
    let p = Policy::parse(
        &one_channel(&[
            "protocol: tcp",
            "ports: [443]",
            "limit: {connections: 5}",
            "mode: monitor",
        ]),
        "p",
    )
    .unwrap();
    assert!(!p.channels[0].holds_hidden(false));
}

#[test]
fn saved_states_from_before_connection_limits_load() {
    let p = Policy::parse(GOOD, "p").unwrap();
    let mut json = serde_json::to_value(&p).unwrap();
    for c in json["channels"].as_array_mut().unwrap() {
        let c = c.as_object_mut().unwrap();
        assert!(c.remove("connection_action").is_some());
        let l = c["limit"].as_object_mut().unwrap();
        for k in ["connections", "new_connections", "new_connection_burst"] {
            assert!(l.remove(k).is_some(), "{k}");
        }
    }
    let old: Policy = serde_json::from_value(json).unwrap();
    assert_eq!(old, p);
    // And the new fields round-trip.
    let p = Policy::parse(
        &one_channel(&[
            "protocol: tcp",
            "limit: {connections: 20, new_connections: 50}",
            "connection_action: reset",
        ]),
        "p",
    )
    .unwrap();
    let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(
        serde_json::to_value(p.channels[0].connection_action).unwrap(),
        "reset"
    );
}

#[test]
fn the_readme_policy_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## Policy file").expect("the section")..];
    let start = section.find("```yaml\n").expect("an example") + "```yaml\n".len();
    let example = &section[start..start + section[start..].find("```").expect("its end")];
    // The example shows every key; `horizon` is for `action: delay` only.
    let example: String = example
        .lines()
        .filter(|l| !l.trim_start().starts_with("horizon:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let p = Policy::parse(&example, "README.md").unwrap_or_else(|e| panic!("{e}"));
    assert!(p.channels.iter().any(|c| c.limit.limits_connections()));
}
