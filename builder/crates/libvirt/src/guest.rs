//! `beambake port --libvirt URI DIR`: the port VM of [`beambake_vm::port::vm`] run by a
//! libvirt daemon instead of a qemu process of beambake's own, so `beambake_vm` drives
//! a libvirt domain exactly as it drives a local VM (same terms, same relay).
//!
//! The domain is transient and started with `VIR_DOMAIN_START_AUTODESTROY`: libvirt
//! destroys it when this process's connection closes, so no domain outlives the port,
//! even when the port is killed. Its I/O are Unix sockets in the port's run directory,
//! reached without a tap, a bridge or root: the serial console and the init's control
//! line (ttyS0, ttyS1) connect to sockets this module listens on, and the NIC is qemu's
//! `dgram` netdev on Unix datagram sockets ([`crate::xml::DgramNic`]). So the daemon
//! must run on this host and its qemu must reach the run directory (a session daemon,
//! or a system daemon whose qemu runs as root).
//!
//! A `stop` asks the init to power off and libvirt to shut the domain down (ACPI power
//! button); after the stop bound, or when Erlang goes away, the domain is destroyed. The
//! guest's status comes from the init's power-off line on the console (qemu's exit code
//! does not reach libvirt's clients).
//!
//! Owns: the domain's life and its sockets. Must not: relay anything itself (the relay
//! is `beambake_vm::port::vm::relay`), or leave a domain behind.

use std::io;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beambake_vm::boot::BootPlan;
use beambake_vm::port::codec::{self, Term};
use beambake_vm::port::vm::PortOpts;

use crate::xml::{self, ConsoleOut, DgramNic, XmlError};

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    NotBuilt(#[from] crate::NotBuilt),
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error(transparent)]
    Port(#[from] beambake_vm::port::vm::PortError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("libvirt {uri}: {what}: {message} (libvirt error {code})")]
    Libvirt {
        uri: String,
        what: &'static str,
        code: i32,
        message: String,
    },
    #[error(
        "libvirt {uri}: qemu did not connect to {path} within {secs} s (can the daemon's \
         qemu reach beambake's run directory? a session URI, or a system daemon whose qemu \
         runs as root, can)"
    )]
    NoConnect {
        uri: String,
        path: PathBuf,
        secs: u64,
    },
}

/// The sockets of one libvirt port VM, in `run_dir`.
pub struct Sockets {
    pub console: PathBuf,
    pub control: PathBuf,
    pub nic: DgramNic,
}

impl Sockets {
    pub fn in_dir(run_dir: &Path) -> Sockets {
        Sockets {
            console: run_dir.join("console.sock"),
            control: run_dir.join("ctl.sock"),
            nic: DgramNic {
                vm: run_dir.join("nic-vm.sock"),
                peer: run_dir.join("nic.sock"),
            },
        }
    }
}

/// The domain XML of the port VM of `plan` (a [`beambake_vm::port::vm::port_plan`]),
/// wired to `sockets`; `base` carries the accelerator, emulator and TSC.
pub fn port_domain_xml(
    plan: &BootPlan,
    dir: &Path,
    run_dir: &Path,
    sockets: &Sockets,
    base: &xml::Options,
    opts: &PortOpts,
) -> Result<String, GuestError> {
    let inst = beambake_vm::port::vm::port_instance(plan, dir, run_dir, opts)?;
    let opts = xml::Options {
        name: Some(plan.name.clone()),
        instance: 1,
        console: Some(ConsoleOut::Unix(sockets.console.clone())),
        control: Some(sockets.control.clone()),
        dgram: Some(sockets.nic.clone()),
        tap: None,
        ..base.clone()
    };
    Ok(xml::instance_xml(plan, dir, &inst, 1, &opts)?)
}

/// Waits up to `secs` for qemu to connect to `listener` (bound at `path`), while
/// `alive` says the domain still runs.
fn accept(
    listener: &UnixListener,
    path: &Path,
    uri: &str,
    secs: u64,
    mut alive: impl FnMut() -> bool,
) -> Result<UnixStream, GuestError> {
    let io_err = |source| GuestError::Io {
        path: path.to_path_buf(),
        source,
    };
    listener.set_nonblocking(true).map_err(io_err)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io_err)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err(e)),
        }
        if Instant::now() >= deadline || !alive() {
            return Err(GuestError::NoConnect {
                uri: uri.to_string(),
                path: path.to_path_buf(),
                secs,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The error of an I/O operation on `path`.
fn io_at(path: &Path) -> impl FnOnce(io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| GuestError::Io { path, source }
}

/// Binds the three sockets the domain connects or sends to.
fn bind(sockets: &Sockets) -> Result<(UnixListener, UnixListener, UnixDatagram), GuestError> {
    Ok((
        UnixListener::bind(&sockets.console).map_err(io_at(&sockets.console))?,
        UnixListener::bind(&sockets.control).map_err(io_at(&sockets.control))?,
        UnixDatagram::bind(&sockets.nic.peer).map_err(io_at(&sockets.nic.peer))?,
    ))
}

/// What [`run`] runs: the port VM of `plan` (files in `dir`, sockets and console log in
/// `run_dir`) as a transient domain of the daemon at `uri`, from `base` (accelerator,
/// TSC, emulator) and the port's options.
#[derive(Clone, Copy)]
pub struct PortRun<'a> {
    pub uri: &'a str,
    pub plan: &'a BootPlan,
    pub dir: &'a Path,
    pub run_dir: &'a Path,
    pub base: &'a xml::Options,
    pub opts: &'a PortOpts,
}

/// Runs `r`'s port VM, relayed to Erlang (`input`, `output`) until it ends; the status
/// it reported last.
pub fn run(
    r: &PortRun,
    input: Box<dyn io::Read + Send>,
    output: Box<dyn io::Write + Send>,
) -> Result<Term, GuestError> {
    #[cfg(feature = "libvirt")]
    return with_libvirt::run(r, input, output);
    #[cfg(not(feature = "libvirt"))]
    {
        let _ = (r, input, output);
        Err(crate::NotBuilt.into())
    }
}

#[cfg(feature = "libvirt")]
mod with_libvirt {
    use super::*;
    use beambake_vm::port::vm::{relay, Frames, PortGuest, Wires};
    use virt::connect::Connect;
    use virt::domain::Domain;

    /// How long qemu may take to connect its serial lines once the domain runs.
    const CONNECT_SECS: u64 = 60;

    fn lv_err(uri: &str, what: &'static str) -> impl FnOnce(virt::error::Error) -> GuestError {
        let uri = uri.to_string();
        move |e| GuestError::Libvirt {
            uri,
            what,
            code: e.code().to_raw() as i32,
            message: e.message().to_string(),
        }
    }

    /// The running domain.
    struct LibvirtGuest {
        dom: Domain,
        name: String,
        uri: String,
        console_log: PathBuf,
        killed: bool,
        ended: bool,
        next_check: Instant,
    }

    impl LibvirtGuest {
        fn destroy(&mut self) {
            if !self.ended {
                // Gone already is fine; anything else: the connection's end destroys it.
                let _ = self.dom.destroy();
                self.killed = true;
            }
        }
    }

    impl PortGuest for LibvirtGuest {
        fn info(&self) -> Vec<Term> {
            vec![
                codec::tagged("backend", codec::atom("libvirt")),
                codec::tagged("domain", codec::binary(self.name.as_bytes())),
                codec::tagged("uri", codec::binary(self.uri.as_bytes())),
            ]
        }

        fn exited(&mut self) -> bool {
            // One libvirt call every 200 ms, not every turn of the relay's loop.
            if !self.ended && Instant::now() >= self.next_check {
                self.next_check = Instant::now() + Duration::from_millis(200);
                // A transient domain that ended is gone: an error means it ended too.
                self.ended = !self.dom.is_active().unwrap_or(false);
            }
            self.ended
        }

        fn request_stop(&mut self) {
            // ACPI's power button; the init powers off on it as on `0 poweroff`.
            let _ = self.dom.shutdown();
        }

        fn kill(&mut self) {
            self.destroy();
        }

        fn status(&mut self) -> Term {
            match beambake_vm::boot::uml::guest_status(&self.console_log) {
                Some(n) => codec::int(i64::from(n)),
                None if self.killed => codec::tagged("signal", codec::int(9)),
                _ => codec::tagged("libvirt", codec::atom("shutoff")),
            }
        }
    }

    impl Drop for LibvirtGuest {
        fn drop(&mut self) {
            self.ended = self.ended || !self.dom.is_active().unwrap_or(false);
            self.destroy();
        }
    }

    /// [`super::run`] with libvirt.
    pub fn run(
        r: &PortRun,
        input: Box<dyn io::Read + Send>,
        output: Box<dyn io::Write + Send>,
    ) -> Result<Term, GuestError> {
        let PortRun {
            uri,
            plan,
            dir,
            run_dir,
            base,
            opts,
        } = *r;
        let sockets = Sockets::in_dir(run_dir);
        let text = port_domain_xml(plan, dir, run_dir, &sockets, base, opts)?;
        let (console_l, ctl_l, nic) = bind(&sockets)?;
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(lv_err(uri, "connecting"))?;
        let dom = conn
            .create_domain_xml(&text, virt::sys::VIR_DOMAIN_START_AUTODESTROY)
            .map_err(lv_err(uri, "creating the domain"))?;
        let mut guest = LibvirtGuest {
            dom,
            name: plan.name.clone(),
            uri: uri.to_string(),
            console_log: run_dir.join("console.log"),
            killed: false,
            ended: false,
            next_check: Instant::now(),
        };
        let alive = |d: &Domain| d.is_active().unwrap_or(false);
        let console = accept(&console_l, &sockets.console, uri, CONNECT_SECS, || {
            alive(&guest.dom)
        })?;
        let ctl = accept(&ctl_l, &sockets.control, uri, CONNECT_SECS, || {
            alive(&guest.dom)
        })?;
        let log = std::fs::File::create(&guest.console_log).map_err(io_at(&guest.console_log))?;
        let wires = Wires {
            console_in: Box::new(console.try_clone().map_err(io_at(&sockets.console))?),
            console_out: Box::new(console),
            console_log: Some(log),
            frames: Frames {
                sock: nic,
                peer: Some(sockets.nic.vm.clone()),
            },
            ctl,
        };
        let label = base.accel.name();
        let status = relay(
            &mut guest,
            wires,
            plan.mac,
            label,
            input,
            output,
            opts.stop_timeout,
        )?;
        drop(guest);
        drop(conn);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_live_in_the_run_dir() {
        let s = Sockets::in_dir(Path::new("/tmp/beambake-port-x"));
        for p in [&s.console, &s.control, &s.nic.vm, &s.nic.peer] {
            assert!(p.starts_with("/tmp/beambake-port-x"), "{}", p.display());
        }
        assert_ne!(s.nic.vm, s.nic.peer);
    }

    #[test]
    fn nobody_connecting_is_an_error_naming_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.sock");
        let l = UnixListener::bind(&p).unwrap();
        let e = accept(&l, &p, "test:///default", 5, || false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("c.sock") && msg.contains("test:///default"),
            "{msg}"
        );
        // Someone connecting is accepted.
        let _c = UnixStream::connect(&p).unwrap();
        assert!(accept(&l, &p, "test:///default", 5, || true).is_ok());
    }
}
