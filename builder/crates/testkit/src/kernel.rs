//! Kernel fixtures for the kernel module's unit and integration tests: the real Debian
//! kernel package they fetch, a file that passes as a bzImage, and the module load-order
//! rule.

/// The Debian kernel package the real-fetch tests pin (beambake's default microvm kernel,
/// `images/kernel-debian-cloud.toml`, when they were written).
pub const REAL_PACKAGE: &str = "linux-image-6.1.0-56-cloud-amd64";
pub const REAL_VERSION: &str = "6.1.192-2";
pub const REAL_SHA256: &str = "e7d02b943971edcb8790e256c02cfab3bca6c3d37c1bf25392a57c71300615ee";
/// `uname -r` of that package's kernel.
pub const REAL_RELEASE: &str = "6.1.0-56-cloud-amd64";

/// A minimal file that passes as a bzImage of `release`: 1024 bytes, `HdrS` boot
/// protocol 2.15, the version string at 0x300.
pub fn fake_bzimage(release: &str) -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0x1F1] = 1; // setup_sects: 1 + boot sector = 1024 bytes
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    b[0x20E..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    let s = format!("{release} (builder@host) #1 SMP");
    b[0x300..0x300 + s.len()].copy_from_slice(s.as_bytes());
    b
}

/// Panics unless each module (name, the modules it depends on) comes after those of its
/// dependencies that are in the list.
pub fn assert_load_order<'a>(mods: impl IntoIterator<Item = (&'a str, &'a [String])>) {
    let mods: Vec<_> = mods.into_iter().collect();
    let names: Vec<&str> = mods.iter().map(|(n, _)| *n).collect();
    for (i, (name, deps)) in mods.iter().enumerate() {
        for d in deps.iter() {
            if let Some(j) = names.iter().position(|x| x == d) {
                assert!(j < i, "{d} must come before {name} in {names:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_bzimage_has_its_header_and_release() {
        let b = fake_bzimage("6.1.0-test");
        assert_eq!(&b[0x202..0x206], b"HdrS");
        let off = 0x200 + u16::from_le_bytes([b[0x20E], b[0x20F]]) as usize;
        assert!(b[off..].starts_with(b"6.1.0-test "));
    }

    #[test]
    fn load_order() {
        let deps = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (none, ring, virtio) = (
            deps(&[]),
            deps(&["virtio_ring"]),
            deps(&["virtio", "absent"]),
        );
        assert_load_order([
            ("virtio_ring", &none[..]),
            ("virtio", &ring[..]),
            ("net", &virtio[..]),
        ]);
        let bad = std::panic::catch_unwind(|| {
            assert_load_order([("virtio", &ring[..]), ("virtio_ring", &none[..])])
        })
        .unwrap_err();
        assert!(bad
            .downcast_ref::<String>()
            .unwrap()
            .contains("virtio_ring must come before virtio"));
    }
}
