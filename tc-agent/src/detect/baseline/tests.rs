use super::*;
use crate::detect::testutil::{rng, Noise, Wander};

#[test]
fn no_verdict_before_the_warm_up() {
    let mut b = Baseline::new();
    for tick in 1..u64::from(WARMUP) {
        b.learn(100.0, tick);
        assert!(!b.warm());
        assert!(!b.far_above(1e9, 2.0, 4.0), "a verdict at sample {tick}");
    }
    b.learn(100.0, u64::from(WARMUP));
    assert!(b.warm());
    assert!(b.far_above(300.0, 2.0, 4.0));
    assert!(!b.far_above(150.0, 2.0, 4.0));
}

#[test]
fn learns_level_and_wander() {
    let mut r = rng(1);
    let mut w = Wander::new(Noise::Iid(0.3));
    let mut b = Baseline::new();
    for tick in 1..=3600 {
        b.learn(1000.0 * w.next(&mut r), tick);
    }
    // Uniform within ±30%: the mean absolute deviation is 15%.
    assert!((b.mean() - 1000.0).abs() < 60.0, "mean {}", b.mean());
    assert!((b.dev() - 150.0).abs() < 50.0, "dev {}", b.dev());
}

#[test]
fn one_burst_moves_the_mean_a_bounded_step() {
    let mut b = Baseline::new();
    for tick in 1..=100 {
        b.learn(1000.0, tick);
    }
    b.learn(1e9, 101);
    // Clipped to mean + mean/4, weighted ALPHA: under half a percent.
    assert!(b.mean() < 1005.0, "mean {}", b.mean());
    // A lasting new level is still followed.
    for tick in 102..=600 {
        b.learn(2000.0, tick);
    }
    assert!(b.mean() > 1900.0, "mean {}", b.mean());
}

#[test]
fn absence_decays_like_zeros() {
    let mut lazy = Baseline::new();
    let mut step = Baseline::new();
    for tick in 1..=100 {
        lazy.learn(1000.0, tick);
        step.learn(1000.0, tick);
    }
    for tick in 101..=160 {
        step.learn(0.0, tick);
    }
    lazy.learn(0.0, 160);
    let rel = (lazy.mean() - step.mean()).abs() / step.mean();
    assert!(rel < 0.01, "lazy {} step {}", lazy.mean(), step.mean());
    assert!(lazy.mean() < 400.0);
    assert!(lazy.warm());
}

#[test]
fn hold_freezes() {
    let mut b = Baseline::new();
    for tick in 1..=100 {
        b.learn(1000.0, tick);
    }
    let before = b;
    for tick in 101..=200 {
        b.hold(tick);
    }
    assert_eq!(b.mean(), before.mean());
    // The held ticks are not absence later.
    b.learn(1000.0, 201);
    assert!((b.mean() - 1000.0).abs() < 1e-6);
}

#[test]
fn factor_is_none_from_zero() {
    let mut b = Baseline::new();
    for tick in 1..=20 {
        b.learn(0.0, tick);
    }
    assert_eq!(b.factor(5.0), None);
    assert!(b.far_above(5.0, 2.0, 4.0));
    assert!(!b.far_above(0.0, 2.0, 4.0));
}
