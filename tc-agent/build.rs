//! Builds the eBPF object (`tc-ebpf`) for `bpfel-unknown-none` and hands its
//! path to the agent, which embeds it with `include_bytes_aligned!` (how the
//! compiler is chosen: `build-support/ebpf.rs`).
//!
//! `TC_EBPF_OBJECT=/path/to/tc-ebpf` skips the build and embeds that object.

#[path = "../build-support/ebpf.rs"]
mod ebpf;

use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("../tc-ebpf");
    ebpf::rerun_if_changed(&ebpf_dir, &manifest.join("../build-support/ebpf.rs"));
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../tc-common/src").display()
    );
    println!("cargo:rerun-if-env-changed=TC_EBPF_OBJECT");

    if let Ok(obj) = env::var("TC_EBPF_OBJECT") {
        println!("cargo:rustc-env=TC_EBPF_OBJ={obj}");
        return;
    }

    // One target dir for every host profile, so debug, release and test
    // builds share one eBPF build. BPF_ATOMIC_CMPXCHG and fetch-and-add
    // with a result need the v3 ISA (kernel 5.12+).
    let obj = ebpf::build(
        &ebpf_dir,
        &manifest.join("../target/ebpf"),
        "tc-ebpf",
        Some("-C target-cpu=v3"),
    );
    println!("cargo:rustc-env=TC_EBPF_OBJ={}", obj.display());
}
