//! Skips that are seen and counted: a skipping test prints `SKIPPED: reason` and, when
//! `BEAMBAKE_SKIP_LOG` names a file (`cargo xtask test` sets it), appends
//! `binary::test<TAB>reason` to it. libtest still counts the test as passed; xtask
//! subtracts the skips, lists them, and fails the run on CI.
//!
//! `SKIP_LOG_ENV`, [`record`], `skip!`: `use beambake_testkit::skip;` brings both the
//! module and the macro; `skip_if!(reason)` skips when an `Option` of a reason is `Some`.

use std::io::Write;
use std::path::Path;

/// The file a skip is recorded in, one line per skip.
pub const SKIP_LOG_ENV: &str = "BEAMBAKE_SKIP_LOG";

/// Records that the calling test skips (all or part of its checks) for `reason`.
pub fn record(reason: &str) {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| binary_name(&s))
        .unwrap_or_default();
    let reason = one_line(reason);
    eprintln!("SKIPPED: {reason}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        if let Err(e) = append(Path::new(&log), &log_line(&binary, test, &reason)) {
            panic!("cannot record the skip in {}: {e}", log.to_string_lossy());
        }
    }
}

/// A test binary's name without the hash cargo appends (`NAME-HASH`).
fn binary_name(stem: &str) -> String {
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
        _ => stem.to_string(),
    }
}

fn one_line(reason: &str) -> String {
    reason.replace(['\n', '\t'], " ")
}

/// The line xtask reads: `binary::test<TAB>reason<NL>`, the reason on one line.
fn log_line(binary: &str, test: &str, reason: &str) -> String {
    format!("{binary}::{test}\t{}\n", one_line(reason))
}

/// One write of one line to an O_APPEND file: lines of parallel tests do not mix.
fn append(log: &Path, line: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
}

/// Skips the rest of the calling test with a visible, recorded reason
/// ([`skip::record`](crate::skip::record)), then returns from it.
#[macro_export]
macro_rules! skip {
    ($($t:tt)*) => {{
        $crate::skip::record(&format!($($t)*));
        return;
    }};
}

/// Skips the rest of the calling test, as `skip!`, when `why` (an `Option` of a reason,
/// such as "what this host lacks") is `Some`.
#[macro_export]
macro_rules! skip_if {
    ($why:expr) => {
        if let Some(why) = $why {
            $crate::skip!("{why}");
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_what_xtask_reads() {
        assert_eq!(
            log_line("kernel", "real_fetch", "apt-get\tunavailable\nhere"),
            "kernel::real_fetch\tapt-get unavailable here\n"
        );
        assert_eq!(binary_name("microvm-0123abcdef"), "microvm");
        assert_eq!(binary_name("beambake_testkit-5f3a9"), "beambake_testkit");
        assert_eq!(binary_name("no-hash-here"), "no-hash-here");
    }

    #[test]
    fn lines_are_appended() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("skips.log");
        append(&log, &log_line("a", "t1", "one")).unwrap();
        append(&log, &log_line("a", "t2", "two")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a::t1\tone\na::t2\ttwo\n"
        );
    }
}
