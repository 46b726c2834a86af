//! The release model: what an OTP release directory is, read from its own files.
//!
//! Owns: discovery of a release's name, version, ERTS (bundled, or the host's when the
//! release was built with `include_erts false`), applications, boot script, `sys.config`,
//! `vm.args` and native binaries, from `releases/start_erl.data`, `releases/RELEASES`,
//! `releases/VSN/NAME.rel` (parsed with [`crate::term`]). Works for relx (rebar3) and
//! `mix release` layouts.
//!
//! Must not: build anything, run rebar3, unpack archives (see [`crate::source`]) or decide
//! the guest layout (see [`crate::assemble`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::term::{self, Term};
use beambake_images::rootfs::LinkPolicy;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: not an OTP release: {reason}")]
    NotARelease { path: PathBuf, reason: String },
    #[error("{path}: {message}")]
    Garbled { path: PathBuf, message: String },
    #[error("{path}:{}:{}: {}", .error.line, .error.column, .error.message)]
    Parse {
        path: PathBuf,
        error: term::ParseError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: the release needs ERTS {needed}, but {}/erts-{needed} does not exist (not bundled), and no host Erlang/OTP was found (install erlang-nox, or pass --otp-root DIR)", .release.display(), .release.display())]
    NoHostOtp { release: PathBuf, needed: String },
    #[error("{}: the release needs ERTS {needed}, but {}/erts-{needed} does not exist (not bundled), and the host Erlang/OTP at {root} has {found} (rebuild the release with include_erts true, or use a matching OTP with --otp-root)", .release.display(), .release.display())]
    HostErtsMismatch {
        release: PathBuf,
        needed: String,
        root: PathBuf,
        found: String,
    },
    #[error("{rel}: application {app}-{vsn} is neither in the release ({in_release}) nor in the host OTP ({in_host})")]
    MissingApp {
        rel: PathBuf,
        app: String,
        vsn: String,
        in_release: PathBuf,
        in_host: String,
    },
}

type Result<T> = std::result::Result<T, ReleaseError>;

/// Which tool built the release (they start differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    Relx,
    Mix,
}

#[derive(Debug, Clone, Serialize)]
pub struct Erts {
    pub vsn: String,
    /// Host directory `erts-VSN` (its `bin/` holds erlexec, beam.smp, ...).
    pub dir: PathBuf,
    /// True when the release ships it; false when it comes from the host OTP.
    pub bundled: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct App {
    pub name: String,
    pub vsn: String,
    /// Host directory `NAME-VSN`.
    pub dir: PathBuf,
    pub bundled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NativeKind {
    /// An executable of the ERTS (`beam.smp`, `erlexec`, `epmd`, ...).
    ErtsExecutable,
    /// A shared object under an application (a NIF or a linked-in driver).
    NifOrDriver,
    /// An executable under an application's `priv` (a port program).
    PortProgram,
}

#[derive(Debug, Clone, Serialize)]
pub struct Native {
    /// Path relative to the release root as it will be laid out (`erts-X/bin/beam.smp`).
    pub path: String,
    pub host: PathBuf,
    pub kind: NativeKind,
}

/// A discovered release. Paths ending in `rel` are relative to the release root.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub root: PathBuf,
    pub flavor: Flavor,
    pub name: String,
    pub vsn: String,
    pub erts: Erts,
    pub apps: Vec<App>,
    /// Boot script without the `.boot` suffix, relative (`releases/0.1.0/start`).
    pub boot_rel: String,
    pub sys_config_rel: Option<String>,
    pub vm_args_rel: Option<String>,
    /// `vm.args` split into arguments the way erlexec reads an args file.
    pub vm_args: Vec<String>,
    /// Host OTP root used for anything the release does not bundle.
    pub host_otp: Option<PathBuf>,
    pub natives: Vec<Native>,
}

/// Options for discovery.
#[derive(Debug, Clone, Default)]
pub struct Discover {
    /// Host OTP root (`/usr/lib/erlang`); found through `erl` on `PATH` when `None`.
    pub otp_root: Option<PathBuf>,
}

impl Release {
    pub fn discover(root: &Path, opts: &Discover) -> Result<Release> {
        let releases = root.join("releases");
        if !releases.is_dir() {
            return Err(ReleaseError::NotARelease {
                path: root.to_path_buf(),
                reason: "no releases/ directory".into(),
            });
        }
        let start_erl = releases.join("start_erl.data");
        let releases_file = releases.join("RELEASES");
        let from_start_erl = if start_erl.exists() {
            Some(read_start_erl(&start_erl)?)
        } else {
            None
        };
        let from_releases = if releases_file.exists() {
            Some(read_releases(&releases_file)?)
        } else {
            None
        };
        let (erts_vsn, vsn) = match (&from_start_erl, &from_releases) {
            (Some((e, v)), _) => (e.clone(), v.clone()),
            (None, Some(entries)) => {
                let pick = entries
                    .iter()
                    .find(|r| r.status == "permanent")
                    .or(entries.last())
                    .ok_or_else(|| ReleaseError::Garbled {
                        path: releases_file.clone(),
                        message: "lists no release".into(),
                    })?;
                (pick.erts_vsn.clone(), pick.vsn.clone())
            }
            (None, None) => {
                return Err(ReleaseError::NotARelease {
                    path: root.to_path_buf(),
                    reason: "neither releases/start_erl.data nor releases/RELEASES exists".into(),
                })
            }
        };
        let vsn_dir = releases.join(&vsn);
        if !vsn_dir.is_dir() {
            let from = if from_start_erl.is_some() {
                &start_erl
            } else {
                &releases_file
            };
            return Err(ReleaseError::Garbled {
                path: from.clone(),
                message: format!(
                    "names release version {vsn}, but {} does not exist",
                    vsn_dir.display()
                ),
            });
        }
        let rel_file = find_rel_file(&vsn_dir, from_releases.as_deref(), &vsn)?;
        let rel = read_rel(&rel_file)?;
        if rel.vsn != vsn {
            return Err(ReleaseError::Garbled {
                path: rel_file,
                message: format!("release version {} differs from {vsn}", rel.vsn),
            });
        }
        if rel.erts_vsn != erts_vsn {
            return Err(ReleaseError::Garbled {
                path: rel_file,
                message: format!(
                    "needs ERTS {}, but releases/start_erl.data says {erts_vsn}",
                    rel.erts_vsn
                ),
            });
        }
        let flavor = if vsn_dir.join("elixir").exists() || releases.join("COOKIE").exists() {
            Flavor::Mix
        } else {
            Flavor::Relx
        };

        let mut host_otp = opts.otp_root.clone();
        let bundled_erts = root.join(format!("erts-{erts_vsn}"));
        let erts = if bundled_erts.join("bin").is_dir() {
            Erts {
                vsn: erts_vsn.clone(),
                dir: bundled_erts,
                bundled: true,
            }
        } else {
            let otp = match host_otp.clone().or_else(find_host_otp) {
                Some(p) => p,
                None => {
                    return Err(ReleaseError::NoHostOtp {
                        release: root.to_path_buf(),
                        needed: erts_vsn,
                    })
                }
            };
            host_otp = Some(otp.clone());
            let dir = otp.join(format!("erts-{erts_vsn}"));
            if !dir.join("bin").is_dir() {
                return Err(ReleaseError::HostErtsMismatch {
                    release: root.to_path_buf(),
                    needed: erts_vsn,
                    found: list_erts(&otp),
                    root: otp,
                });
            }
            Erts {
                vsn: erts_vsn.clone(),
                dir,
                bundled: false,
            }
        };

        let mut apps = Vec::new();
        for (name, avsn) in &rel.apps {
            let local = root.join("lib").join(format!("{name}-{avsn}"));
            if local.is_dir() {
                apps.push(App {
                    name: name.clone(),
                    vsn: avsn.clone(),
                    dir: local,
                    bundled: true,
                });
                continue;
            }
            if host_otp.is_none() {
                host_otp = find_host_otp();
            }
            let host_dir = host_otp
                .as_ref()
                .map(|o| o.join("lib").join(format!("{name}-{avsn}")));
            match host_dir {
                Some(d) if d.is_dir() => apps.push(App {
                    name: name.clone(),
                    vsn: avsn.clone(),
                    dir: d,
                    bundled: false,
                }),
                other => {
                    return Err(ReleaseError::MissingApp {
                        rel: rel_file,
                        app: name.clone(),
                        vsn: avsn.clone(),
                        in_release: local,
                        in_host: other
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "no host OTP found".into()),
                    })
                }
            }
        }

        let rel_vsn = format!("releases/{vsn}");
        let boot_rel = [
            format!("{rel_vsn}/{}", rel.name),
            format!("{rel_vsn}/start"),
        ]
        .into_iter()
        .find(|b| root.join(format!("{b}.boot")).is_file())
        .ok_or_else(|| ReleaseError::Garbled {
            path: vsn_dir.clone(),
            message: format!("no boot script ({}.boot or start.boot)", rel.name),
        })?;
        let sys_config_rel = config_file(root, &rel_vsn, "sys.config")?;
        if let Some(sc) = &sys_config_rel {
            check_sys_config(&root.join(sc))?;
        }
        let vm_args_rel = config_file(root, &rel_vsn, "vm.args")?;
        let vm_args = match &vm_args_rel {
            Some(v) => {
                let p = root.join(v);
                parse_args_file(&read_text(&p)?)
            }
            None => Vec::new(),
        };

        let mut natives = Vec::new();
        let erts_rel = format!("erts-{erts_vsn}");
        collect_natives(
            &erts.dir.join("bin"),
            &format!("{erts_rel}/bin"),
            NativeKind::ErtsExecutable,
            &mut natives,
        )?;
        for app in &apps {
            let lay = format!("lib/{}-{}", app.name, app.vsn);
            collect_natives(&app.dir, &lay, NativeKind::PortProgram, &mut natives)?;
        }
        natives.sort_by(|a, b| a.path.cmp(&b.path));

        Ok(Release {
            root: root.to_path_buf(),
            flavor,
            name: rel.name,
            vsn,
            erts,
            apps,
            boot_rel,
            sys_config_rel,
            vm_args_rel,
            vm_args,
            host_otp,
            natives,
        })
    }

    /// Where the release's symlinks may lead when it is copied into an image: into the
    /// host OTP root (a dev-mode or `system_libs false` release links its system
    /// applications there; that root's own links that leave it are skipped), and, when the
    /// release is a rebar3 project's build output (`PROJECT/_build/PROFILE/rel/NAME`), into
    /// that project's `_build/PROFILE/lib`, `_checkouts`, application source dirs (`apps`,
    /// `lib`, `src`, `include`, `priv`, `c_src`) and `config`, and the directories of the
    /// `sys.config`/`vm.args` the release names (a `{mode, dev}` release is made of such
    /// links). Nowhere else.
    pub fn link_policy(&self) -> LinkPolicy {
        let mut policy = LinkPolicy::default();
        let canon = |p: &Path| fs::canonicalize(p).ok();
        if let Some(otp) = self
            .host_otp
            .clone()
            .or_else(find_host_otp)
            .as_deref()
            .and_then(canon)
        {
            policy.follow.push((
                otp.clone(),
                "the OTP installation's system applications".into(),
            ));
            policy.lenient.push(otp);
        }
        if let Some(project) = self.project_dir() {
            let profile_lib = canon(self.root.as_path())
                .and_then(|r| r.parent()?.parent().map(|p| p.join("lib")));
            let dirs = profile_lib
                .into_iter()
                .chain(
                    [
                        "_checkouts",
                        "apps",
                        "lib",
                        "src",
                        "include",
                        "priv",
                        "c_src",
                        "config",
                    ]
                    .iter()
                    .map(|d| project.join(d)),
                )
                .chain(
                    [&self.sys_config_rel, &self.vm_args_rel]
                        .into_iter()
                        .flatten()
                        .filter_map(|f| canon(&self.root.join(f))?.parent().map(Path::to_path_buf))
                        .filter(|d| d.starts_with(&project)),
                );
            for d in dirs.filter_map(|d| canon(&d)) {
                let why = format!(
                    "the rebar3 project {} that built this release (dev mode)",
                    project.display()
                );
                policy.follow.push((d, why));
            }
        }
        policy
    }

    /// `PROJECT` when the release lives at `PROJECT/_build/PROFILE/rel/NAME` and
    /// `PROJECT/rebar.config` exists (canonical).
    pub fn project_dir(&self) -> Option<PathBuf> {
        let root = fs::canonicalize(&self.root).ok()?;
        let rel = root.parent()?;
        let build = rel.parent()?.parent()?;
        let project = build.parent()?;
        (rel.file_name()? == "rel"
            && build.file_name()? == "_build"
            && project.join("rebar.config").is_file())
        .then(|| project.to_path_buf())
    }

    /// The value of a `vm.args` flag (`-name`, `-sname`, `-setcookie`).
    pub fn vm_arg(&self, flag: &str) -> Option<&str> {
        self.vm_args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
    }
}

fn read_text(p: &Path) -> Result<String> {
    let bytes = fs::read(p).map_err(|source| ReleaseError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| ReleaseError::Garbled {
        path: p.to_path_buf(),
        message: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })
}

fn read_terms(p: &Path) -> Result<Vec<Term>> {
    let text = read_text(p)?;
    term::parse_terms(&text).map_err(|error| ReleaseError::Parse {
        path: p.to_path_buf(),
        error,
    })
}

/// `releases/start_erl.data`: "ERTS_VSN REL_VSN".
fn read_start_erl(p: &Path) -> Result<(String, String)> {
    let text = read_text(p)?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [erts, rel] if valid_vsn(erts) && valid_vsn(rel) => Ok((erts.to_string(), rel.to_string())),
        _ => Err(ReleaseError::Garbled {
            path: p.to_path_buf(),
            message: format!(
                "expected \"ERTS_VSN RELEASE_VSN\" (e.g. \"13.1.5 0.1.0\"), found {:?}",
                text.chars().take(80).collect::<String>()
            ),
        }),
    }
}

fn valid_vsn(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        && !s.starts_with('.')
}

struct ReleasesEntry {
    name: String,
    vsn: String,
    erts_vsn: String,
    status: String,
}

/// `releases/RELEASES`: `[{release, Name, Vsn, ErtsVsn, Apps, Status}, ...].`
fn read_releases(p: &Path) -> Result<Vec<ReleasesEntry>> {
    let terms = read_terms(p)?;
    let shape = |message: &str| ReleaseError::Garbled {
        path: p.to_path_buf(),
        message: message.to_string(),
    };
    let [list] = terms.as_slice() else {
        return Err(shape("expected exactly one term, a list of release tuples"));
    };
    let list = list
        .as_list()
        .ok_or_else(|| shape("expected a list of {release, Name, Vsn, ErtsVsn, Apps, Status}"))?;
    let mut out = Vec::new();
    for t in list {
        let f = t.as_tuple().unwrap_or(&[]);
        match f {
            [tag, name, vsn, erts, _apps, status, ..] if tag.as_atom() == Some("release") => {
                let s = |t: &Term, what: &str| {
                    t.as_string()
                        .filter(|v| valid_vsn(v))
                        .ok_or_else(|| shape(&format!("release {what} is not a valid string: {t}")))
                };
                out.push(ReleasesEntry {
                    name: s(name, "name")?,
                    vsn: s(vsn, "version")?,
                    erts_vsn: s(erts, "ERTS version")?,
                    status: status.as_atom().unwrap_or("").to_string(),
                });
            }
            _ => {
                return Err(shape(&format!(
                    "expected {{release, Name, Vsn, ErtsVsn, Apps, Status}}, found {t}"
                )))
            }
        }
    }
    Ok(out)
}

fn find_rel_file(vsn_dir: &Path, releases: Option<&[ReleasesEntry]>, vsn: &str) -> Result<PathBuf> {
    if let Some(entry) = releases.and_then(|r| r.iter().find(|e| e.vsn == vsn)) {
        let p = vsn_dir.join(format!("{}.rel", entry.name));
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut rels: Vec<PathBuf> = fs::read_dir(vsn_dir)
        .map_err(|source| ReleaseError::Io {
            path: vsn_dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rel"))
        .filter(|p| p.file_stem().is_some_and(|s| s != "start_clean"))
        .collect();
    rels.sort();
    match rels.len() {
        1 => Ok(rels.remove(0)),
        0 => Err(ReleaseError::NotARelease {
            path: vsn_dir.to_path_buf(),
            reason: "no NAME.rel file".into(),
        }),
        _ => Err(ReleaseError::Garbled {
            path: vsn_dir.to_path_buf(),
            message: format!(
                "several .rel files and no releases/RELEASES to choose: {}",
                rels.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

struct RelFile {
    name: String,
    vsn: String,
    erts_vsn: String,
    apps: Vec<(String, String)>,
}

/// `NAME.rel`: `{release, {Name, Vsn}, {erts, EVsn}, [{App, Vsn} | {App, Vsn, Type} | ...]}.`
fn read_rel(p: &Path) -> Result<RelFile> {
    let terms = read_terms(p)?;
    let shape = |message: String| ReleaseError::Garbled {
        path: p.to_path_buf(),
        message,
    };
    let expected = "expected {release, {Name, Vsn}, {erts, ErtsVsn}, [{App, Vsn}, ...]}";
    let [t] = terms.as_slice() else {
        return Err(shape(format!("{expected}: found {} terms", terms.len())));
    };
    let f = t.as_tuple().unwrap_or(&[]);
    let [tag, nv, erts, apps] = f else {
        return Err(shape(format!("{expected}, found {t}")));
    };
    if tag.as_atom() != Some("release") {
        return Err(shape(format!("{expected}, found {t}")));
    }
    let str_of = |t: &Term, what: &str| {
        t.as_string()
            .filter(|v| valid_vsn(v))
            .ok_or_else(|| shape(format!("{what} is not a valid string: {t}")))
    };
    let (name, vsn) = match nv.as_tuple() {
        Some([n, v]) => (str_of(n, "release name")?, str_of(v, "release version")?),
        _ => return Err(shape(format!("expected {{Name, Vsn}}, found {nv}"))),
    };
    let erts_vsn = match erts.as_tuple() {
        Some([e, v]) if e.as_atom() == Some("erts") => str_of(v, "ERTS version")?,
        _ => return Err(shape(format!("expected {{erts, Vsn}}, found {erts}"))),
    };
    let list = apps
        .as_list()
        .ok_or_else(|| shape(format!("expected a list of applications, found {apps}")))?;
    let mut out = Vec::new();
    for a in list {
        match a.as_tuple() {
            Some([n, v, ..]) if n.as_atom().is_some() => {
                let n = n.as_atom().unwrap_or_default().to_string();
                let v = str_of(v, &format!("version of {n}"))?;
                out.push((n, v));
            }
            _ => return Err(shape(format!("expected {{App, Vsn}}, found {a}"))),
        }
    }
    Ok(RelFile {
        name,
        vsn,
        erts_vsn,
        apps: out,
    })
}

/// `releases/VSN/NAME` if present; `NAME.src` alone (runtime variable substitution by the
/// start script) is reported, since no shell will render it in the guest.
fn config_file(root: &Path, rel_vsn: &str, name: &str) -> Result<Option<String>> {
    let rel = format!("{rel_vsn}/{name}");
    if root.join(&rel).is_file() {
        return Ok(Some(rel));
    }
    let src = root.join(format!("{rel}.src"));
    if src.is_file() {
        return Err(ReleaseError::Garbled {
            path: src,
            message: format!(
                "{name}.src needs the start script's runtime variable substitution, which an \
                 image without a shell cannot do; render {name} at release build time instead"
            ),
        });
    }
    Ok(None)
}

fn check_sys_config(p: &Path) -> Result<()> {
    let terms = read_terms(p)?;
    match terms.as_slice() {
        [t] if t.as_list().is_some() => Ok(()),
        _ => Err(ReleaseError::Garbled {
            path: p.to_path_buf(),
            message: "expected exactly one term, a list of {Application, [{Key, Value}]}".into(),
        }),
    }
}

/// Splits an args file the way erlexec reads it: whitespace separates, `#` starts a
/// comment to the end of the line, a backslash escapes the next character.
pub fn parse_args_file(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The host OTP root: `erl` on `PATH`, with symlinks resolved, is `ROOT/bin/erl`.
pub fn find_host_otp() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let erl = dir.join("erl");
        if erl.is_file() {
            let real = fs::canonicalize(&erl).ok()?;
            let root = real.parent()?.parent()?.to_path_buf();
            if root.join("lib").is_dir() {
                return Some(root);
            }
        }
    }
    None
}

fn list_erts(otp: &Path) -> String {
    let mut v: Vec<String> = fs::read_dir(otp)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("erts-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    if v.is_empty() {
        "no erts-* directory".into()
    } else {
        v.join(", ")
    }
}

fn collect_natives(
    dir: &Path,
    layout: &str,
    default_kind: NativeKind,
    out: &mut Vec<Native>,
) -> Result<()> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| ReleaseError::Io { path: p, source }
    };
    for n in beambake_images::digest::sorted_names(dir).map_err(io(dir))? {
        let p = dir.join(&n);
        let name = n.to_string_lossy();
        let meta = match fs::metadata(&p) {
            Ok(m) => m,
            // A dangling symlink (a dev-mode release links `include`/`priv` even when the
            // app has none): nothing native there; the copy skips and lists it.
            Err(e) if e.kind() == io::ErrorKind::NotFound && p.is_symlink() => continue,
            Err(e) => return Err(io(&p)(e)),
        };
        let lay = format!("{layout}/{name}");
        if meta.is_dir() {
            collect_natives(&p, &lay, default_kind, out)?;
        } else if meta.is_file() && crate::elf::is_elf(&p).map_err(io(&p))? {
            let kind = if default_kind == NativeKind::ErtsExecutable {
                default_kind
            } else if name.ends_with(".so") || name.contains(".so.") {
                NativeKind::NifOrDriver
            } else {
                NativeKind::PortProgram
            };
            out.push(Native {
                path: lay,
                host: p,
                kind,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_file_like_erlexec() {
        let a = parse_args_file(
            "## comment\n-sname echo # trailing\n-setcookie a\\ b\n+K true\n\n-env X \"y\"",
        );
        assert_eq!(
            a,
            [
                "-sname",
                "echo",
                "-setcookie",
                "a b",
                "+K",
                "true",
                "-env",
                "X",
                "\"y\""
            ]
        );
    }

    #[test]
    fn start_erl_data_shape() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("start_erl.data");
        fs::write(&p, "13.1.5 0.1.0\n").unwrap();
        assert_eq!(
            read_start_erl(&p).unwrap(),
            ("13.1.5".into(), "0.1.0".into())
        );
        for bad in [
            "",
            "13.1.5",
            "13.1.5 0.1.0 extra",
            "13.1.5 ../x",
            "\u{0}\u{1}",
        ] {
            fs::write(&p, bad).unwrap();
            let e = read_start_erl(&p).unwrap_err().to_string();
            assert!(e.contains("start_erl.data: expected"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn rel_file_errors_show_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.rel");
        fs::write(
            &p,
            "{release, {\"x\", \"1\"},\n  {erts, \"13\"}\n  [{kernel, \"8\"}]}.\n",
        )
        .unwrap();
        let e = read_rel(&p).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{}:3:3: ", p.display())), "{e}");
        fs::write(&p, "{release, x}.").unwrap();
        let e = read_rel(&p).err().unwrap().to_string();
        assert!(e.contains("expected {release, {Name, Vsn}"), "{e}");
    }
}
