//! The guest's early filesystems: proc, sysfs, devtmpfs, devpts, and tmpfs on
//! /tmp and /run, plus creating their mount points.
//!
//! Owns: the mount table, its flags and options, and which failures are
//! tolerated (EBUSY = already mounted; /dev/pts is optional).
//!
//! Must not: log (it has no idea yet whether debug is on: the cmdline is read
//! after /proc is mounted), read configuration, or power off. It returns the
//! list of problems and the caller decides.

use std::ffi::CString;
use std::io;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: libc::c_ulong,
    data: &'static str,
    /// Mode for the mount point if we have to create it.
    dir_mode: libc::mode_t,
    /// Failure of an optional mount is reported but not fatal.
    required: bool,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
        dir_mode: 0o555,
        required: true,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: "",
        dir_mode: 0o555,
        required: true,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
        dir_mode: 0o755,
        required: true,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "gid=5,mode=0620,ptmxmode=0666",
        dir_mode: 0o755,
        required: false,
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
        dir_mode: 0o1777,
        required: true,
    },
    Mount {
        source: "tmpfs",
        target: "/var",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        dir_mode: 0o755,
        // Optional: a read-only root without /var still boots.
        required: false,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
        dir_mode: 0o755,
        required: true,
    },
];

/// One mount that did not happen.
pub struct Failure {
    pub target: &'static str,
    pub required: bool,
    pub message: String,
}

/// Mount everything, in order. Returns the list of mounts done (for debug
/// output) and the failures.
pub fn mount_all() -> (Vec<&'static str>, Vec<Failure>) {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for m in MOUNTS {
        let fail = |message: String| Failure {
            target: m.target,
            required: m.required,
            message,
        };
        if let Err(e) = ensure_dir(m.target, m.dir_mode) {
            failures.push(fail(format!("cannot create mount point {}: {e}", m.target)));
            continue;
        }
        match mount(m.source, m.target, m.fstype, m.flags, m.data) {
            Ok(()) => done.push(m.target),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => done.push(m.target),
            Err(e) => failures.push(fail(format!(
                "cannot mount {} on {}: {e}",
                m.fstype, m.target
            ))),
        }
    }
    (done, failures)
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `mkdir` that accepts an existing directory.
pub fn ensure_dir(path: &str, mode: libc::mode_t) -> io::Result<()> {
    let p = cstr(path)?;
    // SAFETY: `p` is a valid NUL-terminated string.
    if unsafe { libc::mkdir(p.as_ptr(), mode) } == 0 {
        // mkdir applies the umask; the mode matters for /tmp (sticky bit).
        // SAFETY: as above.
        unsafe { libc::chmod(p.as_ptr(), mode) };
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(());
    }
    Err(e)
}

pub fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; `data` is a plain option string for these filesystems.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
