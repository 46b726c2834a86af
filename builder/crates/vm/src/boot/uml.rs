//! The User Mode Linux adapter ([`Uml`], a [`Vmm`]): the `linux` (UML kernel) command
//! line for one VM of a boot plan — root image on a read-only ubd device (shared by every
//! VM), the VM's data disk as the second ubd device, console to a log file or the
//! terminal, network through the vector driver on the tap fd handed over as fd 3 — reading
//! the guest's exit status from its console (UML has no exit device: the init prints
//! `beambake-init: power off, status N`) and clean shutdown through its mconsole.
//!
//! Must not: manage process lifetimes (see [`super::guest`]) or networks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use beambake_contract::cmdline::GuestParams;
use beambake_contract::console;

use super::qemu::{Accelerator, Console};
use super::vmm::{AccelUse, Vmm};
use super::{BootError, BootPlan, Instance};
use beambake_recipe::NetMode;

/// The guest's network interface: the vector driver's first.
pub const UML_IFACE: &str = "vec0";

/// Kernel parameters for every UML guest: quiet boot, no serial lines or extra consoles,
/// the network on [`UML_IFACE`].
pub fn uml_cmdline() -> String {
    let params = GuestParams {
        iface: Some(UML_IFACE.into()),
        ..GuestParams::default()
    };
    format!("quiet con=null ssl=null {}", params.to_cmdline())
}

/// User Mode Linux as the [`Vmm`] of a plan: the kernel is a host program, without an
/// accelerator; the tap without vnet header; the status from the console; stopped
/// cleanly through its mconsole (data disks synced); beambake tees its terminal console.
#[derive(Debug, Clone, Copy)]
pub struct Uml;

impl Vmm for Uml {
    fn check(&self, plan: &BootPlan, dir: &Path) -> Result<(), BootError> {
        check_kernel(plan, dir)
    }

    fn accelerator(&self) -> AccelUse {
        AccelUse::None {
            label: "uml",
            reason: "User Mode Linux runs as a host process (no accelerator)",
        }
    }

    fn command(
        &self,
        plan: &BootPlan,
        dir: &Path,
        inst: &Instance,
        _accel: Accelerator,
        console: Console,
    ) -> Result<Command, BootError> {
        command(plan, dir, inst, console)
    }

    fn vnet_hdr(&self) -> bool {
        false
    }

    fn guest_status(&self, _exit: ExitStatus, console_log: &Path) -> Option<i32> {
        guest_status(console_log)
    }

    fn tees_console(&self) -> bool {
        true
    }

    fn stop_socket(&self, plan: &BootPlan, dir: &Path, inst: &Instance) -> Option<PathBuf> {
        Some(mconsole_path(plan, dir, inst))
    }

    fn request_stop(&self, socket: &Path) -> std::io::Result<()> {
        request_shutdown(socket)
    }

    fn clean_up(&self, dir: &Path) {
        // The run dirs of VMs that were killed.
        let _ = fs::remove_dir_all(run_dir(dir));
    }
}

/// The command for VM `inst` of `plan` (files in `dir`), with the tap at fd 3.
pub fn command(
    plan: &BootPlan,
    dir: &Path,
    inst: &Instance,
    console: Console,
) -> Result<Command, BootError> {
    let root = plan.root_image.as_ref().ok_or_else(|| BootError::Plan {
        path: dir.join(super::PLAN_FILE),
        message: "a uml plan needs root_image".into(),
    })?;
    let mut c = Command::new(dir.join(&plan.kernel));
    c.arg(format!("mem={}M", plan.memory_mib));
    // `r`: opened read-only (a shared lock), so every VM uses the same file unchanged.
    c.arg(format!("ubd0r={}", dir.join(root).display()));
    if let Some(d) = &inst.data_disk {
        c.arg(format!("ubd1={}", d.display()));
    }
    for (i, d) in plan.disks.iter().enumerate() {
        c.arg(format!("ubd{}r={}", i + 2, d.path.display()));
    }
    c.args(["root=/dev/ubda", "ro", "init=/init"]);
    c.arg(format!(
        "rootfstype={}",
        plan.root_fs.as_deref().unwrap_or("squashfs")
    ));
    // The VM's run dir (pid file, mconsole socket) inside the output dir, per VM.
    c.arg(format!("uml_dir={}", run_dir(dir).display()));
    c.arg(format!("umid={}", umid(plan, inst)));
    if matches!(plan.net.mode, NetMode::Tap | NetMode::Socket) {
        // The tap (without vnet header), or a datagram socket carrying one frame per
        // datagram, is fd 3; `vec=0`: plain read/write on it.
        c.arg(format!(
            "{UML_IFACE}:transport=fd,fd=3,vec=0{}",
            plan.mac_option()
        ));
    }
    match console {
        Console::File(log) => {
            c.arg("con0=null,fd:1");
            let f = fs::File::create(log).map_err(|source| BootError::Io {
                path: log.to_path_buf(),
                source,
            })?;
            let f2 = f.try_clone().map_err(|source| BootError::Io {
                path: log.to_path_buf(),
                source,
            })?;
            c.stdin(Stdio::null()).stdout(f).stderr(f2);
        }
        Console::Terminal(_) => {
            c.arg("con0=fd:0,fd:1");
        }
    }
    if plan.control {
        // The init's control line: UML's second serial line on the socket at fd 4.
        c.arg("ssl1=fd:4");
    }
    for tok in plan.instance_cmdline(inst).split_whitespace() {
        c.arg(tok);
    }
    Ok(c)
}

/// Where linux.uml keeps its VMs' run dirs (`uml_dir`): inside the output dir `dir`.
/// Nothing in it is needed once the VMs are gone.
pub fn run_dir(dir: &Path) -> std::path::PathBuf {
    dir.join(".uml")
}

/// The VM's id (`umid`), which names its run dir.
fn umid(plan: &BootPlan, inst: &Instance) -> String {
    format!("{}-{}", plan.name, inst.index + 1)
}

/// The VM's management console socket (UML's mconsole, in its run dir).
pub fn mconsole_path(plan: &BootPlan, dir: &Path, inst: &Instance) -> std::path::PathBuf {
    run_dir(dir).join(umid(plan, inst)).join("mconsole")
}

/// Asks the VM to shut down cleanly: an mconsole `cad` request (Ctrl-Alt-Del). The init
/// turns it into SIGTERM for the release, then syncs the disks and powers off, so what
/// the release wrote to its data disk is on the host file when linux.uml exits.
pub fn request_shutdown(mconsole: &Path) -> std::io::Result<()> {
    const MAGIC: u32 = 0xcafe_babe;
    const VERSION: u32 = 2;
    const MAX_DATA: usize = 512;
    let cmd = b"cad";
    let mut req = Vec::with_capacity(12 + MAX_DATA);
    req.extend_from_slice(&MAGIC.to_ne_bytes());
    req.extend_from_slice(&VERSION.to_ne_bytes());
    req.extend_from_slice(&(cmd.len() as u32).to_ne_bytes());
    req.extend_from_slice(cmd);
    req.resize(12 + MAX_DATA, 0);
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.send_to(&req, mconsole).map(|_| ())
}

/// Checks that the plan's kernel is an executable file.
pub fn check_kernel(plan: &BootPlan, dir: &Path) -> Result<(), BootError> {
    let k = dir.join(&plan.kernel);
    let meta = fs::metadata(&k).map_err(|source| BootError::Io {
        path: k.clone(),
        source,
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(BootError::Plan {
            path: k,
            message: "not an executable User Mode Linux kernel".into(),
        });
    }
    Ok(())
}

/// The status of the last power-off line in the console log.
pub fn guest_status(console_log: &Path) -> Option<i32> {
    let text = fs::read(console_log).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines()
        .rev()
        .find_map(console::parse_power_off_line)
        .map(i32::from)
}

/// A one-line reason when the console shows a known way for a guest to fail early.
pub fn explain(console: &str) -> Option<&'static str> {
    if console.contains("Unable to mount root fs") || console.contains("VFS: Cannot open root") {
        Some("the kernel could not mount the root image")
    } else if console.contains("ptrace set fp regs failed") {
        Some("this User Mode Linux kernel cannot run processes on this host (its FP state buffer is smaller than the host's XSAVE area): use beambake's own UML kernel (the default) instead of --kernel")
    } else if console.contains("Failed to initialize ubd device") {
        Some("User Mode Linux could not open a disk image")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_console() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.log");
        let lines = [console::power_off_line(3), console::power_off_line(7)];
        fs::write(&p, format!("x\n{}\n{}\nreboot\n", lines[0], lines[1])).unwrap();
        assert_eq!(guest_status(&p), Some(7));
        fs::write(&p, "Kernel panic\n").unwrap();
        assert_eq!(guest_status(&p), None);
    }

    #[test]
    fn cmdline_names_the_interface() {
        assert_eq!(uml_cmdline(), "quiet con=null ssl=null beambake.if=vec0");
    }

    #[test]
    fn known_failures_are_explained() {
        assert!(
            explain("VFS: Unable to mount root fs on unknown-block(98,0)")
                .unwrap()
                .contains("root image")
        );
        assert!(explain("all fine").is_none());
    }
}
