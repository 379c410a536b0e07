//! Hands the per-target linker script to the example binaries.
//!
//! Link arguments emitted by a library's build script do not reach the final
//! link of a binary that depends on it, so this script publishes them as
//! `links` metadata instead. Each example's own `build.rs` reads
//! `DEP_PLATFORM_LINK_SCRIPT` / `DEP_PLATFORM_LINK_EXTRA` and turns them into
//! `cargo:rustc-link-arg-bins=...` (see `edu-dma/build.rs`; copy it verbatim).

use std::env;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    println!("cargo::rerun-if-changed=build.rs");
    if os != "none" {
        // Not a bare-metal build (e.g. rust-analyzer on the host): nothing to link.
        return;
    }
    let (script, extra) = match arch.as_str() {
        "aarch64" => ("aarch64-virt.ld", ""),
        // x86_64-unknown-none links static-PIE by default; our 32-bit PVH boot stub
        // uses absolute addresses and QEMU loads segments at p_paddr, so link a
        // plain fixed-address executable instead.
        "x86_64" => ("x86_64-q35.ld", "--no-pie"),
        other => panic!("platform: unsupported target architecture {other:?}"),
    };
    let path = manifest.join("link").join(script);
    println!("cargo::rerun-if-changed={}", path.display());
    println!("cargo::metadata=link-script={}", path.display());
    println!("cargo::metadata=link-extra={extra}");
}
