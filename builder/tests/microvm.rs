//! The microvm target, booted for real under qemu (TCG here) in a private network
//! namespace, through the `beambake` CLI. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn needs_vm_host() -> Option<&'static str> {
    if !is_root() {
        return Some("tap networking in a private namespace needs root");
    }
    if which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    None
}

fn smoke(recipe: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "smoke",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    beambake(&args)
}

#[test]
fn echo_microvm_passes_echo_http_and_distribution() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy("echo-microvm", d.path(), &[]);
    let junit = d.path().join("junit.xml");
    let out = smoke(
        &recipe,
        &d.path().join("out"),
        &["--json", "--junit", junit.to_str().unwrap()],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    assert!(out.status.success(), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["passed"], true);
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tcp_echo:8080", "http:8081/", "distribution"]);
    let dist = report["checks"][2]["message"].as_str().unwrap();
    assert!(
        dist.contains("pong") && dist.contains("echo@10.0.120.101"),
        "{dist}"
    );
    assert!(report["boot_to_ready_ms"].as_u64().unwrap() > 0);
    let x = fs::read_to_string(&junit).unwrap();
    assert!(x.contains("tests=\"3\" failures=\"0\""), "{x}");
    // The build's artefacts: image, kernel, plan, manifest; the cookie is private.
    let dir = d.path().join("out/echo-microvm");
    for f in [
        "echo-microvm.cpio.zst",
        "vmlinuz",
        "boot.json",
        "manifest.json",
        "cookie",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(dir.join("cookie"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(
        !dir.join("console.log").exists(),
        "console log kept after a passing run"
    );
}

#[test]
fn cookies_are_random_per_build_unless_the_recipe_sets_one() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy("echo-microvm", d.path(), &[]);
    let out = d.path().join("out");
    let build = || {
        build_recipe(&recipe, &out, &[]);
        fs::read_to_string(out.join("echo-microvm/cookie")).unwrap()
    };
    let (a, b) = (build(), build());
    assert_ne!(a, b);
    assert!(a.len() >= 20);
    let fixed = recipe_copy(
        "echo-microvm",
        d.path(),
        &[("# cookie = \"...\"", "cookie = \"s3cret\"")],
    );
    build_recipe(&fixed, &out, &[]);
    assert_eq!(
        fs::read_to_string(out.join("echo-microvm/cookie")).unwrap(),
        "s3cret"
    );
}

#[test]
fn a_release_that_exits_at_once_reports_its_status_not_a_timeout() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    // A release whose application cannot start: the echo port is not a port.
    let project = d.path().join("broken");
    copy_dir(&repo_root().join("examples/echo"), &project);
    let _ = fs::remove_dir_all(project.join("_build"));
    let cfg = project.join("config/sys.config");
    fs::write(
        &cfg,
        fs::read_to_string(&cfg)
            .unwrap()
            .replace("{port, 8080}", "{port, not_a_port}"),
    )
    .unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[("ready_timeout_s = 120", "ready_timeout_s = 300")],
    );
    let text = fs::read_to_string(&recipe).unwrap().replace(
        &format!(
            "source = {:?}",
            repo_root().join("examples/echo").display().to_string()
        ),
        &format!("source = {:?}", project.display().to_string()),
    );
    fs::write(&recipe, text).unwrap();
    let _vm = vm_lock();
    let start = Instant::now();
    let out = smoke(&recipe, &d.path().join("out"), &[]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("guest exited with status 1"), "{text}");
    assert!(
        text.contains("release exited with status 1"),
        "console tail missing: {text}"
    );
    assert!(text.contains("FAIL"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(250),
        "waited for the timeout instead"
    );
    assert!(
        d.path().join("out/echo-microvm/console.log").is_file(),
        "console log of a failed run not kept"
    );
}

#[test]
fn a_check_against_a_closed_port_fails_within_its_bound() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[
            ("port = 8081", "port = 9999"),
            ("check_timeout_s = 30", "check_timeout_s = 3"),
        ],
    );
    let _vm = vm_lock();
    let out = smoke(&recipe, &d.path().join("out"), &["--json"]);
    assert!(!out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["checks"][0]["passed"], true, "{r:#}");
    assert_eq!(r["checks"][1]["passed"], false);
    assert!(
        r["checks"][1]["message"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{r:#}"
    );
    assert!(r["checks"][1]["millis"].as_u64().unwrap() < 30_000);
}

#[test]
fn bad_kernel_and_missing_module_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("vmlinuz");
    fs::write(&text, "this is not a kernel\n").unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[(
            "# path = \"/boot/vmlinuz-...\"",
            &format!("path = {:?}", text.display().to_string()),
        )],
    );
    let err = build_fails(&recipe, &d.path().join("o"), &[], "vmlinuz");
    assert!(err.to_lowercase().contains("not a"), "{err}");

    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[("[vm]", "extra_modules = [\"no_such_module\"]\n\n[vm]")],
    );
    build_fails(&recipe, &d.path().join("o"), &[], "no_such_module");
}

#[test]
fn recipe_typo_is_named() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[("memory_mib = 256", "memroy_mib = 256")],
    );
    let out = beambake(&["build", recipe.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("echo-microvm.toml") && err.contains("unknown field `memroy_mib`"),
        "{err}"
    );
}

#[test]
fn qemu_missing_gives_an_install_hint() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy("echo-microvm", d.path(), &[]);
    let out_dir = d.path().join("out");
    build_recipe(&recipe, &out_dir, &[]);
    let o = Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args(["boot", out_dir.join("echo-microvm").to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("apt-get install qemu-system-x86"),
        "{}",
        stderr(&o)
    );
}

/// Kills the parent `beambake smoke` (SIGINT, then SIGKILL in a second run) once its VM
/// runs: no qemu, namespace or tap may survive.
#[test]
fn killing_a_smoke_run_leaves_nothing_behind() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    for signal in [libc_sig::SIGINT, libc_sig::SIGKILL] {
        let d = tempfile::tempdir().unwrap();
        let marker = format!("killtest{signal}x{}", std::process::id());
        let recipe = recipe_copy(
            "echo-microvm",
            d.path(),
            &[("name = \"echo-microvm\"", &format!("name = \"{marker}\""))],
        );
        assert_signal_leaves_nothing(
            &[
                "smoke",
                recipe.to_str().unwrap(),
                "--out",
                d.path().join("out").to_str().unwrap(),
            ],
            &format!("beambake-{marker}"),
            signal,
        );
    }
}

mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGKILL: i32 = 9;
}

/// `beambake boot` streams the console and exits with the guest's own status: a release
/// that calls `init:stop()` ends the VM with 0; one that cannot start, with 1.
#[test]
fn boot_exits_with_the_guests_status() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[(
            "code_loading = \"interactive\"",
            "code_loading = \"interactive\"\nextra_args = [\"-s\", \"init\", \"stop\"]",
        )],
    );
    let out_dir = d.path().join("out");
    build_recipe(&recipe, &out_dir, &[]);
    let _vm = vm_lock();
    boot_expecting_clean_exit(&out_dir.join("echo-microvm"));
}

/// Without root: user networking in a user+net+PID namespace works; a tap is refused
/// with a hint. Runs the CLI as `nobody` (setpriv) on a private copy of everything.
#[test]
fn rootless_user_networking_and_a_clear_tap_error() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    if which("setpriv").is_none() {
        skip!("setpriv (util-linux) not installed");
    }
    let (d, rel, bin) = nobody_base();
    let base = d.path();
    let cache = base.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let source = format!("source = {:?}", rel.display().to_string());
    let user = recipe_copy("echo-microvm-user", base, &[]);
    let tap = recipe_copy("echo-microvm", base, &[]);
    for r in [&user, &tap] {
        let t = fs::read_to_string(r).unwrap();
        let t = t
            .lines()
            .map(|l| {
                if l.starts_with("source = ") {
                    source.clone()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(r, t).unwrap();
    }
    give_to_nobody(base);
    let run = |recipe: &Path| {
        let _vm = vm_lock();
        let out = base.join("out");
        as_nobody(
            base,
            &bin,
            &[
                "smoke",
                recipe.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let o = run(&user);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("echo-microvm-user: passed"),
        "{}",
        stdout(&o)
    );
    let o = run(&tap);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("tap networking needs root"),
        "{}",
        stderr(&o)
    );
}

/// `--kernel`/`--modules` replace the recipe's kernel; a modules dir without what the
/// machine needs is a clear error.
#[test]
fn a_kernel_of_the_users_own() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy("echo-microvm", d.path(), &[]);
    let out = d.path().join("out");
    // Make sure the pinned kernel is in the cache, then use it as "the user's".
    build_recipe(&recipe, &out, &[]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("echo-microvm/manifest.json")).unwrap()).unwrap();
    let kernel = m["inputs"]["host_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap().to_string())
        .find(|p| p.contains("/boot/vmlinuz-"))
        .expect("kernel in the manifest");
    let unpacked = Path::new(&kernel)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    build_recipe(
        &recipe,
        &out,
        &["--kernel", &kernel, "--modules", unpacked.to_str().unwrap()],
    );
    let empty = d.path().join("mods/lib/modules");
    let release = Path::new(&kernel)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    fs::create_dir_all(empty.join(&release)).unwrap();
    let mods = d.path().join("mods");
    build_fails(
        &recipe,
        &out,
        &["--kernel", &kernel, "--modules", mods.to_str().unwrap()],
        "virtio_mmio",
    );
}

/// With the cookie fixed by the recipe, two builds (different output dirs, time zones
/// and a second apart) give byte-identical initramfs images.
#[test]
fn microvm_images_are_reproducible_with_a_fixed_cookie() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy(
        "echo-microvm",
        d.path(),
        &[(
            "# cookie = \"...\"",
            "cookie = \"fixed-for-reproducibility\"",
        )],
    );
    let image = |out: &str, tz: &str| {
        let out = d.path().join(out);
        let o = beambake_in(
            d.path(),
            &[
                "build",
                recipe.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("TZ", tz)],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        fs::read(out.join("echo-microvm/echo-microvm.cpio.zst")).unwrap()
    };
    let a = image("a", "UTC");
    std::thread::sleep(Duration::from_millis(1100));
    let b = image("b", "Pacific/Auckland");
    assert!(a == b, "two builds of the same recipe differ");
}

/// `boot`/`smoke` of a directory that is not a build output, or whose boot plan is
/// garbage, are clear errors naming the file.
#[test]
fn garbage_boot_plans_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let o = beambake(&["smoke", d.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: not a beambake build (no boot.json)",
            d.path().display()
        )),
        "{err}"
    );
    fs::write(d.path().join("boot.json"), "{ not json").unwrap();
    let o = beambake(&["smoke", d.path().to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("boot.json: not a beambake boot plan"), "{err}");
}

/// `recipes/echo-tls-microvm.toml` copied into `dir` with its CA made absolute, the
/// first TLS echo check aimed at `tls_port` and `edits` applied.
fn tls_recipe(dir: &Path, tls_port: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let rel = "\"../examples/echo/priv/tls/ca.pem\"";
    let abs = format!(
        "{:?}",
        repo_root()
            .join("examples/echo/priv/tls/ca.pem")
            .display()
            .to_string()
    );
    let port = format!("port = {tls_port}\nca = ");
    let mut all: Vec<(&str, &str)> = vec![(rel, &abs), (rel, &abs), (rel, &abs)];
    all.push(("port = 8443\nca = ", &port));
    all.extend_from_slice(edits);
    recipe_copy("echo-tls-microvm", dir, &all)
}

/// The TLS release (the echo example's `tls` profile, which starts ssl) serves TLS echo
/// and HTTPS verified against the test CA; a TLS check aimed at the plain TCP echo port
/// fails with a handshake message, within its bound, and the other checks still pass.
#[test]
fn tls_checks_pass_and_a_plain_tcp_port_fails_the_handshake() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let d = tempfile::tempdir().unwrap();
    let recipe = tls_recipe(
        d.path(),
        "8080",
        &[("check_timeout_s = 30", "check_timeout_s = 10")],
    );
    let _vm = vm_lock();
    let out = smoke(&recipe, &d.path().join("out"), &["--json"]);
    assert!(!out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&out), stderr(&out)));
    let checks = r["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tcp_echo:8080",
            "tls_echo:8080",
            "https:8444/",
            "https:8444/ (server_name echo)",
            "tls_echo:8443 (unverified)"
        ],
        "{r:#}"
    );
    let failed = &checks[1];
    assert_eq!(failed["passed"], false, "{r:#}");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("TLS handshake with 10.0.125.101:8080 failed"),
        "{r:#}"
    );
    assert!(failed["millis"].as_u64().unwrap() <= 12_000, "{r:#}");
    for (i, c) in checks.iter().enumerate() {
        if i != 1 {
            assert_eq!(c["passed"], true, "{r:#}");
        }
    }
    assert!(
        checks[2]["message"]
            .as_str()
            .unwrap()
            .contains("verified against ca.pem"),
        "{r:#}"
    );
}

/// A CA file that is missing or not a certificate stops the build before anything is
/// built, naming the file.
#[test]
fn tls_check_with_a_missing_or_garbage_ca_is_refused_before_the_build() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-ca.pem");
    let recipe = tls_recipe(
        d.path(),
        "8443",
        &[(
            "verify = false ",
            &format!("ca = {:?}\n", missing.display().to_string()),
        )],
    );
    let out = d.path().join("out");
    let err = build_fails(
        &recipe,
        &out,
        &[],
        "no-such-ca.pem: cannot read the CA file",
    );
    assert!(err.contains(&missing.display().to_string()), "{err}");
    fs::write(&missing, "not a certificate\n").unwrap();
    build_fails(
        &recipe,
        &out,
        &[],
        "no-such-ca.pem: no certificate in the CA file",
    );
    assert!(!out.join("echo-tls-microvm").exists(), "built anyway");
}

/// The echo project with `vm_args` as its vm.args, and echo-microvm pointed at it.
fn project_with_vm_args(dir: &Path, vm_args: &str, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let (_keep, project) = fresh_project();
    fs::create_dir_all(dir).unwrap();
    let project_dir = dir.join("echo");
    copy_dir(&project, &project_dir);
    fs::write(project_dir.join("config/vm.args"), vm_args).unwrap();
    let from = format!(
        "source = {:?}",
        repo_root().join("examples/echo").display().to_string()
    );
    let to = format!("source = {:?}", project_dir.display().to_string());
    let mut all: Vec<(&str, &str)> = vec![(from.as_str(), to.as_str())];
    all.extend_from_slice(edits);
    recipe_copy("echo-microvm", dir, &all)
}

const GET_COOKIE: &str = "\n[[check]]\ntype = \"rpc\"\ncall = \"erlang:get_cookie()\"\n";

#[test]
fn a_node_named_on_loopback_in_vm_args_is_reachable_at_the_guest_address() {
    if let Some(why) = needs_vm_host() {
        skip!("{why}");
    }
    let _vm = vm_lock();
    let d = tempfile::tempdir().unwrap();
    let checks = format!("type = \"distribution\"\n{GET_COOKIE}expect = \"from_release\"\n");
    // No [distribution] in the recipe: the release names its node and cookie.
    let recipe = project_with_vm_args(
        d.path(),
        "-name echo@127.0.0.1\n-setcookie from_release\n+sbwt none\n",
        &[
            ("[distribution]\nnode = \"echo\"", ""),
            ("type = \"distribution\"\n", &checks),
        ],
    );
    let out = d.path().join("out");
    let o = smoke(&recipe, &out, &["-v"]);
    let (so, se) = (stdout(&o), stderr(&o));
    assert!(o.status.success(), "{so}\n{se}");
    assert!(
        so.contains("net_adm:ping('echo@10.0.120.101') -> pong"),
        "{so}"
    );
    assert!(
        se.contains("-name echo@127.0.0.1 from") && se.contains("becomes echo@10.0.120.101"),
        "-v says what was rewritten: {se}"
    );
    assert!(se.contains("baked into the image"), "{se}");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("echo-microvm/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["distribution"]["node"], "echo@10.0.120.101", "{m}");
    assert_eq!(m["distribution"]["cookie_source"], "release", "{m}");
    assert!(m["distribution"]["notes"][0]
        .as_str()
        .unwrap()
        .contains("becomes echo@10.0.120.101"));

    // The recipe's [distribution] overrides both by rewriting the launch arguments: one
    // name, one cookie (two -setcookie would make OTP invent a random one: pang).
    let checks = format!("type = \"distribution\"\n{GET_COOKIE}expect = \"from_recipe\"\n");
    let recipe = project_with_vm_args(
        &d.path().join("second"),
        "-sname other\n-setcookie from_release\n",
        &[
            (
                "node = \"echo\"",
                "node = \"echo\"\ncookie = \"from_recipe\"",
            ),
            ("type = \"distribution\"\n", &checks),
        ],
    );
    let o = smoke(&recipe, &out, &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("echo-microvm/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["distribution"]["cookie_source"], "recipe", "{m}");
    assert_eq!(m["distribution"]["names"], "long", "{m}");
}

#[test]
fn a_missing_release_source_names_the_recipe_key_and_line() {
    let d = tempfile::tempdir().unwrap();
    let recipe = recipe_copy("echo-microvm", d.path(), &[]);
    let text = fs::read_to_string(&recipe).unwrap();
    let from = text
        .lines()
        .find(|l| l.starts_with("source = "))
        .unwrap()
        .to_string();
    let line = text.lines().position(|l| l == from).unwrap() + 1;
    fs::write(&recipe, text.replace(&from, "source = \"no/such/release\"")).unwrap();
    let out = d.path().join("out");
    let o = beambake(&[
        "build",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(&format!(
            "echo-microvm.toml: line {line}: release.source = \"no/such/release\""
        )),
        "{e}"
    );
    assert!(e.contains("does not exist"), "{e}");
    assert!(
        !out.join("echo-microvm").exists(),
        "a failed build left a dir"
    );
}

#[test]
fn boot_of_a_dir_that_is_not_a_build_says_how_to_make_one() {
    let d = tempfile::tempdir().unwrap();
    for dir in [d.path().to_path_buf(), d.path().join("missing")] {
        let o = beambake(&["boot", dir.to_str().unwrap()]);
        let e = stderr(&o);
        assert!(!o.status.success());
        assert!(e.contains(dir.to_str().unwrap()), "{e}");
        assert!(e.contains("beambake build RECIPE"), "{e}");
    }
}

#[test]
fn help_says_where_the_recipe_format_is_described() {
    let o = beambake(&["--help"]);
    let s = stdout(&o);
    assert!(
        s.contains("Recipe format") && s.contains("README.md"),
        "{s}"
    );
}
