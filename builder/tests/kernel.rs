//! The pinned Debian kernel fetched for real (`apt-get download`, network) and its
//! modules resolved from the real package: moved out of `kernel.rs`'s unit tests, which
//! do no network work.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use beambake::digest::sha256_file;
use beambake::kernel::{
    fetch_debian, final_dir, from_paths, marker_matches, Kernel, KernelError, Module, Pin,
    COMPLETE_MARKER,
};
use beambake_testkit::kernel::{
    assert_load_order as load_order, REAL_PACKAGE, REAL_RELEASE, REAL_SHA256, REAL_VERSION,
};
use beambake_testkit::tempfile::TempDir;
use beambake_testkit::{skip, tempdir, which};

fn real_pin() -> Pin {
    Pin {
        package: REAL_PACKAGE.to_string(),
        version: REAL_VERSION.to_string(),
        sha256: REAL_SHA256.to_string(),
    }
}

fn names(mods: &[Module]) -> Vec<&str> {
    mods.iter().map(|m| m.name.as_str()).collect()
}

fn pos(mods: &[Module], name: &str) -> usize {
    mods.iter()
        .position(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} not in {:?}", names(mods)))
}

fn assert_load_order(mods: &[Module]) {
    load_order(mods.iter().map(|m| (m.name.as_str(), m.depends.as_slice())));
}

fn have_apt() -> bool {
    which("apt-get").is_some() && which("dpkg-deb").is_some()
}

const NO_APT: &str = "apt-get/dpkg-deb unavailable, cannot fetch the Debian kernel";

/// One real fetch shared by the tests that need real files.
struct Real {
    cache: TempDir,
    kernel: Kernel,
    took: Duration,
}

fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        if !have_apt() {
            return None;
        }
        let cache = tempdir();
        let start = Instant::now();
        let kernel = match fetch_debian(&real_pin(), cache.path()) {
            Ok(k) => k,
            Err(e) => panic!("real fetch failed: {e}"),
        };
        let took = start.elapsed();
        eprintln!("real fetch took {took:?}");
        Some(Real {
            cache,
            kernel,
            took,
        })
    })
    .as_ref()
}

#[test]
fn real_fetch_gives_kernel() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let k = &real.kernel;
    assert!(k.image.is_file(), "{k:?}");
    assert_eq!(k.release, REAL_RELEASE);
    let modules = k.modules_dir.as_ref().expect("modules dir");
    assert!(modules.is_dir());
    assert!(modules.ends_with(format!("lib/modules/{REAL_RELEASE}")));
    assert_eq!(k.package.as_ref(), Some(&real_pin()));
    assert_eq!(k.sha256, sha256_file(&k.image).unwrap());
    assert!(k
        .image
        .starts_with(final_dir(real.cache.path(), &real_pin())));
    assert!(final_dir(real.cache.path(), &real_pin())
        .join(COMPLETE_MARKER)
        .is_file());
    eprintln!("real fetch took {:?}", real.took);
}

#[test]
fn real_fetch_reuses_cache() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let dir = final_dir(real.cache.path(), &real_pin());
    let marker = dir.join(COMPLETE_MARKER);
    let before = fs::metadata(&marker).unwrap();
    let dir_ino = fs::metadata(&dir).unwrap().ino();
    let start = Instant::now();
    let again = fetch_debian(&real_pin(), real.cache.path()).unwrap();
    let took = start.elapsed();
    let after = fs::metadata(&marker).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
    assert_eq!(before.ino(), after.ino());
    assert_eq!(dir_ino, fs::metadata(&dir).unwrap().ino());
    assert_eq!(again.image, real.kernel.image);
    assert_eq!(again.sha256, real.kernel.sha256);
    // Nothing was downloaded: only the final dir is in kernels/.
    let entries: Vec<_> = fs::read_dir(real.cache.path().join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(took < Duration::from_secs(10), "reuse took {took:?}");
    eprintln!("cache reuse took {took:?}");

    // A pin with another digest does not reuse the cached tree: it is
    // fetched again, fails verification, and leaves the cache as it was.
    let other = Pin {
        sha256: "ab".repeat(32),
        ..real_pin()
    };
    assert!(!marker_matches(&dir, &other));
    let err = fetch_debian(&other, real.cache.path()).unwrap_err();
    assert!(
        matches!(err, KernelError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    let after = fs::metadata(&marker).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap());
    assert!(marker_matches(&dir, &real_pin()));
}

#[test]
fn real_fetch_wrong_sha_leaves_nothing() {
    if !have_apt() {
        skip!("{NO_APT}");
    }
    let cache = tempdir();
    let wrong = "0".repeat(64);
    let pin = Pin {
        sha256: wrong.clone(),
        ..real_pin()
    };
    let err = fetch_debian(&pin, cache.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, KernelError::ChecksumMismatch { .. }),
        "{err:?}"
    );
    assert!(msg.contains(&wrong), "{msg}");
    assert!(msg.contains(&real_pin().sha256), "{msg}");
    assert!(!final_dir(cache.path(), &pin).exists());
    let left: Vec<_> = fs::read_dir(cache.path().join("kernels"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn real_fetch_nonexistent_version() {
    if !have_apt() {
        skip!("{NO_APT}");
    }
    let cache = tempdir();
    let pin = Pin {
        version: "6.1.192-999".to_string(),
        ..real_pin()
    };
    let err = fetch_debian(&pin, cache.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KernelError::CommandFailed { .. }), "{err:?}");
    assert!(
        msg.contains("apt-get download linux-image-6.1.0-56-cloud-amd64=6.1.192-999 failed"),
        "{msg}"
    );
    assert!(
        msg.contains("6.1.192-999") && msg.contains("apt-get update"),
        "{msg}"
    );
    assert!(!final_dir(cache.path(), &pin).exists());
}

#[test]
#[allow(clippy::result_large_err)] // KernelError, as fetch_debian returns it
fn real_fetch_concurrent_replaces_partial_dir() {
    if !have_apt() {
        skip!("{NO_APT}");
    }
    let cache = tempdir();
    let pin = real_pin();
    // A partial dir from an interrupted fetch: no marker.
    let partial = final_dir(cache.path(), &pin);
    fs::create_dir_all(partial.join("boot")).unwrap();
    fs::write(partial.join("boot/junk"), b"half").unwrap();

    let results: Vec<Result<Kernel, KernelError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| fetch_debian(&pin, cache.path())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results {
        let k = r.as_ref().unwrap();
        assert_eq!(k.release, REAL_RELEASE);
        assert!(k.image.is_file());
    }
    assert!(partial.join(COMPLETE_MARKER).is_file());
    assert!(!partial.join("boot/junk").exists());
    let entries: Vec<_> = fs::read_dir(cache.path().join("kernels"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1, "leftovers: {entries:?}");
}

#[test]
fn real_modules_virtio_net_mmio() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let mods = real
        .kernel
        .resolve_modules(&["virtio_net", "virtio_mmio"])
        .unwrap();
    assert!(pos(&mods, "virtio_ring") < pos(&mods, "virtio"));
    assert!(pos(&mods, "virtio") < pos(&mods, "virtio_mmio"));
    assert!(pos(&mods, "failover") < pos(&mods, "net_failover"));
    assert!(pos(&mods, "net_failover") < pos(&mods, "virtio_net"));
    assert_load_order(&mods);
    for m in &mods {
        assert!(m.path.is_file());
    }
    assert_eq!(
        names(&mods),
        [
            "failover",
            "net_failover",
            "virtio_ring",
            "virtio",
            "virtio_net",
            "virtio_mmio"
        ]
    );
    // Deterministic.
    let again = real
        .kernel
        .resolve_modules(&["virtio_net", "virtio_mmio"])
        .unwrap();
    assert_eq!(mods, again);
}

#[test]
fn real_modules_virtio_pci_dash() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let mods = real.kernel.resolve_modules(&["virtio-pci"]).unwrap();
    let pci = pos(&mods, "virtio_pci");
    assert!(pos(&mods, "virtio_pci_modern_dev") < pci);
    assert!(pos(&mods, "virtio_pci_legacy_dev") < pci);
    assert_eq!(mods.last().map(|m| m.name.as_str()), Some("virtio_pci"));
    assert_load_order(&mods);
}

/// Machine pc's power button: the ACPI button driver and evdev, by their real names.
#[test]
fn real_modules_power_button() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let mods = real
        .kernel
        .resolve_modules(&["virtio_pci", "button", "evdev"])
        .unwrap();
    for (name, file) in [
        ("button", "kernel/drivers/acpi/button.ko"),
        ("evdev", "kernel/drivers/input/evdev.ko"),
    ] {
        let m = &mods[pos(&mods, name)];
        assert!(m.path.ends_with(file), "{}", m.path.display());
    }
    assert_load_order(&mods);
}

#[test]
fn real_modules_fs_and_block() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let mods = real
        .kernel
        .resolve_modules(&["iso9660", "squashfs", "virtio_blk", "virtio_console"])
        .unwrap();
    // iso9660 is an alias of isofs, which needs cdrom.
    assert!(pos(&mods, "cdrom") < pos(&mods, "isofs"));
    for n in [
        "squashfs",
        "virtio_blk",
        "virtio_console",
        "virtio",
        "virtio_ring",
    ] {
        pos(&mods, n);
    }
    assert_load_order(&mods);
    let unique: BTreeSet<_> = names(&mods).into_iter().collect();
    assert_eq!(unique.len(), mods.len(), "duplicates in {:?}", names(&mods));
}

#[test]
fn real_modules_missing() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let err = real
        .kernel
        .resolve_modules(&["virtio_net", "nonexistent_mod"])
        .unwrap_err();
    match &err {
        KernelError::MissingModule {
            name,
            needed_by,
            dir,
        } => {
            assert_eq!(name, "nonexistent_mod");
            assert_eq!(needed_by, &None);
            assert_eq!(Some(dir), real.kernel.modules_dir.as_ref());
        }
        other => panic!("expected MissingModule, got {other:?}"),
    }
    assert!(err.to_string().contains("nonexistent_mod"), "{err}");
}

#[test]
fn real_from_paths() {
    let Some(real) = real() else {
        skip!("{NO_APT}");
    };
    let root = final_dir(real.cache.path(), &real_pin());
    let mdir = real.kernel.modules_dir.clone().unwrap();
    // The tree root, the modules dir itself, and lib/modules all work.
    for modules in [root.clone(), mdir.clone(), root.join("lib/modules")] {
        let k = from_paths(&real.kernel.image, Some(&modules)).unwrap();
        assert_eq!(k.release, REAL_RELEASE);
        assert_eq!(
            k.modules_dir.as_ref(),
            Some(&mdir),
            "from {}",
            modules.display()
        );
        assert_eq!(k.sha256, real.kernel.sha256);
        assert!(k.package.is_none());
    }
    let k = from_paths(&real.kernel.image, None).unwrap();
    assert!(k.modules_dir.is_none());
    assert!(k.resolve_modules(&[]).unwrap().is_empty());
    let err = k.resolve_modules(&["virtio_net"]).unwrap_err();
    assert!(matches!(err, KernelError::NoModules { .. }), "{err:?}");

    // Truncated copies: the first 0x210 bytes; cut after the version string but before
    // the end of the kernel. Not a kernel, said of the file.
    let dir = tempdir();
    let bytes = fs::read(&real.kernel.image).unwrap();
    for (name, len, what) in [
        ("vmlinuz-cut", 0x210, "outside the file"),
        ("vmlinuz-cut2", bytes.len() / 2, "truncated bzImage"),
    ] {
        let cut = dir.path().join(name);
        fs::write(&cut, &bytes[..len]).unwrap();
        let err = from_paths(&cut, None).unwrap_err();
        assert!(matches!(err, KernelError::NotAKernel { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&cut.display().to_string()), "{msg}");
        assert!(msg.contains(what), "{msg}");
    }
}
