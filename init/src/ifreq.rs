//! `struct ifreq` naming an interface, for the link ioctls. One file for the init
//! (`init/src/net.rs`) and the builder (`builder/src/net.rs` includes it with `#[path]`):
//! std and libc only.

use std::io;

/// A zeroed `ifreq` with `ifr_name` set to `name`; an error when the name is empty,
/// does not fit `IFNAMSIZ` (with its NUL) or holds a NUL.
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}: empty, too long or with a NUL"),
        ));
    }
    // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}
