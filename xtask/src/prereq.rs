//! Making sure the tools the tests need are installed.
//!
//! * the `aarch64-unknown-none` / `x86_64-unknown-none` Rust targets
//!   (`rustup target add` if missing);
//! * the clippy and rustfmt components (`rustup component add` if missing);
//! * Miri on the nightly toolchain, when the Miri step is selected
//!   (`rustup component add` or `rustup toolchain install` if missing; the
//!   step fails, loudly, if it cannot be installed);
//! * QEMU >= 10.0 for each architecture a selected system test uses. If the
//!   default binary is missing or too old and we are root on Debian
//!   bookworm, it is installed from bookworm-backports; otherwise we stop
//!   and say what to install.
//! * `qemu-img` (Debian `qemu-utils`) when a selected system test makes a
//!   disk image; installed the same way, from bookworm-backports.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::systests::Arch;
use crate::util::capture;

/// QEMU's minimum version (major, minor).
pub const MIN_QEMU: (u32, u32) = (10, 0);
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/backports.list";
/// Where apt's sources live: the one-line list and the directory of `.list`
/// and deb822 `.sources` files.
const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// The archive URI of the machine's own `bookworm` entry (one-line or
/// deb822 format), so that backports come from the same mirror.
fn bookworm_archive(texts: &[String]) -> Option<String> {
    for text in texts {
        // One-line format: `deb [options] URI suite components...`.
        for line in text.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            if words.next() != Some("deb") {
                continue;
            }
            let mut rest: Vec<&str> = words.collect();
            if rest.first().is_some_and(|w| w.starts_with('[')) {
                let end = rest.iter().position(|w| w.ends_with(']')).unwrap_or(0);
                rest.drain(..=end);
            }
            if let [uri, "bookworm", ..] = rest.as_slice() {
                return Some(uri.to_string());
            }
        }
        // deb822: stanzas of `Key: value` lines separated by blank lines.
        for stanza in text.split("\n\n") {
            let field = |key: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_string())
                })
            };
            let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let bookworm =
                field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == "bookworm"));
            if is_deb && bookworm {
                if let Some(uri) =
                    field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string))
                {
                    return Some(uri);
                }
            }
        }
    }
    None
}

/// The backports line for this machine's mirror.
fn backports_line() -> Result<String, String> {
    let mut texts: Vec<String> = fs::read_to_string(SOURCES_LIST).into_iter().collect();
    if let Ok(dir) = fs::read_dir(SOURCES_DIR) {
        let mut paths: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    bookworm_archive(&texts)
        .map(|uri| format!("deb {uri} bookworm-backports main"))
        .ok_or_else(|| {
            format!(
                "no `bookworm` entry in {SOURCES_LIST} or {SOURCES_DIR} to take the archive from"
            )
        })
}
const TARGETS: [&str; 2] = ["aarch64-unknown-none", "x86_64-unknown-none"];
/// Miri exists only on nightly toolchains: `cargo +nightly miri ...`.
pub const MIRI_TOOLCHAIN_ARG: &str = "+nightly";
const MIRI_TOOLCHAIN: &str = "nightly";

/// What the selected steps need.
#[derive(Debug, Default, Clone, Copy)]
pub struct Needs {
    pub targets: bool,
    pub clippy: bool,
    pub rustfmt: bool,
    pub miri: bool,
    pub qemu_aarch64: bool,
    pub qemu_x86_64: bool,
    /// A selected system test makes a disk image (`disk`): needs `qemu-img`.
    pub qemu_img: bool,
}

impl Needs {
    pub fn qemu(&mut self, arch: Arch) {
        match arch {
            Arch::Aarch64 => self.qemu_aarch64 = true,
            Arch::X86_64 => self.qemu_x86_64 = true,
        }
    }

    fn qemu_arches(&self) -> Vec<Arch> {
        Arch::ALL
            .into_iter()
            .filter(|a| match a {
                Arch::Aarch64 => self.qemu_aarch64,
                Arch::X86_64 => self.qemu_x86_64,
            })
            .collect()
    }
}

/// Runs a command with inherited output, after saying what it is.
fn run_visible(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let line = crate::util::command_line(
        program,
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let env_prefix: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    println!("xtask: running: {env_prefix}{line}");
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{env_prefix}{line}` failed: {status}"))
    }
}

fn have_rustup() -> bool {
    capture("rustup", &["--version"]).is_some()
}

fn missing_targets() -> Vec<&'static str> {
    let Some(sysroot) = capture("rustc", &["--print", "sysroot"]) else {
        return TARGETS.to_vec();
    };
    let root = Path::new(sysroot.trim()).join("lib").join("rustlib");
    TARGETS
        .into_iter()
        .filter(|t| !root.join(t).join("lib").is_dir())
        .collect()
}

fn ensure_targets(notes: &mut Vec<String>) -> Result<(), String> {
    let missing = missing_targets();
    if missing.is_empty() {
        notes.push("Rust targets present".into());
        return Ok(());
    }
    if !have_rustup() {
        return Err(format!(
            "the Rust targets {} are missing and rustup is not available: install them for your toolchain",
            missing.join(", ")
        ));
    }
    println!("xtask: installing Rust targets {}", missing.join(", "));
    let mut args = vec!["target", "add"];
    args.extend(&missing);
    run_visible("rustup", &args, &[])?;
    let still = missing_targets();
    if !still.is_empty() {
        return Err(format!(
            "Rust targets still missing after rustup: {}",
            still.join(", ")
        ));
    }
    notes.push(format!("installed Rust targets {}", missing.join(", ")));
    Ok(())
}

fn ensure_components(needs: &Needs, notes: &mut Vec<String>) -> Result<(), String> {
    let mut missing = Vec::new();
    if needs.clippy && capture("cargo", &["clippy", "--version"]).is_none() {
        missing.push("clippy");
    }
    if needs.rustfmt && capture("cargo", &["fmt", "--version"]).is_none() {
        missing.push("rustfmt");
    }
    if missing.is_empty() {
        if needs.clippy || needs.rustfmt {
            notes.push("clippy/rustfmt present".into());
        }
        return Ok(());
    }
    if !have_rustup() {
        return Err(format!(
            "the Rust components {} are missing and rustup is not available: install them",
            missing.join(", ")
        ));
    }
    println!("xtask: installing Rust components {}", missing.join(", "));
    let mut args = vec!["component", "add"];
    args.extend(&missing);
    run_visible("rustup", &args, &[])?;
    notes.push(format!("installed Rust components {}", missing.join(", ")));
    Ok(())
}

fn have_miri() -> bool {
    capture("cargo", &[MIRI_TOOLCHAIN_ARG, "miri", "--version"]).is_some()
}

fn ensure_miri(notes: &mut Vec<String>) -> Result<(), String> {
    if !have_miri() {
        if !have_rustup() {
            return Err(format!(
                "Miri is missing and rustup is not available: install the {MIRI_TOOLCHAIN} \
                 toolchain with the miri and rust-src components"
            ));
        }
        let have_toolchain = capture("rustc", &[MIRI_TOOLCHAIN_ARG, "--version"]).is_some();
        if have_toolchain {
            println!("xtask: installing Miri on the {MIRI_TOOLCHAIN} toolchain");
            run_visible(
                "rustup",
                &[
                    "component",
                    "add",
                    "--toolchain",
                    MIRI_TOOLCHAIN,
                    "miri",
                    "rust-src",
                ],
                &[],
            )?;
        } else {
            println!("xtask: installing the {MIRI_TOOLCHAIN} toolchain with Miri");
            run_visible(
                "rustup",
                &[
                    "toolchain",
                    "install",
                    MIRI_TOOLCHAIN,
                    "--profile",
                    "minimal",
                    "--component",
                    "miri,rust-src",
                ],
                &[],
            )?;
        }
        if !have_miri() {
            return Err(format!(
                "Miri is still missing after rustup: `cargo {MIRI_TOOLCHAIN_ARG} miri` does not run"
            ));
        }
        notes.push(format!("installed Miri ({MIRI_TOOLCHAIN})"));
    }
    // Builds Miri's standard library once, so that its failures show here.
    run_visible("cargo", &[MIRI_TOOLCHAIN_ARG, "miri", "setup"], &[])
        .map_err(|e| format!("Miri cannot build its sysroot: {e}"))?;
    notes.push("Miri ready".into());
    Ok(())
}

/// Parses "QEMU emulator version 10.0.2 (...)" into (10, 0, 2).
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = &text[text.find("version ")? + "version ".len()..];
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// The version of a QEMU binary, or why there is none.
fn qemu_version(binary: &str) -> Result<(u32, u32, u32), String> {
    let out = capture(binary, &["--version"])
        .ok_or_else(|| format!("{binary}: not found or not runnable"))?;
    parse_qemu_version(&out)
        .ok_or_else(|| format!("{binary}: cannot parse version from {:?}", out.trim()))
}

fn version_ok(v: (u32, u32, u32)) -> bool {
    (v.0, v.1) >= MIN_QEMU
}

fn is_root() -> bool {
    // Effective UID is the second field of the "Uid:" line.
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            return line.split_whitespace().nth(2) == Some("0");
        }
    }
    capture("id", &["-u"]).is_some_and(|s| s.trim() == "0")
}

fn is_debian_bookworm() -> bool {
    let Ok(text) = fs::read_to_string("/etc/os-release") else {
        return false;
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_string())
    };
    field("ID=").as_deref() == Some("debian")
        && field("VERSION_CODENAME=").as_deref() == Some("bookworm")
}

fn install_instructions() -> String {
    format!(
        "install QEMU >= {}.{} (qemu-system-aarch64 and qemu-system-x86_64). On Debian bookworm, as root:\n\
         \x20   echo 'deb <your bookworm archive URI> bookworm-backports main' > {BACKPORTS_FILE}\n\
         \x20   apt-get update\n\
         \x20   DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports --no-install-recommends qemu-system-arm qemu-system-x86 qemu-utils\n\
         (plain bookworm only has QEMU 7.2; qemu-utils holds qemu-img, which the virtio-blk tests use). Elsewhere install QEMU {}.{} or newer from your distribution, \
         or set QEMU_SYSTEM_AARCH64 / QEMU_SYSTEM_X86_64 to suitable binaries.",
        MIN_QEMU.0, MIN_QEMU.1, MIN_QEMU.0, MIN_QEMU.1
    )
}

fn apt_install_backports() -> Result<(), String> {
    println!(
        "xtask: installing QEMU {}.x from bookworm-backports (qemu-system-arm, qemu-system-x86, qemu-utils)",
        MIN_QEMU.0
    );
    let line = backports_line()?;
    let current = fs::read_to_string(BACKPORTS_FILE).unwrap_or_default();
    if !current.lines().any(|l| l.trim() == line) {
        println!("xtask: adding `{line}` to {BACKPORTS_FILE}");
        let mut text = current;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        fs::write(BACKPORTS_FILE, text)
            .map_err(|e| format!("cannot write {BACKPORTS_FILE}: {e}"))?;
    }
    run_visible("apt-get", &["update"], &[])?;
    run_visible(
        "apt-get",
        &[
            "install",
            "-y",
            "-t",
            "bookworm-backports",
            "--no-install-recommends",
            "qemu-system-arm",
            "qemu-system-x86",
            "qemu-utils",
        ],
        &[("DEBIAN_FRONTEND", "noninteractive")],
    )
}

fn ensure_qemu(needs: &Needs, notes: &mut Vec<String>) -> Result<(), String> {
    let arches = needs.qemu_arches();
    let mut installed = false;
    for arch in arches {
        let binary = arch.qemu_binary();
        let overridden = std::env::var(arch.qemu_env()).is_ok_and(|v| !v.trim().is_empty());
        let problem = match qemu_version(&binary) {
            Ok(v) if version_ok(v) => {
                notes.push(format!("{binary} {}.{}.{}", v.0, v.1, v.2));
                continue;
            }
            Ok(v) => format!(
                "{binary} is version {}.{}.{}, older than {}.{}",
                v.0, v.1, v.2, MIN_QEMU.0, MIN_QEMU.1
            ),
            Err(e) => e,
        };
        if overridden {
            return Err(format!(
                "{problem} ({} is set): point it at QEMU >= {}.{}",
                arch.qemu_env(),
                MIN_QEMU.0,
                MIN_QEMU.1
            ));
        }
        if installed || !is_root() || !is_debian_bookworm() {
            return Err(format!("{problem}: {}", install_instructions()));
        }
        apt_install_backports()?;
        installed = true;
        match qemu_version(&binary) {
            Ok(v) if version_ok(v) => {
                notes.push(format!("installed {binary} {}.{}.{}", v.0, v.1, v.2))
            }
            Ok(v) => {
                return Err(format!(
                    "{binary} is still {}.{}.{} after installing from backports (is another one earlier in PATH?)",
                    v.0, v.1, v.2
                ));
            }
            Err(e) => return Err(format!("{e} after installing from backports")),
        }
    }
    Ok(())
}

/// The first line of `qemu-img --version`, or why there is none.
fn qemu_img_version(binary: &str) -> Result<String, String> {
    let out = capture(binary, &["--version"])
        .ok_or_else(|| format!("{binary}: not found or not runnable"))?;
    Ok(out.lines().next().unwrap_or("").trim().to_string())
}

fn qemu_img_instructions() -> String {
    format!(
        "install qemu-img (the virtio-blk system tests make their disk images with it). On Debian bookworm, as root:\n\
         \x20   echo 'deb <your bookworm archive URI> bookworm-backports main' > {BACKPORTS_FILE}\n\
         \x20   apt-get update\n\
         \x20   DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports --no-install-recommends qemu-utils\n\
         Elsewhere install your distribution's qemu-img (Debian/Ubuntu: qemu-utils; Fedora: qemu-img), \
         or set QEMU_IMG to a qemu-img binary."
    )
}

fn ensure_qemu_img(notes: &mut Vec<String>) -> Result<(), String> {
    let binary = crate::disk::qemu_img();
    let problem = match qemu_img_version(&binary) {
        Ok(v) => {
            notes.push(v);
            return Ok(());
        }
        Err(e) => e,
    };
    let overridden = std::env::var("QEMU_IMG").is_ok_and(|v| !v.trim().is_empty());
    if overridden || !is_root() || !is_debian_bookworm() {
        return Err(format!("{problem}: {}", qemu_img_instructions()));
    }
    apt_install_backports()?;
    let v = qemu_img_version(&binary).map_err(|e| {
        format!(
            "{e} after installing qemu-utils from backports: {}",
            qemu_img_instructions()
        )
    })?;
    notes.push(format!("installed {v}"));
    Ok(())
}

/// Checks (and where possible installs) everything `needs` asks for.
/// Returns short notes on what was found or installed.
pub fn ensure(needs: &Needs) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    if needs.targets {
        ensure_targets(&mut notes)?;
    }
    ensure_components(needs, &mut notes)?;
    if needs.miri {
        ensure_miri(&mut notes)?;
    }
    ensure_qemu(needs, &mut notes)?;
    if needs.qemu_img {
        ensure_qemu_img(&mut notes)?;
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backports_archive_is_the_machines_own() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n".to_string();
        assert_eq!(
            bookworm_archive(&[deb822]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line =
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/d bookworm main\n"
                .to_string();
        assert_eq!(
            bookworm_archive(&[one_line]).as_deref(),
            Some("http://m.example/d")
        );
        let others = "deb http://m.example/d bookworm-security main\nTypes: deb-src\nURIs: http://x\nSuites: bookworm\n".to_string();
        assert_eq!(bookworm_archive(&[others]), None);
    }

    #[test]
    fn parses_qemu_versions() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.22 (Debian)"),
            Some((7, 2, 22))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.2.0-rc1"),
            Some((9, 2, 0))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 11.1"),
            Some((11, 1, 0))
        );
        assert_eq!(parse_qemu_version("nonsense"), None);
        assert!(version_ok((10, 0, 0)));
        assert!(version_ok((11, 0, 0)));
        assert!(!version_ok((9, 2, 4)));
    }
}
