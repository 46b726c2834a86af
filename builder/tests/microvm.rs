//! The microvm target, booted for real under qemu (TCG here) in a private network
//! namespace, through the `beambake` CLI. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use beambake_testkit::{
    as_nobody, check, copy_dir, fails_with, give_to_nobody, output, skip, skip_if, stderr, stdout,
    tempdir, vm_lock, which, Guarded, RecipeEdit,
};
use common::{
    assert_signal_leaves_nothing, beambake, beambake_in, boot_expecting_clean_exit, build_fails,
    build_recipe, cli, field_strs, fresh_project, needs_vm_host, nobody_base, read_json, smoke,
    stdout_json,
};

#[test]
fn echo_microvm_passes_echo_http_and_distribution() {
    skip_if!(needs_vm_host());
    let _vm = vm_lock();
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let junit = d.path().join("junit.xml");
    let out = smoke(
        &recipe,
        &d.path().join("out"),
        &["--json", "--junit", junit.to_str().unwrap()],
    );
    let report = stdout_json(&out);
    assert!(out.status.success(), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["passed"], true);
    assert_eq!(
        field_strs(&report["checks"], "name"),
        ["tcp_echo:8080", "http:8081/", "distribution"]
    );
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
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let out = d.path().join("out");
    let build = || {
        build_recipe(&recipe, &out, &[]);
        fs::read_to_string(out.join("echo-microvm/cookie")).unwrap()
    };
    let (a, b) = (build(), build());
    assert_ne!(a, b);
    assert!(a.len() >= 20);
    let fixed = RecipeEdit::copy("echo-microvm")
        .set("distribution.cookie", "s3cret")
        .write(d.path());
    build_recipe(&fixed, &out, &[]);
    assert_eq!(
        fs::read_to_string(out.join("echo-microvm/cookie")).unwrap(),
        "s3cret"
    );
}

#[test]
fn a_release_that_exits_at_once_reports_its_status_not_a_timeout() {
    skip_if!(needs_vm_host());
    let d = tempdir();
    // A release whose application cannot start: the echo port is not a port.
    let project = common::broken_echo_project(d.path());
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("smoke.ready_timeout_s", 300)
        .set("release.source", &project)
        .write(d.path());
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
    skip_if!(needs_vm_host());
    let d = tempdir();
    // The http check (the second) aimed at a closed port.
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("check.1.port", 9999)
        .set("smoke.check_timeout_s", 3)
        .write(d.path());
    let _vm = vm_lock();
    let out = smoke(&recipe, &d.path().join("out"), &["--json"]);
    assert!(!out.status.success());
    let r = stdout_json(&out);
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
    let d = tempdir();
    let text = d.path().join("vmlinuz");
    fs::write(&text, "this is not a kernel\n").unwrap();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("kernel.path", &text)
        .write(d.path());
    let err = build_fails(&recipe, &d.path().join("o"), &[], "vmlinuz");
    assert!(err.to_lowercase().contains("not a"), "{err}");

    let recipe = RecipeEdit::copy("echo-microvm")
        .set("kernel.extra_modules", ["no_such_module"])
        .write(d.path());
    build_fails(&recipe, &d.path().join("o"), &[], "no_such_module");
}

#[test]
fn recipe_typo_is_named() {
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .remove("vm.memory_mib")
        .set("vm.memroy_mib", 256)
        .write(d.path());
    let out = beambake(&["build", recipe.to_str().unwrap()]);
    fails_with(&out, &["echo-microvm.toml", "unknown field `memroy_mib`"]);
}

#[test]
fn qemu_missing_gives_an_install_hint() {
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let out_dir = d.path().join("out");
    build_recipe(&recipe, &out_dir, &[]);
    let o = output(
        cli()
            .command(["boot", out_dir.join("echo-microvm").to_str().unwrap()])
            .env("PATH", "/nonexistent"),
    );
    fails_with(&o, &["apt-get install qemu-system-x86"]);
}

/// Kills the parent `beambake smoke` (SIGINT, then SIGKILL in a second run) once its VM
/// runs: no qemu, namespace or tap may survive.
#[test]
fn killing_a_smoke_run_leaves_nothing_behind() {
    skip_if!(needs_vm_host());
    let _vm = vm_lock();
    for signal in [libc_sig::SIGINT, libc_sig::SIGKILL] {
        let d = tempdir();
        let marker = format!("killtest{signal}x{}", std::process::id());
        let recipe = RecipeEdit::copy("echo-microvm")
            .set("name", &marker)
            .write(d.path());
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
    skip_if!(needs_vm_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("launch.extra_args", ["-s", "init", "stop"])
        .write(d.path());
    let out_dir = d.path().join("out");
    build_recipe(&recipe, &out_dir, &[]);
    let _vm = vm_lock();
    boot_expecting_clean_exit(&out_dir.join("echo-microvm"));
}

/// Machine pc's ACPI power button (qemu's `system_powerdown`, what libvirt's shutdown
/// does) stops the release as SIGTERM would and powers the VM off with status 0: pressed
/// through the stop socket qemu's adapter gives a pc VM (the clean stop of `smoke`), once
/// the release runs under `beambake boot`.
#[test]
fn the_acpi_power_button_stops_a_pc_guest_cleanly() {
    use beambake::boot::{vmm::vmm_for, BootPlan};
    skip_if!(needs_vm_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("vm.machine", "pc")
        .write(d.path());
    let out_dir = d.path().join("out");
    build_recipe(&recipe, &out_dir, &[]);
    let dir = fs::canonicalize(out_dir.join("echo-microvm")).unwrap();
    let plan = BootPlan::load(&dir).unwrap();
    let vmm = vmm_for(&plan).unwrap();
    let socket = vmm
        .stop_socket(&plan, &dir, &plan.instances(&dir)[0])
        .expect("a pc VM can be asked to stop");

    let _vm = vm_lock();
    let log = d.path().join("boot.log");
    let mut boot = Guarded::spawn(cli().command(["boot", dir.to_str().unwrap()]), log);
    let start = Instant::now();
    while !boot.log_text().contains("Echo server started") {
        boot.check_alive();
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the release never started:\n{}",
            boot.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vmm.request_stop(&socket)
        .unwrap_or_else(|e| panic!("system_powerdown on {}: {e}", socket.display()));
    let status = boot.wait_bounded(Duration::from_secs(120));
    let text = boot.log_text();
    assert!(status.is_some(), "the VM did not stop by itself:\n{text}");
    for line in [
        "beambake-init: power button: stopping",
        "beambake-init: release exited with status 0",
        "beambake-init: power off, status 0",
        "beambake: guest exited with status 0",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{text}");
    assert!(!socket.exists(), "{} left behind", socket.display());
}

/// Without root: user networking in a user+net+PID namespace works; a tap is refused
/// with a hint. Runs the CLI as `nobody` (setpriv) on a private copy of everything.
#[test]
fn rootless_user_networking_and_a_clear_tap_error() {
    skip_if!(needs_vm_host());
    if which("setpriv").is_none() {
        skip!("setpriv (util-linux) not installed");
    }
    let (d, rel, bin) = nobody_base();
    let base = d.path();
    let cache = base.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let [user, tap] = ["echo-microvm-user", "echo-microvm"].map(|name| {
        RecipeEdit::copy(name)
            .set("release.source", &rel)
            .write(base)
    });
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
    fails_with(&run(&tap), &["tap networking needs root"]);
}

/// `--kernel`/`--modules` replace the recipe's kernel; a modules dir without what the
/// machine needs is a clear error.
#[test]
fn a_kernel_of_the_users_own() {
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let out = d.path().join("out");
    // Make sure the pinned kernel is in the cache, then use it as "the user's".
    build_recipe(&recipe, &out, &[]);
    let m = read_json(&out.join("echo-microvm/manifest.json"));
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
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("distribution.cookie", "fixed-for-reproducibility")
        .write(d.path());
    let image = |out: &str, tz: &str| {
        let out = d.path().join(out);
        let o = beambake_in(
            d.path(),
            &[
                "build",
                recipe.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                // Built both times, not installed from the build cache.
                "--no-cache",
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
    let d = tempdir();
    let smoke_dir = || beambake(&["smoke", d.path().to_str().unwrap()]);
    let no_plan = format!(
        "{}: not a beambake build (no boot.json)",
        d.path().display()
    );
    fails_with(&smoke_dir(), &[&no_plan]);
    fs::write(d.path().join("boot.json"), "{ not json").unwrap();
    fails_with(&smoke_dir(), &["boot.json: not a beambake boot plan"]);
}

/// `recipes/echo-tls-microvm.toml` (its CA made absolute) with the first TLS echo check
/// (the second check) aimed at `tls_port`.
fn tls_recipe(tls_port: u16) -> RecipeEdit {
    RecipeEdit::copy("echo-tls-microvm").set("check.1.port", tls_port)
}

/// The TLS release (the echo example's `tls` profile, which starts ssl) serves TLS echo
/// and HTTPS verified against the test CA; a TLS check aimed at the plain TCP echo port
/// fails with a handshake message, within its bound, and the other checks still pass.
#[test]
fn tls_checks_pass_and_a_plain_tcp_port_fails_the_handshake() {
    skip_if!(needs_vm_host());
    let d = tempdir();
    let recipe = tls_recipe(8080)
        .set("smoke.check_timeout_s", 10)
        .write(d.path());
    let _vm = vm_lock();
    let out = smoke(&recipe, &d.path().join("out"), &["--json"]);
    assert!(!out.status.success());
    let r = stdout_json(&out);
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(
        field_strs(&r["checks"], "name"),
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
    let d = tempdir();
    let missing = d.path().join("no-such-ca.pem");
    // The unverified check (the last) verified against a CA file that is not there.
    let recipe = tls_recipe(8443)
        .remove("check.4.verify")
        .set("check.4.ca", &missing)
        .write(d.path());
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

/// The echo project copied into `dir` with `vm_args` as its vm.args, and echo-microvm
/// pointed at it.
fn project_with_vm_args(dir: &Path, vm_args: &str) -> RecipeEdit {
    let (_keep, project) = fresh_project();
    fs::create_dir_all(dir).unwrap();
    let project_dir = dir.join("echo");
    copy_dir(&project, &project_dir);
    fs::write(project_dir.join("config/vm.args"), vm_args).unwrap();
    RecipeEdit::copy("echo-microvm").set("release.source", &project_dir)
}

/// An rpc check that the guest node's cookie is `cookie`.
fn cookie_check(cookie: &str) -> beambake_testkit::Fields {
    check("rpc")
        .set("call", "erlang:get_cookie()")
        .set("expect", cookie)
}

#[test]
fn a_node_named_on_loopback_in_vm_args_is_reachable_at_the_guest_address() {
    skip_if!(needs_vm_host());
    let _vm = vm_lock();
    let d = tempdir();
    // No [distribution] in the recipe: the release names its node and cookie.
    let recipe = project_with_vm_args(
        d.path(),
        "-name echo@127.0.0.1\n-setcookie from_release\n+sbwt none\n",
    )
    .remove("distribution")
    .add_check(cookie_check("from_release"))
    .write(d.path());
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
    let m = read_json(&out.join("echo-microvm/manifest.json"));
    assert_eq!(m["distribution"]["node"], "echo@10.0.120.101", "{m}");
    assert_eq!(m["distribution"]["cookie_source"], "release", "{m}");
    assert!(m["distribution"]["notes"][0]
        .as_str()
        .unwrap()
        .contains("becomes echo@10.0.120.101"));

    // The recipe's [distribution] overrides both by rewriting the launch arguments: one
    // name, one cookie (two -setcookie would make OTP invent a random one: pang).
    let second = d.path().join("second");
    let recipe = project_with_vm_args(&second, "-sname other\n-setcookie from_release\n")
        .set("distribution.cookie", "from_recipe")
        .add_check(cookie_check("from_recipe"))
        .write(&second);
    let o = smoke(&recipe, &out, &[]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let m = read_json(&out.join("echo-microvm/manifest.json"));
    assert_eq!(m["distribution"]["cookie_source"], "recipe", "{m}");
    assert_eq!(m["distribution"]["names"], "long", "{m}");
}

#[test]
fn a_missing_release_source_names_the_recipe_key_and_line() {
    let d = tempdir();
    let edit = RecipeEdit::copy("echo-microvm").set("release.source", "no/such/release");
    let recipe = edit.write(d.path());
    let line = edit
        .text()
        .lines()
        .position(|l| l.starts_with("source = "))
        .unwrap()
        + 1;
    let out = d.path().join("out");
    let e = build_fails(
        &recipe,
        &out,
        &[],
        &format!("echo-microvm.toml: line {line}: release.source = \"no/such/release\""),
    );
    assert!(e.contains("does not exist"), "{e}");
    assert!(
        !out.join("echo-microvm").exists(),
        "a failed build left a dir"
    );
}

#[test]
fn boot_of_a_dir_that_is_not_a_build_says_how_to_make_one() {
    let d = tempdir();
    for dir in [d.path().to_path_buf(), d.path().join("missing")] {
        let o = beambake(&["boot", dir.to_str().unwrap()]);
        fails_with(&o, &[dir.to_str().unwrap(), "beambake build RECIPE"]);
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

/// `[launch] code_loading = "traced"`: the build runs the release once on the host (in a
/// namespace of its own) and the image boots a script that loads what that run loaded;
/// a module outside the trace is not loaded at ready and still loads on its first call
/// (interactive mode: a pruned embedded boot could not load it). Smoke passes as before.
#[test]
fn a_traced_boot_loads_the_trace_at_start_and_the_rest_on_demand() {
    skip_if!(needs_vm_host());
    let d = tempdir();
    let rpc = |call: &str, expect: &str| check("rpc").set("call", call).set("expect", expect);
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("launch.code_loading", "traced")
        .add_check(rpc(
            "init:get_argument(boot)",
            "{ok,[[\"/opt/echo/releases/0.1.0/beambake_preload\"]]}",
        ))
        .add_check(rpc("erlang:module_loaded(echo_server)", "true"))
        .add_check(rpc("erlang:module_loaded(base64)", "false"))
        .add_check(rpc("base64:encode(\"hi\")", "<<\"aGk=\">>"))
        .add_check(rpc("erlang:module_loaded(base64)", "true"))
        .write(d.path());
    let out = d.path().join("out");
    let log = build_recipe(&recipe, &out, &["-v"]);
    let n: usize = log
        .split("trace: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no trace line: {log}"));
    // More than the kernel's first list (29 modules), far fewer than the script's 230.
    assert!((60..200).contains(&n), "{n} modules traced");

    let _vm = vm_lock();
    let o = smoke(&out.join("echo-microvm"), &out, &["--json"]);
    let report = stdout_json(&o);
    assert!(o.status.success(), "{report:#}\n{}", stderr(&o));
    assert_eq!(report["passed"], true);
    assert_eq!(report["checks"].as_array().map(Vec::len), Some(8));
}

/// A release that stops during its boot cannot be traced: the build fails before
/// anything is written, naming the release and quoting its output.
#[test]
fn a_release_that_stops_at_boot_cannot_be_traced() {
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("launch.code_loading", "traced")
        .set(
            "launch.extra_args",
            ["-eval", "io:format(\"giving up~n\"), erlang:halt(3)"],
        )
        .write(d.path());
    let out = d.path().join("out");
    let err = build_fails(&recipe, &out, &[], "tracing the release");
    for want in [
        "exit status: 3",
        "before its boot script finished",
        "giving up",
    ] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert!(!out.join("echo-microvm").exists(), "an output set was made");
}

/// Restore from a snapshot: a smoke run saves the guest once its first check passes
/// (`--save-snapshot`: qemu's migration stream beside the image, with what it was made
/// from); each later run starts from that state in a namespace of its own
/// (`--from-snapshot`), steps the guest's clock and reseeds its random pool over the
/// control line, and passes every check. A missing, damaged or foreign snapshot (another
/// image, another memory size) is refused with the reason, exit code 2, before any VM.
#[test]
fn a_snapshot_restores_passes_smoke_and_refuses_what_does_not_fit() {
    skip_if!(needs_vm_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-microvm");
    let refused = |needles: &[&str]| {
        let o = smoke(&dir, &out, &["--from-snapshot"]);
        fails_with(&o, needles);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    };
    refused(&["snapshot.json: no snapshot", "beambake snapshot"]);

    let _vm = vm_lock();
    let o = smoke(&dir, &out, &["--save-snapshot", "--json"]);
    let r = stdout_json(&o);
    assert!(o.status.success(), "{r:#}\n{}", stderr(&o));
    assert_eq!(field_strs(&r["checks"], "name"), ["tcp_echo:8080"]);
    let saved = &r["snapshot"]["saved"];
    assert_eq!(saved["memory_mib"], 256);
    assert_eq!(saved["accel"], "tcg");
    let state = fs::read(dir.join("snapshot.state")).unwrap();
    assert_eq!(saved["state_bytes"], state.len() as u64);
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".qmp") || n.starts_with(".snapshot")),
        "left behind: {names:?}"
    );

    for _ in 0..2 {
        let o = smoke(&dir, &out, &["--from-snapshot", "--json"]);
        let r = stdout_json(&o);
        assert!(o.status.success(), "{r:#}\n{}", stderr(&o));
        assert_eq!(
            field_strs(&r["checks"], "name"),
            ["tcp_echo:8080", "http:8081/", "distribution"]
        );
        assert!(r["snapshot"]["clock_step_ms"].is_i64(), "{r:#}");
    }

    // Another memory size.
    let plan_file = dir.join("boot.json");
    let plan = fs::read_to_string(&plan_file).unwrap();
    fs::write(
        &plan_file,
        plan.replace("\"memory_mib\": 256", "\"memory_mib\": 512"),
    )
    .unwrap();
    refused(&[
        "refusing to restore",
        "memory 256 MiB, this image has 512 MiB",
    ]);
    fs::write(&plan_file, &plan).unwrap();
    // Another image: the same recipe with another argument.
    fs::create_dir_all(d.path().join("other")).unwrap();
    let other = RecipeEdit::copy("echo-microvm")
        .set("launch.extra_args", ["+A", "2"])
        .write(&d.path().join("other"));
    let other_out = d.path().join("other-out");
    build_recipe(&other, &other_out, &[]);
    let other_dir = other_out.join("echo-microvm");
    for f in ["snapshot.state", "snapshot.json"] {
        fs::copy(dir.join(f), other_dir.join(f)).unwrap();
    }
    let o = smoke(&other_dir, &other_out, &["--from-snapshot"]);
    fails_with(&o, &["refusing to restore", "saved from another image"]);
    // A damaged state.
    let mut damaged = state;
    damaged[4096] ^= 1;
    fs::write(dir.join("snapshot.state"), damaged).unwrap();
    refused(&["snapshot.state: refusing to restore", "sha256"]);
}
