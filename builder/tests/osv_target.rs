//! The osv target, booted for real: the echo release on OSv built from the pinned snapshot
//! (`../shared/sources/osv-src.tar.xz`, cached), its ERTS built for OSv (`cargo xtask
//! test` builds it once and names it in `BEAMBAKE_OSV_ERTS`), loaded by start-otp.so from
//! beambake's ROFS image. Smoke over a tap in a private namespace (TCP echo, HTTP,
//! distribution with epmd as a thread, rpc), the image booting on its own with its own
//! command line, reproducible bytes, and what OSv cannot run refused before anything is
//! built. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use beambake::osv_kernel;
use beambake_images::image::osv_disk;
use beambake_testkit::{
    copy_dir, is_root, repo_root, skip_if, tempdir, vm_lock, which, Guarded, RecipeEdit,
};
use common::{build_fails, build_recipe, echo, echo_round_trip, field_strs, smoke, stdout_json};

/// The OSv ERTS `cargo xtask test` built (`cargo xtask osv-erts`).
const ERTS_ENV: &str = "BEAMBAKE_OSV_ERTS";

fn osv_erts() -> Option<PathBuf> {
    std::env::var_os(ERTS_ENV)
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

/// Why the osv tests cannot run here, if they cannot.
fn needs_osv_host(boot: bool) -> Option<String> {
    if !repo_root().join(osv_kernel::DEV_SNAPSHOT).is_file() {
        return Some(format!(
            "no OSv snapshot at {} (osv_kernel::DEV_SNAPSHOT)",
            osv_kernel::DEV_SNAPSHOT
        ));
    }
    if osv_erts().is_none() {
        return Some(format!(
            "{ERTS_ENV} does not name the ERTS built for OSv (`cargo xtask test` sets it; `cargo xtask osv-erts` builds it)"
        ));
    }
    if boot && which("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if boot && !is_root() {
        return Some("tap networking in a private namespace needs root".into());
    }
    None
}

/// echo-osv with the test's OSv ERTS and a fixed cookie (reproducible bytes).
fn osv_recipe() -> RecipeEdit {
    RecipeEdit::copy("echo-osv")
        .set(
            "release.erts_from",
            osv_erts().unwrap().display().to_string(),
        )
        .set("distribution.cookie", "osv-test-cookie")
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn echo_on_osv_passes_its_smoke_and_its_image_boots_on_its_own() {
    skip_if!(needs_osv_host(true));
    let d = tempdir();
    let recipe = osv_recipe().write(d.path());
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-osv");
    let image = dir.join("echo-osv.img");

    // The image's own command line is rebar3_osv's loader line.
    assert_eq!(
        osv_disk::read_cmdline(&image).unwrap(),
        "--rootfs=rofs /start-otp.so /opt/echo/releases/0.1.0/start \
         /opt/echo/releases/0.1.0/vm.args /opt/echo/releases/0.1.0/sys.config"
    );
    // Same inputs, another output dir and time: the same bytes.
    let out2 = d.path().join("elsewhere/out");
    build_recipe(&recipe, &out2, &[]);
    assert_eq!(sha256(&image), sha256(&out2.join("echo-osv/echo-osv.img")));

    let _vm = vm_lock();
    let o = smoke(&dir, &out, &["--json"]);
    let r = stdout_json(&o);
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(
        field_strs(&r["checks"], "name"),
        [
            "tcp_echo:8080",
            "http:8081/",
            "distribution",
            "rpc:erlang:system_info(system_architecture)"
        ],
        "{r:#}"
    );
    // The per-VM copies are gone, the image is unchanged.
    let left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("osv-vm-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // On its own: qemu, the image, user networking (DHCP), nothing from beambake.
    let copy = d.path().join("alone.img");
    fs::copy(&image, &copy).unwrap();
    let port = 18080 + (std::process::id() % 1000) as u16;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "pc", "-accel", "tcg", "-m", "512M", "-smp", "1"])
        .args([
            "-display",
            "none",
            "-vga",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", copy.display()))
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:8080"),
        ])
        .args(["-device", "virtio-net-pci,netdev=n0"]);
    let mut g = Guarded::spawn(qemu, d.path().join("alone.log"));
    // qemu's user network accepts before the guest listens: wait for the release first.
    let start = std::time::Instant::now();
    while !g.log_text().contains("Echo server started") {
        g.check_alive();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}",
            g.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    echo_round_trip(&mut g, port, Duration::from_secs(30));
}

/// The seeds' cluster session on OSv: three VMs from one image on one bridge, each with
/// its own address, MAC and node name; every node answers the host and every other node,
/// `rpc:multicall` reaches all three.
#[test]
fn three_osv_vms_from_one_image_form_a_cluster() {
    skip_if!(needs_osv_host(true));
    let d = tempdir();
    let recipe = osv_recipe().set("vm.count", 3).write(d.path());
    let out = d.path().join("out");
    let _vm = vm_lock();
    let o = smoke(&recipe, &out, &["--json"]);
    let r = stdout_json(&o);
    assert_eq!(r["passed"], true, "{r:#}");
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3 + 3 + 1 + 3, "{r:#}");
    let dist = checks.iter().find(|c| c["name"] == "distribution").unwrap();
    assert!(
        dist["message"].as_str().unwrap().contains("3 nodes"),
        "{dist:#}"
    );
}

/// A copy of the echo release with `file` added at `rel_path`.
fn release_with(d: &Path, rel_path: &str, file: &Path) -> PathBuf {
    let rel = d.join("rel");
    copy_dir(&echo().release, &rel);
    let dest = rel.join(rel_path);
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(file, &dest).unwrap();
    rel
}

fn gcc(d: &Path, name: &str, src: &str, args: &[&str]) -> PathBuf {
    let c = d.join(format!("{name}.c"));
    fs::write(&c, src).unwrap();
    let out = d.join(name);
    let o = Command::new("gcc")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn what_osv_cannot_run_is_refused_before_anything_is_built() {
    skip_if!(needs_osv_host(false));
    let d = tempdir();
    let out = d.path().join("out");

    // A NIF that is not position-independent: named, with the fix.
    let nif = gcc(
        d.path(),
        "nopic.so",
        "int counter; int *addr(void) { return &counter; }\n",
        &[
            "-shared",
            "-fno-PIC",
            "-mcmodel=large",
            "-O0",
            "-Wl,-z,notext",
        ],
    );
    let rel = release_with(d.path(), "lib/echo-0.1.0/priv/nopic.so", &nif);
    let recipe = osv_recipe()
        .set("release.source", rel.display().to_string())
        .write(d.path());
    let e = build_fails(&recipe, &out, &[], "/opt/echo/lib/echo-0.1.0/priv/nopic.so");
    assert!(e.contains("text relocations") && e.contains("-fPIC"), "{e}");
    assert!(!out.join("echo-osv").exists());

    // A port program of the release's own: OSv cannot spawn it.
    let d2 = tempdir();
    let port = gcc(
        d2.path(),
        "port",
        "int main(void) { return 0; }\n",
        &["-O2"],
    );
    let rel = release_with(d2.path(), "lib/echo-0.1.0/priv/bin/port", &port);
    let recipe = osv_recipe()
        .set("release.source", rel.display().to_string())
        .write(d2.path());
    let e = build_fails(&recipe, &out, &[], "port program of echo");
    assert!(e.contains("OSv cannot start processes"), "{e}");

    // A command line longer than OSv's area (1023 bytes before the NUL at byte 512).
    let long = vec!["--verbose"; 120].join(" ");
    let recipe = osv_recipe().set("kernel.cmdline", long).write(d.path());
    let e = build_fails(&recipe, &out, &[], "command line");
    assert!(e.contains("1023") || e.contains("1024"), "{e}");

    // The host's ERTS (it execs the emulator, JIT): not an OSv build.
    let recipe = osv_recipe()
        .set("release.erts_from", "/usr/lib/erlang")
        .write(d.path());
    build_fails(&recipe, &out, &[], "not built for OSv");

    // No ERTS named at all: the recipe says how to get one.
    let recipe = osv_recipe().remove("release.erts_from").write(d.path());
    build_fails(&recipe, &out, &[], "cargo xtask otp-build --set osv");
    assert!(!out.join("echo-osv").exists());
}
