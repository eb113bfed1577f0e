//! Builds the flood generator (`flood-ebpf`) for `bpfel-unknown-none` and
//! hands its path to `tc_tests::flood`, which embeds it with
//! `include_bytes_aligned!`: the test binaries carry it, in the VM too (how
//! the compiler is chosen: `build-support/ebpf.rs`).
//!
//! `TC_FLOOD_OBJECT=/path/to/flood-ebpf` skips the build and embeds that object.

#[path = "../build-support/ebpf.rs"]
mod ebpf;

use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("flood-ebpf");
    ebpf::rerun_if_changed(&ebpf_dir, &manifest.join("../build-support/ebpf.rs"));
    println!("cargo:rerun-if-env-changed=TC_FLOOD_OBJECT");

    if let Ok(obj) = env::var("TC_FLOOD_OBJECT") {
        println!("cargo:rustc-env=TC_FLOOD_OBJ={obj}");
        return;
    }

    // One target dir for every host profile and target, beside tc-ebpf's.
    let obj = ebpf::build(
        &ebpf_dir,
        &manifest.join("../target/ebpf"),
        "flood-ebpf",
        None,
    );
    println!("cargo:rustc-env=TC_FLOOD_OBJ={}", obj.display());
}
