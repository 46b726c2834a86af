//! Builds `start-otp.so` (start-otp/start-otp.c) as a position-independent shared object
//! for OSv, with the launch-lines path from the host/guest contract; the target embeds it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("start-otp/start-otp.c");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("start-otp.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".into());
    let define = format!(
        "-DLAUNCH_LINES=\"{}\"",
        beambake_contract::paths::LAUNCH_LINES_PATH
    );
    let dir = std::env::current_dir().expect("cwd");
    let status = Command::new(&cc)
        .args(["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror"])
        .arg(&define)
        // Reproducible: no build paths in the object, a build id from the content.
        .arg(format!("-ffile-prefix-map={}=.", dir.display()))
        .arg("-Wl,--build-id=sha1")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| panic!("running {cc} for {}: {e}", src.display()));
    assert!(status.success(), "{cc} failed to build {}", src.display());
}
