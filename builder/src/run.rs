//! Recipe-level operations shared by the CLI, xtask and tests: build a recipe's image,
//! boot a built image, smoke-test a recipe.
//!
//! Must not: print (progress goes through [`Progress`]).

use std::path::{Path, PathBuf};

use beambake_images::image::{ext4, ImageError};
use beambake_recipe::{Accel, Recipe};
use beambake_target::pipeline::{Error, Progress};
use beambake_target::{Built, Context};
use beambake_vm::boot::vmm::{vmm_for, AccelUse};
use beambake_vm::boot::{accel, qemu, BootError, BootPlan};
use beambake_vm::port::vm::{port_plan, PortError, PortOpts};
use beambake_vm::sandbox::{self, Mode, Outcome, Request, SnapshotOp, SnapshotOutcome};
use beambake_vm::smoke::Report;

/// Builds `recipe` into `OUT/NAME`, using the build cache in `builds` when given
/// ([`build_cache_dir`]; `None`: `--no-cache`).
pub fn build(
    recipe: &Recipe,
    out_root: &Path,
    builds: Option<&Path>,
    progress: &dyn Progress,
) -> Result<Built, Error> {
    // The checks' CA files, before minutes of building.
    beambake_vm::smoke::tls::check_cas(&recipe.resolved_checks())?;
    let target = crate::targets::find(recipe.target).ok_or_else(|| Error::Unsupported {
        path: recipe.file.clone(),
        message: format!(
            "target {:?} cannot be built yet (see the README support matrix)",
            recipe.target
        ),
    })?;
    let cache = beambake_kernel::kernel::default_cache_dir();
    let cx = Context {
        init: crate::INIT,
        cache: &cache,
        builds,
    };
    beambake_target::build(target, recipe, out_root, &cx, progress)
}

/// The build cache's dir: `$BEAMBAKE_BUILD_CACHE`, else `builds/` in beambake's cache dir.
pub fn build_cache_dir() -> PathBuf {
    beambake_target::build_cache::dir(&beambake_kernel::kernel::default_cache_dir())
}

/// Boots the image in `dir` (a build's output directory) in a fresh sandbox; `count`
/// overrides how many VMs start from it. Returns the VMs' console logs, in VM order.
pub fn boot(
    dir: &Path,
    accel: Option<Accel>,
    count: Option<u32>,
    mode: Mode,
    snapshot: Option<SnapshotOp>,
    progress: &dyn Progress,
) -> Result<(BootPlan, Outcome, Vec<PathBuf>), Error> {
    let mut plan = BootPlan::load(dir)?;
    // Before any probe, data disk or sandbox.
    sandbox::check_runnable(plan.net.mode)?;
    if let Some(n) = count {
        plan.set_count(n)?;
    }
    let vmm = vmm_for(&plan)?;
    vmm.check(&plan, dir)?;
    let (chosen, accel_reason) = choose_accel(&plan, dir, vmm.accelerator(), accel, progress)?;
    let kvm = chosen == qemu::Accelerator::Kvm;
    let dir_abs = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some(op) = snapshot {
        beambake_vm::snapshot::preflight(&plan, &dir_abs, op == SnapshotOp::Restore, chosen)?;
    }
    let instances = plan.instances(&dir_abs);
    prepare_storage(&plan, &instances, progress)?;
    if mode == Mode::Smoke {
        beambake_vm::smoke::tls::check_cas(&plan.checks)?;
    }
    progress.step(match (mode, snapshot) {
        (Mode::Smoke, Some(SnapshotOp::Save)) => "booting, and saving the guest once it is ready",
        (Mode::Smoke, Some(SnapshotOp::Restore)) => {
            "starting from the snapshot and running the checks"
        }
        (Mode::Smoke, None) => "booting and running the checks",
        (Mode::Interactive, _) => "booting",
    });
    let console_logs = instances.iter().map(|i| i.console_log.clone()).collect();
    let req = Request {
        dir: dir_abs,
        plan: plan.clone(),
        mode,
        kvm,
        verbose: progress.verbose(),
        snapshot,
    };
    let outcome = sandbox::run(&req);
    vmm.clean_up(&req.dir);
    let mut outcome = outcome?;
    if let Some(report) = outcome.report.as_mut() {
        report.accel_reason = Some(accel_reason);
    }
    if let Some(e) = &outcome.error {
        return Err(Error::Boot(BootError::Net(e.clone())));
    }
    Ok((plan, outcome, console_logs))
}

/// Runs `beambake port` for the built image in `dir`: one VM, driven over stdin/stdout
/// ([`beambake_vm::port::vm`]); the accelerator chosen as for `boot`. The guest's status
/// goes to Erlang as the port's last term.
pub fn port(
    dir: &Path,
    accel: Option<Accel>,
    opts: &PortOpts,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let plan = port_plan(BootPlan::load(dir)?, dir, opts).map_err(port_error)?;
    let vmm = vmm_for(&plan)?;
    vmm.check(&plan, dir)?;
    let (accelerator, _) = choose_accel(&plan, dir, vmm.accelerator(), accel, progress)?;
    let (dir_abs, run_dir) = port_dirs(dir)?;
    beambake_vm::port::vm::run(
        &plan,
        &dir_abs,
        run_dir.path(),
        accelerator,
        Box::new(std::io::stdin()),
        Box::new(std::io::stdout()),
        opts,
    )
    .map_err(port_error)?;
    Ok(())
}

/// Runs `beambake port --libvirt URI` for the built microvm image in `dir`: the same
/// port VM as [`port`], as a transient domain of the libvirt daemon at `uri`
/// ([`beambake_libvirt::guest`]); `base` holds the accelerator, TSC and emulator.
pub fn port_libvirt(
    dir: &Path,
    uri: &str,
    base: &beambake_libvirt::xml::Options,
    opts: &PortOpts,
) -> Result<(), Error> {
    use beambake_libvirt::guest::{self, GuestError};
    // A daemon that cannot be reached, or no libvirt at all, is the host's problem.
    let lv = |e: GuestError| match e {
        GuestError::Libvirt {
            what: "connecting", ..
        }
        | GuestError::NotBuilt(_) => Error::Boot(BootError::Host(e.to_string())),
        e => Error::Boot(BootError::Net(e.to_string())),
    };
    let plan = beambake_libvirt::xml::load(dir).map_err(|e| lv(e.into()))?;
    let plan = port_plan(plan, dir, opts).map_err(port_error)?;
    let (dir_abs, run_dir) = port_dirs(dir)?;
    let r = guest::PortRun {
        uri,
        plan: &plan,
        dir: &dir_abs,
        run_dir: run_dir.path(),
        base,
        opts,
    };
    guest::run(&r, Box::new(std::io::stdin()), Box::new(std::io::stdout())).map_err(lv)?;
    Ok(())
}

/// The accelerator for `plan`'s VMs and why: KVM only when asked for or proved by the
/// probe (`accel` overrides the plan's); TCG's value for a VMM without one (UML).
fn choose_accel(
    plan: &BootPlan,
    dir: &Path,
    use_: AccelUse,
    accel: Option<Accel>,
    progress: &dyn Progress,
) -> Result<(qemu::Accelerator, String), Error> {
    match use_ {
        AccelUse::None { reason, .. } => Ok((qemu::Accelerator::Tcg, reason.to_string())),
        AccelUse::KvmOrTcg => {
            progress.step("choosing the accelerator");
            let target = accel::ProbeTarget::for_plan(plan, dir, crate::INIT);
            let c = accel::choose(
                accel,
                plan.accel,
                &target,
                &beambake_kernel::kernel::default_cache_dir(),
            )
            .map_err(BootError::from)?;
            progress.detail(&format!("accelerator: {} ({})", c.name(), c.reason));
            Ok((c.accelerator, c.reason))
        }
    }
}

/// The write end of the pipe [`on_signal`] reports a signal on (-1: none yet).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// When SIGTERM, SIGINT or SIGHUP ends this process (a port's owner may stop it that
/// way rather than by closing stdin), removes `dir` first, then exits with 128 + the
/// signal. The VM dies with this process (it was started with PR_SET_PDEATHSIG); its run
/// dir would not. The handler only writes the signal to a pipe; a thread does the rest.
/// Handlers, unlike blocked signals, are not inherited across exec: the VMM is unaffected.
fn remove_on_signal(dir: PathBuf) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two fds it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    SIGNAL_PIPE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: `on_signal` is async-signal-safe (one write to a pipe).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
    std::thread::spawn(move || {
        let mut b = 0u8;
        // SAFETY: reads one byte into `b` from the pipe's read end, which this thread owns.
        let n = unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(128 + i32::from(b));
        }
    });
    Ok(())
}

/// A port VM's image directory (absolute) and its own run directory (sockets, console
/// log), removed when the port ends, by a signal too ([`remove_on_signal`]).
fn port_dirs(dir: &Path) -> Result<(PathBuf, tempfile::TempDir), Error> {
    let dir_abs = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let run_dir = tempfile::Builder::new()
        .prefix("beambake-port-")
        .tempdir()
        .map_err(|source| Error::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    remove_on_signal(run_dir.path().to_path_buf()).map_err(|source| Error::Io {
        path: run_dir.path().to_path_buf(),
        source,
    })?;
    Ok((dir_abs, run_dir))
}

fn port_error(e: PortError) -> Error {
    match e {
        PortError::Boot(b) => Error::Boot(b),
        other => Error::Boot(BootError::Net(other.to_string())),
    }
}

/// Data disks (created when absent, else checked to be ext4) and host directories (must
/// exist), before any VM starts.
fn prepare_storage(
    plan: &BootPlan,
    instances: &[beambake_vm::boot::Instance],
    progress: &dyn Progress,
) -> Result<(), Error> {
    for h in &plan.hostfs {
        if !h.host.is_dir() {
            return Err(Error::Storage {
                path: h.host.clone(),
                message: format!(
                    "hostfs directory for {} does not exist (or is not a directory)",
                    h.guest
                ),
            });
        }
    }
    for d in &plan.disks {
        if !d.path.is_file() {
            return Err(Error::Storage {
                path: d.path.clone(),
                message: format!("disk image for {} does not exist", d.mount),
            });
        }
    }
    if let Some(d) = &plan.data {
        for inst in instances {
            let Some(disk) = &inst.data_disk else {
                continue;
            };
            if disk.exists() {
                // The error names the disk.
                ext4::probe(disk).map_err(ImageError::from)?;
            } else {
                progress.step(&format!("creating the data disk {}", disk.display()));
                ext4::create_data_disk(disk, d.size_mib, "beambake-data").map_err(|e| {
                    Error::DataDisk {
                        path: disk.clone(),
                        source: Box::new(e),
                    }
                })?;
            }
        }
    }
    Ok(())
}

/// Smoke-tests an already built image (a build's output directory).
pub fn smoke_dir(dir: &Path, progress: &dyn Progress) -> Result<(Report, PathBuf), Error> {
    smoke_snapshot(dir, None, progress).map(|(r, log, _)| (r, log))
}

/// [`smoke_dir`], saving the guest once ready (`Save`: only the first check runs) or
/// starting it from the saved state (`Restore`): [`beambake_vm::snapshot`].
pub fn smoke_snapshot(
    dir: &Path,
    snapshot: Option<SnapshotOp>,
    progress: &dyn Progress,
) -> Result<(Report, PathBuf, Option<SnapshotOutcome>), Error> {
    let (plan, outcome, logs) = boot(dir, None, None, Mode::Smoke, snapshot, progress)?;
    if plan.checks.is_empty() {
        return Err(Error::Unsupported {
            path: dir.to_path_buf(),
            message: "the plan has no checks".into(),
        });
    }
    let report = outcome.report.ok_or_else(|| Error::NoReport {
        dir: dir.to_path_buf(),
    })?;
    if report.passed {
        for log in &logs {
            let _ = std::fs::remove_file(log);
        }
    }
    let first = logs
        .into_iter()
        .next()
        .unwrap_or_else(|| dir.join("console.log"));
    Ok((report, first, outcome.snapshot))
}

/// Refuses a smoke run of `recipe` that cannot be made, before anything is built: no
/// checks, or a network this process cannot set up.
pub fn smoke_check(recipe: &Recipe) -> Result<(), Error> {
    if recipe.checks.is_empty() {
        return Err(Error::recipe(recipe, "no [[check]] to run"));
    }
    sandbox::check_runnable(recipe.network.mode)?;
    Ok(())
}

/// Builds and smoke-tests a recipe. The console log is kept only when a check failed.
pub fn smoke(
    recipe: &Recipe,
    out_root: &Path,
    builds: Option<&Path>,
    progress: &dyn Progress,
) -> Result<(Built, Report, PathBuf), Error> {
    smoke_check(recipe)?;
    let built = build(recipe, out_root, builds, progress)?;
    let (report, log) = smoke_dir(&built.dir, progress)?;
    Ok((built, report, log))
}
