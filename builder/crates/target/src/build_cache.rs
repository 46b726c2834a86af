//! The build cache: whole output sets, content-addressed by the sha256 of every input.
//!
//! Owns: the key ([`key`]: one canonical JSON description of what a build's bytes depend
//! on, hashed), the store (`DIR/<key>/entry.json` + `DIR/<key>/files/*`, `DIR` from
//! [`dir`]: `$BEAMBAKE_BUILD_CACHE`, else `CACHE/builds`), verifying an entry while it is
//! copied into an output set ([`Cache::install`]), storing a staged set ([`Cache::store`]),
//! `ls` and `gc`. Must not: build, print, or write outside its directory and the output
//! set it is handed.
//!
//! The key covers: beambake's version and executable (its sha256), the init's bytes, the target, the recipe as parsed
//! (serialised with its paths as written: comments, key order and the recipe file's place
//! do not count), the resolved paths the boot plan records (data, hostfs, disks),
//! `SOURCE_DATE_EPOCH` (the tree's mtime), the release as the pipeline uses it (after
//! `rebar3 release`, after the tarball is read: every tree entry's guest path, mode, size,
//! sha256 and link target, so the release, its ERTS, the ELF closure and the launch spec),
//! the host files outside the release and the release's canonical source path (both named
//! in `manifest.json`, so part of its bytes), and what the target says its kernel is made
//! of ([`crate::Target::cache_inputs`]; a target that cannot say is not cached). A cookie
//! drawn at random is never cached: a target that appends it to its image per build
//! ([`crate::Target::appends_files`]) keeps it out of the tree, and so out of the key and
//! the entry; on other targets, a build with a random cookie is not cached at all.
//!
//! Races, without locks: an entry is written in a temp dir inside `DIR` and `rename`d to
//! its key; a rename onto an existing entry fails, and the loser discards its copy (both
//! are the same bytes). Entries are never modified; the last use is the mtime of
//! `entry.json`. An entry is removed (gc, or found corrupt) by renaming it away first, so
//! a reader sees a whole entry or none; a reader whose files vanish under it, or whose
//! sha256 do not match, has put nothing into the output and rebuilds. A hit hard-links
//! the entry's files into the output set (a copy across file systems): nothing beambake
//! does writes an output file in place, and one changed by hand is caught at the next
//! hit: stored files get an mtime in the past, so a write changes their [`EntryStamp`],
//! and a file whose stamp changed is hashed and checked (one whose stamp is unchanged is
//! not read again). Temp dirs are locked (`flock`) by their writer while it lives; gc
//! removes only unlocked ones.
//!
//! The inputs' digests come through [`digest::sha256_file`]: with the cache in use, its
//! memo ([`MEMO_FILE`] in `DIR`) spares re-reading release files, the ERTS and
//! beambake's own executable whose stamps are unchanged (see [`digest::use_memo`]).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use beambake_images::digest;
use beambake_images::output::{self, OutputSet};
use beambake_recipe::Recipe;
use serde::{Deserialize, Serialize};

use crate::pipeline::{Error, Prepared};

/// Overrides where entries are stored (default: `builds/` in beambake's cache dir).
pub const ENV: &str = "BEAMBAKE_BUILD_CACHE";

/// Entries unused for this long are removed by `gc` without `--max-size`.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bump when the key's description or the entry layout changes.
const SCHEMA: u32 = 2;
const ENTRY_FILE: &str = "entry.json";
/// The digest memo ([`digest::use_memo`]) of the builds using this cache.
pub const MEMO_FILE: &str = ".digests.json";
const FILES_DIR: &str = "files";
const TEMP_PREFIX: &str = ".tmp-";
const DOOMED_PREFIX: &str = ".del-";

/// The entries' dir: `$BEAMBAKE_BUILD_CACHE` when set (absolute), else `cache/builds`.
pub fn dir(cache: &Path) -> PathBuf {
    std::env::var_os(ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| cache.join("builds"))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the key is computed from, as it is hashed (also useful to see why two keys differ).
#[derive(Serialize)]
struct Description<'a> {
    schema: u32,
    tool: &'a str,
    init_sha256: String,
    target: beambake_recipe::Target,
    recipe: &'a Recipe,
    plan_paths: Vec<PathBuf>,
    mtime: u64,
    release: ReleaseDesc<'a>,
    files: Vec<beambake_release::manifest::FileRow>,
    host_files: Vec<beambake_release::manifest::HostFile>,
    kernel: &'a [String],
}

#[derive(Serialize)]
struct ReleaseDesc<'a> {
    name: &'a str,
    vsn: &'a str,
    source: PathBuf,
    source_sha256: &'a str,
}

/// The cache key of a build: `None` when the build is not cacheable (a random cookie).
/// `kernel` is the target's [`crate::Target::cache_inputs`].
pub fn key(
    recipe: &Recipe,
    prepared: &Prepared,
    init: &[u8],
    kernel: &[String],
) -> Result<Option<String>, Error> {
    if prepared.assembly.distribution.as_ref().is_some_and(|d| {
        d.cookie_source == beambake_release::launch::CookieSource::Random && d.cookie_file.is_none()
    }) {
        return Ok(None);
    }
    let Some(tool) = tool_id() else {
        return Ok(None);
    };
    let release_dir = &prepared.source.release_dir;
    let (rows, host_files) =
        beambake_release::manifest::file_table(&prepared.assembly.tree, release_dir)
            .map_err(io_err(release_dir))?;
    let source = &prepared.source.input;
    let d = Description {
        schema: SCHEMA,
        tool,
        init_sha256: digest::sha256_bytes(init),
        target: recipe.target,
        recipe,
        plan_paths: recipe
            .data
            .iter()
            .filter_map(|d| d.path.as_deref())
            .chain(recipe.hostfs.iter().map(|h| &*h.host))
            .chain(recipe.disks.iter().map(|d| &*d.path))
            .map(crate::absolute)
            .collect(),
        mtime: prepared.assembly.tree.mtime(),
        release: ReleaseDesc {
            name: &prepared.release.name,
            vsn: &prepared.release.vsn,
            source: fs::canonicalize(source).unwrap_or_else(|_| source.clone()),
            source_sha256: &prepared.source.sha256,
        },
        files: rows,
        host_files,
        kernel,
    };
    Ok(Some(describe_key(&d)))
}

/// beambake's version and the sha256 of the running executable: every crate of the
/// workspace shares one version, so the version alone would not tell two builds of
/// beambake apart whose writers differ. `None` when the executable cannot be read (then
/// nothing is cached).
fn tool_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let exe = std::env::current_exe().ok()?;
        let sha = digest::sha256_file(&exe).ok()?;
        Some(format!("beambake {} {sha}", env!("CARGO_PKG_VERSION")))
    })
    .as_deref()
}

fn describe_key(d: &Description) -> String {
    // Serialising plain structs, strings and numbers cannot fail.
    let text = serde_json::to_string(d).unwrap_or_default();
    digest::sha256_bytes(text.as_bytes())
}

/// Checks the stored file `src` against `f` and puts it at `dest`: a hard link, or a
/// copy (checked again as it is written) across file systems. Returns whether the
/// content was hashed (else its stamp showed it unchanged since it was stored).
fn place(f: &StoredFile, src: &Path, dest: &Path) -> Result<bool, String> {
    if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
        return Err(format!("{:?}: not a plain file name", f.name));
    }
    let check = |sha256: &str, size: u64| {
        if sha256 == f.sha256 && size == f.size {
            Ok(())
        } else {
            Err(format!(
                "{}: sha256 {sha256} (size {size}), the entry says {} (size {})",
                src.display(),
                f.sha256,
                f.size
            ))
        }
    };
    let read = |e: io::Error| format!("{}: {e}", src.display());
    let meta = fs::metadata(src).map_err(read)?;
    let hashed = f.stamp != Some(EntryStamp::of(&meta));
    if hashed {
        let mut file = File::open(src).map_err(read)?;
        check(&digest::sha256_reader(&mut file).map_err(read)?, meta.len())?;
    }
    match fs::hard_link(src, dest) {
        Ok(()) => Ok(hashed),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            let w = output::copy_file(src, dest, f.mode).map_err(|e| e.to_string())?;
            check(&w.sha256, w.size).map(|()| true)
        }
        Err(e) => Err(format!("{}: {e}", dest.display())),
    }
}

/// A stored file's identity and mtime as `store` left them. Stored files get an mtime
/// in the past (`STORED_AGE` before they were stored), so any later write, which sets
/// the mtime to the present, changes the stamp (even within one tick of the clock); a
/// file whose stamp is unchanged is not read again at a hit. The ctime is left out:
/// every hard link made at a hit changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// How far in the past a stored file's mtime is set.
const STORED_AGE: Duration = Duration::from_secs(2);

impl EntryStamp {
    fn of(m: &fs::Metadata) -> EntryStamp {
        use std::os::unix::fs::MetadataExt;
        EntryStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(m.mtime_nsec()),
        }
    }
}

/// One stored file of an entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredFile {
    pub name: String,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
    /// The file as stored ([`EntryStamp`]); `None`: always hashed at a hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<EntryStamp>,
}

/// `DIR/<key>/entry.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub schema: u32,
    pub key: String,
    pub name: String,
    pub target: beambake_recipe::Target,
    /// The bootable image's file name (for the build's result).
    pub image: String,
    pub files: Vec<StoredFile>,
}

/// What a lookup found.
pub enum Install {
    /// The entry's files, verified, are in the output set's staging dir: `verified`
    /// files, `hashed` of them read and hashed (the others' stamps were unchanged).
    Hit {
        meta: EntryMeta,
        verified: usize,
        hashed: usize,
    },
    Miss,
    /// The entry was unusable (the reason), has been removed, and nothing was installed.
    Corrupt(String),
}

/// An entry of `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub key: String,
    pub name: String,
    pub target: beambake_recipe::Target,
    pub size: u64,
    /// Seconds since the entry was last used (built or hit).
    pub unused_secs: u64,
}

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Puts the entry `key`'s files into `set`'s staging dir after checking each file's
    /// sha256 against the entry: hard links (entries are never modified; the files keep
    /// the modes the build gave them), copies when the cache is on another file system.
    /// Any mismatch or read error: what was put there is removed, the entry is removed,
    /// and [`Install::Corrupt`] says why.
    pub fn install(&self, key: &str, set: &OutputSet) -> Install {
        let entry = self.dir.join(key);
        let meta_path = entry.join(ENTRY_FILE);
        let text = match fs::read_to_string(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Install::Miss,
            Err(e) => return self.corrupt(key, format!("{}: {e}", meta_path.display())),
        };
        let meta: EntryMeta = match serde_json::from_str(&text) {
            Ok(m) => m,
            Err(e) => return self.corrupt(key, format!("{}: {e}", meta_path.display())),
        };
        if meta.key != key || meta.schema != SCHEMA {
            return self.corrupt(
                key,
                format!("{}: not this key's entry", meta_path.display()),
            );
        }
        let mut placed = Vec::new();
        let mut hashed = 0;
        for f in &meta.files {
            let src = entry.join(FILES_DIR).join(&f.name);
            let dest = set.dir().join(&f.name);
            match place(f, &src, &dest) {
                Ok(h) => hashed += usize::from(h),
                Err(p) => {
                    if dest.exists() {
                        placed.push(dest);
                    }
                    for c in &placed {
                        let _ = fs::remove_file(c);
                    }
                    return self.corrupt(key, p);
                }
            }
            placed.push(dest);
        }
        let _ = File::open(&meta_path).and_then(|f| f.set_modified(SystemTime::now()));
        let verified = meta.files.len();
        Install::Hit {
            meta,
            verified,
            hashed,
        }
    }

    fn corrupt(&self, key: &str, why: String) -> Install {
        let _ = self.remove(key);
        Install::Corrupt(why)
    }

    /// Removes the entry `key` (renamed away first: readers see all of it or nothing).
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        let entry = self.dir.join(key);
        let doomed = self.dir.join(format!(
            "{DOOMED_PREFIX}{key}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        match fs::rename(&entry, &doomed) {
            Ok(()) => fs::remove_dir_all(&doomed).map_err(io_err(&doomed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&entry)(e)),
        }
    }

    /// Stores the regular files of the staged set `staging` as the entry `key`. Returns
    /// false when another build stored the key first (its entry is kept) or the set has
    /// something other than regular files (not cached).
    pub fn store(
        &self,
        key: &str,
        recipe: &Recipe,
        image: &str,
        staging: &Path,
    ) -> Result<bool, Error> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let lock = File::open(tmp.path()).map_err(io_err(tmp.path()))?;
        lock.try_lock().map_err(|e| io_err(tmp.path())(e.into()))?;
        let files_dir = tmp.path().join(FILES_DIR);
        fs::create_dir(&files_dir).map_err(io_err(&files_dir))?;
        let mut files = Vec::new();
        for n in digest::sorted_names(staging).map_err(io_err(staging))? {
            let p = staging.join(&n);
            let m = fs::symlink_metadata(&p).map_err(io_err(&p))?;
            let Some(name) = n.to_str().filter(|_| m.is_file()) else {
                return Ok(false);
            };
            use std::os::unix::fs::PermissionsExt;
            let mode = m.permissions().mode() & 0o7777;
            let dest = files_dir.join(name);
            let w = output::copy_file(&p, &dest, mode)?;
            let past = SystemTime::now() - STORED_AGE;
            let stamp = File::open(&dest)
                .and_then(|f| {
                    f.set_modified(past)?;
                    f.metadata()
                })
                .map_err(io_err(&dest))?;
            files.push(StoredFile {
                name: name.to_string(),
                mode,
                size: w.size,
                sha256: w.sha256,
                stamp: Some(EntryStamp::of(&stamp)),
            });
        }
        let meta = EntryMeta {
            schema: SCHEMA,
            key: key.to_string(),
            name: recipe.name.clone(),
            target: recipe.target,
            image: image.to_string(),
            files,
        };
        let json = serde_json::to_string_pretty(&meta).unwrap_or_default();
        output::write_bytes(&tmp.path().join(ENTRY_FILE), json.as_bytes())?;
        let dest = self.dir.join(key);
        match fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                let _ = tmp.keep();
                if let Ok(d) = File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                Ok(true)
            }
            // Another build stored the key first: keep theirs (`tmp` is removed on drop).
            Err(e)
                if e.kind() == io::ErrorKind::DirectoryNotEmpty
                    || e.kind() == io::ErrorKind::AlreadyExists =>
            {
                Ok(false)
            }
            Err(e) => Err(io_err(&dest)(e)),
        }
    }

    /// The entries, least recently used first.
    pub fn list(&self) -> Result<Vec<Listed>, Error> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let meta_path = e.path().join(ENTRY_FILE);
            let Ok(text) = fs::read_to_string(&meta_path) else {
                continue;
            };
            let Ok(meta) = serde_json::from_str::<EntryMeta>(&text) else {
                continue;
            };
            let used = fs::metadata(&meta_path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(Listed {
                key: name,
                name: meta.name,
                target: meta.target,
                size: meta.files.iter().map(|f| f.size).sum(),
                unused_secs: SystemTime::now()
                    .duration_since(used)
                    .map_or(0, |d| d.as_secs()),
            });
        }
        out.sort_by(|a, b| b.unused_secs.cmp(&a.unused_secs).then(a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Removes the least recently used entries until the rest fit in `max_size` bytes;
    /// without a size, the entries unused for [`DEFAULT_MAX_AGE`]. Also removes temp dirs
    /// of dead builds and unreadable entries. Returns the entries removed.
    pub fn gc(&self, max_size: Option<u64>) -> Result<Vec<Listed>, Error> {
        self.remove_leftovers()?;
        let entries = self.list()?;
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for e in entries {
            let doomed = match max_size {
                Some(max) => total > max,
                None => e.unused_secs > DEFAULT_MAX_AGE.as_secs(),
            };
            if doomed {
                self.remove(&e.key)?;
                total -= e.size;
                removed.push(e);
            }
        }
        Ok(removed)
    }

    /// Temp dirs whose writer is gone, entries being removed, entries without a readable
    /// `entry.json`.
    fn remove_leftovers(&self) -> Result<(), Error> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for e in rd {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            if name == MEMO_FILE {
                continue;
            } else if name.starts_with(TEMP_PREFIX) {
                let free = File::open(&p).is_ok_and(|f| f.try_lock().is_ok());
                if free {
                    let _ = fs::remove_dir_all(&p);
                }
            } else if name.starts_with(DOOMED_PREFIX) {
                let _ = fs::remove_dir_all(&p);
            } else if serde_json::from_str::<EntryMeta>(
                &fs::read_to_string(p.join(ENTRY_FILE)).unwrap_or_default(),
            )
            .is_err()
            {
                self.remove(&name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn recipe(dir: &Path, text: &str) -> Recipe {
        fs::create_dir_all(dir).unwrap();
        let file = dir.join("r.toml");
        fs::write(&file, text).unwrap();
        Recipe::load(&file).unwrap()
    }

    const RECIPE: &str = "name = \"x\"\ntarget = \"microvm\"\n[release]\nsource = \"/rel\"\n\
                          [vm]\nmemory_mib = 256\ncpus = 1\n";

    /// A release dir with two files, `a` written with `a_content`.
    fn release_tree(root: &Path, a_content: &[u8]) -> beambake_images::rootfs::Tree {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/a"), a_content).unwrap();
        fs::write(root.join("b"), b"bee").unwrap();
        let mut t = beambake_images::rootfs::Tree::new(0);
        t.add_file(
            "/app/bin/a",
            beambake_images::rootfs::FileSource::Host(root.join("bin/a")),
            0o755,
            "release",
        )
        .unwrap();
        t.add_file(
            "/app/b",
            beambake_images::rootfs::FileSource::Host(root.join("b")),
            0o644,
            "release",
        )
        .unwrap();
        t.add_symlink("/app/l", "b", "release").unwrap();
        t
    }

    fn key_of(recipe: &Recipe, tree: &beambake_images::rootfs::Tree, release: &Path) -> String {
        let (rows, host_files) = beambake_release::manifest::file_table(tree, release).unwrap();
        describe_key(&Description {
            schema: SCHEMA,
            tool: env!("CARGO_PKG_VERSION"),
            init_sha256: digest::sha256_bytes(b"init"),
            target: recipe.target,
            recipe,
            plan_paths: vec![],
            mtime: tree.mtime(),
            release: ReleaseDesc {
                name: "x",
                vsn: "1",
                source: PathBuf::from("/rel"),
                source_sha256: "",
            },
            files: rows,
            host_files,
            kernel: &["pin sha".to_string()],
        })
    }

    #[test]
    fn the_key_depends_on_content_not_on_place_time_or_comments() {
        let d = tempfile::tempdir().unwrap();
        let r1 = recipe(&d.path().join("one"), RECIPE);
        let commented = format!(
            "# a comment\n{}\n# another\n",
            RECIPE.replace("cpus = 1", "cpus = 1 # one")
        );
        let r2 = recipe(&d.path().join("two/deeper"), &commented);
        let rel1 = d.path().join("rel1");
        let rel2 = d.path().join("rel2");
        let t1 = release_tree(&rel1, b"alpha");
        std::thread::sleep(Duration::from_millis(10));
        let t2 = release_tree(&rel2, b"alpha");
        let k1 = key_of(&r1, &t1, &rel1);
        assert_eq!(k1.len(), 64);
        assert_eq!(k1, key_of(&r2, &t2, &rel2));

        let rel3 = d.path().join("rel3");
        let t3 = release_tree(&rel3, b"alphb");
        assert_ne!(k1, key_of(&r1, &t3, &rel3), "one byte of a release file");
        let r3 = recipe(&d.path().join("three"), &RECIPE.replace("256", "257"));
        assert_ne!(k1, key_of(&r3, &t1, &rel1), "a recipe value");
    }

    /// A staged set of two files stored under a key.
    fn stored(d: &Path) -> (Cache, Recipe, String) {
        let cache = Cache::new(d.join("builds"));
        let staging = d.join("staging");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("x.cpio.zst"), b"image bytes").unwrap();
        fs::write(staging.join("boot.json"), b"{}").unwrap();
        let r = recipe(&d.join("r"), RECIPE);
        let key = "k".repeat(64);
        assert!(cache.store(&key, &r, "x.cpio.zst", &staging).unwrap());
        assert!(
            !cache.store(&key, &r, "x.cpio.zst", &staging).unwrap(),
            "second store loses"
        );
        (cache, r, key)
    }

    #[test]
    fn an_entry_is_verified_as_it_is_installed_and_removed_when_corrupt() {
        let d = tempfile::tempdir().unwrap();
        let (cache, _, key) = stored(d.path());
        let out = d.path().join("out");
        let set = OutputSet::begin(&out, "x").unwrap();
        match cache.install(&key, &set) {
            Install::Hit {
                meta,
                verified,
                hashed,
            } => {
                assert_eq!(verified, 2);
                assert_eq!(hashed, 0, "unchanged since stored: stamps suffice");
                assert_eq!(meta.image, "x.cpio.zst");
            }
            _ => panic!("expected a hit"),
        }
        assert_eq!(
            fs::read(set.dir().join("x.cpio.zst")).unwrap(),
            b"image bytes"
        );
        drop(set);

        let f = cache.dir().join(&key).join("files/x.cpio.zst");
        let mut p = fs::metadata(&f).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o644);
        fs::set_permissions(&f, p).unwrap();
        fs::write(&f, b"image bytez").unwrap();
        let set = OutputSet::begin(&out, "x").unwrap();
        match cache.install(&key, &set) {
            Install::Corrupt(why) => assert!(why.contains("x.cpio.zst"), "{why}"),
            _ => panic!("expected corrupt"),
        }
        assert_eq!(
            fs::read_dir(set.dir()).unwrap().count(),
            0,
            "nothing installed"
        );
        assert!(!cache.dir().join(&key).exists(), "entry removed");
        assert!(matches!(cache.install(&key, &set), Install::Miss));
    }

    #[test]
    fn ls_and_gc() {
        let d = tempfile::tempdir().unwrap();
        let (cache, _, key) = stored(d.path());
        let l = cache.list().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].key, key);
        assert_eq!(l[0].size, 13);
        assert!(cache.gc(None).unwrap().is_empty(), "fresh entries stay");
        assert_eq!(cache.gc(Some(0)).unwrap().len(), 1);
        assert!(cache.list().unwrap().is_empty());
    }
}
