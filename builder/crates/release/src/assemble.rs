//! Assembly: a discovered release becomes a complete rootfs [`Tree`].
//!
//! Owns: the guest layout (release at `/opt/NAME` unless told otherwise, ERTS and host
//! applications merged into it when the release does not bundle them, base directories
//! and device nodes, the launch spec at [`launch::LAUNCH_PATH`]), what a guest never
//! needs and is left out ([`erts_program_kept`], [`build_only`]: reported in
//! [`Assembly::left_out`]), how `.beam` files are stored ([`Beams`]), and pulling in the
//! ELF closure of every native binary in the tree (after the leaving out), with symlink
//! chains as on the host.
//!
//! Must not: write images, or know about targets (kernels, inits and boot come later, as
//! additions to the same tree).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[error(
        "{path}: a gzip-compressed .beam file that does not decompress to a BEAM module: {message}"
    )]
    Beam { path: String, message: String },
}

/// How `.beam` files go into the tree: the target's choice, by what its image format does
/// with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Beams {
    /// As the release has them (relx's prod mode gzips each module): for formats that
    /// store files as they are (ISO 9660, OSv's ROFS), where the gzipped module is smaller.
    #[default]
    AsBuilt,
    /// gzip-compressed modules stored decompressed (the BEAM loads both forms): for an
    /// image compressed as a whole (cpio + zstd), whose compressor then sees the modules'
    /// bytes and the matches across them (BENCHMARKS.md, "Smaller bytes").
    Plain,
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
    /// How `.beam` files are stored.
    pub beams: Beams,
    /// Keep every ERTS program (`erl`, `escript`, `erl_call`, ...), not only those the
    /// launch spec runs ([`erts_program_kept`]): for a tree started some other way.
    pub all_erts_programs: bool,
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
    /// What was left out of the release's tree, and how its `.beam` files were stored.
    pub left_out: LeftOut,
}

/// What [`assemble`] left out of the tree (guest paths, relative to the release's
/// prefix), for the build's `-v` detail: nothing is left out silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    /// ERTS programs the launch spec never runs ([`erts_program_kept`]).
    pub erts_programs: Vec<String>,
    /// Headers, sources, examples and documentation ([`build_only`]); a directory
    /// stands for everything under it.
    pub build_only: Vec<String>,
    /// `.beam` files stored decompressed ([`Beams::Plain`]): how many, their size as
    /// built and as stored.
    pub beams_decompressed: (usize, u64, u64),
}

/// Whether the guest needs the ERTS program `name` (a file of `erts-VSN/bin`) to run
/// `launch` (whose node reads `vm_args` too): erlexec, the emulator (every `beam.*`
/// flavour: `-emu_type`/`-emu_flavor` pick one at run time), `erl_child_setup` (the
/// emulator spawns it at start), `inet_gethost` (spawned for the native DNS resolver),
/// `epmd` when the spec starts it as a service, `heart` when the node runs with `-heart`.
/// The rest (erlc, escript, dialyzer, typer, ct_run, erl_call, run_erl, to_erl, dyn_erl,
/// the `erl`/`start` scripts and their `.src`) is for a user at a shell, which the guest
/// has not.
pub fn erts_program_kept(name: &str, launch: &LaunchSpec, vm_args: &[String]) -> bool {
    let heart = || {
        let words = |s: &String| s.split_whitespace().any(|w| w == "-heart");
        launch.argv.iter().chain(vm_args).any(|a| a == "-heart")
            || ["ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"]
                .iter()
                .filter_map(|k| launch.env.get(*k))
                .any(words)
    };
    match name {
        "erlexec" | "erl_child_setup" | "inet_gethost" => true,
        "epmd" => launch.services.iter().any(|s| s.name == "epmd"),
        "heart" => heart(),
        _ => name.starts_with("beam.") && !name.ends_with(".src"),
    }
}

/// Whether `rel` (a path relative to the release's root) is a directory only a build
/// reads: headers (`erts-VSN/include`, `lib/APP/include`), sources (`src`, `c_src`),
/// examples, documentation (`doc`, `man`). Never `priv` (NIFs, certificates).
pub fn build_only(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    match parts.as_slice() {
        ["doc" | "man"] => true,
        [erts, dir] if erts.starts_with("erts-") => ["include", "src", "doc", "man"].contains(dir),
        ["lib", _, dir] => ["include", "src", "c_src", "examples", "doc"].contains(dir),
        _ => false,
    }
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
    // The launch spec first: it decides which ERTS programs the guest keeps.
    let (mut launch, distribution) = launch_spec(rel, &prefix, opts)?;
    let left_out = RefCell::new(LeftOut::default());
    let erts_bin = Path::new(&erts_name).join("bin");
    // `at`: relative to the release's root (`erts-VSN/bin/erlc`, `lib/kernel-8.5.3/src`).
    let leave_out = |at: &Path| {
        let mut l = left_out.borrow_mut();
        if build_only(at) {
            l.build_only.push(at.display().to_string());
            return true;
        }
        let name = at.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !opts.all_erts_programs
            && at.parent() == Some(&erts_bin)
            && !erts_program_kept(name, &launch, &rel.vm_args)
        {
            l.erts_programs.push(at.display().to_string());
            return true;
        }
        false
    };
    // The release itself, as the user built it (without its ERTS when another replaces it).
    let skip_release =
        |p: &Path| (erts_override.is_some() && p == Path::new(&erts_name)) || leave_out(p);
    let links = rel.link_policy();
    tree.add_host_tree(&rel.root, &prefix, "release", &links, &skip_release)?;
    // An ERTS from elsewhere is copied as its `bin` alone: paths relative to that.
    let skip_bin = |p: &Path| leave_out(&erts_bin.join(p));
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
            &skip_bin,
        )?;
    } else if !rel.erts.bundled {
        // Whatever it does not bundle comes from the host OTP, at the same relative place.
        let dest = format!("{prefix}/erts-{}/bin", rel.erts.vsn);
        tree.add_host_tree(
            &rel.erts.dir.join("bin"),
            &dest,
            "host erts",
            &links,
            &skip_bin,
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
    let mut left_out = left_out.into_inner();
    if opts.beams == Beams::Plain {
        left_out.beams_decompressed = decompress_beams(&mut tree)?;
    }

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
        left_out,
    })
}

/// Replaces every gzip-compressed `.beam` file of `tree` by its decompressed bytes (same
/// mode and origin); returns how many, and their total size before and after.
fn decompress_beams(tree: &mut Tree) -> Result<(usize, u64, u64), AssembleError> {
    let mut plain = Vec::new();
    let (mut before, mut after) = (0u64, 0u64);
    for (path, entry) in tree.iter() {
        let EntryKind::File(src) = &entry.kind else {
            continue;
        };
        if !path.ends_with(".beam") {
            continue;
        }
        let io = |source| AssembleError::Io {
            path: src
                .host_path()
                .map_or_else(|| PathBuf::from(path), Path::to_path_buf),
            source,
        };
        let bytes = src.read_all().map_err(io)?;
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            continue;
        }
        let bad = |message: String| AssembleError::Beam {
            path: path.to_string(),
            message,
        };
        let mut out = Vec::with_capacity(bytes.len() * 3);
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
        if !(out.starts_with(b"FOR1") && out.get(8..12) == Some(b"BEAM")) {
            return Err(bad("no FOR1/BEAM header".into()));
        }
        before += bytes.len() as u64;
        after += out.len() as u64;
        plain.push((path.to_string(), out));
    }
    let n = plain.len();
    for (path, bytes) in plain {
        tree.set_source(&path, FileSource::Bytes(Arc::new(bytes)));
    }
    Ok((n, before, after))
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
    use crate::release::{App, Erts, Flavor};
    use std::io::Write;

    #[test]
    fn the_guest_keeps_only_the_erts_programs_the_launch_spec_runs() {
        let rel = |argv: &[&str]| LaunchSpec {
            release: "r".into(),
            vsn: "1".into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: Default::default(),
            cwd: "/".into(),
            services: vec![],
            writable: vec![],
            shell: false,
        };
        let plain = rel(&["/r/erts-1/bin/erlexec", "-noinput"]);
        let kept = |spec: &LaunchSpec, vm_args: &[String]| {
            [
                "beam.smp",
                "beam.emu.smp",
                "beam.debug.smp",
                "ct_run",
                "dialyzer",
                "dyn_erl",
                "epmd",
                "erl",
                "erl.src",
                "erl_call",
                "erl_child_setup",
                "erlc",
                "erlexec",
                "escript",
                "heart",
                "inet_gethost",
                "run_erl",
                "start",
                "start.src",
                "start_erl",
                "start_erl.src",
                "to_erl",
                "typer",
                "yielding_c_fun",
            ]
            .into_iter()
            .filter(|n| erts_program_kept(n, spec, vm_args))
            .collect::<Vec<_>>()
        };
        let base = [
            "beam.smp",
            "beam.emu.smp",
            "beam.debug.smp",
            "erl_child_setup",
            "erlexec",
            "inet_gethost",
        ];
        assert_eq!(kept(&plain, &[]), base);
        // epmd with an epmd service, heart with -heart (argv, vm.args or ERL_FLAGS).
        let mut dist = plain.clone();
        dist.services.push(launch::Service::new(
            "epmd",
            vec!["/r/erts-1/bin/epmd".into()],
        ));
        assert!(kept(&dist, &[]).contains(&"epmd"));
        assert!(!kept(&dist, &[]).contains(&"heart"));
        let heart = rel(&["/r/erts-1/bin/erlexec", "-heart"]);
        assert!(kept(&heart, &[]).contains(&"heart"));
        assert!(kept(&plain, &["-heart".into()]).contains(&"heart"));
        let mut env = plain.clone();
        env.env.insert("ERL_FLAGS".into(), "+A 2 -heart".into());
        assert!(kept(&env, &[]).contains(&"heart"));
        assert!(!kept(&env, &[]).contains(&"epmd"));
    }

    #[test]
    fn build_only_dirs_are_headers_sources_and_docs_never_priv() {
        for p in [
            "erts-13.1.5/include",
            "erts-13.1.5/src",
            "lib/kernel-8.5.3/include",
            "lib/kernel-8.5.3/src",
            "lib/crypto-5.1/c_src",
            "lib/ssl-10/examples",
            "lib/stdlib-4.2/doc",
            "doc",
            "man",
        ] {
            assert!(build_only(Path::new(p)), "{p}");
        }
        for p in [
            "erts-13.1.5/bin",
            "lib/crypto-5.1/priv",
            "lib/kernel-8.5.3/ebin",
            "lib/kernel-8.5.3/include/file.hrl",
            "lib/app-1/priv/include",
            "releases/1/src",
            "bin",
            "include",
        ] {
            assert!(!build_only(Path::new(p)), "{p}");
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A release laid out as relx does (bundled ERTS whose programs are scripts, so no
    /// ELF closure), with a header dir, a source dir, `priv` and a gzipped module.
    fn fake_release(d: &Path) -> (Release, Vec<u8>) {
        let put = |p: &str, bytes: &[u8]| {
            let p = d.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        };
        for prog in [
            "erlexec",
            "beam.smp",
            "erl_child_setup",
            "inet_gethost",
            "epmd",
        ] {
            put(&format!("erts-1/bin/{prog}"), b"#!/bin/true\n");
        }
        for prog in ["erlc", "escript", "heart", "erl", "start.src", "to_erl"] {
            put(&format!("erts-1/bin/{prog}"), b"#!/bin/true\n");
        }
        put("erts-1/include/erl_nif.h", b"/* */\n");
        let beam = b"FOR1\0\0\0\x04BEAM".to_vec();
        put("lib/app-1/ebin/app.beam", &gzip(&beam));
        put("lib/app-1/ebin/app.app", b"{application, app, []}.\n");
        put("lib/app-1/include/app.hrl", b"-define(X, 1).\n");
        put("lib/app-1/src/app.erl", b"-module(app).\n");
        put("lib/app-1/priv/cert.pem", b"cert\n");
        put("bin/app", b"#!/bin/sh\n");
        put("releases/1/start.boot", b"");
        let rel = Release {
            root: d.to_path_buf(),
            flavor: Flavor::Relx,
            name: "app".into(),
            vsn: "1".into(),
            erts: Erts {
                vsn: "1".into(),
                dir: d.join("erts-1"),
                bundled: true,
            },
            apps: vec![App {
                name: "app".into(),
                vsn: "1".into(),
                dir: d.join("lib/app-1"),
                bundled: true,
            }],
            boot_rel: "releases/1/start".into(),
            sys_config_rel: None,
            vm_args_rel: None,
            vm_args: vec![],
            host_otp: None,
            natives: vec![],
        };
        (rel, beam)
    }

    fn options(beams: Beams) -> Options {
        Options {
            prefix: None,
            mtime: 0,
            distribution: Default::default(),
            code_loading: None,
            preload: None,
            extra_args: vec![],
            shell: false,
            erts_from: None,
            beams,
            all_erts_programs: false,
        }
    }

    #[test]
    fn headers_sources_and_unused_programs_are_left_out_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let (rel, _) = fake_release(d.path());
        let a = assemble(&rel, &options(Beams::AsBuilt)).unwrap();
        let t = &a.tree;
        for gone in [
            "/opt/app/erts-1/include",
            "/opt/app/lib/app-1/include",
            "/opt/app/lib/app-1/include/app.hrl",
            "/opt/app/lib/app-1/src",
            "/opt/app/erts-1/bin/erlc",
            "/opt/app/erts-1/bin/heart",
            "/opt/app/erts-1/bin/epmd",
        ] {
            assert!(!t.contains(gone), "{gone}");
        }
        for kept in [
            "/opt/app/erts-1/bin/erlexec",
            "/opt/app/erts-1/bin/beam.smp",
            "/opt/app/erts-1/bin/erl_child_setup",
            "/opt/app/erts-1/bin/inet_gethost",
            "/opt/app/lib/app-1/priv/cert.pem",
            "/opt/app/lib/app-1/ebin/app.app",
            "/opt/app/bin/app",
        ] {
            assert!(t.contains(kept), "{kept}");
        }
        assert_eq!(
            a.left_out.build_only,
            ["erts-1/include", "lib/app-1/include", "lib/app-1/src"]
        );
        assert_eq!(
            a.left_out.erts_programs,
            [
                "erts-1/bin/epmd",
                "erts-1/bin/erl",
                "erts-1/bin/erlc",
                "erts-1/bin/escript",
                "erts-1/bin/heart",
                "erts-1/bin/start.src",
                "erts-1/bin/to_erl"
            ]
        );
        assert_eq!(a.left_out.beams_decompressed.0, 0);
    }

    #[test]
    fn the_elf_closure_is_of_what_is_left() {
        let epmd = Path::new("/usr/lib/erlang/erts-13.1.5/bin/epmd");
        if !epmd.is_file() {
            beambake_testkit::skip!("{} is absent (Erlang not installed)", epmd.display());
        }
        let d = tempfile::tempdir().unwrap();
        let (rel, _) = fake_release(d.path());
        // Debian's epmd links libsystemd; nothing else in the fake release is an ELF.
        fs::copy(epmd, d.path().join("erts-1/bin/epmd")).unwrap();
        let libs = |a: &Assembly| {
            a.host_libs
                .iter()
                .map(|l| l.path.display().to_string())
                .collect::<Vec<_>>()
        };
        let alone = assemble(&rel, &options(Beams::AsBuilt)).unwrap();
        assert!(libs(&alone).is_empty(), "{:?}", libs(&alone));
        let mut opts = options(Beams::AsBuilt);
        opts.distribution.wanted = true;
        opts.distribution.host = Some("10.0.0.2".into());
        let dist = assemble(&rel, &opts).unwrap();
        assert!(dist.tree.contains("/opt/app/erts-1/bin/epmd"));
        assert!(
            libs(&dist).iter().any(|l| l.contains("libsystemd")),
            "{:?}",
            libs(&dist)
        );
    }

    #[test]
    fn plain_beams_are_stored_decompressed_with_their_mode_and_origin() {
        let d = tempfile::tempdir().unwrap();
        let (rel, beam) = fake_release(d.path());
        let built = assemble(&rel, &options(Beams::AsBuilt)).unwrap();
        let plain = assemble(&rel, &options(Beams::Plain)).unwrap();
        let at = "/opt/app/lib/app-1/ebin/app.beam";
        let (b, p) = (built.tree.get(at).unwrap(), plain.tree.get(at).unwrap());
        let EntryKind::File(src) = &p.kind else {
            panic!("{p:?}")
        };
        assert_eq!(src.read_all().unwrap(), beam);
        assert_eq!((p.perm, &p.origin), (b.perm, &b.origin));
        let n = plain.left_out.beams_decompressed;
        assert_eq!((n.0, n.2), (1, beam.len() as u64));
        // Not a BEAM inside the gzip: an error naming the file.
        fs::write(d.path().join("lib/app-1/ebin/app.beam"), gzip(b"nope")).unwrap();
        let e = assemble(&rel, &options(Beams::Plain)).unwrap_err();
        assert!(e.to_string().starts_with(at), "{e}");
    }

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
