//! `cargo xtask bench-boot`: boot to first answer and image bytes for three releases as
//! users make them — the echo example (rebar3, default profile), a prod-profile web
//! release with several OTP applications (`examples/web`: crypto, public_key, ssl,
//! inets' httpd; `rebar3 as prod release`) and an Elixir `mix release`
//! (`examples/echo_mix`) — each four ways, in one run: a naive image (Debian's cloud
//! kernel, busybox, a shell init, the release's start script, gzip), beambake on Debian's
//! kernel, beambake on its minimal kernel, and a restore from a snapshot of the latter.
//! Both beambake images use a traced boot script (`code_loading = "traced"`) and the
//! small-guest emulator flags (`small_guest = true`). Median of
//! [`RUNS`] boots under TCG, interleaved; the ratios are against each release's own naive
//! image. Prints a Markdown table.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::bench::{median, naive_image, smoke_ms, RUNS};

struct Release {
    label: &'static str,
    dir: PathBuf,
    /// The naive init's last line.
    start: String,
    /// The recipe's checks (the first one is "the first answer").
    checks: &'static str,
}

const ECHO_CHECK: &str = "[[check]]\ntype = \"tcp_echo\"\nport = 8080\n";
const WEB_CHECK: &str = "[[check]]\ntype = \"http\"\nport = 8081\npath = \"/\"\nstatus = 200\nbody_contains = \"web ok\"\n";

/// The three releases, built in `work` from copies of the examples.
fn releases(sh: &Shell, root: &Path, work: &Path) -> Result<Vec<Release>> {
    let copy = |name: &str| -> Result<PathBuf> {
        let p = work.join(name);
        cmd!(sh, "cp -r {root}/examples/{name} {p}").run()?;
        let _ = fs::remove_dir_all(p.join("_build"));
        Ok(p)
    };
    let echo = copy("echo")?;
    {
        let _d = sh.push_dir(&echo);
        cmd!(sh, "rebar3 release").quiet().ignore_stdout().run()?;
    }
    let web = copy("web")?;
    {
        let _d = sh.push_dir(&web);
        cmd!(sh, "rebar3 as prod release")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    // echo_mix names beambake's Erlang app by a relative path: build it in place, in a
    // copy of the repository's erlang/ beside it.
    let mix_root = work.join("mix");
    fs::create_dir_all(mix_root.join("examples"))?;
    cmd!(sh, "cp -r {root}/erlang {mix_root}/erlang").run()?;
    let _ = fs::remove_dir_all(mix_root.join("erlang/_build"));
    let mix = mix_root.join("examples/echo_mix");
    cmd!(sh, "cp -r {root}/examples/echo_mix {mix}").run()?;
    let _ = fs::remove_dir_all(mix.join("_build"));
    {
        let _d = sh.push_dir(&mix);
        cmd!(sh, "mix release --overwrite")
            .env("MIX_ENV", "prod")
            .env("HOME", work)
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    Ok(vec![
        Release {
            label: "echo",
            dir: echo.join("_build/default/rel/echo"),
            start: "/opt/echo/bin/echo foreground".into(),
            checks: ECHO_CHECK,
        },
        Release {
            label: "web",
            dir: web.join("_build/prod/rel/web"),
            start: "/opt/web/bin/web foreground".into(),
            checks: WEB_CHECK,
        },
        Release {
            label: "mix",
            dir: mix.join("_build/prod/rel/echo_mix"),
            start: "/opt/echo_mix/bin/echo_mix start".into(),
            checks: ECHO_CHECK,
        },
    ])
}

/// A microvm recipe for `r`: Debian's kernel or the minimal one, traced boot script.
fn recipe(work: &Path, r: &Release, minimal: bool) -> Result<PathBuf> {
    let name = format!("{}-{}", r.label, if minimal { "minimal" } else { "debian" });
    let text = format!(
        "name = \"{name}\"\ntarget = \"microvm\"\n\n[release]\nsource = {:?}\n\n{}\
         [vm]\nmemory_mib = 256\ncpus = 1\nmachine = \"microvm\"\naccel = \"tcg\"\n\n\
         [launch]\ncode_loading = \"traced\"\nsmall_guest = true\n\n\
         [network]\nmode = \"tap\"\nguest = \"10.0.120.101/24\"\nhost = \"10.0.120.100\"\nhostname = \"{}\"\n\n\
         [distribution]\ncookie = \"bench\"\n\n{}\n[smoke]\nready_timeout_s = 240\ncheck_timeout_s = 30\n",
        r.dir.display().to_string(),
        if minimal {
            "[kernel]\nsource = \"minimal\"\n\n"
        } else {
            ""
        },
        r.label,
        r.checks
    );
    let p = work.join(format!("{name}.toml"));
    fs::write(&p, text)?;
    Ok(p)
}

fn build(bb: &Path, recipe: &Path, out: &Path) -> Result<PathBuf> {
    let o = Command::new(bb)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--json")
        .stdin(Stdio::null())
        .output()?;
    if !o.status.success() {
        bail!(
            "build of {} failed: {}",
            recipe.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    Ok(PathBuf::from(
        v["dir"].as_str().context("no dir in the build's JSON")?,
    ))
}

/// Kernel + initramfs bytes of the image in `dir`.
fn image_bytes(dir: &Path) -> Result<u64> {
    let plan: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("boot.json"))?)?;
    let mut n = 0;
    for k in ["kernel", "initrd"] {
        if let Some(f) = plan[k].as_str() {
            n += fs::metadata(dir.join(f))?.len();
        }
    }
    Ok(n)
}

pub fn bench_boot(sh: &Shell, root: &Path) -> Result<String> {
    let bb = root.join("target/release/beambake");
    let work = root.join("target/bench-boot");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let out = work.join("out");
    let mut rows = vec![];
    let mut all = vec![];
    for r in releases(sh, root, &work)? {
        let debian = build(&bb, &recipe(&work, &r, false)?, &out)?;
        let minimal = build(&bb, &recipe(&work, &r, true)?, &out)?;
        let naive = naive_image(
            sh,
            &bb,
            &work.join(format!("naive-{}", r.label)),
            &r.dir,
            &debian,
            &r.start,
        )?;
        smoke_ms(&bb, &minimal, &["--save-snapshot"])?;
        let (mut n, mut d, mut m, mut s) = (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            n.push(smoke_ms(&bb, &naive.dir, &[])?);
            d.push(smoke_ms(&bb, &debian, &[])?);
            m.push(smoke_ms(&bb, &minimal, &[])?);
            s.push(smoke_ms(&bb, &minimal, &["--from-snapshot"])?);
        }
        let snap_bytes = fs::metadata(minimal.join("snapshot.state"))?.len();
        let bytes = [
            image_bytes(&naive.dir)?,
            image_bytes(&debian)?,
            image_bytes(&minimal)?,
        ];
        let secs = [n.clone(), d.clone(), m.clone(), s.clone()].map(|v| median(v) / 1000.0);
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        rows.push(format!(
            "| {} | {:.2} s | {:.2} s ({:.2}) | {:.2} s ({:.2}) | {:.2} s ({:.2}) | {:.2} MiB | {:.2} MiB ({:.2}) | {:.2} MiB ({:.2}) | {:.1} MiB |",
            r.label,
            secs[0],
            secs[1],
            secs[1] / secs[0],
            secs[2],
            secs[2] / secs[0],
            secs[3],
            secs[3] / secs[0],
            mib(bytes[0]),
            mib(bytes[1]),
            bytes[1] as f64 / bytes[0] as f64,
            mib(bytes[2]),
            bytes[2] as f64 / bytes[0] as f64,
            mib(snap_bytes),
        ));
        all.push(format!(
            "{} boots (ms): naive {n:?}; debian {d:?}; minimal {m:?}; snapshot {s:?}",
            r.label
        ));
    }
    Ok(format!(
        "| release (median of {RUNS}, TCG) | naive: first answer | beambake, Debian kernel (ratio) | beambake, minimal kernel (ratio) | restore from snapshot (ratio) | naive: kernel + initramfs | Debian kernel (ratio) | minimal kernel (ratio) | snapshot file |\n\
         |---|---|---|---|---|---|---|---|---|\n{}\n\n{}\n",
        rows.join("\n"),
        all.join("\n")
    ))
}
