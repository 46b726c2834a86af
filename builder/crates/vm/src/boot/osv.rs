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

use super::qemu::{serial_console, Accelerator, Console};
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

/// VM `inst`'s MAC address: its own, so several VMs can share one bridge (qemu gives
/// every NIC 52:54:00:12:34:56 otherwise).
pub fn instance_mac(inst: &Instance) -> String {
    let n = inst.index + 1;
    format!("52:54:00:bb:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff)
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
    let line = instance_cmdline(plan, inst);
    let refuse = |path: &Path, e: osv_disk::OsvDiskError| BootError::Plan {
        path: path.to_path_buf(),
        message: format!("VM {}: {e}", inst.index + 1),
    };
    osv_disk::check_cmdline(&line).map_err(|e| refuse(&image, e))?;
    copy_sparse(&image, &copy).map_err(|source| BootError::Io {
        path: image.clone(),
        source,
    })?;
    if let Err(e) = osv_disk::set_cmdline(&copy, &line) {
        let _ = std::fs::remove_file(&copy);
        return Err(refuse(&copy, e));
    }
    let mut c = super::qemu::base_command(plan, inst, "pc", accel);
    c.arg("-drive").arg(format!(
        "file={},if=none,id=hd0,format=raw,cache=unsafe",
        copy.display()
    ));
    c.args(["-device", "virtio-blk-pci,drive=hd0"]);
    c.args(["-device", "virtio-rng-pci"]);
    serial_console(&mut c, console);
    let mac = format!(",mac={}", instance_mac(inst));
    super::qemu::nic_args(&mut c, plan, "virtio-net-pci", &mac);
    Ok(c)
}

/// Copies `src` to `dst` keeping its holes (an uploaded ZFS image is 512 MiB, mostly
/// holes): only the data ranges (`SEEK_DATA`/`SEEK_HOLE`) are written.
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    let mut from = std::fs::File::open(src)?;
    let len = from.metadata()?.len();
    let mut to = std::fs::File::create(dst)?;
    to.set_len(len)?;
    let fd = from.as_raw_fd();
    let mut at: u64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while at < len {
        // SAFETY: lseek on a file descriptor this function owns.
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(len));
        from.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        let mut left = hole - data;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            from.read_exact(&mut buf[..n])?;
            to.write_all(&buf[..n])?;
            left -= n as u64;
        }
        at = hole;
    }
    to.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(mode: &str, node: bool) -> BootPlan {
        let node = if node { "\"echo\"" } else { "null" };
        serde_json::from_str(&format!(
            r#"{{"name": "e", "target": "osv", "vmm": "qemu-osv", "kernel": "e.img",
                "cmdline": "--rootfs=rofs /start-otp.so /opt/echo/releases/0.1.0/start /v /s",
                "memory_mib": 512, "cpus": 1, "machine": "pc", "accel": "auto",
                "net": {{"mode": "{mode}", "guests": ["10.0.122.101", "10.0.122.102"],
                        "prefix": 24, "host": "10.0.122.100", "hostname": "echo"}},
                "node": {node}, "cookie_file": null, "checks": [],
                "smoke": {{"ready_timeout_s": 1, "check_timeout_s": 1}}}}"#
        ))
        .unwrap()
    }

    /// What each VM is told, pinned: OSv's own network options, the node for
    /// start-otp.so, then the image's line.
    #[test]
    fn each_vm_gets_its_address_and_node_before_the_images_line() {
        let p = plan("tap", true);
        let vms = p.instances(Path::new("/out"));
        assert_eq!(
            instance_cmdline(&p, &vms[1]),
            "--ip=eth0,10.0.122.102,255.255.255.0 --defaultgw=10.0.122.100 \
             --nameserver=10.0.122.100 --env=BEAMBAKE_NODE=echo@10.0.122.102 \
             --rootfs=rofs /start-otp.so /opt/echo/releases/0.1.0/start /v /s"
        );
        let p = plan("none", false);
        let vms = p.instances(Path::new("/out"));
        assert_eq!(
            instance_cmdline(&p, &vms[0]),
            "--rootfs=rofs /start-otp.so /opt/echo/releases/0.1.0/start /v /s"
        );
        assert_eq!(
            instance_image(Path::new("/out"), &vms[1]),
            Path::new("/out/osv-vm-2.img")
        );
        assert!(is_instance_image("osv-vm-12.img"));
        assert_eq!(instance_mac(&vms[0]), "52:54:00:bb:00:01");
        for n in ["osv-vm-.img", "osv-vm-1.img.tmp", "e.img", "osv-vm-x.img"] {
            assert!(!is_instance_image(n), "{n}");
        }
        assert!(BootPlan::is_run_file("osv-vm-1.img"));
    }

    #[test]
    fn sparse_copies_keep_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("s.img");
        let f = std::fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.write_all(b"head").unwrap();
            f.seek(SeekFrom::Start(40 << 20)).unwrap();
            f.write_all(&[7u8; 5000]).unwrap();
        }
        let dst = d.path().join("d.img");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < (4 << 20),
            "{blocks} bytes allocated for 8 KiB of data"
        );
    }

    /// A VM's line that does not fit OSv's area is refused before anything is copied;
    /// clean_up removes the copies and nothing else.
    #[test]
    fn an_overlong_vm_line_is_refused_and_copies_are_cleaned_up() {
        let d = tempfile::tempdir().unwrap();
        let mut p = plan("tap", true);
        let mut img = vec![0u8; 4096];
        img[510] = 0x55;
        img[511] = 0xaa;
        std::fs::write(d.path().join("e.img"), &img).unwrap();
        p.cmdline = format!("--rootfs=rofs /start-otp.so {}", "x".repeat(1000));
        let vms = p.instances(d.path());
        let e = command(
            &p,
            d.path(),
            &vms[0],
            Accelerator::Tcg,
            Console::File(Path::new("/dev/null")),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("max_cmdline is 1024 bytes") && e.contains("VM 1"),
            "{e}"
        );
        std::fs::write(d.path().join("osv-vm-3.img"), b"x").unwrap();
        clean_up(d.path());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["e.img"]);
    }
}
