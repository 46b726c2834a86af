//! Running the workload: spawning services and the release, reaping every
//! child (orphans included), forwarding termination signals to the release,
//! and the shutdown sequence once the release has exited.
//!
//! Signals: SIGTERM, SIGINT and SIGPWR get a handler that sends SIGTERM to
//! the release (the BEAM treats SIGTERM as `init:stop()`). The handler only
//! does `kill(2)` on a pid read from an atomic, so there is no window where a
//! signal can be lost while the main loop sits in `waitpid`. A signal that
//! arrives before the release exists is remembered and stops the boot.
//!
//! Must not: mount, configure the network or parse configuration; exit
//! (shutdown ends in `power::power_off`); or block forever during shutdown
//! (every wait there is bounded).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::log::{debug, info, warning};
use beambake_contract::Service;

/// Signals whose handler we install (and reset to default in children).
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGPWR];

/// Pid of the running release, 0 when there is none.
static RELEASE_PID: AtomicI32 = AtomicI32::new(0);
/// A forwarded signal that arrived while there was no release to forward to.
static PENDING: AtomicI32 = AtomicI32::new(0);
/// A stop was asked for (a forwarded signal, the control line, the power button): the
/// release is told again until it ends, since a BEAM that is still booting has no
/// signal server yet and drops SIGTERM.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// How often a release that was told to stop is told again.
const STOP_AGAIN: Duration = Duration::from_secs(2);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (kill) and errno save/restore.
    unsafe {
        let errno = *libc::__errno_location();
        let pid = RELEASE_PID.load(Ordering::SeqCst);
        STOPPING.store(true, Ordering::SeqCst);
        if pid > 0 {
            libc::kill(pid, libc::SIGTERM);
        } else {
            PENDING.store(sig, Ordering::SeqCst);
        }
        *libc::__errno_location() = errno;
    }
}

/// Install the forwarding handler (no SA_RESTART: waits see EINTR) and make
/// sure none of these signals is blocked.
pub fn install_signal_handlers() -> io::Result<()> {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction is valid; we fill handler and mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        // SAFETY: `sa.sa_mask` is a valid sigset_t.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: valid signal number and sigaction.
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    unblock_all();
    Ok(())
}

fn unblock_all() {
    // SAFETY: an emptied sigset_t is valid for SIG_SETMASK.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Blocks every signal in the calling thread: for the init's helper threads (the control
/// line, the power button), so the signals init handles always reach the main thread.
pub fn block_signals() {
    // SAFETY: a filled sigset_t is valid for SIG_BLOCK on this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Asks for the shutdown a SIGTERM to init asks for (the control line's `poweroff`, the
/// power button): the release gets SIGTERM now, or is not started when it does not run
/// yet.
pub fn request_stop() {
    // A real signal (handled since before the helper threads start), so the main
    // thread's wait for the release is interrupted and it keeps telling a release that
    // missed the first SIGTERM; every helper thread blocks signals, so the main thread
    // gets it. Its handler does what a SIGTERM to init does.
    // SAFETY: kill(2) of this process with a signal it handles.
    if unsafe { libc::kill(libc::getpid(), libc::SIGTERM) } < 0 {
        on_signal(libc::SIGTERM);
    }
}

/// The termination signal received before the release started, if any.
pub fn pending_signal() -> Option<libc::c_int> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Status(i32),
    Signal(i32),
}

impl Exit {
    fn from_wait(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Status(libc::WEXITSTATUS(status))
        }
    }

    /// The VM's exit code: N for an exit status, 128+S for a signal,
    /// clamped to 0..=255.
    pub fn code(self) -> u8 {
        let c = match self {
            Exit::Status(n) => n,
            Exit::Signal(s) => 128 + s,
        };
        c.clamp(0, 255) as u8
    }

    fn describe(self) -> String {
        match self {
            Exit::Status(n) => format!("exited with status {n}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
        }
    }
}

/// Build a command with exactly the spec's environment, cwd, stdin on
/// /dev/null and stdout/stderr on the console, and a `pre_exec` that resets
/// signal state and starts a new session.
fn command(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    cwd: &str,
) -> io::Result<Command> {
    let prog = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(prog);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (signal, sigprocmask, setsid); it allocates
    // nothing.
    unsafe {
        cmd.pre_exec(|| {
            for sig in FORWARDED {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

fn program(argv: &[String]) -> &str {
    argv.first().map(String::as_str).unwrap_or("")
}

struct Running {
    pid: libc::pid_t,
    name: String,
}

#[derive(Default)]
pub struct Supervisor {
    services: Vec<Running>,
}

impl Supervisor {
    /// Start one service; with `wait_tcp`, wait until it accepts
    /// connections. Errors are meant to be fatal.
    pub fn start_service(&mut self, s: &Service) -> Result<(), String> {
        let child = command(&s.argv, &s.env, &s.cwd)
            .and_then(|mut c| c.spawn())
            .map_err(|e| {
                format!(
                    "cannot start service {} ({}): {e}",
                    s.name,
                    program(&s.argv)
                )
            })?;
        let pid = child.id() as libc::pid_t;
        debug!("started service {} as pid {pid}", s.name);
        self.services.push(Running {
            pid,
            name: s.name.clone(),
        });
        if let Some(port) = s.wait_tcp {
            self.wait_tcp(&s.name, pid, port)?;
            if pending_signal().is_none() {
                debug!("service {} listens on port {port}", s.name);
            }
        }
        Ok(())
    }

    fn wait_tcp(&mut self, name: &str, pid: libc::pid_t, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A listening socket, read from the kernel's table: a probe connection
            // would make epmd log "got partial packet only" on the console.
            if listening(port) {
                return Ok(());
            }
            if let Some(sig) = pending_signal() {
                // The caller sees the pending signal and shuts down.
                debug!("signal {sig} received, no longer waiting for service {name}");
                return Ok(());
            }
            // Reap whatever has exited meanwhile; stop early if it is the
            // service we are waiting for.
            while let Some((p, exit)) = try_reap() {
                self.note_exit(p, exit);
                if p == pid {
                    return Err(format!(
                        "service {name} {} before listening on port {port}",
                        exit.describe()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "service {name} did not listen on port {port} within 10 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log a child that is not the release.
    fn note_exit(&mut self, pid: libc::pid_t, exit: Exit) {
        if let Some(i) = self.services.iter().position(|r| r.pid == pid) {
            let r = self.services.remove(i);
            warning!("service {} (pid {pid}) {}", r.name, exit.describe());
        } else {
            debug!("reaped pid {pid}: {}", exit.describe());
        }
    }

    /// Start the release and supervise until it exits. Returns how it ended.
    #[allow(clippy::too_many_arguments)]
    pub fn run_release(
        &mut self,
        name: &str,
        vsn: &str,
        argv: &[String],
        env: &std::collections::BTreeMap<String, String>,
        cwd: &str,
        shell: bool,
    ) -> Result<Exit, String> {
        let mut cmd = command(argv, env, cwd).map_err(|e| e.to_string())?;
        if shell {
            // Its Erlang shell reads the console.
            cmd.stdin(Stdio::inherit());
        }
        info!("starting {name} {vsn}");
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start release {name} ({}): {e}", program(argv)))?;
        let pid = child.id() as libc::pid_t;
        RELEASE_PID.store(pid, Ordering::SeqCst);
        // A signal that came in before the store was only recorded: forward
        // it now. One arriving after the store is forwarded by the handler.
        if PENDING.swap(0, Ordering::SeqCst) != 0 {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        debug!("release running as pid {pid}");
        let mut again_at: Option<Instant> = None;
        loop {
            let mut status: libc::c_int = 0;
            // Once stopping, poll: the release is told again every STOP_AGAIN.
            let stopping = STOPPING.load(Ordering::SeqCst);
            let flags = if stopping { libc::WNOHANG } else { 0 };
            // SAFETY: `status` is a valid out-pointer.
            let p = unsafe { libc::waitpid(-1, &mut status, flags) };
            if p == 0 {
                let now = Instant::now();
                match again_at {
                    Some(t) if now >= t => {
                        debug!("release {pid} still runs after SIGTERM: telling it again");
                        // SAFETY: plain kill(2) of our own child.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                        again_at = Some(now + STOP_AGAIN);
                    }
                    Some(_) => {}
                    None => again_at = Some(now + STOP_AGAIN),
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if p < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    _ => {
                        RELEASE_PID.store(0, Ordering::SeqCst);
                        return Err(format!("waitpid failed while the release runs: {e}"));
                    }
                }
            }
            let exit = Exit::from_wait(status);
            if p == pid {
                RELEASE_PID.store(0, Ordering::SeqCst);
                return Ok(exit);
            }
            self.note_exit(p, exit);
        }
    }
}

/// True when a TCP socket listens on `port` (any address, IPv4 or IPv6), per
/// `/proc/net/tcp{,6}`.
fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| table_has_listener(&t, port))
            .unwrap_or(false)
    })
}

/// Whether a `/proc/net/tcp` table has a socket in state LISTEN (`0A`) on `port`.
fn table_has_listener(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1).unwrap_or("");
        let state = f.nth(1).unwrap_or("");
        state == "0A"
            && local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
    })
}

/// One non-blocking reap; `None` when nothing (more) has exited.
fn try_reap() -> Option<(libc::pid_t, Exit)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a valid out-pointer.
    let p = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if p > 0 {
        Some((p, Exit::from_wait(status)))
    } else {
        None
    }
}

/// Reap children until none are left or `timeout` passes. Returns whether
/// all are gone.
fn reap_until_gone(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer.
        let p = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if p > 0 {
            debug!("reaped pid {p}: {}", Exit::from_wait(status).describe());
            continue;
        }
        if p < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM everything, give it 2 s, SIGKILL the rest, reap, sync.
pub fn stop_everything() {
    // SAFETY: kill(-1, ...) from PID 1 signals every process but init.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    if !reap_until_gone(Duration::from_secs(2)) {
        debug!("processes left after SIGTERM, sending SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        if !reap_until_gone(Duration::from_secs(1)) {
            warning!("some processes could not be reaped");
        }
    }
    debug!("syncing");
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
}

/// The end of a normal run: the exit line, stop everything, power off
/// with the release's code.
pub fn finish(exit: Exit) -> ! {
    info!("release {}", exit.describe());
    stop_everything();
    let code = exit.code();
    debug!("powering off with code {code}");
    crate::power::power_off(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_found_in_the_kernel_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 00000000:1111 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n   1: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000\n";
        assert!(table_has_listener(t, 4369));
        assert!(!table_has_listener(t, 8080), "established, not listening");
        assert!(!table_has_listener(t, 1));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Exit::Status(0).code(), 0);
        assert_eq!(Exit::Status(3).code(), 3);
        assert_eq!(Exit::Status(255).code(), 255);
        assert_eq!(Exit::Signal(15).code(), 143);
        assert_eq!(Exit::Signal(9).code(), 137);
        assert_eq!(Exit::Signal(200).code(), 255);
        assert_eq!(Exit::Status(3).describe(), "exited with status 3");
        assert_eq!(Exit::Signal(15).describe(), "killed by signal 15");
    }

    #[test]
    fn wait_status_decoding() {
        // Encodings as waitpid(2) reports them on Linux.
        assert_eq!(Exit::from_wait(3 << 8), Exit::Status(3));
        assert_eq!(Exit::from_wait(15), Exit::Signal(15));
        assert_eq!(Exit::from_wait(9 | 0x80), Exit::Signal(9));
    }
}
