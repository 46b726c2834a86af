//! beambake's exit codes (README "Exit codes and CI output", `beambake::exit`), one code
//! per test, each from a real run of the binary, with `--json` parsed: `ok` false and the
//! same `exit_code` on stdout. Boots are TCG: one image is built once and shared by the
//! check-failure and missing-qemu tests; every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use beambake_testkit::{
    check, output, skip_if, stderr, stdout, tempdir, vm_lock, which, RecipeEdit,
};
use common::{cli, command_on, fresh_project, stdout_json};

/// Asserts that the run exited with `code` and printed a JSON failure with that code;
/// returns the JSON.
fn assert_exit(o: &Output, code: i32) -> serde_json::Value {
    assert_eq!(
        o.status.code(),
        Some(code),
        "want exit code {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    let j = stdout_json(o);
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["exit_code"], code, "{j:#}");
    j
}

fn needs_rebar3() -> Option<&'static str> {
    which("rebar3")
        .is_none()
        .then_some("rebar3 not installed (apt-get install rebar3)")
}

fn needs_vm_host() -> Option<&'static str> {
    common::needs_vm_host().or_else(needs_rebar3)
}

fn run(cmd: &str, input: &Path, out: &Path, extra: &[&str]) -> Output {
    output(&mut command_on(cmd, input, "--out", out, extra))
}

#[test]
fn code_2_bad_input() {
    let d = tempdir();
    // A recipe with a key beambake does not know.
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("vm.no_such_key", 1)
        .write(d.path());
    let o = run("build", &recipe, &d.path().join("out"), &["--json"]);
    let j = assert_exit(&o, 2);
    assert!(
        j["error"].as_str().unwrap().contains("no_such_key"),
        "{j:#}"
    );
    assert!(stderr(&o).contains("beambake: error:"), "{}", stderr(&o));
    // A recipe that is not there.
    let missing = d.path().join("missing.toml");
    let o = run("smoke", &missing, &d.path().join("out"), &["--json"]);
    assert_exit(&o, 2);
    // A release that is not a release.
    let o = output(&mut cli().command(["inspect", "--json", d.path().to_str().unwrap()]));
    assert_exit(&o, 2);
    // clap's own usage errors use the same code.
    let o = output(&mut cli().command(["build"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn code_3_build_failure() {
    skip_if!(needs_rebar3());
    let (dir, project) = fresh_project();
    let erl = project.join("src/echo_app.erl");
    let mut text = fs::read_to_string(&erl).unwrap();
    text.push_str("\nthis is not erlang(\n");
    fs::write(&erl, text).unwrap();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("release.source", &project)
        .write(dir.path());
    let o = run("build", &recipe, &dir.path().join("out"), &["--json", "-q"]);
    let j = assert_exit(&o, 3);
    assert!(j["error"].as_str().unwrap().contains("rebar3"), "{j:#}");
}

#[test]
fn code_4_boot_failure() {
    skip_if!(needs_vm_host());
    let _vm = vm_lock();
    let d = tempdir();
    // The release cannot start (its config file is not there): the BEAM halts, the guest
    // powers off before the first check answers.
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("launch.extra_args", ["-config", "/no/such/file"])
        .clear("check")
        .add_check(check("tcp_echo").set("port", 8080))
        .write(d.path());
    let o = run("smoke", &recipe, &d.path().join("out"), &["--json"]);
    let j = assert_exit(&o, 4);
    assert_eq!(j["category"], "boot", "{j:#}");
    assert_eq!(j["ready"], false, "{j:#}");
    // The release really ended (BEAM: "could not start kernel pid"), status 1.
    assert_eq!(j["guest_exit"], 1, "{j:#}");
    assert_eq!(j["checks"][0]["passed"], false, "{j:#}");
    // smoke built: the build part is there, with the artefacts' digests.
    let arts = j["build"]["artefacts"].as_array().unwrap();
    assert!(!arts.is_empty(), "{j:#}");
    for a in arts {
        assert_eq!(a["sha256"].as_str().unwrap().len(), 64, "{a}");
        assert!(Path::new(a["path"].as_str().unwrap()).is_file(), "{a}");
    }
}

/// One microvm image of echo whose plan checks the echo port (ready) and then a port
/// nothing listens on; built once per test binary.
fn shared_image() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("exit-codes-image");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let recipe = RecipeEdit::copy("echo-microvm")
            .clear("check")
            .add_check(check("tcp_echo").set("port", 8080))
            .add_check(check("tcp_echo").set("port", 8089))
            .set("smoke.check_timeout_s", 5)
            .write(&root);
        let o = run("build", &recipe, &root.join("out"), &["--json"]);
        assert!(o.status.success(), "build failed: {}", stderr(&o));
        let j = stdout_json(&o);
        assert_eq!(j["ok"], true, "{j:#}");
        assert_eq!(j["exit_code"], 0, "{j:#}");
        assert_eq!(j["target"], "microvm", "{j:#}");
        assert!(j["timings_ms"].as_array().is_some_and(|t| !t.is_empty()));
        PathBuf::from(j["dir"].as_str().unwrap())
    })
}

#[test]
fn code_5_check_failure() {
    skip_if!(needs_vm_host());
    let dir = shared_image();
    let _vm = vm_lock();
    let d = tempdir();
    let junit = d.path().join("junit.xml");
    let o = output(&mut cli().command([
        "smoke",
        dir.to_str().unwrap(),
        "--json",
        "--junit",
        junit.to_str().unwrap(),
    ]));
    let j = assert_exit(&o, 5);
    assert_eq!(j["category"], "check", "{j:#}");
    let r = &j;
    assert_eq!(r["ready"], true, "{j:#}");
    assert_eq!(r["checks"][0]["passed"], true, "{j:#}");
    assert_eq!(r["checks"][1]["name"], "tcp_echo:8089", "{j:#}");
    assert_eq!(r["checks"][1]["passed"], false, "{j:#}");
    assert!(r["boot_to_ready_ms"].as_u64().unwrap() > 0, "{j:#}");
    assert!(r["accel"].is_string() && r["accel_reason"].is_string());
    assert!(j.get("build").is_none(), "smoke DIR builds nothing: {j:#}");
    let x = fs::read_to_string(&junit).unwrap();
    assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
}

#[test]
fn code_6_environment() {
    skip_if!(needs_vm_host());
    let dir = shared_image();
    // qemu is not there: refused before anything starts, so no VM lock is needed.
    let o = output(
        cli()
            .command(["smoke", dir.to_str().unwrap(), "--json", "--quiet"])
            .env("BEAMBAKE_QEMU", "/nonexistent/qemu-system-x86_64"),
    );
    let j = assert_exit(&o, 6);
    assert_eq!(j["category"], "environment", "{j:#}");
    assert!(j["error"].as_str().unwrap().contains("not found"), "{j:#}");
    // --quiet: the error, nothing else.
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("beambake: error:"), "{err}");
}

#[test]
fn code_6_a_libvirt_daemon_that_cannot_be_reached() {
    skip_if!(needs_vm_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("vm.machine", "pc")
        .write(d.path());
    let o = run("build", &recipe, &d.path().join("out"), &["--json"]);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    let dir = stdout_json(&o)["dir"].as_str().unwrap().to_string();
    let socket = d.path().join("no-daemon.sock");
    let uri = format!("qemu+unix:///system?socket={}", socket.display());
    let o = output(
        cli()
            .command(["port", "--libvirt", &uri, &dir])
            .stdin(std::process::Stdio::null()),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(6), "{err}");
    assert!(err.contains(&uri) && err.contains("connecting"), "{err}");
}
