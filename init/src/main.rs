//! `beambake-init`: PID 1 of a beambake guest VM. It mounts the early
//! filesystems, loads the listed kernel modules, configures loopback, eth0 (or `beambake.if`),
//! the default route and the hostname from the kernel command line, serves the
//! control line when `beambake.ctl` names one (`control`), watches the power
//! button where the machine has one (`power_button`), starts
//! the services and the Erlang release described by
//! `/etc/beambake/launch.json`, reaps every process, and powers the VM off
//! with the release's exit code. With `beambake.probe=TOKEN` (the host's KVM
//! probe) it only prints the probe marker and powers off with `PROBE_STATUS`.
//!
//! Owns: the order of the boot steps, what is fatal, and the fatal path
//! (`beambake-init: fatal: ...`, power off with code 1).
//!
//! Must not: exit or return from `main` while PID 1 (the kernel panics),
//! `unwrap()` anything that depends on input, or contain the details of any
//! step: those live in the modules below.

mod control;
mod ifreq;
mod log;
mod modules;
mod mount;
mod net;
mod power;
mod power_button;
mod spec;
mod supervise;

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use beambake_contract::cmdline::{Diagnostic, GuestParams, Ipv4Cidr, DEFAULT_IFACE};
use beambake_contract::{console, paths};
use log::{debug, error, info, warning};

const DEFAULT_HOSTNAME: &str = "beambake";

/// Print `beambake-init: fatal: MSG`, kill whatever runs, sync, power off
/// with code 1.
fn fatal(msg: impl Display) -> ! {
    info!("fatal: {msg}");
    // SAFETY: kill(-1) from PID 1 spares init itself; sync has no arguments.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::sync();
    }
    power::power_off(1)
}

fn main() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        // Everything below (mounts, kill(-1), power off) is only sane in a
        // guest where we are init.
        eprintln!("beambake-init: must run as PID 1 (the init of a beambake VM)");
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| fatal(format_args!("panic: {info}"))));
    if let Err(e) = supervise::install_signal_handlers() {
        // Not fatal: the release still runs, it just cannot be stopped by a
        // signal to init.
        error!("cannot install signal handlers: {e}");
    }
    // Ctrl-Alt-Del becomes SIGINT to init (forwarded) instead of a reset.
    // SAFETY: reboot(2) with a documented command; only changes CAD mode.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) };

    let (mounted, failures) = mount::mount_all();
    log::ensure_std_fds();
    for f in &failures {
        if f.required {
            fatal(&f.message);
        }
        error!("{} (continuing without {})", f.message, f.target);
    }

    let cfg = read_cmdline();
    debug!("mounted {}", mounted.join(" "));
    if let Some(token) = &cfg.probe {
        // The host's accelerator probe: proof that this kernel ran its init, nothing more.
        info!("{}", console::probe_marker(token));
        power::power_off(console::PROBE_STATUS);
    }

    match modules::load_all(Path::new(paths::MODULES_PATH), |path, already| {
        if already {
            debug!("module {path} already loaded");
        } else {
            debug!("loaded module {path}");
        }
    }) {
        Ok(n) => debug!("{n} kernel modules listed"),
        Err(e) => fatal(e),
    }
    // Machine pc's ACPI power button (its modules are loaded now) stops the VM cleanly.
    power_button::start();

    let ip = setup_network(&cfg);
    if let Some(tty) = &cfg.ctl {
        control::start(tty, cfg.iface.as_deref().unwrap_or(DEFAULT_IFACE));
    }
    let hostname = cfg.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    setup_hostname(hostname, ip, &cfg.peers);

    let launch = match spec::load(Path::new(paths::LAUNCH_PATH)) {
        Ok(l) => l,
        Err(e) => fatal(e),
    };
    debug!(
        "launch spec: release {} {}, {} service(s)",
        launch.release,
        launch.vsn,
        launch.services.len()
    );

    mount_boot_filesystems(&cfg, &launch.writable);
    let argv = match &cfg.node {
        Some(node) => {
            debug!("node name {node} (from beambake.node)");
            spec::with_node(&launch.argv, node)
        }
        None => launch.argv.clone(),
    };

    let mut sup = supervise::Supervisor::default();
    for s in &launch.services {
        if supervise::pending_signal().is_some() {
            break;
        }
        if let Err(e) = sup.start_service(s) {
            fatal(e);
        }
    }
    // SIGTERM/SIGINT/SIGPWR before the release exists: do not start it.
    if let Some(sig) = supervise::pending_signal() {
        info!("signal {sig} received before the release started, shutting down");
        supervise::stop_everything();
        power::power_off(supervise::Exit::Signal(sig).code());
    }
    match sup.run_release(
        &launch.release,
        &launch.vsn,
        &argv,
        &launch.env,
        &launch.cwd,
        launch.shell,
    ) {
        Ok(exit) => supervise::finish(exit),
        Err(e) => fatal(e),
    }
}

/// The release's writable directories (a tmpfs each, where the directory exists), then
/// the `beambake.mount=` filesystems (data disk, host directories). A mount asked for on
/// the command line that fails is fatal: the release must not run without its data.
fn mount_boot_filesystems(cfg: &GuestParams, writable: &[String]) {
    for dir in writable {
        if !Path::new(dir).is_dir() {
            debug!("writable dir {dir} is not in the image, skipped");
            continue;
        }
        match mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ) {
            Ok(()) => debug!("tmpfs on {dir}"),
            Err(e) => error!("cannot mount a tmpfs on {dir}: {e}"),
        }
    }
    for m in &cfg.mounts {
        if !Path::new(&m.target).is_dir() {
            if let Err(e) = mount::ensure_dir(&m.target, 0o755) {
                fatal(format_args!(
                    "cannot mount {} on {}: the mount point does not exist and cannot be made ({e})",
                    m.source, m.target
                ));
            }
        }
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        // Read-only formats mount read-only; so does anything on a read-only device.
        if m.fstype == "iso9660" || m.fstype == "squashfs" {
            flags |= libc::MS_RDONLY;
        }
        let mut r = mount::mount(&m.source, &m.target, &m.fstype, flags, &m.data);
        if matches!(&r, Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)))
        {
            flags |= libc::MS_RDONLY;
            r = mount::mount(&m.source, &m.target, &m.fstype, flags, &m.data);
        }
        match r {
            Ok(()) => info!("mounted {} ({}) on {}", m.source, m.fstype, m.target),
            Err(e) => fatal(format_args!(
                "cannot mount {} ({}) on {}: {e}",
                m.source, m.fstype, m.target
            )),
        }
    }
}

/// Read and parse `/proc/cmdline`, set the debug switch, log diagnostics.
fn read_cmdline() -> GuestParams {
    let text = match std::fs::read_to_string("/proc/cmdline") {
        Ok(t) => t,
        Err(e) => {
            error!("cannot read /proc/cmdline: {e} (using defaults)");
            return GuestParams::default();
        }
    };
    let (cfg, diags) = GuestParams::parse_lenient(&text);
    log::set_debug(cfg.debug);
    debug!("kernel command line: {}", text.trim_end());
    for d in &diags {
        match d {
            Diagnostic::UnknownKey(_) => warning!("{d}"),
            Diagnostic::Malformed { .. } => error!("{d}"),
        }
    }
    cfg
}

/// Loopback, then eth0 and the default route if asked for. Failures are
/// logged, not fatal. Returns the address actually configured on eth0.
fn setup_network(cfg: &GuestParams) -> Option<Ipv4Addr> {
    let sock = match net::Sock::new() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot create a socket for network setup: {e}");
            return None;
        }
    };
    match net::setup_loopback(&sock) {
        Ok(()) => debug!("lo is up"),
        Err(e) => error!("cannot bring up lo: {e}"),
    }
    let Some(ip) = cfg.ip else {
        if cfg.gw.is_some() {
            warning!("beambake.gw is set without beambake.ip, ignored");
        }
        return None;
    };
    let iface = cfg.iface.as_deref().unwrap_or(DEFAULT_IFACE);
    if let Err(e) = setup_iface(&sock, iface, ip) {
        error!("cannot configure {iface} with {ip}: {e}");
        return None;
    }
    debug!("{iface} is up with {ip}");
    if let Some(gw) = cfg.gw {
        match sock.add_default_route(gw) {
            Ok(()) => debug!("default route via {gw}"),
            Err(e) => error!("cannot add default route via {gw}: {e}"),
        }
    }
    Some(ip.addr)
}

fn setup_iface(sock: &net::Sock, iface: &str, ip: Ipv4Cidr) -> std::io::Result<()> {
    if !sock.wait_for(iface, Duration::from_secs(5), Duration::from_millis(10))? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{iface} did not appear within 5 s (is virtio_net listed in {}?)",
                paths::MODULES_PATH
            ),
        ));
    }
    debug!("{iface} exists");
    sock.set_addr(iface, ip.addr)?;
    sock.set_netmask(iface, ip.netmask())?;
    sock.up(iface)
}

fn setup_hostname(hostname: &str, ip: Option<Ipv4Addr>, peers: &[(String, Ipv4Addr)]) {
    match net::set_hostname(hostname) {
        Ok(()) => debug!("hostname {hostname}"),
        Err(e) => error!("cannot set hostname {hostname}: {e}"),
    }
    match net::write_hosts(&net::hosts_content(hostname, ip, peers)) {
        Ok(net::EtcHosts::Written) => debug!("wrote /run/hosts and /etc/hosts"),
        Ok(net::EtcHosts::Symlink) => debug!("wrote /run/hosts (/etc/hosts is a symlink)"),
        Ok(net::EtcHosts::ReadOnly) => debug!("wrote /run/hosts (/etc is read-only)"),
        Err(e) => error!("cannot write hosts file: {e}"),
    }
}
