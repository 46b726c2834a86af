//! Nothing left behind: a killed or failed build leaves the previous output set intact
//! and no temp file or dir; a killed or refused `boot`/`smoke` leaves no request file, a
//! `port` ended by a signal no run dir; a
//! run that cannot be made is refused before anything is built. Through the `beambake`
//! CLI, on the microvm target (Debian's cloud kernel, fetched once into the cache).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use beambake_testkit::{
    as_nobody, check, give_to_nobody, is_root, output, skip, stderr, stdout, tempdir, vm_lock,
    which, Guarded, RecipeEdit,
};
use common::{assert_signal_leaves_nothing, build_fails, command_on, echo, nobody_base};

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// A microvm recipe for the built echo release (no rebar3 run, no distribution: its
/// image is a pure function of the release and `SOURCE_DATE_EPOCH`).
fn recipe(dir: &Path, name: &str, release: &Path, tap: bool) -> PathBuf {
    let (mode, guest, host) = if tap {
        ("tap", "10.0.120.101/24", "10.0.120.100")
    } else {
        ("user", "10.0.2.15/24", "10.0.2.2")
    };
    RecipeEdit::new(name)
        .set("name", name)
        .set("target", "microvm")
        .set("release.source", release)
        .set("launch.code_loading", "interactive")
        .set("network.mode", mode)
        .set("network.guest", guest)
        .set("network.host", host)
        .set("network.hostname", "echo")
        .add_check(check("tcp_echo").set("port", 8080))
        .write(dir)
}

fn build_cmd(recipe: &Path, out: &Path, epoch: &str) -> Command {
    let mut c = command_on("build", recipe, "--out", out, &[]);
    c.env("SOURCE_DATE_EPOCH", epoch)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn build_ok(recipe: &Path, out: &Path, epoch: &str) {
    let o = output(&mut build_cmd(recipe, out, epoch));
    assert!(o.status.success(), "build failed: {}", stderr(&o));
}

/// Every entry of `dir` (name -> sha256 of its bytes; dirs and links are marked).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            let what = if ft.is_file() {
                beambake::digest::sha256_bytes(&fs::read(e.path()).unwrap())
            } else {
                format!("{ft:?}")
            };
            (e.file_name().to_string_lossy().into_owned(), what)
        })
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().collect()
}

/// A small xorshift: random kill points without a dependency; the seed is printed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The "done when": SIGKILLs at random points of `beambake build` leave either
/// the previous output set or the new one, whole (never a mix), keep the user's data
/// disk and console log, and leave no temp file in the output set; the staging dir a
/// kill leaves beside it is removed by the next build.
#[test]
fn sigkill_at_random_points_of_a_build_leaves_a_whole_output_set() {
    let d = tempdir();
    let r = recipe(d.path(), "killed", &echo().release, false);
    let out = d.path().join("out");
    let set = out.join("killed");
    let (old_epoch, new_epoch) = ("1000000000", "1100000000");

    // The new set, built elsewhere, timed.
    let other = d.path().join("other");
    let t = Instant::now();
    build_ok(&r, &other, new_epoch);
    let took = t.elapsed();
    let mut new_set = snapshot(&other.join("killed"));

    // The previous set, plus files of its runs that a rebuild must keep.
    build_ok(&r, &out, old_epoch);
    fs::write(set.join("data-1.ext4"), "the user's data").unwrap();
    fs::write(set.join("console.log"), "a console").unwrap();
    let old_set = snapshot(&set);
    for n in ["data-1.ext4", "console.log"] {
        new_set.insert(n.into(), old_set[n].clone());
    }
    assert_ne!(old_set, new_set, "the two epochs gave the same image");

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill points: seed {seed}, a build takes {took:?}");
    let mut rng = Rng(seed);
    let ms = took.as_millis() as u64;
    let (mut kept, mut replaced) = (0, 0);
    for round in 0..8 {
        // Even rounds anywhere in the build, odd ones around its end (the swap).
        let delay = Duration::from_millis(if round % 2 == 0 {
            rng.below(ms * 3 / 2)
        } else {
            ms * 4 / 5 + rng.below(ms * 7 / 10)
        });
        let mut child = Guarded::start(build_cmd(&r, &out, new_epoch));
        std::thread::sleep(delay);
        child.signal(SIGKILL);
        let st = child.wait();
        let now = snapshot(&set);
        if now == old_set {
            kept += 1;
        } else if now == new_set {
            replaced += 1;
        } else {
            panic!(
                "round {round}, killed after {delay:?} ({st}): a mixed or partial set: {now:#?}"
            );
        }
        assert!(
            now.keys().all(|n| !n.starts_with('.')),
            "round {round}: temp files in the set: {now:#?}"
        );
        // Beside the set: at most the staging dir of the build just killed.
        let beside: Vec<String> = names(&out).into_iter().filter(|n| n != "killed").collect();
        assert!(
            beside.len() <= 1 && beside.iter().all(|n| n.starts_with(".killed.build-")),
            "round {round}: {beside:?}"
        );
        eprintln!(
            "round {round}: killed after {delay:?}: {}",
            if now == old_set {
                "previous set"
            } else {
                "new set"
            }
        );
        if now == new_set {
            // Back to the previous set, so the next kill meets a swap to come again.
            build_ok(&r, &out, old_epoch);
            assert_eq!(snapshot(&set), old_set);
        }
    }
    eprintln!("{kept} kill(s) before the swap, {replaced} after");

    // The next build clears what the kills left.
    build_ok(&r, &out, new_epoch);
    assert_eq!(names(&out), ["killed"]);
    assert_eq!(snapshot(&set), new_set);
}

/// A build that fails leaves no (empty) output dir, and a previous set untouched.
#[test]
fn a_failed_build_leaves_nothing_new() {
    let d = tempdir();
    let garbage = d.path().join("garbage.tar.gz");
    fs::write(&garbage, "not a release at all").unwrap();
    let r = recipe(d.path(), "broken", &garbage, false);
    let out = d.path().join("out");
    build_fails(&r, &out, &[], "garbage.tar.gz");
    assert!(!out.exists(), "{:?}", names(&out));

    // Failing after the set was started (a bad kernel): the previous set stays whole.
    let r = recipe(d.path(), "good", &echo().release, false);
    build_ok(&r, &out, "1000000000");
    let before = snapshot(&out.join("good"));
    let bad = d.path().join("vmlinuz");
    fs::write(&bad, "this is not a kernel\n").unwrap();
    build_fails(&r, &out, &["--kernel", bad.to_str().unwrap()], "vmlinuz");
    assert_eq!(names(&out), ["good"]);
    assert_eq!(snapshot(&out.join("good")), before);
}

fn sandbox_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".sandbox"))
        .collect()
}

/// SIGTERM or SIGKILL of `beambake boot` and `beambake smoke` while the VM runs: no
/// request file (the request travels over a pipe), no VM, no namespace.
#[test]
fn killing_boot_or_smoke_leaves_no_request_file() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    let _vm = vm_lock();
    let d = tempdir();
    let out = d.path().join("out");
    for signal in [SIGTERM, SIGKILL] {
        let name = format!("leftover{signal}x{}", std::process::id());
        let r = recipe(d.path(), &name, &echo().release, false);
        let set = out.join(&name);
        let needle = format!("beambake-{name}");
        assert_signal_leaves_nothing(
            &["smoke", r.to_str().unwrap(), "--out", out.to_str().unwrap()],
            &needle,
            signal,
        );
        assert_eq!(
            sandbox_files(&set),
            Vec::<String>::new(),
            "after smoke, signal {signal}"
        );
        assert_signal_leaves_nothing(&["boot", set.to_str().unwrap()], &needle, signal);
        assert_eq!(
            sandbox_files(&set),
            Vec::<String>::new(),
            "after boot, signal {signal}"
        );
    }
}

/// Not root: a tap recipe is refused by `smoke RECIPE` and `boot RECIPE` before anything
/// is built, and `boot DIR` of a tap build before anything is written into it.
#[test]
fn a_tap_run_without_root_is_refused_before_anything_is_made() {
    if !is_root() {
        skip!("needs root to run the CLI as nobody");
    }
    if which("setpriv").is_none() {
        skip!("setpriv (util-linux) not installed");
    }
    let (d, rel, bin) = nobody_base();
    let base = d.path();
    let r = recipe(base, "tapped", &rel, true);
    // A tap build made by root, for `boot DIR`.
    let built = base.join("built");
    build_ok(&r, &built, "1000000000");
    give_to_nobody(base);
    let as_nobody = |args: &[&str]| as_nobody(base, &bin, args);
    let out = base.join("out");
    for cmd in ["smoke", "boot"] {
        let o = as_nobody(&[cmd, r.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(!o.status.success(), "{cmd}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("tap networking needs root"),
            "{cmd}: {}",
            stderr(&o)
        );
        assert!(!out.exists(), "{cmd} made {}", out.display());
        assert!(!base.join("cache").exists(), "{cmd} fetched a kernel");
    }
    let set = built.join("tapped");
    let before = snapshot(&set);
    let o = as_nobody(&["boot", set.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("tap networking needs root"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&set), before, "boot DIR wrote into the set");
}

/// `beambake port` (a VM driven from Erlang) ended by SIGTERM, SIGINT or SIGHUP rather
/// than by its stdin closing: its run dir (sockets, console log) is removed, the VM is
/// gone and the exit status is 128 + the signal.
#[test]
fn a_port_ended_by_a_signal_leaves_no_run_dir() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    let _vm = vm_lock();
    let d = tempdir();
    let out = d.path().join("out");
    let name = format!("portsig{}", std::process::id());
    let r = recipe(d.path(), &name, &echo().release, false);
    build_ok(&r, &out, "1700000000");
    let tmp = d.path().join("tmp");
    for signal in [SIGTERM, 2, 1] {
        fs::create_dir_all(&tmp).unwrap();
        let mut cmd = Command::new(common::BIN);
        cmd.arg("port")
            .arg(out.join(&name))
            .env("TMPDIR", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its stdin stays open (held by the guard) until the signal.
        let mut port = Guarded::start(cmd);
        let start = Instant::now();
        while fs::read_dir(&tmp).unwrap().next().is_none() {
            assert!(start.elapsed() < Duration::from_secs(60), "no run dir made");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The VM runs: its console log is in the run dir.
        std::thread::sleep(Duration::from_secs(2));
        port.signal(signal);
        let status = port
            .wait_bounded(Duration::from_secs(20))
            .expect("the port did not end on the signal");
        assert_eq!(status.code(), Some(128 + signal), "signal {signal}");
        assert_eq!(names(&tmp), Vec::<String>::new(), "signal {signal}");
        let start = Instant::now();
        while !beambake_testkit::processes_matching(&out.join(&name).display().to_string())
            .is_empty()
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the VM outlived the port"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
