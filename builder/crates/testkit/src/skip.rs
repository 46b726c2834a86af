//! Skips that are seen and counted, for unit tests (`beambake_testkit::skip`) and integration
//! tests (`tests/common`, which includes this file): a skipping test prints
//! `SKIPPED: reason` and, when `BEAMBAKE_SKIP_LOG` names a file (`cargo xtask test` sets
//! it), appends `binary::test<TAB>reason` to it. libtest still counts the test as passed;
//! xtask subtracts the skips, lists them, and fails the run on CI.
// Integration tests include this file and use their own `skip!`.
#![allow(dead_code, unused_macros, unused_imports)]

use std::io::Write;

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
        .map(|s| match s.rsplit_once('-') {
            // cargo's test binaries are NAME-HASH.
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    let reason = reason.replace(['\n', '\t'], " ");
    eprintln!("SKIPPED: {reason}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{binary}::{test}\t{reason}\n");
        // One write of one line to an O_APPEND file: lines of parallel tests do not mix.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip in {}: {e}", log.to_string_lossy());
        }
    }
}

/// Skips the rest of the calling test with a visible, recorded reason.
#[macro_export]
macro_rules! skip {
    ($($t:tt)*) => {{
        $crate::skip::record(&format!($($t)*));
        return;
    }};
}
