//! A running guest: one VM process (qemu or linux.uml) and its console log. It is
//! killed and reaped when dropped — on success, failure, timeout or panic — and dies with
//! the process that started it (`PR_SET_PDEATHSIG`), so no path leaks a VM. It also knows
//! how its VM reports the guest's own exit status (qemu's exit device, or the init's
//! power-off line on the console for User Mode Linux).
//!
//! Must not: decide how the VM is configured.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Instant;

use super::BootError;

/// How a VM tells the guest's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFrom {
    /// qemu's isa-debug-exit: qemu exits with `(status << 1) | 1`.
    DebugExit,
    /// The init's `power off, status N` console line (User Mode Linux).
    ConsoleLine,
}

pub struct Guest {
    child: Child,
    pub console_log: PathBuf,
    pub started: Instant,
    status: Option<ExitStatus>,
    status_from: StatusFrom,
    /// The VM's stdout and the log it is copied to, with the terminal, by
    /// [`Guest::pump_console`] (no thread: the sandbox process may not start one).
    tee: Option<(std::process::ChildStdout, fs::File)>,
    /// Where to ask the VM for a clean shutdown (User Mode Linux's mconsole).
    mconsole: Option<PathBuf>,
}

impl Guest {
    /// Spawns `cmd`; with `tap`, the tap fd becomes the child's fd 3. With `tee`, the
    /// child's stdout is copied to ours and to the console log.
    pub fn spawn(
        mut cmd: Command,
        tap: Option<&OwnedFd>,
        console_log: &Path,
        status_from: StatusFrom,
        tee: bool,
    ) -> Result<Guest, BootError> {
        if tee {
            cmd.stdout(std::process::Stdio::piped());
        }
        crate::net::dies_with_parent(&mut cmd);
        if let Some(fd) = tap {
            let raw = fd.as_raw_fd();
            // SAFETY: dup2/fcntl are async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if raw == 3 {
                        let flags = libc::fcntl(3, libc::F_GETFD);
                        if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    } else if libc::dup2(raw, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd.spawn().map_err(|source| match source.kind() {
            io::ErrorKind::NotFound if status_from == StatusFrom::DebugExit => {
                BootError::Qemu(format!(
                    "{program} not found on PATH: install it with `apt-get install qemu-system-x86`"
                ))
            }
            _ => BootError::Spawn { program, source },
        })?;
        let tee = match (tee, child.stdout.take()) {
            (true, Some(out)) => {
                let log = fs::File::create(console_log).map_err(|source| BootError::Io {
                    path: console_log.to_path_buf(),
                    source,
                })?;
                Some((out, log))
            }
            _ => None,
        };
        Ok(Guest {
            child,
            console_log: console_log.to_path_buf(),
            started: Instant::now(),
            status: None,
            status_from,
            tee,
            mconsole: None,
        })
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

    /// Lets [`Guest::request_stop`] ask the VM to shut down through this mconsole socket.
    pub fn with_mconsole(mut self, path: PathBuf) -> Guest {
        self.mconsole = Some(path);
        self
    }

    /// Asks the VM to shut down cleanly, if it can be asked (see [`Guest::stop_by`]).
    pub fn request_stop(&mut self) {
        if self.exited().is_none() {
            if let Some(m) = &self.mconsole {
                let _ = super::uml::request_shutdown(m);
            }
        }
    }

    /// Waits until `deadline` for a VM asked to stop to end, then kills it. A VM that
    /// cannot be asked is killed at once.
    pub fn stop_by(&mut self, deadline: Instant) {
        if self.mconsole.is_some() {
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// The guest's own exit status (from its init), once the VM has ended; `None` while
    /// it runs or when it ended another way (killed, kernel panic, ...).
    pub fn guest_status(&mut self) -> Option<i32> {
        let st = self.exited()?;
        match self.status_from {
            StatusFrom::DebugExit => super::qemu::guest_status(st.code()),
            StatusFrom::ConsoleLine => super::uml::guest_status(&self.console_log),
        }
    }

    /// The exit status if the VM has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits without bound.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console_log, lines)
    }

    /// Kills the VM (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
