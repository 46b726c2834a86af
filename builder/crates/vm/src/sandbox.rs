//! Running a guest in a private sandbox: the parent (`beambake boot|smoke`) re-executes
//! itself as `beambake __sandbox REQ_FD OUT_FD` in a new network and PID namespace
//! ([`crate::net::sandboxed`]), handing it the JSON [`Request`] over an inherited pipe
//! (no file: nothing to leave behind); that process sets up `lo` and the tap, starts a
//! reaper as PID 1 of the new PID namespace, boots the VM and, for smoke runs, runs the
//! checks from inside the namespace, and writes its JSON [`Outcome`] to the other pipe.
//!
//! Cleanup is the kernel's job, on every path: the sandbox dies with its parent
//! (`PR_SET_PDEATHSIG`), the reaper and the VM die with the sandbox, every process left
//! in the PID namespace dies with the reaper, and the namespace and its tap are freed
//! when their last process is gone. Nothing is named, so nothing can be left behind.
//!
//! Must not: build images; send traffic anywhere but into the namespace it made.

use std::fs::File;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::guest::{Guest, Wiring};
use crate::boot::qemu::{Accelerator, Console};
use crate::boot::vmm::vmm_for;
use crate::boot::{BootError, BootPlan};
use crate::net;
use crate::smoke::{self, Report};
use beambake_recipe::NetMode;

pub const SANDBOX_ARG: &str = "__sandbox";
pub const REAPER_ARG: &str = "__reaper";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Console on the terminal; returns when the VM ends.
    Interactive,
    /// Console to the log; run the plan's checks, then stop the VM.
    Smoke,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub dir: PathBuf,
    pub plan: BootPlan,
    pub mode: Mode,
    pub kvm: bool,
    /// Print the VM's command line.
    #[serde(default)]
    pub verbose: bool,
    /// Save the guest once ready, or start it from the saved state
    /// ([`crate::snapshot`]); smoke mode, one Linux guest under qemu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotOp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotOp {
    /// Boot, wait for the first check to pass, save the guest beside the image, stop.
    Save,
    /// Start from the image's snapshot, resync the guest, run every check.
    Restore,
}

/// What a snapshot run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotOutcome {
    /// The snapshot saved (save).
    pub saved: Option<crate::snapshot::Meta>,
    /// How long the save took.
    pub save_ms: Option<u64>,
    /// How far the restored guest's clock was stepped (restore).
    pub clock_step_ms: Option<i64>,
}

/// What the sandbox reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The guest's own exit status (from the init), when it ended by itself.
    pub guest_exit: Option<i32>,
    pub report: Option<Report>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotOutcome>,
}

/// The refusal of a plan this process cannot run (a tap needs root), before anything
/// is built, written or started.
pub fn check_runnable(net: NetMode) -> Result<(), BootError> {
    if net == NetMode::Tap && !net::is_root() {
        return Err(BootError::Host(
            "tap networking needs root; use network.mode = \"user\" (qemu user networking, rootless)".into(),
        ));
    }
    Ok(())
}

/// Runs the request in a fresh sandbox (a child of this process) and returns its outcome.
/// The request and the outcome travel over pipes the child inherits: nothing is written
/// to disk, so nothing is left when either side is killed.
pub fn run(req: &Request) -> Result<Outcome, BootError> {
    check_runnable(req.plan.net.mode)?;
    let exe = std::env::current_exe().map_err(|source| BootError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let json = serde_json::to_string(req).map_err(|e| BootError::Net(e.to_string()))?;
    let pipe_err = |e: std::io::Error| BootError::Net(format!("making the sandbox's pipes: {e}"));
    let (req_r, req_w) = pipe().map_err(pipe_err)?;
    let (out_r, out_w) = pipe().map_err(pipe_err)?;
    // The whole request goes into the pipe before the child exists: no write can block
    // on, or be broken by, a child that does not read.
    fill(req_w, json.as_bytes())
        .map_err(|e| BootError::Net(format!("handing over the request: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg(SANDBOX_ARG)
        .arg(req_r.as_raw_fd().to_string())
        .arg(out_w.as_raw_fd().to_string());
    if req.mode == Mode::Smoke {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }
    let inherited = [req_r.as_raw_fd(), out_w.as_raw_fd()];
    // SAFETY: fcntl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    net::sandboxed(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            BootError::Host(format!("cannot create a private network namespace ({e}): run as root, or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"))
        } else {
            BootError::Net(format!("starting the sandbox: {e}"))
        }
    })?;
    // Only the child holds its ends: EOF when it is gone.
    drop((req_r, out_w));
    let mut text = String::new();
    let read = File::from(out_r).read_to_string(&mut text);
    let status = child.wait().map_err(|e| BootError::Net(e.to_string()))?;
    match read {
        Ok(_) if !text.is_empty() => serde_json::from_str(&text)
            .map_err(|e| BootError::Net(format!("sandbox answered garbage ({e}): {text}"))),
        _ => Err(BootError::Net(format!(
            "the sandbox ended ({status}) without an answer"
        ))),
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success; each is owned once.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Writes `data` into the pipe `w` (grown to hold it) and closes it; fails rather than
/// block when it does not fit.
fn fill(w: OwnedFd, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: fcntl on an owned fd.
    let cap = unsafe {
        let cap = libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ);
        if (cap as usize) < data.len() {
            libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, data.len() as libc::c_int)
        } else {
            cap
        }
    };
    if cap < 0 || (cap as usize) < data.len() {
        return Err(std::io::Error::other(format!(
            "{} bytes do not fit in a pipe",
            data.len()
        )));
    }
    File::from(w).write_all(data)
}

/// Takes ownership of an inherited fd named on the command line, making it
/// close-on-exec again (the reaper and the VMs must not hold it).
fn inherited_fd(arg: &str) -> Result<File, BootError> {
    let bad = || BootError::Net(format!("{arg}: not an inherited file descriptor"));
    let fd: i32 = arg.parse().map_err(|_| bad())?;
    if fd < 3 {
        return Err(bad());
    }
    // SAFETY: fcntl on an arbitrary number only inspects it.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(bad());
    }
    // SAFETY: the parent passed this fd to this process alone; it is owned once, here.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Body of `beambake __sandbox REQ_FD OUT_FD`: reads the JSON [`Request`] from `REQ_FD`
/// and writes the JSON [`Outcome`] to `OUT_FD`.
pub fn main(req_fd: &str, out_fd: &str) -> i32 {
    let mut out = match inherited_fd(out_fd) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("beambake sandbox: {e}");
            return 1;
        }
    };
    let outcome = match load(req_fd).and_then(|req| inside(&req)) {
        Ok(o) => o,
        Err(e) => Outcome {
            guest_exit: None,
            report: None,
            error: Some(e.to_string()),
            snapshot: None,
        },
    };
    let json = serde_json::to_string(&outcome).unwrap_or_default();
    match out.write_all(json.as_bytes()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("beambake sandbox: writing the outcome: {e}");
            1
        }
    }
}

fn load(req_fd: &str) -> Result<Request, BootError> {
    let mut text = String::new();
    inherited_fd(req_fd)?
        .read_to_string(&mut text)
        .map_err(|e| BootError::Net(format!("reading the request: {e}")))?;
    serde_json::from_str(&text).map_err(|e| BootError::Net(format!("a garbled request: {e}")))
}

fn inside(req: &Request) -> Result<Outcome, BootError> {
    let neterr = |what: &str, e: std::io::Error| BootError::Net(format!("{what}: {e}"));
    // Paranoia: configure links only in a namespace that is visibly ours.
    if !net::only_loopback().map_err(|e| neterr("listing interfaces", e))? {
        return Err(BootError::Net(
            "refusing to configure links: not in a fresh network namespace".into(),
        ));
    }
    net::link_up("lo").map_err(|e| neterr("bringing lo up", e))?;
    let mut plan = req.plan.clone();
    // The caller checked the request ([`crate::snapshot::preflight`]); the control line
    // carries the resync and must exist when the guest is saved.
    plan.control |= req.snapshot.is_some();
    let plan = &plan;
    let vmm = vmm_for(plan)?;
    let insts = plan.instances(&req.dir);
    let mut taps = Vec::new();
    if plan.net.mode == NetMode::Tap {
        for (i, inst) in insts.iter().enumerate() {
            let what = |e| neterr(&format!("creating {}", inst.tap), e);
            taps.push(net::Tap::create(&inst.tap, vmm.vnet_hdr()).map_err(what)?);
            // The same host-side address in every sandbox: a guest restored from a
            // snapshot still has it in its ARP cache.
            net::set_hwaddr(&inst.tap, [0x02, 0x62, 0x62, 0, 0, i as u8 + 1])
                .map_err(|e| neterr(&format!("addressing {}", inst.tap), e))?;
        }
        // One VM: the host's address on its tap. Several: a bridge joins their taps.
        let host_if = if taps.len() == 1 {
            taps[0].name.clone()
        } else {
            net::add_bridge("br0").map_err(|e| neterr("creating br0", e))?;
            for t in &taps {
                net::bridge_add_port("br0", &t.name)
                    .map_err(|e| neterr(&format!("adding {} to br0", t.name), e))?;
                net::link_up(&t.name).map_err(|e| neterr(&format!("bringing {} up", t.name), e))?;
            }
            "br0".to_string()
        };
        net::set_addr(&host_if, plan.net.host, plan.net.prefix)
            .map_err(|e| neterr(&format!("addressing {host_if}"), e))?;
        net::link_up(&host_if).map_err(|e| neterr(&format!("bringing {host_if} up"), e))?;
    }
    // First child: PID 1 of the new PID namespace, reaping orphans (epmd daemons, ...).
    let exe = std::env::current_exe().map_err(|e| neterr("current_exe", e))?;
    let mut reaper = Command::new(exe);
    reaper
        .arg(REAPER_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    net::dies_with_parent(&mut reaper);
    let mut reaper = reaper
        .spawn()
        .map_err(|e| neterr("starting the reaper", e))?;

    let accel = if req.kvm {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    };
    // After the reaper: it must be the first process of the PID namespace (this runs qemu).
    let snapshot_meta = match req.snapshot {
        Some(SnapshotOp::Save) => Some(
            crate::snapshot::Meta::of(plan, &req.dir, accel)
                .map_err(|e| BootError::Net(e.to_string()))?,
        ),
        _ => None,
    };
    let mut guests = Vec::new();
    let mut controls = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        // Interactive: the first VM's console is the terminal; the others log to files.
        let interactive = req.mode == Mode::Interactive && i == 0;
        let console = if interactive {
            Console::Terminal(&inst.console_log)
        } else {
            Console::File(&inst.console_log)
        };
        let mut cmd = vmm.command(plan, &req.dir, inst, accel, console)?;
        let mut ctl_vm = None;
        if let Some(op) = req.snapshot {
            let qmp = crate::snapshot::qmp_socket(&inst.console_log);
            let _ = std::fs::remove_file(&qmp);
            cmd.args(crate::snapshot::qmp_args(&qmp));
            if op == SnapshotOp::Restore {
                cmd.args(crate::snapshot::restore_args(&req.dir));
            }
        }
        if plan.control {
            let (vm_end, ours) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| neterr("a socket for the control line", e))?;
            ctl_vm = Some(OwnedFd::from(vm_end));
            controls.push(ours);
        }
        if req.verbose {
            eprintln!("beambake: {cmd:?}");
        }
        let wiring = Wiring {
            tap: taps.get(i).map(|t| &t.fd),
            control: ctl_vm.as_ref(),
            tee: interactive && vmm.tees_console(),
            stop_socket: vmm.stop_socket(plan, &req.dir, inst),
            own_group: false,
            ..Wiring::default()
        };
        guests.push(Guest::spawn(vmm.clone(), cmd, &inst.console_log, wiring)?);
    }
    let outcome = match req.mode {
        Mode::Interactive => {
            let g = &mut guests[0];
            g.pump_console();
            g.wait().map_err(|e| neterr("waiting for the VM", e))?;
            Outcome {
                guest_exit: g.guest_status(),
                report: None,
                error: None,
                snapshot: None,
            }
        }
        Mode::Smoke => {
            let cookie = plan.cookie(&req.dir)?;
            let host: IpAddr = match plan.net.mode {
                NetMode::Tap => plan.net.host.into(),
                _ => [127, 0, 0, 1].into(),
            };
            let nodes = insts
                .iter()
                .map(|inst| smoke::NodeTarget {
                    addr: match plan.net.mode {
                        NetMode::Tap => inst.ip.into(),
                        _ => [127, 0, 0, 1].into(),
                    },
                    node: inst.node.clone(),
                })
                .collect();
            let target = smoke::Target {
                nodes,
                host,
                cookie: cookie.as_deref(),
                ready_timeout: Duration::from_secs(plan.smoke.ready_timeout_s),
                check_timeout: Duration::from_secs(plan.smoke.check_timeout_s),
            };
            let accel_name = vmm.accelerator().label(accel);
            let mut snap = None;
            let checks = match req.snapshot {
                // Ready is the first check passing: then the guest is saved.
                Some(SnapshotOp::Save) => &plan.checks[..plan.checks.len().min(1)],
                Some(SnapshotOp::Restore) => {
                    // Before any check: the state loaded and running, then the
                    // restored guest's clock and random pool.
                    if let Some(inst) = insts.first() {
                        crate::snapshot::resume(
                            &crate::snapshot::qmp_socket(&inst.console_log),
                            target.ready_timeout,
                        )
                        .map_err(|e| BootError::Net(e.to_string()))?;
                    }
                    let step = controls
                        .first()
                        .map(|c| crate::snapshot::resync(c, target.ready_timeout))
                        .transpose()
                        .map_err(|e| BootError::Net(e.to_string()))?;
                    snap = Some(SnapshotOutcome {
                        saved: None,
                        save_ms: None,
                        clock_step_ms: step,
                    });
                    &plan.checks[..]
                }
                None => &plan.checks[..],
            };
            let report = smoke::run(&plan.name, accel_name, &mut guests, checks, &target);
            if let (Some(SnapshotOp::Save), true, Some(meta), Some(inst)) =
                (req.snapshot, report.passed, snapshot_meta, insts.first())
            {
                let start = std::time::Instant::now();
                let saved = crate::snapshot::save(
                    &crate::snapshot::qmp_socket(&inst.console_log),
                    &req.dir,
                    meta,
                    Duration::from_secs(300),
                )
                .map_err(|e| BootError::Net(e.to_string()))?;
                snap = Some(SnapshotOutcome {
                    saved: Some(saved),
                    save_ms: Some(start.elapsed().as_millis() as u64),
                    clock_step_ms: None,
                });
            }
            Outcome {
                guest_exit: report.guest_exit,
                report: Some(report),
                error: None,
                snapshot: snap,
            }
        }
    };
    // A clean shutdown where the VM can be asked (UML: data disks synced), else a kill.
    for g in &mut guests {
        g.request_stop();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for g in &mut guests {
        g.stop_by(deadline);
    }
    let _ = reaper.kill();
    let _ = reaper.wait();
    Ok(outcome)
}

/// Body of `beambake __reaper`: PID 1 of the sandbox's PID namespace. Reaps until killed.
pub fn reaper_main() -> i32 {
    loop {
        // SAFETY: plain wait; a null status pointer is allowed.
        let r = unsafe { libc::wait(std::ptr::null_mut()) };
        if r < 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
