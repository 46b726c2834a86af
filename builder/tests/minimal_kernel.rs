//! beambake's minimal microvm kernel (`[kernel] source = "minimal"`): built from Debian's
//! pinned `linux-source-6.1` into the kernel cache (`~/.cache/beambake/minimal-kernel`,
//! or `$XDG_CACHE_HOME/beambake`: about 5.5 minutes on 2 cores the first time), booted
//! for real as the uncompressed PVH `vmlinux` on `-M microvm,acpi=off` under qemu (TCG
//! here), through the `beambake` CLI. Every VM test takes `vm_lock()`.

mod common;

use std::fs;
use std::path::Path;

use beambake_testkit::{skip_if, stderr, tempdir, vm_lock, which, RecipeEdit};
use common::{
    boot_expecting_clean_exit, build_recipe, field_strs, needs_vm_host, read_json, smoke,
    stdout_json,
};

/// What building the kernel and booting it on a tap need, or why this host cannot.
fn needs_minimal_kernel_host() -> Option<&'static str> {
    if let Some(why) = needs_vm_host() {
        return Some(why);
    }
    for (tool, why) in [
        ("make", "make not installed (building the minimal kernel)"),
        ("gcc", "gcc not installed (building the minimal kernel)"),
        ("flex", "flex not installed (building the minimal kernel)"),
        ("bison", "bison not installed (building the minimal kernel)"),
        ("bc", "bc not installed (building the minimal kernel)"),
    ] {
        if which(tool).is_none() {
            return Some(why);
        }
    }
    if !Path::new("/usr/include/gelf.h").exists() {
        return Some("libelf-dev not installed (objtool, building the minimal kernel)");
    }
    None
}

/// echo-microvm with `kernel.source = "minimal"`.
fn minimal_echo(dir: &Path) -> std::path::PathBuf {
    RecipeEdit::copy("echo-microvm")
        .set("kernel.source", "minimal")
        .write(dir)
}

/// The minimal kernel passes echo-microvm's smoke (TCP echo, HTTP, distribution); the
/// output set holds `vmlinux` (no `vmlinuz`), the plan boots it without ACPI and loads
/// no modules; a second build takes the kernel from the cache.
#[test]
fn echo_microvm_on_the_minimal_kernel_passes_smoke() {
    skip_if!(needs_minimal_kernel_host());
    let d = tempdir();
    let recipe = minimal_echo(d.path());
    let out = d.path().join("out");
    // Builds the kernel on first use (minutes): outside the VM lock.
    build_recipe(&recipe, &out, &[]);
    let dir = out.join("echo-microvm");
    assert!(dir.join("vmlinux").is_file(), "vmlinux missing");
    assert!(
        !dir.join("vmlinuz").exists(),
        "a vmlinuz beside the vmlinux"
    );
    let plan = read_json(&dir.join("boot.json"));
    assert_eq!(plan["kernel"], "vmlinux");
    assert_eq!(plan["acpi_off"], true);
    let vmlinux = fs::read(dir.join("vmlinux")).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF", "an uncompressed ELF kernel");

    // Again without the build cache: the kernel comes from the kernel cache.
    let again = build_recipe(&recipe, &out, &["--no-cache", "-v"]);
    assert!(
        !again.contains("building the minimal microvm kernel from"),
        "rebuilt the kernel: {again}"
    );

    let _vm = vm_lock();
    let o = smoke(&recipe, &out, &["--json"]);
    let report = stdout_json(&o);
    assert!(o.status.success(), "{report:#}\n{}", stderr(&o));
    assert_eq!(report["passed"], true);
    assert_eq!(
        field_strs(&report["checks"], "name"),
        ["tcp_echo:8080", "http:8081/", "distribution"]
    );
}

/// The release's own exit status ends the VM (the init's power-off through the exit
/// device, no ACPI): `beambake boot` exits with it.
#[test]
fn the_minimal_kernel_powers_off_with_the_guests_status() {
    skip_if!(needs_minimal_kernel_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("kernel.source", "minimal")
        .set("launch.extra_args", ["-s", "init", "stop"])
        .write(d.path());
    let out = d.path().join("out");
    build_recipe(&recipe, &out, &[]);
    let _vm = vm_lock();
    boot_expecting_clean_exit(&out.join("echo-microvm"));
}

/// A prod-profile release with several OTP applications (`examples/web`: crypto,
/// public_key, ssl, inets' httpd; `rebar3 as prod release`, embedded mode in its own
/// start script, `-sname`/`-setcookie` in vm.args) on the minimal kernel with a boot
/// script traced on the host: HTTP and HTTPS answer, and the node is reachable by the
/// name in its vm.args.
#[test]
fn a_prod_release_with_ssl_and_httpd_passes_smoke_traced() {
    skip_if!(needs_minimal_kernel_host());
    let d = tempdir();
    let recipe = RecipeEdit::copy("web-microvm")
        .add_check(beambake_testkit::check("distribution"))
        .write(d.path());
    let out = d.path().join("out");
    let log = build_recipe(&recipe, &out, &["-v"]);
    assert!(log.contains("modules loaded at boot"), "{log}");
    let _vm = vm_lock();
    let o = smoke(&out.join("web-microvm"), &out, &["--json"]);
    let report = stdout_json(&o);
    assert!(o.status.success(), "{report:#}\n{}", stderr(&o));
    assert_eq!(
        field_strs(&report["checks"], "name"),
        ["http:8081/", "https:8443/ (unverified)", "distribution"]
    );
}
