//! The size report of a tree (`beambake inspect --sizes`): every regular file's raw size
//! and its size compressed alone (zstd at the level asked for), and the biggest
//! contributors first. A file compressed alone is an upper bound of what it adds to a
//! compressed archive (the archive's compressor also finds matches across files), close
//! enough to rank them.
//!
//! Must not: write anything, or decide what is in the tree.

use std::io::{self, Read};

use serde::Serialize;

use crate::rootfs::{EntryKind, Tree};

/// One file of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSize {
    pub path: String,
    pub raw: u64,
    pub compressed: u64,
    /// Who put it in the tree (`release`, `erts`, `host`, `beambake init`, ...).
    pub origin: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub files: usize,
    pub raw: u64,
    pub compressed: u64,
    /// The zstd level the files were compressed at.
    pub level: i32,
    /// The `top` files of the largest compressed size, largest first (ties by path).
    pub biggest: Vec<FileSize>,
}

/// Measures every regular file of `tree`. An error names the file.
pub fn measure(tree: &Tree, level: i32, top: usize) -> Result<Sizes, (String, io::Error)> {
    let mut all = Vec::new();
    for (path, e) in tree.iter() {
        let EntryKind::File(src) = &e.kind else {
            continue;
        };
        let at = |e| (path.to_string(), e);
        let mut bytes = Vec::new();
        src.open()
            .and_then(|mut r| r.read_to_end(&mut bytes))
            .map_err(at)?;
        let compressed = zstd::bulk::compress(&bytes, level).map_err(at)?.len() as u64;
        all.push(FileSize {
            path: path.to_string(),
            raw: bytes.len() as u64,
            compressed,
            origin: e.origin.clone(),
        });
    }
    let (raw, compressed) = all
        .iter()
        .fold((0, 0), |(r, c), f| (r + f.raw, c + f.compressed));
    let files = all.len();
    all.sort_by(|a, b| b.compressed.cmp(&a.compressed).then(a.path.cmp(&b.path)));
    all.truncate(top);
    Ok(Sizes {
        files,
        raw,
        compressed,
        level,
        biggest: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_biggest_compressed_come_first() {
        let mut t = Tree::new(0);
        // 64 KiB of one byte compresses to almost nothing; 4 KiB of noise does not.
        t.add_bytes("/a/zeros", vec![0; 65536], 0o644, "release")
            .unwrap();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        t.add_bytes("/b/noise", noise, 0o644, "host").unwrap();
        t.add_bytes("/c/small", b"x".to_vec(), 0o644, "release")
            .unwrap();
        t.add_symlink("/c/link", "small", "release").unwrap();
        let s = measure(&t, 3, 2).unwrap();
        assert_eq!((s.files, s.raw), (3, 65536 + 4096 + 1));
        assert_eq!(s.biggest.len(), 2);
        assert_eq!(s.biggest[0].path, "/b/noise");
        assert_eq!(s.biggest[0].origin, "host");
        assert!(s.biggest[0].compressed > 3000, "{:?}", s.biggest[0]);
        assert_eq!(s.biggest[1].path, "/a/zeros");
        assert!(s.biggest[1].compressed < 1000, "{:?}", s.biggest[1]);
        assert_eq!(
            s.compressed,
            s.biggest[0].compressed + s.biggest[1].compressed + {
                zstd::bulk::compress(b"x", 3).unwrap().len() as u64
            }
        );
    }
}
