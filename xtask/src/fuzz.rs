//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the cargo-fuzz targets of
//! `fuzz/` (libFuzzer, on the nightly toolchain) from their hand-built seeds
//! (`fuzz/seeds/<target>/`) and corpus (`fuzz/corpus/<target>/`, which keeps
//! what the fuzzer finds). The normal test command replays both directories,
//! so an input worth keeping only needs to stay in the corpus.

use std::fs;
use std::process::ExitCode;
use std::time::Instant;

use crate::util;

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// The `[[bin]]` names of `fuzz/Cargo.toml`: one per fuzz target.
fn targets() -> Result<Vec<String>, String> {
    let manifest = util::repo_root().join("fuzz").join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(value) = line.strip_prefix("name").filter(|_| in_bin) {
            let name = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// `[TARGET] [--seconds N]`.
fn parse(rest: &[String]) -> Result<(Option<String>, u64), String> {
    let (mut target, mut seconds) = (None, DEFAULT_SECONDS);
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        if arg == "--seconds" {
            seconds = args
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|&s| s > 0)
                .ok_or("--seconds needs a positive whole number")?;
        } else if !arg.starts_with('-') && target.is_none() {
            target = Some(arg.clone());
        } else {
            return Err(format!(
                "unexpected argument {arg:?}; usage: cargo xtask fuzz [TARGET] [--seconds N]"
            ));
        }
    }
    Ok((target, seconds))
}

/// cargo-fuzz on the nightly toolchain, installed with `cargo install` if missing.
fn ensure_cargo_fuzz() -> Result<(), String> {
    if util::capture("cargo", &["+nightly", "--version"]).is_none() {
        return Err(
            "fuzzing needs the nightly toolchain: rustup toolchain install nightly --profile minimal"
                .into(),
        );
    }
    if util::capture("cargo", &["+nightly", "fuzz", "--version"]).is_some() {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz: cargo install cargo-fuzz --locked");
    let status = std::process::Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() || util::capture("cargo", &["+nightly", "fuzz", "--version"]).is_none() {
        return Err("cargo-fuzz could not be installed (cargo install cargo-fuzz --locked)".into());
    }
    Ok(())
}

/// What libFuzzer's last lines say: "Done 5343 runs in 61 second(s)".
fn runs(log: &std::path::Path) -> Option<String> {
    util::tail(log, 40)
        .into_iter()
        .rev()
        .find(|l| l.starts_with("Done ") && l.contains(" runs in "))
}

pub fn cmd_fuzz(rest: &[String]) -> ExitCode {
    let (wanted, seconds) = match parse(rest) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::from(2);
        }
    };
    let all = match targets() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    let selected: Vec<&String> = all
        .iter()
        .filter(|t| wanted.as_ref().is_none_or(|w| *t == w))
        .collect();
    if selected.is_empty() {
        eprintln!(
            "xtask: no fuzz target {wanted:?}; targets: {}",
            all.join(", ")
        );
        return ExitCode::from(2);
    }
    if let Err(e) = ensure_cargo_fuzz() {
        eprintln!("xtask: {e}");
        return ExitCode::FAILURE;
    }
    let logs = match util::logs_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("xtask: cannot create target/xtask/logs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for target in selected {
        let corpus = format!("fuzz/corpus/{target}");
        let seeds = format!("fuzz/seeds/{target}");
        // The first directory is where libFuzzer writes what it finds.
        let _ = fs::create_dir_all(util::repo_root().join(&corpus));
        let args: Vec<String> = [
            "+nightly",
            "fuzz",
            "run",
            target,
            &corpus,
            &seeds,
            "--",
            &format!("-max_total_time={seconds}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        println!("  $ {}", util::command_line("cargo", &args));
        let log = logs.join(util::log_file_name(&format!("fuzz-{target}")));
        let start = Instant::now();
        let ok = util::run_logged_no_env("cargo", &args, &util::repo_root(), &log);
        let took = start.elapsed().as_secs_f64();
        match ok {
            Ok(true) => {
                passed += 1;
                let done = runs(&log).unwrap_or_else(|| "no run count in the log".into());
                println!("PASS fuzz:{target} ({took:.0} s; {done})");
            }
            Ok(false) | Err(_) => {
                failed += 1;
                println!(
                    "FAIL fuzz:{target} ({took:.0} s): a crash or build failure, see {} and fuzz/artifacts/{target}/",
                    util::display_path(&log)
                );
                for line in util::tail(&log, 25) {
                    println!("    | {line}");
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_targets_in_the_manifest() {
        let t = targets().unwrap();
        assert!(t.iter().any(|n| n == "two_step"), "{t:?}");
        assert!(
            !t.iter().any(|n| n == "iommu-fuzz"),
            "the package name is not a target"
        );
    }

    #[test]
    fn parses_arguments() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse(&s(&[])), Ok((None, DEFAULT_SECONDS)));
        assert_eq!(
            parse(&s(&["two_step", "--seconds", "5"])),
            Ok((Some("two_step".into()), 5))
        );
        assert!(parse(&s(&["--seconds", "0"])).is_err());
        assert!(parse(&s(&["a", "b"])).is_err());
    }
}
