//! The microvm target: the release's tree plus beambake's init at `/init` and the kernel
//! modules the machine needs, as a zstd cpio initramfs; the kernel beside it (Debian's
//! `vmlinuz`, or with `[kernel] source = "minimal"` beambake's minimal kernel as the
//! uncompressed PVH `vmlinux`, booted on `-M microvm,acpi=off` with no modules); a boot
//! plan for `beambake boot`.
//!
//! Must not: boot (see [`beambake_vm::boot`]), know release internals or other targets.

use std::path::{Path, PathBuf};

use beambake_contract::paths;
use beambake_images::image::compress::Compression;
use beambake_images::image::{self, Format};
use beambake_images::output::Written;
use beambake_images::rootfs::Tree;
use beambake_kernel::kernel::{self, Kernel};
use beambake_kernel::minimal_kernel;
use beambake_recipe::{KernelSource, Machine, NetMode, Recipe};
use beambake_release::manifest::HostFile;
use beambake_target::{Common, Context, Error, Made, Progress, Target};
use beambake_vm::boot::qemu;

/// The default kernel pin, compiled in so the binary works from anywhere.
pub const DEFAULT_PIN: &str = include_str!("../../../../images/kernel-debian-cloud.toml");

/// The microvm target.
pub struct Microvm;

/// Modules the machine needs for its devices. Machine pc has an ACPI power button
/// (qemu's `system_powerdown`, libvirt's shutdown): `button` turns a press into an input
/// event and `evdev` gives it a `/dev/input/event*` node, which the init watches. The
/// minimal kernel has everything built in: none.
pub fn machine_modules(recipe: &Recipe) -> Vec<String> {
    if recipe.kernel.source == KernelSource::Minimal {
        return vec![];
    }
    let mut v: Vec<String> = match recipe.vm.machine {
        Machine::Microvm => vec!["virtio_mmio".into()],
        Machine::Pc => vec!["virtio_pci".into(), "button".into(), "evdev".into()],
    };
    if recipe.network.mode != NetMode::None {
        v.push("virtio_net".into());
    }
    v.extend(recipe.kernel.extra_modules.iter().cloned());
    v
}

/// The recipe's kernel (`kernel.path`, `kernel.pin`, or the default pin), fetched into
/// `cache` when it is a Debian package; the minimal kernel built into `cache` (minutes,
/// once: `progress` is told).
pub fn kernel_for(recipe: &Recipe, cache: &Path, progress: &dyn Fn(&str)) -> Result<Kernel, Error> {
    let k = &recipe.kernel;
    if k.source == KernelSource::Minimal {
        let built = minimal_kernel::SPEC.get(cache, progress)?;
        let sha256 =
            beambake_images::digest::sha256_file(&built.image).map_err(|source| Error::Io {
                path: built.image.clone(),
                source,
            })?;
        return Ok(Kernel {
            image: built.image,
            release: built.release,
            modules_dir: None,
            sha256,
            package: None,
        });
    }
    Ok(match (&k.path, &k.pin) {
        (Some(p), _) => kernel::from_paths(p, k.modules.as_deref())?,
        (None, Some(pin)) => kernel::fetch_debian(&kernel::Pin::load(pin)?, cache)?,
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
pub fn add_boot_files(
    tree: &mut Tree,
    init: &[u8],
    kernel: &Kernel,
    modules: &[String],
) -> Result<(), Error> {
    beambake_target::add_init(tree, init)?;
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
            beambake_images::rootfs::FileSource::Host(m.path.clone()),
            0o644,
            &format!("kernel module {}", m.name),
        )?;
        order.push_str(&guest);
        order.push('\n');
    }
    tree.add_bytes(paths::MODULES_PATH, order.into_bytes(), 0o644, "beambake")?;
    Ok(())
}

impl Target for Microvm {
    fn kind(&self) -> beambake_recipe::Target {
        beambake_recipe::Target::Microvm
    }

    /// The kernel: the pin's text (it names the package by sha256), or the kernel file's
    /// sha256 and each module's it loads (not the whole modules dir: `--modules /` is
    /// allowed); and the modules the machine loads.
    fn cache_inputs(&self, recipe: &Recipe, _cx: &Context) -> Result<Option<Vec<String>>, Error> {
        let k = &recipe.kernel;
        let modules = machine_modules(recipe);
        if k.source == KernelSource::Minimal {
            return Ok(Some(vec![format!(
                "minimal kernel {}",
                minimal_kernel::SPEC.cache_key()?
            )]));
        }
        let mut v = match (&k.path, &k.pin) {
            (Some(p), _) => {
                let kernel = kernel::from_paths(p, k.modules.as_deref())?;
                let wanted: Vec<&str> = modules.iter().map(String::as_str).collect();
                let mut v = vec![format!("kernel {} {}", kernel.release, kernel.sha256)];
                for m in kernel.resolve_modules(&wanted)? {
                    let sha = beambake_images::digest::sha256_file(&m.path).map_err(|source| {
                        Error::Io {
                            path: m.path.clone(),
                            source,
                        }
                    })?;
                    v.push(format!("module file {} {}", m.name, sha));
                }
                v
            }
            (None, Some(pin)) => vec![format!(
                "pin {}",
                beambake_images::digest::sha256_bytes(&std::fs::read(pin).map_err(|source| {
                    Error::Io {
                        path: pin.to_path_buf(),
                        source,
                    }
                })?)
            )],
            (None, None) => vec![format!(
                "pin {}",
                beambake_images::digest::sha256_bytes(DEFAULT_PIN.as_bytes())
            )],
        };
        v.extend(modules.into_iter().map(|m| format!("module {m}")));
        Ok(Some(v))
    }

    /// The initramfs is a cpio archive: the kernel unpacks archives appended to it.
    fn appends_files(&self) -> bool {
        true
    }

    fn append_file(&self, image: &Path, path: &str, content: &[u8]) -> Result<Written, Error> {
        Ok(image::append_to_initramfs(image, path, content, 0o400)?)
    }

    /// The initramfs is compressed as a whole: zstd does better on the modules' own bytes
    /// than on relx's gzipped ones (BENCHMARKS.md, "Smaller bytes").
    fn beams(&self, _recipe: &Recipe) -> beambake_release::assemble::Beams {
        beambake_release::assemble::Beams::Plain
    }

    fn make(
        &self,
        recipe: &Recipe,
        common: &mut Common,
        cx: &Context,
        progress: &dyn Progress,
    ) -> Result<Made, Error> {
        let minimal = recipe.kernel.source == KernelSource::Minimal;
        progress.step(if minimal {
            "building the minimal kernel"
        } else {
            "fetching the kernel"
        });
        let kernel = kernel_for(recipe, cx.cache, &|m| progress.step(m))?;
        add_boot_files(
            &mut common.prepared.assembly.tree,
            cx.init,
            &kernel,
            &machine_modules(recipe),
        )?;

        progress.step("writing the initramfs");
        let dir = common.dir.clone();
        let initrd_name = format!("{}.cpio.zst", recipe.name);
        let format = Format::Cpio {
            compression: Compression::Zstd,
            level: recipe.vm.compression_level,
        };
        let image = image::write(
            &common.prepared.assembly.tree,
            &format,
            &dir.join(&initrd_name),
        )?;
        // The minimal kernel is the uncompressed ELF qemu enters through its PVH note.
        let (kernel_name, cmdline, label) = if minimal {
            ("vmlinux", qemu::MINIMAL_CMDLINE, "linux-vmlinux-pvh")
        } else {
            ("vmlinuz", qemu::FAST_CMDLINE, "linux-bzimage")
        };
        let kernel_out =
            beambake_images::output::copy_file(&kernel.image, &dir.join(kernel_name), 0o644)?;
        let mut plan = beambake_target::plan(recipe, common, kernel_name, cmdline.to_string());
        plan.acpi_off = minimal;
        plan.initrd = Some(PathBuf::from(&initrd_name));
        plan.vmm = Some(beambake_vm::boot::vmm::VmmKind::Qemu);
        let mut kernel_inputs = vec![HostFile {
            path: kernel.image.display().to_string(),
            sha256: kernel.sha256.clone(),
        }];
        if let Some(pin) = &kernel.package {
            kernel_inputs.push(HostFile {
                path: format!("debian:{}={}.deb", pin.package, pin.version),
                sha256: pin.sha256.clone(),
            });
        }
        Ok(Made {
            plan,
            image: image.clone(),
            artefacts: vec![(image, format.label()), (kernel_out, label)],
            kernel_inputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(extra: &str) -> Recipe {
        let text =
            format!("name = \"x\"\ntarget = \"microvm\"\n[release]\nsource = \"rel\"\n{extra}");
        Recipe::parse(&text, Path::new("r/x.toml")).unwrap()
    }

    #[test]
    fn each_machine_gets_its_bus_and_pc_its_power_button() {
        let none = "[network]\nmode = \"none\"\n";
        assert_eq!(machine_modules(&recipe(none)), ["virtio_mmio"]);
        assert_eq!(
            machine_modules(&recipe(&format!("{none}[vm]\nmachine = \"pc\"\n"))),
            ["virtio_pci", "button", "evdev"]
        );
        assert_eq!(
            machine_modules(&recipe("[vm]\nmachine = \"pc\"\n")),
            ["virtio_pci", "button", "evdev", "virtio_net"]
        );
        assert_eq!(
            machine_modules(&recipe(
                "[network]\nmode = \"user\"\n[kernel]\nextra_modules = [\"dummy\"]\n"
            )),
            ["virtio_mmio", "virtio_net", "dummy"]
        );
        assert!(machine_modules(&recipe("[kernel]\nsource = \"minimal\"\n")).is_empty());
    }
}
