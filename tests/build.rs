//! Builds the flood generator (`flood-ebpf`) for `bpfel-unknown-none` and
//! hands its path to `tc_tests::flood`, which embeds it with
//! `include_bytes_aligned!`: the test binaries carry it, in the VM too.
//!
//! The same build as `tc-agent/build.rs` does for `tc-ebpf` (`-Z
//! build-std=core`, so a compiler with its `rust-src`):
//! - `TC_EBPF_RUSTC=/path/to/rustc`, if set;
//! - else Debian's `/usr/bin/rustc` when `rust-web-src` is installed
//!   (what `scripts/install-deps.sh` sets up);
//! - else the rustup `nightly` toolchain, if it has `rust-src`.
//!
//! `TC_FLOOD_OBJECT=/path/to/flood-ebpf` skips the build and embeds that object.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("flood-ebpf");
    for p in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=TC_EBPF_RUSTC");
    println!("cargo:rerun-if-env-changed=TC_FLOOD_OBJECT");

    if let Ok(obj) = env::var("TC_FLOOD_OBJECT") {
        println!("cargo:rustc-env=TC_FLOOD_OBJ={obj}");
        return;
    }

    // One target dir for every host profile and target, beside tc-ebpf's.
    let target_dir = manifest.join("../target/ebpf");
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
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run cargo to build the flood generator: {e}");
    });
    if !status.success() {
        panic!(
            "building the flood generator (tests/flood-ebpf) failed ({status}).\n\
             It needs bpf-linker and a rustc with rust-src: run `scripts/install-deps.sh`,\n\
             or set TC_EBPF_RUSTC to such a rustc, or TC_FLOOD_OBJECT to a prebuilt object."
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/flood-ebpf");
    println!("cargo:rustc-env=TC_FLOOD_OBJ={}", obj.display());
}
