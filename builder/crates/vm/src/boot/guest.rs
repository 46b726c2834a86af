//! A running guest: one VM process (qemu or linux.uml) and its console log. It is
//! killed and reaped when dropped — on success, failure, timeout or panic — and dies with
//! the process that started it (`PR_SET_PDEATHSIG`), so no path leaks a VM; in its own
//! process group, the whole group is killed. What differs between hypervisors — how the
//! guest's exit status is read, how the VM is asked to stop — it asks its [`Vmm`].
//!
//! Must not: decide how the VM is configured.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::vmm::Vmm;
use super::BootError;

/// How a VM process is wired when it starts ([`Guest::spawn`]).
#[derive(Default)]
pub struct Wiring<'a> {
    /// Becomes the VM's fd 3 (its tap, or the socket its frames go through).
    pub tap: Option<&'a OwnedFd>,
    /// Becomes the VM's fd 4 (the init's control line, [`super::BootPlan::control`]).
    pub control: Option<&'a OwnedFd>,
    /// The VM's stdin and stdout are pipes, taken with [`Guest::take_stdio`].
    pub piped: bool,
    /// The VM's stdout is copied to ours and to the console log by
    /// [`Guest::pump_console`].
    pub tee: bool,
    /// Where the VM can be asked to stop cleanly ([`Vmm::stop_socket`]).
    pub stop_socket: Option<PathBuf>,
    /// The VM leads a process group of its own, killed as a whole (before the VM is
    /// reaped, so its id cannot have been reused) when the VM ends or is killed.
    pub own_group: bool,
}

/// One VM process of hypervisor `V`, killed and reaped when dropped.
pub struct Guest<V: Vmm + ?Sized = dyn Vmm> {
    vmm: Arc<V>,
    child: Child,
    pub console_log: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
    /// The VM's stdout and the log it is copied to, with the terminal, by
    /// [`Guest::pump_console`] (no thread: the sandbox process may not start one).
    tee: Option<(std::process::ChildStdout, fs::File)>,
    /// Where to ask the VM for a clean shutdown.
    stop_socket: Option<PathBuf>,
    /// The VMM took the request to stop cleanly ([`Guest::request_stop`]).
    stop_asked: bool,
    own_group: bool,
}

impl<V: Vmm + ?Sized> Guest<V> {
    /// Spawns `cmd`, a VM of `vmm` whose console goes to `console_log`, wired as `wiring`
    /// says.
    pub fn spawn(
        vmm: Arc<V>,
        mut cmd: Command,
        console_log: &Path,
        wiring: Wiring,
    ) -> Result<Guest<V>, BootError> {
        if wiring.tee {
            cmd.stdout(std::process::Stdio::piped());
        }
        if wiring.own_group {
            cmd.process_group(0);
        }
        if wiring.piped {
            cmd.stdin(std::process::Stdio::piped());
            cmd.stdout(std::process::Stdio::piped());
        }
        crate::net::dies_with_parent(&mut cmd);
        let fds: Vec<(i32, i32)> = [(wiring.tap, 3), (wiring.control, 4)]
            .into_iter()
            .filter_map(|(fd, target)| fd.map(|fd| (fd.as_raw_fd(), target)))
            .collect();
        if !fds.is_empty() {
            // SAFETY: fcntl/dup2 are async-signal-safe; `fds` was made before the fork.
            unsafe {
                cmd.pre_exec(move || place_fds(&fds));
            }
        }
        if vmm.ends_on_console() {
            // What this VM's console says decides when it has ended: nothing an earlier
            // run left in the log may count.
            fs::File::create(console_log).map_err(|source| BootError::Io {
                path: console_log.to_path_buf(),
                source,
            })?;
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .map_err(|source| vmm.spawn_error(program, source))?;
        let mut g = Guest {
            vmm,
            child,
            console_log: console_log.to_path_buf(),
            started: Instant::now(),
            status: None,
            tee: None,
            stop_socket: wiring.stop_socket,
            stop_asked: false,
            own_group: wiring.own_group,
        };
        if let Some(out) = wiring.tee.then(|| g.child.stdout.take()).flatten() {
            // On error `g` is dropped: the VM is killed.
            let log = fs::File::create(console_log).map_err(|source| BootError::Io {
                path: console_log.to_path_buf(),
                source,
            })?;
            g.tee = Some((out, log));
        }
        Ok(g)
    }

    /// The VM's stdin and stdout when it was spawned `piped` (once).
    pub fn take_stdio(&mut self) -> Option<(std::process::ChildStdin, std::process::ChildStdout)> {
        Some((self.child.stdin.take()?, self.child.stdout.take()?))
    }

    /// The VM process's id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Copies the VM's console to the terminal and the log until the VM closes it (when
    /// it was spawned with `tee`); returns at once otherwise.
    pub fn pump_console(&mut self) {
        use std::io::{Read, Write};
        let Some((mut out, mut log)) = self.tee.take() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut term = io::stdout();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = term.write_all(&buf[..n]);
            let _ = term.flush();
            let _ = log.write_all(&buf[..n]);
        }
    }

    /// Asks the VM to shut down cleanly, if it can be asked (see [`Guest::stop_by`]).
    pub fn request_stop(&mut self) {
        if self.exited().is_none() {
            if let Some(s) = &self.stop_socket {
                self.stop_asked |= self.vmm.request_stop(s).is_ok();
            }
        }
    }

    /// Waits until `deadline` for a VM asked to stop to end, then kills it. A VM that
    /// cannot be asked, or did not take the request, is killed at once.
    pub fn stop_by(&mut self, deadline: Instant) {
        if self.stop_asked {
            self.wait_until(deadline);
        }
        self.kill();
    }

    /// The guest's own exit status (from its init), once the VM has ended; `None` while
    /// it runs or when it ended another way (killed, kernel panic, ...).
    pub fn guest_status(&mut self) -> Option<i32> {
        let st = self.exited()?;
        self.vmm.guest_status(st, &self.console_log)
    }

    /// The exit status if the VM has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && self.vmm.ends_on_console()
            && self.vmm.ended_on_console(&self.console_log)
        {
            // The guest is gone; its VMM would stay up.
            self.kill();
        }
        if self.status.is_none() {
            if self.own_group {
                if self.leader_exited(false) {
                    // Its group goes with it.
                    self.kill();
                }
            } else if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits until the VM has ended or `deadline` passes (checking every 20 ms); its exit
    /// status, or `None` when it still runs.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits without bound.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        if self.vmm.ends_on_console() {
            // The VMM may outlive the guest: watch the console too.
            loop {
                if let Some(st) = self.exited() {
                    return Ok(st);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if self.own_group {
            self.leader_exited(true);
            self.kill();
            return self
                .status
                .ok_or_else(|| io::Error::other("the VM could not be reaped"));
        }
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console_log, lines)
    }

    /// Kills the VM (SIGKILL; its whole group when it has one) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            if self.own_group {
                // SAFETY: kill(2) on the VM's own process group: its leader is not reaped
                // yet, so the group id cannot have been reused; ESRCH is fine.
                unsafe {
                    libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
                }
            } else {
                let _ = self.child.kill();
            }
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }

    /// True when the VM process has exited (or cannot be waited for), without reaping it:
    /// it stays a zombie, so its process group id stays valid. With `block`, waits.
    fn leader_exited(&self, block: bool) -> bool {
        let flags = libc::WEXITED | libc::WNOWAIT | if block { 0 } else { libc::WNOHANG };
        loop {
            // SAFETY: waitid on our own child with WNOWAIT: it stays a zombie for wait().
            let (r, pid) = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let r = libc::waitid(libc::P_PID, self.child.id(), &mut info, flags);
                (r, info.si_pid())
            };
            if r != 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // WNOHANG with nothing to report leaves si_pid 0; an error (ECHILD) means it
            // is gone already.
            return r != 0 || pid != 0;
        }
    }
}

impl<V: Vmm + ?Sized> Drop for Guest<V> {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In a forked child before exec: each `(fd, target)` becomes `target`, open across exec.
/// Sources are first moved above every target, so placing one cannot close another.
fn place_fds(fds: &[(i32, i32)]) -> io::Result<()> {
    let mut high = [-1i32; 2];
    for (i, (fd, _)) in fds.iter().enumerate().take(2) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open descriptor.
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if high[i] < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for (i, (_, target)) in fds.iter().enumerate().take(2) {
        // SAFETY: dup2 onto the target; dup2 clears FD_CLOEXEC on the new descriptor.
        if unsafe { libc::dup2(high[i], *target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
