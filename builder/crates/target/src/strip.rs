//! `[release] strip_beams`: every `.beam` of the tree stripped of its debug and
//! documentation chunks by the host's `erl` (`beam_lib:strip_files/1`), the tree's entries
//! given the stripped bytes.
//!
//! Must not: change anything but `.beam` files' content (modes and origins stay).

use std::path::PathBuf;
use std::sync::Arc;

use beambake_images::rootfs::{EntryKind, FileSource, Tree};

use crate::pipeline::Error;

/// Strips every `.beam` file of `tree` in place; returns how many.
pub fn strip_beams(tree: &mut Tree) -> Result<usize, Error> {
    let beams: Vec<(String, FileSource)> = tree
        .iter()
        .filter_map(|(p, e)| match &e.kind {
            EntryKind::File(src) if p.ends_with(".beam") => Some((p.to_string(), src.clone())),
            _ => None,
        })
        .collect();
    let tmp = tempfile::tempdir().map_err(|source| Error::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    for (i, (_, src)) in beams.iter().enumerate() {
        let dest = tmp.path().join(format!("{i}.beam"));
        let bytes = src.read_all().map_err(|source| Error::Io {
            path: dest.clone(),
            source,
        })?;
        std::fs::write(&dest, bytes).map_err(|source| Error::Io {
            path: dest.clone(),
            source,
        })?;
    }
    let eval = format!(
        "{{ok, _}} = beam_lib:strip_files(filelib:wildcard(\"{}/*.beam\")), halt().",
        tmp.path().display()
    );
    let o = std::process::Command::new("erl")
        .args(["-noshell", "-noinput", "-eval", &eval])
        .output()
        .map_err(|source| Error::Io {
            path: PathBuf::from("erl"),
            source,
        })?;
    if !o.status.success() {
        return Err(Error::Tool {
            program: PathBuf::from("erl"),
            what: "-eval beam_lib:strip_files/1 (stripping the .beam files)".into(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    for (i, (p, _)) in beams.iter().enumerate() {
        let f = tmp.path().join(format!("{i}.beam"));
        let bytes = std::fs::read(&f).map_err(|source| Error::Io { path: f, source })?;
        tree.set_source(p, FileSource::Bytes(Arc::new(bytes)));
    }
    Ok(beams.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripped_beams_lose_their_debug_chunk_and_keep_their_mode() {
        if beambake_images::host::which("erlc").is_none() {
            eprintln!("skipped: no erlc");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("m.erl");
        std::fs::write(&src, "-module(m).\n-export([f/0]).\nf() -> ok.\n").unwrap();
        let o = std::process::Command::new("erlc")
            .arg("+debug_info")
            .arg("-o")
            .arg(d.path())
            .arg(&src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let beam = std::fs::read(d.path().join("m.beam")).unwrap();
        assert!(beam.windows(4).any(|w| w == b"Dbgi"));
        let mut tree = Tree::new(0);
        tree.add_file(
            "/opt/m/m.beam",
            FileSource::Host(d.path().join("m.beam")),
            0o640,
            "test",
        )
        .unwrap();
        assert_eq!(strip_beams(&mut tree).unwrap(), 1);
        let e = tree.get("/opt/m/m.beam").unwrap();
        assert_eq!(e.perm, 0o640);
        let EntryKind::File(src) = &e.kind else {
            panic!("not a file")
        };
        let stripped = src.read_all().unwrap();
        assert!(stripped.len() < beam.len());
        assert!(!stripped.windows(4).any(|w| w == b"Dbgi"));
    }
}
