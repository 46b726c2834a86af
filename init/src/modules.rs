//! Kernel module loading from `/etc/beambake/modules`: one absolute `.ko`
//! path per line, already in dependency order, each loaded with
//! `finit_module(fd, "", 0)`.
//!
//! Owns: reading and checking the list, and the `finit_module` call. EEXIST
//! (already loaded or built in) is success.
//!
//! Must not: resolve dependencies, decompress, or guess paths (the image
//! builder did all that), nor decide what happens on failure: it returns an
//! error naming the path and errno text and the caller makes it fatal.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use beambake_contract::paths::MODULES_PATH;

/// The module paths listed in `text`: blank lines and `#` comments skipped.
pub fn parse_list(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('/') {
            return Err(format!(
                "{MODULES_PATH} line {}: {line:?} is not an absolute path",
                n + 1
            ));
        }
        out.push(line);
    }
    Ok(out)
}

/// Load every module listed in `list_path` (a missing list means none).
/// Returns how many were listed.
pub fn load_all(list_path: &Path, mut on_loaded: impl FnMut(&str, bool)) -> Result<usize, String> {
    let text = match std::fs::read_to_string(list_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("cannot read {}: {e}", list_path.display())),
    };
    let list = parse_list(&text)?;
    for path in &list {
        let already = load_one(Path::new(path))
            .map_err(|e| format!("cannot load kernel module {path}: {e}"))?;
        on_loaded(path, already);
    }
    Ok(list.len())
}

/// Returns `Ok(true)` if the module was already loaded (EEXIST).
pub fn load_one(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    // SAFETY: finit_module(fd, param_values, flags): `f` is an open fd for
    // the duration of the call, the params string is a valid empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            f.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(true);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parsing() {
        let l = parse_list("# deps first\n/lib/a.ko\n\n  /lib/b.ko  \n").expect("valid");
        assert_eq!(l, vec!["/lib/a.ko", "/lib/b.ko"]);
        assert!(parse_list("a.ko\n")
            .err()
            .is_some_and(|e| e.contains("line 1")));
    }
}
