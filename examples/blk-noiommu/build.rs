//! Links this example with the platform crate's linker script for the target.
//! Every example binary has this same build script.

fn main() {
    if let Ok(script) = std::env::var("DEP_PLATFORM_LINK_SCRIPT") {
        println!("cargo::rerun-if-changed={script}");
        println!("cargo::rustc-link-arg-bins=-T{script}");
    }
    if let Ok(extra) = std::env::var("DEP_PLATFORM_LINK_EXTRA") {
        for arg in extra.split_whitespace() {
            println!("cargo::rustc-link-arg-bins={arg}");
        }
    }
    println!("cargo::rerun-if-env-changed=DEP_PLATFORM_LINK_SCRIPT");
    println!("cargo::rerun-if-env-changed=DEP_PLATFORM_LINK_EXTRA");
}
