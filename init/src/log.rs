//! Console output of the init: the `beambake-init: ` prefix, the quiet/debug
//! switch, monotonic timestamps on debug lines, and making sure fds 0, 1 and 2
//! are open (on `/dev/console`) before anything else can take those numbers.
//!
//! Must not: buffer output (every line is one `write(2)` so lines from the
//! init and its children do not interleave mid-line), fail or panic (a lost
//! log line is never a reason to stop booting), or decide anything about what
//! is fatal: callers do that.

use std::ffi::CStr;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Seconds since boot (CLOCK_MONOTONIC), as `S.mmm`.
pub fn uptime() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    format!("{}.{:03}", ts.tv_sec, ts.tv_nsec / 1_000_000)
}

/// Write one complete line to fd 2. Errors are ignored on purpose.
pub fn emit(args: fmt::Arguments<'_>) {
    let line = format!("{}{args}\n", beambake_contract::console::LOG_PREFIX);
    let mut buf = line.as_bytes();
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid slice for its length.
        let n = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// Always printed (used for the few lines that are part of the contract:
/// the `starting` line and the release exit line).
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::emit(format_args!($($arg)*)) };
}

macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::emit(format_args!("warning: {}", format_args!($($arg)*))) };
}

macro_rules! error {
    ($($arg:tt)*) => { $crate::log::emit(format_args!("error: {}", format_args!($($arg)*))) };
}

/// Printed only with `beambake.debug=1`, with a monotonic timestamp.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::emit(format_args!("[{}] {}", $crate::log::uptime(), format_args!($($arg)*)))
        }
    };
}

pub(crate) use {debug, error, info, warning};

fn fd_is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; it only reports EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Make sure fds 0, 1 and 2 are open: the kernel opens `/dev/console` for
/// init only if it exists in the initramfs. Falls back to `/dev/null` so that
/// a later `open()` can never land on 0..=2 by accident.
pub fn ensure_std_fds() {
    for fd in 0..=2 {
        if fd_is_open(fd) {
            continue;
        }
        for path in [c"/dev/console", c"/dev/null"] {
            if open_as(path, fd) {
                break;
            }
        }
    }
}

fn open_as(path: &CStr, want: libc::c_int) -> bool {
    // SAFETY: `path` is NUL-terminated; flags are plain constants.
    let got = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if got < 0 {
        return false;
    }
    if got != want {
        // SAFETY: both are fds we own / want to own; dup2 onto a closed fd.
        let ok = unsafe { libc::dup2(got, want) } == want;
        // SAFETY: `got` was returned by open above and is not used afterwards.
        unsafe { libc::close(got) };
        return ok;
    }
    true
}
