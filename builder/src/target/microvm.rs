//! The microvm target: the release's tree plus beambake's init at `/init` and the kernel
//! modules the machine needs, as a zstd cpio initramfs; the kernel beside it; a boot plan
//! for `beambake boot`.
//!
//! Must not: boot (see [`crate::boot`]) or know release internals.

use std::path::{Path, PathBuf};

use crate::assemble;
use crate::boot::{qemu, BootPlan, NetPlan, PLAN_FILE};
use crate::image::compress::Compression;
use crate::kernel::{self, Kernel};
use crate::manifest::HostFile;
use crate::output::Written;
use crate::pipeline::{self, Error, Input, Progress};
use crate::recipe::{Machine, NetMode, Recipe};
use crate::rootfs::Tree;

/// The default kernel pin, compiled in so the binary works from anywhere.
pub const DEFAULT_PIN: &str = include_str!("../../../images/kernel-debian-cloud.toml");

/// beambake's init (static), built from the workspace's `init` crate by build.rs.
pub const INIT: &[u8] = include_bytes!(env!("BEAMBAKE_INIT_BIN"));

/// What a build wrote.
pub struct Built {
    pub dir: PathBuf,
    pub plan: BootPlan,
    pub image: Written,
    pub manifest: PathBuf,
}

/// Modules the machine needs for its devices.
pub fn machine_modules(recipe: &Recipe) -> Vec<String> {
    let mut v: Vec<String> = match recipe.vm.machine {
        Machine::Microvm => vec!["virtio_mmio".into()],
        Machine::Pc => vec!["virtio_pci".into()],
    };
    if recipe.network.mode != NetMode::None {
        v.push("virtio_net".into());
    }
    v.extend(recipe.kernel.extra_modules.iter().cloned());
    v
}

pub fn kernel_for(recipe: &Recipe, cache: &Path) -> Result<Kernel, Error> {
    let k = &recipe.kernel;
    Ok(match (&k.path, &k.pin) {
        (Some(p), _) => kernel::from_paths(
            &recipe.resolve(p),
            k.modules.as_ref().map(|m| recipe.resolve(m)).as_deref(),
        )?,
        (None, Some(pin)) => {
            kernel::fetch_debian(&kernel::Pin::load(&recipe.resolve(pin))?, cache)?
        }
        (None, None) => {
            let pin: kernel::Pin = toml::from_str(DEFAULT_PIN).map_err(|e| Error::Io {
                path: PathBuf::from("images/kernel-debian-cloud.toml"),
                source: std::io::Error::other(e.to_string()),
            })?;
            kernel::fetch_debian(&pin, cache)?
        }
    })
}

/// Adds `/init`, the modules (and their load order) and the `/etc/hosts` link.
pub fn add_boot_files(tree: &mut Tree, kernel: &Kernel, modules: &[String]) -> Result<(), Error> {
    tree.add_bytes("/init", INIT.to_vec(), 0o755, "beambake init")?;
    tree.add_symlink("/etc/hosts", "/run/hosts", "beambake")?;
    let wanted: Vec<&str> = modules.iter().map(String::as_str).collect();
    let resolved = kernel.resolve_modules(&wanted)?;
    let mut order = String::new();
    for m in &resolved {
        let name = m
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}.ko", m.name));
        // /lib is usually a symlink to usr/lib in the tree (mirrored from a merged-/usr host).
        let guest = format!("/usr/lib/modules/{}/{name}", kernel.release);
        tree.add_file(
            &guest,
            crate::rootfs::FileSource::Host(m.path.clone()),
            0o644,
            &format!("kernel module {}", m.name),
        )?;
        order.push_str(&guest);
        order.push('\n');
    }
    tree.add_bytes(
        "/etc/beambake/modules",
        order.into_bytes(),
        0o644,
        "beambake",
    )?;
    Ok(())
}

pub fn build(recipe: &Recipe, out_root: &Path, progress: &dyn Progress) -> Result<Built, Error> {
    let dir = out_root.join(&recipe.name);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    let guest = recipe.guest_addr().map_err(Error::Recipe)?;
    let host = recipe.host_addr().map_err(Error::Recipe)?;
    let (node, cookie) = match &recipe.distribution {
        Some(d) => {
            let cookie = match &d.cookie {
                Some(c) => c.clone(),
                None => super::random_cookie().map_err(|source| Error::Io {
                    path: PathBuf::from("/dev/urandom"),
                    source,
                })?,
            };
            (Some(format!("{}@{}", d.node, guest.ip)), Some(cookie))
        }
        None => (None, None),
    };
    let input = Input {
        path: recipe.resolve(&recipe.release.source),
        resolve: crate::source::Resolve {
            profile: recipe.release.profile.clone(),
            release: recipe.release.name.clone(),
            verbose: false,
        },
        discover: crate::release::Discover {
            otp_root: recipe.release.otp_root.as_ref().map(|p| recipe.resolve(p)),
        },
    };
    let opts = assemble::Options {
        prefix: recipe.release.prefix.clone(),
        mtime: Tree::epoch_from_env()?,
        distribution: node.clone().zip(cookie.clone()),
        code_loading: recipe.launch.code_loading.map(|m| {
            match m {
                crate::recipe::CodeLoading::Embedded => "embedded",
                crate::recipe::CodeLoading::Interactive => "interactive",
            }
            .to_string()
        }),
        extra_args: recipe.launch.extra_args.clone(),
    };
    let mut prepared = pipeline::prepare(&input, &opts, progress)?;
    progress.step("fetching the kernel");
    let cache = kernel::default_cache_dir();
    let kernel = kernel_for(recipe, &cache)?;
    add_boot_files(
        &mut prepared.assembly.tree,
        &kernel,
        &machine_modules(recipe),
    )?;

    progress.step("writing the initramfs");
    let initrd_name = format!("{}.cpio.zst", recipe.name);
    let image = pipeline::write_initramfs(
        &prepared.assembly.tree,
        &dir.join(&initrd_name),
        Compression::Zstd,
        recipe.vm.compression_level,
    )?;
    let kernel_bytes = std::fs::read(&kernel.image).map_err(|source| Error::Io {
        path: kernel.image.clone(),
        source,
    })?;
    let kernel_out = crate::output::write_bytes(&dir.join("vmlinuz"), &kernel_bytes)?;
    let cookie_file = match &cookie {
        Some(c) => {
            crate::output::write_bytes_mode(&dir.join("cookie"), c.as_bytes(), 0o600)?;
            Some(PathBuf::from("cookie"))
        }
        None => None,
    };
    let hostname = recipe.hostname();
    let mut cmdline = qemu::FAST_CMDLINE.to_string();
    if recipe.network.mode != NetMode::None {
        cmdline.push_str(&format!(
            " beambake.ip={}/{} beambake.gw={host}",
            guest.ip, guest.prefix
        ));
    }
    cmdline.push_str(&format!(" beambake.hostname={hostname}"));
    if !recipe.kernel.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&recipe.kernel.cmdline);
    }
    let plan = BootPlan {
        name: recipe.name.clone(),
        target: recipe.target,
        kernel: PathBuf::from("vmlinuz"),
        initrd: PathBuf::from(&initrd_name),
        cmdline,
        memory_mib: recipe.vm.memory_mib,
        cpus: recipe.vm.cpus,
        machine: recipe.vm.machine,
        accel: recipe.vm.accel,
        cpu: recipe.vm.cpu.clone(),
        net: NetPlan {
            mode: recipe.network.mode,
            guest: guest.ip,
            prefix: guest.prefix,
            host,
            hostname,
        },
        node,
        cookie_file,
        checks: recipe.checks.clone(),
        smoke: recipe.smoke.clone(),
    };
    crate::output::write_bytes(&dir.join(PLAN_FILE), plan.to_json().as_bytes())?;

    let mut manifest = pipeline::manifest(
        &prepared,
        &[
            (image.clone(), "cpio-newc+zstd"),
            (kernel_out, "linux-bzimage"),
        ],
        &dir,
        false,
    )?;
    manifest.inputs.host_files.push(HostFile {
        path: kernel.image.display().to_string(),
        sha256: kernel.sha256.clone(),
    });
    if let Some(pin) = &kernel.package {
        manifest.inputs.host_files.push(HostFile {
            path: format!("debian:{}={}.deb", pin.package, pin.version),
            sha256: pin.sha256.clone(),
        });
    }
    let manifest_path = dir.join("manifest.json");
    crate::output::write_bytes(&manifest_path, manifest.to_json().as_bytes())?;
    Ok(Built {
        dir,
        plan,
        image,
        manifest: manifest_path,
    })
}
