//! Assembly: a discovered release becomes a complete rootfs [`Tree`].
//!
//! Owns: the guest layout (release at `/opt/NAME` unless told otherwise, ERTS and host
//! applications merged into it when the release does not bundle them, base directories
//! and device nodes, the launch spec at [`launch::LAUNCH_PATH`]) and pulling in the ELF
//! closure of every native binary in the tree, with symlink chains as on the host.
//!
//! Must not: write images, or know about targets (kernels, inits and boot come later, as
//! additions to the same tree).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::boot_script;
use crate::elf::{self, Resolver};
use crate::launch::{self, LaunchSpec, LaunchSpecExt};
use crate::release::Release;
use beambake_images::rootfs::{DeviceKind, EntryKind, FileSource, Tree, TreeError};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--prefix {0:?}: must be an absolute, normalised guest directory other than /")]
    BadPrefix(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    BootScript(#[from] crate::boot_script::BootScriptError),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Guest directory of the release; `/opt/NAME` when `None`.
    pub prefix: Option<String>,
    /// mtime of every entry (`SOURCE_DATE_EPOCH`).
    pub mtime: u64,
    /// What the build asks of distribution (the release's `vm.args` is the other half:
    /// see [`launch::resolve_distribution`]).
    pub distribution: launch::DistributionRequest,
    /// Code loading mode replacing the release's (`embedded`/`interactive`).
    pub code_loading: Option<String>,
    /// Modules to load at boot (a trace of the release): the release's boot script is
    /// rewritten to load these and nothing else ([`boot_script::preload_only`]) and the node
    /// runs in interactive mode, so any other module loads when first called.
    pub preload: Option<BTreeSet<String>>,
    /// Extra emulator/init arguments for the launch spec.
    pub extra_args: Vec<String>,
    /// The release's Erlang shell on the console ([`launch::LaunchSpecExt::with_shell`]).
    pub shell: bool,
    /// An installed OTP (e.g. one built with beambake's patch sets) whose
    /// `erts-VSN` replaces the release's: it must hold the ERTS version the release
    /// was built for.
    pub erts_from: Option<PathBuf>,
}

/// A host library pulled in by the ELF closure.
#[derive(Debug, Clone, Serialize)]
pub struct HostLib {
    /// Path as the loader opens it (also its guest path).
    pub path: PathBuf,
    /// Guest path of the ELF that first needed it.
    pub needed_by: String,
}

#[derive(Debug)]
pub struct Assembly {
    pub tree: Tree,
    pub prefix: String,
    pub launch: LaunchSpec,
    /// How the node runs distributed, if it does.
    pub distribution: Option<launch::Distribution>,
    pub host_libs: Vec<HostLib>,
}

pub fn assemble(rel: &Release, opts: &Options) -> Result<Assembly, AssembleError> {
    let prefix = opts
        .prefix
        .clone()
        .unwrap_or_else(|| format!("/opt/{}", rel.name));
    let mut tree = Tree::new(opts.mtime);
    if prefix == "/" || tree.mkdir_p(&prefix, "release").is_err() {
        return Err(AssembleError::BadPrefix(prefix));
    }
    base_layout(&mut tree)?;

    let erts_name = format!("erts-{}", rel.erts.vsn);
    let erts_override = match &opts.erts_from {
        Some(root) => Some(erts_in(root, &rel.erts.vsn)?),
        None => None,
    };
    // The release itself, as the user built it (without its ERTS when another replaces it).
    let skip_erts = |p: &Path| erts_override.is_some() && p == Path::new(&erts_name);
    let links = rel.link_policy();
    tree.add_host_tree(&rel.root, &prefix, "release", &links, &skip_erts)?;
    if let Some(dir) = &erts_override {
        let dest = format!("{prefix}/{erts_name}/bin");
        // The OTP build the recipe names is a place its own links may lead.
        let mut links = links.clone();
        if let Some(root) = opts
            .erts_from
            .as_deref()
            .and_then(|r| fs::canonicalize(r).ok())
        {
            links
                .follow
                .push((root.clone(), "the recipe's OTP build".into()));
            links.lenient.push(root);
        }
        tree.add_host_tree(
            &dir.join("bin"),
            &dest,
            "erts from the recipe's OTP build",
            &links,
            &|_| false,
        )?;
    } else if !rel.erts.bundled {
        // Whatever it does not bundle comes from the host OTP, at the same relative place.
        let dest = format!("{prefix}/erts-{}/bin", rel.erts.vsn);
        tree.add_host_tree(
            &rel.erts.dir.join("bin"),
            &dest,
            "host erts",
            &links,
            &|_| false,
        )?;
    }
    for app in rel.apps.iter().filter(|a| !a.bundled) {
        for sub in ["ebin", "priv"] {
            let src = app.dir.join(sub);
            if src.is_dir() {
                let dest = format!("{prefix}/lib/{}-{}/{sub}", app.name, app.vsn);
                tree.add_host_tree(&src, &dest, "host otp application", &links, &|_| false)?;
            }
        }
    }

    let (mut launch, distribution) = launch_spec(rel, &prefix, opts)?;
    if let Some(keep) = &opts.preload {
        let boot = rel.root.join(format!("{}.boot", rel.boot_rel));
        let script = boot_script::preload_only(&boot, keep)?;
        let at = format!("{prefix}/releases/{}/{PRELOAD_BOOT}", rel.vsn);
        tree.add_bytes(
            &format!("{at}.boot"),
            script.boot,
            0o644,
            "beambake (the boot script, pruned to the traced modules)",
        )?;
        launch = launch.with_boot(&at).with_mode("interactive");
    }
    for dir in &launch.writable {
        if !tree.contains(dir) {
            tree.mkdir_p(dir, "beambake (writable, tmpfs at boot)")?;
        }
    }
    tree.add_bytes(
        launch::LAUNCH_PATH,
        launch.to_json().into_bytes(),
        0o644,
        "beambake",
    )?;

    let host_libs = add_elf_closure(&mut tree)?;
    Ok(Assembly {
        tree,
        prefix,
        launch,
        distribution,
        host_libs,
    })
}

/// Name (without `.boot`) of the rewritten boot script in the guest's `releases/VSN`.
pub const PRELOAD_BOOT: &str = "beambake_preload";

/// The launch spec of `rel` installed at `root` with `opts` (mode, distribution, shell,
/// extra arguments), and the node's distribution: the one place a release's command line
/// is derived, for the guest and for a run on the host (the trace).
pub fn launch_spec(
    rel: &Release,
    root: &str,
    opts: &Options,
) -> Result<(LaunchSpec, Option<launch::Distribution>), AssembleError> {
    let mut launch = LaunchSpec::for_release(rel, root);
    let vm_args_file = rel
        .root
        .join(rel.vm_args_rel.as_deref().unwrap_or("vm.args"))
        .display()
        .to_string();
    let distribution = launch::resolve_distribution(
        &rel.name,
        &rel.vm_args,
        &vm_args_file,
        &opts.distribution,
        launch::random_cookie,
    )
    .map_err(AssembleError::Conflict)?;
    if let Some(d) = &distribution {
        launch = launch.with_distribution(&rel.vm_args, d);
    }
    if let Some(mode) = &opts.code_loading {
        launch = launch.with_mode(mode);
    }
    if opts.shell {
        launch = launch.with_shell();
    }
    if !opts.extra_args.is_empty() {
        let extra: Vec<&str> = opts.extra_args.iter().map(String::as_str).collect();
        launch = launch.with_args(&extra);
    }
    Ok((launch, distribution))
}

/// `ROOT/erts-VSN` (or `ROOT/lib/erlang/erts-VSN`) of an installed OTP; a clear error when
/// it holds another ERTS version (or none).
pub fn erts_in(root: &Path, vsn: &str) -> Result<PathBuf, AssembleError> {
    let name = format!("erts-{vsn}");
    for base in [root.to_path_buf(), root.join("lib/erlang")] {
        let d = base.join(&name);
        if d.join("bin").is_dir() {
            return Ok(d);
        }
    }
    let mut found: Vec<String> = [root.to_path_buf(), root.join("lib/erlang")]
        .iter()
        .filter_map(|b| fs::read_dir(b).ok())
        .flat_map(|rd| rd.filter_map(Result::ok))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("erts-"))
        .collect();
    found.sort();
    Err(AssembleError::Conflict(format!(
        "{}: the OTP build has {}, but the release was built for {name}: build the patched OTP from the same OTP version as the release",
        root.display(),
        if found.is_empty() {
            "no erts-* directory".to_string()
        } else {
            found.join(", ")
        }
    )))
}

/// Mount points, writable scratch directories and the two device nodes the kernel and
/// the BEAM need before devtmpfs is mounted.
fn base_layout(tree: &mut Tree) -> Result<(), TreeError> {
    for d in ["/dev", "/proc", "/sys", "/run", "/etc", "/var", "/root"] {
        tree.add_dir(d, if d == "/root" { 0o700 } else { 0o755 }, "beambake")?;
    }
    tree.add_dir("/tmp", 0o1777, "beambake")?;
    tree.add_device("/dev/console", DeviceKind::Char, 5, 1, 0o600)?;
    tree.add_device("/dev/null", DeviceKind::Char, 1, 3, 0o666)?;
    Ok(())
}

/// Adds the interpreter and every needed library of every ELF in the tree, transitively.
fn add_elf_closure(tree: &mut Tree) -> Result<Vec<HostLib>, AssembleError> {
    let mut roots = Vec::new();
    let mut guest_of: HashMap<PathBuf, String> = HashMap::new();
    let mut canon_dirs = HashMap::new();
    for (path, entry) in tree.iter() {
        if let EntryKind::File(FileSource::Host(host)) = &entry.kind {
            let io = |source| AssembleError::Io {
                path: host.clone(),
                source,
            };
            if elf::is_elf(host).map_err(io)? {
                roots.push(host.clone());
            }
            guest_of.insert(
                canonicalize_in(host, &mut canon_dirs).map_err(io)?,
                path.to_string(),
            );
        }
    }
    let closure = Resolver::host()?.closure(&roots)?;
    let mut out = Vec::new();
    for lib in closure.libs {
        // A library found inside what is already in the tree (an RPATH into the release)
        // is already there, at its guest place.
        let canon = fs::canonicalize(&lib.path).map_err(|source| AssembleError::Io {
            path: lib.path.clone(),
            source,
        })?;
        if guest_of.contains_key(&canon) {
            continue;
        }
        let needed_by = fs::canonicalize(&lib.needed_by)
            .ok()
            .and_then(|c| guest_of.get(&c).cloned())
            .unwrap_or_else(|| lib.needed_by.display().to_string());
        tree.mirror_host_path(&lib.path, &format!("host library needed by {needed_by}"))?;
        out.push(HostLib {
            path: lib.path,
            needed_by,
        });
    }
    Ok(out)
}

/// `fs::canonicalize(p)` with each parent dir resolved once (`dirs` remembers them): a
/// release has hundreds of files in a few dozen dirs, and resolving every path component
/// of every file again costs a `readlink` each.
fn canonicalize_in(p: &Path, dirs: &mut HashMap<PathBuf, PathBuf>) -> std::io::Result<PathBuf> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return fs::canonicalize(p);
    };
    if parent.as_os_str().is_empty() || fs::symlink_metadata(p)?.file_type().is_symlink() {
        return fs::canonicalize(p);
    }
    let dir = match dirs.get(parent) {
        Some(d) => d.clone(),
        None => {
            let d = fs::canonicalize(parent)?;
            dirs.insert(parent.to_path_buf(), d.clone());
            d
        }
    };
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_in_agrees_with_canonicalize() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir_all(real.join("sub")).unwrap();
        fs::write(real.join("sub/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("via")).unwrap();
        std::os::unix::fs::symlink("sub/f", real.join("lnk")).unwrap();
        let mut dirs = HashMap::new();
        for p in ["via/sub/f", "via/lnk", "real/sub/f", "via/sub/../sub/f"] {
            let p = d.path().join(p);
            assert_eq!(
                canonicalize_in(&p, &mut dirs).unwrap(),
                fs::canonicalize(&p).unwrap(),
                "{}",
                p.display()
            );
        }
        assert!(canonicalize_in(&d.path().join("via/none"), &mut dirs).is_err());
    }
}
