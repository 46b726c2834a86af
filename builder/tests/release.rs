//! Release inputs (directory, tarball, rebar3 project, host ERTS), discovery, the launch
//! spec run for real on the host, and bad input through the CLI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use beambake::launch::{LaunchSpec, LaunchSpecExt};
use beambake::release::{Discover, Release};
use beambake::source::{Resolve, Source, SourceKind};
use beambake_testkit::{
    copy_dir, fails_with, free_port, is_root, output, repo_root, skip, stderr, stdout, tempdir,
    which, Guarded,
};
use common::{beambake, echo, echo_round_trip, field_strs, fresh_project, rootfs, stdout_json};

fn discover(dir: &Path) -> Release {
    Release::discover(dir, &Discover::default()).unwrap()
}

#[test]
fn discovers_the_echo_release() {
    let e = echo();
    let r = discover(&e.release);
    assert_eq!((r.name.as_str(), r.vsn.as_str()), ("echo", "0.1.0"));
    assert!(r.erts.bundled);
    let apps: Vec<_> = r.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(apps, ["kernel", "stdlib", "echo", "sasl"]);
    assert_eq!(r.boot_rel, "releases/0.1.0/start");
    assert_eq!(
        r.sys_config_rel.as_deref(),
        Some("releases/0.1.0/sys.config")
    );
    let natives: Vec<_> = r.natives.iter().map(|n| n.path.as_str()).collect();
    for n in [
        "bin/beam.smp",
        "bin/erlexec",
        "bin/epmd",
        "bin/erl_child_setup",
    ] {
        assert!(
            natives.contains(&format!("erts-{}/{n}", r.erts.vsn).as_str()),
            "{n} missing from {natives:?}"
        );
    }
}

#[test]
fn three_input_forms_give_one_release() {
    let e = echo();
    let dir = Source::resolve(&e.release, &Resolve::default()).unwrap();
    let tar = Source::resolve(&e.tarball, &Resolve::default()).unwrap();
    let (_d, project) = fresh_project();
    let proj = Source::resolve(&project, &Resolve::default()).unwrap();
    assert_eq!(dir.kind, SourceKind::Directory);
    assert_eq!(tar.kind, SourceKind::Tarball);
    assert_eq!(proj.kind, SourceKind::Rebar3Project);
    for s in [&dir, &tar, &proj] {
        let r = discover(&s.release_dir);
        assert_eq!((r.name.as_str(), r.vsn.as_str()), ("echo", "0.1.0"));
    }
}

#[test]
fn host_erts_release_uses_the_host_otp() {
    let e = echo();
    let r = discover(&e.hosterts);
    assert!(!r.erts.bundled, "{:?}", r.erts);
    assert!(r.erts.dir.join("bin/beam.smp").is_file());
    // system_libs false: kernel and stdlib come from the host too
    assert!(r.apps.iter().any(|a| a.name == "kernel" && !a.bundled));
    assert!(r.apps.iter().any(|a| a.name == "echo" && a.bundled));
}

#[test]
fn host_erts_of_another_version_is_a_clear_error() {
    let e = echo();
    let fake = tempdir();
    fs::create_dir_all(fake.path().join("erts-99.0/bin")).unwrap();
    fs::create_dir_all(fake.path().join("lib")).unwrap();
    let out = beambake(&[
        "inspect",
        e.hosterts.to_str().unwrap(),
        "--otp-root",
        fake.path().to_str().unwrap(),
    ]);
    fails_with(&out, &["needs ERTS 13.", "erts-99.0"]);
}

#[test]
fn launch_spec_starts_the_release_on_the_host() {
    let e = echo();
    let r = discover(&e.release);
    let port = free_port().to_string();
    let spec = LaunchSpec::for_release(&r, e.release.to_str().unwrap())
        .with_args(&["-echo", "port", &port]);
    // Round-trips through its JSON form, as the init will read it.
    let spec = LaunchSpec::from_json(&spec.to_json()).unwrap();
    assert!(spec.argv[0].ends_with("/bin/erlexec"));
    assert!(
        !spec.argv.iter().any(|a| a.ends_with("/bin/echo")),
        "no shell script"
    );
    let d = tempdir();
    let mut p = Guarded::spawn(spec.command(), d.path().join("echo.log"));
    echo_round_trip(&mut p, port.parse().unwrap(), Duration::from_secs(60));
    assert!(
        p.log_text().contains("Echo server started"),
        "{}",
        p.log_text()
    );
}

#[test]
fn inspect_a_rebar3_project_and_json() {
    let e = echo();
    let (_d, project) = fresh_project();
    let out = beambake(&["inspect", project.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "release   echo 0.1.0",
        "erts      13.",
        "beam.smp",
        "libc.so.6",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // Not distributed: no epmd in the tree, so not its libsystemd either (the closure is
    // of the tree after the programs the launch spec never runs were left out).
    assert!(!text.contains("libsystemd"), "{text}");
    let out = beambake(&["inspect", "--json", e.release.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v["release"]["name"], "echo");
    assert_eq!(
        v["launch"]["argv"][0],
        format!(
            "/opt/echo/erts-{}/bin/erlexec",
            v["release"]["erts"]["vsn"].as_str().unwrap()
        )
    );
    let libs = field_strs(&v["host_libs"], "path");
    // Debian's epmd links libsystemd, and through it libgcrypt, liblz4, liblzma, libzstd:
    // a node that is not distributed runs no epmd, so none of them is in its tree.
    for l in [
        "/libsystemd.so.0",
        "/libgcrypt.so.20",
        "/liblz4.so.1",
        "/libzstd.so.1",
    ] {
        assert!(!libs.iter().any(|p| p.ends_with(l)), "{l} in {libs:?}");
    }
    assert!(libs.contains(&"/lib64/ld-linux-x86-64.so.2"), "{libs:?}");
    assert!(
        libs.iter().any(|p| p.ends_with("/libstdc++.so.6")),
        "{libs:?}"
    );
}

#[test]
fn inspect_sizes_ranks_the_biggest_files() {
    let e = echo();
    let out = beambake(&["inspect", "--sizes", "--json", e.release.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = stdout_json(&out);
    let biggest = v["biggest"].as_array().unwrap();
    assert_eq!(biggest.len(), 20);
    let sizes: Vec<u64> = biggest
        .iter()
        .map(|f| f["compressed"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    assert!(
        biggest[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("/bin/beam.smp"),
        "{v:#}"
    );
    // beambake's own init is counted: it is in every microvm and uml image.
    assert!(biggest.iter().any(|f| f["path"] == "/init"), "{v:#}");
    assert!(v["raw"].as_u64().unwrap() > v["compressed"].as_u64().unwrap());
    assert_eq!(v["level"], 9);
    let out = beambake(&[
        "inspect",
        "--sizes",
        "--level",
        "3",
        e.release.to_str().unwrap(),
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("(zstd -3)") && text.contains("beam.smp"),
        "{text}"
    );
    let out = beambake(&["inspect", "--level", "3", e.release.to_str().unwrap()]);
    assert!(!out.status.success(), "--level needs --sizes");
}

// ---------------------------------------------------------------- bad input

/// A private copy of the echo release to break.
fn broken_copy() -> (beambake_testkit::tempfile::TempDir, PathBuf) {
    let d = tempdir();
    let rel = d.path().join("echo");
    copy_dir(&echo().release, &rel);
    (d, rel)
}

/// Runs `beambake rootfs` over a previous good image: must fail naming `needle`, leave the
/// previous image byte-identical and no temp file behind.
fn fails_cleanly(input: &Path, needles: &[&str]) -> String {
    let out_dir = tempdir();
    let img = out_dir.path().join("img.cpio.gz");
    let good = rootfs(&echo().release, &img, &[]);
    assert!(good.status.success(), "{}", stderr(&good));
    let before = fs::read(&img).unwrap();
    let out = rootfs(input, &img, &[]);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "unexpected success for {}",
        input.display()
    );
    // Bad input (README "Exit codes"), or a build failure when reading it fails.
    assert!(matches!(out.status.code(), Some(2 | 3)), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    assert_eq!(fs::read(&img).unwrap(), before, "previous image changed");
    let names: Vec<_> = fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "leftovers: {names:?}"); // image + manifest
    err
}

#[test]
fn missing_release_files() {
    let (_d, rel) = broken_copy();
    fs::remove_file(rel.join("releases/start_erl.data")).unwrap();
    fs::remove_file(rel.join("releases/RELEASES")).unwrap();
    fails_cleanly(&rel, &["not an OTP release", "start_erl.data", "RELEASES"]);
}

#[test]
fn garbled_start_erl_data() {
    let (_d, rel) = broken_copy();
    fs::write(rel.join("releases/start_erl.data"), "garbage\n").unwrap();
    fails_cleanly(
        &rel,
        &["releases/start_erl.data: expected \"ERTS_VSN RELEASE_VSN\""],
    );
}

#[test]
fn garbled_releases_file() {
    let (_d, rel) = broken_copy();
    fs::remove_file(rel.join("releases/start_erl.data")).unwrap();
    fs::write(
        rel.join("releases/RELEASES"),
        "[{release,\"echo\",\n  \"0.1.0\" \"13\"]].\n",
    )
    .unwrap();
    fails_cleanly(&rel, &["releases/RELEASES:2:"]);
}

#[test]
fn rel_file_that_does_not_parse_shows_line_and_column() {
    let (_d, rel) = broken_copy();
    fs::write(
        rel.join("releases/0.1.0/echo.rel"),
        "{release,{\"echo\",\"0.1.0\"},\n         {erts,\"13.1.5\"}\n         [{kernel,\"8.5.3\"}]}.\n",
    )
    .unwrap();
    fails_cleanly(&rel, &["releases/0.1.0/echo.rel:3:10: "]);
}

#[test]
fn unreadable_file() {
    let (_d, rel) = broken_copy();
    let victim = rel.join("lib/echo-0.1.0/ebin/echo_server.beam");
    if is_root() {
        // root reads through chmod 000; a FIFO is the unreadable thing here.
        fs::remove_file(&victim).unwrap();
        let o = output(std::process::Command::new("mkfifo").arg(&victim));
        assert!(o.status.success(), "mkfifo: {}", stderr(&o));
        fails_cleanly(&rel, &["echo_server.beam", "not a regular file"]);
    } else {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o000)).unwrap();
        fails_cleanly(&rel, &["echo_server.beam", "ermission denied"]);
    }
}

#[test]
fn elf_needing_a_missing_library() {
    if which("gcc").is_none() {
        skip!("gcc not installed");
    }
    let (d, rel) = broken_copy();
    let src = d.path().join("bogus.c");
    fs::write(d.path().join("lib.c"), "int bogus(void){return 1;}\n").unwrap();
    fs::write(&src, "int bogus(void); int main(void){return bogus();}\n").unwrap();
    let lib = d.path().join("libbogus.so.7");
    let cc = |args: &[&str]| {
        let o = output(std::process::Command::new("gcc").args(args));
        assert!(o.status.success(), "gcc {args:?}: {}", stderr(&o));
    };
    cc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libbogus.so.7",
        "-o",
        lib.to_str().unwrap(),
        d.path().join("lib.c").to_str().unwrap(),
    ]);
    let priv_dir = rel.join("lib/echo-0.1.0/priv");
    fs::create_dir_all(&priv_dir).unwrap();
    let prog = priv_dir.join("bogus_port");
    cc(&[
        "-o",
        prog.to_str().unwrap(),
        src.to_str().unwrap(),
        lib.to_str().unwrap(),
    ]);
    fs::remove_file(&lib).unwrap();
    fails_cleanly(&rel, &["libbogus.so.7", "bogus_port", "not found"]);
}

#[test]
fn tarball_truncated() {
    let bytes = fs::read(&echo().tarball).unwrap();
    let d = tempdir();
    let t = d.path().join("cut.tar.gz");
    fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    fails_cleanly(&t, &["cut.tar.gz"]);
}

/// A raw tar with one entry whose name the `tar` crate's builder would refuse.
fn raw_tar(entries: &[(&str, u8, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        let data: &[u8] = if *kind == b'0' { b"evil\n" } else { b"" };
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        if !data.is_empty() {
            let mut block = [0u8; 512];
            block[..data.len()].copy_from_slice(data);
            out.extend_from_slice(&block);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn malicious_tarballs() {
    let d = tempdir();
    type Case<'a> = (&'a str, &'a [(&'a str, u8, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("dotdot", &[("releases/../../evil", b'0', "")], "leaves"),
        ("absolute", &[("/tmp/bb-evil-abs", b'0', "")], "absolute"),
        (
            "symlink-out",
            &[("lib/x", b'2', "../../outside")],
            "outside",
        ),
    ];
    for (name, entries, needle) in cases {
        let t = d.path().join(format!("{name}.tar"));
        fs::write(&t, raw_tar(entries)).unwrap();
        let err = fails_cleanly(&t, &[&format!("{name}.tar")]);
        assert!(err.to_lowercase().contains(needle), "{name}: {err}");
    }
    assert!(!Path::new("/tmp/bb-evil-abs").exists());
}

#[test]
fn not_a_release_at_all() {
    let d = tempdir();
    let out = beambake(&["inspect", d.path().to_str().unwrap()]);
    fails_with(&out, &["not a release directory"]);
    let out = beambake(&["inspect", "/nonexistent/release"]);
    assert!(
        stderr(&out).contains("/nonexistent/release: no such file or directory"),
        "{}",
        stderr(&out)
    );
}

/// A real `mix release`: discovered as a mix release and started from its launch spec
/// (no shell script), it prints its greeting and keeps running (`--no-halt`).
#[test]
fn mix_release_runs_from_its_launch_spec() {
    if which("mix").is_none() {
        skip!("mix not installed (apt-get install elixir)");
    }
    let d = tempdir();
    let project = d.path().join("hello_mix");
    beambake_testkit::copy_project(&repo_root().join("examples/hello_mix"), &project);
    let out = output(
        std::process::Command::new("mix")
            .arg("release")
            .current_dir(&project)
            .env("MIX_ENV", "prod")
            .env("HOME", d.path()),
    );
    assert!(
        out.status.success(),
        "mix release: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let rel_dir = project.join("_build/prod/rel/hello_mix");
    let r = discover(&rel_dir);
    assert_eq!(r.flavor, beambake::release::Flavor::Mix);
    assert!(r.apps.iter().any(|a| a.name == "elixir"));
    let spec = LaunchSpec::for_release(&r, rel_dir.to_str().unwrap());
    let log = d.path().join("mix.log");
    let mut p = Guarded::spawn(spec.command(), log.clone());
    let start = std::time::Instant::now();
    while !p.log_text().contains("Hello from mix on 25") {
        p.check_alive();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no greeting: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    p.check_alive();
}
