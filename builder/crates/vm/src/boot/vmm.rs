//! What varies between hypervisors, behind one trait: [`Vmm`] (checks before boot, the
//! accelerator, one VM's command, the tap's mode, the guest's exit status, clean stop, the
//! interactive console), and the one place that maps a boot plan to its VMM
//! ([`vmm_for`]). Adding a hypervisor is one file implementing [`Vmm`] plus a
//! [`VmmKind`] and its arm in [`vmm_for`].
//!
//! Must not: own processes (see [`super::guest`]) or networks.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::qemu::{Accelerator, Console, Qemu};
use super::uml::Uml;
use super::{BootError, BootPlan, Instance};
use beambake_recipe::Target;

/// A hypervisor (virtual machine monitor) booting the VMs of a plan.
pub trait Vmm {
    /// Refuses a plan it cannot boot (not installed, no kernel), before any probe, disk
    /// or sandbox.
    fn check(&self, plan: &BootPlan, dir: &Path) -> Result<(), BootError>;

    /// Whether its VMs run under KVM or TCG (chosen by [`super::accel`]) or without an
    /// accelerator.
    fn accelerator(&self) -> AccelUse;

    /// The command for VM `inst` of `plan` (files in `dir`), its tap at fd 3 when the
    /// plan uses a tap network.
    fn command(
        &self,
        plan: &BootPlan,
        dir: &Path,
        inst: &Instance,
        accel: Accelerator,
        console: Console,
    ) -> Result<Command, BootError>;

    /// The tap is opened with a virtio-net header (`IFF_VNET_HDR`).
    fn vnet_hdr(&self) -> bool;

    /// The guest's own exit status (from its init) once the VM process ended with `exit`;
    /// `None` when it ended another way (killed, kernel panic, ...).
    fn guest_status(&self, exit: ExitStatus, console_log: &Path) -> Option<i32>;

    /// True when the console log shows the guest has ended although the VM process may
    /// still run (a rumprun unikernel halts, and qemu stays up): [`super::guest::Guest`]
    /// then kills the VM. Only VMMs that say [`Vmm::ends_on_console`] are asked.
    fn ended_on_console(&self, _console_log: &Path) -> bool {
        false
    }

    /// Whether [`Vmm::ended_on_console`] can ever be true (the log is read while waiting).
    fn ends_on_console(&self) -> bool {
        false
    }

    /// Interactive: beambake copies the VM's stdout to the terminal and the console log
    /// (the VM cannot log its own terminal console).
    fn tees_console(&self) -> bool {
        false
    }

    /// Where VM `inst` can be asked to shut down cleanly; `None`: it is killed at once.
    fn stop_socket(&self, _plan: &BootPlan, _dir: &Path, _inst: &Instance) -> Option<PathBuf> {
        None
    }

    /// Asks the VM behind `socket` (from [`Vmm::stop_socket`]) to shut down cleanly.
    fn request_stop(&self, _socket: &Path) -> io::Result<()> {
        Ok(())
    }

    /// The error for a VM process that could not be started.
    fn spawn_error(&self, program: String, source: io::Error) -> BootError {
        BootError::Spawn { program, source }
    }

    /// Removes what its VMs leave in the output dir `dir` once they are gone.
    fn clean_up(&self, _dir: &Path) {}
}

/// How a VMM's guests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelUse {
    /// Under KVM or TCG, chosen by [`super::accel::choose`].
    KvmOrTcg,
    /// Without an accelerator: the name reports show instead of `kvm`/`tcg`, and why.
    None {
        label: &'static str,
        reason: &'static str,
    },
}

impl AccelUse {
    /// The name reports give the accelerator: `label`, or the one chosen.
    pub fn label(self, chosen: Accelerator) -> &'static str {
        match self {
            AccelUse::KvmOrTcg => chosen.name(),
            AccelUse::None { label, .. } => label,
        }
    }
}

/// The VMM a plan is booted with (`vmm` in `boot.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    /// qemu booting a Linux kernel with beambake's init ([`Qemu::Linux`]).
    Qemu,
    /// qemu booting a baked rumprun kernel ([`Qemu::Rumprun`]).
    QemuRumprun,
    /// User Mode Linux ([`Uml`]).
    Uml,
    /// qemu booting an OSv disk image ([`Qemu::Osv`]).
    QemuOsv,
}

/// Which VMM boots `plan`: the one it names, or its target's.
pub fn vmm_kind(plan: &BootPlan) -> VmmKind {
    match (plan.vmm, plan.target) {
        (Some(kind), _) => kind,
        (None, Target::Microvm) => VmmKind::Qemu,
        (None, Target::Uml) => VmmKind::Uml,
        (None, Target::Rumprun) => VmmKind::QemuRumprun,
        (None, Target::Osv) => VmmKind::QemuOsv,
    }
}

/// The VMM that boots `plan`: the one it names, or for a plan written before `boot.json`
/// named one, its target's.
pub fn vmm_for(plan: &BootPlan) -> Result<Arc<dyn Vmm>, BootError> {
    Ok(match vmm_kind(plan) {
        VmmKind::Qemu => Arc::new(Qemu::Linux),
        VmmKind::QemuRumprun => Arc::new(Qemu::Rumprun),
        VmmKind::Uml => Arc::new(Uml),
        VmmKind::QemuOsv => Arc::new(Qemu::Osv),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_json(target: &str, vmm: Option<&str>) -> String {
        let vmm = vmm
            .map(|v| format!("\"vmm\": \"{v}\","))
            .unwrap_or_default();
        format!(
            r#"{{"name": "x", "target": "{target}", {vmm} "kernel": "k", "cmdline": "",
                "memory_mib": 256, "cpus": 1, "machine": "microvm", "accel": "auto",
                "net": {{"mode": "none", "guests": ["10.0.2.15"], "prefix": 24,
                         "host": "10.0.2.2", "hostname": "x"}},
                "node": null, "cookie_file": null, "checks": [],
                "smoke": {{"ready_timeout_s": 1, "check_timeout_s": 1}}}}"#
        )
    }

    fn plan(target: &str, vmm: Option<&str>) -> Result<BootPlan, serde_json::Error> {
        serde_json::from_str(&plan_json(target, vmm))
    }

    #[test]
    fn plans_without_a_vmm_get_their_targets() {
        for (target, name, kind, vnet_hdr) in [
            ("microvm", "qemu", VmmKind::Qemu, true),
            ("uml", "uml", VmmKind::Uml, false),
            ("rumprun", "qemu-rumprun", VmmKind::QemuRumprun, true),
        ] {
            let p = plan(target, None).unwrap();
            assert_eq!(p.vmm, None);
            assert_eq!(vmm_for(&p).unwrap().vnet_hdr(), vnet_hdr, "{target}");
            assert_eq!(plan(target, Some(name)).unwrap().vmm, Some(kind));
        }
        let p = plan("osv", None).unwrap();
        assert_eq!(vmm_for(&p).unwrap().accelerator(), AccelUse::KvmOrTcg);
    }

    #[test]
    fn the_plan_names_its_vmm() {
        let mut p = plan("microvm", Some("uml")).unwrap();
        let v = vmm_for(&p).unwrap();
        assert!(!v.vnet_hdr() && v.tees_console());
        assert_eq!(
            v.accelerator().label(Accelerator::Kvm),
            "uml",
            "UML has no accelerator"
        );
        p.vmm = Some(VmmKind::Qemu);
        let v = vmm_for(&p).unwrap();
        assert!(v.vnet_hdr() && !v.tees_console());
        assert_eq!(v.accelerator(), AccelUse::KvmOrTcg);
        assert_eq!(v.accelerator().label(Accelerator::Tcg), "tcg");
        assert!(p.to_json().contains("\"vmm\": \"qemu\""));
        p.vmm = Some(VmmKind::QemuRumprun);
        assert!(p.to_json().contains("\"vmm\": \"qemu-rumprun\""));
        let e = plan("microvm", Some("firecracker"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `firecracker`"), "{e}");
    }
}
