//! Process and path helpers.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `target/xtask/logs` under the repository root, created if missing.
pub fn logs_dir() -> io::Result<PathBuf> {
    let dir = repo_root().join("target").join("xtask").join("logs");
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A file name derived from a step name.
pub fn log_file_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{clean}.log")
}

/// `path` relative to the repository root if it is inside it.
pub fn display_path(path: &Path) -> String {
    let root = repo_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Quotes one argument for a POSIX shell, only if needed.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./,=:+@%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A command line as a copy-pasteable shell string.
pub fn command_line(program: &str, args: &[String]) -> String {
    let mut line = shell_quote(program);
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    line
}

/// Splits a string into words like a (very small) shell: whitespace separates
/// words, single quotes group literally, double quotes group with `\"` and
/// `\\` escapes, and a backslash outside quotes escapes the next character.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Runs `program args` in `dir` with stdout and stderr appended to `log`
/// (after a header line with the command). Returns whether it succeeded.
pub fn run_logged_no_env(
    program: &str,
    args: &[String],
    dir: &Path,
    log: &Path,
) -> io::Result<bool> {
    run_logged(program, args, &[], dir, log)
}

/// [`run_logged_no_env`] with environment variables set for the command.
pub fn run_logged(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    dir: &Path,
    log: &Path,
) -> io::Result<bool> {
    let mut file = File::create(log)?;
    writeln!(
        file,
        "$ (cd {}) {}",
        dir.display(),
        command_line(program, args)
    )?;
    file.flush()?;
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file.try_clone()?))
        .status();
    match status {
        Ok(status) => {
            writeln!(file, "[xtask] {status}")?;
            Ok(status.success())
        }
        Err(e) => {
            writeln!(file, "[xtask] could not run {program}: {e}")?;
            Ok(false)
        }
    }
}

/// Runs a command and returns its stdout if it succeeds.
pub fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes terminal escape sequences (rustfmt colours its diffs even into a file).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // Character-set selection, e.g. ESC ( B.
            Some('(' | ')') => {
                chars.next();
            }
            _ => {}
        }
    }
    out
}

/// The last `n` lines of a file, without terminal escape sequences.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| strip_ansi(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plain_and_quoted() {
        assert_eq!(
            shell_split("-trace 'smmuv3_*' -D /tmp/t.log").unwrap(),
            ["-trace", "smmuv3_*", "-D", "/tmp/t.log"]
        );
        assert_eq!(shell_split("  a\t b  ").unwrap(), ["a", "b"]);
        assert_eq!(
            shell_split(r#"x"a b"y 'c d' e\ f"#).unwrap(),
            ["xa by", "c d", "e f"]
        );
        assert_eq!(shell_split("''").unwrap(), [""]);
        assert!(shell_split("'open").is_err());
        assert!(shell_split("").unwrap().is_empty());
    }

    #[test]
    fn strips_escapes() {
        assert_eq!(strip_ansi("\x1b[31m-   x\x1b(B\x1b[m y"), "-   x y");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn quote_round_trips() {
        for arg in ["plain", "with space", "it's", "smmuv3_*", "", "a=b,c"] {
            let quoted = shell_quote(arg);
            assert_eq!(shell_split(&quoted).unwrap(), [arg], "{quoted}");
        }
    }
}
