//! OSv's raw disk image: OSv's `loader.img` (boot sector + kernel, as OSv's build writes
//! it) joined with a filesystem image, the way OSv's `scripts/build` (`create_rofs_disk`)
//! and `scripts/imgedit.py` (`setpartition`, `setargs`, `getargs`) do it.
//!
//! Owns: that layout, and nothing else:
//!
//! ```text
//! 0               loader.img as given (its boot sector ends in 0x55 0xAA)
//! 0x1ce           MBR partition entry 2 (imgedit's `setpartition IMG 2 ...`; OSv names
//!                 it `vblk0.1`, the device of its `fstab_rofs`): type 0x83, LBA start
//!                 and size in 512-byte sectors, CHS fields computed as imgedit does
//! 512             the command line, NUL-terminated, zero filled to 512 + 1024 bytes
//!                 (OSv's `max_cmdline`, NUL included)
//! ...             zeros up to the loader size rounded up to 2 MiB (scripts/build's
//!                 `kernel_end`, its `partition_offset` for a loader-based disk)
//! offset          the filesystem, zero padded to a whole sector
//! ```
//!
//! The output is raw (qemu: `-drive file=...,format=raw`), written atomically: an
//! error leaves no output file and whatever was at the destination untouched. The same
//! inputs give the same bytes. [`read_cmdline`] is imgedit's `getargs`.
//!
//! Must not: build the filesystem (see [`crate::image::rofs`]) or OSv itself, or convert
//! to qcow2 (no qemu tools are run).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::output::{AtomicFile, OutputError, Written};

/// Where the command line starts (the sector after the MBR).
pub const CMDLINE_OFFSET: usize = 512;
/// OSv's `max_cmdline` (`include/osv/commands.hh`): the command line with its NUL.
pub const MAX_CMDLINE: usize = 1024;
/// The filesystem starts at the loader's size rounded up to this (2 MiB).
pub const PARTITION_ALIGN: u64 = 2 * 1024 * 1024;
/// The MBR slot (1-based, as imgedit counts) of the filesystem partition.
pub const PARTITION_SLOT: usize = 2;
const PARTITION_TYPE: u8 = 0x83;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum OsvDiskError {
    #[error("the OSv command line is {len} bytes; OSv's max_cmdline is {max} bytes including the terminating NUL")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("the OSv command line contains a NUL byte at {at}; OSv would stop reading it there")]
    CmdlineNul { at: usize },
    #[error("{path}: not an OSv loader.img ({why})")]
    NotALoader { path: PathBuf, why: String },
    #[error("{path}: a partition at sector {start} of {sectors} sectors does not fit the MBR's 32-bit sector fields")]
    PartitionTooLarge {
        path: PathBuf,
        start: u64,
        sectors: u64,
    },
    #[error("{path}: no NUL-terminated command line within {max} bytes at offset {offset}")]
    NoCmdline {
        path: PathBuf,
        offset: usize,
        max: usize,
    },
    #[error("{path}: the command line is not UTF-8")]
    CmdlineNotUtf8 { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> OsvDiskError + '_ {
    move |source| OsvDiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks `cmdline` against OSv's limits (no NUL inside; `max_cmdline` with its NUL).
pub fn check_cmdline(cmdline: &str) -> Result<(), OsvDiskError> {
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(OsvDiskError::CmdlineNul { at });
    }
    if cmdline.len() + 1 > MAX_CMDLINE {
        return Err(OsvDiskError::CmdlineTooLong {
            len: cmdline.len(),
            max: MAX_CMDLINE,
        });
    }
    Ok(())
}

/// imgedit's `chs`: cylinder, head, sector of an LBA (255 heads, 63 sectors per track,
/// clamped to 1023/254/63).
fn chs(lba: u64) -> (u64, u8, u8) {
    let (c, h, s) = ((lba / 63) / 255, (lba / 63) % 255, lba % 63 + 1);
    if c > 1023 {
        (1023, 254, 63)
    } else {
        (c, h as u8, s as u8)
    }
}

/// The 16 bytes of the partition entry imgedit's `setpartition` writes for a partition
/// of `sectors` sectors at sector `start` (the status byte left 0). The CHS words are
/// imgedit's `(cyl << 6) | sec`, little-endian.
fn partition_entry(start: u32, sectors: u32) -> [u8; 16] {
    let (c, h, s) = chs(u64::from(start));
    let (ce, he, se) = chs(u64::from(start) + u64::from(sectors));
    let mut e = [0u8; 16];
    e[1] = h;
    e[2..4].copy_from_slice(&(((c << 6) | u64::from(s)) as u16).to_le_bytes());
    e[4] = PARTITION_TYPE;
    e[5] = he;
    e[6..8].copy_from_slice(&(((ce << 6) | u64::from(se)) as u16).to_le_bytes());
    e[8..12].copy_from_slice(&start.to_le_bytes());
    e[12..16].copy_from_slice(&sectors.to_le_bytes());
    e
}

/// Joins OSv's `loader` (its build's `loader.img`) and `filesystem` (e.g. a ROFS image)
/// into one raw disk image at `dest` that boots `cmdline`. Checks everything before the
/// output exists; on error nothing is left at `dest` that was not there before.
pub fn join(
    loader: &Path,
    filesystem: &Path,
    cmdline: &str,
    dest: &Path,
) -> Result<Written, OsvDiskError> {
    check_cmdline(cmdline)?;
    let mut boot = std::fs::read(loader).map_err(io_err(loader))?;
    let not_a_loader = |why: String| OsvDiskError::NotALoader {
        path: loader.to_path_buf(),
        why,
    };
    if boot.len() < CMDLINE_OFFSET + MAX_CMDLINE {
        return Err(not_a_loader(format!(
            "{} bytes, shorter than its boot sector and command line area",
            boot.len()
        )));
    }
    if boot[510..512] != [0x55, 0xaa] {
        return Err(not_a_loader("no 0x55 0xAA boot signature at 510".into()));
    }
    let mut fs = File::open(filesystem).map_err(io_err(filesystem))?;
    let fs_len = fs.metadata().map_err(io_err(filesystem))?.len();
    let offset = (boot.len() as u64).next_multiple_of(PARTITION_ALIGN);
    let (start, sectors) = (offset / SECTOR, fs_len.div_ceil(SECTOR));
    let too_large = || OsvDiskError::PartitionTooLarge {
        path: filesystem.to_path_buf(),
        start,
        sectors,
    };
    let start32 = u32::try_from(start).map_err(|_| too_large())?;
    let sectors32 = u32::try_from(sectors).map_err(|_| too_large())?;
    // OSv reads the partition through the 32-bit fields: its end must fit them too.
    start32.checked_add(sectors32).ok_or_else(too_large)?;

    let slot = 0x1be + (PARTITION_SLOT - 1) * 16;
    boot[slot..slot + 16].copy_from_slice(&partition_entry(start32, sectors32));
    let area = &mut boot[CMDLINE_OFFSET..CMDLINE_OFFSET + MAX_CMDLINE];
    area.fill(0);
    area[..cmdline.len()].copy_from_slice(cmdline.as_bytes());

    let mut out = AtomicFile::create(dest)?;
    let w = out.writer();
    let werr = io_err(dest);
    w.write_all(&boot).map_err(&werr)?;
    io::copy(&mut io::repeat(0).take(offset - boot.len() as u64), &mut *w).map_err(&werr)?;
    let copied = io::copy(&mut (&mut fs).take(fs_len), &mut *w).map_err(io_err(filesystem))?;
    if copied != fs_len {
        return Err(io_err(filesystem)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file changed while being copied ({fs_len} bytes expected, {copied} read)"),
        )));
    }
    io::copy(&mut io::repeat(0).take(sectors * SECTOR - fs_len), &mut *w).map_err(&werr)?;
    Ok(out.commit()?)
}

/// Rewrites the command line of the OSv disk image `image` in place (imgedit's
/// `setargs`; the whole area zero filled, as [`join`] leaves it). For a copy of an image
/// (one per VM): the length is checked before anything is written.
pub fn set_cmdline(image: &Path, cmdline: &str) -> Result<(), OsvDiskError> {
    use std::io::{Seek, SeekFrom};
    check_cmdline(cmdline)?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_err(image))?;
    let mut sector = [0u8; 512];
    f.read_exact(&mut sector).map_err(io_err(image))?;
    if sector[510..512] != [0x55, 0xaa] {
        return Err(OsvDiskError::NotALoader {
            path: image.to_path_buf(),
            why: "no 0x55 0xAA boot signature at 510".into(),
        });
    }
    let mut area = vec![0u8; MAX_CMDLINE];
    area[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    f.seek(SeekFrom::Start(CMDLINE_OFFSET as u64))
        .and_then(|_| f.write_all(&area))
        .and_then(|_| f.sync_all())
        .map_err(io_err(image))
}

/// The manifest label of a joined OSv disk image.
pub const LABEL: &str = "osv-disk-raw";

/// The command line of an OSv disk image (imgedit's `getargs`).
pub fn read_cmdline(image: &Path) -> Result<String, OsvDiskError> {
    let f = File::open(image).map_err(io_err(image))?;
    let mut head = Vec::with_capacity(CMDLINE_OFFSET + MAX_CMDLINE);
    f.take((CMDLINE_OFFSET + MAX_CMDLINE) as u64)
        .read_to_end(&mut head)
        .map_err(io_err(image))?;
    let area = head.get(CMDLINE_OFFSET..).unwrap_or_default();
    let end = area
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| OsvDiskError::NoCmdline {
            path: image.to_path_buf(),
            offset: CMDLINE_OFFSET,
            max: MAX_CMDLINE,
        })?;
    String::from_utf8(area[..end].to_vec()).map_err(|_| OsvDiskError::CmdlineNotUtf8 {
        path: image.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for loader.img: `len` bytes, boot signature, a marker in the kernel area.
    fn fake_loader(dir: &Path, len: usize) -> PathBuf {
        let mut b = vec![0u8; len];
        b[0] = 0xea;
        b[510] = 0x55;
        b[511] = 0xaa;
        b[64 * 1024] = 0x7f;
        let p = dir.join("loader.img");
        std::fs::write(&p, b).unwrap();
        p
    }

    #[test]
    fn set_cmdline_rewrites_the_area_and_refuses_what_does_not_fit() {
        let d = tempfile::tempdir().unwrap();
        let loader = fake_loader(d.path(), 128 * 1024);
        let fs = d.path().join("fs.img");
        std::fs::write(&fs, vec![1u8; 1024]).unwrap();
        let img = d.path().join("disk.raw");
        join(
            &loader,
            &fs,
            "--rootfs=rofs /a-long-first-line /x /y /z",
            &img,
        )
        .unwrap();
        set_cmdline(&img, "--ip=eth0,10.0.0.2,255.255.255.0 /b").unwrap();
        assert_eq!(
            read_cmdline(&img).unwrap(),
            "--ip=eth0,10.0.0.2,255.255.255.0 /b"
        );
        set_cmdline(&img, "/c").unwrap();
        assert_eq!(read_cmdline(&img).unwrap(), "/c");
        let bytes = std::fs::read(&img).unwrap();
        assert!(bytes[CMDLINE_OFFSET + 2..CMDLINE_OFFSET + MAX_CMDLINE]
            .iter()
            .all(|b| *b == 0));
        let before = std::fs::read(&img).unwrap();
        let e = set_cmdline(&img, &"y".repeat(MAX_CMDLINE)).unwrap_err();
        assert!(
            matches!(
                e,
                OsvDiskError::CmdlineTooLong {
                    len: 1024,
                    max: 1024
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&img).unwrap(), before, "unchanged");
        let e = set_cmdline(&fs, "/c").unwrap_err();
        assert!(matches!(e, OsvDiskError::NotALoader { .. }), "{e}");
    }

    /// OSv's own native-example build: loader.img of 3,801,088 bytes and rofs.img of
    /// 1,730,048; imgedit wrote this entry 2 into its bare.raw (`00 82 03 00 83 b7 2b 00
    /// 00 20 00 00 33 0d 00 00`).
    #[test]
    fn partition_entry_as_imgedit_writes_it() {
        let d = tempfile::tempdir().unwrap();
        let loader = fake_loader(d.path(), 3_801_088);
        let fs = d.path().join("rofs.img");
        std::fs::write(&fs, vec![0xabu8; 1_730_048]).unwrap();
        let img = d.path().join("disk.raw");
        let w = join(&loader, &fs, "--rootfs=rofs /hello", &img).unwrap();
        let b = std::fs::read(&img).unwrap();
        assert_eq!(w.size, b.len() as u64);
        assert_eq!(
            b[0x1ce..0x1de],
            [
                0x00, 0x82, 0x03, 0x00, 0x83, 0xb7, 0x2b, 0x00, 0x00, 0x20, 0x00, 0x00, 0x33, 0x0d,
                0x00, 0x00
            ]
        );
        assert!(b[0x1be..0x1ce].iter().all(|&x| x == 0), "slot 1 untouched");
        assert_eq!(b.len(), 4 * 1024 * 1024 + 1_730_048);
        assert_eq!(b[64 * 1024], 0x7f, "the loader is kept");
        assert!(b[3_801_088..4 * 1024 * 1024].iter().all(|&x| x == 0));
        assert!(b[4 * 1024 * 1024..].iter().all(|&x| x == 0xab));
        assert_eq!(read_cmdline(&img).unwrap(), "--rootfs=rofs /hello");
    }

    #[test]
    fn cmdline_area_is_rewritten_whole_and_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let loader = d.path().join("loader.img");
        let mut b = vec![0u8; 70_000];
        b[510..512].copy_from_slice(&[0x55, 0xaa]);
        b[512..600].fill(b'x'); // an older command line
        std::fs::write(&loader, b).unwrap();
        let fs = d.path().join("fs");
        std::fs::write(&fs, b"abc").unwrap();
        let img = d.path().join("disk.raw");
        join(&loader, &fs, "/hello", &img).unwrap();
        let out = std::fs::read(&img).unwrap();
        assert_eq!(&out[512..519], b"/hello\0");
        assert!(out[519..512 + MAX_CMDLINE].iter().all(|&x| x == 0));
        // A filesystem of 3 bytes is one sector at 2 MiB.
        assert_eq!(out.len() as u64, PARTITION_ALIGN + 512);
        assert_eq!(&out[0x1ce + 12..0x1ce + 16], &1u32.to_le_bytes());
        assert_eq!(read_cmdline(&img).unwrap(), "/hello");

        // The longest command line OSv takes: 1023 bytes and the NUL.
        let longest = "a".repeat(MAX_CMDLINE - 1);
        join(&loader, &fs, &longest, &img).unwrap();
        assert_eq!(read_cmdline(&img).unwrap(), longest);
        // Same inputs, same bytes.
        let again = d.path().join("again.raw");
        join(&loader, &fs, &longest, &again).unwrap();
        assert_eq!(std::fs::read(&img).unwrap(), std::fs::read(&again).unwrap());
    }

    #[test]
    fn refusals_leave_no_output() {
        let d = tempfile::tempdir().unwrap();
        let loader = fake_loader(d.path(), 70_000);
        let fs = d.path().join("fs");
        std::fs::write(&fs, b"abc").unwrap();
        let img = d.path().join("disk.raw");

        let e = join(&loader, &fs, &"a".repeat(MAX_CMDLINE), &img).unwrap_err();
        assert!(
            matches!(
                e,
                OsvDiskError::CmdlineTooLong {
                    len: 1024,
                    max: 1024
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("1024 bytes") && msg.contains("max_cmdline"),
            "{msg}"
        );
        assert!(!img.exists());

        let e = join(&loader, &fs, "a\0b", &img).unwrap_err();
        assert!(matches!(e, OsvDiskError::CmdlineNul { at: 1 }), "{e}");

        let not_boot = d.path().join("plain");
        std::fs::write(&not_boot, vec![0u8; 4096]).unwrap();
        let e = join(&not_boot, &fs, "/x", &img).unwrap_err();
        assert!(matches!(e, OsvDiskError::NotALoader { .. }), "{e}");
        assert!(e.to_string().contains("plain"), "{e}");

        // A previous image is left as it was.
        std::fs::write(&img, b"previous").unwrap();
        join(&loader, &fs, &"a".repeat(2000), &img).unwrap_err();
        assert_eq!(std::fs::read(&img).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);
    }

    #[test]
    fn chs_clamps_like_imgedit() {
        assert_eq!(chs(0), (0, 0, 1));
        assert_eq!(chs(8192), (0, 130, 3));
        assert_eq!(chs(u64::from(u32::MAX)), (1023, 254, 63));
    }
}
