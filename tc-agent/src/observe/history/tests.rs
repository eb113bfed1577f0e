use super::*;

/// A unix second at the start of an hour, so tests can reason in blocks.
const T0: u64 = 1_700_002_800;

const ABC: &[&str] = &["a", "b", "c"];
const ONE: &[&str] = &["v"];

/// Deterministic noise (SplitMix64): the tests need no crate for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-1, 1).
    fn signed(&mut self) -> f64 {
        2.0 * self.unit() - 1.0
    }
}

/// The value of `metric` at each point (None for null).
fn column(r: &HistoryReport, metric: &str) -> Vec<Option<f64>> {
    r.points.iter().map(|p| p[metric].as_f64()).collect()
}

fn close(got: f64, want: f64) -> bool {
    if want == 0.0 {
        return got == 0.0;
    }
    (got / want - 1.0).abs() <= 0.01
}

#[test]
fn codes_keep_one_percent() {
    let mut rng = Rng(1);
    for _ in 0..100_000 {
        let v = 10f64.powf(rng.signed() * 130.0) * if rng.unit() < 0.2 { -1.0 } else { 1.0 };
        let back = decode(encode(v));
        assert!(close(back, v), "{v} came back as {back}");
        assert!(
            close(significant(back), v),
            "{v} shown as {}",
            significant(back)
        );
    }
    assert_eq!(encode(0.0), ZERO);
    assert_eq!(encode(-0.0), ZERO);
    assert!(decode(encode(f64::NAN)).is_nan());
    assert_eq!(decode(encode(f64::INFINITY)), decode(encode(1e300)));
    assert!(decode(encode(f64::NEG_INFINITY)) < -1e140);
    assert!((1..=0x7ffe).contains(&encode(1e-300)));
    assert!((0x8001..=0xfffe).contains(&encode(-1e-300)));
}

#[test]
fn blocks_round_trip() {
    let mut rng = Rng(2);
    let shapes: [fn(&mut Rng, usize) -> u16; 6] = [
        |_, _| GAP,
        |_, _| ZERO,
        |r, _| encode(1e6 * (1.0 + 0.3 * r.signed())),
        |r, i| {
            if r.unit() < 0.3 {
                GAP
            } else if i % 7 == 0 {
                ZERO
            } else {
                encode(r.unit() * 1e9)
            }
        },
        |r, _| (r.next() % 0xfffe) as u16 + 1,
        |r, i| if i == 30 { encode(r.unit()) } else { GAP },
    ];
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for _ in 0..50 {
        for shape in &shapes {
            let codes: Vec<u16> = (0..BLOCK as usize).map(|i| shape(&mut rng, i)).collect();
            encode_block(&codes, &mut bytes);
            want.push(codes);
        }
    }
    let mut at = 0;
    for codes in &want {
        let mut got = vec![0; BLOCK as usize];
        at += decode_block(&bytes[at..], &mut got);
        assert_eq!(&got, codes);
    }
    assert_eq!(at, bytes.len());
}

#[test]
fn round_trip_within_precision() {
    let mut rng = Rng(3);
    let mut h = History::new();
    let mut want = Vec::new();
    for t in T0..T0 + 300 {
        let a = 10f64.powf(rng.signed() * 12.0);
        let b = match t % 5 {
            0 => 0.0,
            1 => f64::NAN,
            _ => -rng.unit() * 1e4,
        };
        let c = 42.0;
        h.record("x", ABC, t, &[a, b, c]);
        want.push([a, b, c]);
    }
    let r = h.query("x", T0 + 299, 300).expect("recorded");
    assert_eq!((r.step_s, r.points.len()), (1, 300));
    assert_eq!(r.metrics, ABC);
    for (i, (p, w)) in r.points.iter().zip(&want).enumerate() {
        assert_eq!(p["t"], T0 + i as u64);
        for (m, name) in ABC.iter().enumerate() {
            match p[*name].as_f64() {
                None => assert!(w[m].is_nan(), "{name} at {i}: null for {}", w[m]),
                Some(v) => assert!(close(v, w[m]), "{name} at {i}: {v} for {}", w[m]),
            }
        }
    }
    assert!(h.query("y", T0, 300).is_none());
}

#[test]
fn gaps_are_null_points() {
    let mut h = History::new();
    for t in (T0..T0 + 10).chain(T0 + 20..T0 + 130) {
        h.record("x", ONE, t, &[5.0]);
    }
    let r = h.query("x", T0 + 129, 150).expect("recorded");
    let v = column(&r, "v");
    assert_eq!(v.len(), 150);
    assert!(
        v[..20].iter().all(Option::is_none),
        "before the first record"
    );
    assert!(v[20..30].iter().all(|p| close(p.expect("recorded"), 5.0)));
    assert!(v[30..40].iter().all(Option::is_none), "the gap");
    assert!(v[40..].iter().all(|p| close(p.expect("recorded"), 5.0)));
    // The first sample of a second wins.
    h.record("x", ONE, T0 + 129, &[7.0]);
    let r = h.query("x", T0 + 129, 1).expect("recorded");
    assert!(close(column(&r, "v")[0].expect("recorded"), 5.0));
}

#[test]
fn minutes_are_means_of_their_seconds() {
    let mut h = History::new();
    // Minute 0: a = 0..59 (mean 29.5); b only on even seconds (mean 30);
    // c never. Minute 1: nothing. Minute 2: a = 1000, b = 0, c = 3 on its
    // first 10 seconds only (the open minute, so far).
    for s in 0..60 {
        let b = if s % 2 == 0 { (s + 1) as f64 } else { f64::NAN };
        h.record("x", ABC, T0 + s, &[s as f64, b, f64::NAN]);
    }
    for s in 120..130 {
        h.record("x", ABC, T0 + s, &[1000.0, 0.0, 3.0]);
    }
    let r = h.query("x", T0 + 130, 3600).expect("recorded");
    assert_eq!((r.step_s, r.points.len()), (60, 60));
    let at = |m: usize| &r.points[60 - 3 + m];
    assert_eq!(at(0)["t"], T0);
    assert!(close(at(0)["a"].as_f64().expect("a"), 29.5));
    assert!(close(at(0)["b"].as_f64().expect("b"), 30.0));
    assert!(at(0)["c"].is_null());
    assert!(["a", "b", "c"].iter().all(|m| at(1)[*m].is_null()));
    assert!(close(at(2)["a"].as_f64().expect("a"), 1000.0));
    assert_eq!(at(2)["b"].as_f64(), Some(0.0));
    assert!(close(at(2)["c"].as_f64().expect("c"), 3.0));
    // Once closed, the minute point is the same.
    h.record("x", ABC, T0 + 180, &[1.0, 1.0, 1.0]);
    let r = h.query("x", T0 + 180, 3600).expect("recorded");
    assert!(close(r.points[60 - 2]["a"].as_f64().expect("a"), 1000.0));
}

#[test]
fn rings_wrap_and_stay_bounded() {
    let mut h = History::new();
    let f = |t: u64| 1000.0 + (t % 997) as f64;
    let end = T0 + 25 * 3600 + 20 * 60 + 17;
    for t in T0..=end {
        h.record("x", ONE, t, &[f(t)]);
    }
    let s = &h.series["x"];
    assert_eq!(s.seconds.sealed.len() as u64, SECOND_BLOCKS);
    assert_eq!(s.minutes.sealed.len() as u64, MINUTE_BLOCKS);
    assert!(s.seconds.sealed.capacity() as u64 <= SECOND_BLOCKS + 1);
    assert!(s.minutes.sealed.capacity() as u64 <= MINUTE_BLOCKS + 1);

    let r = h.query("x", end, 900).expect("recorded");
    assert_eq!((r.step_s, r.points.len()), (1, 900));
    for p in &r.points {
        let t = p["t"].as_u64().expect("t");
        assert!(close(p["v"].as_f64().expect("kept"), f(t)), "second {t}");
    }
    assert_eq!(r.points[0]["t"], end - 899);

    let r = h.query("x", end, 86_400).expect("recorded");
    assert_eq!((r.step_s, r.points.len()), (60, 1440));
    assert_eq!(r.points[0]["t"], (end / 60 - 1439) * 60);
    for p in &r.points {
        let t = p["t"].as_u64().expect("t");
        let last = (t + 59).min(end);
        let mean = (t..=last).map(f).sum::<f64>() / (last + 1 - t) as f64;
        assert!(close(p["v"].as_f64().expect("kept"), mean), "minute {t}");
    }
}

#[test]
fn the_window_picks_the_step() {
    let mut h = History::new();
    for t in T0..T0 + 7200 {
        h.record("x", ONE, t, &[1.0]);
    }
    let now = T0 + 7199;
    let steps = |since| {
        let r = h.query("x", now, since).expect("recorded");
        (r.step_s, r.points.len())
    };
    assert_eq!(steps(0), (1, 1));
    assert_eq!(steps(90), (1, 90));
    assert_eq!(steps(900), (1, 900));
    assert_eq!(steps(901), (60, 16));
    assert_eq!(steps(3600), (60, 60));
    assert_eq!(steps(86_400), (60, 1440));
    assert_eq!(steps(1_000_000), (60, 1440));
    let r = h.query("x", now, 60).expect("recorded");
    assert!(r.store_bytes > 0 && r.bytes_per_point > 0.0);
}

#[test]
fn idle_series_are_forgotten_and_restarts_start_over() {
    let mut h = History::new();
    h.record("old", ONE, T0, &[1.0]);
    h.record("new", ONE, T0 + 50_000, &[1.0]);
    h.forget_idle(T0 + 86_400);
    assert!(h.query("old", T0 + 86_400, 60).is_none());
    assert!(h.query("new", T0 + 86_400, 60).is_some());
    assert_eq!(h.len(), 1);

    // Other metrics, or a clock set back by over 15 minutes: a new series.
    h.record("new", ABC, T0 + 50_001, &[2.0, 2.0, 2.0]);
    let r = h.query("new", T0 + 50_001, 2).expect("recorded");
    assert_eq!(r.metrics, ABC);
    assert!(r.points[0]["a"].is_null());
    h.record("new", ABC, T0 + 40_000, &[3.0, 3.0, 3.0]);
    let r = h.query("new", T0 + 50_001, 2).expect("recorded");
    assert!(
        r.points.iter().all(|p| p["a"].is_null()),
        "history started over"
    );
    // A second just before the open minute is ignored.
    h.record("new", ABC, T0 + 40_000 - 61, &[4.0, 4.0, 4.0]);
    let r = h.query("new", T0 + 40_000, 200).expect("recorded");
    assert_eq!(r.points.iter().filter(|p| !p["a"].is_null()).count(), 1);
}

/// Resident memory of this process, bytes (tests run in parallel, so a
/// delta is only indicative).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const CHANNEL: &[&str] = &["passed_bps", "passed_pps", "dropped_bps", "dropped_pps"];
const INTERACTION: &[&str] = &[
    "request_bps",
    "response_bps",
    "request_pps",
    "response_pps",
    "open_connections",
    "new_connections_per_s",
    "handshake_rtt_us",
];

/// How one simulated series behaves: each metric's level (0 when idle),
/// and how often it has no value.
struct Sim {
    key: String,
    metrics: &'static [&'static str],
    levels: Vec<f64>,
    nan_share: Vec<f64>,
}

impl Sim {
    /// One point: the level, swinging ±30% over the day, with `jitter`
    /// (relative) noise on top.
    fn values(&self, rng: &mut Rng, t: u64, jitter: f64) -> Vec<f64> {
        let swing = 1.0 + 0.3 * (t as f64 * std::f64::consts::TAU / 86_400.0).sin();
        self.levels
            .iter()
            .zip(&self.nan_share)
            .map(|(&level, &nan)| {
                if rng.unit() < nan {
                    f64::NAN
                } else {
                    level * swing * (1.0 + jitter * rng.signed())
                }
            })
            .collect()
    }
}

fn simulated(rng: &mut Rng) -> Vec<Sim> {
    let mut sims = Vec::new();
    let level = |rng: &mut Rng| 10f64.powf(2.0 + 8.0 * rng.unit());
    for i in 0..1_024 {
        let idle = i % 5 == 0;
        let dropping = i % 10 == 1;
        let bps = if idle { 0.0 } else { level(rng) };
        let drop = if dropping { bps * 0.1 } else { 0.0 };
        sims.push(Sim {
            key: format!("channel-{i}"),
            metrics: CHANNEL,
            levels: vec![bps, bps / 6_400.0, drop, drop / 6_400.0],
            nan_share: vec![0.0; 4],
        });
    }
    for i in 0..1_000 {
        let idle = i % 4 == 0;
        let (req, resp) = if idle {
            (0.0, 0.0)
        } else {
            (level(rng), level(rng))
        };
        let conns = if idle { 0.0 } else { 1.0 + 1000.0 * rng.unit() };
        sims.push(Sim {
            key: format!("set-{}->set-{}", i % 97, i),
            metrics: INTERACTION,
            levels: vec![
                req,
                resp,
                req / 4_000.0,
                resp / 8_000.0,
                conns,
                conns / 10.0,
                350.0,
            ],
            nan_share: vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, if idle { 1.0 } else { 0.3 }],
        });
    }
    sims
}

/// The end of a minute (so the open one is full), half way through an hour.
const NOW: u64 = T0 + 30 * 86_400 + 30 * 60 + 59;

/// How `fill` makes the 24 hours of minute points.
#[derive(PartialEq)]
enum Minutes {
    /// From a day of recorded seconds: the real thing, slow in debug builds.
    Recorded,
    /// Written directly, as means of a minute of ±30% jitter (which jitter
    /// by about ±4%).
    Written,
}

/// A store at full retention on `NOW`: 16 minutes of seconds (15 sealed,
/// the open one full) and 24 hours of minutes before them.
fn fill(sims: &[Sim], rng: &mut Rng, minutes: Minutes) -> History {
    let first_second = (NOW / 60 - SECOND_BLOCKS) * 60;
    let first_minute = (NOW / 3600 - MINUTE_BLOCKS) * 60;
    let mut h = History::new();
    if minutes == Minutes::Written {
        for sim in sims {
            for minute in first_minute..first_second / 60 {
                let means = sim.values(rng, minute * 60, 0.04);
                let s = series_mut(&mut h.series, &sim.key, sim.metrics, minute * 60);
                s.write_minute(minute, &means, &mut h.scratch);
                s.last_t = minute * 60;
            }
        }
    }
    let start = match minutes {
        Minutes::Recorded => first_minute * 60,
        Minutes::Written => first_second,
    };
    for t in start..=NOW {
        for sim in sims {
            h.record(&sim.key, sim.metrics, t, &sim.values(rng, t, 0.3));
        }
    }
    h
}

/// The target: 1,024 channels (4 metrics) and 1,000 interactions
/// (7 metrics) at full retention in at most 32 MiB. Seconds are recorded
/// for real (16 minutes: 15 sealed and the open one); the 24 hours before
/// are written as minute points directly (the mean of a minute of ±30%
/// jitter jitters about ±4%), which is what 24 hours of seconds would
/// leave, without simulating them.
#[test]
fn full_retention_fits_in_32_mib() {
    let before = rss();
    let mut rng = Rng(4);
    let sims = simulated(&mut rng);
    let h = fill(&sims, &mut rng, Minutes::Written);
    let after = rss();

    let s = &h.series["channel-1"];
    assert_eq!(s.seconds.sealed.len() as u64, SECOND_BLOCKS);
    assert_eq!(s.minutes.sealed.len() as u64, MINUTE_BLOCKS);
    let points_per_metric = 15 * 60 + 60 + 24 * 60 + NOW / 60 % 60;
    assert_eq!(h.points(), (1_024 * 4 + 1_000 * 7) * points_per_metric);

    let (bytes, per_point) = (h.bytes(), h.bytes_per_point());
    let seconds: u64 = h.series.values().map(|s| s.seconds.bytes()).sum();
    println!(
        "history: {} series, {} points, {bytes} bytes ({:.1} MiB), {per_point:.3} bytes/point; 1 s rings {:.1} MiB, 1 min rings {:.1} MiB; RSS delta {}",
        h.len(),
        h.points(),
        bytes as f64 / (1 << 20) as f64,
        seconds as f64 / (1 << 20) as f64,
        (bytes - seconds) as f64 / (1 << 20) as f64,
        match (before, after) {
            (Some(b), Some(a)) => format!("{:.1} MiB", (a as f64 - b as f64) / (1 << 20) as f64),
            _ => "unknown".into(),
        },
    );
    assert!(bytes <= 32 << 20, "{bytes} bytes");

    // And the points are the ones recorded.
    let r = h.query("channel-1", NOW, 86_400).expect("tracked");
    assert!(r
        .points
        .iter()
        .all(|p| p["passed_bps"].as_f64().is_some_and(|v| v > 0.0)));
    let r = h.query("channel-0", NOW, 900).expect("tracked");
    assert!(r
        .points
        .iter()
        .all(|p| p["passed_bps"].as_f64() == Some(0.0)));
}

/// `full_retention_fits_in_32_mib` writes minute points directly; this
/// records a day of seconds for every 13th of its series and checks the
/// shortcut does not flatter the figure.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "records a day of seconds: run with --release"
)]
fn written_minutes_cost_what_recorded_minutes_do() {
    let mut rng = Rng(5);
    let sims: Vec<Sim> = simulated(&mut rng).into_iter().step_by(13).collect();
    let recorded = fill(&sims, &mut rng, Minutes::Recorded);
    let written = fill(&sims, &mut rng, Minutes::Written);
    let (r, w) = (recorded.bytes_per_point(), written.bytes_per_point());
    println!(
        "{} series: {r:.3} bytes/point from recorded seconds, {w:.3} with minutes written",
        sims.len()
    );
    assert_eq!(recorded.points(), written.points());
    assert!(r <= w * 1.1, "recorded {r}, written {w}");
}
