//! Building examples and booting them under QEMU with a timeout.

use std::env;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::systests::{Arch, EXAMPLES, SystemTest};
use crate::util;

/// Default seconds per QEMU run (`XTASK_TIMEOUT` overrides).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// The per-run timeout.
pub fn timeout() -> Result<Duration, String> {
    match env::var("XTASK_TIMEOUT") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("XTASK_TIMEOUT={s:?} is not a positive number of seconds")),
        _ => Ok(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    }
}

/// `QEMU_EXTRA_ARGS`, split into words.
pub fn extra_args() -> Result<Vec<String>, String> {
    match env::var("QEMU_EXTRA_ARGS") {
        Ok(s) => util::shell_split(&s).map_err(|e| format!("QEMU_EXTRA_ARGS: {e}")),
        Err(_) => Ok(Vec::new()),
    }
}

/// Whether to echo guest serial output live (`XTASK_VERBOSE` set and not "0").
pub fn verbose() -> bool {
    env::var("XTASK_VERBOSE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Cargo arguments that build `package` for `arch`.
pub fn build_args(package: &str, arch: Arch) -> Vec<String> {
    [
        "build",
        "--manifest-path",
        "examples/Cargo.toml",
        "--target",
        arch.target(),
        "-p",
        package,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Path of the built example ELF, relative to the repository root.
pub fn example_elf(package: &str, arch: Arch) -> PathBuf {
    Path::new("examples")
        .join("target")
        .join(arch.target())
        .join("debug")
        .join(package)
}

/// The full QEMU command line for a system test: program and arguments.
pub fn command(test: &SystemTest) -> Result<(String, Vec<String>), String> {
    let known = EXAMPLES
        .iter()
        .any(|e| e.package == test.example && e.arches.contains(&test.arch));
    if !known {
        return Err(format!(
            "system test {}: example {:?} is not listed in EXAMPLES for {}",
            test.name,
            test.example,
            test.arch.name()
        ));
    }
    let mut args: Vec<String> = test
        .arch
        .base_args()
        .iter()
        .map(|s| s.to_string())
        .collect();
    // A row that asks for a disk gets its image path (see `disk`).
    args.extend(crate::disk::substitute(test, test.qemu_args));
    args.extend(crate::trace::args(test));
    args.push("-kernel".into());
    args.push(example_elf(test.example, test.arch).display().to_string());
    args.extend(extra_args()?);
    Ok((test.arch.qemu_binary(), args))
}

/// What one QEMU run did.
#[derive(Debug)]
pub struct Outcome {
    /// QEMU's exit status (`None`: killed by a signal, e.g. our timeout).
    pub status: Option<i32>,
    /// Whether we killed it at the timeout.
    pub timed_out: bool,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Guest serial output (QEMU's stdout), line by line.
    pub serial: Vec<String>,
    /// Where everything was logged.
    pub log: PathBuf,
}

fn pump(
    stream: impl Read,
    log: Arc<Mutex<File>>,
    lines: Option<Arc<Mutex<Vec<String>>>>,
    prefix: &'static str,
    echo: bool,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']).to_string();
                if let Ok(mut f) = log.lock() {
                    let _ = writeln!(f, "{prefix}{line}");
                }
                if echo {
                    println!("    | {prefix}{line}");
                }
                if let Some(lines) = &lines {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            }
        }
    }
}

/// Runs `program args` from the repository root, capturing stdout (the
/// guest's serial port) and stderr into `log`, killing it after `timeout`.
pub fn run(program: &str, args: &[String], log: &Path, timeout: Duration) -> io::Result<Outcome> {
    let mut file = File::create(log)?;
    writeln!(file, "$ {}", util::command_line(program, args))?;
    let file = Arc::new(Mutex::new(file));
    let serial = Arc::new(Mutex::new(Vec::new()));
    let echo = verbose();

    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(util::repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("could not start {program}: {e}")))?;

    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let (f, s) = (file.clone(), serial.clone());
        readers.push(thread::spawn(move || pump(out, f, Some(s), "", echo)));
    }
    if let Some(err) = child.stderr.take() {
        let f = file.clone();
        readers.push(thread::spawn(move || {
            pump(err, f, None, "[qemu stderr] ", echo)
        }));
    }

    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            // Only our own child: kill it and reap it.
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    for r in readers {
        let _ = r.join();
    }
    if let Ok(mut f) = file.lock() {
        if timed_out {
            let _ = writeln!(
                f,
                "[xtask] killed after the {:.1} s timeout",
                timeout.as_secs_f64()
            );
        }
        let _ = writeln!(f, "[xtask] {status}, {:.2} s", elapsed.as_secs_f64());
    }
    let serial = Arc::try_unwrap(serial)
        .map(|m| m.into_inner().unwrap_or_default())
        .unwrap_or_else(|a| a.lock().map(|l| l.clone()).unwrap_or_default());
    Ok(Outcome {
        status: status.code(),
        timed_out,
        elapsed,
        serial,
        log: log.to_path_buf(),
    })
}

/// Verdict on a run: `Ok(())` or the reason it failed.
pub fn judge(test: &SystemTest, outcome: &Outcome) -> Result<(), String> {
    let expected = test.expect.status(test.arch);
    if outcome.timed_out {
        return Err(format!(
            "timed out after {:.1} s (set XTASK_TIMEOUT to change)",
            outcome.elapsed.as_secs_f64()
        ));
    }
    if outcome.status != Some(expected) {
        return Err(format!(
            "exit status {}, expected {expected}",
            test.arch.explain_status(outcome.status)
        ));
    }
    let missing: Vec<&str> = test
        .require
        .iter()
        .copied()
        .filter(|want| !outcome.serial.iter().any(|line| line.contains(want)))
        .collect();
    if !missing.is_empty() {
        return Err(format!("serial output lacks {missing:?}"));
    }
    Ok(())
}
