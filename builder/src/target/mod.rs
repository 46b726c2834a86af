//! Targets: thin adapters that take the common pipeline's tree, add what their boot
//! needs (kernel modules, init, config) and pick a writer. Shared steps live here.
//!
//! Must not: duplicate pipeline steps per target.

pub mod microvm;

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

#[cfg(test)]
mod tests {
    #[test]
    fn cookies_are_random() {
        let a = super::random_cookie().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, super::random_cookie().unwrap());
    }
}
