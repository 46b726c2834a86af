//! The uml target: the release's tree plus beambake's init at `/init`, written as a
//! read-only root filesystem image (squashfs by default, or ext4) that every VM mounts
//! from a read-only ubd device; the User Mode Linux kernel beside it (beambake's own
//! build, or the recipe's `kernel.path`); a boot plan for `beambake boot`.
//!
//! Must not: boot (see [`beambake_vm::boot`]), know release internals or other targets.

use std::path::{Path, PathBuf};

use beambake_contract::paths;
use beambake_images::image::{self, Format};
use beambake_kernel::uml_kernel;
use beambake_recipe::{NetMode, Recipe, RootFs};
use beambake_release::manifest::HostFile;
use beambake_target::{Common, Context, Error, Made, Progress, Target};

/// The uml target.
pub struct Uml;

/// The UML kernel for `recipe` (its `kernel.path`, or beambake's build from the cache),
/// and, for beambake's build, what it was built from (for the manifest).
pub fn kernel_for(
    recipe: &Recipe,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<(PathBuf, Option<HostFile>), Error> {
    if let Some(p) = &recipe.kernel.path {
        return Ok((p.to_path_buf(), None));
    }
    let k = uml_kernel::SPEC.get(cache, &|m| progress.step(m))?;
    let source = HostFile {
        path: format!(
            "debian:{}={}.deb + patches/linux/6.1/uml + images/uml-kernel.config (key {})",
            k.pin.package, k.pin.version, k.key
        ),
        sha256: k.pin.sha256.clone(),
    };
    Ok((k.image, Some(source)))
}

impl Target for Uml {
    fn kind(&self) -> beambake_recipe::Target {
        beambake_recipe::Target::Uml
    }

    /// squashfs compresses every block: plain modules make the echo release's root 1.5%
    /// smaller (BENCHMARKS.md, "Smaller bytes"); ext4 stores files as they are.
    fn beams(&self, recipe: &Recipe) -> beambake_release::assemble::Beams {
        match recipe.vm.root_fs {
            RootFs::Squashfs => beambake_release::assemble::Beams::Plain,
            RootFs::Ext4 => beambake_release::assemble::Beams::AsBuilt,
        }
    }

    fn check(&self, recipe: &Recipe) -> Result<(), Error> {
        if recipe.network.mode == NetMode::User {
            return Err(Error::recipe(
                recipe,
                "network.mode = \"user\" is qemu's user networking; the uml target supports \"tap\" and \"none\"",
            ));
        }
        if recipe.kernel.modules.is_some() || !recipe.kernel.extra_modules.is_empty() {
            return Err(Error::recipe(
                recipe,
                "the uml target loads no kernel modules (beambake's UML kernel has everything built in); remove kernel.modules and kernel.extra_modules",
            ));
        }
        Ok(())
    }

    fn supports_storage(&self) -> bool {
        true
    }

    /// The kernel: the recipe's file's sha256, or the key of beambake's UML kernel build.
    fn cache_inputs(&self, recipe: &Recipe, _cx: &Context) -> Result<Option<Vec<String>>, Error> {
        Ok(Some(vec![match &recipe.kernel.path {
            Some(p) => format!(
                "kernel {}",
                beambake_images::digest::sha256_file(p).map_err(|source| Error::Io {
                    path: p.to_path_buf(),
                    source,
                })?
            ),
            None => format!("uml kernel {}", uml_kernel::SPEC.cache_key()?),
        }]))
    }

    fn make(
        &self,
        recipe: &Recipe,
        common: &mut Common,
        cx: &Context,
        progress: &dyn Progress,
    ) -> Result<Made, Error> {
        let tree = &mut common.prepared.assembly.tree;
        beambake_target::add_init(tree, cx.init)?;
        tree.add_bytes(paths::MODULES_PATH, Vec::new(), 0o644, "beambake")?;
        // Mount points for the data disk and host directories: the root is read-only.
        let mut points: Vec<&str> = recipe.hostfs.iter().map(|h| h.guest.as_str()).collect();
        points.extend(recipe.disks.iter().map(|d| d.mount.as_str()));
        if let Some(d) = &recipe.data {
            points.push(&d.mount);
        }
        for p in points {
            if !tree.contains(p) {
                tree.mkdir_p(p, "beambake (mount point)")?;
            }
        }

        progress.step("building the kernel");
        let (kernel, source) = kernel_for(recipe, cx.cache, progress)?;
        let dir = common.dir.clone();
        let kernel_out = beambake_images::output::copy_file(&kernel, &dir.join("linux"), 0o755)?;
        // The copy's sha256 is the host file's: no second read.
        let mut kernel_inputs = vec![HostFile {
            path: kernel.display().to_string(),
            sha256: kernel_out.sha256.clone(),
        }];
        kernel_inputs.extend(source);

        let (format, name) = match recipe.vm.root_fs {
            RootFs::Squashfs => {
                progress.step("writing the squashfs root image");
                (
                    Format::Squashfs(image::squashfs::Options::default()),
                    format!("{}.squashfs", recipe.name),
                )
            }
            RootFs::Ext4 => {
                progress.step("writing the ext4 root image");
                (Format::Ext4, format!("{}.ext4", recipe.name))
            }
        };
        let image = image::write(&common.prepared.assembly.tree, &format, &dir.join(&name))?;
        let mut plan = beambake_target::plan(
            recipe,
            common,
            "linux",
            beambake_vm::boot::uml::uml_cmdline(),
        );
        plan.root_image = image.path.file_name().map(PathBuf::from);
        plan.root_fs = Some(format.label().to_string());
        plan.vmm = Some(beambake_vm::boot::vmm::VmmKind::Uml);
        Ok(Made {
            plan,
            image: image.clone(),
            artefacts: vec![(image, format.label()), (kernel_out, "linux-uml")],
            kernel_inputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(extra: &str) -> Recipe {
        let text = format!("name = \"x\"\ntarget = \"uml\"\n[release]\nsource = \"rel\"\n{extra}");
        Recipe::parse(&text, std::path::Path::new("r/x.toml")).unwrap()
    }

    #[test]
    fn user_networking_and_kernel_modules_are_refused() {
        assert!(Uml.check(&recipe("")).is_ok());
        assert!(Uml.supports_storage());
        let e = Uml
            .check(&recipe("[network]\nmode = \"user\"\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "r/x.toml: network.mode = \"user\" is qemu's user networking; the uml target supports \"tap\" and \"none\"");
        let e = Uml
            .check(&recipe("[kernel]\nextra_modules = [\"dummy\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the uml target loads no kernel modules"), "{e}");
    }
}
