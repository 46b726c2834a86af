//! The accelerator choice (`boot::accel`) and `beambake doctor`. Real KVM behaviours
//! cannot be produced on demand, so stand-in "qemu" scripts play them (abort, hang, exit 0
//! without the guest's marker, a guest that proves itself); the real probe runs once
//! against the microvm recipe's kernel and must agree with its own evidence.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use beambake::boot::accel::{self, Probe, ProbeExit, ProbeTarget, PROBE_BOUND};
use beambake::boot::qemu::Accelerator;
use beambake::recipe::Machine;
use beambake_testkit::{
    fails_with, output, skip, tempdir, vm_lock, which, write_script as script, RecipeEdit,
};
use common::{command_on, pinned_kernel, read_json};

/// A stand-in that plays the guest: finds the console file and the token in its
/// arguments and writes `marker` (with the token) there, then exits with `code`.
fn guest_standin(dir: &Path, name: &str, marker: bool, code: i32) -> PathBuf {
    let write = if marker {
        "echo \"beambake-init: probe $tok ok\" >> \"$con\""
    } else {
        ":"
    };
    script(
        dir,
        name,
        &format!(
            r#"prev=
for a in "$@"; do
  case "$prev" in
    -chardev) con=${{a#*path=}} ;;
    -append) tok=${{a##*beambake.probe=}}; tok=${{tok%% *}} ;;
  esac
  prev=$a
done
echo "Linux version 6.1 (stand-in)" >> "$con"
{write}
exit {code}"#
        ),
    )
}

fn target(dir: &Path, qemu: PathBuf, bound: Duration) -> ProbeTarget {
    let kernel = dir.join("vmlinuz");
    fs::write(&kernel, b"not really a kernel").unwrap();
    ProbeTarget {
        qemu,
        kernel,
        machine: Machine::Microvm,
        cpu: "host".into(),
        bound,
        init: beambake::INIT,
    }
}

fn assert_tcg(p: &Probe, needle: &str) {
    assert!(!p.kvm, "{p:#?}");
    assert!(
        p.reason.contains(needle),
        "reason {:?} lacks {needle:?}",
        p.reason
    );
    assert!(p.reason.contains("TCG"), "{}", p.reason);
}

#[test]
fn a_qemu_that_aborts_means_tcg() {
    let d = tempdir();
    let q = script(
        d.path(),
        "qemu-abort",
        "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2\nkill -ABRT $$",
    );
    let p = accel::probe(&target(d.path(), q, PROBE_BOUND));
    assert_eq!(
        p.exit,
        ProbeExit::Signal {
            signal: 6,
            name: "SIGABRT".into()
        }
    );
    assert_tcg(&p, "signal 6 (SIGABRT)");
    assert!(p.reason.contains("failed to set MSR"), "{}", p.reason);
    assert_eq!(p.stderr_tail.len(), 1, "{p:#?}");
}

#[test]
fn a_qemu_that_hangs_is_killed_at_the_bound_and_means_tcg() {
    let d = tempdir();
    let pids = d.path().join("pids");
    // The shell and a child of it: both must be gone afterwards.
    let q = script(
        d.path(),
        "qemu-hang",
        &format!(
            "echo $$ > {p}\nsleep 1000 &\necho $! >> {p}\nwait",
            p = pids.display()
        ),
    );
    let start = Instant::now();
    let p = accel::probe(&target(d.path(), q, Duration::from_secs(2)));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(p.exit, ProbeExit::Hung { bound_ms: 2000 });
    assert_tcg(&p, "did not exit within the 2s bound");
    let text = fs::read_to_string(&pids).unwrap();
    let pids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(pids.len(), 2, "{text}");
    // Gone, or a zombie waiting for a reaper that is not ours: nothing runs.
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in pids {
        loop {
            let state = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
                .flatten();
            if matches!(state, None | Some('Z') | Some('X')) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} still runs ({state:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_qemu_that_exits_0_without_the_marker_means_tcg() {
    let d = tempdir();
    let q = script(d.path(), "qemu-true", "exit 0");
    let p = accel::probe(&target(d.path(), q, PROBE_BOUND));
    assert_eq!(p.exit, ProbeExit::Status { code: 0 });
    assert!(!p.marker_seen);
    assert_tcg(&p, "status 0");
    assert!(
        p.reason.contains("expected 85 (guest status 42)"),
        "{}",
        p.reason
    );
    assert!(p.reason.contains("marker never appeared"), "{}", p.reason);
}

#[test]
fn marker_and_status_are_both_required() {
    let d = tempdir();
    // The guest's status without its marker, and the marker with another status.
    let q = guest_standin(d.path(), "qemu-status-only", false, 85);
    let p = accel::probe(&target(d.path(), q, PROBE_BOUND));
    assert_eq!(p.exit, ProbeExit::Status { code: 85 });
    assert_tcg(&p, "marker never appeared");
    let q = guest_standin(d.path(), "qemu-marker-only", true, 3);
    let p = accel::probe(&target(d.path(), q, PROBE_BOUND));
    assert!(p.marker_seen, "{p:#?}");
    assert_tcg(&p, "status 3");
    // Both: the one way to KVM.
    let q = guest_standin(d.path(), "qemu-good", true, 85);
    let p = accel::probe(&target(d.path(), q, PROBE_BOUND));
    assert!(p.kvm && p.marker_seen, "{p:#?}");
    assert!(p.reason.contains("KVM works"), "{}", p.reason);
    assert!(
        p.console_tail.iter().any(|l| l.contains("probe ")),
        "{p:#?}"
    );
    assert!(
        p.command.iter().any(|a| a.contains("beambake.probe=")),
        "{p:#?}"
    );
}

#[test]
fn the_verdict_is_cached_per_key_with_its_evidence() {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        let d = tempdir();
        let q = script(d.path(), "qemu-true", "exit 0");
        let c = accel::auto(&target(d.path(), q, PROBE_BOUND), d.path());
        assert_eq!(c.accelerator, Accelerator::Tcg);
        assert!(c.reason.contains("/dev/kvm"), "{}", c.reason);
        // Without /dev/kvm no probe runs and nothing is cached: the assertion above is what
        // such a host can check (not a skip: CI on a host without KVM must still pass).
        return;
    }
    let d = tempdir();
    let cache = d.path().join("cache");
    let q = script(d.path(), "qemu-abort", "kill -ABRT $$");
    let mut t = target(d.path(), q, PROBE_BOUND);
    let first = accel::auto(&t, &cache);
    assert_eq!(first.accelerator, Accelerator::Tcg);
    assert!(first.reason.starts_with("KVM probe: "), "{}", first.reason);
    let files: Vec<_> = fs::read_dir(cache.join(accel::CACHE_SUBDIR))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1);
    let json = read_json(&files[0].path());
    for k in [
        "boot_id",
        "qemu_path",
        "qemu_size",
        "kernel_sha256",
        "cpu",
        "machine",
    ] {
        assert!(json["key"].get(k).is_some(), "{json}");
    }
    assert_eq!(json["probe"]["exit"]["name"], "SIGABRT", "{json}");
    let again = accel::auto(&t, &cache);
    assert!(again.reason.contains("cached"), "{}", again.reason);
    assert_eq!(again.accelerator, Accelerator::Tcg);
    // Another CPU model is another key: probed again.
    t.cpu = "max".into();
    let other = accel::auto(&t, &cache);
    assert!(!other.reason.contains("cached"), "{}", other.reason);
    assert_eq!(
        fs::read_dir(cache.join(accel::CACHE_SUBDIR))
            .unwrap()
            .count(),
        2
    );
}

#[test]
fn a_bad_beambake_accel_is_a_clear_error_before_anything_is_built() {
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm").write(d.path());
    let out = d.path().join("out");
    for cmd in ["smoke", "boot"] {
        let o = output(command_on(cmd, &recipe, "--out", &out, &[]).env("BEAMBAKE_ACCEL", "fast"));
        fails_with(&o, &["BEAMBAKE_ACCEL=\"fast\"", "auto, kvm, tcg"]);
        assert!(!out.exists(), "{cmd} built something before refusing");
    }
}

/// The probe guest itself, for real: the microvm kernel and beambake's init in probe mode,
/// under TCG (a stand-in turns `-accel kvm -cpu host` into `tcg`/`qemu64`, as KVM cannot
/// be relied on here): the marker and the status prove it ran.
#[test]
fn the_probe_guest_proves_itself_under_tcg() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 not installed");
    }
    let Some(kernel) = microvm_kernel() else {
        skip!("the microvm kernel cannot be fetched here");
    };
    let _vm = vm_lock();
    let d = tempdir();
    let khz = beambake::boot::qemu::host_tsc_khz()
        .map(|k| format!(" tsc_early_khz={k}"))
        .unwrap_or_default();
    let q = script(
        d.path(),
        "qemu-as-tcg",
        &format!(
            r#"n=$#
for a in "$@"; do
  case "$a" in
    kvm) a=tcg ;;
    host) a=qemu64 ;;
    console=ttyS0*) a="$a{khz}" ;;
  esac
  set -- "$@" "$a"
done
shift $n
exec qemu-system-x86_64 "$@""#
        ),
    );
    let mut t = target(d.path(), q, Duration::from_secs(90));
    t.kernel = kernel;
    let p = accel::probe(&t);
    assert!(p.kvm, "{p:#?}");
    assert!(p.marker_seen);
    assert_eq!(p.exit, ProbeExit::Status { code: 85 });
    assert!(
        p.console_tail
            .iter()
            .any(|l| l.contains("power off, status 42")),
        "{p:#?}"
    );
}

fn microvm_kernel() -> Option<PathBuf> {
    match pinned_kernel() {
        Ok(k) => Some(k.image),
        Err(e) => {
            eprintln!("cannot fetch the microvm kernel: {e}");
            None
        }
    }
}

/// The real probe on this host, against the microvm recipe's kernel: whatever the
/// verdict, it must follow from its evidence.
#[test]
fn the_real_probe_agrees_with_its_evidence() {
    if which("qemu-system-x86_64").is_none() {
        skip!("qemu-system-x86_64 not installed");
    }
    let Some(kernel) = microvm_kernel() else {
        skip!("the microvm kernel cannot be fetched here");
    };
    let t = ProbeTarget {
        qemu: "qemu-system-x86_64".into(),
        kernel,
        machine: Machine::Microvm,
        cpu: "host".into(),
        bound: PROBE_BOUND,
        init: beambake::INIT,
    };
    let p = accel::probe(&t);
    eprintln!("real probe: {p:#?}");
    assert!(!matches!(p.exit, ProbeExit::NotStarted { .. }), "{p:#?}");
    assert_eq!(
        p.kvm,
        p.marker_seen && p.exit == ProbeExit::Status { code: 85 },
        "{p:#?}"
    );
    assert!(
        p.elapsed_ms <= PROBE_BOUND.as_millis() as u64 + 2000,
        "{p:#?}"
    );
    assert!(!p.reason.is_empty());
    if p.kvm {
        assert!(p.reason.contains("KVM works"), "{}", p.reason);
    } else {
        assert!(p.reason.contains("TCG"), "{}", p.reason);
    }
}
