//! Embeds the kernel programs built by `cargo xtask build` into the sensor binary.
//!
//! The eBPF object needs the nightly toolchain and bpf-linker, which plain `cargo build` and
//! `cargo clippy` should not require; without the object the sensor still compiles and says at
//! start how to build it properly.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = std::env::var_os("VIGIL_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest.join("../sensor-ebpf/target/bpfel-unknown-none/release/vigil-sensor")
        });
    println!("cargo::rerun-if-env-changed=VIGIL_EBPF_OBJECT");
    println!("cargo::rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("vigil-sensor.bpf.o");
    let bytes = std::fs::read(&object).unwrap_or_else(|_| {
        println!(
            "cargo::warning=kernel programs not found at {}; run `cargo xtask build` for a working sensor",
            object.display()
        );
        Vec::new()
    });
    if let Err(e) = std::fs::write(&out, bytes) {
        panic!("cannot write {}: {e}", out.display());
    }
}
