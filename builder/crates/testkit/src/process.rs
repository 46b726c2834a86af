//! Processes a test starts, none of which outlives it: each is guarded ([`guard`]) so the
//! kernel kills it (SIGKILL, `PR_SET_PDEATHSIG`) when the thread that started it ends (a
//! test's thread, or the whole test binary, killed or not), and a [`Guarded`] one is also
//! killed and reaped when dropped, on every path. Also: loopback ports, the VM lock,
//! process and namespace look-ups, scripts, and running as `nobody`.
//!
//! A guarded process is tied to the thread that started it: start it on the test's own
//! thread (not a helper thread that ends first).

use std::ffi::OsStr;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Makes the process `cmd` starts die (SIGKILL) when the thread that starts it ends.
pub fn guard(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid); it allocates nothing on its success path.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The test binary died before the signal was armed: nothing would send it.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// Runs `cmd` guarded to its end and returns its output (stdin is null); panics if it
/// cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    guard(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` guarded to its end, its stdout and stderr the test's own, and returns its
/// status; panics if it cannot be started.
pub fn status(cmd: &mut Command) -> ExitStatus {
    guard(cmd)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// A started process, killed (SIGKILL) and reaped when dropped, on every path.
pub struct Guarded {
    child: Child,
    log: Option<PathBuf>,
}

impl Guarded {
    /// Starts `cmd` with its stdout and stderr in the file `log` and no stdin.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Guarded {
        let f = fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        cmd.stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null());
        let mut g = Guarded::start(cmd);
        g.log = Some(log);
        g
    }

    /// Starts `cmd` with the stdio it was given.
    pub fn start(mut cmd: Command) -> Guarded {
        let child = guard(&mut cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Guarded { child, log: None }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process (a no-op once it has been reaped).
    pub fn signal(&mut self, signal: i32) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) of our own child, not yet reaped: the pid is still its.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Waits up to `bound` for the process to exit: its status, or `None` if it still
    /// runs (it is killed when dropped).
    pub fn wait_bounded(&mut self, bound: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() >= bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the process wrote to its log so far ([`Guarded::spawn`]; empty otherwise).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("process exited with {st}; log:\n{}", self.log_text());
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serialises the tests of one binary that boot VMs: two cores, TCG; parallel guests
/// only slow each other.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Processes (other than this one) whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut v = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

/// Network namespace inodes in use by any process.
pub fn netns_in_use() -> std::collections::BTreeSet<String> {
    let mut s = std::collections::BTreeSet::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(l) = fs::read_link(e.path().join("ns/net")) {
            s.insert(l.display().to_string());
        }
    }
    s
}

/// Writes the executable script `dir/NAME` (`#!/bin/sh`, then `body`) from a child
/// process, so no write fd of ours can be inherited by a concurrent fork (which would
/// make the script's exec fail with ETXTBSY).
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
        .arg(&p)
        .stdin(Stdio::piped());
    let mut c = Guarded::start(cmd);
    c.child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
        .unwrap();
    assert!(c.wait().success(), "writing {}", p.display());
    p
}

/// Hands `base` (recursively) to `nobody` and makes it reachable, for tests that run a
/// program unprivileged ([`as_nobody`]).
pub fn give_to_nobody(base: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let o = output(
        Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(base),
    );
    assert!(
        o.status.success(),
        "chown -R nobody:nogroup {}: {}",
        base.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `bin ARGS` run as `nobody` (setpriv, which arms the parent-death signal again after
/// the change of user clears it), with `HOME=base`, `XDG_CACHE_HOME=base/cache`, a plain
/// PATH and no stdin.
pub fn as_nobody<S: AsRef<OsStr>>(base: &Path, bin: &Path, args: &[S]) -> Output {
    output(
        Command::new("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--pdeathsig=SIGKILL",
                "env",
            ])
            .arg(format!("HOME={}", base.display()))
            .arg(format!("XDG_CACHE_HOME={}", base.join("cache").display()))
            .arg("PATH=/usr/bin:/bin")
            .arg(bin)
            .args(args)
            .stdin(Stdio::null()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gone, or a zombie (nothing runs).
    fn gone(pid: u32) -> bool {
        let state = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().and_then(|r| r.trim().chars().next()));
        matches!(state, None | Some('Z') | Some('X'))
    }

    fn wait_gone(pid: u32) {
        let start = Instant::now();
        while !gone(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{pid} still runs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_guarded_process_is_killed_and_reaped_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("1000");
        let mut g = Guarded::spawn(cmd, d.path().join("log"));
        g.check_alive();
        assert_eq!(g.wait_bounded(Duration::from_millis(200)), None);
        let pid = g.id();
        drop(g);
        // Reaped: no zombie left either.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn a_guarded_process_dies_with_the_thread_that_started_it() {
        // A thread starts `sleep` and ends without waiting for it (the child handle is
        // forgotten, so no drop kills it): the kernel does.
        let pid = std::thread::spawn(|| {
            let child = guard(Command::new("sleep").arg("1000")).spawn().unwrap();
            let pid = child.id();
            std::mem::forget(child);
            pid
        })
        .join()
        .unwrap();
        wait_gone(pid);
        // Reap the zombie: it is this process's child.
        // SAFETY: waitpid of our own child.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    }

    #[test]
    fn output_status_signal_and_log() {
        let o = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert!(status(&mut Command::new("true")).success());
        let d = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 1000"]);
        let mut g = Guarded::spawn(cmd, d.path().join("log"));
        let start = Instant::now();
        while !g.log_text().contains("started") {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        g.signal(libc::SIGTERM);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(g.wait().signal(), Some(libc::SIGTERM));
        g.signal(libc::SIGTERM); // reaped: nothing to signal
    }

    #[test]
    fn scripts_run_and_ports_are_free() {
        let d = tempfile::tempdir().unwrap();
        let s = write_script(d.path(), "hello", "echo hello \"$1\"");
        let o = output(Command::new(&s).arg("there"));
        assert_eq!(o.stdout, b"hello there\n");
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(processes_matching("no such command line, surely").is_empty());
        assert!(!netns_in_use().is_empty());
        drop(vm_lock());
    }
}
