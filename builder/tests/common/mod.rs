//! Shared test infrastructure: builds the example releases once per test binary, runs the
//! `beambake` binary, and owns the lifetime of every process a test starts (killed and
//! reaped on drop, so no test leaks a BEAM).
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Programs on `PATH`: the library's one lookup.
pub use beambake::host::which;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub use beambake_testkit::skip as test_skip;

/// Skips the calling test with a visible reason, recorded for xtask's tally
/// ([`test_skip::record`]).
#[macro_export]
macro_rules! skip {
    ($($t:tt)*) => {{
        $crate::common::test_skip::record(&format!($($t)*));
        return;
    }};
}

/// A fresh copy of the echo project (no `_build`), for tests that run rebar3 in it.
pub fn fresh_project() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("bb-proj-")
        .tempdir()
        .unwrap();
    let project = dir.path().join("echo");
    copy_dir(&repo_root().join("examples/echo"), &project);
    let _ = fs::remove_dir_all(project.join("_build"));
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
        copy_dir(&repo_root().join("examples/echo"), &project);
        let _ = fs::remove_dir_all(project.join("_build"));
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
    let out = Command::new("rebar3")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rebar3 {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (s, d) = (e.path(), dst.join(e.file_name()));
        let ft = fs::symlink_metadata(&s).unwrap().file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s).unwrap(), &d).unwrap();
        } else if ft.is_dir() {
            copy_dir(&s, &d);
        } else {
            fs::copy(&s, &d).unwrap();
        }
    }
}

/// Runs the `beambake` binary.
pub fn beambake(args: &[&str]) -> Output {
    beambake_in(&std::env::current_dir().unwrap(), args, &[])
}

pub fn beambake_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A started process, killed (SIGKILL) and reaped when dropped, on every path.
pub struct Guarded {
    pub child: Child,
    pub log: PathBuf,
}

impl Guarded {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Guarded {
        let f = fs::File::create(&log).unwrap();
        cmd.stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null());
        Guarded {
            child: cmd.spawn().unwrap(),
            log,
        }
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Waits up to `bound` for the process to exit: its status, or `None` if it still
    /// runs (it is killed when dropped).
    pub fn wait_bounded(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if start.elapsed() >= bound {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    /// Panics with the log if the process has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("process exited with {st}; log:\n{}", self.log_text());
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Serialises tests that boot VMs: two cores, TCG; parallel guests only slow each other.
pub fn vm_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a copy of `recipes/NAME.toml` into `dir`, with the release source made
/// absolute and `edits` (from, to) applied, and returns its path.
pub fn recipe_copy(name: &str, dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let root = repo_root();
    let mut text = fs::read_to_string(root.join("recipes").join(format!("{name}.toml"))).unwrap();
    text = text.replace(
        "source = \"../examples/echo\"",
        &format!(
            "source = {:?}",
            root.join("examples/echo").display().to_string()
        ),
    );
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} not in the recipe");
        text = text.replacen(from, to, 1);
    }
    let p = dir.join(format!("{name}.toml"));
    fs::write(&p, text).unwrap();
    p
}

/// Processes whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let mut v = vec![];
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

/// Network namespace inodes in use by any process.
pub fn netns_in_use() -> std::collections::BTreeSet<String> {
    let mut s = std::collections::BTreeSet::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(l) = fs::read_link(e.path().join("ns/net")) {
            s.insert(l.display().to_string());
        }
    }
    s
}

/// Runs `beambake build RECIPE --out OUT [extra]`.
fn run_build(recipe: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    beambake(&args)
}

/// `beambake build RECIPE --out OUT [extra]`, which must succeed.
pub fn build_recipe(recipe: &Path, out: &Path, extra: &[&str]) {
    let o = run_build(recipe, out, extra);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
}

/// `beambake build RECIPE --out OUT [extra]`, which must fail with `needle` in its
/// error; returns the error text.
pub fn build_fails(recipe: &Path, out: &Path, extra: &[&str], needle: &str) -> String {
    let o = run_build(recipe, out, extra);
    assert!(
        !o.status.success(),
        "build of {} succeeded",
        recipe.display()
    );
    let err = stderr(&o);
    assert!(err.contains(needle), "{needle:?} not in: {err}");
    err
}

/// `beambake boot DIR` of an image whose release stops by itself: the console streams to
/// stdout, shows the release's start and its exit status 0, and beambake exits with the
/// guest's status 0. Returns the console.
pub fn boot_expecting_clean_exit(dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args(["boot", dir.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
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
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    let before = netns_in_use();
    let mut child = Command::new(env!("CARGO_BIN_EXE_beambake"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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
    // SAFETY: plain kill(2) of our own child.
    unsafe { kill(child.id() as i32, signal) };
    let _ = child.wait();
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
/// (`beambake`), for a test that runs the CLI as `nobody` (see [`give_to_nobody`]).
pub fn nobody_base() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let rel = d.path().join("rel");
    copy_dir(&echo().release, &rel);
    let bin = d.path().join("beambake");
    fs::copy(env!("CARGO_BIN_EXE_beambake"), &bin).unwrap();
    (d, rel, bin)
}

/// Hands `base` (recursively) to `nobody` and makes it reachable, for tests that run the
/// CLI unprivileged.
pub fn give_to_nobody(base: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let st = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(base)
        .status()
        .unwrap();
    assert!(st.success(), "chown -R nobody:nogroup {}", base.display());
    fs::set_permissions(base, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `bin ARGS` run as `nobody` (setpriv), with `HOME=base`, `XDG_CACHE_HOME=base/cache`, a
/// plain PATH and no stdin.
pub fn as_nobody(base: &Path, bin: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "env"])
        .arg(format!("HOME={}", base.display()))
        .arg(format!("XDG_CACHE_HOME={}", base.join("cache").display()))
        .arg("PATH=/usr/bin:/bin")
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
