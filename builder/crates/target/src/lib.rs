//! Targets: thin adapters over one pipeline. A target is one type implementing
//! [`Target`] (in its own crate, `builder/crates/target-NAME`, which cannot see the other
//! targets), registered in the CLI's `targets` list. [`build`] runs the one sequence
//! every target shares: the target's own recipe [`Target::check`] and
//! [`Target::supports_storage`] (before anything is built), [`prepare`] (the release with
//! the recipe's launch options, node name and cookie, and the output set),
//! [`Target::make`] (what the target adds to the tree, its kernel, its writers and its
//! part of the boot plan), then `finish_with` (plan, manifest, what is the build's own:
//! the cookie file and a random cookie appended to the image by [`Target::append_file`],
//! and the set swapped in for the previous one, keeping its console logs and data disks:
//! [`BootPlan::is_run_file`]). With a build cache ([`Context::builds`]), the key is
//! computed once after `prepare` ([`build_cache::key`]): a verified entry is installed
//! instead of `make` (then the build's own files are added), and a built set is stored
//! before its own files are added and it is swapped in.
//!
//! Must not: know any particular target, or duplicate pipeline steps per target.

pub mod build_cache;
pub mod exit;
pub mod pipeline;
pub mod strip;
pub mod trace;

use std::path::{Path, PathBuf};

use beambake_contract::paths;
use beambake_images::output::{OutputSet, Written};
use beambake_images::rootfs::Tree;
use beambake_recipe::{Check, Recipe};
use beambake_release::assemble;
use beambake_release::manifest::HostFile;
use beambake_vm::boot::{BootPlan, DataPlan, HostfsPlan, NetPlan, PLAN_FILE};

pub use pipeline::{Error, Input, Prepared, Progress};

/// What the CLI hands every target: things only the binary has.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// beambake's static init, embedded in the `beambake` binary.
    pub init: &'a [u8],
    /// Where kernels and other built-once inputs are cached (`~/.cache/beambake`).
    pub cache: &'a Path,
    /// The build cache's dir ([`build_cache::dir`]); `None`: neither read nor written
    /// (`--no-cache`).
    pub builds: Option<&'a Path>,
}

/// One target: what it needs from a recipe and what it makes from a prepared release.
pub trait Target: Sync {
    /// The recipe's `target = "..."` value that selects this target.
    fn kind(&self) -> beambake_recipe::Target;

    /// The recipe settings this target cannot honour, before anything is built or
    /// created in the output directory.
    fn check(&self, _recipe: &Recipe) -> Result<(), Error> {
        Ok(())
    }

    /// Whether the target mounts the recipe's `[data]`, `[[hostfs]]` and `[[disk]]`.
    fn supports_storage(&self) -> bool {
        false
    }

    /// What the target's output depends on beyond the recipe, the release's tree and the
    /// init (its kernel: a pin's sha256, a kernel file's), for the build cache's key;
    /// `None` (the default): the target's builds are not cached.
    fn cache_inputs(&self, _recipe: &Recipe, _cx: &Context) -> Result<Option<Vec<String>>, Error> {
        Ok(None)
    }

    /// Whether the target can add a file to its image after writing it
    /// ([`Target::append_file`]). Then a cookie drawn at random stays out of the tree
    /// (the launch spec reads it from [`paths::COOKIE_ARGS_PATH`]) and is appended per
    /// build, so the rest of the image is the same bytes for the same inputs, and cached.
    fn appends_files(&self) -> bool {
        false
    }

    /// Writes `image` anew (it may be a hard link into the build cache) with the file
    /// `path` (guest path, mode 0400, `content`) added, and returns it. Called only when
    /// [`Target::appends_files`].
    fn append_file(&self, image: &Path, path: &str, _content: &[u8]) -> Result<Written, Error> {
        Err(Error::Unsupported {
            path: image.to_path_buf(),
            message: format!("target {:?} cannot add {path} to its image", self.kind()),
        })
    }

    /// How the release's `.beam` files go into the tree for `recipe`:
    /// [`assemble::Beams::Plain`] when the target's image is compressed (its compressor
    /// does better on the modules' own bytes); as built (the default) when its format
    /// stores files as they are.
    fn beams(&self, _recipe: &Recipe) -> assemble::Beams {
        assemble::Beams::AsBuilt
    }

    /// Adds the target's files to `common`'s tree, writes its image(s) and kernel into
    /// the staging dir (`common.dir`) and returns them with the boot plan (start from
    /// [`plan`]).
    fn make(
        &self,
        recipe: &Recipe,
        common: &mut Common,
        cx: &Context,
        progress: &dyn Progress,
    ) -> Result<Made, Error>;
}

/// What [`Target::make`] wrote.
pub struct Made {
    pub plan: BootPlan,
    /// The bootable image (initramfs, root filesystem or first ISO).
    pub image: Written,
    /// Every artefact with its manifest label (the image included).
    pub artefacts: Vec<(Written, &'static str)>,
    /// What the kernel (or baked unikernel) was made from, for the manifest.
    pub kernel_inputs: Vec<HostFile>,
}

/// Builds `recipe` with `target` into `OUT/NAME`: the one sequence of every target.
pub fn build(
    target: &dyn Target,
    recipe: &Recipe,
    out_root: &Path,
    cx: &Context,
    progress: &dyn Progress,
) -> Result<Built, Error> {
    if (recipe.data.is_some() || !recipe.hostfs.is_empty() || !recipe.disks.is_empty())
        && !target.supports_storage()
    {
        return Err(Error::recipe(
            recipe,
            "[data], [[hostfs]] and [[disk]] are supported by target = \"uml\" only",
        ));
    }
    target.check(recipe)?;
    let _memo = cx.builds.map(|dir| DigestMemo::new(dir, progress));
    let cookie_file = target.appends_files().then_some(paths::COOKIE_ARGS_PATH);
    let mut common = prepare(
        recipe,
        out_root,
        cookie_file,
        target.beams(recipe),
        progress,
    )?;
    let cached = match cx.builds {
        Some(dir) => match target.cache_inputs(recipe, cx)? {
            Some(kernel) => {
                progress.step("computing the build cache key");
                build_cache::key(recipe, &common.prepared, cx.init, &kernel)?
                    .map(|key| (build_cache::Cache::new(dir.to_path_buf()), key))
            }
            None => None,
        },
        None => None,
    };
    if let Some((cache, key)) = &cached {
        match cache.install(key, &common.set) {
            build_cache::Install::Hit {
                meta,
                verified,
                hashed,
            } => {
                progress.detail(&format!(
                    "build cache hit {key}: {verified} files verified ({hashed} hashed, the \
                     others unchanged since stored)"
                ));
                let file = meta.files.iter().find(|f| f.name == meta.image);
                let image = Written {
                    path: common.dir.join(&meta.image),
                    size: file.map_or(0, |f| f.size),
                    sha256: file.map(|f| f.sha256.clone()).unwrap_or_default(),
                };
                let manifest = common.dir.join(MANIFEST_FILE);
                let image = personalize(target, &common, image, &manifest)?;
                let dir = common.set.commit(&BootPlan::is_run_file)?;
                return Ok(Built {
                    plan: BootPlan::load(&dir)?,
                    image: Written {
                        path: dir.join(&meta.image),
                        ..image
                    },
                    manifest: dir.join(MANIFEST_FILE),
                    dir,
                    cache: Some(CacheUse {
                        key: key.clone(),
                        hit: true,
                        verified,
                        hashed,
                        rejected: None,
                    }),
                });
            }
            build_cache::Install::Corrupt(why) => {
                progress.note(&format!(
                    "build cache entry {key} is corrupt and was removed, rebuilding: {why}"
                ));
                let made = target.make(recipe, &mut common, cx, progress)?;
                let why = Some(why);
                return finish_cached(target, common, made, recipe, cache, key, why, progress);
            }
            build_cache::Install::Miss => {
                let made = target.make(recipe, &mut common, cx, progress)?;
                return finish_cached(target, common, made, recipe, cache, key, None, progress);
            }
        }
    }
    let made = target.make(recipe, &mut common, cx, progress)?;
    finish_with(target, common, made, &|| {})
}

/// The build cache's digest memo in use for as long as this lives; saved when dropped,
/// whichever way the build ends.
struct DigestMemo<'a> {
    progress: &'a dyn Progress,
}

impl<'a> DigestMemo<'a> {
    fn new(builds: &Path, progress: &'a dyn Progress) -> DigestMemo<'a> {
        beambake_images::digest::use_memo(&builds.join(build_cache::MEMO_FILE));
        DigestMemo { progress }
    }
}

impl Drop for DigestMemo<'_> {
    fn drop(&mut self) {
        if let Err(e) = beambake_images::digest::save_memo() {
            self.progress.detail(&format!("digest memo not saved: {e}"));
        }
        beambake_images::digest::drop_memo();
    }
}

/// [`finish_with`], storing the staged set in the cache (a set that cannot be stored is
/// still built: the reason is a note).
#[allow(clippy::too_many_arguments)]
fn finish_cached(
    target: &dyn Target,
    common: Common,
    made: Made,
    recipe: &Recipe,
    cache: &build_cache::Cache,
    key: &str,
    rejected: Option<String>,
    progress: &dyn Progress,
) -> Result<Built, Error> {
    let staging = common.dir.clone();
    let image = made
        .image
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut built = finish_with(target, common, made, &|| match cache
        .store(key, recipe, &image, &staging)
    {
        Ok(true) => progress.detail(&format!("stored in the build cache as {key}")),
        Ok(false) => progress.detail(&format!(
            "the build cache already has {key} (another build stored it first)"
        )),
        Err(e) => progress.note(&format!("not stored in the build cache: {e}")),
    })?;
    built.cache = Some(CacheUse {
        key: key.to_string(),
        hit: false,
        verified: 0,
        hashed: 0,
        rejected,
    });
    Ok(built)
}

/// Adds beambake's init at `/init` and `/etc/hosts` (a link to the hosts file the init
/// writes at boot): what every target booting beambake's init needs.
pub fn add_init(tree: &mut Tree, init: &[u8]) -> Result<(), Error> {
    tree.add_bytes("/init", init.to_vec(), 0o755, "beambake init")?;
    tree.add_symlink(paths::ETC_HOSTS, paths::RUN_HOSTS, "beambake")?;
    Ok(())
}

/// What a build wrote.
pub struct Built {
    pub dir: PathBuf,
    pub plan: BootPlan,
    /// The bootable image (initramfs or root filesystem).
    pub image: Written,
    pub manifest: PathBuf,
    /// How the build cache was used; `None`: not at all (`--no-cache`, a target or a
    /// build that is not cached).
    pub cache: Option<CacheUse>,
}

/// A build's use of the build cache.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheUse {
    pub key: String,
    /// The output set came from the cache.
    pub hit: bool,
    /// Files checked against the entry (on a hit): by their stamp, or `hashed`.
    pub verified: usize,
    /// Of those, the files read and hashed (their stamp had changed since stored).
    pub hashed: usize,
    /// Why an entry for this key was found unusable (then removed, and the set rebuilt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// The release prepared for a recipe, with its output set, node name and cookie.
pub struct Common {
    /// Where the target writes its files: the output set's staging dir, which becomes
    /// `OUT/NAME` when the build finishes (the final dir is `set.final_dir()`).
    pub dir: PathBuf,
    pub set: OutputSet,
    pub prepared: Prepared,
    /// The node's name without its host, when distributed (from the recipe or the
    /// release's `vm.args`: [`beambake_release::launch::resolve_distribution`]).
    pub node: Option<String>,
    pub cookie: Option<String>,
    /// The node uses short names (`NAME@HOSTNAME`) rather than `NAME@IP`.
    pub short_names: bool,
}

/// Prepares the release's tree with the recipe's launch options (the node is named after
/// the first VM's address; each VM gets its own at boot), then starts the output set (a
/// release that cannot be prepared creates nothing in `out_root`).
/// `cookie_file`: where a random cookie goes when the target keeps it out of the tree
/// ([`Target::appends_files`]); `beams`: how `.beam` files are stored ([`Target::beams`]).
pub fn prepare(
    recipe: &Recipe,
    out_root: &Path,
    cookie_file: Option<&str>,
    beams: assemble::Beams,
    progress: &dyn Progress,
) -> Result<Common, Error> {
    let input = Input {
        path: recipe.release.source.to_path_buf(),
        resolve: beambake_release::source::Resolve {
            profile: recipe.release.profile.clone(),
            release: recipe.release.name.clone(),
            verbose: false,
        },
        discover: beambake_release::release::Discover {
            otp_root: recipe.release.otp_root.as_deref().map(Path::to_path_buf),
        },
        trace: recipe.launch.code_loading == Some(beambake_recipe::CodeLoading::Traced),
    };
    if input.trace
        && (recipe.release.erts_from.is_some()
            || !matches!(
                recipe.target,
                beambake_recipe::Target::Microvm | beambake_recipe::Target::Uml
            ))
    {
        return Err(Error::recipe(
            recipe,
            format!(
                "{} = \"traced\" runs the release on the host at build time: it needs the host's \
                 ERTS, so targets microvm and uml only, without release.erts_from",
                recipe.locate("launch", "code_loading")
            ),
        ));
    }
    let opts = assemble::Options {
        prefix: recipe.release.prefix.clone(),
        mtime: Tree::epoch_from_env()?,
        distribution: beambake_release::launch::DistributionRequest {
            wanted: recipe.distribution.is_some(),
            node: recipe.distribution.as_ref().and_then(|d| d.node.clone()),
            cookie: recipe.distribution.as_ref().and_then(|d| d.cookie.clone()),
            host: Some(recipe.guest_addrs()[0].to_string()),
            cookie_file: cookie_file.map(str::to_string),
        },
        code_loading: recipe.launch.code_loading.map(|m| m.mode().to_string()),
        preload: None,
        extra_args: recipe.launch.args(recipe.vm.cpus),
        shell: recipe.launch.shell,
        erts_from: recipe.release.erts_from.as_deref().map(Path::to_path_buf),
        beams,
        all_erts_programs: false,
    };
    if !input.path.exists() {
        return Err(Error::recipe(
            recipe,
            format!(
                "{} = {:?}: {} does not exist (paths are relative to the recipe file)",
                recipe.locate("release", "source"),
                recipe.release.source.written().display().to_string(),
                input.path.display()
            ),
        ));
    }
    let mut prepared = pipeline::prepare(&input, &opts, progress)?;
    if recipe.release.strip_beams {
        progress.step("stripping debug chunks from the .beam files");
        let n = strip::strip_beams(&mut prepared.assembly.tree)?;
        progress.detail(&format!("{n} .beam files stripped"));
    }
    if prepared.assembly.distribution.is_none() {
        if let Some(c) = recipe
            .checks
            .iter()
            .find(|c| matches!(c, Check::Distribution {} | Check::Rpc { .. }))
        {
            return Err(Error::recipe(
                recipe,
                format!(
                    "the check {} needs a distributed node: add a [distribution] section, or \
                     name the node in the release's vm.args (-name or -sname)",
                    beambake_vm::smoke::check_name(c)
                ),
            ));
        }
    }
    let set = OutputSet::begin(out_root, &recipe.name)?;
    let dist = prepared.assembly.distribution.as_ref();
    Ok(Common {
        dir: set.dir().to_path_buf(),
        set,
        node: dist.map(|d| d.name.clone()),
        cookie: dist.map(|d| d.cookie.clone()),
        short_names: dist.is_some_and(|d| d.names == beambake_release::launch::Names::Short),
        prepared,
    })
}

/// The plan's parts that do not depend on the target.
pub fn plan(recipe: &Recipe, common: &Common, kernel: &str, cmdline: String) -> BootPlan {
    let mut cmdline = cmdline;
    if !recipe.kernel.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&recipe.kernel.cmdline);
    }
    BootPlan {
        name: recipe.name.clone(),
        target: recipe.target,
        vmm: None,
        kernel: PathBuf::from(kernel),
        initrd: None,
        root_image: None,
        root_fs: None,
        cmdline,
        memory_mib: recipe.vm.memory_mib,
        cpus: recipe.vm.cpus,
        machine: recipe.vm.machine,
        acpi_off: false,
        accel: recipe.vm.accel,
        cpu: recipe.vm.cpu.clone(),
        net: NetPlan {
            mode: recipe.network.mode,
            guests: recipe.guest_addrs().to_vec(),
            prefix: recipe.network.guest.prefix,
            host: recipe.network.host,
            hostname: recipe.hostname(),
        },
        node: common.node.clone(),
        short_names: common.short_names,
        cookie_file: common.cookie.as_ref().map(|_| PathBuf::from("cookie")),
        checks: recipe.resolved_checks(),
        smoke: recipe.smoke.clone(),
        data: recipe.data.as_ref().map(|d| DataPlan {
            path: d.path.as_deref().map(absolute),
            size_mib: d.size_mib,
            mount: d.mount.clone(),
        }),
        hostfs: recipe
            .hostfs
            .iter()
            .map(|h| HostfsPlan {
                host: absolute(&h.host),
                guest: h.guest.clone(),
            })
            .collect(),
        disks: recipe
            .disks
            .iter()
            .map(|d| beambake_vm::boot::DiskPlan {
                path: absolute(&d.path),
                mount: d.mount.clone(),
                fstype: d.fstype.clone(),
            })
            .collect(),
        control: false,
        mac: None,
    }
}

/// `p` made absolute (as given when that fails).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

const MANIFEST_FILE: &str = "manifest.json";

/// Writes the plan and the manifest of the artefacts (plus the kernel's inputs) into the
/// staging dir, calls `staged` (the set as the build cache stores it), adds what is this
/// build's own ([`personalize`]) and swaps the set in as `OUT/NAME`.
fn finish_with(
    target: &dyn Target,
    common: Common,
    made: Made,
    staged: &dyn Fn(),
) -> Result<Built, Error> {
    let Made {
        plan,
        image,
        artefacts,
        kernel_inputs,
    } = made;
    let dir = &common.dir;
    beambake_images::output::write_bytes(&dir.join(PLAN_FILE), plan.to_json().as_bytes())?;
    let mut manifest = pipeline::manifest(&common.prepared, &artefacts, dir, false)?;
    manifest.inputs.host_files.extend(kernel_inputs);
    let manifest_path = dir.join(MANIFEST_FILE);
    beambake_images::output::write_bytes(&manifest_path, manifest.to_json().as_bytes())?;
    staged();
    let image = personalize(target, &common, image, &manifest_path)?;
    let dir = common.set.commit(&BootPlan::is_run_file)?;
    let moved = |p: &Path| p.file_name().map_or_else(|| dir.clone(), |n| dir.join(n));
    Ok(Built {
        image: Written {
            path: moved(&image.path),
            ..image
        },
        manifest: moved(&manifest_path),
        dir,
        plan,
        cache: None,
    })
}

/// What is this build's own, never cached: the cookie file (0600) beside the image, and
/// a cookie drawn at random appended to the image (`-setcookie` for erlexec's
/// `-args_file`, [`Target::append_file`]), with the manifest's row for the image updated.
fn personalize(
    target: &dyn Target,
    common: &Common,
    image: Written,
    manifest: &Path,
) -> Result<Written, Error> {
    let Some(c) = &common.cookie else {
        return Ok(image);
    };
    let dir = &common.dir;
    beambake_images::output::write_bytes_mode(&dir.join("cookie"), c.as_bytes(), 0o600)?;
    let Some(file) = common
        .prepared
        .assembly
        .distribution
        .as_ref()
        .and_then(|d| d.cookie_file.as_deref())
    else {
        return Ok(image);
    };
    let appended = target.append_file(&image.path, file, format!("-setcookie {c}\n").as_bytes())?;
    let io = |source| Error::Io {
        path: manifest.to_path_buf(),
        source,
    };
    let json = std::fs::read_to_string(manifest).map_err(io)?;
    let json = beambake_release::manifest::replace_artefact(
        &json,
        (image.size, &image.sha256),
        (appended.size, &appended.sha256),
    )
    .ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no artefact of sha256 {} to update", image.sha256),
        ))
    })?;
    beambake_images::output::write_bytes(manifest, json.as_bytes())?;
    Ok(appended)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target that mounts no storage and must never get to `make`.
    struct Plain;

    impl Target for Plain {
        fn kind(&self) -> beambake_recipe::Target {
            beambake_recipe::Target::Microvm
        }

        fn make(
            &self,
            _: &Recipe,
            _: &mut Common,
            _: &Context,
            _: &dyn Progress,
        ) -> Result<Made, Error> {
            unreachable!("the recipe was refused")
        }
    }

    #[test]
    fn storage_needs_a_target_that_mounts_it_before_anything_is_created() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("x.toml");
        let text = "name = \"x\"\ntarget = \"microvm\"\n[release]\nsource = \"rel\"\n\
                    [[hostfs]]\nhost = \"shared\"\nguest = \"/shared\"\n";
        let recipe = Recipe::parse(text, &file).unwrap();
        let out = d.path().join("out");
        let cx = Context {
            init: b"",
            cache: d.path(),
            builds: None,
        };
        let e = build(&Plain, &recipe, &out, &cx, &()).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: [data], [[hostfs]] and [[disk]] are supported by target = \"uml\" only",
                file.display()
            )
        );
        assert!(!out.exists());
    }
}
