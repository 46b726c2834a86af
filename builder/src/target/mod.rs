//! Targets: thin adapters that take the common pipeline's tree, add what their boot
//! needs (kernel modules, init, config) and pick a writer. Shared steps live here.
//!
//! Must not: duplicate pipeline steps per target.

pub mod microvm;

use std::path::{Path, PathBuf};

use crate::pipeline::Error;

/// A random distribution cookie: 32 characters from the kernel's CSPRNG.
pub fn random_cookie() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Ok(b.iter()
        .map(|x| ALPHABET[(*x & 31) as usize] as char)
        .collect())
}

/// Writes `bytes` to `dir/name` atomically with permission bits `mode`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    crate::output::write_bytes(&path, bytes)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        Error::Io {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cookies_are_random() {
        let a = super::random_cookie().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, super::random_cookie().unwrap());
    }
}
