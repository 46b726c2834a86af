//! The osv target: the release on OSv. OSv is built from its pinned source snapshot
//! ([`beambake_kernel::osv_kernel`], cached); the release's ERTS must be an OSv build
//! (`release.erts_from`: OTP with beambake's osv patch set, position-independent, no
//! JIT); beambake's loader `start-otp.so` ([`START_OTP`], built from
//! `start-otp/start-otp.c`) runs it from the launch spec the builder computed, written as
//! lines at [`paths::LAUNCH_LINES_PATH`]. The tree is written as OSv's ROFS and joined
//! with OSv's loader into one raw disk image whose command line (at byte 512) is
//! rebar3_osv's `/start-otp.so REL VMARGS SYSCONFIG`: it boots on its own
//! (`qemu-system-x86_64 -M pc -drive file=NAME.img,format=raw`); `beambake boot` gives
//! each VM its own copy with its address and node name ([`beambake_vm::boot::osv`]).
//!
//! Must not: boot (see [`beambake_vm::boot`]), know other targets, or compute any part of
//! the release's command line (the launch spec does).

pub mod loadable;

use std::path::{Path, PathBuf};

use beambake_contract::paths;
use beambake_images::image::{self, osv_disk, Format};
use beambake_images::output::Written;
use beambake_images::rootfs::{FileSource, Tree};
use beambake_kernel::osv_kernel::{self, OsvBuild};
use beambake_recipe::{OsvFill, Recipe};
use beambake_release::launch::{LaunchSpec, LaunchSpecExt};
use beambake_release::manifest::HostFile;
use beambake_target::{Common, Context, Error, Made, Progress, Target};
use beambake_vm::osv_upload;

/// beambake's OSv loader, built by build.rs from `start-otp/start-otp.c`.
pub const START_OTP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/start-otp.so"));
/// Where the loader sits in the image (rebar3_osv's place).
pub const START_OTP_PATH: &str = "/start-otp.so";
/// The ttsl driver needs a terminal type OSv's console handles.
pub const TERM: &str = "vt100-qemu";

/// The resolver configuration the node reads (`ERL_INETRC`): hosts file, then DNS. Never
/// the native resolver: it is a port program (`inet_gethost`), and OSv cannot spawn one
/// (an unpatched kernel application would halt the node at its first lookup).
pub const INETRC_PATH: &str = "/etc/beambake/inetrc";
pub const INETRC: &str = "{lookup, [file, dns]}.\n";

/// Libraries OSv's kernel provides itself (its libc is built in): left out of the image.
pub const OSV_PROVIDED: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
];

/// The osv target.
pub struct Osv;

impl Target for Osv {
    fn kind(&self) -> beambake_recipe::Target {
        beambake_recipe::Target::Osv
    }

    fn check(&self, recipe: &Recipe) -> Result<(), Error> {
        if recipe.release.erts_from.is_none() {
            return Err(Error::recipe(
                recipe,
                "the osv target needs an ERTS built for OSv (position-independent, no JIT, beambake's osv patch set): \
                 build it with `cargo xtask otp-build --set osv` and set release.erts_from to the tree it prints",
            ));
        }
        if recipe.kernel.path.is_some()
            || recipe.kernel.modules.is_some()
            || !recipe.kernel.extra_modules.is_empty()
        {
            return Err(Error::recipe(
                recipe,
                "the osv target builds OSv itself (osv.source names the snapshot); remove kernel.path, kernel.modules and kernel.extra_modules",
            ));
        }
        Ok(())
    }

    fn make(
        &self,
        recipe: &Recipe,
        common: &mut Common,
        cx: &Context,
        progress: &dyn Progress,
    ) -> Result<Made, Error> {
        let assembly = &mut common.prepared.assembly;
        let prefix = assembly.prefix.clone();
        let spec = osv_launch(&assembly.launch);
        let bindir = spec.env.get("BINDIR").cloned().unwrap_or_default();
        let refuse = |r: loadable::Refusal| Error::Unsupported {
            path: r.path,
            message: r.message,
        };
        loadable::check_erts(&assembly.tree, &bindir).map_err(refuse)?;
        loadable::check_release_objects(&assembly.tree, &prefix).map_err(refuse)?;

        let lines = spec.to_lines().map_err(|e| Error::Unsupported {
            path: PathBuf::from(paths::LAUNCH_LINES_PATH),
            message: e.to_string(),
        })?;
        let cmdline = osv_cmdline(recipe, &spec)?;
        osv_disk::check_cmdline(&cmdline).map_err(|e| Error::recipe(recipe, e.to_string()))?;
        // What OSv cannot run is refused before OSv is built.
        let snapshot = osv_kernel::locate(recipe.osv.source.as_deref())?;
        progress.step("building OSv");
        let osv = osv_kernel::get(Some(&snapshot), cx.cache, &|m| progress.step(m))?;

        let tree = &mut assembly.tree;
        let libs: Vec<PathBuf> = assembly.host_libs.iter().map(|l| l.path.clone()).collect();
        osv_layout(tree, &osv, &libs, &spec.writable, recipe.osv.fill)?;
        tree.remove(paths::LAUNCH_PATH);
        tree.add_bytes(
            paths::LAUNCH_PATH,
            spec.to_json().into_bytes(),
            0o644,
            "beambake",
        )?;
        tree.add_bytes(
            paths::LAUNCH_LINES_PATH,
            lines.into_bytes(),
            0o644,
            "beambake",
        )?;
        tree.add_bytes(
            INETRC_PATH,
            INETRC.as_bytes().to_vec(),
            0o644,
            "beambake (osv)",
        )?;
        tree.add_bytes(
            START_OTP_PATH,
            START_OTP.to_vec(),
            0o755,
            "beambake (start-otp.so)",
        )?;

        let dir = common.dir.clone();
        let name = format!("{}.img", recipe.name);
        let (disk, base_input) = match recipe.osv.fill {
            OsvFill::Rofs => {
                progress.step("writing the ROFS filesystem");
                let rofs_path = dir.join(format!("{}.rofs", recipe.name));
                let rofs = image::write(tree, &Format::Rofs, &rofs_path)?;
                progress.step("joining OSv's loader and the filesystem");
                let joined =
                    osv_disk::join(&osv.loader_img(), &rofs.path, &cmdline, &dir.join(&name));
                let _ = std::fs::remove_file(&rofs.path);
                (joined?, osv.loader_img())
            }
            OsvFill::Upload => {
                progress
                    .step("uploading the tree into OSv's ZFS base image (cpiod, booted under TCG)");
                let up = osv_upload::upload(
                    &osv.zfs_base_img(),
                    tree,
                    &dir.join(&name),
                    &cmdline,
                    &osv_upload::Limits::default(),
                    osv_upload::Receiver::Guest,
                )
                .map_err(|e| Error::Unsupported {
                    path: osv.zfs_base_img(),
                    message: e.to_string(),
                })?;
                let written = Written {
                    path: up.path,
                    size: up.size,
                    sha256: up.sha256,
                };
                (written, osv.zfs_base_img())
            }
        };

        let mut plan = beambake_target::plan(recipe, common, &name, String::new());
        plan.cmdline = cmdline;
        plan.root_image = Some(PathBuf::from(&name));
        plan.root_fs = Some(
            match recipe.osv.fill {
                OsvFill::Rofs => Format::Rofs.label(),
                OsvFill::Upload => "osv-zfs",
            }
            .to_string(),
        );
        plan.vmm = Some(beambake_vm::boot::vmm::VmmKind::QemuOsv);
        let kernel_inputs = vec![
            HostFile {
                path: format!("{} (key {})", snapshot.display(), osv.key),
                sha256: osv_kernel::pin()?.sha256,
            },
            HostFile {
                path: base_input.display().to_string(),
                sha256: beambake_images::digest::sha256_file(&base_input).map_err(|source| {
                    Error::Io {
                        path: base_input.clone(),
                        source,
                    }
                })?,
            },
        ];
        Ok(Made {
            plan,
            image: disk.clone(),
            artefacts: vec![(disk, osv_disk::LABEL)],
            kernel_inputs,
        })
    }
}

/// The release's launch spec as OSv runs it: epmd as a thread of erlexec (no service, no
/// `-start_epmd false`: OSv cannot start processes), and the terminal type the ttsl
/// driver needs on OSv's console.
pub fn osv_launch(spec: &LaunchSpec) -> LaunchSpec {
    let mut spec = spec.clone().with_epmd_in_erlexec();
    spec.env.insert("TERM".into(), TERM.into());
    spec.env.insert("ERL_INETRC".into(), INETRC_PATH.into());
    spec
}

/// The image's own command line: the root filesystem, the recipe's `kernel.cmdline` (OSv
/// options), and rebar3_osv's loader line `/start-otp.so REL VMARGS SYSCONFIG` (the
/// release's boot file, vm.args and sys.config from the launch spec).
pub fn osv_cmdline(recipe: &Recipe, spec: &LaunchSpec) -> Result<String, Error> {
    let value = |flag: &str| {
        spec.argv
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].clone())
    };
    let boot = value("-boot")
        .ok_or_else(|| Error::recipe(recipe, "the release's launch spec has no -boot"))?;
    let rel_dir = boot.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
    let vm_args = value("-args_file").unwrap_or_else(|| format!("{rel_dir}/vm.args"));
    let sys_config = value("-config")
        .map(|c| {
            if c.ends_with(".config") {
                c
            } else {
                format!("{c}.config")
            }
        })
        .unwrap_or_else(|| format!("{rel_dir}/sys.config"));
    let mut c = String::from(match recipe.osv.fill {
        OsvFill::Rofs => "--rootfs=rofs",
        OsvFill::Upload => "--rootfs=zfs",
    });
    if !recipe.kernel.cmdline.is_empty() {
        c.push(' ');
        c.push_str(&recipe.kernel.cmdline);
    }
    c.push_str(&format!(" {START_OTP_PATH} {boot} {vm_args} {sys_config}"));
    Ok(c)
}

/// What OSv needs in the tree beside the release: no device nodes (devfs provides them;
/// neither ROFS nor cpiod holds them), the release's host libraries at `/usr/lib` (OSv's
/// search path) except those OSv's kernel provides (left out). For a ROFS root also
/// OSv's skeleton: its mount table (plus a fresh ramfs on each of the release's
/// `writable` dirs: the root is read-only), hosts, mnttab, the mount points and
/// `libenviron.so`; an uploaded tree lands on the ZFS base, which has its own.
pub fn osv_layout(
    tree: &mut Tree,
    osv: &OsvBuild,
    libs: &[PathBuf],
    writable: &[String],
    fill: OsvFill,
) -> Result<(), Error> {
    for dev in ["/dev/console", "/dev/null"] {
        tree.remove(dev);
    }
    for lib in libs {
        let guest = lib.display().to_string();
        let Some(name) = lib.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if OSV_PROVIDED.contains(&name.as_str()) {
            tree.remove(&guest);
            continue;
        }
        let at = format!("/usr/lib/{name}");
        if at != guest && !tree.contains(&at) {
            tree.mkdir_p("/usr/lib", "beambake (osv)")?;
            tree.add_symlink(&at, &guest, "beambake (osv: its library path)")?;
        }
    }
    if fill == OsvFill::Upload {
        // The base mounts devfs, procfs and sysfs there: cpiod cannot chmod them.
        for d in ["/dev", "/proc", "/sys"] {
            tree.remove(d);
        }
        return Ok(());
    }
    let static_etc = osv.tree().join("static/etc");
    let read = |p: PathBuf| std::fs::read(&p).map_err(|source| Error::Io { path: p, source });
    let mut fstab = read(static_etc.join("fstab_rofs"))?;
    for w in writable.iter().filter(|w| tree.contains(w)) {
        fstab.extend_from_slice(format!("none {w} ramfs defaults 0 0\n").as_bytes());
    }
    tree.remove("/etc/fstab");
    tree.add_bytes(
        "/etc/fstab",
        fstab,
        0o644,
        "osv (static/etc/fstab_rofs + the release's writable dirs)",
    )?;
    if !tree.contains("/etc/hosts") {
        tree.add_bytes(
            "/etc/hosts",
            read(static_etc.join("hosts"))?,
            0o644,
            "osv (static/etc/hosts)",
        )?;
    }
    tree.remove("/etc/mnttab");
    tree.add_symlink("/etc/mnttab", "/proc/mounts", "osv")?;
    for d in ["/dev", "/proc", "/sys", "/tmp"] {
        if !tree.contains(d) {
            tree.add_dir(d, 0o755, "osv (mount point)")?;
        }
    }
    let environ = osv.tree().join("build/last/libenviron.so");
    tree.remove("/libenviron.so");
    tree.add_file(
        "/libenviron.so",
        FileSource::Host(environ),
        0o755,
        "osv (libenviron.so)",
    )?;
    Ok(())
}

/// The osv build a recipe would use, for tests and tools.
pub fn osv_for(recipe: &Recipe, cache: &Path, progress: &dyn Progress) -> Result<OsvBuild, Error> {
    let snapshot = osv_kernel::locate(recipe.osv.source.as_deref())?;
    Ok(osv_kernel::get(Some(&snapshot), cache, &|m| {
        progress.step(m)
    })?)
}
