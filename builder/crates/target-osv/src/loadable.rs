//! What OSv can run from a release, decided before an image is written: OSv loads
//! programs and libraries as position-independent objects into its one address space and
//! cannot create processes. So the ERTS must be an OSv build (erlexec exporting
//! `erlexec_main`, a position-independent emulator), every NIF or driver `.so` must be
//! position-independent (no text relocations), and the release may carry no port
//! programs of its own (executables under an application's `priv`).
//!
//! Owns: those checks over the tree's host files, with errors naming the file.
//! Must not: change the tree or write anything.

use std::fs;
use std::path::{Path, PathBuf};

use beambake_images::rootfs::{EntryKind, FileSource, Tree};
use goblin::elf::dynamic::{DF_TEXTREL, DT_FLAGS, DT_TEXTREL};
use goblin::elf::header::{ET_DYN, ET_EXEC};
use goblin::elf::Elf;

/// OTP applications whose port programs degrade with beambake's osv patch set instead of
/// being needed (patches/otp/25/osv/0003: os_mon starts with no services and answers
/// "unavailable"). Their programs stay in the image, unused.
pub const DEGRADING_APPS: &[&str] = &["os_mon"];

/// Why a release cannot run on OSv as built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The host file (what the user fixes), or the guest path when it has none.
    pub path: PathBuf,
    pub message: String,
}

/// An ELF's type, dynamic flags and exported names, as far as OSv cares.
struct ElfFacts {
    e_type: u16,
    textrel: bool,
    interp: bool,
    exports: Vec<String>,
}

fn facts(path: &Path) -> Option<ElfFacts> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let elf = Elf::parse(&bytes).ok()?;
    let textrel = elf.dynamic.as_ref().is_some_and(|d| {
        d.dyns
            .iter()
            .any(|e| e.d_tag == DT_TEXTREL || (e.d_tag == DT_FLAGS && e.d_val & DF_TEXTREL != 0))
    });
    let exports = elf
        .dynsyms
        .iter()
        .filter(|s| s.st_shndx != 0 && s.st_name != 0)
        .filter_map(|s| elf.dynstrtab.get_at(s.st_name).map(str::to_string))
        .collect();
    Some(ElfFacts {
        e_type: elf.header.e_type,
        textrel,
        interp: elf.interpreter.is_some(),
        exports,
    })
}

fn host_file(tree: &Tree, guest: &str) -> Option<PathBuf> {
    match &tree.get(guest)?.kind {
        EntryKind::File(FileSource::Host(p)) => Some(p.clone()),
        _ => None,
    }
}

/// Checks the ERTS at `PREFIX/erts-VSN/bin`: erlexec exports `erlexec_main` (the osv
/// patch set, built in-process) and the emulator is position-independent.
pub fn check_erts(tree: &Tree, bindir: &str) -> Result<(), Refusal> {
    let how = "build the ERTS for OSv with `cargo xtask otp-build --set osv` and name it in the recipe's release.erts_from";
    let erlexec = format!("{bindir}/erlexec");
    let Some(host) = host_file(tree, &erlexec) else {
        return Err(Refusal {
            path: PathBuf::from(&erlexec),
            message: format!("the image has no erlexec: {how}"),
        });
    };
    let f = facts(&host).ok_or_else(|| Refusal {
        path: host.clone(),
        message: "erlexec is not an ELF file".into(),
    })?;
    if !f.exports.iter().any(|e| e == "erlexec_main") {
        return Err(Refusal {
            path: host,
            message: format!(
                "this erlexec is not built for OSv (it does not export erlexec_main, so it would exec() the emulator): {how}"
            ),
        });
    }
    for emu in ["beam.smp", "beam.emu.smp"] {
        let guest = format!("{bindir}/{emu}");
        if let Some(host) = host_file(tree, &guest) {
            check_pic(&host, "the emulator")?;
        }
    }
    Ok(())
}

/// A shared object or executable OSv can load: position-independent (ET_DYN) without
/// text relocations.
pub fn check_pic(host: &Path, what: &str) -> Result<(), Refusal> {
    let Some(f) = facts(host) else {
        return Ok(());
    };
    let refuse = |why: &str| {
        Refusal {
        path: host.to_path_buf(),
        message: format!(
            "{what} is {why}: OSv loads every object position-independent into one address space; rebuild it with -fPIC (libraries) or -fPIE -pie (programs)"
        ),
    }
    };
    if f.e_type == ET_EXEC {
        return Err(refuse("not position-independent (ET_EXEC)"));
    }
    if f.e_type == ET_DYN && f.textrel {
        return Err(refuse(
            "not position-independent code (it has text relocations)",
        ));
    }
    Ok(())
}

/// Checks every NIF/driver under `PREFIX/lib/*/priv` (position-independent) and refuses
/// port programs there (executables: an interpreter or ET_EXEC), except in
/// [`DEGRADING_APPS`].
pub fn check_release_objects(tree: &Tree, prefix: &str) -> Result<(), Refusal> {
    let lib = format!("{prefix}/lib/");
    for (guest, entry) in tree.iter() {
        let Some(rest) = guest.strip_prefix(&lib) else {
            continue;
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(app_vsn), Some("priv"), Some(_)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let EntryKind::File(FileSource::Host(host)) = &entry.kind else {
            continue;
        };
        let Some(f) = facts(host) else {
            continue;
        };
        let app = app_vsn.rsplit_once('-').map_or(app_vsn, |(a, _)| a);
        if f.e_type == ET_EXEC || f.interp {
            if DEGRADING_APPS.contains(&app) {
                continue;
            }
            return Err(Refusal {
                path: host.clone(),
                message: format!(
                    "{guest} is a port program of {app}: OSv cannot start processes (no fork or exec), so open_port({{spawn, ...}}) fails with enotsup there; remove it from the release or do the work in a NIF or in Erlang"
                ),
            });
        }
        check_pic(host, &format!("the NIF/driver {guest}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cc(dir: &Path, name: &str, src: &str, args: &[&str]) -> PathBuf {
        let c = dir.join(format!("{name}.c"));
        fs::write(&c, src).unwrap();
        let out = dir.join(name);
        let st = Command::new("gcc")
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(&c)
            .status()
            .unwrap();
        assert!(st.success(), "gcc {args:?}");
        out
    }

    const NIF: &str = "int counter; int *addr(void) { return &counter; }\n";

    #[test]
    fn nifs_must_be_position_independent_and_port_programs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let pic = cc(d.path(), "pic.so", NIF, &["-shared", "-fPIC", "-O2"]);
        let nopic = cc(
            d.path(),
            "nopic.so",
            NIF,
            &[
                "-shared",
                "-fno-PIC",
                "-mcmodel=large",
                "-O0",
                "-Wl,-z,notext",
            ],
        );
        let port = cc(
            d.path(),
            "port",
            "int main(void) { return 0; }\n",
            &["-O2", "-no-pie", "-fno-PIE"],
        );
        let mut tree = Tree::new(0);
        let add = |t: &mut Tree, g: &str, h: &Path| {
            t.mkdir_p(g.rsplit_once('/').unwrap().0, "t").unwrap();
            t.add_file(g, FileSource::Host(h.to_path_buf()), 0o755, "t")
                .unwrap();
        };
        add(&mut tree, "/opt/x/lib/good-1.0/priv/good.so", &pic);
        assert_eq!(check_release_objects(&tree, "/opt/x"), Ok(()));

        let mut t = tree.clone();
        add(&mut t, "/opt/x/lib/bad-1.0/priv/bad.so", &nopic);
        let e = check_release_objects(&t, "/opt/x").unwrap_err();
        assert_eq!(e.path, nopic);
        assert!(e.message.contains("text relocations"), "{}", e.message);
        assert!(
            e.message.contains("/opt/x/lib/bad-1.0/priv/bad.so"),
            "{}",
            e.message
        );

        let mut t = tree.clone();
        add(&mut t, "/opt/x/lib/mine-2.0/priv/bin/port", &port);
        let e = check_release_objects(&t, "/opt/x").unwrap_err();
        assert_eq!(e.path, port);
        assert!(e.message.contains("port program of mine"), "{}", e.message);
        // os_mon's programs: the osv patch set degrades it; they are let through.
        let mut t = tree.clone();
        add(&mut t, "/opt/x/lib/os_mon-2.8/priv/bin/memsup", &port);
        assert_eq!(check_release_objects(&t, "/opt/x"), Ok(()));
    }

    #[test]
    fn an_erts_not_built_for_osv_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let plain = cc(
            d.path(),
            "erlexec",
            "int main(void) { return 0; }\n",
            &["-O2", "-fPIE", "-pie"],
        );
        let osv = cc(
            d.path(),
            "erlexec-osv",
            "int erlexec_main(int c, char **v) { (void)v; return c; }\nint main(int c, char **v) { return erlexec_main(c, v); }\n",
            &["-O2", "-fPIE", "-pie", "-Wl,--export-dynamic-symbol=erlexec_main"],
        );
        let mut tree = Tree::new(0);
        tree.mkdir_p("/opt/x/erts-1/bin", "t").unwrap();
        let e = check_erts(&tree, "/opt/x/erts-1/bin").unwrap_err();
        assert!(e.message.contains("has no erlexec"), "{}", e.message);
        tree.add_file(
            "/opt/x/erts-1/bin/erlexec",
            FileSource::Host(plain.clone()),
            0o755,
            "t",
        )
        .unwrap();
        let e = check_erts(&tree, "/opt/x/erts-1/bin").unwrap_err();
        assert_eq!(e.path, plain);
        assert!(e.message.contains("not built for OSv"), "{}", e.message);
        let mut tree = Tree::new(0);
        tree.mkdir_p("/opt/x/erts-1/bin", "t").unwrap();
        tree.add_file(
            "/opt/x/erts-1/bin/erlexec",
            FileSource::Host(osv.clone()),
            0o755,
            "t",
        )
        .unwrap();
        assert_eq!(check_erts(&tree, "/opt/x/erts-1/bin"), Ok(()));
    }
}
