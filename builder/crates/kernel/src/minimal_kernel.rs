//! The minimal kernel for machine microvm: `make tinyconfig` (x86_64) in the pinned
//! `linux-source-6.1` plus `images/linux-minimal.config` — everything beambake's init and
//! the BEAM need built in, no modules, virtio-mmio devices from the command line, PVH
//! entry — built as the uncompressed `vmlinux` that `qemu -M microvm,acpi=off -kernel`
//! boots directly. One [`Spec`] of [`crate::source_kernel`], which builds and caches it
//! in `CACHE/minimal-kernel/`.
//!
//! Owns: the spec and [`INIT_NEEDS`], the options a fragment may not drop.
//! Must not: boot anything or know about images.

use crate::source_kernel::Spec;

/// Config options set on top of `tinyconfig`.
pub const CONFIG: &str = include_str!("../../../../images/linux-minimal.config");
/// Where [`CONFIG`] lives in the repository.
pub const CONFIG_FILE: &str = "images/linux-minimal.config";

/// What beambake's init (and the BEAM it starts) needs from a kernel without modules:
/// the initramfs (zstd), the filesystems it mounts (proc, sysfs, devtmpfs, devpts,
/// tmpfs), the console, ELF programs, the system calls the BEAM and epmd use, TCP/IP and
/// Unix sockets, the virtio NIC on machine microvm (virtio-mmio, devices on the command
/// line), ioperm(2) for the exit device the init powers off through (no ACPI), and the
/// PVH entry `vmlinux` is booted through.
pub const INIT_NEEDS: &[&str] = &[
    "64BIT",
    "PRINTK",
    "TTY",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "UNIX98_PTYS",
    "BLK_DEV_INITRD",
    "RD_ZSTD",
    "BINFMT_ELF",
    "PROC_FS",
    "SYSFS",
    "DEVTMPFS",
    "TMPFS",
    "SHMEM",
    "MULTIUSER",
    "MEMFD_CREATE",
    "FUTEX",
    "EPOLL",
    "EVENTFD",
    "TIMERFD",
    "POSIX_TIMERS",
    // The power-off with the guest's status: ioperm(2) on qemu's exit port.
    "X86_IOPL_IOPERM",
    "NET",
    "INET",
    "UNIX",
    "VIRTIO",
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VIRTIO_NET",
    "PVH",
];

/// The minimal microvm kernel.
pub const SPEC: Spec = Spec {
    what: "the minimal microvm kernel",
    cache_dir: "minimal-kernel",
    arch: "x86_64",
    base_config: "tinyconfig",
    fragment: CONFIG,
    fragment_file: CONFIG_FILE,
    patches: &[],
    patches_dir: "patches/linux/6.1/minimal",
    make_target: "vmlinux",
    result: "vmlinux",
    init_needs: INIT_NEEDS,
    headers: &[("/usr/include/gelf.h", "libelf-dev")],
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source_kernel;

    #[test]
    fn the_fragment_has_everything_the_init_needs_and_no_modules() {
        source_kernel::check_fragment(CONFIG, CONFIG_FILE, INIT_NEEDS).unwrap();
        let wanted = source_kernel::wanted_options(CONFIG);
        assert!(wanted.contains(&("CONFIG_MODULES".into(), None)));
        for (k, v) in &wanted {
            assert_ne!(v.as_deref(), Some("m"), "{k}: built in, no modules");
        }
    }
}
