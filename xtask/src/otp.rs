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

/// `otp-build --set NAME`: patched copy of the source, configured with PIE flags, erts
/// built. Prints the build tree and how long each step took.
pub fn otp_build(sh: &Shell, root: &Path, set: &str) -> Result<PathBuf> {
    let src = otp_src(sh)?;
    let work = cache().join("otp-build").join(set);
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.parent().context("cache dir")?)?;
    cmd!(sh, "cp -a {src} {work}").run()?;
    cmd!(sh, "cargo build -q -p beambake").run()?;
    let bb = root.join("target/debug/beambake");
    let patches = root.join("patches");
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
    cmd!(sh, "./configure --enable-pie --without-javac --without-wx --without-odbc --without-jinterface --without-megaco --without-debugger --without-observer --without-et --without-reltool --without-termcap")
        .env("ERL_TOP", &work)
        .env("CFLAGS", "-O2 -fPIE")
        .env("LDFLAGS", "-pie")
        .quiet()
        .ignore_stdout()
        .run()?;
    let configure_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    cmd!(sh, "make -j{jobs} emulator")
        .env("ERL_TOP", &work)
        .quiet()
        .ignore_stdout()
        .run()?;
    eprintln!(
        "xtask: otp-build {set}: configure {configure_s:.0} s, make emulator {:.0} s ({})",
        t.elapsed().as_secs_f64(),
        work.display()
    );
    println!("{}", work.display());
    Ok(work)
}
