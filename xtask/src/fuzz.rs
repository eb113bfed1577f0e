//! `cargo xtask fuzz`: the two fuzzers that `cargo test` runs bounded
//! (the policy parser/compiler property tests, the BPF_PROG_TEST_RUN
//! differential packet fuzzer), in rounds with fresh seeds until the time
//! is up. Each round prints its seed; `TC_FUZZ_SEED=<seed>` with the same
//! case counts replays a failing one.

use std::{
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;

use crate::{root, run};

/// Frames of the packet fuzzer per policy case: a round's two halves take
/// about as long as each other.
const FRAMES_PER_CASE: u64 = 200;

/// Runs rounds of `cases` policy files per property and `cases * 200`
/// frames, until `minutes` have passed (a round started is finished).
pub fn fuzz(cases: u64, minutes: u64) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let frames = (cases * FRAMES_PER_CASE).to_string();
    let cases = cases.to_string();
    let mut round = 0u64;
    loop {
        round += 1;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)?
            .as_nanos()
            .wrapping_mul(0x9e37_79b9_7f4a_7c15) as u64
            ^ round;
        let seed = seed.to_string();
        println!(
            "fuzz round {round}: TC_FUZZ_SEED={seed} TC_FUZZ_CASES={cases} TC_FUZZ_FRAMES={frames}"
        );
        for args in [
            &[
                "test",
                "-p",
                "tc-agent",
                "--lib",
                "policy::fuzz",
                "--",
                "--nocapture",
            ][..],
            &[
                "test",
                "-p",
                "tc-tests",
                "--test",
                "fuzz",
                "--",
                "--nocapture",
            ][..],
        ] {
            run(Command::new(&cargo)
                .current_dir(root())
                .args(args)
                .env("TC_FUZZ_SEED", &seed)
                .env("TC_FUZZ_CASES", &cases)
                .env("TC_FUZZ_FRAMES", &frames))?;
        }
        if Instant::now() >= deadline {
            println!("fuzz: {round} rounds, no failure");
            return Ok(());
        }
    }
}
