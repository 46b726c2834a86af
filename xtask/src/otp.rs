//! `cargo xtask otp-src`: Debian's OTP source package (`apt-get source erlang`, the OTP the
//! host's erlang packages are built from), unpacked with `dpkg-source -x` into
//! `~/.cache/beambake/otp-src/<version>/` (Debian's patches applied: the tree beambake's
//! patch sets are written against). Enables `deb-src` for the machine's own Debian mirror
//! (a copy of its `deb` entries) when no source list exists. Prints the tree's path.
//!
//! `cargo xtask otp-build --set NAME`: a copy of that tree with beambake's patch set
//! applied by `beambake patch apply`, configured with PIE flags and built as far as erts.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

fn cache() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|p| Path::new(p).is_absolute()) {
        return PathBuf::from(x).join("beambake");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/beambake")
}

const SRC_LIST: &str = "/etc/apt/sources.list.d/beambake-src.sources";

/// Adds deb-src entries mirroring the machine's deb entries, unless some exist already.
fn ensure_deb_src(sh: &Shell) -> Result<()> {
    let mut texts = vec![];
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let name = p.to_string_lossy().into_owned();
                if name.ends_with(".sources") || name.ends_with(".list") {
                    texts.push((name, fs::read_to_string(&p).unwrap_or_default()));
                }
            }
        }
    }
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(("/etc/apt/sources.list".into(), t));
    }
    let has_src = texts.iter().any(|(_, t)| {
        t.lines().any(|l| {
            let l = l.trim();
            l.starts_with("deb-src ") || (l.starts_with("Types:") && l.contains("deb-src"))
        })
    });
    if has_src {
        return Ok(());
    }
    let mut out =
        String::from("# Written by `cargo xtask otp-src`: source packages from the same mirror.\n");
    for (name, t) in &texts {
        if name.ends_with(".sources") {
            // deb822 stanzas: copy the Debian ones with Types: deb-src.
            for stanza in t.split("\n\n") {
                if stanza.lines().any(|l| l.trim() == "Types: deb") && stanza.contains("debian") {
                    for l in stanza.lines() {
                        if l.trim_start().starts_with('#') {
                            continue;
                        }
                        if l.trim() == "Types: deb" {
                            out.push_str("Types: deb-src\n");
                        } else {
                            out.push_str(l);
                            out.push('\n');
                        }
                    }
                    out.push('\n');
                }
            }
        }
    }
    if !out.contains("Types: deb-src") {
        bail!("no Debian `deb` entry found in /etc/apt to derive a `deb-src` entry from; add one for erlang's source package");
    }
    fs::write(SRC_LIST, out).with_context(|| SRC_LIST.to_string())?;
    eprintln!("xtask: enabled source packages in {SRC_LIST}");
    cmd!(sh, "apt-get update -q").run()?;
    Ok(())
}

/// The unpacked OTP source tree (fetched and unpacked on first use).
pub fn otp_src(sh: &Shell) -> Result<PathBuf> {
    let base = cache().join("otp-src");
    fs::create_dir_all(&base)?;
    // The version the host's erlang is built from.
    let fmt = "${Version}";
    let version = cmd!(sh, "dpkg-query -W -f={fmt} erlang-base")
        .quiet()
        .read()
        .context("erlang-base is not installed (apt-get install erlang-nox)")?;
    let version = version.trim().trim_start_matches("1:").to_string();
    let tree = base.join(&version);
    if tree.join("OTP_VERSION").is_file() {
        println!("{}", tree.display());
        return Ok(tree);
    }
    ensure_deb_src(sh)?;
    let dl = base.join(format!(".download-{version}"));
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    {
        let _d = sh.push_dir(&dl);
        let spec = format!("erlang=1:{version}");
        if cmd!(sh, "apt-get source --download-only {spec}")
            .quiet()
            .run()
            .is_err()
        {
            cmd!(sh, "apt-get update -q").run()?;
            cmd!(sh, "apt-get source --download-only {spec}").run()?;
        }
        let dsc = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "dsc"))
            .context("apt-get source left no .dsc")?;
        let tmp = base.join(format!(".unpack-{version}"));
        let _ = fs::remove_dir_all(&tmp);
        cmd!(sh, "dpkg-source --no-check -x {dsc} {tmp}")
            .quiet()
            .ignore_stdout()
            .run()?;
        fs::rename(&tmp, &tree)?;
    }
    let _ = fs::remove_dir_all(&dl);
    println!("{}", tree.display());
    Ok(tree)
}

/// `CFLAGS` defines and extra configure arguments per set (patches/otp/25/README.md).
fn build_flags(set: &str) -> Result<(&'static str, &'static [&'static str])> {
    Ok(match set {
        // -fPIC rather than the -fPIE of a real OSv build: the proof relinks beam.smp and
        // erlexec as shared objects, and glibc will not dlopen a PIE (OSv does).
        // No JIT: its signal-stack code calls dlsym(RTLD_NEXT, "__sigaction"), which OSv
        // cannot resolve. No termcap: OSv's libc lacks what libtinfo needs (tdelete, twalk).
        "osv" => (
            "-O2 -fPIC -DBEAMBAKE_NO_FORK -DBEAMBAKE_ERLEXEC_IN_PROCESS -DBEAMBAKE_EPMD_THREAD",
            &["--disable-jit", "--without-termcap"],
        ),
        // Cross-built with the rumprun toolchain (see `rumprun_cross_args`): no fork, no
        // address-space reservation (rumprun's mmap hands out memory at once).
        "rumprun" => (
            "-O2 -DBEAMBAKE_NO_FORK -DBEAMBAKE_NO_VIRTUAL_MEMORY",
            &[
                // The JIT needs what a unikernel without signals and W^X games lacks.
                "--disable-jit",
                "--without-termcap",
                // No OpenSSL is cross-built for rumprun: no crypto, ssl, ssh.
                "--without-ssl",
                // The socket NIF needs Linux's in_pktinfo.ipi_spec_dst; gen_tcp and
                // gen_udp use the inet driver, which is built in.
                "--disable-esock",
                // No dlopen: every driver linked into beam.smp.
                "--enable-static-drivers",
                // gcc 12 turns _Float16 conversions into libgcc calls (__truncdfhf2)
                // that rumprun's libgcc lacks; OTP's software half floats instead.
                "ac_cv_sizeof__Float16=0",
                // NetBSD has kqueue; configure cannot test it when cross-compiling.
                "erl_xcomp_kqueue=yes",
            ],
        ),
        "common" => ("-O2 -DBEAMBAKE_NO_FORK", &[]),
        other => bail!("no build settings for set {other:?} (osv, rumprun, common)"),
    })
}

/// The rumprun toolchain, built by beambake from the pinned snapshot (or found in the
/// cache): its dir (`bin/`, `rumprun-x86_64/`).
pub fn rumprun_toolchain(sh: &Shell, root: &Path) -> Result<PathBuf> {
    cmd!(sh, "cargo build -q -p beambake").run()?;
    let bb = root.join("target/debug/beambake");
    let snapshot = root.join("../shared/sources/rumprun-src.tar.xz");
    let dir = cmd!(sh, "{bb} toolchain rumprun --source {snapshot}")
        .read()
        .context("beambake toolchain rumprun")?;
    Ok(PathBuf::from(dir.trim()))
}

/// `otp-build --set NAME`: a fresh copy of the source with `common` and the set applied by
/// `beambake patch apply`, configured with the set's defines, erts built (`make
/// erl_interface` for erl_call, then `make emulator`: beam.smp, erlexec, epmd). Prints the
/// tree and how long each step took. Reuses a finished build of the same patches.
pub fn otp_build(sh: &Shell, root: &Path, set: &str) -> Result<PathBuf> {
    let (cflags, extra) = build_flags(set)?;
    let src = otp_src(sh)?;
    let patches = root.join("patches");
    // rumprun: a cross build with the toolchain beambake builds (its dir, hence its key,
    // is part of this build's key).
    let toolchain = if set == "rumprun" {
        Some(rumprun_toolchain(sh, root)?)
    } else {
        None
    };
    // The build is reused while the patches, flags and toolchain are unchanged.
    let mut key = format!("{cflags}{extra:?}{toolchain:?}");
    for s in ["common", set] {
        let dir = patches.join("otp/25").join(s);
        if let Ok(rd) = fs::read_dir(&dir) {
            let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            names.sort();
            for n in names {
                key.push_str(&fs::read_to_string(&n).unwrap_or_default());
            }
        }
    }
    let stamp_text = format!("{:x}\n", fnv(key.as_bytes()));
    let work = cache().join("otp-build").join(set);
    let stamp = work.join(".beambake-built");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        println!("{}", work.display());
        return Ok(work);
    }
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.parent().context("cache dir")?)?;
    cmd!(sh, "cp -a {src} {work}").run()?;
    cmd!(sh, "cargo build -q -p beambake").run()?;
    let bb = root.join("target/debug/beambake");
    cmd!(
        sh,
        "{bb} patch apply --otp-src {work} --set {set} --patches {patches}"
    )
    .run()?;
    let _d = sh.push_dir(&work);
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .to_string();
    let t = std::time::Instant::now();
    let cf = format!("CFLAGS={cflags}");
    let cxx = if cflags.contains("-fPIC") {
        "CXXFLAGS=-O2 -fPIC"
    } else {
        "CXXFLAGS=-O2"
    };
    let without = [
        "--without-javac",
        "--without-wx",
        "--without-odbc",
        "--without-jinterface",
        "--without-megaco",
        "--without-debugger",
        "--without-observer",
        "--without-et",
        "--without-reltool",
    ];
    // The cross build: rumprun's compiler wrappers on PATH, its sysroot for configure.
    let path = match &toolchain {
        Some(tc) => format!(
            "{}:{}",
            tc.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        ),
        None => std::env::var("PATH").unwrap_or_default(),
    };
    let cross: Vec<String> = match &toolchain {
        Some(tc) => vec![
            format!("--host={RUMPRUN_TUPLE}"),
            "--build=x86_64-pc-linux-gnu".into(),
            format!("erl_xcomp_sysroot={}", tc.join("rumprun-x86_64").display()),
        ],
        // Native: position-independent, as OSv loads programs.
        None => vec!["LDFLAGS=-pie".into()],
    };
    cmd!(
        sh,
        "./configure {cf} {cxx} {without...} {cross...} {extra...}"
    )
    .env("ERL_TOP", &work)
    .env("PATH", &path)
    .quiet()
    .ignore_stdout()
    .run()?;
    let configure_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    if toolchain.is_some() {
        // The emulator alone (beam.smp: what rumprun-bake bakes); the rest of erts is
        // programs a unikernel cannot start, and the .beam files come from the release.
        let target = format!("TARGET={RUMPRUN_TUPLE}");
        cmd!(sh, "make -j{jobs} -C erts/emulator opt {target}")
            .env("ERL_TOP", &work)
            .env("PATH", &path)
            .quiet()
            .ignore_stdout()
            .run()?;
    } else {
        cmd!(sh, "make -j{jobs} erl_interface")
            .env("ERL_TOP", &work)
            .quiet()
            .ignore_stdout()
            .run()?;
        cmd!(sh, "make -j{jobs} emulator")
            .env("ERL_TOP", &work)
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    eprintln!(
        "xtask: otp-build {set}: configure {configure_s:.0} s, make {:.0} s ({})",
        t.elapsed().as_secs_f64(),
        work.display()
    );
    fs::write(
        work.join(".beambake-build-seconds"),
        format!("{:.1}\n", configure_s + t.elapsed().as_secs_f64()),
    )?;
    fs::write(&stamp, stamp_text)?;
    println!("{}", work.display());
    Ok(work)
}

/// The programs of an OSv ERTS (`erts-VSN/bin`): erlexec (which runs epmd as a thread and
/// the emulator in-process), the emulator, and the rest a release's ERTS carries.
const OSV_ERTS_PROGRAMS: &[&str] = &[
    "erlexec",
    "beam.smp",
    "epmd",
    "inet_gethost",
    "erl_child_setup",
    "heart",
];

/// The osv build (`otp-build --set osv`) installed as a release's ERTS:
/// `BUILD/beambake-erts/erts-VSN/bin`, the tree a recipe's `release.erts_from` names.
/// Also links it at `ROOT/target/otp-osv` (the repository's osv recipes name that).
pub fn osv_erts(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let tree = otp_build(sh, root, "osv")?;
    let vsn_mk = tree.join("erts/vsn.mk");
    let text = fs::read_to_string(&vsn_mk).with_context(|| vsn_mk.display().to_string())?;
    let vsn = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("VSN")
                .map(|v| v.trim_start_matches([' ', '=']).trim())
        })
        .filter(|v| !v.is_empty())
        .with_context(|| format!("{}: no VSN", vsn_mk.display()))?;
    let install = tree.join("beambake-erts");
    let bin = install.join(format!("erts-{vsn}/bin"));
    let _ = fs::remove_dir_all(&install);
    fs::create_dir_all(&bin)?;
    let built = tree.join("bin/x86_64-pc-linux-gnu");
    for p in OSV_ERTS_PROGRAMS {
        fs::copy(built.join(p), bin.join(p))
            .with_context(|| built.join(p).display().to_string())?;
    }
    let link = root.join("target/otp-osv");
    fs::create_dir_all(root.join("target"))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&install, &link).with_context(|| link.display().to_string())?;
    println!(
        "xtask: OSv ERTS erts-{vsn} at {} (linked as {})",
        install.display(),
        link.display()
    );
    Ok(install)
}

/// The rumprun compiler's target triple.
const RUMPRUN_TUPLE: &str = "x86_64-rumprun-netbsd";

/// The rumprun build (`otp-build --set rumprun`): its `beam.smp`, the unbaked BEAM
/// `rumprun-bake hw_virtio` takes, copied to `BUILD/beambake-rumprun/beam` and linked at
/// `ROOT/target/otp-rumprun` (the repository's rumprun recipes name `beam` there).
pub fn rumprun_beam(sh: &Shell, root: &Path) -> Result<PathBuf> {
    let tree = otp_build(sh, root, "rumprun")?;
    let built = tree.join(format!("bin/{RUMPRUN_TUPLE}/beam.smp"));
    let install = tree.join("beambake-rumprun");
    let _ = fs::remove_dir_all(&install);
    fs::create_dir_all(&install)?;
    fs::copy(&built, install.join("beam")).with_context(|| built.display().to_string())?;
    let link = root.join("target/otp-rumprun");
    fs::create_dir_all(root.join("target"))?;
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&install, &link).with_context(|| link.display().to_string())?;
    println!(
        "xtask: rumprun BEAM at {} (linked as {})",
        install.join("beam").display(),
        link.display()
    );
    Ok(install)
}

/// `otp-prove`: the osv build's epmd-as-thread proof (xtask/otp/prove-epmd-thread.sh):
/// erlexec runs epmd on a thread and the emulator in-process, no epmd process exists, and
/// Debian's erl pings the node. True when every check passed.
pub fn otp_prove(sh: &Shell, root: &Path) -> Result<bool> {
    let tree = otp_build(sh, root, "osv")?;
    let script = root.join("xtask/otp/prove-epmd-thread.sh");
    let ok = std::process::Command::new("bash")
        .arg(&script)
        .arg(&tree)
        .status()
        .with_context(|| script.display().to_string())?
        .success();
    Ok(ok)
}

/// FNV-1a, for a build stamp (not security).
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}
