//! The rumprun target: the release split into the seed's two ISO 9660 images —
//! `erlang.iso` (mounted at `/opt/erlang`: the OTP applications the release uses, under
//! `lib/erlang`, plus `erl_inetrc`) and `app.iso` (mounted at `/apps/erlang`: the release's
//! own applications and its `releases/` dir) — trimmed to what a baked BEAM loads (no
//! ERTS executables, no native Linux binaries, no docs or sources), the rumprun launch
//! config in both forms with the `rumprun qemu` and plain qemu commands, and the baked
//! kernel (`rumprun-bake hw_virtio` of the BEAM cross-built for rumprun), with the
//! toolchain beambake builds from the recipe's `[rumprun] source`
//! ([`beambake_kernel::rumprun_toolchain`]) or one already installed.
//!
//! A NIF in the release is refused, naming it: the baked BEAM has no `dlopen()` and links
//! none in. Drivers and port programs are left out with a note (nothing could start or
//! load them). With `[distribution]`, `erlang.iso` carries the port mapper module
//! `beambake_epmd` (compiled from `erlang/src/beambake_epmd.erl` with the host's `erlc`)
//! at `/opt/erlang/beambake/ebin`, the node's own EPMD: a unikernel cannot run `epmd`.
//!
//! `erlang.iso` links `lib/erlang/lib/APP-VSN` and `lib/erlang/releases` of the release's
//! own code to `/apps/erlang/...`, so the release's boot script (which names `$ROOT/lib`)
//! works unchanged across the two mounts.
//!
//! Must not: boot (see [`beambake_vm::boot`]), write ISO bytes itself (see
//! [`beambake_images::image`]) or know other targets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use beambake_images::image::{self, Format};
use beambake_images::output::Written;
use beambake_images::rootfs::{EntryKind, FileSource, Tree};
use beambake_recipe::Recipe;
use beambake_release::manifest::HostFile;
use beambake_target::{Common, Context, Error, Made, Progress, Target};
use beambake_vm::rumprun::{Clustering, Launch, LaunchParams};

/// The rumprun target.
pub struct Rumprun;

/// Where the seed mounts the two images.
pub const ERLANG_MOUNT: &str = "/opt/erlang";
pub const APP_MOUNT: &str = "/apps/erlang";

/// Sub-directories of an application kept on the ISOs.
const APP_DIRS: &[&str] = &["ebin", "priv"];

/// The two trees, and what was left out because a rumprun BEAM cannot use it.
pub struct Split {
    pub erlang: Tree,
    pub app: Tree,
    /// Guest paths of native Linux binaries that were dropped.
    pub dropped_natives: Vec<String>,
}

/// Names of the OTP applications of the host's OTP (`lib/NAME-VSN` dirs).
pub fn otp_app_names(otp_root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(otp_root.join("lib"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.rsplit_once('-').map(|(name, _)| name.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when `src` is an ELF object exporting `nif_init` (what `erlang:load_nif/2`
/// calls): a NIF, as opposed to a driver (`driver_init`) or a port program.
fn is_nif(src: &FileSource) -> bool {
    let bytes = match src {
        FileSource::Host(p) => match std::fs::read(p) {
            Ok(b) => b,
            Err(_) => return false,
        },
        FileSource::Bytes(b) => b.to_vec(),
    };
    let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
        return false;
    };
    elf.dynsyms
        .iter()
        .any(|sym| sym.st_shndx != 0 && elf.dynstrtab.get_at(sym.st_name) == Some("nif_init"))
}

fn is_elf(src: &FileSource) -> bool {
    match src {
        FileSource::Host(p) => beambake_release::elf::is_elf(p).unwrap_or(false),
        FileSource::Bytes(b) => b.starts_with(b"\x7fELF"),
    }
}

/// Splits the release part of `tree` (under `prefix`) into the two ISO trees.
pub fn split(
    tree: &Tree,
    prefix: &str,
    otp_apps: &BTreeSet<String>,
    inetrc: &str,
) -> Result<Split, Error> {
    let mtime = tree.mtime();
    let mut erlang = Tree::new(mtime);
    let mut app = Tree::new(mtime);
    let mut own_apps = BTreeSet::new();
    let mut dropped = vec![];
    let base = format!("{}/", prefix.trim_end_matches('/'));
    for (path, entry) in tree.iter() {
        let Some(rel) = path.strip_prefix(&base) else {
            continue;
        };
        let parts: Vec<&str> = rel.split('/').collect();
        let dest = match parts.as_slice() {
            ["lib", appdir, sub, ..] if APP_DIRS.contains(sub) => {
                let name = appdir.rsplit_once('-').map_or(*appdir, |(n, _)| n);
                if otp_apps.contains(name) {
                    Some((&mut erlang, format!("/lib/erlang/{rel}")))
                } else {
                    own_apps.insert(appdir.to_string());
                    Some((&mut app, format!("/{rel}")))
                }
            }
            ["releases", _, ..] => Some((&mut app, format!("/{rel}"))),
            _ => None,
        };
        let Some((t, dest)) = dest else { continue };
        match &entry.kind {
            EntryKind::Dir => t.mkdir_p(&dest, &entry.origin)?,
            EntryKind::File(src) => {
                if is_elf(src) {
                    if is_nif(src) {
                        let app = parts.get(1).copied().unwrap_or("?");
                        return Err(Error::Unsupported {
                            path: match src {
                                FileSource::Host(p) => p.clone(),
                                FileSource::Bytes(_) => path.into(),
                            },
                            message: format!(
                                "{path} is a NIF of {app} built for Linux: the rumprun BEAM has no dlopen() and links no NIFs in, \
                                 so {app} could not load it; remove {app} from the release (the rumprun BEAM is built without \
                                 OpenSSL, so crypto, ssl and ssh cannot run there) or link the NIF into a rumprun BEAM \
                                 (--enable-static-nifs) and set rumprun.beam"
                            ),
                        });
                    }
                    dropped.push(path.to_string());
                    continue;
                }
                if let Some(parent) = beambake_images::rootfs::parent_of(&dest) {
                    t.mkdir_p(parent, "rumprun layout")?;
                }
                t.add_file(&dest, src.clone(), entry.perm, &entry.origin)?;
            }
            EntryKind::Symlink(target) => {
                if let Some(parent) = beambake_images::rootfs::parent_of(&dest) {
                    t.mkdir_p(parent, "rumprun layout")?;
                }
                t.add_symlink(&dest, target, &entry.origin)?;
            }
            EntryKind::Device { .. } => {}
        }
    }
    erlang.mkdir_p("/lib/erlang/lib", "rumprun layout")?;
    for a in &own_apps {
        erlang.add_symlink(
            &format!("/lib/erlang/lib/{a}"),
            &format!("{APP_MOUNT}/lib/{a}"),
            "rumprun: the release's own application, on app.iso",
        )?;
    }
    erlang.add_symlink(
        "/lib/erlang/releases",
        &format!("{APP_MOUNT}/releases"),
        "rumprun: the release's boot files, on app.iso",
    )?;
    erlang.add_bytes(
        "/erl_inetrc",
        inetrc.as_bytes().to_vec(),
        0o644,
        "beambake (ERL_INETRC)",
    )?;
    Ok(Split {
        erlang,
        app,
        dropped_natives: dropped,
    })
}

/// The `erl_inetrc` of the guest: hosts file first, then DNS (the seed's choice), and the
/// guest's own name.
pub fn inetrc(ip: std::net::Ipv4Addr, hostname: &str) -> String {
    let o = ip.octets();
    format!(
        "%% Written by beambake for the rumprun guest.\n{{lookup, [file, dns]}}.\n{{host, {{{},{},{},{}}}, [\"{hostname}\"]}}.\n",
        o[0], o[1], o[2], o[3]
    )
}

/// `rumprun-bake`: in `$RUMPRUN_TOOLCHAIN/bin`, or on `PATH`.
pub fn find_bake() -> Option<PathBuf> {
    if let Some(tc) = std::env::var_os("RUMPRUN_TOOLCHAIN") {
        let p = PathBuf::from(tc).join("bin/rumprun-bake");
        if p.is_file() {
            return Some(p);
        }
    }
    beambake_images::host::which("rumprun-bake")
}

/// The error when no toolchain can be had.
pub fn missing_toolchain(recipe: &Recipe) -> Error {
    Error::Toolchain {
        file: recipe.file.clone(),
        message: "no rumprun toolchain: set rumprun.source to the rumprun source snapshot (rumprun-src.tar.xz, \
         pinned in images/rumprun.toml; beambake builds the toolchain once into its cache) or BEAMBAKE_RUMPRUN_SRC, \
         or put an installed toolchain's bin/ (rumprun-bake) on PATH or its prefix in RUMPRUN_TOOLCHAIN; or pass --no-bake to write \
         only erlang.iso, app.iso and the launch config"
            .into(),
    }
}

/// Size and sha256 of a file another program (or module) wrote.
fn written_file(path: &Path) -> Result<Written, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    Ok(Written {
        path: path.to_path_buf(),
        size: std::fs::metadata(path).map_err(io)?.len(),
        sha256: beambake_images::digest::sha256_file(path).map_err(io)?,
    })
}

/// Where `rumprun-bake` comes from.
enum BakeTool {
    /// beambake's toolchain, from this snapshot (built into the cache on first use).
    Source(PathBuf),
    /// An installed toolchain's `rumprun-bake`.
    Installed(PathBuf),
}

/// How the image is baked: the tool and the rumprun-built BEAM, unless the recipe says
/// `no_bake`; an error naming what is missing otherwise. Builds nothing.
fn bake_tools(recipe: &Recipe) -> Result<Option<(BakeTool, PathBuf)>, Error> {
    if recipe.rumprun.no_bake {
        return Ok(None);
    }
    let env_source = std::env::var_os(beambake_kernel::rumprun_toolchain::ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let tool = match recipe
        .rumprun
        .source
        .as_ref()
        .map(|p| p.to_path_buf())
        .or(env_source)
    {
        Some(src) => BakeTool::Source(
            beambake_kernel::rumprun_toolchain::locate(Some(&src)).map_err(|e| {
                Error::Toolchain {
                    file: recipe.file.clone(),
                    message: format!("rumprun.source: {e}"),
                }
            })?,
        ),
        None => BakeTool::Installed(find_bake().ok_or_else(|| missing_toolchain(recipe))?),
    };
    let beam = match &recipe.rumprun.beam {
        Some(b) => b.to_path_buf(),
        None => std::env::var_os("RUMPRUN_TOOLCHAIN")
            .map(|t| PathBuf::from(t).join("erlang/bin/beam"))
            .ok_or_else(|| Error::Toolchain {
                file: recipe.file.clone(),
                message: "rumprun.beam is not set: point it at the BEAM cross-built for rumprun (`cargo xtask rumprun-beam` \
                          builds one and links it at target/otp-rumprun/beam)"
                    .into(),
            })?,
    };
    if !beam.is_file() {
        return Err(Error::Toolchain {
            file: recipe.file.clone(),
            message: format!(
                "rumprun.beam {} does not exist: build OTP for rumprun (`cargo xtask rumprun-beam`) and point rumprun.beam at its beam",
                beam.display()
            ),
        });
    }
    Ok(Some((tool, beam)))
}

/// `beambake_epmd.beam`, compiled from the module's source (in this binary) with the
/// host OTP's `erlc` (`otp`: its root), deterministically.
fn epmd_module(otp: &Path, recipe: &Recipe) -> Result<Vec<u8>, Error> {
    const SOURCE: &str = include_str!("../../../../erlang/src/beambake_epmd.erl");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let d = tempfile::tempdir().map_err(io(Path::new("/tmp")))?;
    let src = d.path().join("beambake_epmd.erl");
    std::fs::write(&src, SOURCE).map_err(io(&src))?;
    let erlc = otp.join("bin/erlc");
    let o = std::process::Command::new(&erlc)
        .arg("+deterministic")
        .arg("-o")
        .arg(d.path())
        .arg(&src)
        .output()
        .map_err(|source| Error::Toolchain {
            file: recipe.file.clone(),
            message: format!("running {}: {source}", erlc.display()),
        })?;
    if !o.status.success() {
        return Err(Error::Tool {
            program: erlc,
            what: "beambake_epmd.erl".into(),
            stderr: String::from_utf8_lossy(&o.stdout).trim().to_string(),
        });
    }
    let beam = d.path().join("beambake_epmd.beam");
    std::fs::read(&beam).map_err(io(&beam))
}

/// Where `beambake_epmd.beam` goes: on `erlang.iso`, and so at
/// `/opt/erlang/beambake/ebin` in the guest (on the code path with `-pa`).
const EPMD_EBIN: &str = "/beambake/ebin";

impl Target for Rumprun {
    fn kind(&self) -> beambake_recipe::Target {
        beambake_recipe::Target::Rumprun
    }

    fn check(&self, recipe: &Recipe) -> Result<(), Error> {
        if recipe.vm.count > 1 {
            return Err(Error::recipe(
                recipe,
                "vm.count > 1 is not supported by the rumprun target (start several from the generated launch config)",
            ));
        }
        if recipe.vm.cpus > 1 {
            return Err(Error::recipe(
                recipe,
                format!(
                    "vm.cpus = {}: rumprun has no SMP (one virtual CPU, cooperative threads); set vm.cpus = 1",
                    recipe.vm.cpus
                ),
            ));
        }
        if recipe.distribution.is_some()
            && recipe.launch.code_loading == Some(beambake_recipe::CodeLoading::Embedded)
        {
            return Err(Error::recipe(
                recipe,
                "launch.code_loading = \"embedded\" with [distribution]: on rumprun the node's port mapper (beambake_epmd) \
                 is loaded from /opt/erlang/beambake/ebin when distribution starts, which embedded mode cannot do; use \
                 \"interactive\"",
            ));
        }
        bake_tools(recipe).map(|_| ())
    }

    fn make(
        &self,
        recipe: &Recipe,
        common: &mut Common,
        _cx: &Context,
        progress: &dyn Progress,
    ) -> Result<Made, Error> {
        let bake = bake_tools(recipe)?;
        let dir = common.dir.clone();
        let otp = common
            .prepared
            .release
            .host_otp
            .clone()
            .or_else(beambake_release::release::find_host_otp)
            .ok_or_else(|| Error::Toolchain {
                file: recipe.file.clone(),
                message: "cannot find the host's OTP (erl on PATH) to tell OTP applications from the release's own".into(),
            })?;
        progress.step("splitting the release into erlang.iso and app.iso");
        let mut s = split(
            &common.prepared.assembly.tree,
            &common.prepared.assembly.prefix,
            &otp_app_names(&otp),
            &inetrc(recipe.network.guest.ip, &recipe.hostname()),
        )?;
        let clustered = common.node.is_some() && common.cookie.is_some();
        if clustered {
            progress.step("compiling the node's port mapper (beambake_epmd) for erlang.iso");
            s.erlang
                .mkdir_p(EPMD_EBIN, "beambake: the node's port mapper")?;
            s.erlang.add_bytes(
                &format!("{EPMD_EBIN}/{}.beam", beambake_vm::rumprun::EPMD_MODULE),
                epmd_module(&otp, recipe)?,
                0o644,
                "beambake (erlang/src/beambake_epmd.erl)",
            )?;
        }
        for n in &s.dropped_natives {
            progress.step(&format!(
                "left out {n}: a native Linux binary (NIFs and port programs must be cross-built for rumprun)"
            ));
        }
        let erlang_iso = image::write(
            &s.erlang,
            &Format::Iso9660 {
                volume: "ERLANG".into(),
            },
            &dir.join("erlang.iso"),
        )?;
        let app_iso = image::write(
            &s.app,
            &Format::Iso9660 {
                volume: "APP".into(),
            },
            &dir.join("app.iso"),
        )?;

        // The launch config: the release's boot script and config from app.iso.
        let rel = &common.prepared.release;
        let kernel = format!("{}.hw.bin", recipe.name);
        let mut p = LaunchParams::new(kernel.clone(), recipe.network.guest.to_string());
        p.memory_mib = recipe.vm.memory_mib;
        p.hostname = Some(recipe.hostname());
        p.code_paths = if clustered {
            vec![format!("{ERLANG_MOUNT}{EPMD_EBIN}")]
        } else {
            vec![]
        };
        let at = |r: &str| format!("{APP_MOUNT}/{r}");
        p.start = vec!["-boot".into(), at(&rel.boot_rel)];
        if let Some(c) = &rel.sys_config_rel {
            p.start.push("-config".into());
            p.start.push(at(c.trim_end_matches(".config")));
        }
        if let Some(m) = recipe.launch.code_loading {
            p.start.push("-mode".into());
            p.start.push(m.mode().into());
        }
        p.start.extend(recipe.launch.args(recipe.vm.cpus));
        if let (Some(node), Some(cookie)) = (&common.node, &common.cookie) {
            p.clustering = Some(Clustering {
                node: node.clone(),
                cookie: cookie.clone(),
            });
        }
        let launch_error = |source| Error::Launch {
            file: recipe.file.clone(),
            source,
        };
        let launch = Launch::new(p).map_err(launch_error)?;
        let written = beambake_vm::rumprun::write_all(&launch, &dir).map_err(launch_error)?;

        let mut artefacts = vec![
            (erlang_iso.clone(), "iso9660+rockridge"),
            (app_iso, "iso9660+rockridge"),
        ];
        let mut inputs: Vec<HostFile> = vec![];
        if let Some((tool, beam)) = &bake {
            let tool = match tool {
                BakeTool::Installed(t) => t.clone(),
                BakeTool::Source(snapshot) => {
                    let tc =
                        beambake_kernel::rumprun_toolchain::get(Some(snapshot), _cx.cache, &|m| {
                            progress.step(m)
                        })?;
                    inputs.push(HostFile {
                        path: format!("rumprun toolchain {} ({})", tc.key, snapshot.display()),
                        sha256: beambake_kernel::rumprun_toolchain::pin()?.sha256,
                    });
                    tc.bake()
                }
            };
            let tool = &tool;
            progress.step("baking the BEAM with rumprun-bake hw_virtio");
            let out = dir.join(&kernel);
            let o = std::process::Command::new(tool)
                .arg("hw_virtio")
                .arg(&out)
                .arg(beam)
                .output()
                .map_err(|source| Error::Io {
                    path: tool.clone(),
                    source,
                })?;
            if !o.status.success() {
                return Err(Error::Tool {
                    program: tool.clone(),
                    what: "hw_virtio".into(),
                    stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
                });
            }
            inputs.push(HostFile {
                path: beam.display().to_string(),
                sha256: beambake_images::digest::sha256_file(beam).map_err(|source| Error::Io {
                    path: beam.to_path_buf(),
                    source,
                })?,
            });
            artefacts.push((written_file(&out)?, "rumprun-hw-kernel"));
        }
        for w in written {
            artefacts.push((written_file(&w)?, "rumprun-launch-config"));
        }
        let mut plan = beambake_target::plan(
            recipe,
            common,
            &kernel,
            beambake_vm::rumprun::flat_json(&launch),
        );
        plan.vmm = Some(beambake_vm::boot::vmm::VmmKind::QemuRumprun);
        plan.disks = launch
            .params()
            .disks
            .iter()
            .map(|d| beambake_vm::boot::DiskPlan {
                path: beambake_target::absolute(&common.set.final_dir().join(&d.iso)),
                mount: d.mountpoint.clone(),
                fstype: "iso9660".into(),
            })
            .collect();
        Ok(Made {
            plan,
            image: erlang_iso,
            artefacts,
            kernel_inputs: inputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_puts_otp_apps_and_own_code_apart_and_drops_natives() {
        let mut t = Tree::new(0);
        let add = |t: &mut Tree, p: &str, bytes: &[u8]| {
            t.mkdir_p(beambake_images::rootfs::parent_of(p).unwrap(), "t")
                .unwrap();
            t.add_bytes(p, bytes.to_vec(), 0o644, "t").unwrap();
        };
        add(&mut t, "/opt/e/lib/stdlib-4.2/ebin/lists.beam", b"FOR1");
        add(&mut t, "/opt/e/lib/stdlib-4.2/src/lists.erl", b"src");
        add(&mut t, "/opt/e/lib/echo-0.1.0/ebin/echo.beam", b"FOR1");
        add(&mut t, "/opt/e/lib/echo-0.1.0/priv/nif.so", b"\x7fELF...");
        add(&mut t, "/opt/e/releases/0.1.0/start.boot", b"boot");
        add(&mut t, "/opt/e/erts-13.1/bin/beam.smp", b"\x7fELF...");
        add(&mut t, "/usr/lib/libc.so.6", b"\x7fELF...");
        let otp: BTreeSet<String> = ["stdlib".to_string()].into();
        let s = split(&t, "/opt/e", &otp, "{lookup,[file]}.\n").unwrap();
        assert!(s
            .erlang
            .contains("/lib/erlang/lib/stdlib-4.2/ebin/lists.beam"));
        assert!(!s
            .erlang
            .contains("/lib/erlang/lib/stdlib-4.2/src/lists.erl"));
        assert!(s.erlang.contains("/erl_inetrc"));
        assert_eq!(
            s.erlang.get("/lib/erlang/lib/echo-0.1.0").map(|e| &e.kind),
            Some(&EntryKind::Symlink("/apps/erlang/lib/echo-0.1.0".into()))
        );
        assert!(s.app.contains("/lib/echo-0.1.0/ebin/echo.beam"));
        assert!(s.app.contains("/releases/0.1.0/start.boot"));
        assert!(!s.app.contains("/lib/echo-0.1.0/priv/nif.so"));
        assert_eq!(s.dropped_natives, vec!["/opt/e/lib/echo-0.1.0/priv/nif.so"]);
        assert!(s.erlang.iter().all(|(p, _)| !p.contains("erts-")));
    }

    #[test]
    fn several_vms_are_refused_before_the_toolchain_is_looked_for() {
        let text =
            "name = \"x\"\ntarget = \"rumprun\"\n[release]\nsource = \"rel\"\n[vm]\ncount = 2\n";
        let recipe = Recipe::parse(text, Path::new("r/x.toml")).unwrap();
        let e = Rumprun.check(&recipe).unwrap_err().to_string();
        assert_eq!(e, "r/x.toml: vm.count > 1 is not supported by the rumprun target (start several from the generated launch config)");
    }

    #[test]
    fn inetrc_names_the_guest() {
        let t = inetrc([10, 0, 120, 101].into(), "echo");
        assert!(t.contains("{host, {10,0,120,101}, [\"echo\"]}."), "{t}");
    }
}
