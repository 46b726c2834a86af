//! OSv under qemu ([`super::qemu::Qemu::Osv`]): OSv reads its command line from its boot
//! disk (byte 512), not from qemu, so each VM boots its own copy of the image
//! (`osv-vm-N.img` in the output dir, removed when the VMs are gone) with its own line:
//! its address, gateway and name server as OSv options, its node name for `start-otp.so`
//! (`--env=BEAMBAKE_NODE=...`), then the image's line. `-M pc` (OSv's microvm mode needs
//! KVM), virtio-blk, virtio-net (the tap at fd 3, or user networking), virtio-rng.
//!
//! Must not: manage process lifetimes (see [`super::guest`]) or write images (it copies
//! one and sets its command line through [`beambake_images::image::osv_disk`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use beambake_images::image::osv_disk;
use beambake_recipe::NetMode;

use super::qemu::{program, serial_console, Accelerator, Console};
use super::{BootError, BootPlan, Instance};

/// VM `inst`'s copy of the image in `dir`.
pub fn instance_image(dir: &Path, inst: &Instance) -> PathBuf {
    dir.join(format!("osv-vm-{}.img", inst.index + 1))
}

/// True for the per-VM copies [`instance_image`] makes.
pub fn is_instance_image(name: &str) -> bool {
    name.strip_prefix("osv-vm-")
        .and_then(|s| s.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// VM `inst`'s OSv command line: its network and node name, then the image's line.
pub fn instance_cmdline(plan: &BootPlan, inst: &Instance) -> String {
    let mut opts = Vec::new();
    if plan.net.mode != NetMode::None {
        let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(plan.net.prefix.clamp(1, 32))));
        opts.push(format!("--ip=eth0,{},{mask}", inst.ip));
        opts.push(format!("--defaultgw={}", plan.net.host));
        opts.push(format!("--nameserver={}", plan.net.host));
    }
    if let Some(node) = &inst.node {
        opts.push(format!("--env=BEAMBAKE_NODE={node}"));
    }
    opts.push(plan.cmdline.clone());
    opts.join(" ")
}

/// qemu's command for VM `inst`: its copy of the image made first.
pub fn command(
    plan: &BootPlan,
    dir: &Path,
    inst: &Instance,
    accel: Accelerator,
    console: Console,
) -> Result<Command, BootError> {
    let image = dir.join(&plan.kernel);
    let copy = instance_image(dir, inst);
    std::fs::copy(&image, &copy).map_err(|source| BootError::Io {
        path: image.clone(),
        source,
    })?;
    osv_disk::set_cmdline(&copy, &instance_cmdline(plan, inst)).map_err(|e| BootError::Plan {
        path: copy.clone(),
        message: e.to_string(),
    })?;
    let mut c = Command::new(program());
    c.args(["-name", &format!("beambake-{}-{}", plan.name, inst.index + 1)]);
    c.args(["-M", "pc"]);
    match accel {
        Accelerator::Kvm => c.args(["-accel", "kvm", "-cpu", plan.cpu.as_deref().unwrap_or("host")]),
        Accelerator::Tcg => c.args(["-accel", "tcg", "-cpu", plan.cpu.as_deref().unwrap_or("qemu64")]),
    };
    c.args(["-m", &plan.memory_mib.to_string()]);
    c.args(["-smp", &plan.cpus.to_string()]);
    c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
    c.arg("-drive").arg(format!(
        "file={},if=none,id=hd0,format=raw,cache=unsafe",
        copy.display()
    ));
    c.args(["-device", "virtio-blk-pci,drive=hd0"]);
    c.args(["-device", "virtio-rng-pci"]);
    serial_console(&mut c, console);
    match plan.net.mode {
        NetMode::Tap => {
            c.args(["-netdev", "tap,id=n0,fd=3"]);
            c.args(["-device", "virtio-net-pci,netdev=n0"]);
        }
        NetMode::User => {
            let mut fwd = String::new();
            for port in super::qemu::forwarded_ports(plan) {
                fwd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{port}"));
            }
            let mask = u32::MAX << (32 - u32::from(plan.net.prefix.clamp(1, 30)));
            let network = Ipv4Addr::from(u32::from(plan.net.host) & mask);
            c.args([
                "-netdev",
                &format!(
                    "user,id=n0,net={network}/{},host={}{fwd}",
                    plan.net.prefix, plan.net.host
                ),
            ]);
            c.args(["-device", "virtio-net-pci,netdev=n0"]);
        }
        NetMode::None => {}
    }
    Ok(c)
}

/// Removes the per-VM copies from `dir`.
pub fn clean_up(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if is_instance_image(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
