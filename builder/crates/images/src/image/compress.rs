//! Stream compression for image outputs: none, gzip or zstd, chosen by flag or by the
//! output file's extension.
//!
//! Owns: the encoder settings, which are fixed so that the same input gives the same bytes
//! (gzip header without name or mtime; zstd single-threaded, checksummed).
//! Must not: know what it compresses.

use std::io::{self, Write};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From an output file name: `.gz` gzip, `.zst` zstd, else none.
    pub fn from_extension(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Compression::Gzip,
            Some("zst") => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The default level: gzip 6; zstd 9. Measured on the echo release's tree (13.1 MB
    /// raw, BENCHMARKS.md "Smaller bytes"): zstd 9 gives 5.4 MB in 0.6 s, zstd 19 4.9 MB
    /// in 7.5 s, and both decompress equally fast: 9 keeps builds under a second.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 9,
        }
    }
}

/// A compressing writer that must be finished to flush the stream's end.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(inner: W, c: Compression, level: i32) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => {
                let lvl = flate2::Compression::new(level.clamp(0, 9) as u32);
                // No file name, no mtime, OS byte fixed by flate2: reproducible.
                Encoder::Gzip(flate2::GzBuilder::new().mtime(0).write(inner, lvl))
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(inner, level)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(c: Compression) -> Vec<u8> {
        let data = b"beambake ".repeat(1000);
        let mut e = Encoder::new(Vec::new(), c, c.default_level()).unwrap();
        e.write_all(&data).unwrap();
        let out = e.finish().unwrap();
        let mut back = Vec::new();
        match c {
            Compression::None => back = out.clone(),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&out[..])
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Compression::Zstd => back = zstd::decode_all(&out[..]).unwrap(),
        }
        assert_eq!(back, data);
        out
    }

    #[test]
    fn each_codec_roundtrips_and_is_deterministic() {
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            assert_eq!(roundtrip(c), roundtrip(c));
        }
    }

    #[test]
    fn extension_picks_codec() {
        assert_eq!(
            Compression::from_extension(Path::new("a.cpio.zst")),
            Compression::Zstd
        );
        assert_eq!(
            Compression::from_extension(Path::new("a.cpio.gz")),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_extension(Path::new("a.cpio")),
            Compression::None
        );
    }
}
