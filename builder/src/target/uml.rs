//! The uml target: the release's tree plus beambake's init at `/init`, written as a
//! read-only root filesystem image (squashfs by default, or ext4) that every VM mounts
//! from a read-only ubd device; the User Mode Linux kernel beside it (beambake's own
//! build, or the recipe's `kernel.path`); a boot plan for `beambake boot`.
//!
//! Must not: boot (see [`crate::boot`]) or know release internals.

use std::path::{Path, PathBuf};

use beambake_contract::paths;

use crate::manifest::HostFile;
use crate::pipeline::{Error, Progress};
use crate::recipe::{Recipe, RootFs};
use crate::uml_kernel;

pub use super::Built;

/// The UML kernel for `recipe` (its `kernel.path`, or beambake's build from the cache),
/// and, for beambake's build, what it was built from (for the manifest).
pub fn kernel_for(
    recipe: &Recipe,
    progress: &dyn Progress,
) -> Result<(PathBuf, Option<HostFile>), Error> {
    if let Some(p) = &recipe.kernel.path {
        return Ok((recipe.resolve(p), None));
    }
    let k = uml_kernel::get(&crate::kernel::default_cache_dir(), &|m| progress.step(m))?;
    let source = HostFile {
        path: format!(
            "debian:{}={}.deb + patches/linux/6.1/uml + images/uml-kernel.config (key {})",
            k.pin.package, k.pin.version, k.key
        ),
        sha256: k.pin.sha256.clone(),
    };
    Ok((k.image, Some(source)))
}

pub fn build(recipe: &Recipe, out_root: &Path, progress: &dyn Progress) -> Result<Built, Error> {
    if recipe.kernel.modules.is_some() || !recipe.kernel.extra_modules.is_empty() {
        return Err(Error::Recipe(format!(
            "{}: the uml target loads no kernel modules (beambake's UML kernel has everything built in); remove kernel.modules and kernel.extra_modules",
            recipe.file.display()
        )));
    }
    let mut common = super::prepare(recipe, out_root, progress)?;
    let tree = &mut common.prepared.assembly.tree;
    tree.add_bytes("/init", super::INIT.to_vec(), 0o755, "beambake init")?;
    tree.add_symlink(paths::ETC_HOSTS, paths::RUN_HOSTS, "beambake")?;
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
    let (kernel, source) = kernel_for(recipe, progress)?;
    let dir = common.dir.clone();
    let kernel_out = crate::output::copy_file(&kernel, &dir.join("linux"), 0o755)?;
    // The copy's sha256 is the host file's: no second read.
    let mut inputs = vec![HostFile {
        path: kernel.display().to_string(),
        sha256: kernel_out.sha256.clone(),
    }];
    inputs.extend(source);

    let (image, kind, fstype) = match recipe.vm.root_fs {
        RootFs::Squashfs => {
            progress.step("writing the squashfs root image");
            let name = format!("{}.squashfs", recipe.name);
            let w = crate::image::squashfs::write(
                &common.prepared.assembly.tree,
                &crate::image::squashfs::Options::default(),
                &dir.join(&name),
            )
            .map_err(|e| Error::Recipe(e.to_string()))?;
            (w, "squashfs", "squashfs")
        }
        RootFs::Ext4 => {
            progress.step("writing the ext4 root image");
            let name = format!("{}.ext4", recipe.name);
            let w = crate::image::ext4::write(&common.prepared.assembly.tree, &dir.join(&name))
                .map_err(|e| Error::Recipe(e.to_string()))?;
            (w, "ext4", "ext4")
        }
    };
    let mut plan = super::plan(recipe, &common, "linux", crate::boot::uml::uml_cmdline())?;
    plan.root_image = image.path.file_name().map(PathBuf::from);
    plan.root_fs = Some(fstype.to_string());
    super::finish(
        common,
        plan,
        image.clone(),
        &[(image, kind), (kernel_out, "linux-uml")],
        inputs,
    )
}
