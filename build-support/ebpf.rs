//! Building an eBPF crate from a build script, shared by `tc-agent/build.rs`
//! (the datapath, `tc-ebpf`) and `tests/build.rs` (the flood generator,
//! `tests/flood-ebpf`); each includes this file with `#[path]`.
//!
//! The kernel side needs `-Z build-std=core`, so a compiler with its `rust-src`:
//! - `TC_EBPF_RUSTC=/path/to/rustc`, if set;
//! - else Debian's `/usr/bin/rustc` when `rust-web-src` is installed
//!   (what `scripts/install-deps.sh` sets up);
//! - else the rustup `nightly` toolchain, if it has `rust-src`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Tells cargo to rebuild when the crate at `dir`, this file (at
/// `support`) or the compiler choice changes.
pub fn rerun_if_changed(dir: &Path, support: &Path) {
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", dir.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", support.display());
    println!("cargo:rerun-if-env-changed=TC_EBPF_RUSTC");
}

/// Builds the eBPF crate at `dir` (release, `bpfel-unknown-none`) into
/// `target_dir`, with `rustflags` (space-separated) if any, and returns the
/// path of its object `name`. Panics with what to install when it fails:
/// a build script has no other way to report.
pub fn build(dir: &Path, target_dir: &Path, name: &str, rustflags: Option<&str>) -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    let debian = Path::new("/usr/bin/rustc");
    let debian_src = Path::new("/usr/lib/rustlib/src/rust/library/core");
    match env::var("TC_EBPF_RUSTC") {
        Ok(rustc) => {
            cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
        }
        Err(_) if debian.exists() && debian_src.exists() => {
            cmd.env("RUSTC", debian).env("RUSTC_BOOTSTRAP", "1");
        }
        Err(_) => {
            cmd.arg("+nightly");
        }
    }
    // Do not leak the host build's settings (the VM build's static
    // RUSTFLAGS and --target among them) into the eBPF build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars() {
        if k.starts_with("CARGO_PROFILE_")
            || k.starts_with("CARGO_CFG_")
            || k.starts_with("CARGO_FEATURE_")
        {
            cmd.env_remove(k);
        }
    }
    if let Some(flags) = rustflags {
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            flags.split(' ').collect::<Vec<_>>().join("\x1f"),
        );
    }
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run cargo to build {}: {e}", dir.display());
    });
    if !status.success() {
        panic!(
            "building the eBPF crate {} failed ({status}).\n\
             It needs bpf-linker and a rustc with rust-src: run `scripts/install-deps.sh`,\n\
             or set TC_EBPF_RUSTC to such a rustc (or the crate's *_OBJECT variable to a prebuilt object).",
            dir.display()
        );
    }
    target_dir.join("bpfel-unknown-none/release").join(name)
}
