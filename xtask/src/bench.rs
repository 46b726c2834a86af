//! `cargo xtask bench`: build time (built release -> image, warm cache), image size,
//! boot-to-echo-reply under TCG and peak RSS of the build, median of N runs, for
//! beambake's microvm image and for a naive baseline of the same release (busybox +
//! shell-script init running `bin/echo foreground`, `find | cpio | gzip`, same kernel,
//! same qemu flags); and the uml target's build time, root image size (squashfs and
//! ext4) and boot-to-echo under User Mode Linux. Prints a Markdown report (also written
//! to target/bench.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

pub const RUNS: usize = 5;

struct Run {
    secs: f64,
    max_rss_kib: i64,
}

/// Runs a command, returning wall time and the child's peak RSS (wait4).
fn measured(cmd: &mut Command) -> Result<Run> {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let secs = start.elapsed().as_secs_f64();
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed: {err}");
    }
    Ok(Run {
        secs,
        max_rss_kib: ru.ru_maxrss,
    })
}

/// `sh -c SCRIPT` (pipelines of the naive baseline).
fn sh_c(sh: &Shell, script: String) -> xshell::Cmd<'_> {
    cmd!(sh, "sh -c {script}")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `beambake smoke --json [extra] DIR`, which must pass: its boot to ready, in ms.
pub fn smoke_ms(bb: &Path, dir: &Path, extra: &[&str]) -> Result<f64> {
    smoke_report(bb, dir, extra)?["boot_to_ready_ms"]
        .as_f64()
        .context("no boot_to_ready_ms in the report")
}

/// `beambake smoke --json [extra] DIR`, which must pass: its report.
pub fn smoke_report(bb: &Path, dir: &Path, extra: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(bb)
        .args(["smoke", "--json"])
        .args(extra)
        .arg(dir)
        .stdin(Stdio::null())
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "smoke {extra:?} {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["passed"] != true {
        bail!("smoke {extra:?} of {} failed: {v:#}", dir.display());
    }
    Ok(v)
}

/// A built echo release in `work/echo` (the thing measured is release -> image) and the
/// bench's microvm recipe for it in `work/bench.toml` (TCG, the TCP echo check only, no
/// distribution): `(release, recipe)`.
fn built_release(sh: &Shell, root: &Path, work: &Path) -> Result<(PathBuf, PathBuf)> {
    // A built release (the thing being measured is release -> image).
    let project = work.join("echo");
    cmd!(sh, "cp -r {root}/examples/echo {project}").run()?;
    let _ = fs::remove_dir_all(project.join("_build"));
    {
        let _d = sh.push_dir(&project);
        cmd!(sh, "rebar3 release").quiet().ignore_stdout().run()?;
    }
    let release = project.join("_build/default/rel/echo");
    let recipe = work.join("bench.toml");
    let text = fs::read_to_string(root.join("recipes/echo-microvm.toml"))?;
    let text = text
        .replace(
            "source = \"../examples/echo\"",
            &format!("source = {:?}", release.display().to_string()),
        )
        .replace("accel = \"auto\"", "accel = \"tcg\"");
    // Boot-to-echo only: the TCP echo check, no distribution.
    let cut = text
        .find("[distribution]")
        .context("recipe layout changed")?;
    let text = format!(
        "{}[[check]]\ntype = \"tcp_echo\"\nport = 8080\n",
        &text[..cut]
    );
    fs::write(&recipe, text)?;
    Ok((release, recipe))
}

/// A naive image of a release, as a user would write one: the files beambake's `rootfs`
/// finds (release, ERTS, ELF closure), busybox, a shell-script init that loads the kernel
/// modules of `beambake_dir`'s image, configures eth0 and runs `start` (the release's own
/// start script), packed with `find | cpio | gzip -1`; booted with `beambake_dir`'s kernel
/// and plan. relx's start script wants a node name: `-sname` is added to vm.args when it
/// has none.
pub struct Naive {
    pub dir: PathBuf,
    pub initrd_bytes: u64,
    pub build_secs: f64,
}

pub fn naive_image(
    sh: &Shell,
    bb: &Path,
    base_dir: &Path,
    release: &Path,
    beambake_dir: &Path,
    start: &str,
) -> Result<Naive> {
    let tree = base_dir.with_extension("tree");
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_dir_all(base_dir);
    fs::create_dir_all(base_dir)?;
    fs::create_dir_all(&tree)?;
    let raw = base_dir.with_extension("raw.cpio");
    // Everything of the release's ERTS: its start script may run any of it.
    cmd!(
        sh,
        "{bb} rootfs {release} -o {raw} --all-erts-programs --beams as-built"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    let plan_text = fs::read_to_string(beambake_dir.join("boot.json"))?;
    let mut plan: serde_json::Value = serde_json::from_str(&plan_text)?;
    let image = beambake_dir.join(plan["initrd"].as_str().context("no initrd in the plan")?);
    {
        let _d = sh.push_dir(&tree);
        sh_c(sh, format!("cpio -idm --quiet < {}", raw.display())).run()?;
        // the kernel modules, exactly as beambake found them
        sh_c(
            sh,
            format!(
                "zstd -dc {} | cpio -idm --quiet 'usr/lib/modules/*' 'etc/beambake/modules'",
                image.display()
            ),
        )
        .run()?;
    }
    fs::remove_file(&raw)?;
    fs::create_dir_all(tree.join("bin"))?;
    fs::copy("/bin/busybox", tree.join("bin/busybox"))?;
    let applets = cmd!(sh, "/bin/busybox --list").read()?;
    for a in applets.lines() {
        let l = tree.join("bin").join(a);
        if !l.exists() {
            std::os::unix::fs::symlink("busybox", &l)?;
        }
    }
    fs::write(
        tree.join("init"),
        format!(
            "#!/bin/sh\n\
             mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
             mount -t tmpfs tmp /tmp\n\
             for m in $(cat /etc/beambake/modules); do insmod $m; done\n\
             ip link set lo up\n\
             while ! ip link show eth0 >/dev/null 2>&1; do sleep 0.05; done\n\
             ip addr add 10.0.120.101/24 dev eth0; ip link set eth0 up\n\
             export HOME=/root PATH=/bin\n\
             exec {start}\n"
        ),
    )?;
    cmd!(sh, "chmod 755 {tree}/init").run()?;
    let _ = fs::remove_file(tree.join("etc/beambake/launch.json"));
    // relx's start script refuses to run without a node name; a user's vm.args has one
    // (rebar3's template: `-sname NAME`), so erlexec starts epmd through /bin/sh.
    for vm_args in glob_vm_args(&tree)? {
        let mut va = fs::read_to_string(&vm_args)?;
        if !va
            .lines()
            .any(|l| l.starts_with("-sname") || l.starts_with("-name"))
        {
            let name = plan["name"].as_str().unwrap_or("node").to_string();
            va.push_str(&format!(
                "-sname {}\n",
                name.split('-').next().unwrap_or("node")
            ));
            fs::write(&vm_args, va)?;
        }
    }
    let initrd = base_dir.join("baseline.cpio.gz");
    let build_secs = {
        let start = Instant::now();
        let _d = sh.push_dir(&tree);
        sh_c(
            sh,
            format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > {}",
                initrd.display()
            ),
        )
        .run()?;
        start.elapsed().as_secs_f64()
    };
    fs::remove_dir_all(&tree)?;
    let kernel = plan["kernel"]
        .as_str()
        .context("no kernel in the plan")?
        .to_string();
    fs::copy(beambake_dir.join(&kernel), base_dir.join(&kernel))?;
    plan["initrd"] = "baseline.cpio.gz".into();
    plan["name"] = "baseline".into();
    plan["cookie_file"] = serde_json::Value::Null;
    fs::write(
        base_dir.join("boot.json"),
        serde_json::to_string_pretty(&plan)?,
    )?;
    Ok(Naive {
        dir: base_dir.to_path_buf(),
        initrd_bytes: fs::metadata(&initrd)?.len(),
        build_secs,
    })
}

/// `opt/*/releases/*/vm.args` in an unpacked tree.
fn glob_vm_args(tree: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for rel in fs::read_dir(tree.join("opt"))? {
        let releases = rel?.path().join("releases");
        if let Ok(rd) = fs::read_dir(&releases) {
            for v in rd {
                let p = v?.path().join("vm.args");
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    Ok(out)
}

pub fn bench(sh: &Shell, root: &Path) -> Result<()> {
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    let bb = root.join("target/release/beambake");
    let work = root.join("target/bench");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;

    let (release, recipe) = built_release(sh, root, &work)?;
    let out = work.join("out");
    let build = || {
        measured(
            Command::new(&bb)
                .arg("build")
                .arg(&recipe)
                .arg("--out")
                .arg(&out)
                .arg("--no-cache"), // the build itself, not the build cache
        )
    };
    build()?; // warm the kernel cache
    let mut builds = vec![];
    for _ in 0..RUNS {
        builds.push(build()?);
    }
    let dir = out.join("echo-microvm");
    let image = dir.join("echo-microvm.cpio.zst");
    let image_size = fs::metadata(&image)?.len();
    let kernel_size = fs::metadata(dir.join("vmlinuz"))?.len();

    // The naive baseline: the same files, but busybox + a shell init + the relx start
    // script, packed with find | cpio | gzip.
    let naive = naive_image(
        sh,
        &bb,
        &work.join("baseline"),
        &release,
        &dir,
        "/opt/echo/bin/echo foreground",
    )?;
    let (base_dir, base_size, base_build) = (naive.dir, naive.initrd_bytes, naive.build_secs);

    // The same image with the release's own embedded code loading, for comparison.
    let emb_recipe = work.join("bench-embedded.toml");
    fs::write(
        &emb_recipe,
        fs::read_to_string(&recipe)?.replace(
            "code_loading = \"interactive\"",
            "code_loading = \"embedded\"",
        ),
    )?;
    let emb_out = work.join("out-embedded");
    measured(
        Command::new(&bb)
            .arg("build")
            .arg(&emb_recipe)
            .arg("--out")
            .arg(&emb_out)
            .arg("--no-cache"),
    )?;
    let emb_dir = emb_out.join("echo-microvm");

    // uml: the same release as a squashfs root and as an ext4 root (one VM, echo check),
    // under beambake's User Mode Linux kernel (natively: no TCG).
    let mut uml = vec![];
    for fs_kind in ["squashfs", "ext4"] {
        let r = work.join(format!("bench-uml-{fs_kind}.toml"));
        let text = fs::read_to_string(root.join("recipes/echo-uml.toml"))?
            .replace(
                "source = \"../examples/echo\"",
                &format!("source = {:?}", release.display().to_string()),
            )
            .replace("count = 3", "count = 1")
            .replace(
                "root_fs = \"squashfs\"",
                &format!("root_fs = \"{fs_kind}\""),
            );
        let cut = text.find("[data]").context("recipe layout changed")?;
        fs::write(
            &r,
            format!(
                "{}[[check]]\ntype = \"tcp_echo\"\nport = 8080\n",
                &text[..cut]
            ),
        )?;
        let o = work.join(format!("out-uml-{fs_kind}"));
        let b = || {
            measured(
                Command::new(&bb)
                    .arg("build")
                    .arg(&r)
                    .arg("--out")
                    .arg(&o)
                    .arg("--no-cache"),
            )
        };
        b()?; // builds the UML kernel into the cache on first use
        let mut times = vec![];
        for _ in 0..RUNS {
            times.push(b()?.secs);
        }
        let d = o.join("echo-uml");
        let size = fs::metadata(d.join(format!("echo-uml.{fs_kind}")))?.len();
        let ksize = fs::metadata(d.join("linux"))?.len();
        let mut boots = vec![];
        for _ in 0..RUNS {
            boots.push(smoke_ms(&bb, &d, &[])?);
        }
        uml.push((fs_kind, median(times), size, ksize, boots));
    }

    // rumprun: the two ISOs (no toolchain needed for --no-bake), against the seed's 152 MB.
    let rr = work.join("bench-rumprun.toml");
    fs::write(
        &rr,
        fs::read_to_string(root.join("recipes/echo-rumprun.toml"))?.replace(
            "source = \"../examples/echo\"",
            &format!("source = {:?}", release.display().to_string()),
        ),
    )?;
    let rr_out = work.join("out-rumprun");
    let rr_build = measured(
        Command::new(&bb)
            .arg("build")
            .arg(&rr)
            .arg("--out")
            .arg(&rr_out)
            .arg("--no-bake"),
    )?;
    let rr_dir = rr_out.join("echo-rumprun");
    let erlang_iso = fs::metadata(rr_dir.join("erlang.iso"))?.len();
    let app_iso = fs::metadata(rr_dir.join("app.iso"))?.len();

    // osv: the same release on OSv (ERTS built for OSv, ROFS image), one VM, echo check.
    let osv_erts = crate::otp::osv_erts(sh, root)?;
    let osv_recipe = work.join("bench-osv.toml");
    let text = fs::read_to_string(root.join("recipes/echo-osv.toml"))?
        .replace(
            "source = \"../examples/echo\"",
            &format!("source = {:?}", release.display().to_string()),
        )
        .replace(
            "erts_from = \"../target/otp-osv\"",
            &format!("erts_from = {:?}", osv_erts.display().to_string()),
        )
        .replace(
            "source = \"../../shared/sources/osv-src.tar.xz\"",
            &format!(
                "source = {:?}",
                root.join("../shared/sources/osv-src.tar.xz")
                    .display()
                    .to_string()
            ),
        )
        .replace("accel = \"auto\"", "accel = \"tcg\"");
    let cut = text
        .find("[distribution]")
        .context("recipe layout changed")?;
    fs::write(
        &osv_recipe,
        format!(
            "{}[[check]]\ntype = \"tcp_echo\"\nport = 8080\n",
            &text[..cut]
        ),
    )?;
    let osv_out = work.join("out-osv");
    let osv_build = || {
        measured(
            Command::new(&bb)
                .arg("build")
                .arg(&osv_recipe)
                .arg("--out")
                .arg(&osv_out),
        )
    };
    osv_build()?; // builds OSv into the cache on first use
    let mut osv_builds = vec![];
    for _ in 0..RUNS {
        osv_builds.push(osv_build()?.secs);
    }
    let osv_dir = osv_out.join("echo-osv");
    let osv_size = fs::metadata(osv_dir.join("echo-osv.img"))?.len();

    let mut ours = vec![];
    let mut theirs = vec![];
    let mut embedded = vec![];
    let mut osv_boots = vec![];
    for _ in 0..RUNS {
        osv_boots.push(smoke_ms(&bb, &osv_dir, &[])?);
        ours.push(smoke_ms(&bb, &dir, &[])?);
        theirs.push(smoke_ms(&bb, &base_dir, &[])?);
        embedded.push(smoke_ms(&bb, &emb_dir, &[])?);
    }
    let e_ms = median(embedded.clone());
    let (b_ms, n_ms) = (median(ours.clone()), median(theirs.clone()));
    let build_s = median(builds.iter().map(|r| r.secs).collect());
    let rss = builds.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let report = format!(
        "| measure (median of {RUNS}) | beambake | naive baseline | ratio |\n\
         |---|---|---|---|\n\
         | build: built release -> image (warm cache) | {build_s:.2} s | {base_build:.2} s (find/cpio/gzip only) | |\n\
         | peak RSS of the build | {:.1} MiB | | |\n\
         | initramfs size (compressed) | {:.2} MiB (zstd) | {:.2} MiB (gzip -1) | {:.2} |\n\
         | kernel (Debian cloud, shared) | {:.2} MiB | same | |\n\
         | boot to first TCP echo reply, TCG | {:.2} s | {:.2} s | {:.2} |\n\
         | same, release's embedded code loading | {:.2} s | | {:.2} |\n\n\
         all runs (ms): beambake {ours:?}; baseline {theirs:?}; embedded {embedded:?}\n",
        rss as f64 / 1024.0,
        mib(image_size),
        mib(base_size),
        image_size as f64 / base_size as f64,
        mib(kernel_size),
        b_ms / 1000.0,
        n_ms / 1000.0,
        b_ms / n_ms,
        e_ms / 1000.0,
        e_ms / n_ms,
    );
    let mut report = report;
    report.push_str(&format!(
        "\n| uml (median of {RUNS}) | build (warm) | root image | kernel (linux) | boot to first TCP echo reply |\n|---|---|---|---|---|\n"
    ));
    for (kind, build, size, ksize, boots) in &uml {
        report.push_str(&format!(
            "| {kind} root | {build:.2} s | {:.2} MiB | {:.2} MiB | {:.2} s |\n",
            mib(*size),
            mib(*ksize),
            median(boots.clone()) / 1000.0
        ));
    }
    for (kind, _, _, _, boots) in &uml {
        report.push_str(&format!("\nall uml {kind} boots (ms): {boots:?}"));
    }
    report.push_str(&format!(
        "\n\n| rumprun (--no-bake) | erlang.iso | app.iso | both | seed's erlang.iso |\n|---|---|---|---|---|\n| echo release, .beam stripped | {:.2} MiB | {:.2} MiB | {:.2} MiB | 152 MB |\n\nrumprun build (ISOs + launch config): {:.2} s\n",
        mib(erlang_iso),
        mib(app_iso),
        mib(erlang_iso + app_iso),
        rr_build.secs
    ));
    let osv_cold = |file: &Path| {
        fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .map_or("not recorded".to_string(), |s| {
                format!("{:.1} min", s / 60.0)
            })
    };
    let osv_kernel_dir = fs::read_to_string(osv_dir.join("manifest.json"))
        .ok()
        .and_then(|m| {
            m.split('"')
                .find(|p| p.contains("/osv/") && p.ends_with("loader.img"))
                .map(|p| PathBuf::from(p).with_file_name(""))
        });
    report.push_str(&format!(
        "\n| osv (median of {RUNS}) | build (warm) | disk image (loader + ROFS) | boot to first TCP echo reply, TCG |\n|---|---|---|---|\n\
         | echo on OSv, 2 vCPUs | {:.2} s | {:.2} MiB | {:.2} s |\n\n\
         all osv boots (ms): {osv_boots:?}\n\n\
         cold builds, recorded when they ran: OSv kernel + base image {}; the ERTS for OSv (PIE, no JIT) {}\n",
        median(osv_builds),
        mib(osv_size),
        median(osv_boots.clone()) / 1000.0,
        osv_kernel_dir
            .map(|d| osv_cold(&d.join("build.seconds")))
            .unwrap_or_else(|| "not recorded".into()),
        osv_cold(&osv_erts.with_file_name(".beambake-build-seconds")),
    ));
    report.push_str(&format!("\n{}\n", crate::bench_boot::bench_boot(sh, root)?));
    report.push_str(&format!(
        "\n{}\n",
        crate::bench_rumprun::bench_rumprun(sh, root)?
    ));
    report.push_str(&format!("\n{}\n", cache(sh, root)?));
    report.push_str(&format!("\n{}\n", switch(sh, root)?));
    fs::write(root.join("target/bench.md"), &report)?;
    println!("{report}");
    Ok(())
}

/// The build cache: the bench's microvm build from a built release with an empty cache
/// (a miss: built and stored) against the same build again (a hit: every file verified
/// and installed), median of [`RUNS`] pairs, in a private cache (`BEAMBAKE_BUILD_CACHE`).
/// One line.
pub fn cache(sh: &Shell, root: &Path) -> Result<String> {
    let bb = root.join("target/release/beambake");
    let work = root.join("target/bench-cache");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (_, recipe) = built_release(sh, root, &work)?;
    // The same with distribution and no cookie in the recipe: a random cookie per build,
    // appended to the cached initramfs (a copy of the image, not a hard link, at a hit).
    let dist = work.join("bench-dist.toml");
    fs::write(
        &dist,
        fs::read_to_string(&recipe)?.replacen("name = \"echo-microvm\"", "name = \"echo-dist\"", 1)
            + "\n[distribution]\n",
    )?;
    let out = work.join("out");
    let cache = work.join("cache");
    let build = |recipe: &Path, extra: &[&str]| -> Result<(f64, serde_json::Value)> {
        let start = Instant::now();
        let o = Command::new(&bb)
            .arg("build")
            .arg(recipe)
            .arg("--out")
            .arg(&out)
            .arg("--json")
            .args(extra)
            .env("BEAMBAKE_BUILD_CACHE", &cache)
            .stdin(Stdio::null())
            .output()?;
        let secs = start.elapsed().as_secs_f64();
        if !o.status.success() {
            bail!("build failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok((secs, serde_json::from_slice(&o.stdout)?))
    };
    build(&recipe, &["--no-cache"])?; // warm the kernel cache
    let mut lines = vec![];
    for (what, recipe) in [("no distribution", &recipe), ("a random cookie", &dist)] {
        let (mut misses, mut hits) = (vec![], vec![]);
        for _ in 0..RUNS {
            let _ = fs::remove_dir_all(&cache);
            let (miss, m) = build(recipe, &[])?;
            let (hit, h) = build(recipe, &[])?;
            if m["cache"]["hit"] != false || h["cache"]["hit"] != true {
                bail!("expected a miss then a hit: {m:#} {h:#}");
            }
            misses.push(miss);
            hits.push(hit);
        }
        let (miss, hit) = (median(misses.clone()), median(hits.clone()));
        lines.push(format!(
            "build cache, {what} (median of {RUNS}): built release -> image {miss:.2} s (miss: \
             built and stored), again {hit:.3} s (hit: every file verified and installed), \
             {:.0}x; all runs (s): misses {misses:.2?}, hits {hits:.3?}",
            miss / hit
        ));
    }
    Ok(lines.join("\n"))
}

/// The Erlang switch between two real guests (`erlang/bench/switch_bench.escript`): two
/// microvms of the echo release (its console the Erlang shell) on one `beambake_switch`,
/// 8 MiB echoed from guest A through guest B's echo server. One line, from one run.
pub fn switch(sh: &Shell, root: &Path) -> Result<String> {
    let bb = root.join("target/release/beambake");
    let out = root.join("target/bench-switch");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out)?;
    let recipe = root.join("erlang/test/echo-shell.toml");
    cmd!(sh, "{bb} build {recipe} --out {out}")
        .quiet()
        .ignore_stdout()
        .run()?;
    {
        let _d = sh.push_dir(root.join("erlang"));
        cmd!(sh, "rebar3 compile").quiet().ignore_stdout().run()?;
    }
    let ebin = root.join("erlang/_build/default/lib/beambake/ebin");
    let image = out.join("echo-shell");
    let script = root.join("erlang/bench/switch_bench.escript");
    let line = cmd!(sh, "escript {script} {ebin} {image} 8")
        .env("BEAMBAKE", &bb)
        .read()
        .context("the switch bench")?;
    line.lines()
        .find(|l| l.starts_with("switch:"))
        .map(str::to_string)
        .with_context(|| format!("the switch bench printed no result: {line}"))
}

/// `cargo xtask bench-size`: what the image compressor makes of the echo release's tree
/// (release, ERTS, ELF closure, launch spec: `beambake rootfs`, uncompressed), with its
/// `.beam` files as relx built them (gzipped) and decompressed (`--beams`): the size
/// under each compressor the kernel can unpack, and the time to compress and to
/// decompress (the host's tools, median of 3; the guest's kernel does the latter at
/// boot, under TCG some times slower). A Markdown table.
pub fn sizes(sh: &Shell, root: &Path, bb: &Path) -> Result<String> {
    let work = root.join("target/bench-size");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let (release, _) = built_release(sh, root, &work)?;
    let mut cpios = Vec::new();
    for beams in ["as-built", "plain"] {
        let cpio = work.join(format!("{beams}.cpio"));
        cmd!(sh, "{bb} rootfs {release} -o {cpio} --beams {beams} -q").run()?;
        cpios.push((beams, cpio));
    }
    // (label, compress argv, decompress argv): the forms the kernel's initramfs
    // unpacker reads (xz with CRC32, lz4's legacy frame).
    let codecs: &[(&str, &[&str], &[&str])] = &[
        (
            "zstd -3",
            &["zstd", "-q", "-3", "-c"],
            &["zstd", "-q", "-d", "-c"],
        ),
        (
            "zstd -9",
            &["zstd", "-q", "-9", "-c"],
            &["zstd", "-q", "-d", "-c"],
        ),
        (
            "zstd -19",
            &["zstd", "-q", "-19", "-c"],
            &["zstd", "-q", "-d", "-c"],
        ),
        (
            "xz -6",
            &["xz", "-q", "-6", "--check=crc32", "-c"],
            &["xz", "-q", "-d", "-c"],
        ),
        (
            "lz4 -9 (legacy)",
            &["lz4", "-q", "-9", "-l", "-c"],
            &["lz4", "-q", "-d", "-c"],
        ),
        (
            "gzip -9",
            &["gzip", "-q", "-9", "-n", "-c"],
            &["gzip", "-q", "-d", "-c"],
        ),
    ];
    let mb = |n: u64| n as f64 / 1e6;
    let mut out = String::from(
        "| compressor | .beam as built | .beam decompressed | compress (decompressed) | decompress (decompressed) |\n|---|---|---|---|---|\n",
    );
    let raw: Vec<u64> = cpios
        .iter()
        .map(|(_, c)| fs::metadata(c).map(|m| m.len()))
        .collect::<std::io::Result<_>>()?;
    out.push_str(&format!(
        "| none | {:.2} MB | {:.2} MB | | |\n",
        mb(raw[0]),
        mb(raw[1])
    ));
    for (label, comp, decomp) in codecs {
        let mut sizes = Vec::new();
        let (mut c_secs, mut d_secs) = (Vec::new(), Vec::new());
        for (beams, cpio) in &cpios {
            let dest = work.join(format!(
                "{beams}.cpio.{}",
                label.replace([' ', '(', ')'], "")
            ));
            for _ in 0..3 {
                let start = Instant::now();
                let o = Command::new(comp[0])
                    .args(&comp[1..])
                    .arg(cpio)
                    .stdout(fs::File::create(&dest)?)
                    .status()
                    .with_context(|| format!("{comp:?}"))?;
                if !o.success() {
                    bail!("{comp:?} {} failed", cpio.display());
                }
                c_secs.push(start.elapsed().as_secs_f64());
                d_secs.push(measured(Command::new(decomp[0]).args(&decomp[1..]).arg(&dest))?.secs);
            }
            sizes.push(fs::metadata(&dest)?.len());
            if *beams == "as-built" {
                c_secs.clear();
                d_secs.clear();
            }
        }
        out.push_str(&format!(
            "| {label} | {:.2} MB | {:.2} MB | {:.2} s | {:.3} s |\n",
            mb(sizes[0]),
            mb(sizes[1]),
            median(c_secs),
            median(d_secs)
        ));
    }
    Ok(out)
}
