//! `beambake libvirt-xml` and `beambake libvirt-port` as a user runs them: refusals name
//! what is wrong; the port speaks the wire from its first packet. (The domain XML itself
//! is pinned by the libvirt crate's golden test; a real libvirtd runs it in the Erlang
//! suite, erlang/test/beambake_libvirt_tests.erl.)

use beambake_testkit::cli::Cli;

fn cli() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_beambake"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn libvirt_xml_refuses_what_is_not_a_microvm_build() {
    let d = tempfile::tempdir().unwrap();
    let o = cli().run([std::ffi::OsStr::new("libvirt-xml"), d.path().as_os_str()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&d.path().display().to_string()) && e.contains("not a beambake build"),
        "{e}"
    );

    let plan = r#"{
  "name": "e", "target": "uml", "kernel": "linux", "root_image": "e.squashfs",
  "cmdline": "quiet", "memory_mib": 256, "cpus": 1, "machine": "microvm", "accel": "auto",
  "net": {"mode": "none", "guests": ["10.0.121.101"], "prefix": 24, "host": "10.0.121.100", "hostname": "e"},
  "node": null, "cookie_file": null, "checks": [],
  "smoke": {"ready_timeout_s": 60, "check_timeout_s": 30}
}"#;
    std::fs::write(d.path().join("boot.json"), plan).unwrap();
    let o = cli().run([std::ffi::OsStr::new("libvirt-xml"), d.path().as_os_str()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("a uml image") && e.contains("microvm images only"),
        "{e}"
    );
}

#[cfg(feature = "libvirt")]
#[test]
fn libvirt_port_answers_from_its_first_packet_and_ends_with_its_input() {
    use beambake_libvirt::port::VIR_ERR_NO_SUPPORT;
    use beambake_vm::port::codec;
    use std::io::Write;
    use std::process::Stdio;

    let mut child = cli()
        .command(["libvirt-port", "test:///default"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let hello = codec::read_term(&mut out).unwrap().unwrap();
    assert_eq!(
        hello.to_string(),
        "{0,{'ok',<<116,101,115,116,58,47,47,47,100,101,102,97,117,108,116>>}}"
    );
    let mut input = child.stdin.take().unwrap();
    let req = codec::tuple(vec![codec::int(5), codec::atom("reboot")]);
    codec::write_term(&mut input, &req).unwrap();
    input.flush().unwrap();
    let reply = codec::read_term(&mut out).unwrap().unwrap();
    let el = codec::as_tuple(&reply).unwrap();
    assert_eq!(codec::as_int(&el[0]), Some(5));
    let err = codec::as_tuple(&codec::as_tuple(&el[1]).unwrap()[1])
        .unwrap()
        .to_vec();
    assert_eq!(codec::as_int(&err[0]), Some(i64::from(VIR_ERR_NO_SUPPORT)));
    drop(input);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
