//! What beambake's integration tests share that is beambake's own (the rest is in
//! `beambake-testkit`): the `beambake` binary, the echo example built once per test
//! binary, recipe builds, boots and smoke runs, and the pinned microvm kernel. Every
//! process started here is guarded by the testkit: nothing outlives its test.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use beambake_testkit::tempfile::TempDir;
use beambake_testkit::{
    copy_dir, fails_with, netns_in_use, output, processes_matching, repo_root, stderr, stdout,
    tempdir, tempdir_named, which, Cli, Guarded,
};

/// What booting a microvm on a tap needs (root, qemu), or why this host cannot.
pub fn needs_vm_host() -> Option<&'static str> {
    if !beambake_testkit::is_root() {
        return Some("tap networking in a private namespace needs root");
    }
    if which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    None
}

/// The `beambake` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_beambake");

pub fn cli() -> Cli {
    Cli::new(BIN)
}

/// Runs `beambake ARGS` to its end.
pub fn beambake<S: AsRef<OsStr>>(args: &[S]) -> Output {
    cli().run(args)
}

/// Runs `beambake ARGS` in `cwd` with `env` added.
pub fn beambake_in<S: AsRef<OsStr>>(cwd: &Path, args: &[S], env: &[(&str, &str)]) -> Output {
    cli().run_in(cwd, args, env)
}

/// A fresh copy of the echo project (no `_build`), for tests that run rebar3 in it.
pub fn fresh_project() -> (TempDir, PathBuf) {
    let dir = tempdir_named("bb-proj-");
    let project = dir.path().join("echo");
    beambake_testkit::copy_project(&repo_root().join("examples/echo"), &project);
    (dir, project)
}

/// The echo example, built once per test binary in a private copy: the project dir, its
/// release dir, its `rebar3 tar` tarball and a host-ERTS (include_erts false) release.
/// Read-only: tests that build must use [`fresh_project`].
pub struct Echo {
    pub release: PathBuf,
    pub tarball: PathBuf,
    pub hosterts: PathBuf,
}

pub fn echo() -> &'static Echo {
    static ECHO: OnceLock<Echo> = OnceLock::new();
    ECHO.get_or_init(|| {
        assert!(
            which("rebar3").is_some(),
            "rebar3 is required (apt-get install rebar3)"
        );
        // A static is never dropped, so no TempDir: one fixed dir per test binary under
        // cargo's target tmpdir, rebuilt at each run (nothing piles up in /tmp).
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("echo-fixture-{stem}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let project = dir.join("echo");
        beambake_testkit::copy_project(&repo_root().join("examples/echo"), &project);
        rebar3(&project, &["tar"]);
        rebar3(&project, &["as", "hosterts", "release"]);
        let release = project.join("_build/default/rel/echo");
        let tarball = release.join("echo-0.1.0.tar.gz");
        assert!(
            tarball.is_file(),
            "rebar3 tar wrote no {}",
            tarball.display()
        );
        // Keep the tarball out of the release dir it describes.
        let moved = dir.join("echo-0.1.0.tar.gz");
        fs::rename(&tarball, &moved).unwrap();
        Echo {
            release,
            tarball: moved,
            hosterts: project.join("_build/hosterts/rel/echo"),
        }
    })
}

fn rebar3(dir: &Path, args: &[&str]) {
    let out = output(Command::new("rebar3").args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "rebar3 {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Connects to `port` on loopback (retrying until `bound`), sends a line and expects it
/// back. Fails with the process log if it never answers.
pub fn echo_round_trip(proc_: &mut Guarded, port: u16, bound: Duration) {
    let start = Instant::now();
    let mut stream = loop {
        proc_.check_alive();
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < bound => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!(
                "nothing listens on {port} after {bound:?}: {e}; log:\n{}",
                proc_.log_text()
            ),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let msg = b"hello there!\n";
    stream.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// `beambake CMD INPUT FLAG OUT [extra]`, the form of `build`, `smoke` and `rootfs`, to
/// be given more (env, stdio) and run.
pub fn command_on(cmd: &str, input: &Path, flag: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = cli().command([cmd, input.to_str().unwrap(), flag, out.to_str().unwrap()]);
    c.args(extra);
    c
}

fn run_on(cmd: &str, input: &Path, flag: &str, out: &Path, extra: &[&str]) -> Output {
    output(&mut command_on(cmd, input, flag, out, extra))
}

/// `beambake build RECIPE --out OUT [extra]`, which must succeed.
pub fn build_recipe(recipe: &Path, out: &Path, extra: &[&str]) -> String {
    let o = run_on("build", recipe, "--out", out, extra);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    stderr(&o)
}

/// `beambake build RECIPE --out OUT [extra]`, which must fail with `needle` in its
/// error; returns the error text.
pub fn build_fails(recipe: &Path, out: &Path, extra: &[&str], needle: &str) -> String {
    fails_with(&run_on("build", recipe, "--out", out, extra), &[needle])
}

/// `beambake smoke TARGET --out OUT [extra]` (a recipe or a build's output dir).
pub fn smoke(target: &Path, out: &Path, extra: &[&str]) -> Output {
    run_on("smoke", target, "--out", out, extra)
}

/// `beambake rootfs INPUT -o OUT [extra]`.
pub fn rootfs(input: &Path, out: &Path, extra: &[&str]) -> Output {
    run_on("rootfs", input, "-o", out, extra)
}

/// A copy of the echo example project in `dir`/broken whose application cannot start
/// (its port is not a port): the release stops at boot with status 1.
pub fn broken_echo_project(dir: &Path) -> PathBuf {
    let project = dir.join("broken");
    beambake_testkit::copy_project(
        &beambake_testkit::repo_root().join("examples/echo"),
        &project,
    );
    let cfg = project.join("config/sys.config");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("{port, 8080}", "{port, not_a_port}")).unwrap();
    project
}

/// `beambake boot DIR` of an image whose release stops by itself: the console streams to
/// stdout, shows the release's start and its exit status 0, and beambake exits with the
/// guest's status 0. Returns the console.
pub fn boot_expecting_clean_exit(dir: &Path) -> String {
    let o = beambake(&["boot", dir.to_str().unwrap()]);
    let console = stdout(&o);
    assert!(
        console.contains("beambake-init: starting echo 0.1.0"),
        "{console}"
    );
    assert!(
        console.contains("release exited with status 0"),
        "{console}"
    );
    assert_eq!(o.status.code(), Some(0), "{console}\n{}", stderr(&o));
    assert!(
        stderr(&o).contains("guest exited with status 0"),
        "{}",
        stderr(&o)
    );
    console
}

/// Starts `beambake ARGS`, waits until a VM process whose command line contains `needle`
/// runs in a network namespace of its own, sends `signal` to beambake, and checks that
/// every such process and that namespace are gone within 20 s.
pub fn assert_signal_leaves_nothing(args: &[&str], needle: &str, signal: i32) {
    let before = netns_in_use();
    // Killed and reaped on every path, a failed assertion below included.
    let mut bb = cli().start(args);
    let start = Instant::now();
    let vm = loop {
        let q = processes_matching(needle);
        if !q.is_empty() {
            break q;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the VM never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let ns = fs::read_link(format!("/proc/{}/ns/net", vm[0]))
        .unwrap()
        .display()
        .to_string();
    assert!(
        !before.contains(&ns),
        "the VM is not in a private namespace"
    );
    bb.signal(signal);
    bb.wait();
    let start = Instant::now();
    while !processes_matching(needle).is_empty() || netns_in_use().contains(&ns) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "VM processes or their namespace survived signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh dir holding a copy of the echo release (`rel`) and of the `beambake` binary
/// (`beambake`), for a test that runs the CLI as `nobody` (`give_to_nobody`, `as_nobody`).
pub fn nobody_base() -> (TempDir, PathBuf, PathBuf) {
    let d = tempdir();
    let rel = d.path().join("rel");
    copy_dir(&echo().release, &rel);
    let bin = d.path().join("beambake");
    fs::copy(BIN, &bin).unwrap();
    (d, rel, bin)
}

/// A JSON file (a build's `manifest.json`, ...).
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A run's stdout as JSON (`--json`); panics with the run's output if it is not.
pub fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", stdout(o), stderr(o)))
}

/// The string `field` of each element of the JSON array `v` (the names of a report's
/// checks, the paths of host libraries, ...).
pub fn field_strs<'a>(v: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|e| {
            e[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field}: {e}"))
        })
        .collect()
}

/// beambake's default microvm kernel (the pinned Debian package), fetched into the user's
/// cache when missing; the error says why it cannot be had.
pub fn pinned_kernel() -> Result<beambake::kernel::Kernel, String> {
    let pin: beambake::kernel::Pin = toml::from_str(beambake::target::microvm::DEFAULT_PIN)
        .map_err(|e| format!("the default kernel pin: {e}"))?;
    beambake::kernel::fetch_debian(&pin, &beambake::kernel::default_cache_dir())
        .map_err(|e| format!("fetching the pinned kernel: {e}"))
}
